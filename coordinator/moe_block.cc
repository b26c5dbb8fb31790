#include "coordinator/moe_block.h"

#include <algorithm>
#include <vector>

#include "common/cpu_kernels.h"
#include "common/status.h"
#include "coordinator/layers.h"

namespace pinmoe {

absl::Status RoutedMoe(const ModelConfig& config, ExpertBackend& experts, int layer,
                       const float* router, const float* h, int tokens, float* out) {
  const size_t hidden = config.hidden_size;
  const int k = config.top_k, ne = config.num_experts;
  std::vector<float> logits(static_cast<size_t>(tokens) * ne);
  MatMulTransposed(h, router, logits.data(), tokens, hidden, ne);
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * k);
  std::vector<float> weights(ids.size());
  for (int t = 0; t < tokens; ++t) {
    RouteTopK(logits.data() + static_cast<size_t>(t) * ne, ne, k, config.norm_topk_prob,
              ids.data() + static_cast<size_t>(t) * k, weights.data() + static_cast<size_t>(t) * k);
  }
  std::vector<float> slots(ids.size() * hidden);
  RETURN_IF_ERROR(experts.RunMoe(layer, h, static_cast<uint32_t>(tokens), ids.data(), slots.data()));
  for (int t = 0; t < tokens; ++t) {
    float* o = out + static_cast<size_t>(t) * hidden;
    std::fill(o, o + hidden, 0.0f);
    for (int s = 0; s < k; ++s) {
      const float w = weights[static_cast<size_t>(t) * k + s];
      const float* y = slots.data() + (static_cast<size_t>(t) * k + s) * hidden;
      for (size_t i = 0; i < hidden; ++i) o[i] += w * y[i];
    }
  }
  return absl::OkStatus();
}

}  // namespace pinmoe
