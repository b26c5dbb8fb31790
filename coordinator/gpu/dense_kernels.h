// The coordinator's GPU kernels besides the linear layers (fp32 activations): embedding gather, RMSNorm,
// per-head q/k norm + RoPE + KV-cache append, causal attention over the cache, SwiGLU, softmax top-k
// routing, the weighted expert sum and greedy arg-max. Each mirrors a CPU function in coordinator/layers.h
// or common/cpu_kernels.h and is tested against it (tests/gpu/dense_kernels_gpu_test.cc).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "coordinator/attention_form.h"  // kAttnMaxSplits

namespace pinmoe {

// y[r, :] = weight * x[r, :] / sqrt(mean(x[r, :]^2) + eps), rows x dim.
cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* y, int rows, int dim, float eps,
                          cudaStream_t stream);

// The attention core after the q/k/v projections, for `tokens` new tokens at first_position..: reads
// each token's row of the fused projection output, applies the per-head RMSNorm (q_norm / k_norm hold
// the effective weights) and rotate-half RoPE on the first rotary_dim dimensions to queries and keys,
// writes queries to q_out and keys/values into the caches at their positions.
struct QkNormRopeCacheArgs {
  const float* qkv = nullptr;  // [tokens, row_stride]
  int row_stride = 0;
  int q_offset = 0, q_head_stride = 0;  // query head h at q_offset + h * q_head_stride
  int k_offset = 0, v_offset = 0;       // key/value head g at offset + g * head_dim
  int heads = 0, kv_heads = 0, head_dim = 0, rotary_dim = 0;
  const float* q_norm = nullptr;    // [head_dim]
  const float* k_norm = nullptr;    // [head_dim]
  const float* inv_freq = nullptr;  // [rotary_dim / 2], as Rope computes it
  float eps = 1e-6f;
  int first_position = 0;
  const int* position_dev = nullptr;  // when set, the first position is read from here (CUDA graphs)
  float* q_out = nullptr;    // [tokens, heads, head_dim]
  void* k_cache = nullptr;   // [max_positions, kv_heads, head_dim] of fp32, or of bf16 when cache_bf16
  void* v_cache = nullptr;
  bool cache_bf16 = false;   // keys and values are stored rounded to bf16 (and read widened to fp32)
  // Batched decode (LaunchDecodeAttentionFused only): `batch` sequences of one token each, row b of qkv
  // and out for sequence b, whose caches start cache_seq_stride elements after sequence b - 1's and whose
  // position is position_dev[b].
  int batch = 1;
  size_t cache_seq_stride = 0;
  // LaunchDecodeAttentionFused only. 0: one block per (head, sequence) attends every position. 1 to
  // kAttnMaxSplits: the split form (head_dim % 32 == 0), `splits` blocks per (head, sequence), each over
  // its share of the positions with more loads in flight, merged by the last to finish
  // (deterministically, in split order); split_partials holds AttnSplitPartialFloats(batch, heads,
  // head_dim, splits) floats, split_counters batch * heads counters, zeroed before the first launch (each
  // launch leaves them zeroed); launches sharing them must not overlap.
  int splits = 0;
  // With splits >= 1 (and DecodeAttentionGroupedSupports): each block serves up to 8 query heads of one
  // kv head, reading each key and value once for all of them, and `splits` is the most blocks per
  // column of heads: a context of n positions uses one per 256 of them (the grouped split form).
  bool grouped = false;
  // The grouped form on tensor cores where it serves (a bf16 cache, a multiple of 8 query heads per kv
  // head, head_dim 128); false keeps it on the CUDA cores (A/B measurements).
  bool tensor_cores = true;
  // The per-head split form asks L2 for its share of the keys and values before it waits for the kernel
  // before it (the cache's earlier positions do not depend on that); false: not (A/B measurements).
  bool prefetch = true;
  float* split_partials = nullptr;
  unsigned int* split_counters = nullptr;
};
inline size_t AttnSplitPartialFloats(int batch, int heads, int head_dim, int splits) {
  return static_cast<size_t>(batch) * heads * splits * (static_cast<size_t>(head_dim) + 2);
}
cudaError_t LaunchQkNormRopeCache(const QkNormRopeCacheArgs& args, int tokens, cudaStream_t stream);
// Whether the grouped split form serves this shape: head_dim of 32, 64, 128 or 256 (at most 4 query
// heads a block at 256).
bool DecodeAttentionGroupedSupports(int heads, int kv_heads, int head_dim);

// Causal grouped-query attention: query token t (at first_position + t) attends cache positions
// 0..first_position + t. q, out: [tokens, heads, head_dim]; head_dim <= 256.
struct AttentionArgs {
  const float* q = nullptr;
  const void* k_cache = nullptr;  // [positions, kv_heads, head_dim], fp32 or (cache_bf16) bf16
  const void* v_cache = nullptr;
  bool cache_bf16 = false;
  int heads = 0, kv_heads = 0, head_dim = 0;
  int first_position = 0;
  const int* position_dev = nullptr;  // when set, the first position is read from here (CUDA graphs)
  float* out = nullptr;
};
cudaError_t LaunchAttention(const AttentionArgs& args, int tokens, cudaStream_t stream);
// The attention after LaunchQkNormRopeCache(qa, ...): over its queries, caches and positions, into out.
inline AttentionArgs AttentionAfter(const QkNormRopeCacheArgs& qa, float* out) {
  AttentionArgs aa;
  aa.q = qa.q_out;
  aa.k_cache = qa.k_cache;
  aa.v_cache = qa.v_cache;
  aa.cache_bf16 = qa.cache_bf16;
  aa.heads = qa.heads;
  aa.kv_heads = qa.kv_heads;
  aa.head_dim = qa.head_dim;
  aa.first_position = qa.first_position;
  aa.position_dev = qa.position_dev;
  aa.out = out;
  return aa;
}

// Decode (one token per sequence): LaunchQkNormRopeCache then LaunchAttention in one kernel (args.q_out
// unused); out [batch, heads, head_dim].
cudaError_t LaunchDecodeAttentionFused(const QkNormRopeCacheArgs& args, float* out, cudaStream_t stream);

// x[t, :] = table[ids[t], :] widened to fp32; table [vocab, hidden] in bf16 or fp32.
cudaError_t LaunchEmbed(const void* table, bool bf16, const int32_t* ids, int tokens, int hidden, float* x,
                        cudaStream_t stream);

// act[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]  (gate and up projections fused by rows; rows
// of gate_up are row_stride apart).
cudaError_t LaunchSiluMul(const float* gate_up, int row_stride, int tokens, int inter, float* act,
                          cudaStream_t stream);

// Qwen3-Next's output gate: attn[t, h, d] *= sigmoid(gate[t * gate_row_stride + h * gate_head_stride + d]).
cudaError_t LaunchSigmoidGate(float* attn, const float* gate, int gate_row_stride, int gate_head_stride, int tokens,
                              int heads, int head_dim, cudaStream_t stream);

// Qwen3-Next's shared expert: x[t, :] += sigmoid(gate[t * gate_stride]) * y[t, :].
cudaError_t LaunchGatedAdd(float* x, const float* y, const float* gate, int gate_stride, int tokens, int hidden,
                           cudaStream_t stream);

// x[t, :] += sum over s of weights[t, s] * slots[t, s, :], slots in order (as the CPU path sums them).
cudaError_t LaunchMoeCombine(const float* slots, const float* weights, int tokens, int top_k, int hidden,
                             float* x, cudaStream_t stream);

// index = arg max of values[0, n) (ties to the lower index; NaN is never picked). The scratch (zeroed
// once, 16 bytes) is left zeroed for the next call; calls sharing it must not overlap.
struct ArgMaxScratch {
  unsigned long long* key = nullptr;
  unsigned int* blocks_done = nullptr;
};
cudaError_t LaunchArgMax(const float* values, int n, ArgMaxScratch scratch, int32_t* index, cudaStream_t stream);

// The k largest of values[0, n), largest first, ties to the lower index (the sampler's candidates), as
// keys (DecodeTopKKey) in out[0, k): each block of the first pass sorts kTopKChunk values in shared
// memory and keeps its k best, a second pass sorts those. k <= kDeviceTopKMax; partial holds
// TopKPartialKeys(n) keys; n up to kTopKChunk * kTopKMaxChunks.
constexpr int kDeviceTopKMax = 64;
constexpr int kTopKChunk = 2048;
constexpr int kTopKMaxChunks = 256;
inline int TopKPartialKeys(int n) { return (n + kTopKChunk - 1) / kTopKChunk * kDeviceTopKMax; }
cudaError_t LaunchTopK(const float* values, int n, int k, unsigned long long* partial, unsigned long long* out,
                       cudaStream_t stream);
inline void DecodeTopKKey(unsigned long long key, int32_t* index, float* value) {
  *index = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFull));
  uint32_t b = static_cast<uint32_t>(key >> 32);
  b = (b & 0x80000000u) ? (b & 0x7FFFFFFFu) : ~b;
  std::memcpy(value, &b, sizeof(b));
}

// Per token: softmax over logits [tokens, num_experts], the top_k largest (ties to the lower index),
// renormalised when norm_topk_prob. ids/weights: [tokens, top_k]. num_experts <= 512.
cudaError_t LaunchRouteTopK(const float* logits, int tokens, int num_experts, int top_k, bool norm_topk_prob,
                            int32_t* ids, float* weights, cudaStream_t stream);

}  // namespace pinmoe
