// The generation loop: prefill the prompt, then decode one token at a time until max_new_tokens, an
// end-of-sequence id, or the end of the context.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/causal_lm.h"
#include "coordinator/sampler.h"

namespace pinmoe {

enum class FinishReason { kLength, kStop, kContext };
const char* FinishReasonName(FinishReason reason);

struct GenerateParams {
  int max_new_tokens = 64;
  SamplingParams sampling;
  int top_logprobs = 0;      // > 0: record that many alternatives per generated position
  bool ignore_eos = false;
  std::vector<int32_t> eos_ids;
};

struct GenerateResult {
  std::vector<int32_t> token_ids;
  std::vector<std::vector<TokenLogprob>> top_logprobs;  // per generated position
  std::vector<std::vector<float>> logits;               // per generated position, when asked for
  FinishReason finish_reason = FinishReason::kLength;
  double prefill_seconds = 0;
  double decode_seconds = 0;  // from the first decode step to the last token
};

// `on_token` is called for each generated token as it is chosen (for streaming); it may be empty.
// With keep_logits, every position's full logits are kept (tests compare them with references).
absl::StatusOr<GenerateResult> Generate(CausalLm& model, const std::vector<int32_t>& prompt,
                                        const GenerateParams& params,
                                        const std::function<void(int32_t)>& on_token,
                                        bool keep_logits = false);

}  // namespace pinmoe
