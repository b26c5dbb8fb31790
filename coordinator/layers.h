// The coordinator's CPU building blocks besides the plain kernels in common/cpu_kernels.h: rotary
// embeddings, grouped-query attention over a KV cache, and softmax top-k routing. All fp32, each written
// to match transformers' arithmetic closely enough for 1e-4 agreement on logits.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/model_config.h"

namespace pinmoe {

// Rotary embedding in the rotate-half layout (pairs (i, i + dim/2)), on `rotary_dim` leading
// dimensions of each head. Frequencies are computed in fp32 as transformers does.
class Rope {
 public:
  Rope(int head_dim, int rotary_dim, double theta);
  // x: [heads, head_dim] for one token at `position`, rotated in place.
  void Apply(float* x, int heads, int position) const;
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  int head_dim_;
  int rotary_dim_;
  std::vector<float> inv_freq_;  // [rotary_dim / 2]
};

// KV cache for one attention layer: [positions, kv_heads, head_dim] for K and V, grown on demand up to
// max_positions.
struct KvCache {
  std::vector<float> k, v;
  int kv_heads = 0, head_dim = 0, length = 0;
};

// Causal attention for `tokens` new queries whose K/V have already been appended to the cache (the last
// `tokens` entries). q: [tokens, heads, head_dim]; out: [tokens, heads, head_dim].
void CausalAttention(const float* q, int tokens, int heads, const KvCache& cache, float* out);

// The shared core of Qwen3-style attention for `tokens` new tokens starting at `position`: per-head
// RMSNorm of q [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim] (in place), RoPE, K and V
// appended to the cache, causal attention into attn [tokens, heads, head_dim].
void QkNormRopeAttend(const Rope& rope, const float* q_norm, const float* k_norm, float eps, int position,
                      int tokens, int heads, float* q, std::vector<float>& k, const std::vector<float>& v,
                      KvCache* cache, float* attn);

// Qwen3-Next's Gated DeltaNet after its two input projections: the weights and the recurrent state of
// one layer (the state is updated in place).
struct DeltaNetStep {
  int key_heads = 0, value_heads = 0, key_head_dim = 0, value_head_dim = 0, conv_kernel = 0;
  float eps = 1e-6f;               // of the gated RMSNorm
  const float* conv = nullptr;     // [conv_dim, conv_kernel], conv_dim = 2 * key_dim + value_dim
  const float* a_log = nullptr;    // [value_heads]
  const float* dt_bias = nullptr;  // [value_heads]
  const float* norm = nullptr;     // [value_head_dim], used as is
  float* conv_state = nullptr;     // [conv_kernel - 1, conv_dim]: the last inputs, oldest first
  float* state = nullptr;          // [value_heads, key_head_dim, value_head_dim]
};

// `tokens` tokens in order, token by token (the reference for the GPU's recurrent and chunked forms):
// un-groups q, k, v, z from qkvz (per key head: q, k, v of its value heads, z of its value heads; rows
// qkvz_stride apart) and b, a from ba (per key head: b then a of its value heads; rows ba_stride apart),
// runs the causal depthwise conv + SiLU, l2-normalises q (then scales it by key_head_dim^-1/2) and k,
// applies the delta rule S <- exp(g) S; S += k (beta (v - S^T k))^T; o = S^T q per value head with
// beta = sigmoid(b), g = -exp(A_log) softplus(a + dt_bias), and the gated RMSNorm norm(o) * w * silu(z).
// core: [tokens, value_heads * value_head_dim].
void GatedDeltaRule(const DeltaNetStep& d, const float* qkvz, size_t qkvz_stride, const float* ba,
                    size_t ba_stride, int tokens, float* core);

// Softmax over `num_experts` router logits, then the top_k largest probabilities (ties to the lower
// index), renormalised when norm_topk_prob. ids/weights: [top_k].
void RouteTopK(const float* logits, int num_experts, int top_k, bool norm_topk_prob, int32_t* ids,
               float* weights);

// The start of every forward pass: checks that `ids` fit the context after `position` tokens and the
// vocabulary, then gathers their embedding rows into x [tokens, hidden].
absl::Status EmbedTokens(const ModelConfig& config, const std::vector<float>& embed,
                         std::span<const int32_t> ids, int position, int max_context, std::vector<float>* x);

// The end: final RMSNorm of one hidden row (norm holds the effective weights) and the head, logits
// [vocab].
void LastTokenLogits(const ModelConfig& config, const float* x_last, const float* norm, const float* head,
                     std::vector<float>* logits);

}  // namespace pinmoe
