// What the generation loop needs from a model: feed tokens, get the last position's logits.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "coordinator/sampler.h"

namespace pinmoe {

class CausalLm {
 public:
  virtual ~CausalLm() = default;
  // Runs `ids` at the next positions (a whole prompt, or one decoded token), extending the caches, and
  // writes the logits of the last of them to `last_logits` ([vocab_size]).
  virtual absl::Status Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) = 0;
  // Forward, but only the arg-max of the last logits (ties to the lower id) is wanted: a GPU model takes
  // it on the device and copies one id instead of the vocabulary's logits.
  virtual absl::StatusOr<int32_t> ForwardArgMax(std::span<const int32_t> ids);
  // Forward, but only the k largest logits are wanted (TopCandidates' order: largest first, ties to the
  // lower id), for a sampler bounded by top-k: a GPU model selects them on the device.
  virtual absl::Status ForwardTopK(std::span<const int32_t> ids, int k, std::vector<Candidate>* top);
  // Forgets the sequence (caches back to empty).
  virtual void Reset() = 0;
  // The caller stops stepping for now (the end of a generation): a model that starts work ahead of
  // the next step (GpuCausalLm's workers) withdraws it.
  virtual absl::Status Settle() { return absl::OkStatus(); }
  virtual int position() const = 0;
  virtual int max_context() const = 0;
  virtual const ModelConfig& config() const = 0;
};

}  // namespace pinmoe
