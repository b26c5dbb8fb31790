#include "worker/expert_store.h"

#include <algorithm>

#include "common/str_cat.h"
#include "common/cpu_kernels.h"
#include "common/status.h"

namespace pinmoe {

std::string ExpertTensorName(int layer, int expert, std::string_view projection) {
  return StrCat("model.layers.", layer, ".mlp.experts.", expert, ".", projection, ".weight");
}

absl::StatusOr<std::unique_ptr<CpuExpertStore>> CpuExpertStore::Load(
    const ModelConfig& config, Checkpoint& checkpoint,
    const std::vector<LayerExpertSet>& assignment) {
  auto store = std::unique_ptr<CpuExpertStore>(new CpuExpertStore(config));
  const int64_t h = config.hidden_size, inter = config.moe_intermediate_size;
  const std::vector<int64_t> in_shape = {inter, h}, out_shape = {h, inter};
  for (const auto& set : assignment) {
    if (set.layer < 0 || set.layer >= config.num_layers || !config.IsMoeLayer(set.layer)) {
      return absl::InvalidArgumentError(
          StrCat("assignment names layer ", set.layer, ", which is not an MoE layer"));
    }
    for (int e : set.experts) {
      if (e < 0 || e >= config.num_experts) {
        return absl::InvalidArgumentError(StrCat("assignment names expert ", e, " of layer ",
                                                       set.layer, "; the model has ",
                                                       config.num_experts));
      }
      Expert ex;
      ASSIGN_OR_RETURN(ex.gate, checkpoint.ReadF32(ExpertTensorName(set.layer, e, "gate_proj"), in_shape));
      ASSIGN_OR_RETURN(ex.up, checkpoint.ReadF32(ExpertTensorName(set.layer, e, "up_proj"), in_shape));
      ASSIGN_OR_RETURN(ex.down, checkpoint.ReadF32(ExpertTensorName(set.layer, e, "down_proj"), out_shape));
      store->resident_bytes_ += 3 * static_cast<uint64_t>(h * inter) * sizeof(float);
      store->experts_[{set.layer, e}] = std::move(ex);
    }
  }
  store->checkpoint_bytes_ = checkpoint.bytes_read();
  return store;
}

absl::StatusOr<uint32_t> CpuExpertStore::Compute(int layer, const float* x, uint32_t tokens,
                                                 uint32_t top_k, const int32_t* routing, float* out) {
  const size_t h = static_cast<size_t>(config_.hidden_size);
  const size_t inter = static_cast<size_t>(config_.moe_intermediate_size);
  const size_t pairs = static_cast<size_t>(tokens) * top_k;
  for (size_t p = 0; p < pairs; ++p) {
    if (routing[p] < 0 || routing[p] >= config_.num_experts) {
      return absl::InvalidArgumentError(StrCat("routing table entry ", p, " of layer ", layer,
                                                     " names expert ", routing[p]));
    }
  }
  uint32_t computed = 0;
  std::vector<uint32_t> members;
  auto it = experts_.lower_bound({layer, 0});
  for (; it != experts_.end() && it->first.first == layer; ++it) {
    const int e = it->first.second;
    members.clear();
    for (size_t p = 0; p < pairs; ++p) {
      if (routing[p] == e) members.push_back(static_cast<uint32_t>(p));
    }
    if (members.empty()) continue;
    const size_t n = members.size();
    gather_.resize(n * h);
    result_.resize(n * h);
    scratch_.resize(2 * n * inter);
    for (size_t i = 0; i < n; ++i) {
      const size_t t = members[i] / top_k;
      std::copy_n(x + t * h, h, gather_.data() + i * h);
    }
    const Expert& ex = it->second;
    SwigluFfn(gather_.data(), ex.gate.data(), ex.up.data(), ex.down.data(), result_.data(), n, h,
              inter, scratch_.data());
    for (size_t i = 0; i < n; ++i) {
      std::copy_n(result_.data() + i * h, h, out + static_cast<size_t>(members[i]) * h);
    }
    computed += static_cast<uint32_t>(n);
  }
  return computed;
}

}  // namespace pinmoe
