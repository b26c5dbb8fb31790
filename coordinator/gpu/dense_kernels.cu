#include "coordinator/gpu/dense_kernels.h"

#include <cuda_bf16.h>

#include <cfloat>

namespace pinmoe {
namespace {

constexpr int kThreads = 256;

__device__ float BlockSum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.f;
  if (threadIdx.x == 0) {
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += shared[w];
    shared[0] = total;
  }
  __syncthreads();
  total = shared[0];
  __syncthreads();
  return total;
}

__device__ float BlockMax(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = -FLT_MAX;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) m = fmaxf(m, shared[w]);
    shared[0] = m;
  }
  __syncthreads();
  const float m = shared[0];
  __syncthreads();
  return m;
}

__global__ void RmsNormKernel(const float* x, const float* w, float* y, int dim, float eps) {
  __shared__ float red[32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  float* yr = y + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = BlockSum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = w[i] * (xr[i] * inv);
}

// One block per (token, head slot): slots [0, heads) are query heads, [heads, heads + kv_heads) key heads
// and the rest value heads. Query and key heads get the per-head RMSNorm and RoPE; keys and values go to
// the cache at their position, queries to q_out [tokens, heads, head_dim]. blockDim.x == head_dim.
__global__ void QkNormRopeCacheKernel(QkNormRopeCacheArgs a) {
  extern __shared__ float row[];
  __shared__ float red[32];
  const int t = blockIdx.x, slot = blockIdx.y, d = threadIdx.x, hd = a.head_dim;
  const int position = a.first_position + t;
  const float* in = a.qkv + static_cast<size_t>(t) * a.row_stride;
  float* dst;
  const float* norm = nullptr;
  if (slot < a.heads) {
    in += a.q_offset + static_cast<size_t>(slot) * a.q_head_stride;
    dst = a.q_out + (static_cast<size_t>(t) * a.heads + slot) * hd;
    norm = a.q_norm;
  } else if (slot < a.heads + a.kv_heads) {
    const int g = slot - a.heads;
    in += a.k_offset + static_cast<size_t>(g) * hd;
    dst = a.k_cache + (static_cast<size_t>(position) * a.kv_heads + g) * hd;
    norm = a.k_norm;
  } else {
    const int g = slot - a.heads - a.kv_heads;
    in += a.v_offset + static_cast<size_t>(g) * hd;
    dst = a.v_cache + (static_cast<size_t>(position) * a.kv_heads + g) * hd;
  }
  float x = in[d];
  if (norm == nullptr) {  // a value head: copied as is
    dst[d] = x;
    return;
  }
  const float ss = BlockSum(x * x, red);
  x = norm[d] * (x * (1.0f / sqrtf(ss / static_cast<float>(hd) + a.eps)));
  row[d] = x;
  __syncthreads();
  const int half = a.rotary_dim / 2;
  if (d < a.rotary_dim) {
    const int i = d < half ? d : d - half;
    const float angle = static_cast<float>(position) * a.inv_freq[i];
    const float c = static_cast<float>(cos(static_cast<double>(angle)));
    const float s = static_cast<float>(sin(static_cast<double>(angle)));
    x = d < half ? row[d] * c - row[d + half] * s : row[d] * c + row[d - half] * s;
  }
  dst[d] = x;
}

constexpr int kAttnThreads = 128;
constexpr int kAttnChunk = 128;  // keys scored per round
constexpr int kAttnMaxDims = 2;  // head_dim <= 2 * kAttnThreads

// One block per (head, query token), online softmax over chunks of keys: a warp per key for the dot
// products (coalesced rows), then each thread accumulates its own dimensions of V.
__global__ void __launch_bounds__(kAttnThreads) AttentionKernel(AttentionArgs a) {
  extern __shared__ float qs[];  // [head_dim]
  __shared__ float p[kAttnChunk];
  __shared__ float red[32];
  const int h = blockIdx.x, t = blockIdx.y, hd = a.head_dim;
  const int g = h / (a.heads / a.kv_heads);
  const int length = a.first_position + t + 1;
  const float* q = a.q + (static_cast<size_t>(t) * a.heads + h) * hd;
  for (int d = threadIdx.x; d < hd; d += kAttnThreads) qs[d] = q[d];
  __syncthreads();
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = kAttnThreads / 32;
  float m = -FLT_MAX, l = 0.f, acc[kAttnMaxDims] = {0.f, 0.f};
  for (int c0 = 0; c0 < length; c0 += kAttnChunk) {
    const int n = min(kAttnChunk, length - c0);
    for (int j = warp; j < n; j += warps) {
      const float* kr = a.k_cache + (static_cast<size_t>(c0 + j) * a.kv_heads + g) * hd;
      float dot = 0.f;
      for (int d = lane; d < hd; d += 32) dot = fmaf(qs[d], kr[d], dot);
      for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      if (lane == 0) p[j] = dot * scale;
    }
    __syncthreads();
    const float cm = BlockMax(threadIdx.x < n ? p[threadIdx.x] : -FLT_MAX, red);
    const float new_m = fmaxf(m, cm);
    float e = 0.f;
    if (threadIdx.x < n) {
      e = expf(p[threadIdx.x] - new_m);
      p[threadIdx.x] = e;
    }
    const float cs = BlockSum(e, red);  // its barriers also publish p
    const float rescale = expf(m - new_m);
    l = l * rescale + cs;
    for (int i = 0; i < kAttnMaxDims; ++i) {
      const int d = threadIdx.x + i * kAttnThreads;
      if (d >= hd) break;
      float s = acc[i] * rescale;
      const float* vr = a.v_cache + (static_cast<size_t>(c0) * a.kv_heads + g) * hd + d;
      for (int j = 0; j < n; ++j) s = fmaf(p[j], vr[static_cast<size_t>(j) * a.kv_heads * hd], s);
      acc[i] = s;
    }
    m = new_m;
    __syncthreads();
  }
  float* out = a.out + (static_cast<size_t>(t) * a.heads + h) * hd;
  const float inv = 1.0f / l;
  for (int i = 0; i < kAttnMaxDims; ++i) {
    const int d = threadIdx.x + i * kAttnThreads;
    if (d < hd) out[d] = acc[i] * inv;
  }
}

__global__ void EmbedKernel(const void* table, bool bf16, const int32_t* ids, int hidden, float* x) {
  const size_t row = static_cast<size_t>(ids[blockIdx.x]) * hidden;
  float* dst = x + static_cast<size_t>(blockIdx.x) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    dst[i] = bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(table)[row + i])
                  : static_cast<const float*>(table)[row + i];
  }
}

__global__ void SiluMulKernel(const float* gate_up, int inter, float* act) {
  const float* g = gate_up + static_cast<size_t>(blockIdx.x) * 2 * inter;
  float* o = act + static_cast<size_t>(blockIdx.x) * inter;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) {
    const float x = g[i];
    o[i] = x / (1.0f + expf(-x)) * g[inter + i];
  }
}

// x[t] += sum over slots s (in order) of weights[t, s] * slots[t, s].
__global__ void MoeCombineKernel(const float* slots, const float* weights, int top_k, int hidden, float* x) {
  const int t = blockIdx.x;
  const float* w = weights + static_cast<size_t>(t) * top_k;
  const float* y = slots + static_cast<size_t>(t) * top_k * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < top_k; ++s) o += w[s] * y[static_cast<size_t>(s) * hidden + i];
    x[static_cast<size_t>(t) * hidden + i] += o;
  }
}

__global__ void ArgMaxKernel(const float* v, int n, int32_t* index) {
  __shared__ float bv_s[32];
  __shared__ int bi_s[32];
  float bv = -FLT_MAX;
  int bi = n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    if (v[i] > bv) {
      bv = v[i];
      bi = i;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  if (threadIdx.x % 32 == 0) {
    bv_s[threadIdx.x / 32] = bv;
    bi_s[threadIdx.x / 32] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < blockDim.x / 32; ++w) {
      if (bv_s[w] > bv_s[0] || (bv_s[w] == bv_s[0] && bi_s[w] < bi_s[0])) {
        bv_s[0] = bv_s[w];
        bi_s[0] = bi_s[w];
      }
    }
    *index = bi_s[0];
  }
}

// One block per token.
__global__ void RouteTopKKernel(const float* logits, int num_experts, int top_k, bool norm, int32_t* ids,
                                float* weights) {
  extern __shared__ float probs[];
  __shared__ float red[32];
  __shared__ int best_index[32];
  const float* l = logits + static_cast<size_t>(blockIdx.x) * num_experts;
  float local_max = -FLT_MAX;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) local_max = fmaxf(local_max, l[e]);
  const float mx = BlockMax(local_max, red);
  float local_sum = 0.f;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    probs[e] = expf(l[e] - mx);
    local_sum += probs[e];
  }
  const float sum = BlockSum(local_sum, red);
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) probs[e] /= sum;
  __syncthreads();
  float picked = 0.f;
  for (int k = 0; k < top_k; ++k) {
    // Arg-max with ties to the lower index: each thread's best, then a warp and a block reduction.
    float bv = -1.f;
    int bi = num_experts;
    for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
      if (probs[e] > bv) {
        bv = probs[e];
        bi = e;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
      }
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
      red[warp] = bv;
      best_index[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float v = red[0];
      int i = best_index[0];
      for (int w = 1; w < (blockDim.x + 31) / 32; ++w) {
        if (red[w] > v || (red[w] == v && best_index[w] < i)) {
          v = red[w];
          i = best_index[w];
        }
      }
      ids[static_cast<size_t>(blockIdx.x) * top_k + k] = i;
      weights[static_cast<size_t>(blockIdx.x) * top_k + k] = v;
      picked += v;
      probs[i] = -2.f;  // taken
    }
    __syncthreads();
  }
  if (threadIdx.x == 0 && norm) {
    for (int k = 0; k < top_k; ++k) weights[static_cast<size_t>(blockIdx.x) * top_k + k] /= picked;
  }
}

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* y, int rows, int dim, float eps,
                          cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaErrorInvalidValue;
  RmsNormKernel<<<rows, kThreads, 0, stream>>>(x, weight, y, dim, eps);
  return cudaGetLastError();
}

cudaError_t LaunchQkNormRopeCache(const QkNormRopeCacheArgs& a, int tokens, cudaStream_t stream) {
  if (tokens <= 0 || a.head_dim > 1024 || a.head_dim % 32 != 0 || a.rotary_dim % 2 != 0 ||
      a.rotary_dim > a.head_dim) {
    return cudaErrorInvalidValue;
  }
  dim3 grid(tokens, a.heads + 2 * a.kv_heads);
  QkNormRopeCacheKernel<<<grid, a.head_dim, a.head_dim * sizeof(float), stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchAttention(const AttentionArgs& a, int tokens, cudaStream_t stream) {
  if (tokens <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0 || a.head_dim > kAttnMaxDims * kAttnThreads) {
    return cudaErrorInvalidValue;
  }
  AttentionKernel<<<dim3(a.heads, tokens), kAttnThreads, a.head_dim * sizeof(float), stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchEmbed(const void* table, bool bf16, const int32_t* ids, int tokens, int hidden, float* x,
                        cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  EmbedKernel<<<tokens, kThreads, 0, stream>>>(table, bf16, ids, hidden, x);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate_up, int tokens, int inter, float* act, cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  SiluMulKernel<<<tokens, kThreads, 0, stream>>>(gate_up, inter, act);
  return cudaGetLastError();
}

cudaError_t LaunchMoeCombine(const float* slots, const float* weights, int tokens, int top_k, int hidden,
                             float* x, cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  MoeCombineKernel<<<tokens, kThreads, 0, stream>>>(slots, weights, top_k, hidden, x);
  return cudaGetLastError();
}

cudaError_t LaunchArgMax(const float* values, int n, int32_t* index, cudaStream_t stream) {
  if (n <= 0) return cudaErrorInvalidValue;
  ArgMaxKernel<<<1, 1024, 0, stream>>>(values, n, index);
  return cudaGetLastError();
}

cudaError_t LaunchRouteTopK(const float* logits, int tokens, int num_experts, int top_k, bool norm_topk_prob,
                            int32_t* ids, float* weights, cudaStream_t stream) {
  if (tokens <= 0 || top_k <= 0 || top_k > num_experts) return cudaErrorInvalidValue;
  RouteTopKKernel<<<tokens, kThreads, num_experts * sizeof(float), stream>>>(logits, num_experts, top_k,
                                                                            norm_topk_prob, ids, weights);
  return cudaGetLastError();
}

}  // namespace pinmoe
