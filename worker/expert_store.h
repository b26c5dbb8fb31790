// The routed experts one process owns, resident in fp32, and the CPU expert FFN over them.
//
// Used by pinmoe-worker and by the coordinator's in-process backend alike, so that both compute every
// (token, slot) pair with the same code and therefore the same bits.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"

namespace pinmoe {

struct LayerExpertSet {
  int layer = 0;
  std::vector<int> experts;
};

class CpuExpertStore {
 public:
  // Reads exactly the assigned experts' tensors (checking names, shapes and dtypes) from the checkpoint.
  static absl::StatusOr<std::unique_ptr<CpuExpertStore>> Load(
      const ModelConfig& config, Checkpoint& checkpoint, const std::vector<LayerExpertSet>& assignment);

  // For every (token, slot) whose routed expert this store owns: out[t, slot, :] = expert(x[t, :]).
  // x: [tokens, hidden]; routing: [tokens, top_k] expert ids; out: [tokens, top_k, hidden]. Pairs owned
  // by others are left untouched. Returns how many pairs were computed; an expert id out of range is an
  // error.
  absl::StatusOr<uint32_t> Compute(int layer, const float* x, uint32_t tokens, uint32_t top_k,
                                   const int32_t* routing, float* out);

  // Bytes of weights as stored in the checkpoint, and as held (fp32).
  uint64_t checkpoint_bytes() const { return checkpoint_bytes_; }
  uint64_t resident_bytes() const { return resident_bytes_; }
  size_t num_experts() const { return experts_.size(); }

 private:
  struct Expert {
    std::vector<float> gate;  // [inter, hidden]
    std::vector<float> up;    // [inter, hidden]
    std::vector<float> down;  // [hidden, inter]
  };
  explicit CpuExpertStore(const ModelConfig& config) : config_(config) {}

  ModelConfig config_;
  std::map<std::pair<int, int>, Expert> experts_;  // (layer, expert)
  uint64_t checkpoint_bytes_ = 0;
  uint64_t resident_bytes_ = 0;
  std::vector<float> gather_, result_, scratch_;
};

// Hub names of a routed expert's projections.
std::string ExpertTensorName(int layer, int expert, std::string_view projection);

}  // namespace pinmoe
