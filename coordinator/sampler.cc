#include "coordinator/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace pinmoe {

int32_t ArgMax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

std::vector<Candidate> TopCandidates(std::span<const float> logits, int k) {
  const int n = static_cast<int>(logits.size());
  k = std::clamp(k, 0, n);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<Candidate> top(k);
  for (int i = 0; i < k; ++i) top[i] = {order[i], logits[order[i]]};
  return top;
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (params_.temperature <= 0.0f) return ArgMax(logits);
  const int n = static_cast<int>(logits.size());
  const int keep = params_.top_k > 0 && params_.top_k < n ? params_.top_k : n;
  const std::vector<Candidate> top = TopCandidates(logits, keep);
  return SampleTop(top);
}

int Sampler::CandidatesNeeded() const { return params_.temperature > 0.0f && params_.top_k > 0 ? params_.top_k : 0; }

int32_t Sampler::SampleTop(std::span<const Candidate> top) {
  if (top.empty()) return 0;
  if (params_.temperature <= 0.0f) return top[0].id;
  int keep = static_cast<int>(top.size());
  std::vector<double> probs(keep);
  const double mx = top[0].logit / params_.temperature;
  double sum = 0;
  for (int i = 0; i < keep; ++i) {
    probs[i] = std::exp(top[i].logit / params_.temperature - mx);
    sum += probs[i];
  }
  if (params_.top_p < 1.0f) {
    // Keep the smallest prefix whose mass reaches top_p (at least one token).
    double mass = 0;
    int cut = keep;
    for (int i = 0; i < keep; ++i) {
      mass += probs[i] / sum;
      if (mass >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  std::uniform_real_distribution<double> uniform(0.0, sum);
  double r = uniform(rng_);
  for (int i = 0; i < keep; ++i) {
    r -= probs[i];
    if (r < 0) return top[i].id;
  }
  return top[keep - 1].id;
}

std::vector<TokenLogprob> TopLogprobs(std::span<const float> logits, int k) {
  const int n = static_cast<int>(logits.size());
  k = std::min(k, n);
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - mx));
  const float log_z = mx + static_cast<float>(std::log(sum));
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<TokenLogprob> out;
  for (int i = 0; i < k; ++i) out.push_back({order[i], logits[order[i]] - log_z});
  return out;
}

}  // namespace pinmoe
