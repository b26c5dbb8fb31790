#include "coordinator/generate.h"

#include <algorithm>
#include <chrono>

#include "common/str_cat.h"
#include "common/status.h"

namespace pinmoe {

absl::StatusOr<int32_t> CausalLm::ForwardArgMax(std::span<const int32_t> ids) {
  std::vector<float> logits;
  RETURN_IF_ERROR(Forward(ids, &logits));
  return ArgMax(logits);
}

absl::Status CausalLm::ForwardTopK(std::span<const int32_t> ids, int k, std::vector<Candidate>* top) {
  std::vector<float> logits;
  RETURN_IF_ERROR(Forward(ids, &logits));
  *top = TopCandidates(logits, k);
  return absl::OkStatus();
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kContext:
      return "context";
  }
  return "length";
}

absl::StatusOr<GenerateResult> Generate(CausalLm& model, const std::vector<int32_t>& prompt,
                                        const GenerateParams& params,
                                        const std::function<void(int32_t)>& on_token,
                                        bool keep_logits) {
  using Clock = std::chrono::steady_clock;
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  const int vocab = model.config().vocab_size;
  for (int32_t id : prompt) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          StrCat("prompt token id ", id, " is outside the vocabulary of ", vocab));
    }
  }
  if (static_cast<int>(prompt.size()) >= model.max_context()) {
    return absl::OutOfRangeError(StrCat("the prompt has ", prompt.size(),
                                              " tokens but the model's context is ", model.max_context(),
                                              " tokens, leaving no room to generate"));
  }
  model.Reset();
  GenerateResult result;
  Sampler sampler(params.sampling);
  std::vector<float> logits;
  // Without logprobs, greedy needs only each step's arg-max, and a draw bounded by top-k only the top k
  // logits: the model (a GPU one on the device) reduces them, and the draw is the same.
  const bool full_logits = params.top_logprobs > 0 || keep_logits;
  const bool argmax_only = params.sampling.temperature <= 0.0f && !full_logits;
  const int top_k = full_logits ? 0 : sampler.CandidatesNeeded();
  int32_t argmax = -1;
  std::vector<Candidate> top;
  auto forward = [&](std::span<const int32_t> ids) -> absl::Status {
    if (top_k > 0) return model.ForwardTopK(ids, top_k, &top);
    if (!argmax_only) return model.Forward(ids, &logits);
    ASSIGN_OR_RETURN(argmax, model.ForwardArgMax(ids));
    return absl::OkStatus();
  };
  auto t0 = Clock::now();
  RETURN_IF_ERROR(forward(prompt));
  auto t1 = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  for (int step = 0; step < params.max_new_tokens; ++step) {
    if (params.top_logprobs > 0) result.top_logprobs.push_back(TopLogprobs(logits, params.top_logprobs));
    if (keep_logits) result.logits.push_back(logits);
    const int32_t next = argmax_only ? argmax : top_k > 0 ? sampler.SampleTop(top) : sampler.Sample(logits);
    const bool eos = !params.ignore_eos && std::find(params.eos_ids.begin(), params.eos_ids.end(),
                                                     next) != params.eos_ids.end();
    if (eos) {
      result.finish_reason = FinishReason::kStop;
      if (params.top_logprobs > 0) result.top_logprobs.pop_back();
      if (keep_logits) result.logits.pop_back();
      break;
    }
    result.token_ids.push_back(next);
    if (on_token) on_token(next);
    if (step + 1 == params.max_new_tokens) break;
    if (model.position() >= model.max_context()) {
      result.finish_reason = FinishReason::kContext;
      break;
    }
    RETURN_IF_ERROR(forward(std::span<const int32_t>(&next, 1)));
  }
  RETURN_IF_ERROR(model.Settle());
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return result;
}

}  // namespace pinmoe
