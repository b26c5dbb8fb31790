// The routed half of an MoE layer, shared by the model files: router logits, softmax top-k, the experts
// (wherever the backend runs them), and the weighted sum in slot order — the same order whichever
// worker computed each slot, so results do not depend on the placement.
#pragma once

#include "absl/status/status.h"
#include "common/model_config.h"
#include "coordinator/expert_backend.h"

namespace pinmoe {

// h: [tokens, hidden]; router: [num_experts, hidden]; out: [tokens, hidden] (overwritten).
absl::Status RoutedMoe(const ModelConfig& config, ExpertBackend& experts, int layer,
                       const float* router, const float* h, int tokens, float* out);

}  // namespace pinmoe
