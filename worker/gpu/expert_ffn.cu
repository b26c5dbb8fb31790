#include "worker/gpu/expert_ffn.h"

#include "worker/gpu/counter_store.cuh"
#include "worker/gpu/pdl.cuh"
#include "worker/gpu/row_dot.cuh"

#include <algorithm>

namespace pinmoe {
namespace {

__device__ __forceinline__ float Silu(float x) { return x / (1.f + __expf(-x)); }

// One expert matrix product per (token, slot) pair over the routed experts' rows, laid out like the
// dense GEMV (coordinator/gpu/linear.cu): each block takes R rows of a pair at a time, its threads split
// the columns 16 bytes each (R loads in flight per thread and matrix), partial sums meet in shared
// memory in a fixed order, and the next rows' weights are requested before the current ones are
// computed. The grid is at most one resident wave. Each block first lists the pairs whose expert has
// weights here (another worker owns the rest: several workers share one routing table and one output
// buffer) with their matrices in shared memory, then takes one contiguous run of the (pair, row group)
// items, so no work waits on a routing lookup and nothing is spent on other workers' pairs. Each row's
// arithmetic is the same wherever it runs.
//  kGateUp: act[pair, row] = SiLU(gate[row] . x) * (up[row] . x), rows = inter, x = the pair's token;
//  else:    out[pair, row] = down[row] . act[pair], rows = hidden.
constexpr int kTablePairs = kRowThreads;  // pairs listed per pass

template <typename W, bool kGateUp, int R>
__global__ void __launch_bounds__(kRowThreads) ExpertRowsKernel(ExpertFfnArgs a) {
  constexpr int kElems = 16 / sizeof(W);
  constexpr int M = kGateUp ? 2 : 1;  // matrices per row: gate and up, or down
  __shared__ float red[kRowWarps][R * M];
  __shared__ int table_pair[kTablePairs];
  __shared__ const W* table_mat[M][kTablePairs];
  __shared__ int warp_owned[kRowWarps];
  __shared__ int listed;
  PdlWait();
  PdlTrigger();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int rows = kGateUp ? a.inter : a.hidden, cols = kGateUp ? a.hidden : a.inter;
  const int chunks = cols / kElems, per_pair = (rows + R - 1) / R;
  const int pairs = a.tokens * a.top_k;
  for (int base = 0; base < pairs; base += kTablePairs) {
    // List this pass's owned pairs in pair order (ballot + per-warp offsets): every block builds the
    // same table, so the blocks' runs of items tile it exactly.
    __syncthreads();  // the previous pass is done with the table
    if (threadIdx.x == 0) listed = 0;
    for (int p0 = 0; p0 < kTablePairs && base + p0 < pairs; p0 += blockDim.x) {
      const int p = p0 + threadIdx.x, pair = base + p;
      const W* m[M] = {};
      if (p < kTablePairs && pair < pairs) {
        const int e = a.routing[pair];
        if (e >= 0 && e < a.num_experts) {
          const GpuExpert ex = a.experts[e];
          m[0] = static_cast<const W*>(kGateUp ? ex.gate : ex.down);
          if (kGateUp) m[M - 1] = static_cast<const W*>(ex.up);
        }
      }
      const bool owned = m[0] != nullptr;
      const unsigned ballot = __ballot_sync(0xffffffffu, owned);
      if (lane == 0) warp_owned[warp] = __popc(ballot);
      __syncthreads();
      int at = listed + __popc(ballot & ((1u << lane) - 1u));
      for (int w = 0; w < warp; ++w) at += warp_owned[w];
      if (owned) {
        table_pair[at] = pair;
#pragma unroll
        for (int k = 0; k < M; ++k) table_mat[k][at] = m[k];
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 0; w < warps; ++w) listed += warp_owned[w];
      }
      __syncthreads();
    }
    const int owned_pairs = listed;
    const int items = owned_pairs * per_pair;
    const int begin = static_cast<int>(static_cast<long>(items) * blockIdx.x / gridDim.x);
    const int end = static_cast<int>(static_cast<long>(items) * (blockIdx.x + 1) / gridDim.x);
    uint4 v[M][R];
    auto load = [&](int item, int c) {
      const int slot = item / per_pair, row0 = (item % per_pair) * R;
#pragma unroll
      for (int k = 0; k < M; ++k) {
        const W* mat = table_mat[k][slot];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int row = min(row0 + r, rows - 1);
          v[k][r] = __ldg(reinterpret_cast<const uint4*>(mat + static_cast<size_t>(row) * cols) + c);
        }
      }
    };
    if (begin < end && threadIdx.x < chunks) load(begin, threadIdx.x);
    for (int item = begin; item < end; ++item) {
      const int pair = table_pair[item / per_pair], row0 = (item % per_pair) * R;
      const float* x = kGateUp ? a.x + static_cast<size_t>(pair / a.top_k) * a.hidden
                               : a.act + static_cast<size_t>(pair) * a.inter;
      float acc[M][R];
#pragma unroll
      for (int k = 0; k < M; ++k) {
#pragma unroll
        for (int r = 0; r < R; ++r) acc[k][r] = 0.f;
      }
      for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const float* xc = x + c * kElems;
#pragma unroll
        for (int k = 0; k < M; ++k) {
#pragma unroll
          for (int r = 0; r < R; ++r) acc[k][r] += Dot16(v[k][r], xc, W());
        }
        if (c + static_cast<int>(blockDim.x) < chunks) {
          load(item, c + blockDim.x);
        } else if (item + 1 < end) {
          load(item + 1, threadIdx.x);
        }
      }
#pragma unroll
      for (int k = 0; k < M; ++k) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float s = acc[k][r];
          for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
          if (lane == 0) red[warp][k * R + r] = s;
        }
      }
      __syncthreads();
      if (threadIdx.x < R && row0 + static_cast<int>(threadIdx.x) < rows) {
        float sum[M];
#pragma unroll
        for (int k = 0; k < M; ++k) {
          sum[k] = 0.f;
          for (int w = 0; w < warps; ++w) sum[k] += red[w][k * R + threadIdx.x];
        }
        const int row = row0 + threadIdx.x;
        if (kGateUp) {
          a.act[static_cast<size_t>(pair) * a.inter + row] = Silu(sum[0]) * sum[M - 1];
        } else {
          a.out[static_cast<size_t>(pair) * a.hidden + row] = sum[0];
        }
      }
      __syncthreads();  // red[] is reused by the next item
    }
  }
  if constexpr (!kGateUp) LastBlockStoresCounter(a.done, a.arrivals);
}

template <typename W, bool kGateUp, int R>
cudaError_t LaunchRows(const ExpertFfnArgs& a, cudaStream_t stream) {
  constexpr int kElems = 16 / sizeof(W);
  const int cols = kGateUp ? a.hidden : a.inter, rows = kGateUp ? a.inter : a.hidden;
  const int threads = RowThreads(cols / kElems);
  auto kernel = ExpertRowsKernel<W, kGateUp, R>;
  const long items = static_cast<long>(std::min(a.tokens * a.top_k, kTablePairs)) * ((rows + R - 1) / R);
  int grid = 0;
  const cudaError_t err = ResidentGrid(kernel, threads, 0, items, &grid);
  if (err != cudaSuccess) return err;
  return LaunchPdl(kernel, dim3(grid), dim3(threads), 0, stream, a);
}

template <typename W>
cudaError_t Launch(const ExpertFfnArgs& a, cudaStream_t stream) {
  // gate/up keeps 2 x 2 loads in flight per thread, down 4: both about the registers of the dense GEMV.
  cudaError_t err = LaunchRows<W, true, 2>(a, stream);
  if (err != cudaSuccess) return err;
  return LaunchRows<W, false, 4>(a, stream);
}

}  // namespace

cudaError_t LaunchExpertFfnDecode(const ExpertFfnArgs& a, cudaStream_t stream) {
  if (a.hidden % 8 != 0 || a.inter % 8 != 0 || a.tokens <= 0 || a.top_k <= 0) return cudaErrorInvalidValue;
  if (a.done.counter != nullptr && a.arrivals == nullptr) return cudaErrorInvalidValue;
  return a.fp32_weights ? Launch<float>(a, stream) : Launch<__nv_bfloat16>(a, stream);
}

}  // namespace pinmoe
