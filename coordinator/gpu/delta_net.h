// Qwen3-Next's Gated DeltaNet on the GPU, after the fused in_proj_qkvz / in_proj_ba projection. Each
// launcher mirrors part of GatedDeltaRule (coordinator/layers.h), the CPU reference it is tested against
// (tests/gpu/delta_net_gpu_test.cc).
//  - DeltaConv: un-groups q, k, v from the per-key-head layout of the projection, runs the causal
//    depthwise convolution over the conv state and the step's tokens, applies SiLU, and leaves the last
//    kernel - 1 inputs in the state. Short steps: one thread per channel walking the tokens; prefill-sized
//    ones: one thread per (channel, run of tokens), then one pass that rolls the state.
//  - DeltaRule: l2-normalised q (scaled by k_head_dim^-1/2) and k, decay exp(g) with g = -exp(A_log)
//    softplus(a + dt_bias), beta = sigmoid(b), the delta rule S <- exp(g) S + k (beta (v - (exp(g) S)^T
//    k))^T, o = S^T q, then the gated RMSNorm norm(o) * w * silu(z). Short steps (decode) run the
//    recurrence token by token, one block per value head with its [k_head_dim, v_head_dim] state in
//    shared memory. From kDeltaChunkedMinTokens tokens on, the chunked form: per chunk of 64 tokens the
//    intra-chunk part is solved as a triangular system (the WY form of the delta rule: T = (I + A)^-1,
//    A = strictly lower beta_r exp(G_r - G_s) k_r.k_s), so the state is read and written once per chunk
//    instead of once per token and each value head's columns are split over several blocks; the gated
//    norm follows as its own pass. Both forms compute the same function; they differ in rounding.
//
// Every launcher takes `batch` sequences of `tokens` tokens each (rows b * tokens + t of proj, conv_out
// and core; state and conv state b at b times their per-sequence size): batched decode runs batch
// sequences of one token in one launch. The chunked and parallel forms serve batch 1 (prefill).
#pragma once

#include <cuda_runtime.h>

namespace pinmoe {

// Which form of the delta rule (and of the conv) runs: by the step's size, or one of them (for tests
// and benchmarks; the chunked form needs batch 1).
enum class DeltaForm { kAuto = 0, kRecurrent = 1, kChunked = 2 };

struct DeltaNetArgs {
  int nk = 0, nv = 0, dk = 0, dv = 0, kernel = 0;  // key/value heads and head dims, conv kernel
  const float* proj = nullptr;  // [batch * tokens, proj_stride]: qkvz grouped per key head, then ba
  int proj_stride = 0;
  const float* conv_w = nullptr;  // [conv_dim, kernel]
  float* conv_state = nullptr;    // [batch][kernel - 1, conv_dim], oldest first
  float* conv_out = nullptr;      // [batch * tokens, conv_dim]: q | k | v
  const float* a_log = nullptr;   // [nv]
  const float* dt_bias = nullptr;  // [nv]
  const float* norm_w = nullptr;   // [dv]
  float eps = 1e-6f;
  float* state = nullptr;  // [batch][nv, dk, dv]
  float* core = nullptr;   // [batch * tokens, nv * dv]
  int batch = 1;           // sequences, each with its own states
  DeltaForm form = DeltaForm::kAuto;
};

// From this many tokens per step on (batch 1), the chunked delta rule and the token-parallel conv.
constexpr int kDeltaChunkedMinTokens = 32;

// dk and dv <= 128 (the recurrence keeps dk * dv floats in shared memory; the chunked form about
// 3 * 64 * (dk + 1) + 32 * (64 + dk) + 64 * 65).
cudaError_t LaunchDeltaConv(const DeltaNetArgs& args, int tokens, cudaStream_t stream);
cudaError_t LaunchDeltaRule(const DeltaNetArgs& args, int tokens, cudaStream_t stream);

}  // namespace pinmoe
