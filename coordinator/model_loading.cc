#include "coordinator/model_loading.h"

#include "common/status.h"
#include "common/str_cat.h"
#include "worker/expert_store.h"

namespace pinmoe {

std::string LayerTensor(int layer, std::string_view rest) {
  return StrCat("model.layers.", layer, ".", rest);
}

absl::Status CheckTensorNames(Checkpoint& ckpt, const std::set<std::string>& expected,
                              const std::vector<std::string>& ignored_prefixes, int* ignored) {
  *ignored = 0;
  for (const std::string& name : expected) {
    if (!ckpt.Has(name)) {
      return absl::NotFoundError(StrCat(ckpt.dir(), ": tensor '", name,
                                        "' that config.json implies is not in the checkpoint"));
    }
  }
  for (const std::string& name : ckpt.TensorNames()) {
    if (expected.count(name) > 0) continue;
    bool skip = false;
    for (const auto& p : ignored_prefixes) skip = skip || name.rfind(p, 0) == 0;
    if (skip) {
      ++*ignored;
      continue;
    }
    return absl::InvalidArgumentError(StrCat(
        ckpt.dir(), ": checkpoint has tensor '", name,
        "' that config.json does not describe (wrong num_hidden_layers, num_experts or layer kinds?)"));
  }
  return absl::OkStatus();
}

void AddExpertNames(const ModelConfig& c, std::set<std::string>* names) {
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    for (int e = 0; e < c.num_experts; ++e) {
      for (const char* p : {"gate_proj", "up_proj", "down_proj"}) names->insert(ExpertTensorName(l, e, p));
    }
  }
}

absl::Status CheckExpertShapes(const ModelConfig& c, Checkpoint& ckpt) {
  const int64_t h = c.hidden_size;
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    for (int e = 0; e < c.num_experts; ++e) {
      for (const char* p : {"gate_proj", "up_proj", "down_proj"}) {
        const std::string name = ExpertTensorName(l, e, p);
        ASSIGN_OR_RETURN(const TensorInfo* info, ckpt.Info(name));
        const std::vector<int64_t> want = std::string_view(p) == "down_proj"
                                              ? std::vector<int64_t>{h, c.moe_intermediate_size}
                                              : std::vector<int64_t>{c.moe_intermediate_size, h};
        if (info->shape != want || !IsWeightDType(info->dtype)) {
          return absl::InvalidArgumentError(StrCat(ckpt.dir(), ": tensor '", name, "' is ",
                                                   DTypeName(info->dtype), " ", ShapeString(info->shape),
                                                   "; config.json implies a float ", ShapeString(want)));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace pinmoe
