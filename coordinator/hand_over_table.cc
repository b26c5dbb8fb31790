#include "coordinator/hand_over_table.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"

namespace pinmoe {

std::string HandOverTable(const std::vector<WorkerPool::LayerTimes>& steps, std::vector<double> step_wall_us,
                          const std::vector<HostStepTimes>& host) {
  std::vector<double> to_workers, first_to_workers, experts, to_coordinator, dense, period, boundary, span;
  uint64_t step_first_tick = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const WorkerPool::LayerTimes& t = steps[i];
    auto us = [](uint64_t from, uint64_t to) { return (static_cast<double>(to) - static_cast<double>(from)) / 1e3; };
    // A step's first MoE layer apart: its workers' gates are late if their step was launched late (the
    // Step message, the worker's wake-up and graph launch).
    const bool first = i == 0 || steps[i - 1].layer >= t.layer;
    if (first && i > 0 && steps[i - 1].coordinator_open != 0 && t.tick_stored != 0) {
      boundary.push_back(us(steps[i - 1].coordinator_open, t.tick_stored));
    }
    if (first) step_first_tick = t.tick_stored;
    const bool last = i + 1 == steps.size() || steps[i + 1].layer <= t.layer;
    if (last && step_first_tick != 0 && t.coordinator_open != 0) span.push_back(us(step_first_tick, t.coordinator_open));
    if (t.tick_stored != 0 && t.workers_open != 0) {
      (first ? first_to_workers : to_workers).push_back(us(t.tick_stored, t.workers_open));
    }
    if (t.workers_open != 0 && t.done_stored != 0) experts.push_back(us(t.workers_open, t.done_stored));
    if (t.done_stored != 0 && t.coordinator_open != 0) to_coordinator.push_back(us(t.done_stored, t.coordinator_open));
    // The next MoE layer of the same step (entries run layer by layer, step by step).
    if (i + 1 < steps.size() && steps[i + 1].layer > t.layer && steps[i + 1].tick_stored != 0) {
      if (t.coordinator_open != 0) dense.push_back(us(t.coordinator_open, steps[i + 1].tick_stored));
      if (t.tick_stored != 0) period.push_back(us(t.tick_stored, steps[i + 1].tick_stored));
    }
  }
  std::string table = "hand-over timeline, decode, per MoE layer (GPU clock; p10 / median / p90 µs):\n";
  auto row = [&](const char* what, std::vector<double> v) {
    if (v.empty()) {
      table += absl::StrFormat("  %-58s not stamped (that hand-over's stream form)\n", what);
      return;
    }
    std::sort(v.begin(), v.end());
    auto at = [&](double q) { return v[static_cast<size_t>(q * (v.size() - 1))]; };
    table += absl::StrFormat("  %-58s %7.2f %7.2f %7.2f  (%zu)\n", what, at(0.1), at(0.5), at(0.9), v.size());
  };
  row("first layer of a step: tick stored -> workers' gates open", first_to_workers);
  row("router stored the tick -> the workers' gates open", to_workers);
  row("workers' gates open -> their done counters stored (experts)", experts);
  row("done stored -> the coordinator's gate open", to_coordinator);
  row("coordinator's gate open -> next layer's tick (dense part)", dense);
  row("layer period, tick to tick", period);
  row("a step's first tick -> its last layer's coordinator gate open", span);
  row("step boundary: that gate -> the next step's first tick", boundary);
  row("decode step, host wall clock", std::move(step_wall_us));
  // The host's part of the step boundary: waiting for the GPU, then for the workers' Done messages, then
  // its own turnaround until the next step's graph is launched.
  std::vector<double> gpu_wait, done_wait, turnaround;
  for (size_t i = 0; i < host.size(); ++i) {
    gpu_wait.push_back(host[i].event_seen_us - host[i].launched_us);
    done_wait.push_back(host[i].returned_us - host[i].event_seen_us);
    if (i + 1 < host.size()) turnaround.push_back(host[i + 1].launched_us - host[i].returned_us);
  }
  if (!host.empty()) {
    row("host: graph launched -> the step's event seen", std::move(gpu_wait));
    row("host: event seen -> every worker's Done in", std::move(done_wait));
    row("host: step returned -> the next step's graph launched", std::move(turnaround));
  }
  table += "  the first steps' spans in order (µs):";
  for (size_t i = 0; i < span.size() && i < 16; ++i) table += absl::StrFormat(" %.0f", span[i]);
  table += "\n";
  return table;
}

}  // namespace pinmoe
