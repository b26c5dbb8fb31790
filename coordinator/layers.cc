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

namespace pinmoe {
namespace {

float SigmoidF(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float SiluF(float x) { return x / (1.0f + std::exp(-x)); }
// torch.nn.functional.softplus (beta 1, threshold 20).
float SoftplusF(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// x * rsqrt(sum(x^2) + eps), as the FLA-compatible l2norm in transformers.
void L2Normalize(float* x, int n) {
  const float ss = Dot(x, x, n);
  const float inv = 1.0f / std::sqrt(ss + 1e-6f);
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace

void GatedDeltaRule(const DeltaNetStep& d, const float* qkvz, size_t qkvz_stride, const float* ba,
                    size_t ba_stride, int tokens, float* core) {
  const int nk = d.key_heads, nv = d.value_heads, dk = d.key_head_dim, dv = d.value_head_dim;
  const int ratio = nv / nk, kernel = d.conv_kernel;
  const int key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  std::vector<float> mixed(conv_dim), conv_out(conv_dim), z(value_dim), b(nv), a(nv);
  std::vector<float> kv_mem(dv), delta(dv);
  for (int t = 0; t < tokens; ++t) {
    // Un-group the projection: per key head g it holds q_g, k_g, v_g (ratio heads), z_g (ratio heads).
    const float* row = qkvz + static_cast<size_t>(t) * qkvz_stride;
    const int group = 2 * dk + 2 * ratio * dv;
    for (int g = 0; g < nk; ++g) {
      const float* src = row + g * group;
      std::copy_n(src, dk, mixed.data() + g * dk);                                          // q
      std::copy_n(src + dk, dk, mixed.data() + key_dim + g * dk);                           // k
      std::copy_n(src + 2 * dk, ratio * dv, mixed.data() + 2 * key_dim + g * ratio * dv);  // v
      std::copy_n(src + 2 * dk + ratio * dv, ratio * dv, z.data() + g * ratio * dv);        // z
      const float* bar = ba + static_cast<size_t>(t) * ba_stride + g * 2 * ratio;
      std::copy_n(bar, ratio, b.data() + g * ratio);
      std::copy_n(bar + ratio, ratio, a.data() + g * ratio);
    }
    // Causal depthwise conv over the last `kernel` inputs, then SiLU; roll the state.
    for (int ch = 0; ch < conv_dim; ++ch) {
      const float* w = d.conv + static_cast<size_t>(ch) * kernel;
      float acc = 0;
      for (int j = 0; j < kernel - 1; ++j) acc += w[j] * d.conv_state[static_cast<size_t>(j) * conv_dim + ch];
      acc += w[kernel - 1] * mixed[ch];
      conv_out[ch] = SiluF(acc);
    }
    if (kernel > 1) {
      const size_t state_floats = static_cast<size_t>(kernel - 1) * conv_dim;
      std::copy(d.conv_state + conv_dim, d.conv_state + state_floats, d.conv_state);
      std::copy(mixed.begin(), mixed.end(), d.conv_state + state_floats - conv_dim);
    }
    float* q = conv_out.data();
    float* k = conv_out.data() + key_dim;
    const float* v = conv_out.data() + 2 * key_dim;
    for (int g = 0; g < nk; ++g) {
      L2Normalize(q + g * dk, dk);
      L2Normalize(k + g * dk, dk);
      for (int i = 0; i < dk; ++i) q[g * dk + i] *= q_scale;
    }
    // The delta rule, one value head at a time: S <- S * exp(g); S += k (beta (v - S^T k))^T; o = S^T q.
    for (int hv = 0; hv < nv; ++hv) {
      const int hk = hv / ratio;
      const float* kh = k + hk * dk;
      const float* qh = q + hk * dk;
      const float* vh = v + hv * dv;
      const float beta = SigmoidF(b[hv]);
      const float decay = std::exp(-std::exp(d.a_log[hv]) * SoftplusF(a[hv] + d.dt_bias[hv]));
      float* S = d.state + static_cast<size_t>(hv) * dk * dv;
      for (int i = 0; i < dk * dv; ++i) S[i] *= decay;
      std::fill(kv_mem.begin(), kv_mem.end(), 0.0f);
      for (int i = 0; i < dk; ++i) {
        for (int j = 0; j < dv; ++j) kv_mem[j] += S[i * dv + j] * kh[i];
      }
      for (int j = 0; j < dv; ++j) delta[j] = (vh[j] - kv_mem[j]) * beta;
      for (int i = 0; i < dk; ++i) {
        for (int j = 0; j < dv; ++j) S[i * dv + j] += kh[i] * delta[j];
      }
      float* o = core + static_cast<size_t>(t) * value_dim + hv * dv;
      std::fill(o, o + dv, 0.0f);
      for (int i = 0; i < dk; ++i) {
        for (int j = 0; j < dv; ++j) o[j] += S[i * dv + j] * qh[i];
      }
      // Gated RMSNorm: norm(o) * weight * silu(z).
      RmsNorm(o, d.norm, o, 1, dv, d.eps);
      for (int j = 0; j < dv; ++j) o[j] *= SiluF(z[hv * dv + j]);
    }
  }
}

}  // namespace pinmoe
