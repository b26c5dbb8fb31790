#include "worker/gpu/expert_ffn.h"

#include "common/env.h"
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
// buffer) in shared memory, then takes one contiguous run of the (pair, row group) items, so no work
// waits on a routing lookup and nothing is spent on other workers' pairs.
//
// kSorted (more than one token, whose pairs may share experts): the list is sorted by expert, and the
// items run expert by expert, row group by row group, pair by pair, so each row group's weights come
// from device memory once and from the L1/L2 caches for the expert's other pairs (holding a row's
// weights in registers for several pairs instead costs registers, hence loads in flight: measured
// slower, bench/NOTES.md). One token's top-k experts are distinct: it keeps the plain list and its
// smaller shared memory (the sorted form cost the one-token step through worker processes ~5%,
// measured). Each pair's row is computed by the same instruction sequence wherever it runs, so results
// depend neither on the batch nor on the split between workers.
//  kGateUp: act[pair, row] = SiLU(gate[row] . x) * (up[row] . x), rows = inter, x = the pair's token;
//  else:    out[pair, row] = down[row] . act[pair], rows = hidden.
//
// `early` (the down kernel only; PINMOE_DOWN_EARLY_ROWS=1, off by default, not yet run on a GPU): as in
// DownCombineKernel below, the first pass's tables are built and its first weights requested before the
// programmatic wait for gate/up, the routing table read past L1.
constexpr int kTablePairs = kRowThreads;  // pairs listed per pass (kPass), or twice that for batches past it

template <typename W, bool kGateUp, int R, bool kSorted, int kPass>
__global__ void __launch_bounds__(kRowThreads) ExpertRowsKernel(ExpertFfnArgs a, bool early) {
  constexpr int kElems = 16 / sizeof(W);
  constexpr int M = kGateUp ? 2 : 1;  // matrices per row: gate and up, or down
  constexpr int kSortSlots = kSorted ? kPass : 1;
  __shared__ float red[kRowWarps][R * M];
  __shared__ int table_pair[kPass];       // the pass's owned pairs, in pair order
  __shared__ const W* run_mat[M][kPass];  // each pair's matrices (kSorted: each run's)
  __shared__ int table_expert[kSortSlots];
  __shared__ int sorted[kSortSlots];            // the pairs expert by expert
  __shared__ int run_start[kSortSlots + 1];     // each expert's first place in sorted[] (a "run")
  __shared__ int rank[kSortSlots];              // a pair's place among its expert's
  __shared__ int expert_first[kSorted ? kMaxDecodeExperts : 1];
  __shared__ int warp_owned[kRowWarps];
  __shared__ int listed, runs;
  early = early && !kGateUp;
  if (!early) {
    PdlWait();
    PdlTrigger();
  }
  // x and the routing table may still be being written (ExpertFfnArgs::ready): wait for them; they
  // and act are read with ordinary loads below, only the weights through the read-only path.
  if (kGateUp || early) BlockWaitsCounter(a.ready);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int rows = kGateUp ? a.inter : a.hidden, cols = kGateUp ? a.hidden : a.inter;
  const int chunks = cols / kElems, per_pair = (rows + R - 1) / R;
  const int pairs = a.tokens * a.top_k;
  for (int base = 0; base < pairs; base += kPass) {
    // List this pass's owned pairs in pair order (ballot + per-warp offsets): every block builds the
    // same tables, so the blocks' runs of items tile them exactly.
    __syncthreads();  // the previous pass is done with the tables
    if (threadIdx.x == 0) listed = 0;
    if constexpr (kSorted) {
      for (int e = threadIdx.x; e < a.num_experts; e += blockDim.x) expert_first[e] = 0;
    }
    for (int p0 = 0; p0 < kPass && base + p0 < pairs; p0 += blockDim.x) {
      const int p = p0 + threadIdx.x, pair = base + p;
      int e = -1;
      if (p < kPass && pair < pairs) {
        const int id = early ? __ldcg(a.routing + pair) : a.routing[pair];
        if (id >= 0 && id < a.num_experts && (kGateUp ? a.experts[id].gate : a.experts[id].down) != nullptr) e = id;
      }
      const bool owned = e >= 0;
      const unsigned ballot = __ballot_sync(0xffffffffu, owned);
      if (lane == 0) warp_owned[warp] = __popc(ballot);
      __syncthreads();
      int at = listed + __popc(ballot & ((1u << lane) - 1u));
      for (int w = 0; w < warp; ++w) at += warp_owned[w];
      if (owned) {
        table_pair[at] = pair;
        if constexpr (kSorted) {
          table_expert[at] = e;
        } else {
          const GpuExpert ex = a.experts[e];
          run_mat[0][at] = static_cast<const W*>(kGateUp ? ex.gate : ex.down);
          if (kGateUp) run_mat[M - 1][at] = static_cast<const W*>(ex.up);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 0; w < warps; ++w) listed += warp_owned[w];
      }
      __syncthreads();
    }
    const int owned_pairs = listed;
    if constexpr (kSorted) {
      // Sort by expert, deterministically: warp 0 ranks each pair among the earlier pairs of its expert
      // (32 at a time, the lanes of one expert found by __match_any_sync) and scans the counts over
      // the experts; then every thread places its pairs.
      if (warp == 0) {
        for (int i0 = 0; i0 < owned_pairs; i0 += 32) {
          const int i = i0 + lane;
          const int e = i < owned_pairs ? table_expert[i] : kMaxDecodeExperts + lane;  // a key of its own
          const unsigned same = __match_any_sync(0xffffffffu, e);
          const int before = __popc(same & ((1u << lane) - 1u));
          if (i < owned_pairs) rank[i] = expert_first[e] + before;
          __syncwarp();
          if (i < owned_pairs && before == __popc(same) - 1) expert_first[e] += __popc(same);
          __syncwarp();
        }
        int carry_pairs = 0, carry_runs = 0;
        for (int e0 = 0; e0 < a.num_experts; e0 += 32) {
          const int e = e0 + lane;
          const int count = e < a.num_experts ? expert_first[e] : 0, present = count > 0 ? 1 : 0;
          int pairs_incl = count, runs_incl = present;
          for (int o = 1; o < 32; o <<= 1) {
            const int vp = __shfl_up_sync(0xffffffffu, pairs_incl, o);
            const int vr = __shfl_up_sync(0xffffffffu, runs_incl, o);
            if (lane >= o) {
              pairs_incl += vp;
              runs_incl += vr;
            }
          }
          const int first = carry_pairs + pairs_incl - count;
          if (e < a.num_experts) expert_first[e] = first;
          if (present) {
            const int r = carry_runs + runs_incl - 1;
            run_start[r] = first;
            const GpuExpert ex = a.experts[e];
            run_mat[0][r] = static_cast<const W*>(kGateUp ? ex.gate : ex.down);
            if (kGateUp) run_mat[M - 1][r] = static_cast<const W*>(ex.up);
          }
          carry_pairs += __shfl_sync(0xffffffffu, pairs_incl, 31);
          carry_runs += __shfl_sync(0xffffffffu, runs_incl, 31);
        }
        if (lane == 0) {
          run_start[carry_runs] = owned_pairs;
          runs = carry_runs;
        }
      }
      __syncthreads();
      for (int i = threadIdx.x; i < owned_pairs; i += blockDim.x) {
        sorted[expert_first[table_expert[i]] + rank[i]] = table_pair[i];
      }
    }
    __syncthreads();
    const int items = owned_pairs * per_pair;
    const int begin = static_cast<int>(static_cast<long>(items) * blockIdx.x / gridDim.x);
    const int end = static_cast<int>(static_cast<long>(items) * (blockIdx.x + 1) / gridDim.x);
    // An item's place: run (kSorted: an expert's pairs in sorted[]; else one pair of table_pair[]), row
    // group, pair within the run (a run's items are row group-major).
    struct Place {
      int run, group, j;
    };
    auto locate = [&](int item) { return Place{item / per_pair, item % per_pair, 0}; };
    auto locate_sorted = [&](int item) {
      int lo = 0, hi = runs - 1;  // the last run whose first item is <= item
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (run_start[mid] * per_pair <= item) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      const int size = run_start[lo + 1] - run_start[lo], local = item - run_start[lo] * per_pair;
      return Place{lo, local / size, local % size};
    };
    auto advance_sorted = [&](Place q) {
      if (++q.j == run_start[q.run + 1] - run_start[q.run]) {
        q.j = 0;
        if (++q.group == per_pair) {
          q.group = 0;
          ++q.run;
        }
      }
      return q;
    };
    uint4 v[M][R];
    auto load = [&](const Place& q, int c) {
      const int row0 = q.group * R;
#pragma unroll
      for (int k = 0; k < M; ++k) {
        const W* mat = run_mat[k][q.run];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int row = min(row0 + r, rows - 1);
          v[k][r] = __ldg(reinterpret_cast<const uint4*>(mat + static_cast<size_t>(row) * cols) + c);
        }
      }
    };
    Place at{0, 0, 0};
    if (begin < end) at = kSorted ? locate_sorted(begin) : locate(begin);
    if (begin < end && threadIdx.x < chunks) load(at, threadIdx.x);
    if (early && base == 0) {
      PdlWait();
      PdlTrigger();
    }
    for (int item = begin; item < end; ++item) {
      Place next = at;
      if (item + 1 < end) next = kSorted ? advance_sorted(at) : locate(item + 1);
      const int pair = kSorted ? sorted[run_start[at.run] + at.j] : table_pair[at.run], row0 = at.group * R;
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
          load(at, c + blockDim.x);
        } else if (item + 1 < end) {
          load(next, threadIdx.x);
        }
      }
#pragma unroll
      for (int k = 0; k < M; ++k) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float s = WarpSum(acc[k][r]);
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
      at = next;
    }
  }
  if constexpr (!kGateUp) PublishCounter(a.done, a.arrivals);
}

// The one-token down kernel that also combines (ExpertFfnArgs::residual). The block is cut into
// sub-blocks of `slot_threads` threads (ExpertRowsKernel's down block), one per slot, so that the slots'
// rows of one group are summed side by side, each exactly as ExpertRowsKernel sums them (the same
// threads per row, the same chunks per thread in the same order, the same warp and block reductions):
// the same bits in the slots. Slots past what fits in one block run in further rounds. Each block walks
// row groups of R rows (and rounds), requesting the next item's weights before computing the current
// one; after a group's last round, thread r adds row r's weighted slots to the residual in slot order,
// with MoeCombine's fused multiply-adds.
constexpr int kCombineMaxSlots = 32;
// At most this many threads a block, and two blocks an SM (so at most 40 registers a thread): at 53
// registers a 768-thread block held an SM alone and the kernel took 1.3 us a layer more than the plain
// down kernel (gpu_expert_ffn_bench --combine, H200).
constexpr int kCombineThreads = 768;

// A down grid with the done counter in the add form gives every block a share of at least 1
// (CounterStore::add): at most `add` blocks.
int CutToDoneShares(const ExpertFfnArgs& a, int grid) {
  return a.done.counter != nullptr && a.done.add != 0 ? static_cast<int>(std::min<long>(grid, a.done.add)) : grid;
}

//
// `early` (PINMOE_DOWN_EARLY, A/B): the block reads the routing table and requests its first item's
// weights before the programmatic wait for the gate/up kernel, so those loads overlap that kernel's
// tail. The table is final by then: this kernel starts only once every gate/up block has passed its
// own wait (for the kernel before it: the router in-process, a worker's gate on the tick), and, with a
// ready counter, after this block has seen it too. The table is read past L1. On the H200 (Qwen3-30B-A3B
// shape, 2,048-token prompt) it took a worker's experts from 26.6 to 24.6 µs a layer and in-process
// decode from 349.6 to 362.2 tok/s (bench/NOTES.md, "The twelfth session").
// `prefetch` (PINMOE_DOWN_PREFETCH=1, with `early` only; off by default, not yet run on a GPU): before
// the wait the block also asks L2 for every row it will read, its whole share of the slots' matrices.
template <typename W, int R>
__global__ void __launch_bounds__(kCombineThreads, 2) DownCombineKernel(ExpertFfnArgs a, int slot_threads,
                                                                        bool early, bool prefetch) {
  constexpr int kElems = 16 / sizeof(W);
  __shared__ float red[kCombineMaxSlots][kRowWarps][R];
  __shared__ float ys[kCombineMaxSlots][R];
  if (early) {
    BlockWaitsCounter(a.ready);
  } else {
    PdlWait();
    PdlTrigger();
  }
  const int per_round = blockDim.x / slot_threads, rounds = (a.top_k + per_round - 1) / per_round;
  const int sub = threadIdx.x / slot_threads, tid = threadIdx.x % slot_threads;
  const int warp = tid / 32, lane = tid % 32, warps = slot_threads / 32;
  const int rows = a.hidden, cols = a.inter, chunks = cols / kElems, groups = (rows + R - 1) / R;
  __shared__ const W* mats[kCombineMaxSlots];  // each slot's down matrix (null: not here)
  if (threadIdx.x < a.top_k) {
    const int id = __ldcg(a.routing + threadIdx.x);
    mats[threadIdx.x] = id >= 0 && id < a.num_experts ? static_cast<const W*>(a.experts[id].down) : nullptr;
  }
  __syncthreads();
  uint4 v[R];
  auto load = [&](int g, int round, int c) {
    const int slot = round * per_round + sub;
    const W* mat = slot < a.top_k ? mats[slot] : nullptr;
    if (mat == nullptr) return;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = min(g * R + r, rows - 1);
      v[r] = __ldg(reinterpret_cast<const uint4*>(mat + static_cast<size_t>(row) * cols) + c);
    }
  };
  // A block's items: its row groups, each round by round (a group's rounds stay in one block).
  auto advance = [&](int* g, int* round) {
    if (++*round == rounds) {
      *round = 0;
      *g += gridDim.x;
    }
  };
  int g = blockIdx.x, round = 0;
  if (g < groups && tid < chunks) load(g, round, tid);
  if (early && prefetch) {
    // A row group's R rows of one matrix are contiguous (fewer in the last group): `lines` 128-byte lines
    // per (group, slot) of the block, the block's threads taking them in turn.
    const int lines = (R * cols * static_cast<int>(sizeof(W)) + 127) / 128;
    const int bx = static_cast<int>(blockIdx.x), gx = static_cast<int>(gridDim.x);
    const int my_groups = bx < groups ? (groups - 1 - bx) / gx + 1 : 0;
    for (int i = static_cast<int>(threadIdx.x); i < my_groups * a.top_k * lines; i += static_cast<int>(blockDim.x)) {
      const int item = i / lines, line = i % lines, s = item % a.top_k;
      const size_t row0 = static_cast<size_t>(bx + (item / a.top_k) * gx) * R;
      const size_t bytes = static_cast<size_t>(min(R, rows - static_cast<int>(row0))) * cols * sizeof(W);
      if (mats[s] == nullptr || static_cast<size_t>(line) * 128 >= bytes) continue;
      PrefetchLineL2(reinterpret_cast<const char*>(mats[s] + row0 * cols) + static_cast<size_t>(line) * 128);
    }
  }
  if (early) {
    PdlWait();
    PdlTrigger();
  }
  while (g < groups) {
    const int row0 = g * R, slot = round * per_round + sub;
    const bool active = slot < a.top_k && mats[slot] != nullptr;
    const float* x = a.act + static_cast<size_t>(slot) * a.inter;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    for (int c = tid; c < chunks; c += slot_threads) {
      if (active) {
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] += Dot16(v[r], x + c * kElems, W());
      }
      int nc = c + slot_threads, ng = g, nr = round;
      if (nc >= chunks) {
        nc = tid;
        advance(&ng, &nr);
      }
      if (ng < groups && nc < chunks) load(ng, nr, nc);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float s = WarpSum(acc[r]);
      if (lane == 0) red[sub][warp][r] = s;
    }
    __syncthreads();
    if (tid < R && row0 + tid < rows && active) {
      float sum = 0.f;
      for (int w = 0; w < warps; ++w) sum += red[sub][w][tid];
      a.out[static_cast<size_t>(slot) * a.hidden + row0 + tid] = sum;
      ys[slot][tid] = sum;
    }
    __syncthreads();
    if (round == rounds - 1 && threadIdx.x < R && row0 + static_cast<int>(threadIdx.x) < rows) {
      float o = 0.f;
      for (int s = 0; s < a.top_k; ++s) o = __fmaf_rn(a.combine_weights[s], ys[s][threadIdx.x], o);
      a.residual[row0 + threadIdx.x] += o;
    }
    advance(&g, &round);
  }
  PublishCounter(a.done, a.arrivals);
}

template <typename W>
cudaError_t LaunchDownCombine(const ExpertFfnArgs& a, cudaStream_t stream) {
  constexpr int kElems = 16 / sizeof(W), R = 4;
  const int slot_threads = RowThreads(a.inter / kElems);  // ExpertRowsKernel's down block
  const int per_round = std::max(1, std::min(a.top_k, kCombineThreads / slot_threads));
  auto kernel = DownCombineKernel<W, R>;
  int grid = 0;
  const cudaError_t err =
      ResidentGrid(kernel, per_round * slot_threads, 0, static_cast<long>((a.hidden + R - 1) / R), &grid);
  if (err != cudaSuccess) return err;
  static const bool early = EnvInt("PINMOE_DOWN_EARLY", 1) != 0;
  static const bool prefetch = EnvInt("PINMOE_DOWN_PREFETCH", 0) != 0;
  return LaunchPdl(kernel, dim3(CutToDoneShares(a, grid)), dim3(per_round * slot_threads), 0, stream, a,
                   slot_threads, early, prefetch);
}

template <typename W, bool kGateUp, int R, bool kSorted, int kPass>
cudaError_t LaunchRows(const ExpertFfnArgs& a, cudaStream_t stream) {
  constexpr int kElems = 16 / sizeof(W);
  const int cols = kGateUp ? a.hidden : a.inter, rows = kGateUp ? a.inter : a.hidden;
  const int threads = RowThreads(cols / kElems);
  auto kernel = ExpertRowsKernel<W, kGateUp, R, kSorted, kPass>;
  const long items = static_cast<long>(std::min(a.tokens * a.top_k, kPass)) * ((rows + R - 1) / R);
  int grid = 0;
  const cudaError_t err = ResidentGrid(kernel, threads, 0, items, &grid);
  if (err != cudaSuccess) return err;
  if (!kGateUp) grid = CutToDoneShares(a, grid);
  static const bool early_rows = EnvInt("PINMOE_DOWN_EARLY_ROWS", 0) != 0;
  return LaunchPdl(kernel, dim3(grid), dim3(threads), 0, stream, a, early_rows);  // the kernel ignores it in gate/up
}

template <typename W, bool kSorted, int kPass>
cudaError_t Launch(const ExpertFfnArgs& a, cudaStream_t stream) {
  // gate/up keeps 2 x 2 loads in flight per thread, down 4: both about the registers of the dense GEMV.
  cudaError_t err = LaunchRows<W, true, 2, kSorted, kPass>(a, stream);
  if (err != cudaSuccess) return err;
  if (a.residual != nullptr) return LaunchDownCombine<W>(a, stream);
  return LaunchRows<W, false, 4, kSorted, kPass>(a, stream);
}

template <typename W>
cudaError_t LaunchTyped(const ExpertFfnArgs& a, cudaStream_t stream) {
  // The sort's per-expert counters hold kMaxDecodeExperts; more experts keep the plain list (same
  // results, no cache reuse between an expert's pairs).
  // A pass reads each of its experts' rows once: batches of more than kTablePairs pairs take passes
  // twice that size (more shared memory, so fewer blocks of the down kernel per SM), so that up to 63
  // tokens of top-8 routing read every weight once.
  const bool sorted = a.tokens > 1 && a.num_experts <= kMaxDecodeExperts;
  if (!sorted) return Launch<W, false, kTablePairs>(a, stream);
  if (a.tokens * a.top_k <= kTablePairs) return Launch<W, true, kTablePairs>(a, stream);
  return Launch<W, true, 2 * kTablePairs>(a, stream);
}

}  // namespace

cudaError_t LaunchExpertFfnDecode(const ExpertFfnArgs& a, cudaStream_t stream) {
  if (a.hidden % 8 != 0 || a.inter % 8 != 0 || a.tokens <= 0 || a.top_k <= 0) return cudaErrorInvalidValue;
  if (a.done.counter != nullptr && a.done.add == 0 && a.arrivals == nullptr) return cudaErrorInvalidValue;
  if (a.residual != nullptr && (a.tokens != 1 || a.combine_weights == nullptr || a.top_k > kCombineMaxSlots)) {
    return cudaErrorInvalidValue;
  }
  return a.fp32_weights ? LaunchTyped<float>(a, stream) : LaunchTyped<__nv_bfloat16>(a, stream);
}

}  // namespace pinmoe
