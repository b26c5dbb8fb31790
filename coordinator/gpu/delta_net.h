// Qwen3-Next's Gated DeltaNet on the GPU, after the fused in_proj_qkvz / in_proj_ba projection:
//  - DeltaConv: un-groups q, k, v from the per-key-head layout of the projection, runs the causal
//    depthwise convolution over the conv state and the step's tokens, applies SiLU, and leaves the last
//    kernel - 1 inputs in the state. One thread per channel, tokens in order.
//  - DeltaRule: per value head (one block, the [k_head_dim, v_head_dim] state in shared memory), token
//    by token: l2-normalised q (scaled by k_head_dim^-1/2) and k, decay exp(-exp(A_log) softplus(a +
//    dt_bias)), beta = sigmoid(b), the delta rule S <- decay S + k (beta (v - (decay S)^T k))^T, o = S^T q,
//    then the gated RMSNorm norm(o) * w * silu(z). The recurrence serves decode and prefill alike (a
//    chunked prefill form is future work); the arithmetic follows the CPU path's order.
#pragma once

#include <cuda_runtime.h>

namespace pinmoe {

struct DeltaNetArgs {
  int nk = 0, nv = 0, dk = 0, dv = 0, kernel = 0;  // key/value heads and head dims, conv kernel
  const float* proj = nullptr;  // [tokens, proj_stride]: qkvz grouped per key head, then ba
  int proj_stride = 0;
  const float* conv_w = nullptr;  // [conv_dim, kernel]
  float* conv_state = nullptr;    // [kernel - 1, conv_dim], oldest first
  float* conv_out = nullptr;      // [tokens, conv_dim]: q | k | v
  const float* a_log = nullptr;   // [nv]
  const float* dt_bias = nullptr;  // [nv]
  const float* norm_w = nullptr;   // [dv]
  float eps = 1e-6f;
  float* state = nullptr;  // [nv, dk, dv]
  float* core = nullptr;   // [tokens, nv * dv]
};

cudaError_t LaunchDeltaConv(const DeltaNetArgs& args, int tokens, cudaStream_t stream);
// dv <= 128 and dk * dv * 4 bytes of shared memory per block.
cudaError_t LaunchDeltaRule(const DeltaNetArgs& args, int tokens, cudaStream_t stream);

}  // namespace pinmoe
