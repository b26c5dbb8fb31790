// Which worker owns which (layer, expert): fixed for the life of the coordinator, printed at start-up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "worker/expert_store.h"

namespace pinmoe {

struct Placement {
  std::vector<std::vector<LayerExpertSet>> per_worker;  // [worker][moe layer]
  std::vector<uint64_t> bytes_per_worker;               // checkpoint bytes of the experts each holds
  // owner[layer][expert] = worker index, or -1 for dense layers.
  std::vector<std::vector<int>> owner;
};

// How the routed experts are divided among the workers.
//  - kExperts: every MoE layer's experts into contiguous, near-equal ranges, one per worker (the workers
//    that get the larger ranges rotate from layer to layer so that bytes stay balanced): workers on
//    different GPUs, or on CPU cores, then compute each layer side by side.
//  - kLayers: whole MoE layers, contiguous runs of near-equal length, one per worker: for GPU workers
//    that share one GPU. They share its memory bandwidth too, so splitting a layer between them gains
//    nothing, and a layer held by one process hands over to that process alone instead of waiting for
//    the slowest of several, each paying a hand-over and a kernel ramp (measured on the H200:
//    bench/NOTES.md). Falls back to kExperts when there are more workers than MoE layers.
enum class PlacementSplit { kExperts, kLayers };

Placement MakePlacement(const ModelConfig& config, int num_workers,
                        PlacementSplit split = PlacementSplit::kExperts);

// kLayers when there are several workers and all of them are GPU workers on one GPU (device names
// "cuda:N"), else kExperts.
PlacementSplit SplitForDevices(const std::vector<std::string>& worker_devices);

// A table: worker, experts per layer (as ranges), number of experts, bytes.
std::string FormatPlacement(const ModelConfig& config, const Placement& placement);

}  // namespace pinmoe
