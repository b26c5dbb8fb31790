#include "coordinator/gpu/dense_kernels.h"

#include "coordinator/gpu/kv_cache.cuh"
#include "coordinator/gpu/mma_bf16.cuh"
#include "coordinator/gpu/route_topk.cuh"
#include "worker/gpu/pdl.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

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
  PdlWait();
  PdlTrigger();
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
// the cache at their position (elements of type C), queries to q_out [tokens, heads, head_dim].
// blockDim.x == head_dim.
template <typename C>
__global__ void QkNormRopeCacheKernel(QkNormRopeCacheArgs a) {
  PdlWait();
  PdlTrigger();
  extern __shared__ float row[];
  __shared__ float red[32];
  const int t = blockIdx.x, slot = blockIdx.y, d = threadIdx.x, hd = a.head_dim;
  const int position = (a.position_dev != nullptr ? *a.position_dev : a.first_position) + t;
  const float* in = a.qkv + static_cast<size_t>(t) * a.row_stride;
  float* q_dst = nullptr;  // a query head's row, else the cache's
  C* cache_dst = nullptr;
  const float* norm = nullptr;
  if (slot < a.heads) {
    in += a.q_offset + static_cast<size_t>(slot) * a.q_head_stride;
    q_dst = a.q_out + (static_cast<size_t>(t) * a.heads + slot) * hd;
    norm = a.q_norm;
  } else if (slot < a.heads + a.kv_heads) {
    const int g = slot - a.heads;
    in += a.k_offset + static_cast<size_t>(g) * hd;
    cache_dst = static_cast<C*>(a.k_cache) + (static_cast<size_t>(position) * a.kv_heads + g) * hd;
    norm = a.k_norm;
  } else {
    const int g = slot - a.heads - a.kv_heads;
    in += a.v_offset + static_cast<size_t>(g) * hd;
    cache_dst = static_cast<C*>(a.v_cache) + (static_cast<size_t>(position) * a.kv_heads + g) * hd;
  }
  auto store = [&](float v) {
    if (q_dst != nullptr) {
      q_dst[d] = v;
    } else {
      CacheStore(cache_dst + d, v);
    }
  };
  float x = in[d];
  if (norm == nullptr) {  // a value head: copied as is
    store(x);
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
  store(x);
}

constexpr int kAttnThreads = 128;
constexpr int kAttnChunk = 128;  // keys scored per round
constexpr int kAttnMaxDims = 2;  // head_dim <= 2 * kAttnThreads

// Attention of one query (qs, in shared memory) over cache positions [begin, end) of kv head g, by the
// whole block: online softmax over chunks of keys, a warp per key for the dot products (coalesced rows),
// then each thread accumulates its own dimensions of V. Leaves the running max `m`, the sum of
// exponentials `l` and the unnormalised sums acc[i] (dimension threadIdx.x + i * kAttnThreads), the same
// in every thread for m and l. The key and value at position `fresh` (if any: -1 for none) are read from
// shared memory instead of the cache (the decode kernel's own new token, not yet visible to other
// blocks). p / red: shared scratch. An empty range leaves m = -FLT_MAX, l = 0, acc = 0. Cache elements
// are of type C (kv_cache.cuh).
template <typename C>
__device__ void AttendRange(const float* qs, const C* k_cache, const C* v_cache, int kv_heads, int g, int hd,
                            int begin, int end, int fresh, const float* fresh_k, const float* fresh_v, float* p,
                            float* red, float& m, float& l, float (&acc)[kAttnMaxDims]) {
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = kAttnThreads / 32;
  m = -FLT_MAX;
  l = 0.f;
  for (int i = 0; i < kAttnMaxDims; ++i) acc[i] = 0.f;
  for (int c0 = begin; c0 < end; c0 += kAttnChunk) {
    const int n = min(kAttnChunk, end - c0);
    for (int j = warp; j < n; j += warps) {
      const int key = c0 + j;
      float dot = 0.f;
      if (key == fresh) {
        for (int d = lane; d < hd; d += 32) dot = fmaf(qs[d], fresh_k[d], dot);
      } else {
        const C* kr = k_cache + (static_cast<size_t>(key) * kv_heads + g) * hd;
        for (int d = lane; d < hd; d += 32) dot = fmaf(qs[d], CacheLoad(kr + d), dot);
      }
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
      float acc_d = acc[i] * rescale;
      for (int j = 0; j < n; ++j) {
        const int key = c0 + j;
        const float v =
            key == fresh ? fresh_v[d] : CacheLoad(v_cache + (static_cast<size_t>(key) * kv_heads + g) * hd + d);
        acc_d = fmaf(p[j], v, acc_d);
      }
      acc[i] = acc_d;
    }
    m = new_m;
    __syncthreads();
  }
}

// Causal attention of one query over cache positions [0, length): AttendRange, normalised; out[d] = the
// result.
template <typename C>
__device__ void AttendOneQuery(const float* qs, const C* k_cache, const C* v_cache, int kv_heads, int g,
                               int hd, int length, int fresh, const float* fresh_k, const float* fresh_v,
                               float* out, float* p, float* red) {
  float m, l, acc[kAttnMaxDims];
  AttendRange(qs, k_cache, v_cache, kv_heads, g, hd, 0, length, fresh, fresh_k, fresh_v, p, red, m, l, acc);
  const float inv = 1.0f / l;
  for (int i = 0; i < kAttnMaxDims; ++i) {
    const int d = threadIdx.x + i * kAttnThreads;
    if (d < hd) out[d] = acc[i] * inv;
  }
}

// `span` (2, 4, 8 or 16) consecutive elements of a row from p (fp32 from shared memory, or the cache's
// type R; p aligned to span elements), widened into v.
constexpr int kMaxSpan = 16;
template <typename R>
__device__ __forceinline__ void LoadSpan(const R* p, int span, float (&v)[kMaxSpan]) {
  if (span >= 8) {
#pragma unroll
    for (int i = 0; i < kMaxSpan; i += 8) {
      if (i < span) {
        float4 a, b;
        CacheLoad8(p + i, a, b);
        v[i] = a.x, v[i + 1] = a.y, v[i + 2] = a.z, v[i + 3] = a.w;
        v[i + 4] = b.x, v[i + 5] = b.y, v[i + 6] = b.z, v[i + 7] = b.w;
      }
    }
  } else if (span == 4) {
    const float4 a = CacheLoad4(p);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
  } else {
    v[0] = CacheLoad(p);
    v[1] = CacheLoad(p + 1);
  }
}

// AttendRange's results by a layout that keeps more loads in flight (the split form's), a half-warp per
// key: its short shares (16 keys for 8 splits of 128 positions) a thread per key left to half a warp,
// each lane walking its row in 16 dependent loads. Here a half-warp's 16 lanes read a key's row
// together, hd / 16 elements each: in the score pass against the same dimensions of the query (held in
// registers; the half-warp sums the dot product), in the V pass into their own dimensions' sums. The
// block's 8 half-warps take every eighth key, each round's loads in flight together. A warp's two
// halves are added, then the warps' sums meet in `wsum` ([4][hd] shared floats) in warp order.
// hd % 32 == 0, hd <= 256. Same outputs and layout of acc as AttendRange.
template <typename C>
__device__ void AttendRangeHalfWarps(const float* qs, const C* k_cache, const C* v_cache, int kv_heads, int g,
                                     int hd, int begin, int end, int fresh, const float* fresh_k,
                                     const float* fresh_v, float* p, float* red, float* wsum, float& m, float& l,
                                     float (&acc)[kAttnMaxDims]) {
  constexpr int kWarps = kAttnThreads / 32, kHalves = kAttnThreads / 16;
  static_assert(kAttnChunk == kAttnThreads, "a thread takes each key of a chunk through the softmax");
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = threadIdx.x / 16;
  const int span = hd / 16, d0 = (threadIdx.x % 16) * span;
  const size_t stride = static_cast<size_t>(kv_heads) * hd;
  const C* k_rows = k_cache + static_cast<size_t>(g) * hd + d0;
  const C* v_rows = v_cache + static_cast<size_t>(g) * hd + d0;
  // This lane's elements of key `key`'s row: the new token's from shared memory, the others' from the cache.
  auto load_row = [&](const float* fresh_row, const C* rows, int key, float (&v)[kMaxSpan]) {
    if (key == fresh) {
      LoadSpan(fresh_row + d0, span, v);
    } else {
      LoadSpan(rows + key * stride, span, v);
    }
  };
  float q[kMaxSpan], part[kMaxSpan];
  LoadSpan(qs + d0, span, q);
#pragma unroll
  for (int i = 0; i < kMaxSpan; ++i) part[i] = 0.f;
  m = -FLT_MAX;
  l = 0.f;
  for (int c0 = begin; c0 < end; c0 += kAttnChunk) {
    const int n = min(kAttnChunk, end - c0);
    // Rounds of kHalves keys, the same count in every warp (the sums shuffle over whole warps).
#pragma unroll 4
    for (int r = 0; r < n; r += kHalves) {
      const int k = r + half, key = c0 + k;
      float dot = 0.f;
      if (k < n) {
        float kv[kMaxSpan];
        load_row(fresh_k, k_rows, key, kv);
#pragma unroll
        for (int i = 0; i < kMaxSpan; ++i) {
          if (i < span) dot = fmaf(q[i], kv[i], dot);
        }
      }
      for (int o = 8; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      if (k < n && threadIdx.x % 16 == 0) p[k] = dot * scale;
    }
    __syncthreads();
    const int j = threadIdx.x;
    const float score = j < n ? p[j] : -FLT_MAX;
    const float new_m = fmaxf(m, BlockMax(score, red));
    const float e = j < n ? expf(score - new_m) : 0.f;
    if (j < n) p[j] = e;
    const float cs = BlockSum(e, red);  // its barriers also publish p
    const float rescale = expf(m - new_m);
    l = l * rescale + cs;
#pragma unroll
    for (int i = 0; i < kMaxSpan; ++i) part[i] *= rescale;
#pragma unroll 4
    for (int k = half; k < n; k += kHalves) {
      const int key = c0 + k;
      const float pk = p[k];
      float v[kMaxSpan];
      load_row(fresh_v, v_rows, key, v);
#pragma unroll
      for (int i = 0; i < kMaxSpan; ++i) {
        if (i < span) part[i] = fmaf(pk, v[i], part[i]);
      }
    }
    m = new_m;
    __syncthreads();  // p is rewritten by the next chunk
  }
#pragma unroll
  for (int i = 0; i < kMaxSpan; ++i) {
    part[i] += __shfl_xor_sync(0xffffffffu, part[i], 16);
    if (lane < 16 && i < span) wsum[warp * hd + d0 + i] = part[i];
  }
  __syncthreads();
  for (int i = 0; i < kAttnMaxDims; ++i) {
    const int d = threadIdx.x + i * kAttnThreads;
    float sum = 0.f;
    if (d < hd) {
      for (int w = 0; w < kWarps; ++w) sum += wsum[w * hd + d];
    }
    acc[i] = sum;
  }
}

// Call with the whole block after its stores of a share: fences them, counts the block in at `counter`
// and tells whether it is the last of `blocks` to arrive (then every block's stores are visible to it).
__device__ bool LastToArrive(unsigned int* counter, int blocks) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == static_cast<unsigned int>(blocks) - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// Split `splits` of a context of `length` positions attends [begin, end) (empty for the splits past its
// end).
__device__ void SplitRange(int length, int split, int splits, int* begin, int* end) {
  const int per = (length + splits - 1) / splits;
  *begin = min(length, split * per);
  *end = min(length, *begin + per);
}

// H query heads' attention (out: H rows of hd) from their splits' shares, by the whole block, after
// the last of the splits' blocks arrived. parts: head 0's shares; per split m, l and the unnormalised
// acc[hd], `stride` floats apart, the next head's `head_stride` floats on; read through L2, they were
// stored by other blocks. Each head's split weights are worked out once (a thread per head), then the
// shares' sums are read in parallel, always in split order, so the result does not depend on which
// block finishes last.
// One head's shares (its splits', or a block's warps') meeting: each share's running maximum m[i * step]
// becomes its weight expf(m - max), 0 for an empty share unless all are; returns the weighted sum of
// the shares' l[i * step], with the maximum in *top.
__device__ __forceinline__ float WeighShares(float* m, const float* l, int n, int step, float* top) {
  float mx = -FLT_MAX, total = 0.f;
  for (int i = 0; i < n; ++i) mx = fmaxf(mx, m[i * step]);
  for (int i = 0; i < n; ++i) {
    m[i * step] = expf(m[i * step] - mx);
    total = fmaf(l[i * step], m[i * step], total);
  }
  *top = mx;
  return total;
}

template <int H>
__device__ void MergeSplits(const float* parts, size_t head_stride, int splits, size_t stride, int hd,
                            float* out) {
  __shared__ float w_of[H * kAttnMaxSplits], l_of[H * kAttnMaxSplits], total_of[H];
  for (int i = threadIdx.x; i < H * splits; i += blockDim.x) {
    const float* part = parts + (i / splits) * head_stride + (i % splits) * stride;
    w_of[i] = __ldcg(part);
    l_of[i] = __ldcg(part + 1);
  }
  __syncthreads();
  if (threadIdx.x < H) {  // w_of becomes the splits' weights
    float top;
    total_of[threadIdx.x] = WeighShares(w_of + threadIdx.x * splits, l_of + threadIdx.x * splits, splits, 1, &top);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < H * hd; i += blockDim.x) {
    const int j = i / hd, d = i % hd;
    const float* acc = parts + j * head_stride + 2 + d;
    const float* w = w_of + j * splits;
    float sum = 0.f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) sum = fmaf(__ldcg(acc + s * stride), w[s], sum);
    out[static_cast<size_t>(j) * hd + d] = sum / total_of[j];
  }
}

// The split form of the decode attention (args.splits >= 1): block z of a (head, sequence) attends its
// share of the positions (AttendRangeHalfWarps) and stores (m, l, acc) in args.split_partials; the last of the
// head's blocks to finish (a counter per head and sequence, reset by it) merges the shares in split
// order, so the result does not depend on which block finishes last.
template <typename C>
__device__ void AttendSplit(const QkNormRopeCacheArgs& a, const float* qs, const C* k_cache, const C* v_cache,
                            int g, int hd, int length, int fresh, const float* fresh_k, const float* fresh_v,
                            float* out, float* p, float* red, float* wsum) {
  const int h = blockIdx.x, b = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  int begin, end;
  SplitRange(length, split, splits, &begin, &end);
  float m, l, acc[kAttnMaxDims];
  AttendRangeHalfWarps(qs, k_cache, v_cache, a.kv_heads, g, hd, begin, end, fresh, fresh_k, fresh_v, p, red, wsum, m,
                       l, acc);
  const size_t stride = static_cast<size_t>(hd) + 2;
  float* head_parts = a.split_partials + (static_cast<size_t>(b) * a.heads + h) * splits * stride;
  float* mine = head_parts + split * stride;
  if (threadIdx.x == 0) {
    mine[0] = m;
    mine[1] = l;
  }
  for (int i = 0; i < kAttnMaxDims; ++i) {
    const int d = threadIdx.x + i * kAttnThreads;
    if (d < hd) mine[2 + d] = acc[i];
  }
  unsigned int* counter = a.split_counters + static_cast<size_t>(b) * a.heads + h;
  if (!LastToArrive(counter, splits)) return;
  MergeSplits<1>(head_parts, 0, splits, stride, hd, out);
  if (threadIdx.x == 0) *counter = 0u;  // for the next launch
}

// One block per (head, query token).
template <typename C>
__global__ void __launch_bounds__(kAttnThreads) AttentionKernel(AttentionArgs a) {
  PdlWait();
  PdlTrigger();
  extern __shared__ float qs[];  // [head_dim]
  __shared__ float p[kAttnChunk];
  __shared__ float red[32];
  const int h = blockIdx.x, t = blockIdx.y, hd = a.head_dim;
  const int g = h / (a.heads / a.kv_heads);
  const int length = (a.position_dev != nullptr ? *a.position_dev : a.first_position) + t + 1;
  const float* q = a.q + (static_cast<size_t>(t) * a.heads + h) * hd;
  for (int d = threadIdx.x; d < hd; d += kAttnThreads) qs[d] = q[d];
  __syncthreads();
  AttendOneQuery(qs, static_cast<const C*>(a.k_cache), static_cast<const C*>(a.v_cache), a.kv_heads, g, hd, length,
                 /*fresh=*/-1, nullptr, nullptr, a.out + (static_cast<size_t>(t) * a.heads + h) * hd, p, red);
}

// The decode kernels' sequence b: its position, and `a` and `out` moved to its rows and caches.
template <typename C>
__device__ int SelectDecodeSequence(int b, QkNormRopeCacheArgs* a, float** out) {
  a->qkv += static_cast<size_t>(b) * a->row_stride;
  a->k_cache = static_cast<C*>(a->k_cache) + b * a->cache_seq_stride;
  a->v_cache = static_cast<C*>(a->v_cache) + b * a->cache_seq_stride;
  *out += static_cast<size_t>(b) * a->heads * a->head_dim;
  return a->position_dev != nullptr ? a->position_dev[b] : a->first_position;
}

// The new token's key and value of kv head g (normalised and rotated, in shared memory) into the cache,
// by the whole block.
template <typename C>
__device__ void AppendToCache(const QkNormRopeCacheArgs& a, int position, int g, const float* ks, const float* vs) {
  const size_t off = (static_cast<size_t>(position) * a.kv_heads + g) * a.head_dim;
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    CacheStore(static_cast<C*>(a.k_cache) + off + d, ks[d]);
    CacheStore(static_cast<C*>(a.v_cache) + off + d, vs[d]);
  }
}

// The new token's key and value in shared memory as the cache will hold them (every block reads them
// from there, and the other positions from the cache: both must be rounded alike), by the whole block.
template <typename C>
__device__ void RoundLikeCache(float* ks, float* vs, int hd) {
  if constexpr (!std::is_same_v<C, float>) {
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
      ks[d] = CacheRound<C>(ks[d]);
      vs[d] = CacheRound<C>(vs[d]);
    }
    __syncthreads();
  }
}

// Decode (one token per sequence): the q/k norm + RoPE + cache append and the attention in one kernel,
// one block per (query head, sequence). Each block normalises and rotates its own query and its kv head's new key (the few
// redundant dot products cost less than a dependent launch); the group's first head writes the new key
// and value to the cache; every block reads earlier positions from the cache and the new one from
// shared memory, so no block waits for another.
template <typename C>
__global__ void __launch_bounds__(kAttnThreads, 1) DecodeAttentionFusedKernel(QkNormRopeCacheArgs a, float* out) {
  extern __shared__ float sm[];
  __shared__ float p[kAttnChunk];
  __shared__ float red[32];
  const int h = blockIdx.x, b = blockIdx.y, hd = a.head_dim, group = a.heads / a.kv_heads, g = h / group;
  // The position was copied before the step's first kernel, the cache's earlier rows by earlier steps:
  // neither waits for the kernel before.
  const int position = SelectDecodeSequence<C>(b, &a, &out);
  if (a.splits >= 1 && a.prefetch) {
    int begin, end;
    SplitRange(position + 1, blockIdx.z, gridDim.z, &begin, &end);
    end = min(end, position);  // the new position is not in the cache yet
    const size_t stride = static_cast<size_t>(a.kv_heads) * hd, g_off = static_cast<size_t>(g) * hd;
    // The group's query heads share the rows: each asks for its share of the lines.
    const int first = h % group + group * threadIdx.x, step = group * blockDim.x;
    PrefetchRowsL2(static_cast<const C*>(a.k_cache) + g_off, stride, begin, end, hd, first, step);
    PrefetchRowsL2(static_cast<const C*>(a.v_cache) + g_off, stride, begin, end, hd, first, step);
  }
  PdlWait();
  PdlTrigger();
  float* qs = sm;
  float* ks = sm + hd;
  float* vs = sm + 2 * hd;
  float sq = 0.f, sk = 0.f;
  for (int d = threadIdx.x; d < hd; d += kAttnThreads) {
    const float q = a.qkv[a.q_offset + static_cast<size_t>(h) * a.q_head_stride + d];
    const float k = a.qkv[a.k_offset + static_cast<size_t>(g) * hd + d];
    qs[d] = q;
    ks[d] = k;
    vs[d] = a.qkv[a.v_offset + static_cast<size_t>(g) * hd + d];
    sq += q * q;
    sk += k * k;
  }
  sq = BlockSum(sq, red);
  sk = BlockSum(sk, red);
  const float inv_q = 1.0f / sqrtf(sq / static_cast<float>(hd) + a.eps);
  const float inv_k = 1.0f / sqrtf(sk / static_cast<float>(hd) + a.eps);
  for (int d = threadIdx.x; d < hd; d += kAttnThreads) {
    qs[d] = a.q_norm[d] * (qs[d] * inv_q);
    ks[d] = a.k_norm[d] * (ks[d] * inv_k);
  }
  __syncthreads();
  const int half = a.rotary_dim / 2;
  for (int i = threadIdx.x; i < half; i += kAttnThreads) {
    const float angle = static_cast<float>(position) * a.inv_freq[i];
    const float c = static_cast<float>(cos(static_cast<double>(angle)));
    const float s = static_cast<float>(sin(static_cast<double>(angle)));
    float x0 = qs[i], x1 = qs[i + half];
    qs[i] = x0 * c - x1 * s;
    qs[i + half] = x1 * c + x0 * s;
    x0 = ks[i];
    x1 = ks[i + half];
    ks[i] = x0 * c - x1 * s;
    ks[i + half] = x1 * c + x0 * s;
  }
  __syncthreads();
  RoundLikeCache<C>(ks, vs, hd);
  if (h % group == 0 && blockIdx.z == 0) AppendToCache<C>(a, position, g, ks, vs);
  const C* k_cache = static_cast<const C*>(a.k_cache);
  const C* v_cache = static_cast<const C*>(a.v_cache);
  if (a.splits >= 1) {
    AttendSplit(a, qs, k_cache, v_cache, g, hd, position + 1, position, ks, vs, out + static_cast<size_t>(h) * hd, p,
                red, sm + 3 * hd);
    return;
  }
  AttendOneQuery(qs, k_cache, v_cache, a.kv_heads, g, hd, position + 1, position, ks, vs,
                 out + static_cast<size_t>(h) * hd, p, red);
}

// The grouped split form (args.grouped): one block per (column of `HB` query heads of a kv head,
// sequence, split) reads each key and value once for all HB heads. The block's 8 warps take equal
// parts of the split's positions and work independently, 32 keys per round: in the score pass a lane
// per key reads its row 16 bytes at a time (a whole row's loads in flight) against the HB queries in
// shared memory; each warp keeps its own online softmax (per-lane sums, the max over the warp); in the V
// pass each lane holds head_dim / 32 = PL contiguous dimensions of every head and the loads of 8 keys
// are in flight at once. The warps' shares meet in warp order, the splits' in split order (the last
// block of a column to finish merges them), so the result does not depend on timing. How many of the
// grid's splits take part follows the context: one per kGroupedKeysPerSplit positions, at most
// gridDim.z (the rest return at once), so short contexts pay no empty blocks' merges.
constexpr int kGroupMaxHeads = 8, kGroupedWarps = 8, kGroupedThreads = 32 * kGroupedWarps, kGroupedTile = 32;
constexpr int kGroupedKeysPerSplit = kGroupedWarps * kGroupedTile;

// Query heads per block: the largest of 8, 4, 2, 1 that divides the group and keeps hb * head_dim <= 1024
// (32 accumulators a lane).
inline int GroupedHeadsPerBlock(int group, int head_dim) {
  for (int hb = kGroupMaxHeads; hb > 1; hb /= 2) {
    if (group % hb == 0 && hb * head_dim <= 1024) return hb;
  }
  return 1;
}

__device__ int GroupedActiveSplits(int length, int max_splits) {
  return max(1, min(max_splits, (length + kGroupedKeysPerSplit - 1) / kGroupedKeysPerSplit));
}

// Floats of the grouped kernel's shared memory: HB query rows, the new key and value, the warps'
// probabilities ([warp][key][HB]), maxima and sums ([warp][HB]) and sums of V ([warp][HB][hd]).
inline size_t GroupedSharedFloats(int hb, int hd) {
  return static_cast<size_t>(hb) * hd + 2 * hd + kGroupedWarps * kGroupedTile * hb + 2 * kGroupedWarps * hb +
         static_cast<size_t>(kGroupedWarps) * hb * hd;
}

// PL consecutive elements (fp32 from shared memory, or the cache's type R), widened.
template <int PL, typename R>
__device__ void LoadLaneDims(const R* p, float (&v)[PL]) {
  if constexpr (PL % 4 == 0) {
#pragma unroll
    for (int i = 0; i < PL; i += 4) {
      const float4 x = CacheLoad4(p + i);
      v[i] = x.x;
      v[i + 1] = x.y;
      v[i + 2] = x.z;
      v[i + 3] = x.w;
    }
  } else if constexpr (PL == 2 && std::is_same_v<R, float>) {
    const float2 x = *reinterpret_cast<const float2*>(p);
    v[0] = x.x;
    v[1] = x.y;
  } else {
#pragma unroll
    for (int i = 0; i < PL; ++i) v[i] = CacheLoad(p + i);
  }
}

// One key row (hd = 32 * PL elements: fp32 from shared memory or the cache's type R, 16-byte aligned)
// against the HB query rows in shared memory.
template <int HB, int PL, typename R>
__device__ void ScoreRow(const R* row, const float4* q4, float (&dot)[HB]) {
  constexpr int kRow4 = PL * 8, kGroup4 = kRow4 < 32 ? kRow4 : 32;
#pragma unroll 1
  for (int c0 = 0; c0 < kRow4; c0 += kGroup4) {
    float4 kv[kGroup4];
#pragma unroll
    for (int c = 0; c < kGroup4; c += 2) CacheLoad8(row + 4 * (c0 + c), kv[c], kv[c + 1]);  // kGroup4 is even
#pragma unroll
    for (int c = 0; c < kGroup4; ++c) {
#pragma unroll
      for (int j = 0; j < HB; ++j) {
        const float4 qv = q4[j * kRow4 + c0 + c];
        dot[j] = fmaf(qv.x, kv[c].x, dot[j]);
        dot[j] = fmaf(qv.y, kv[c].y, dot[j]);
        dot[j] = fmaf(qv.z, kv[c].z, dot[j]);
        dot[j] = fmaf(qv.w, kv[c].w, dot[j]);
      }
    }
  }
}

// The grouped forms' start, by the whole block: the HB query rows of heads h0.. (qs [HB][hd]) and kv
// head g's new key and value (ks, vs [hd]) read from the projection, normalised and rotated, the key and
// value rounded like the cache; `appends`: this block also writes them to the cache at `position`.
template <int HB, typename C>
__device__ void GroupedStart(const QkNormRopeCacheArgs& a, int hd, int g, int h0, int position, bool appends,
                             float* qs, float* ks, float* vs) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int i = threadIdx.x; i < HB * hd; i += blockDim.x) {
    const int j = i / hd, d = i % hd;
    qs[i] = a.qkv[a.q_offset + static_cast<size_t>(h0 + j) * a.q_head_stride + d];
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    ks[d] = a.qkv[a.k_offset + static_cast<size_t>(g) * hd + d];
    vs[d] = a.qkv[a.v_offset + static_cast<size_t>(g) * hd + d];
  }
  __syncthreads();
  // RMS norms: row j < HB is query head h0 + j, row HB the key; a warp per row.
  for (int j = warp; j <= HB; j += warps) {
    float* row = j < HB ? qs + j * hd : ks;
    const float* w = j < HB ? a.q_norm : a.k_norm;
    float ss = 0.f;
    for (int d = lane; d < hd; d += 32) ss = fmaf(row[d], row[d], ss);
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(hd) + a.eps);
    for (int d = lane; d < hd; d += 32) row[d] = w[d] * (row[d] * inv);
  }
  __syncthreads();
  const int half = a.rotary_dim / 2;
  for (int i = threadIdx.x; i < (HB + 1) * half; i += blockDim.x) {
    const int j = i / half, r = i % half;
    float* row = j < HB ? qs + j * hd : ks;
    const float angle = static_cast<float>(position) * a.inv_freq[r];
    const float c = static_cast<float>(cos(static_cast<double>(angle)));
    const float sn = static_cast<float>(sin(static_cast<double>(angle)));
    const float x0 = row[r], x1 = row[r + half];
    row[r] = x0 * c - x1 * sn;
    row[r + half] = x1 * c + x0 * sn;
  }
  __syncthreads();
  RoundLikeCache<C>(ks, vs, hd);
  if (appends) AppendToCache<C>(a, position, g, ks, vs);
}

// The grouped forms' end, by the whole block after its warps left their shares in shared memory (per
// warp and head: the running max wm, the sum of exponentials wl, the unnormalised sums wacc [hd]): they
// meet in warp order in this split's slot of a.split_partials, and the last of the column's `splits`
// blocks to finish merges the splits' in split order into out (rows of query heads h0..).
template <int HB>
__device__ void GroupedFinish(const QkNormRopeCacheArgs& a, int hd, int b, int x, int h0, int split, int splits,
                              float* wm, float* wl, const float* wacc, float* out) {
  const int warps = blockDim.x / 32;
  const size_t stride = static_cast<size_t>(hd) + 2;
  auto parts_of = [&](int j) {
    return a.split_partials + (static_cast<size_t>(b) * a.heads + h0 + j) * gridDim.z * stride;
  };
  // Per head j, once (thread j): the maximum over the warps, each warp's weight (in place of its wm) and
  // the weighted sum of exponentials; the maximum and the sum then in wl[j] and wl[HB + j], entries of
  // head j's column that only this thread reads.
  if (threadIdx.x < HB) {
    const int j = threadIdx.x;
    float top;
    const float total = WeighShares(wm + j, wl + j, warps, HB, &top);
    wl[j] = top;
    wl[HB + j] = total;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < HB * hd; i += blockDim.x) {
    const int j = i / hd, d = i % hd;
    float sum = 0.f;
    for (int w = 0; w < warps; ++w) sum = fmaf(wacc[(w * HB + j) * hd + d], wm[w * HB + j], sum);
    float* mine = parts_of(j) + split * stride;
    mine[2 + d] = sum;
    if (d == 0) {
      mine[0] = wl[j];
      mine[1] = wl[HB + j];
    }
  }
  unsigned int* counter = a.split_counters + static_cast<size_t>(b) * a.heads + x;
  if (!LastToArrive(counter, splits)) return;
  MergeSplits<HB>(parts_of(0), gridDim.z * stride, splits, stride, hd, out + static_cast<size_t>(h0) * hd);
  if (threadIdx.x == 0) *counter = 0u;  // for the next launch
}

// A warp's part [begin, end) of its split's positions in the grouped forms, and kv head g's key and
// value rows in the cache (row p at p * stride).
template <typename C>
struct WarpKeys {
  int begin, end;
  size_t stride;
  const C* k_rows;
  const C* v_rows;
};

// What a block of the grouped forms works on, from its place in the grid (x: a column of HB query heads of
// one kv head, y: the sequence, z: the split), as the launches and GroupedFinish's counters lay it out.
template <typename C>
struct GroupedBlock {
  int x, b, split;
  int g, h0;       // the kv head and the column's first query head
  int position;    // the new token's, the context's last
  int splits;      // the splits this context takes
  bool appends;    // this block writes the new key and value to the cache
  WarpKeys<C> keys;  // this warp's part of the split
};

// Fills *blk (and points *a and *out at the block's sequence); false for a block past the splits its
// context takes, which returns at once as a whole.
template <int HB, typename C>
__device__ bool SelectGroupedBlock(QkNormRopeCacheArgs* a, int hd, float** out, GroupedBlock<C>* blk) {
  const int columns = a->heads / a->kv_heads / HB;
  blk->x = blockIdx.x;
  blk->b = blockIdx.y;
  blk->split = blockIdx.z;
  blk->g = blk->x / columns;
  blk->h0 = blk->g * (a->heads / a->kv_heads) + (blk->x % columns) * HB;
  blk->position = SelectDecodeSequence<C>(blk->b, a, out);
  blk->splits = GroupedActiveSplits(blk->position + 1, gridDim.z);
  if (blk->split >= blk->splits) return false;
  blk->appends = blk->x % columns == 0 && blk->split == 0;
  // The new token (the last position) is read from shared memory: the block that appends it to the cache
  // runs alongside.
  int begin, end, wb, we;
  SplitRange(blk->position + 1, blk->split, blk->splits, &begin, &end);
  SplitRange(end - begin, threadIdx.x / 32, kGroupedWarps, &wb, &we);
  const size_t g_off = static_cast<size_t>(blk->g) * hd;
  blk->keys = {begin + wb, begin + we, static_cast<size_t>(a->kv_heads) * hd,
               static_cast<const C*>(a->k_cache) + g_off, static_cast<const C*>(a->v_cache) + g_off};
  return true;
}

template <int HB, int PL, typename C>
__global__ void __launch_bounds__(kGroupedThreads, 1) DecodeAttentionGroupedKernel(QkNormRopeCacheArgs a, float* out) {
  constexpr int kWarps = kGroupedWarps, hd = 32 * PL;
  extern __shared__ float4 sm4[];
  float* sm = reinterpret_cast<float*>(sm4);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  GroupedBlock<C> blk;
  if (!SelectGroupedBlock<HB, C>(&a, hd, &out, &blk)) return;
  const int g = blk.g, h0 = blk.h0, position = blk.position, fresh = blk.position;
  const WarpKeys<C>& keys = blk.keys;
  PdlWait();
  PdlTrigger();
  float* qs = sm;                             // [HB][hd]
  float* ks = qs + HB * hd;                   // [hd]
  float* vs = ks + hd;                        // [hd]
  float* pw = vs + hd;                        // [kWarps][kGroupedTile][HB]
  float* wm = pw + kWarps * kGroupedTile * HB;  // [kWarps][HB]
  float* wl = wm + kWarps * HB;               // [kWarps][HB]
  float* wacc = wl + kWarps * HB;             // [kWarps][HB][hd]
  GroupedStart<HB, C>(a, hd, g, h0, position, blk.appends, qs, ks, vs);
  const int wbegin = keys.begin, wend = keys.end;
  const size_t key_stride = keys.stride;
  const C *k_rows = keys.k_rows, *v_rows = keys.v_rows;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const float4* q4 = reinterpret_cast<const float4*>(qs);
  float* my_p = pw + warp * kGroupedTile * HB;
  float m[HB], l[HB], acc[HB][PL];
#pragma unroll
  for (int j = 0; j < HB; ++j) {
    m[j] = -FLT_MAX;
    l[j] = 0.f;
#pragma unroll
    for (int i = 0; i < PL; ++i) acc[j][i] = 0.f;
  }
  for (int k0 = wbegin; k0 < wend; k0 += kGroupedTile) {
    const int key = k0 + lane, n = min(kGroupedTile, wend - k0);
    const bool valid = key < wend;
    float dot[HB];
#pragma unroll
    for (int j = 0; j < HB; ++j) dot[j] = 0.f;
    if (valid && key != fresh) {
      ScoreRow<HB, PL>(k_rows + key * key_stride, q4, dot);
    } else if (valid) {
      ScoreRow<HB, PL>(static_cast<const float*>(ks), q4, dot);
    }
#pragma unroll
    for (int j = 0; j < HB; ++j) {
      const float s = valid ? dot[j] * scale : -FLT_MAX;
      float top = s;
      for (int o = 16; o > 0; o >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, o));
      const float new_m = fmaxf(m[j], top);
      const float rescale = expf(m[j] - new_m);
      const float e = valid ? expf(s - new_m) : 0.f;
      l[j] = fmaf(l[j], rescale, e);
      m[j] = new_m;
#pragma unroll
      for (int i = 0; i < PL; ++i) acc[j][i] *= rescale;
      my_p[lane * HB + j] = e;
    }
    __syncwarp();
    // The fresh position, if in this round, is its last key.
    const int from_cache = fresh < k0 + n ? n - 1 : n;
#pragma unroll 8
    for (int t = 0; t < from_cache; ++t) {
      float v[PL];
      LoadLaneDims<PL>(v_rows + (k0 + t) * key_stride + lane * PL, v);
#pragma unroll
      for (int j = 0; j < HB; ++j) {
        const float pk = my_p[t * HB + j];
#pragma unroll
        for (int i = 0; i < PL; ++i) acc[j][i] = fmaf(pk, v[i], acc[j][i]);
      }
    }
    if (from_cache < n) {
      float v[PL];
      LoadLaneDims<PL>(static_cast<const float*>(vs + lane * PL), v);
#pragma unroll
      for (int j = 0; j < HB; ++j) {
        const float pk = my_p[(n - 1) * HB + j];
#pragma unroll
        for (int i = 0; i < PL; ++i) acc[j][i] = fmaf(pk, v[i], acc[j][i]);
      }
    }
    __syncwarp();  // my_p is rewritten by the next round
  }
  // The warp's shares, for GroupedFinish.
#pragma unroll
  for (int j = 0; j < HB; ++j) {
    float s = l[j];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      wm[warp * HB + j] = m[j];
      wl[warp * HB + j] = s;
    }
#pragma unroll
    for (int i = 0; i < PL; ++i) wacc[(warp * HB + j) * hd + lane * PL + i] = acc[j][i];
  }
  __syncthreads();
  GroupedFinish<HB>(a, hd, blk.b, blk.x, h0, blk.split, blk.splits, wm, wl, wacc, out);
}

// The grouped split form on tensor cores (bf16 caches, 8 query heads a block, head_dim HD): the same
// blocks, splits and warps' parts of a split as DecodeAttentionGroupedKernel, each warp in rounds of 16
// keys whose K and V rows are all loaded at once (16 bytes a load, every sector used). Per round two
// kinds of mma.sync m16n8k16 (mma_bf16.cuh):
//   scores S = Q K^T: A's 16 rows are the 8 queries' bf16 high parts and then their low parts (an fp32
//     query = hi + lo to ~2^-17), B two tiles of 8 keys; a head's score is the sum of its two rows;
//   O += P V: A's rows the probabilities' high then low parts, B the 16 keys' values.
// Lane 4 group + quad holds head `group` throughout: scores of keys 2 quad, 2 quad + 1 (+ 8) of the round,
// and of O the dimensions MmaVDim(nt, 2 quad + e) of every dimension tile nt. The contraction over
// dimensions takes them in the order the loads give (the same permutation for Q and K), so each lane's
// K loads are whole 16-byte pieces of its key's row. The online softmax per head is shared by the
// quad's 4 lanes; the result is the same function of the cache as the fp32 forms' up to fp32 rounding
// of a different summation order.
constexpr int kMmaHeads = 8, kMmaKeys = 16;

// The dimension of V that tile nt's column n of O holds (n: the B column, 8 tiles of 8 columns per 64
// dimensions): lanes of one quad position load 128 contiguous bytes of a value row together.
__device__ __forceinline__ int MmaVDim(int nt, int n) { return 64 * (nt / 8) + 8 * n + nt % 8; }

inline size_t MmaSharedFloats(int hd) {
  return static_cast<size_t>(kMmaHeads) * hd + 2 * hd + hd /* the new key and value in bf16 */ +
         2 * kGroupedWarps * kMmaHeads + static_cast<size_t>(kGroupedWarps) * kMmaHeads * hd;
}

template <int HD>
__global__ void __launch_bounds__(kGroupedThreads, 1) DecodeAttentionMmaKernel(QkNormRopeCacheArgs a, float* out) {
  using C = __nv_bfloat16;
  constexpr int HB = kMmaHeads, kWarps = kGroupedWarps, kChunks = HD / 8;  // 16-byte pieces of a row
  constexpr int kKPieces = HD / 32, kVPieces = HD / 64, kKSteps = HD / 16, kDimTiles = HD / 8;
  static_assert(HD % 64 == 0, "a quad's pieces cover the row");
  extern __shared__ float4 sm4[];
  float* sm = reinterpret_cast<float*>(sm4);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, quad = lane % 4;
  GroupedBlock<C> blk;
  if (!SelectGroupedBlock<HB, C>(&a, HD, &out, &blk)) return;
  const int g = blk.g, h0 = blk.h0, position = blk.position, fresh = blk.position;
  const WarpKeys<C>& keys = blk.keys;
  PdlWait();
  PdlTrigger();
  float* qs = sm;                                     // [HB][HD]
  float* ks = qs + HB * HD;                           // [HD]
  float* vs = ks + HD;                                // [HD]
  C* kb = reinterpret_cast<C*>(vs + HD);              // [HD] the new key, as the cache holds it
  C* vb = kb + HD;                                    // [HD]
  float* wm = vs + 2 * HD;                            // [kWarps][HB]
  float* wl = wm + kWarps * HB;                       // [kWarps][HB]
  float* wacc = wl + kWarps * HB;                     // [kWarps][HB][HD]
  GroupedStart<HB, C>(a, HD, g, h0, position, blk.appends, qs, ks, vs);
  for (int d = threadIdx.x; d < HD; d += kGroupedThreads) {
    kb[d] = __float2bfloat16(ks[d]);  // exact: rounded like the cache already
    vb[d] = __float2bfloat16(vs[d]);
  }
  // Query fragments (A of the scores) for k-step kk = 2 i + h: the dimensions of piece 4 i + quad, its
  // first four (h 0) or last four, in the order B's registers take them from a K piece.
  uint32_t qa[kKSteps][4];
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    const float* q = qs + gr * HD + 8 * (4 * (kk / 2) + quad) + 4 * (kk % 2);
    float hi[4], lo[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) SplitBf16(q[e], hi[e], lo[e]);
    qa[kk][0] = PackBf16(hi[0], hi[1]);
    qa[kk][1] = PackBf16(lo[0], lo[1]);
    qa[kk][2] = PackBf16(hi[2], hi[3]);
    qa[kk][3] = PackBf16(lo[2], lo[3]);
  }
  __syncthreads();  // kb, vb
  const int wbegin = keys.begin, wend = keys.end;
  const size_t key_stride = keys.stride;
  const C *k_rows = keys.k_rows, *v_rows = keys.v_rows;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  // Piece c of a key's row: from the cache, from shared memory for the new token, zeros past the part.
  auto piece = [&](const C* rows, const C* fresh_row, int key, int c) {
    if (key >= wend) return make_uint4(0u, 0u, 0u, 0u);
    if (key == fresh) return reinterpret_cast<const uint4*>(fresh_row)[c];
    return __ldg(reinterpret_cast<const uint4*>(rows + key * key_stride) + c);
  };
  float m = -FLT_MAX, l = 0.f, o[kDimTiles][4];
#pragma unroll
  for (int nt = 0; nt < kDimTiles; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
  for (int k0 = wbegin; k0 < wend; k0 += kMmaKeys) {
    uint4 kr[2][kKPieces], vr[4][kVPieces];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int i = 0; i < kKPieces; ++i) kr[t][i] = piece(k_rows, kb, k0 + 8 * t + gr, 4 * i + quad);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int h = 0; h < kVPieces; ++h) vr[j][h] = piece(v_rows, vb, k0 + 2 * quad + (j & 1) + 8 * (j >> 1), 8 * h + gr);
    }
    float s[2][4];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        const uint4& k = kr[t][kk / 2];
        MmaBf16(s[t], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], kk % 2 ? k.z : k.x, kk % 2 ? k.w : k.y);
      }
    }
    // Keys 2 quad + e + 8 t of the round, head gr: online softmax over the quad's 16.
    float sc[2][2], top = -FLT_MAX;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[t][e] = k0 + 8 * t + 2 * quad + e < wend ? (s[t][e] + s[t][2 + e]) * scale : -FLT_MAX;
        top = fmaxf(top, sc[t][e]);
      }
    }
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, 1));
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, 2));
    const float new_m = fmaxf(m, top), rescale = expf(m - new_m);
    float p_hi[2][2], p_lo[2][2], sum = 0.f;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = expf(sc[t][e] - new_m);  // 0 past the part
        sum += p;
        SplitBf16(p, p_hi[t][e], p_lo[t][e]);
      }
    }
    l = fmaf(l, rescale, sum);
    m = new_m;
    const uint32_t pa0 = PackBf16(p_hi[0][0], p_hi[0][1]), pa1 = PackBf16(p_lo[0][0], p_lo[0][1]);
    const uint32_t pa2 = PackBf16(p_hi[1][0], p_hi[1][1]), pa3 = PackBf16(p_lo[1][0], p_lo[1][1]);
#pragma unroll
    for (int nt = 0; nt < kDimTiles; ++nt) {
      const int h = nt / 8, w = (nt % 8) / 2;
      const bool high = nt % 2;
      auto word = [&](int j) {
        const uint4& v = vr[j][h];
        return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
      };
      const uint32_t b0 = high ? HighHalves(word(0), word(1)) : LowHalves(word(0), word(1));
      const uint32_t b1 = high ? HighHalves(word(2), word(3)) : LowHalves(word(2), word(3));
#pragma unroll
      for (int e = 0; e < 4; ++e) o[nt][e] *= rescale;
      MmaBf16(o[nt], pa0, pa1, pa2, pa3, b0, b1);
    }
  }
  static_assert(kChunks == 8 * kVPieces && kChunks == 4 * kKPieces, "pieces per row");
  // The warp's shares, for GroupedFinish: a head's sums over the quad, O's high and low rows added.
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (quad == 0) {
    wm[warp * HB + gr] = m;
    wl[warp * HB + gr] = l;
  }
#pragma unroll
  for (int nt = 0; nt < kDimTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) wacc[(warp * HB + gr) * HD + MmaVDim(nt, 2 * quad + e)] = o[nt][e] + o[nt][2 + e];
  }
  __syncthreads();
  GroupedFinish<HB>(a, HD, blk.b, blk.x, h0, blk.split, blk.splits, wm, wl, wacc, out);
}

template <int HD>
cudaError_t LaunchMmaDecodeAttention(const QkNormRopeCacheArgs& a, float* out, cudaStream_t stream) {
  const size_t smem = MmaSharedFloats(HD) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(DecodeAttentionMmaKernel<HD>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return LaunchPdl(DecodeAttentionMmaKernel<HD>, dim3(a.kv_heads * (a.heads / a.kv_heads / kMmaHeads), a.batch, a.splits),
                   dim3(kGroupedThreads), smem, stream, a, out);
}

template <int HB, int PL, typename C>
cudaError_t LaunchGroupedDecodeAttention(const QkNormRopeCacheArgs& a, float* out, cudaStream_t stream) {
  const int group = a.heads / a.kv_heads;
  const size_t smem = GroupedSharedFloats(HB, 32 * PL) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(DecodeAttentionGroupedKernel<HB, PL, C>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return LaunchPdl(DecodeAttentionGroupedKernel<HB, PL, C>, dim3(a.kv_heads * (group / HB), a.batch, a.splits),
                   dim3(kGroupedThreads), smem, stream, a, out);
}

template <int HB, typename C>
cudaError_t LaunchGroupedByDims(const QkNormRopeCacheArgs& a, float* out, cudaStream_t stream) {
  switch (a.head_dim / 32) {
    case 1: return LaunchGroupedDecodeAttention<HB, 1, C>(a, out, stream);
    case 2: return LaunchGroupedDecodeAttention<HB, 2, C>(a, out, stream);
    case 4: return LaunchGroupedDecodeAttention<HB, 4, C>(a, out, stream);
    case 8:
      if constexpr (HB * 8 <= 32) return LaunchGroupedDecodeAttention<HB, 8, C>(a, out, stream);
      return cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
  }
}

__global__ void EmbedKernel(const void* table, bool bf16, const int32_t* ids, int hidden, float* x) {
  PdlWait();
  PdlTrigger();
  const size_t row = static_cast<size_t>(ids[blockIdx.x]) * hidden;
  float* dst = x + static_cast<size_t>(blockIdx.x) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    dst[i] = bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(table)[row + i])
                  : static_cast<const float*>(table)[row + i];
  }
}

__global__ void SiluMulKernel(const float* gate_up, int row_stride, int inter, float* act) {
  PdlWait();
  PdlTrigger();
  const float* g = gate_up + static_cast<size_t>(blockIdx.x) * row_stride;
  float* o = act + static_cast<size_t>(blockIdx.x) * inter;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) {
    const float x = g[i];
    o[i] = x / (1.0f + expf(-x)) * g[inter + i];
  }
}

// x[t] += sum over slots s (in order) of weights[t, s] * slots[t, s].
// grid: (ceil(hidden / blockDim), tokens): one element per thread, so that a single token spreads over
// the whole GPU instead of queueing behind one block's loads.
__global__ void MoeCombineKernel(const float* slots, const float* weights, int top_k, int hidden, float* x) {
  PdlWait();
  PdlTrigger();
  const int t = blockIdx.y;
  const float* w = weights + static_cast<size_t>(t) * top_k;
  const float* y = slots + static_cast<size_t>(t) * top_k * hidden;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < hidden) {
    float o = 0.f;
    // Explicit fused multiply-adds: the one-token down kernel that combines as it goes
    // (ExpertFfnArgs::residual, worker/gpu/expert_ffn.h) does the same operations in the same order.
    for (int s = 0; s < top_k; ++s) o = __fmaf_rn(w[s], y[static_cast<size_t>(s) * hidden + i], o);
    x[static_cast<size_t>(t) * hidden + i] += o;
  }
}

// Many blocks: each warp's best (value, index) is packed into one 64-bit key — the value's bits made
// order-preserving in the high half, the complement of the index in the low half, so that the largest
// key is the largest value and, among equals, the lowest index — and combined with atomicMax. The last
// block to finish writes the index and resets the key and the counter for the next call.
__device__ __forceinline__ unsigned long long PackArgMax(float v, int i) {
  unsigned int b = __float_as_uint(v);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(b) << 32) | (0xFFFFFFFFu - static_cast<unsigned int>(i));
}

__global__ void ArgMaxKernel(const float* v, int n, ArgMaxScratch scratch, int32_t* index) {
  PdlWait();
  PdlTrigger();
  float bv = -FLT_MAX;
  int bi = n;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    if (v[i] > bv) {
      bv = v[i];
      bi = i;
    }
  }
  unsigned long long key = bi < n ? PackArgMax(bv, bi) : 0ull;
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, key, o);
    key = other > key ? other : key;
  }
  if (threadIdx.x % 32 == 0 && key != 0ull) atomicMax(scratch.key, key);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int done = atomicAdd(scratch.blocks_done, 1u);
    if (done == gridDim.x - 1) {  // the last block: every atomicMax is visible
      const unsigned long long k = atomicExch(scratch.key, 0ull);
      *index = static_cast<int32_t>(0xFFFFFFFFu - static_cast<unsigned int>(k & 0xFFFFFFFFull));
      *scratch.blocks_done = 0u;
    }
  }
}

// Sorts n (a power of two) keys in shared memory, largest first (bitonic network; the whole block).
__device__ void SortKeysDescending(unsigned long long* keys, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool descending = (lo & size) == 0;
        const unsigned long long a = keys[lo], b = keys[hi];
        if ((a < b) == descending) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
    }
  }
  __syncthreads();
}

// First pass: block b sorts values [b * kTopKChunk, ...) and keeps its k best keys (0 pads: below any
// real key, whose low half is at least 2^31).
__global__ void TopKChunkKernel(const float* values, int n, int k, unsigned long long* partial) {
  __shared__ unsigned long long keys[kTopKChunk];
  PdlWait();
  PdlTrigger();
  const int base = blockIdx.x * kTopKChunk;
  for (int i = threadIdx.x; i < kTopKChunk; i += blockDim.x) {
    keys[i] = base + i < n ? PackArgMax(values[base + i], base + i) : 0ull;
  }
  SortKeysDescending(keys, kTopKChunk);
  for (int i = threadIdx.x; i < k; i += blockDim.x) partial[static_cast<size_t>(blockIdx.x) * k + i] = keys[i];
}

// Second pass (one block): the chunks' candidates sorted together; the first k are the answer.
__global__ void TopKMergeKernel(const unsigned long long* partial, int count, int padded, int k,
                                unsigned long long* out) {
  extern __shared__ unsigned long long merged[];
  PdlWait();
  PdlTrigger();
  for (int i = threadIdx.x; i < padded; i += blockDim.x) merged[i] = i < count ? partial[i] : 0ull;
  SortKeysDescending(merged, padded);
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = merged[i];
}

// One warp per token, everything in registers: softmax over at most 32 * kTopKPerLane experts, then
// top_k rounds of a warp arg-max (ties to the lower index), no shared memory and no block barriers.
__global__ void RouteTopKKernel(const float* logits, int num_experts, int top_k, bool norm, int32_t* ids,
                                float* weights) {
  PdlWait();
  PdlTrigger();
  WarpRouteTopK(logits + static_cast<size_t>(blockIdx.x) * num_experts, num_experts, top_k, norm,
                ids + static_cast<size_t>(blockIdx.x) * top_k, weights + static_cast<size_t>(blockIdx.x) * top_k);
}

// attn[t, h, d] *= sigmoid(gate[t * gate_row_stride + h * gate_head_stride + d]).
__global__ void SigmoidGateKernel(float* attn, const float* gate, int gate_row_stride, int gate_head_stride,
                                  int heads, int head_dim) {
  PdlWait();
  PdlTrigger();
  const int t = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= heads * head_dim) return;
  const int h = i / head_dim, d = i % head_dim;
  const float g = gate[static_cast<size_t>(t) * gate_row_stride + h * gate_head_stride + d];
  attn[static_cast<size_t>(t) * heads * head_dim + i] *= 1.0f / (1.0f + expf(-g));
}

// x[t, :] += sigmoid(gate[t * gate_stride]) * y[t, :].
__global__ void GatedAddKernel(float* x, const float* y, const float* gate, int gate_stride, int hidden) {
  PdlWait();
  PdlTrigger();
  const int t = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hidden) return;
  const float s = 1.0f / (1.0f + expf(-gate[static_cast<size_t>(t) * gate_stride]));
  x[static_cast<size_t>(t) * hidden + i] += s * y[static_cast<size_t>(t) * hidden + i];
}

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* y, int rows, int dim, float eps,
                          cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaErrorInvalidValue;
  return LaunchPdl(RmsNormKernel, dim3(rows), dim3(kThreads), 0, stream, x, weight, y, dim, eps);
}

cudaError_t LaunchQkNormRopeCache(const QkNormRopeCacheArgs& a, int tokens, cudaStream_t stream) {
  if (tokens <= 0 || a.head_dim > 1024 || a.head_dim % 32 != 0 || a.rotary_dim % 2 != 0 ||
      a.rotary_dim > a.head_dim) {
    return cudaErrorInvalidValue;
  }
  dim3 grid(tokens, a.heads + 2 * a.kv_heads);
  return a.cache_bf16
             ? LaunchPdl(QkNormRopeCacheKernel<__nv_bfloat16>, grid, dim3(a.head_dim), a.head_dim * sizeof(float),
                         stream, a)
             : LaunchPdl(QkNormRopeCacheKernel<float>, grid, dim3(a.head_dim), a.head_dim * sizeof(float), stream,
                         a);
}

cudaError_t LaunchAttention(const AttentionArgs& a, int tokens, cudaStream_t stream) {
  if (tokens <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0 || a.head_dim > kAttnMaxDims * kAttnThreads) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(a.heads, tokens);
  const size_t smem = a.head_dim * sizeof(float);
  return a.cache_bf16 ? LaunchPdl(AttentionKernel<__nv_bfloat16>, grid, dim3(kAttnThreads), smem, stream, a)
                      : LaunchPdl(AttentionKernel<float>, grid, dim3(kAttnThreads), smem, stream, a);
}

bool DecodeAttentionGroupedSupports(int heads, int kv_heads, int head_dim) {
  if (kv_heads <= 0 || heads % kv_heads != 0 || head_dim % 32 != 0) return false;
  const int pl = head_dim / 32, hb = GroupedHeadsPerBlock(heads / kv_heads, head_dim);
  return (pl == 1 || pl == 2 || pl == 4 || pl == 8) && hb * pl <= 32;
}

namespace {

template <typename C>
cudaError_t LaunchDecodeAttentionTyped(const QkNormRopeCacheArgs& a, float* out, cudaStream_t stream) {
  if (a.splits >= 1 && a.grouped) {
    const int group = a.heads / a.kv_heads, hb = GroupedHeadsPerBlock(group, a.head_dim);
    if constexpr (std::is_same_v<C, __nv_bfloat16>) {
      if (a.tensor_cores && group % kMmaHeads == 0) {
        // head_dim 256 (Qwen3-Next) would need more registers than a lane has (spills): CUDA cores there.
        if (a.head_dim == 128) return LaunchMmaDecodeAttention<128>(a, out, stream);
      }
    }
    switch (hb) {
      case 8: return LaunchGroupedByDims<8, C>(a, out, stream);
      case 4: return LaunchGroupedByDims<4, C>(a, out, stream);
      case 2: return LaunchGroupedByDims<2, C>(a, out, stream);
      default: return LaunchGroupedByDims<1, C>(a, out, stream);
    }
  }
  // q, k, v of the new token; the split form's per-warp sums after them.
  const size_t smem = static_cast<size_t>(a.splits >= 1 ? 7 : 3) * a.head_dim * sizeof(float);
  return LaunchPdl(DecodeAttentionFusedKernel<C>, dim3(a.heads, a.batch, std::max(a.splits, 1)), dim3(kAttnThreads),
                   smem, stream, a, out);
}

}  // namespace

cudaError_t LaunchDecodeAttentionFused(const QkNormRopeCacheArgs& a, float* out, cudaStream_t stream) {
  if (a.kv_heads <= 0 || a.heads % a.kv_heads != 0 || a.head_dim > kAttnMaxDims * kAttnThreads ||
      a.rotary_dim % 2 != 0 || a.rotary_dim > a.head_dim || a.batch < 1 ||
      (a.batch > 1 && (a.position_dev == nullptr || a.cache_seq_stride == 0)) || a.splits < 0 ||
      a.splits > kAttnMaxSplits ||
      (a.splits >= 1 && (a.split_partials == nullptr || a.split_counters == nullptr || a.head_dim % 32 != 0))) {
    return cudaErrorInvalidValue;
  }
  return a.cache_bf16 ? LaunchDecodeAttentionTyped<__nv_bfloat16>(a, out, stream)
                      : LaunchDecodeAttentionTyped<float>(a, out, stream);
}

cudaError_t LaunchEmbed(const void* table, bool bf16, const int32_t* ids, int tokens, int hidden, float* x,
                        cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  return LaunchPdl(EmbedKernel, dim3(tokens), dim3(kThreads), 0, stream, table, bf16, ids, hidden, x);
}

cudaError_t LaunchSiluMul(const float* gate_up, int row_stride, int tokens, int inter, float* act,
                          cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  return LaunchPdl(SiluMulKernel, dim3(tokens), dim3(kThreads), 0, stream, gate_up, row_stride, inter, act);
}

cudaError_t LaunchMoeCombine(const float* slots, const float* weights, int tokens, int top_k, int hidden,
                             float* x, cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  return LaunchPdl(MoeCombineKernel, dim3((hidden + 127) / 128, tokens), dim3(128), 0, stream, slots, weights, top_k,
                   hidden, x);
}

cudaError_t LaunchSigmoidGate(float* attn, const float* gate, int gate_row_stride, int gate_head_stride, int tokens,
                              int heads, int head_dim, cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  return LaunchPdl(SigmoidGateKernel, dim3((heads * head_dim + 127) / 128, tokens), dim3(128), 0, stream, attn, gate,
                   gate_row_stride, gate_head_stride, heads, head_dim);
}

cudaError_t LaunchGatedAdd(float* x, const float* y, const float* gate, int gate_stride, int tokens, int hidden,
                           cudaStream_t stream) {
  if (tokens <= 0) return cudaErrorInvalidValue;
  return LaunchPdl(GatedAddKernel, dim3((hidden + 127) / 128, tokens), dim3(128), 0, stream, x, y, gate, gate_stride,
                   hidden);
}

cudaError_t LaunchArgMax(const float* values, int n, ArgMaxScratch scratch, int32_t* index, cudaStream_t stream) {
  if (n <= 0 || scratch.key == nullptr || scratch.blocks_done == nullptr) return cudaErrorInvalidValue;
  const int blocks = std::min((n + 1023) / 1024, 132);
  return LaunchPdl(ArgMaxKernel, dim3(blocks), dim3(1024), 0, stream, values, n, scratch, index);
}

cudaError_t LaunchTopK(const float* values, int n, int k, unsigned long long* partial, unsigned long long* out,
                       cudaStream_t stream) {
  const int chunks = (n + kTopKChunk - 1) / kTopKChunk;
  if (n <= 0 || k <= 0 || k > kDeviceTopKMax || k > n || chunks > kTopKMaxChunks) return cudaErrorInvalidValue;
  cudaError_t err = LaunchPdl(TopKChunkKernel, dim3(chunks), dim3(1024), 0, stream, values, n, k, partial);
  if (err != cudaSuccess) return err;
  const int count = chunks * k;
  int padded = 1;
  while (padded < count) padded <<= 1;
  const size_t smem = static_cast<size_t>(padded) * sizeof(unsigned long long);
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(TopKMergeKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return LaunchPdl(TopKMergeKernel, dim3(1), dim3(1024), smem, stream, partial, count, padded, k, out);
}

cudaError_t LaunchRouteTopK(const float* logits, int tokens, int num_experts, int top_k, bool norm_topk_prob,
                            int32_t* ids, float* weights, cudaStream_t stream) {
  if (tokens <= 0 || top_k <= 0 || top_k > num_experts || num_experts > kRouteMaxExperts) {
    return cudaErrorInvalidValue;
  }
  return LaunchPdl(RouteTopKKernel, dim3(tokens), dim3(32), 0, stream, logits, num_experts, top_k, norm_topk_prob, ids,
                   weights);
}

}  // namespace pinmoe
