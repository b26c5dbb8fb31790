// Helpers the model files share for loading: checking a checkpoint's tensor names against the set that
// config.json implies, checking routed experts' shapes from headers alone (their bytes stay with the
// workers), and reading dense tensors.
#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "common/safetensors.h"

namespace pinmoe {

// Every name in `expected` must be in the checkpoint, and every checkpoint name must be expected or
// start with one of `ignored_prefixes` (their count goes to *ignored).
absl::Status CheckTensorNames(Checkpoint& checkpoint, const std::set<std::string>& expected,
                              const std::vector<std::string>& ignored_prefixes, int* ignored);

// Adds the routed experts' tensor names of every MoE layer to `names`.
void AddExpertNames(const ModelConfig& config, std::set<std::string>* names);

// Checks each routed expert's dtype and shape from the shard headers.
absl::Status CheckExpertShapes(const ModelConfig& config, Checkpoint& checkpoint);

std::string LayerTensor(int layer, std::string_view rest);

}  // namespace pinmoe
