#include "coordinator/gpu/delta_net.h"

#include "worker/gpu/pdl.cuh"

namespace pinmoe {
namespace {

constexpr int kMaxKernel = 8;
constexpr int kRuleThreads = 128;

__device__ __forceinline__ float SiluF(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__device__ float BlockSum128(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // red may still be read from the previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kRuleThreads / 32; ++w) total += red[w];
  return total;
}

// grid: ceil(conv_dim / 128) blocks of 128 threads.
__global__ void DeltaConvKernel(DeltaNetArgs a, int tokens) {
  PdlWait();
  PdlTrigger();
  const int key_dim = a.nk * a.dk, ratio = a.nv / a.nk, conv_dim = 2 * key_dim + a.nv * a.dv;
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= conv_dim) return;
  const int group = 2 * a.dk + 2 * ratio * a.dv;
  int src;
  if (ch < key_dim) {
    src = (ch / a.dk) * group + ch % a.dk;
  } else if (ch < 2 * key_dim) {
    const int c = ch - key_dim;
    src = (c / a.dk) * group + a.dk + c % a.dk;
  } else {
    const int c = ch - 2 * key_dim;
    src = (c / (ratio * a.dv)) * group + 2 * a.dk + c % (ratio * a.dv);
  }
  float w[kMaxKernel], win[kMaxKernel];
  for (int j = 0; j < a.kernel; ++j) w[j] = a.conv_w[static_cast<size_t>(ch) * a.kernel + j];
  for (int j = 0; j + 1 < a.kernel; ++j) win[j] = a.conv_state[static_cast<size_t>(j) * conv_dim + ch];
  for (int t = 0; t < tokens; ++t) {
    const float in = a.proj[static_cast<size_t>(t) * a.proj_stride + src];
    float acc = 0.f;
    for (int j = 0; j + 1 < a.kernel; ++j) acc += w[j] * win[j];
    acc += w[a.kernel - 1] * in;
    a.conv_out[static_cast<size_t>(t) * conv_dim + ch] = SiluF(acc);
    for (int j = 0; j + 2 < a.kernel; ++j) win[j] = win[j + 1];
    if (a.kernel > 1) win[a.kernel - 2] = in;
  }
  for (int j = 0; j + 1 < a.kernel; ++j) a.conv_state[static_cast<size_t>(j) * conv_dim + ch] = win[j];
}

// grid: nv blocks of kRuleThreads; dynamic shared memory: S [dk, dv] + q, k [dk].
__global__ void __launch_bounds__(kRuleThreads) DeltaRuleKernel(DeltaNetArgs a, int tokens) {
  extern __shared__ float sm[];
  __shared__ float red[kRuleThreads / 32];
  const int hv = blockIdx.x, dk = a.dk, dv = a.dv, j = threadIdx.x;
  const int ratio = a.nv / a.nk, hk = hv / ratio, key_dim = a.nk * dk;
  const int conv_dim = 2 * key_dim + a.nv * dv, qkvz_dim = 2 * key_dim + 2 * a.nv * dv;
  const int group = 2 * dk + 2 * ratio * dv;
  float* S = sm;  // [dk][dv]
  float* q = sm + dk * dv;
  float* k = q + dk;
  float* state = a.state + static_cast<size_t>(hv) * dk * dv;
  PdlWait();
  PdlTrigger();
  for (int i = threadIdx.x; i < dk * dv; i += kRuleThreads) S[i] = state[i];
  const float a_log = a.a_log[hv], dt_bias = a.dt_bias[hv];
  const float q_scale = 1.0f / sqrtf(static_cast<float>(dk));
  for (int t = 0; t < tokens; ++t) {
    const float* row = a.conv_out + static_cast<size_t>(t) * conv_dim;
    const float* prow = a.proj + static_cast<size_t>(t) * a.proj_stride;
    float qq = 0.f, kk = 0.f;
    if (j < dk) {
      qq = row[hk * dk + j];
      kk = row[key_dim + hk * dk + j];
    }
    const float qss = BlockSum128(qq * qq, red);
    const float kss = BlockSum128(kk * kk, red);
    if (j < dk) {
      q[j] = qq * (1.0f / sqrtf(qss + 1e-6f)) * q_scale;
      k[j] = kk * (1.0f / sqrtf(kss + 1e-6f));
    }
    __syncthreads();
    const float* bar = prow + qkvz_dim + hk * 2 * ratio;
    const float beta = SigmoidF(bar[hv % ratio]);
    const float decay = expf(-expf(a_log) * SoftplusF(bar[ratio + hv % ratio] + dt_bias));
    float o = 0.f;
    if (j < dv) {
      const float v = row[2 * key_dim + hv * dv + j];
      float kv = 0.f;
      for (int i = 0; i < dk; ++i) {
        const float s = S[i * dv + j] * decay;
        S[i * dv + j] = s;
        kv += s * k[i];
      }
      const float delta = (v - kv) * beta;
      for (int i = 0; i < dk; ++i) {
        const float s = S[i * dv + j] + k[i] * delta;
        S[i * dv + j] = s;
        o += s * q[i];
      }
    }
    // Gated RMSNorm over the head's dv outputs.
    const float ss = BlockSum128(j < dv ? o * o : 0.f, red);
    if (j < dv) {
      const float inv = 1.0f / sqrtf(ss / static_cast<float>(dv) + a.eps);
      const float z = prow[hk * group + 2 * dk + ratio * dv + (hv % ratio) * dv + j];
      a.core[static_cast<size_t>(t) * a.nv * dv + hv * dv + j] = a.norm_w[j] * (o * inv) * SiluF(z);
    }
    __syncthreads();  // q and k are rewritten for the next token
  }
  for (int i = threadIdx.x; i < dk * dv; i += kRuleThreads) state[i] = S[i];
}

}  // namespace

cudaError_t LaunchDeltaConv(const DeltaNetArgs& a, int tokens, cudaStream_t stream) {
  if (tokens <= 0 || a.kernel < 1 || a.kernel > kMaxKernel || a.nk <= 0 || a.nv % a.nk != 0) {
    return cudaErrorInvalidValue;
  }
  const int conv_dim = 2 * a.nk * a.dk + a.nv * a.dv;
  return LaunchPdl(DeltaConvKernel, dim3((conv_dim + 127) / 128), dim3(128), 0, stream, a, tokens);
}

cudaError_t LaunchDeltaRule(const DeltaNetArgs& a, int tokens, cudaStream_t stream) {
  if (tokens <= 0 || a.dv > kRuleThreads || a.dk > kRuleThreads || a.nk <= 0 || a.nv % a.nk != 0) {
    return cudaErrorInvalidValue;
  }
  const size_t smem = (static_cast<size_t>(a.dk) * a.dv + 2 * a.dk) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(DeltaRuleKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return LaunchPdl(DeltaRuleKernel, dim3(a.nv), dim3(kRuleThreads), smem, stream, a, tokens);
}

}  // namespace pinmoe
