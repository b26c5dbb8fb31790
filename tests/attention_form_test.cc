#include "coordinator/attention_form.h"

#include <gtest/gtest.h>

namespace pinmoe {
namespace {

TEST(AttentionForm, ByContextSplitsPerHeadBelowTheThresholdAndGroupsFromIt) {
  for (int context : {1, 2, 127, 1023}) {
    const AttentionForm f = PickAttentionForm(32, -1, context);
    EXPECT_FALSE(f.grouped) << context;
    EXPECT_EQ(f.splits, kAttnShortSplits) << context;
  }
  for (int context : {1024, 1025, 16384, 262144}) {
    const AttentionForm f = PickAttentionForm(32, -1, context);
    EXPECT_TRUE(f.grouped) << context;
    EXPECT_EQ(f.splits, 32) << context;
  }
  // Fewer splits asked for than the short form's: the per-head form keeps to them.
  EXPECT_EQ(PickAttentionForm(4, -1, 100).splits, 4);
  EXPECT_EQ(PickAttentionForm(4, -1, 5000).splits, 4);
}

TEST(AttentionForm, ShortContextsTakeOneSplitPerHeadInLargeBatches) {
  for (int batch : {1, 2, 4, 8, 15}) {
    EXPECT_EQ(PickAttentionForm(32, -1, 200, batch).splits, kAttnShortSplits) << batch;
  }
  for (int batch : {16, 33, 64, 256}) {
    const AttentionForm f = PickAttentionForm(32, -1, 200, batch);
    EXPECT_EQ(f.splits, 1) << batch;
    EXPECT_FALSE(f.grouped) << batch;
  }
  // From the grouped threshold on, and in the forced forms, the batch changes nothing.
  EXPECT_EQ(PickAttentionForm(32, -1, 4096, 64).splits, 32);
  EXPECT_TRUE(PickAttentionForm(32, -1, 4096, 64).grouped);
  EXPECT_EQ(PickAttentionForm(16, 0, 200, 64).splits, 16);
  EXPECT_EQ(PickAttentionForm(16, 1, 200, 64).splits, 16);
  EXPECT_EQ(PickAttentionForm(2, -1, 200, 4).splits, 2);
}

TEST(AttentionForm, ForcedFormsHoldAtEveryContext) {
  for (int context : {1, 1000, 1024, 50000}) {
    EXPECT_TRUE(PickAttentionForm(16, 1, context).grouped) << context;
    EXPECT_EQ(PickAttentionForm(16, 1, context).splits, 16) << context;
    EXPECT_FALSE(PickAttentionForm(16, 0, context).grouped) << context;
    EXPECT_EQ(PickAttentionForm(16, 0, context).splits, 16) << context;
    // No splits: one block per head, whatever the grouped mode.
    for (int mode : {-1, 0, 1}) {
      const AttentionForm f = PickAttentionForm(0, mode, context);
      EXPECT_EQ(f.splits, 0);
      EXPECT_FALSE(f.grouped);
    }
  }
}

}  // namespace
}  // namespace pinmoe
