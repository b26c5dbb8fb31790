// GPU expert FFN for decode: bf16 (or fp32) weights, fp32 activations and accumulation. Reads only the weights of
// experts that some token was routed to, with 16-byte loads; a row shared by several (token, slot) pairs
// comes from device memory once and from the caches for the others.
//
// Two kernels per MoE layer: gate/up (+ SiLU(gate) * up, into an fp32 scratch) and down; any number of
// pairs. A pair whose
// expert has no weights here (owned by another worker) is skipped, so several workers can share one
// routing table and one output buffer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "worker/gpu/counter_kernels.h"

namespace pinmoe {

// One routed expert's weights in device memory: gate, up [inter, hidden], down [hidden, inter],
// row-major as the checkpoint stores them, bf16 or fp32 (ExpertFfnArgs::fp32_weights). All null when
// another worker owns the expert.
struct GpuExpert {
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* down = nullptr;
};

struct ExpertFfnArgs {
  const float* x = nullptr;           // [tokens, hidden]
  const int32_t* routing = nullptr;   // [tokens, top_k] expert ids
  const GpuExpert* experts = nullptr; // device array [num_experts]
  int num_experts = 0;
  int tokens = 0;
  int top_k = 0;
  int hidden = 0;                     // multiple of 8
  int inter = 0;                      // multiple of 8
  float* act = nullptr;               // scratch [tokens, top_k, inter]
  float* out = nullptr;               // [tokens, top_k, hidden]; pairs not owned are left untouched
  bool fp32_weights = false;          // weights are fp32 (checked against references) instead of bf16
  // Optional: the down kernel's last block stores this once every output is written (a hand-over to
  // another process); `arrivals` is a zeroed counter for it (left zeroed). In the add form (done.add)
  // every block adds its share instead (no `arrivals`; the grid is then at most done.add blocks).
  CounterStore done;
  unsigned int* arrivals = nullptr;
  // Optional: the gate/up kernel's blocks wait for this before they read x and the routing table (which
  // the peer writes while they are resident), so the kernel may be enqueued behind an earlier gate.
  CounterWait ready;
  // Optional, one token only, and every one of its pairs' experts here: the down kernel also adds the
  // weighted sum of the token's slots to the residual, residual[i] += sum over slots s (in order) of
  // combine_weights[s] * out[s, i] with the combine kernel's fused multiply-adds (MoeCombine,
  // coordinator/gpu/dense_kernels.cu), so the sums are the same bits and no combine kernel follows.
  // A kernel of its own then runs the down products, every slot of a row group side by side (at most
  // 32 slots).
  float* residual = nullptr;                // [hidden]
  const float* combine_weights = nullptr;   // [top_k]
};

// Experts at most for which a batch's pairs are sorted by expert (in shared memory); with more, each pair
// reads its expert's rows on its own (same results).
constexpr int kMaxDecodeExperts = 512;

// Enqueues both kernels on `stream`. Returns the launch error, if any.
cudaError_t LaunchExpertFfnDecode(const ExpertFfnArgs& args, cudaStream_t stream);

}  // namespace pinmoe

namespace pinmoe {

// GPU expert FFN for prefill-sized batches: tensor cores (bf16 in, fp32 accumulate) over the pairs
// grouped by expert, so that each expert's weights are read once per tile of 64 pairs instead of once
// per pair. Three kernels, all sized from device data (no host round trip, graph-capturable):
//  1. sort: counts the pairs of each expert this store owns, lays them out expert by expert, and cuts
//     each expert's run into tiles of up to kGroupedTileRows pairs;
//  2. gate/up: per (tile, 64 columns of inter): the tile's token rows (fp32, rounded to bf16) times the
//     expert's gate and up rows, SiLU(gate) * up rounded to bf16 into act (sorted order);
//  3. down: per (tile, 64 columns of hidden): act times the expert's down rows, written to the pair's
//     own slot of out (fp32).
// Each pair's row is computed by the same instruction sequence wherever it lands in a tile, so results
// do not depend on how pairs are split among workers. bf16 weights only.
constexpr int kGroupedTileRows = 64;

struct GroupedFfnScratch {
  int32_t* sorted_pair = nullptr;  // [max_pairs]: pair index (token * top_k + slot), expert by expert
  int32_t* tile_expert = nullptr;  // [max_tiles]
  int32_t* tile_row0 = nullptr;    // [max_tiles]: first row of the tile in sorted order
  int32_t* tile_rows = nullptr;    // [max_tiles]
  int32_t* num_tiles = nullptr;    // [1]
  __nv_bfloat16* act = nullptr;    // [max_pairs, inter]
};

// Tiles needed at most for `pairs` pairs over `num_experts` experts.
inline int GroupedMaxTiles(int pairs, int num_experts) {
  return (pairs + kGroupedTileRows - 1) / kGroupedTileRows + num_experts;
}

// args.act is unused here (scratch.act holds the activations); args.fp32_weights must be false, and
// args.ready unset (gate the stream instead).
cudaError_t LaunchExpertFfnGrouped(const ExpertFfnArgs& args, const GroupedFfnScratch& scratch,
                                   cudaStream_t stream);

}  // namespace pinmoe
