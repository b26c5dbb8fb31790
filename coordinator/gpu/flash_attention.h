// Prefill attention on tensor cores: causal grouped-query attention for a block of new tokens over the
// KV cache, tiled 64 queries x 64 keys with an online softmax (the running max and sum per query row in
// shared memory, the output tile rescaled there), Q, K, V and the probabilities rounded to bf16 for
// WMMA, fp32 accumulation. For bf16 models only: the fp32 reference path keeps the CUDA-core kernel
// (LaunchAttention), whose arithmetic matches the CPU's.
#pragma once

#include <cuda_runtime.h>

namespace pinmoe {

struct FlashAttentionArgs {
  const float* q = nullptr;        // [tokens, heads, head_dim]
  const void* k_cache = nullptr;  // [positions, kv_heads, head_dim], fp32 or (cache_bf16) bf16
  const void* v_cache = nullptr;
  bool cache_bf16 = false;
  int tokens = 0, heads = 0, kv_heads = 0, head_dim = 0;  // head_dim 32, 64, 128 or 256
  int first_position = 0;  // token t sits at first_position + t and sees positions 0..that
  float* out = nullptr;    // [tokens, heads, head_dim]
};

inline bool FlashAttentionSupports(int head_dim) {
  return head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
}
cudaError_t LaunchFlashAttention(const FlashAttentionArgs& args, cudaStream_t stream);

}  // namespace pinmoe
