// The table `pinmoe bench --timeline` prints: where a decode step's time goes when the experts run in
// worker processes, from the GPU-clock stamps of every hand-over (WorkerPool::GpuStepTimeline).
#pragma once

#include <string>
#include <vector>

#include "coordinator/worker_pool.h"

namespace pinmoe {

// The host's side of one decode step (steady clock, µs from any origin): its graph launched (the launch
// call returned), its event seen complete, and every worker's Done in (the step returned).
struct HostStepTimes {
  double launched_us = 0, event_seen_us = 0, returned_us = 0;
};

// `steps`: the LayerTimes of consecutive decode steps, layer by layer and step by step (a step starts
// where the layer index does not grow); `step_wall_us`: each step's host wall-clock time; `host`: the
// same steps' host times, in order (may be empty). Prints p10 / median / p90 in µs of each hand-over
// interval, the step's span and the gap between steps, the host's share of that gap, then the first
// steps' spans in order.
std::string HandOverTable(const std::vector<WorkerPool::LayerTimes>& steps, std::vector<double> step_wall_us,
                          const std::vector<HostStepTimes>& host = {});

}  // namespace pinmoe
