#include "coordinator/gpu/dense_kernels.h"

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

__global__ void RopeKernel(float* x, int heads, int head_dim, int rotary_dim, const float* inv_freq,
                           int first_position) {
  const int t = blockIdx.x, half = rotary_dim / 2;
  const int position = first_position + t;
  for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const float angle = static_cast<float>(position) * inv_freq[i];
    const float c = static_cast<float>(cos(static_cast<double>(angle)));
    const float s = static_cast<float>(sin(static_cast<double>(angle)));
    float* xh = x + (static_cast<size_t>(t) * heads + h) * head_dim;
    const float a = xh[i], b = xh[i + half];
    xh[i] = a * c - b * s;
    xh[i + half] = b * c + a * s;
  }
}

// One block per head: scores into scratch, softmax, weighted sum of V.
__global__ void DecodeAttentionKernel(const float* q, const float* k, const float* v, int length, int heads,
                                      int kv_heads, int head_dim, float* scratch, float* out) {
  extern __shared__ float qs[];
  __shared__ float red[32];
  const int h = blockIdx.x, g = h / (heads / kv_heads);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[static_cast<size_t>(h) * head_dim + d];
  __syncthreads();
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  float* scores = scratch + static_cast<size_t>(h) * length;
  float local_max = -FLT_MAX;
  for (int s = threadIdx.x; s < length; s += blockDim.x) {
    const float* ks = k + (static_cast<size_t>(s) * kv_heads + g) * head_dim;
    float dot = 0.f;
    for (int d = 0; d < head_dim; ++d) dot = fmaf(qs[d], ks[d], dot);
    scores[s] = dot * scale;
    local_max = fmaxf(local_max, scores[s]);
  }
  const float mx = BlockMax(local_max, red);
  float local_sum = 0.f;
  for (int s = threadIdx.x; s < length; s += blockDim.x) {
    scores[s] = expf(scores[s] - mx);
    local_sum += scores[s];
  }
  const float inv = 1.0f / BlockSum(local_sum, red);  // also orders the score writes before the reads
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < length; ++s) acc = fmaf(scores[s] * inv, v[(static_cast<size_t>(s) * kv_heads + g) * head_dim + d], acc);
    out[static_cast<size_t>(h) * head_dim + d] = acc;
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

cudaError_t LaunchRope(float* x, int tokens, int heads, int head_dim, int rotary_dim, const float* inv_freq,
                       int first_position, cudaStream_t stream) {
  if (tokens <= 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim) return cudaErrorInvalidValue;
  RopeKernel<<<tokens, kThreads, 0, stream>>>(x, heads, head_dim, rotary_dim, inv_freq, first_position);
  return cudaGetLastError();
}

cudaError_t LaunchDecodeAttention(const float* q, const float* k, const float* v, int length, int heads,
                                  int kv_heads, int head_dim, float* scratch, float* out, cudaStream_t stream) {
  if (length <= 0 || kv_heads <= 0 || heads % kv_heads != 0) return cudaErrorInvalidValue;
  DecodeAttentionKernel<<<heads, kThreads, head_dim * sizeof(float), stream>>>(q, k, v, length, heads, kv_heads,
                                                                              head_dim, scratch, out);
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
