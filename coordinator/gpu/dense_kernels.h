// The coordinator's first GPU kernels (fp32): RMSNorm, rotary embeddings, single-token attention over a
// KV cache, and softmax top-k routing. Each mirrors a CPU function in coordinator/layers.h or
// common/cpu_kernels.h and is tested against it (tests/gpu/dense_kernels_gpu_test.cc). They are the
// building blocks of the GPU dense path; the model files do not use them yet.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pinmoe {

// y[r, :] = weight * x[r, :] / sqrt(mean(x[r, :]^2) + eps), rows x dim.
cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* y, int rows, int dim, float eps,
                          cudaStream_t stream);

// Rotate-half RoPE on the first rotary_dim dimensions of each head, in place. x: [tokens, heads,
// head_dim]; token t sits at position first_position + t; inv_freq: [rotary_dim / 2] (as Rope computes).
cudaError_t LaunchRope(float* x, int tokens, int heads, int head_dim, int rotary_dim, const float* inv_freq,
                       int first_position, cudaStream_t stream);

// One query token: q [heads, head_dim] against the first `length` positions of k, v
// [positions, kv_heads, head_dim]; out [heads, head_dim]; scratch: [heads, length] floats.
cudaError_t LaunchDecodeAttention(const float* q, const float* k, const float* v, int length, int heads,
                                  int kv_heads, int head_dim, float* scratch, float* out, cudaStream_t stream);

// Per token: softmax over logits [tokens, num_experts], the top_k largest (ties to the lower index),
// renormalised when norm_topk_prob. ids/weights: [tokens, top_k].
cudaError_t LaunchRouteTopK(const float* logits, int tokens, int num_experts, int top_k, bool norm_topk_prob,
                            int32_t* ids, float* weights, cudaStream_t stream);

}  // namespace pinmoe
