// Turns logits into the next token: greedy at temperature 0, else temperature, top-k, top-p (in that
// order, as transformers' generate applies them) and a draw from a seeded generator.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace pinmoe {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  uint64_t seed = 0;
};

struct TokenLogprob {
  int32_t id;
  float logprob;
};

// A token and its logit, as the sampler sees its candidates.
struct Candidate {
  int32_t id;
  float logit;
};

// The k largest logits, largest first, ties to the lower id.
std::vector<Candidate> TopCandidates(std::span<const float> logits, int k);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  int32_t Sample(std::span<const float> logits);
  // How many candidates the next draw needs when the model can supply the top ones itself (a GPU model
  // selects them on the device): top_k when it bounds the draw, else 0 (the draw needs every logit).
  int CandidatesNeeded() const;
  // The draw from the top CandidatesNeeded() candidates (TopCandidates' order): the same token, and the
  // same generator state after it, as Sample over all the logits.
  int32_t SampleTop(std::span<const Candidate> top);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// The k most likely tokens under log_softmax(logits) (the model's own distribution, before sampling
// settings), most likely first, ties to the lower id.
std::vector<TokenLogprob> TopLogprobs(std::span<const float> logits, int k);

// Index of the largest logit, ties to the lower id.
int32_t ArgMax(std::span<const float> logits);

}  // namespace pinmoe
