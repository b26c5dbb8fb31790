#include "coordinator/layers.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/cpu_kernels.h"
#include "common/str_cat.h"

namespace pinmoe {

Rope::Rope(int head_dim, int rotary_dim, double theta)
    : head_dim_(head_dim), rotary_dim_(rotary_dim), inv_freq_(rotary_dim / 2) {
  // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in fp32.
  const float base = static_cast<float>(theta);
  for (int i = 0; i < rotary_dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    inv_freq_[i] = 1.0f / std::pow(base, exponent);
  }
}

void Rope::Apply(float* x, int heads, int position) const {
  const int half = rotary_dim_ / 2;
  for (int i = 0; i < half; ++i) {
    const float angle = static_cast<float>(position) * inv_freq_[i];
    const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
    const float s = static_cast<float>(std::sin(static_cast<double>(angle)));
    for (int h = 0; h < heads; ++h) {
      float* xh = x + static_cast<size_t>(h) * head_dim_;
      const float a = xh[i], b = xh[i + half];
      xh[i] = a * c - b * s;
      xh[i + half] = b * c + a * s;
    }
  }
}

void CausalAttention(const float* q, int tokens, int heads, const KvCache& cache, float* out) {
  const int hd = cache.head_dim, kvh = cache.kv_heads;
  const int group = heads / kvh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int first = cache.length - tokens;  // position of the first new token
  std::vector<float> scores(static_cast<size_t>(cache.length));
  for (int t = 0; t < tokens; ++t) {
    const int visible = first + t + 1;
    for (int h = 0; h < heads; ++h) {
      const float* qh = q + (static_cast<size_t>(t) * heads + h) * hd;
      const int g = h / group;
      float max_score = -INFINITY;
      for (int s = 0; s < visible; ++s) {
        const float* ks = cache.k.data() + (static_cast<size_t>(s) * kvh + g) * hd;
        scores[s] = Dot(qh, ks, hd) * scale;
        max_score = std::max(max_score, scores[s]);
      }
      float sum = 0;
      for (int s = 0; s < visible; ++s) {
        scores[s] = std::exp(scores[s] - max_score);
        sum += scores[s];
      }
      const float inv = 1.0f / sum;
      float* oh = out + (static_cast<size_t>(t) * heads + h) * hd;
      std::fill(oh, oh + hd, 0.0f);
      for (int s = 0; s < visible; ++s) {
        const float p = scores[s] * inv;
        const float* vs = cache.v.data() + (static_cast<size_t>(s) * kvh + g) * hd;
        for (int d = 0; d < hd; ++d) oh[d] += p * vs[d];
      }
    }
  }
}

void QkNormRopeAttend(const Rope& rope, const float* q_norm, const float* k_norm, float eps, int position,
                      int tokens, int heads, float* q, std::vector<float>& k, const std::vector<float>& v,
                      KvCache* cache, float* attn) {
  const int hd = cache->head_dim, kvh = cache->kv_heads;
  RmsNorm(q, q_norm, q, static_cast<size_t>(tokens) * heads, hd, eps);
  RmsNorm(k.data(), k_norm, k.data(), static_cast<size_t>(tokens) * kvh, hd, eps);
  for (int t = 0; t < tokens; ++t) {
    rope.Apply(q + static_cast<size_t>(t) * heads * hd, heads, position + t);
    rope.Apply(k.data() + static_cast<size_t>(t) * kvh * hd, kvh, position + t);
  }
  cache->k.insert(cache->k.end(), k.begin(), k.end());
  cache->v.insert(cache->v.end(), v.begin(), v.end());
  cache->length += tokens;
  CausalAttention(q, tokens, heads, *cache, attn);
}

void RouteTopK(const float* logits, int num_experts, int top_k, bool norm_topk_prob, int32_t* ids,
               float* weights) {
  std::vector<float> probs(logits, logits + num_experts);
  const float mx = *std::max_element(probs.begin(), probs.end());
  float sum = 0;
  for (float& p : probs) {
    p = std::exp(p - mx);
    sum += p;
  }
  for (float& p : probs) p /= sum;
  std::vector<int> order(num_experts);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + top_k, order.end(), [&](int a, int b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  });
  float picked = 0;
  for (int i = 0; i < top_k; ++i) {
    ids[i] = order[i];
    weights[i] = probs[order[i]];
    picked += weights[i];
  }
  if (norm_topk_prob) {
    for (int i = 0; i < top_k; ++i) weights[i] /= picked;
  }
}

absl::Status EmbedTokens(const ModelConfig& config, const std::vector<float>& embed,
                         std::span<const int32_t> ids, int position, int max_context, std::vector<float>* x) {
  const int tokens = static_cast<int>(ids.size());
  if (tokens == 0) return absl::InvalidArgumentError("no tokens to run");
  if (position + tokens > max_context) {
    return absl::OutOfRangeError(StrCat("sequence of ", position + tokens, " tokens exceeds the context of ",
                                        max_context));
  }
  const size_t hidden = config.hidden_size;
  x->resize(static_cast<size_t>(tokens) * hidden);
  for (int t = 0; t < tokens; ++t) {
    if (ids[t] < 0 || ids[t] >= config.vocab_size) {
      return absl::InvalidArgumentError(StrCat("token id ", ids[t], " is outside the vocabulary of ",
                                               config.vocab_size));
    }
    std::copy_n(embed.data() + static_cast<size_t>(ids[t]) * hidden, hidden, x->data() + t * hidden);
  }
  return absl::OkStatus();
}

void LastTokenLogits(const ModelConfig& config, const float* x_last, const float* norm, const float* head,
                     std::vector<float>* logits) {
  const size_t hidden = config.hidden_size;
  std::vector<float> normed(hidden);
  RmsNorm(x_last, norm, normed.data(), 1, hidden, config.rms_norm_eps);
  logits->resize(config.vocab_size);
  MatMulTransposed(normed.data(), head, logits->data(), 1, hidden, config.vocab_size);
}

}  // namespace pinmoe
