// Which form of the decode attention a GPU decode step takes (QkNormRopeCacheArgs::splits and grouped,
// coordinator/gpu/dense_kernels.h). Kept apart from the CUDA code so that the choice is tested on the
// CPU; the numbers behind it are in bench/NOTES.md (per layer on the H200: 8 splits per head 11 µs
// against 19 grouped at 128 positions, 88 against 30 at 4,096).
#pragma once

#include <algorithm>

namespace pinmoe {

struct AttentionForm {
  int splits = 0;        // 0: one block per head over every position
  bool grouped = false;  // the grouped split form, `splits` the most blocks per column of heads
};

// By default (grouped_mode -1) a step whose longest context is below kAttnGroupedMinPositions takes
// the per-head split form in up to kAttnShortSplits splits, and from there on the grouped form in up to
// `max_splits`. grouped_mode 0 / 1 forces the per-head / grouped split form in `max_splits` (A/B
// measurements, or 0 where the shape has no grouped form); max_splits 0 gives one block per head.
constexpr int kAttnShortSplits = 8;
constexpr int kAttnGroupedMinPositions = 1024;

inline AttentionForm PickAttentionForm(int max_splits, int grouped_mode, int longest_context) {
  if (max_splits <= 0) return {};
  if (grouped_mode == 1) return {max_splits, true};
  if (grouped_mode == 0) return {max_splits, false};
  if (longest_context >= kAttnGroupedMinPositions) return {max_splits, true};
  return {std::min(max_splits, kAttnShortSplits), false};
}

}  // namespace pinmoe
