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
