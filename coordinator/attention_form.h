// Which form of the decode attention a GPU decode step takes (QkNormRopeCacheArgs::splits and grouped,
// coordinator/gpu/dense_kernels.h). Kept apart from the CUDA code so that the choice is tested on the
// CPU; the numbers behind it are in bench/NOTES.md (per layer on the H200, Qwen3-30B-A3B, bf16 cache:
// 8 splits per head 10.0 µs against 14.5 grouped at 128 positions, 19.4 against 18.6 at 1,024, 301.7
// against 30.0 at 16,384).
#pragma once

#include <algorithm>

namespace pinmoe {

struct AttentionForm {
  int splits = 0;        // 0: one block per head over every position
  bool grouped = false;  // the grouped split form, `splits` the most blocks per column of heads
};

// By default (grouped_mode -1) a step whose longest context is below kAttnGroupedMinPositions takes
// the per-head split form, and from there on the grouped form in up to `max_splits`. The per-head form
// takes kAttnShortSplits splits (never more than max_splits), and one from kAttnOneSplitBatch sequences
// on: a batch multiplies the form's blocks and merges. Measured on the H200 at contexts of 128-192
// (Qwen3-30B-A3B, in-process, tok/s, 8 splits against 1): batch 4 586.2 against 571.0, batch 16 859.6
// against 905.5, batch 64 1,117.4 against 1,218.8 (bench/NOTES.md; batches between 4 and 16 not
// measured, so they keep 8). Such batches (past kGemvMaxTokens) take cuBLAS for their linear layers
// anyway, so the results of batches up to 8 still equal those of one sequence alone, bit for bit.
// grouped_mode 0 / 1 forces the per-head / grouped split form in `max_splits` at any batch (A/B
// measurements, or 0 where the shape has no grouped form); max_splits 0 gives one block per head.
// The most splits of the decode attention's split forms (the GPU model's default cap, and what its
// scratch and the plan's step buffers are sized for).
constexpr int kAttnMaxSplits = 32;
constexpr int kAttnShortSplits = 8;
constexpr int kAttnOneSplitBatch = 16;
constexpr int kAttnGroupedMinPositions = 1024;

inline AttentionForm PickAttentionForm(int max_splits, int grouped_mode, int longest_context, int batch = 1) {
  if (max_splits <= 0) return {};
  if (grouped_mode == 1) return {max_splits, true};
  if (grouped_mode == 0) return {max_splits, false};
  if (longest_context >= kAttnGroupedMinPositions) return {max_splits, true};
  return {std::min(max_splits, batch >= kAttnOneSplitBatch ? 1 : kAttnShortSplits), false};
}

}  // namespace pinmoe
