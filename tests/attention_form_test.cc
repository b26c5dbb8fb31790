#include "coordinator/attention_form.h"

#include <gtest/gtest.h>

namespace pinmoe {
namespace {

// Qwen3-30B-A3B's and Qwen3-Next-80B-A3B's attention shapes (query heads, head_dim).
constexpr int kMoeHeads = 32, kMoeDim = 128, kNextHeads = 16, kNextDim = 256;

AttentionForm One(int max_splits, int mode, int context, int heads = kMoeHeads, int dim = kMoeDim) {
  return PickAttentionForm(max_splits, mode, context, 1, heads, dim);
}

TEST(AttentionForm, OneSequenceSplitsPerHeadByContextThenGroups) {
  for (int context : {1, 2, 127, 255}) {
    for (auto [heads, dim] : {std::pair{kMoeHeads, kMoeDim}, std::pair{kNextHeads, kNextDim}}) {
      const AttentionForm f = One(32, -1, context, heads, dim);
      EXPECT_FALSE(f.grouped) << context;
      EXPECT_EQ(f.splits, kAttnShortSplits) << context;
    }
  }
  // 32 heads of 128: 16 splits per head from 256 positions, grouped from 2,048.
  for (int context : {256, 1023, 1024, 2047}) {
    const AttentionForm f = One(32, -1, context);
    EXPECT_FALSE(f.grouped) << context;
    EXPECT_EQ(f.splits, kAttnMidSplits) << context;
  }
  for (int context : {2048, 16384, 262144}) {
    const AttentionForm f = One(32, -1, context);
    EXPECT_TRUE(f.grouped) << context;
    EXPECT_EQ(f.splits, 32) << context;
  }
  // 16 heads of 256: 16 splits from 256, every split allowed from 1,024, grouped from 4,096.
  EXPECT_EQ(One(32, -1, 1023, kNextHeads, kNextDim).splits, kAttnMidSplits);
  for (int context : {1024, 2048, 4095}) {
    const AttentionForm f = One(32, -1, context, kNextHeads, kNextDim);
    EXPECT_FALSE(f.grouped) << context;
    EXPECT_EQ(f.splits, 32) << context;
  }
  EXPECT_TRUE(One(32, -1, 4096, kNextHeads, kNextDim).grouped);
  // Fewer splits asked for than a form's: the per-head form keeps to them.
  EXPECT_EQ(One(4, -1, 100).splits, 4);
  EXPECT_EQ(One(4, -1, 1000).splits, 4);
  EXPECT_EQ(One(12, -1, 3000, kNextHeads, kNextDim).splits, 12);
  EXPECT_EQ(One(4, -1, 5000).splits, 4);
}

TEST(AttentionForm, BatchesKeepTheirOwnThresholds) {
  for (int batch : {2, 4, 8, 15}) {
    EXPECT_EQ(PickAttentionForm(32, -1, 200, batch, kMoeHeads, kMoeDim).splits, kAttnShortSplits) << batch;
    EXPECT_EQ(PickAttentionForm(32, -1, 1000, batch, kNextHeads, kNextDim).splits, kAttnShortSplits) << batch;
    EXPECT_TRUE(PickAttentionForm(32, -1, 1024, batch, kNextHeads, kNextDim).grouped) << batch;
  }
  for (int batch : {16, 33, 64, 256}) {
    const AttentionForm f = PickAttentionForm(32, -1, 200, batch, kMoeHeads, kMoeDim);
    EXPECT_EQ(f.splits, 1) << batch;
    EXPECT_FALSE(f.grouped) << batch;
  }
  EXPECT_EQ(PickAttentionForm(32, -1, 4096, 64, kMoeHeads, kMoeDim).splits, 32);
  EXPECT_TRUE(PickAttentionForm(32, -1, 4096, 64, kMoeHeads, kMoeDim).grouped);
  EXPECT_EQ(PickAttentionForm(2, -1, 200, 4, kMoeHeads, kMoeDim).splits, 2);
}

TEST(AttentionForm, ForcedFormsHoldAtEveryContextAndBatch) {
  for (int context : {1, 1000, 1024, 50000}) {
    for (int batch : {1, 64}) {
      EXPECT_TRUE(PickAttentionForm(16, 1, context, batch, kMoeHeads, kMoeDim).grouped) << context;
      EXPECT_EQ(PickAttentionForm(16, 1, context, batch, kMoeHeads, kMoeDim).splits, 16) << context;
      EXPECT_FALSE(PickAttentionForm(16, 0, context, batch, kNextHeads, kNextDim).grouped) << context;
      EXPECT_EQ(PickAttentionForm(16, 0, context, batch, kNextHeads, kNextDim).splits, 16) << context;
      // No splits: one block per head, whatever the grouped mode.
      for (int mode : {-1, 0, 1}) {
        const AttentionForm f = PickAttentionForm(0, mode, context, batch, kMoeHeads, kMoeDim);
        EXPECT_EQ(f.splits, 0);
        EXPECT_FALSE(f.grouped);
      }
    }
  }
}

}  // namespace
}  // namespace pinmoe
