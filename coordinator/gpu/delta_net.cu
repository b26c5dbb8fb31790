#include "coordinator/gpu/delta_net.h"

#include "worker/gpu/pdl.cuh"

namespace pinmoe {
namespace {

constexpr int kMaxKernel = 8;
constexpr int kRuleThreads = 128;
constexpr int kMaxHeadDim = 128;
// Chunked form: tokens per chunk, value columns per block, threads per block.
constexpr int kChunk = 64;
constexpr int kSlice = 32;
constexpr int kChunkThreads = 256;
constexpr int kChunkWarps = kChunkThreads / 32;
constexpr int kChunkRowsPerWarp = kChunk / kChunkWarps;     // 8
constexpr int kSliceRowsPerWarp = kMaxHeadDim / kChunkWarps;  // 16 state rows per thread at most
// Token-parallel conv: tokens per thread.
constexpr int kConvRun = 16;

__device__ __forceinline__ float SiluF(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__device__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sums v over a block of `threads` (a multiple of 32, at most 1024); red holds one float per warp.
__device__ float BlockSum(float v, float* red, int threads) {
  v = WarpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // red may still be read from the previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < threads / 32; ++w) total += red[w];
  return total;
}

// Where conv channel ch (q | k | v) sits in a projection row grouped per key head.
__device__ __forceinline__ int ConvSource(const DeltaNetArgs& a, int ch) {
  const int key_dim = a.nk * a.dk, ratio = a.nv / a.nk, group = 2 * a.dk + 2 * ratio * a.dv;
  if (ch < key_dim) return (ch / a.dk) * group + ch % a.dk;
  if (ch < 2 * key_dim) {
    const int c = ch - key_dim;
    return (c / a.dk) * group + a.dk + c % a.dk;
  }
  const int c = ch - 2 * key_dim;
  return (c / (ratio * a.dv)) * group + 2 * a.dk + c % (ratio * a.dv);
}

__host__ __device__ __forceinline__ int ConvDim(const DeltaNetArgs& a) { return 2 * a.nk * a.dk + a.nv * a.dv; }

// The gated RMSNorm of value head hv's raw output o at column j, given ss, the sum of squares over the
// head's dv outputs: norm_w * (o / rms) * silu(z), z from the token's projection row prow.
__device__ __forceinline__ float GatedNorm(const DeltaNetArgs& a, const float* prow, int hv, int j, float o,
                                           float ss) {
  const int ratio = a.nv / a.nk, group = 2 * a.dk + 2 * ratio * a.dv;
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(a.dv) + a.eps);
  const float z = prow[(hv / ratio) * group + 2 * a.dk + ratio * a.dv + (hv % ratio) * a.dv + j];
  return a.norm_w[j] * (o * inv) * SiluF(z);
}

// Batch 1: the input of channel ch (projection column src) at position p of the step; positions before
// the step are in the conv state.
__device__ __forceinline__ float ConvInput(const DeltaNetArgs& a, int conv_dim, int ch, int src, int p) {
  return p < 0 ? a.conv_state[static_cast<size_t>(p + a.kernel - 1) * conv_dim + ch]
               : a.proj[static_cast<size_t>(p) * a.proj_stride + src];
}

// One output of the causal conv, SiLU applied, from the window of the k1 = kernel - 1 previous inputs
// (oldest first) and `in`; slides `in` into the window.
__device__ __forceinline__ float ConvStep(const float* w, float* win, float in, int k1) {
  float acc = 0.f;
  for (int j = 0; j < k1; ++j) acc += w[j] * win[j];
  acc += w[k1] * in;
  for (int j = 0; j + 1 < k1; ++j) win[j] = win[j + 1];
  if (k1 > 0) win[k1 - 1] = in;
  return SiluF(acc);
}

// Short steps. grid: (ceil(conv_dim / 128), batch) blocks of 128 threads, one channel each.
__global__ void DeltaConvKernel(DeltaNetArgs a, int tokens) {
  PdlWait();
  PdlTrigger();
  const int conv_dim = ConvDim(a);
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= conv_dim) return;
  const int src = ConvSource(a, ch);
  const size_t row0 = static_cast<size_t>(blockIdx.y) * tokens;
  float* conv_state = a.conv_state + static_cast<size_t>(blockIdx.y) * (a.kernel - 1) * conv_dim;
  float w[kMaxKernel], win[kMaxKernel];
  for (int j = 0; j < a.kernel; ++j) w[j] = a.conv_w[static_cast<size_t>(ch) * a.kernel + j];
  for (int j = 0; j + 1 < a.kernel; ++j) win[j] = conv_state[static_cast<size_t>(j) * conv_dim + ch];
  for (int t = 0; t < tokens; ++t) {
    const float in = a.proj[(row0 + t) * a.proj_stride + src];
    a.conv_out[(row0 + t) * conv_dim + ch] = ConvStep(w, win, in, a.kernel - 1);
  }
  for (int j = 0; j + 1 < a.kernel; ++j) conv_state[static_cast<size_t>(j) * conv_dim + ch] = win[j];
}

// Prefill, batch 1. grid: (ceil(conv_dim / 128), ceil(tokens / kConvRun)); each thread computes
// kConvRun tokens of one channel from the inputs themselves (the state supplies positions before 0),
// with the same arithmetic order as DeltaConvKernel. The state is rolled afterwards (DeltaConvStateKernel).
__global__ void DeltaConvParallelKernel(DeltaNetArgs a, int tokens) {
  PdlWait();
  PdlTrigger();
  const int conv_dim = ConvDim(a);
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= conv_dim) return;
  const int src = ConvSource(a, ch), k1 = a.kernel - 1;
  const int t0 = blockIdx.y * kConvRun, t1 = min(tokens, t0 + kConvRun);
  float w[kMaxKernel], win[kMaxKernel];
  for (int j = 0; j < a.kernel; ++j) w[j] = a.conv_w[static_cast<size_t>(ch) * a.kernel + j];
  for (int j = 0; j < k1; ++j) win[j] = ConvInput(a, conv_dim, ch, src, t0 - k1 + j);  // oldest first
  for (int t = t0; t < t1; ++t) {
    const float in = a.proj[static_cast<size_t>(t) * a.proj_stride + src];
    a.conv_out[static_cast<size_t>(t) * conv_dim + ch] = ConvStep(w, win, in, k1);
  }
}

// After DeltaConvParallelKernel: the state becomes the last kernel - 1 inputs. One thread per channel.
__global__ void DeltaConvStateKernel(DeltaNetArgs a, int tokens) {
  PdlWait();
  PdlTrigger();
  const int conv_dim = ConvDim(a);
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= conv_dim) return;
  const int src = ConvSource(a, ch), k1 = a.kernel - 1;
  float next[kMaxKernel];
  for (int j = 0; j < k1; ++j) next[j] = ConvInput(a, conv_dim, ch, src, tokens - k1 + j);  // slot j afterwards
  for (int j = 0; j < k1; ++j) a.conv_state[static_cast<size_t>(j) * conv_dim + ch] = next[j];
}

// The recurrence. grid: (nv, batch) blocks of kRuleThreads; dynamic shared memory: S [dk, dv] + q, k [dk].
__global__ void __launch_bounds__(kRuleThreads) DeltaRuleKernel(DeltaNetArgs a, int tokens) {
  extern __shared__ float sm[];
  __shared__ float red[kRuleThreads / 32];
  const int hv = blockIdx.x, dk = a.dk, dv = a.dv, j = threadIdx.x;
  const int ratio = a.nv / a.nk, hk = hv / ratio, key_dim = a.nk * dk;
  const int conv_dim = 2 * key_dim + a.nv * dv, qkvz_dim = 2 * key_dim + 2 * a.nv * dv;
  const size_t row0 = static_cast<size_t>(blockIdx.y) * tokens;
  float* S = sm;  // [dk][dv]
  float* q = sm + dk * dv;
  float* k = q + dk;
  float* state = a.state + (static_cast<size_t>(blockIdx.y) * a.nv + hv) * dk * dv;
  PdlWait();
  PdlTrigger();
  for (int i = threadIdx.x; i < dk * dv; i += kRuleThreads) S[i] = state[i];
  const float a_log = a.a_log[hv], dt_bias = a.dt_bias[hv];
  const float q_scale = 1.0f / sqrtf(static_cast<float>(dk));
  for (int t = 0; t < tokens; ++t) {
    const float* row = a.conv_out + (row0 + t) * conv_dim;
    const float* prow = a.proj + (row0 + t) * a.proj_stride;
    float qq = 0.f, kk = 0.f;
    if (j < dk) {
      qq = row[hk * dk + j];
      kk = row[key_dim + hk * dk + j];
    }
    const float qss = BlockSum(qq * qq, red, kRuleThreads);
    const float kss = BlockSum(kk * kk, red, kRuleThreads);
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
    const float ss = BlockSum(j < dv ? o * o : 0.f, red, kRuleThreads);
    if (j < dv) a.core[(row0 + t) * a.nv * dv + hv * dv + j] = GatedNorm(a, prow, hv, j, o, ss);
    __syncthreads();  // q and k are rewritten for the next token
  }
  for (int i = threadIdx.x; i < dk * dv; i += kRuleThreads) state[i] = S[i];
}

// The chunked delta rule for one value head's columns [slice0, slice0 + kSlice), batch 1. Within a chunk
// of C tokens starting from state S0, with G_r the cumulative log decay up to token r (inclusive) and
// A[r][s] = beta_r exp(G_r - G_s) k_r.k_s for s < r, the per-token deltas d_r = beta_r (v_r - (decayed
// S_{r-1})^T k_r) solve (I + A) D = beta V - (beta exp(G) K) S0, i.e. D = U - W S0 with U = T beta V and
// W = T beta exp(G) K, T = (I + A)^-1 (forward substitution). Then
//   O = exp(G) Q S0 + M D,  M[r][s] = exp(G_r - G_s) q_r.k_s for s <= r,
//   S = exp(G_last) S0 + (exp(G_last - G) K)^T D.
// O is the raw output; DeltaGatedNormKernel applies the gated RMSNorm over each head's dv columns.
// grid: (nv, ceil(dv / kSlice)) blocks of kChunkThreads; dynamic shared memory: ChunkSmemFloats(dk).
__host__ __device__ constexpr int ChunkSmemFloats(int dk) {
  return 3 * kChunk * (dk + 1) + kChunk * (kChunk + 1) + kChunk * kSlice + dk * kSlice + 2 * kChunk;
}

// acc[m] += sum over i < n of X[(warp + 8 m) * ldx + i] * Y[i * ldy + lane]: this thread's rows of a
// [kChunk, n] x [n, kSlice] product (chunk rows over the warps, the slice's columns over the lanes; the
// row operand is a warp-wide broadcast, the column operand one bank per lane).
__device__ __forceinline__ void ChunkRowsTimes(const float* X, int ldx, const float* Y, int ldy, int n, int warp,
                                               int lane, float (&acc)[kChunkRowsPerWarp]) {
  for (int i = 0; i < n; ++i) {
    const float y = Y[i * ldy + lane];
#pragma unroll
    for (int m = 0; m < kChunkRowsPerWarp; ++m) acc[m] += X[(warp + kChunkWarps * m) * ldx + i] * y;
  }
}

__global__ void __launch_bounds__(kChunkThreads, 1) DeltaChunkKernel(DeltaNetArgs a, int tokens) {
  extern __shared__ float sm[];
  const int hv = blockIdx.x, slice0 = blockIdx.y * kSlice;
  const int dk = a.dk, dv = a.dv, ldk = dk + 1, lda = kChunk + 1;
  const int ratio = a.nv / a.nk, hk = hv / ratio, key_dim = a.nk * dk;
  const int conv_dim = 2 * key_dim + a.nv * dv, qkvz_dim = 2 * key_dim + 2 * a.nv * dv;
  const int cols = min(kSlice, dv - slice0);
  float* Q = sm;               // [kChunk][ldk]: normalised, scaled queries
  float* K = Q + kChunk * ldk;  // [kChunk][ldk]: normalised keys
  float* W = K + kChunk * ldk;  // [kChunk][ldk]
  float* A = W + kChunk * ldk;  // [kChunk][lda]: A, later M
  float* U = A + kChunk * lda;  // [kChunk][kSlice]: beta V, then U, then D
  float* S = U + kChunk * kSlice;  // [dk][kSlice]
  float* G = S + dk * kSlice;      // [kChunk]: cumulative log decay
  float* F = G + kChunk;           // [kChunk]: beta, later exp(G_last - G)
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float* state = a.state + static_cast<size_t>(hv) * dk * dv;
  PdlWait();
  PdlTrigger();
  for (int e = tid; e < dk * kSlice; e += kChunkThreads) {
    const int i = e / kSlice, j = e % kSlice;
    S[e] = j < cols ? state[static_cast<size_t>(i) * dv + slice0 + j] : 0.f;
  }
  const float q_scale = 1.0f / sqrtf(static_cast<float>(dk));
  const float a_exp = expf(a.a_log[hv]), dt_bias = a.dt_bias[hv];
  for (int t0 = 0; t0 < tokens; t0 += kChunk) {
    const int len = min(kChunk, tokens - t0);
    __syncthreads();  // the previous chunk is done with every array
    // Inputs; rows past the end are zero with beta 0 and no decay, so they change nothing.
    for (int e = tid; e < kChunk * dk; e += kChunkThreads) {
      const int r = e / dk, i = e % dk;
      float q = 0.f, k = 0.f;
      if (r < len) {
        const float* row = a.conv_out + static_cast<size_t>(t0 + r) * conv_dim;
        q = row[hk * dk + i];
        k = row[key_dim + hk * dk + i];
      }
      Q[r * ldk + i] = q;
      K[r * ldk + i] = k;
    }
    for (int e = tid; e < kChunk * kSlice; e += kChunkThreads) {
      const int r = e / kSlice, j = e % kSlice;
      U[e] = r < len && j < cols
                 ? a.conv_out[static_cast<size_t>(t0 + r) * conv_dim + 2 * key_dim + hv * dv + slice0 + j]
                 : 0.f;
    }
    if (warp == 0) {
      // beta and the log decay of rows lane and lane + 32, then an inclusive scan of the log decay.
      float g[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = lane + 32 * h;
        float b = 0.f;
        g[h] = 0.f;
        if (r < len) {
          const float* bar = a.proj + static_cast<size_t>(t0 + r) * a.proj_stride + qkvz_dim + hk * 2 * ratio;
          b = SigmoidF(bar[hv % ratio]);
          g[h] = -a_exp * SoftplusF(bar[ratio + hv % ratio] + dt_bias);
        }
        F[r] = b;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        for (int o = 1; o < 32; o <<= 1) {
          const float n = __shfl_up_sync(0xffffffffu, g[h], o);
          if (lane >= o) g[h] += n;
        }
      }
      g[1] += __shfl_sync(0xffffffffu, g[0], 31);
      G[lane] = g[0];
      G[lane + 32] = g[1];
    }
    __syncthreads();
    // l2 norms, a warp per row.
    for (int r = warp; r < kChunk; r += kChunkWarps) {
      float qs = 0.f, ks = 0.f;
      for (int i = lane; i < dk; i += 32) {
        qs += Q[r * ldk + i] * Q[r * ldk + i];
        ks += K[r * ldk + i] * K[r * ldk + i];
      }
      qs = WarpSum(qs);
      ks = WarpSum(ks);
      const float qi = (1.0f / sqrtf(qs + 1e-6f)) * q_scale, ki = 1.0f / sqrtf(ks + 1e-6f);
      for (int i = lane; i < dk; i += 32) {
        Q[r * ldk + i] *= qi;
        K[r * ldk + i] *= ki;
      }
    }
    __syncthreads();
    // A (strictly lower) and the right-hand sides W = beta exp(G) K, U = beta V.
    for (int e = tid; e < kChunk * kChunk; e += kChunkThreads) {
      const int r = e / kChunk, s = e % kChunk;
      float v = 0.f;
      if (s < r && r < len) {
        float dot = 0.f;
        for (int i = 0; i < dk; ++i) dot += K[r * ldk + i] * K[s * ldk + i];
        v = F[r] * expf(G[r] - G[s]) * dot;
      }
      A[r * lda + s] = v;
    }
    for (int e = tid; e < kChunk * dk; e += kChunkThreads) {
      const int r = e / dk, i = e % dk;
      W[r * ldk + i] = F[r] * expf(G[r]) * K[r * ldk + i];
    }
    for (int e = tid; e < kChunk * kSlice; e += kChunkThreads) U[e] *= F[e / kSlice];
    __syncthreads();
    // Forward substitution, a column of [W | U] per thread: X_r -= sum_{s<r} A[r][s] X_s.
    for (int r = 1; r < len; ++r) {
      for (int c = tid; c < dk + kSlice; c += kChunkThreads) {
        float* x = c < dk ? W + c : U + (c - dk);
        const int ld = c < dk ? ldk : kSlice;
        float acc = 0.f;
        for (int s = 0; s < r; ++s) acc += A[r * lda + s] * x[s * ld];
        x[r * ld] -= acc;
      }
      __syncthreads();
    }
    // D = U - W S0: rows warp + 8 m, column lane.
    {
      float acc[kChunkRowsPerWarp] = {};
      ChunkRowsTimes(W, ldk, S, kSlice, dk, warp, lane, acc);
#pragma unroll
      for (int m = 0; m < kChunkRowsPerWarp; ++m) U[(warp + kChunkWarps * m) * kSlice + lane] -= acc[m];
    }
    // M (lower, diagonal included) replaces A; F becomes the state's per-row decay.
    for (int e = tid; e < kChunk * kChunk; e += kChunkThreads) {
      const int r = e / kChunk, s = e % kChunk;
      float v = 0.f;
      if (s <= r && r < len) {
        float dot = 0.f;
        for (int i = 0; i < dk; ++i) dot += Q[r * ldk + i] * K[s * ldk + i];
        v = expf(G[r] - G[s]) * dot;
      }
      A[r * lda + s] = v;
    }
    if (tid < kChunk) F[tid] = expf(G[kChunk - 1] - G[tid]);
    __syncthreads();
    // O = exp(G) Q S0 + M D, raw, into core.
    {
      float acc[kChunkRowsPerWarp] = {};
      ChunkRowsTimes(Q, ldk, S, kSlice, dk, warp, lane, acc);
#pragma unroll
      for (int m = 0; m < kChunkRowsPerWarp; ++m) acc[m] *= expf(G[warp + kChunkWarps * m]);
      ChunkRowsTimes(A, lda, U, kSlice, kChunk, warp, lane, acc);
#pragma unroll
      for (int m = 0; m < kChunkRowsPerWarp; ++m) {
        const int r = warp + kChunkWarps * m;
        if (r < len && lane < cols) {
          a.core[static_cast<size_t>(t0 + r) * a.nv * dv + hv * dv + slice0 + lane] = acc[m];
        }
      }
    }
    __syncthreads();  // every read of S0 is done
    // S = exp(G_last) S0 + (exp(G_last - G) K)^T D: state rows warp + 8 m, column lane.
    {
      const float last = expf(G[kChunk - 1]);
      float acc[kSliceRowsPerWarp] = {};
      for (int r = 0; r < kChunk; ++r) {
        const float d = U[r * kSlice + lane] * F[r];
#pragma unroll
        for (int m = 0; m < kSliceRowsPerWarp; ++m) {
          const int i = warp + kChunkWarps * m;
          if (i < dk) acc[m] += K[r * ldk + i] * d;
        }
      }
#pragma unroll
      for (int m = 0; m < kSliceRowsPerWarp; ++m) {
        const int i = warp + kChunkWarps * m;
        if (i < dk) S[i * kSlice + lane] = last * S[i * kSlice + lane] + acc[m];
      }
    }
  }
  __syncthreads();
  for (int e = tid; e < dk * kSlice; e += kChunkThreads) {
    const int i = e / kSlice, j = e % kSlice;
    if (j < cols) state[static_cast<size_t>(i) * dv + slice0 + j] = S[e];
  }
}

// The gated RMSNorm after DeltaChunkKernel, in place: grid (tokens, nv), blocks of dv rounded up to 32.
__global__ void DeltaGatedNormKernel(DeltaNetArgs a) {
  __shared__ float red[kMaxHeadDim / 32];
  const int t = blockIdx.x, hv = blockIdx.y, j = threadIdx.x, dv = a.dv;
  PdlWait();
  PdlTrigger();
  float* o = a.core + static_cast<size_t>(t) * a.nv * dv + hv * dv;
  const float v = j < dv ? o[j] : 0.f;
  const float ss = BlockSum(v * v, red, blockDim.x);
  if (j < dv) o[j] = GatedNorm(a, a.proj + static_cast<size_t>(t) * a.proj_stride, hv, j, v, ss);
}

bool ValidShape(const DeltaNetArgs& a, int tokens) {
  return tokens > 0 && a.batch > 0 && a.nk > 0 && a.nv % a.nk == 0 && a.dk > 0 && a.dk <= kMaxHeadDim &&
         a.dv > 0 && a.dv <= kMaxHeadDim && (a.form != DeltaForm::kChunked || a.batch == 1);
}

bool Chunked(const DeltaNetArgs& a, int tokens) {
  switch (a.form) {
    case DeltaForm::kAuto:
      return a.batch == 1 && tokens >= kDeltaChunkedMinTokens;
    case DeltaForm::kRecurrent:
      return false;
    case DeltaForm::kChunked:
      return true;
  }
  return false;
}

cudaError_t AllowSmem(const void* kernel, size_t smem) {
  if (smem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

}  // namespace

cudaError_t LaunchDeltaConv(const DeltaNetArgs& a, int tokens, cudaStream_t stream) {
  if (!ValidShape(a, tokens) || a.kernel < 1 || a.kernel > kMaxKernel) return cudaErrorInvalidValue;
  const dim3 channels((ConvDim(a) + 127) / 128);
  if (!Chunked(a, tokens)) {
    return LaunchPdl(DeltaConvKernel, dim3(channels.x, a.batch), dim3(128), 0, stream, a, tokens);
  }
  const cudaError_t err = LaunchPdl(DeltaConvParallelKernel, dim3(channels.x, (tokens + kConvRun - 1) / kConvRun),
                                    dim3(128), 0, stream, a, tokens);
  if (err != cudaSuccess) return err;
  return LaunchPdl(DeltaConvStateKernel, channels, dim3(128), 0, stream, a, tokens);
}

cudaError_t LaunchDeltaRule(const DeltaNetArgs& a, int tokens, cudaStream_t stream) {
  if (!ValidShape(a, tokens)) return cudaErrorInvalidValue;
  if (Chunked(a, tokens)) {
    const size_t smem = static_cast<size_t>(ChunkSmemFloats(a.dk)) * sizeof(float);
    cudaError_t err = AllowSmem(reinterpret_cast<const void*>(DeltaChunkKernel), smem);
    if (err != cudaSuccess) return err;
    err = LaunchPdl(DeltaChunkKernel, dim3(a.nv, (a.dv + kSlice - 1) / kSlice), dim3(kChunkThreads), smem, stream, a,
                    tokens);
    if (err != cudaSuccess) return err;
    return LaunchPdl(DeltaGatedNormKernel, dim3(tokens, a.nv), dim3((a.dv + 31) / 32 * 32), 0, stream, a);
  }
  const size_t smem = (static_cast<size_t>(a.dk) * a.dv + 2 * a.dk) * sizeof(float);
  const cudaError_t err = AllowSmem(reinterpret_cast<const void*>(DeltaRuleKernel), smem);
  if (err != cudaSuccess) return err;
  return LaunchPdl(DeltaRuleKernel, dim3(a.nv, a.batch), dim3(kRuleThreads), smem, stream, a, tokens);
}

}  // namespace pinmoe
