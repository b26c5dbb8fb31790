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

// Splits every MoE layer's experts into contiguous, near-equal ranges; the workers that get the larger
// ranges rotate from layer to layer so that bytes stay balanced.
Placement MakePlacement(const ModelConfig& config, int num_workers);

// A table: worker, experts per layer (as ranges), number of experts, bytes.
std::string FormatPlacement(const ModelConfig& config, const Placement& placement);

}  // namespace pinmoe
