// Which form of the decode attention a GPU decode step takes (QkNormRopeCacheArgs::splits and grouped,
// coordinator/gpu/dense_kernels.h). Kept apart from the CUDA code so that the choice is tested on the
// CPU; the numbers behind it are in bench/NOTES.md and below.
#pragma once

#include <algorithm>

namespace pinmoe {

struct AttentionForm {
  int splits = 0;        // 0: one block per head over every position
  bool grouped = false;  // the grouped split form, `splits` the most blocks per column of heads
};

// By default (grouped_mode -1) the form follows the step's longest context and the shape:
//  - one sequence (batch 1): the per-head split form in kAttnShortSplits splits below
//    kAttnMidPositions, then in kAttnMidSplits, and, for query heads <= kAttnWideMaxHeads, in
//    max_splits from kAttnWidePositions (never more than max_splits); the grouped form from
//    AttnGroupedMinPositions(head_dim) on. Measured on the H200, one layer (gpu_attention_bench, bf16
//    cache, µs; bench/NOTES.md, 2026-12-03): Qwen3-30B-A3B (32 heads, head_dim 128) 8 / 16 splits per
//    head 8.8 / 9.0 at 128 positions, 10.5 / 9.8 at 256, 19.1 / 14.4 at 1,024 (grouped 18.0), 18.8 at
//    1,792 (grouped 20.1), 20.3 at 2,048 (grouped 16.8); Qwen3-Next-80B-A3B (16 heads, head_dim 256) 16 /
//    32 splits 13.1 / 13.8 at 512, 16.2 / 15.6 at 1,024, 20.7 (32) at 2,560 and 23.4 at 3,072 (grouped 24.8,
//    26.4), 26.7 at 4,096 (grouped 25.0). Decode at a depth of 1,024 (Qwen3-30B-A3B, in-process): 310.8
//    tok/s per head in 16 against 294.4 grouped.
//  - batches: as measured before the above, which was measured at batch 1 only: grouped from
//    kAttnGroupedMinPositions, below it the per-head form in kAttnShortSplits splits, and in one from
//    kAttnOneSplitBatch sequences on: a batch multiplies the form's blocks and merges. Measured on the
//    H200 at contexts of 128-192 (Qwen3-30B-A3B, in-process, tok/s, 8 splits against 1): batch 4 586.2
//    against 571.0, batch 16 859.6 against 905.5, batch 64 1,117.4 against 1,218.8 (batches between 4
//    and 16 not measured, so they keep 8). Such batches (past kGemvMaxTokens) take cuBLAS for their
//    linear layers anyway, so the results of batches up to 8 still equal those of one sequence alone,
//    bit for bit.
// grouped_mode 0 / 1 forces the per-head / grouped split form in `max_splits` at any batch (A/B
// measurements, or 0 where the shape has no grouped form); max_splits 0 gives one block per head.
// The most splits of the decode attention's split forms (the GPU model's default cap, and what its
// scratch and the plan's step buffers are sized for).
constexpr int kAttnMaxSplits = 32;
constexpr int kAttnShortSplits = 8;
constexpr int kAttnMidSplits = 16;
constexpr int kAttnMidPositions = 256;
constexpr int kAttnWidePositions = 1024;
constexpr int kAttnWideMaxHeads = 16;
constexpr int kAttnOneSplitBatch = 16;
constexpr int kAttnGroupedMinPositions = 1024;  // batches

// Where one sequence's step turns to the grouped form: later for wide heads, whose grouped kernel runs
// on the CUDA cores (the tensor-core one takes head_dim 128).
inline int AttnGroupedMinPositions(int head_dim) { return head_dim <= 128 ? 2048 : 4096; }

inline AttentionForm PickAttentionForm(int max_splits, int grouped_mode, int longest_context, int batch, int heads,
                                       int head_dim) {
  if (max_splits <= 0) return {};
  if (grouped_mode == 1) return {max_splits, true};
  if (grouped_mode == 0) return {max_splits, false};
  if (batch > 1) {
    if (longest_context >= kAttnGroupedMinPositions) return {max_splits, true};
    return {std::min(max_splits, batch >= kAttnOneSplitBatch ? 1 : kAttnShortSplits), false};
  }
  if (longest_context >= AttnGroupedMinPositions(head_dim)) return {max_splits, true};
  if (longest_context < kAttnMidPositions) return {std::min(max_splits, kAttnShortSplits), false};
  if (longest_context >= kAttnWidePositions && heads <= kAttnWideMaxHeads) return {max_splits, false};
  return {std::min(max_splits, kAttnMidSplits), false};
}

}  // namespace pinmoe
