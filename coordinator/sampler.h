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

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  int32_t Sample(std::span<const float> logits);

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
