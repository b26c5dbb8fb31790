#include "coordinator/thinking.h"

#include "gtest/gtest.h"

namespace pinmoe {
namespace {

std::pair<std::string, std::string> SplitPieces(const std::vector<std::string>& pieces, bool start_thinking) {
  ThinkingSplitter s(start_thinking);
  std::string reasoning, answer;
  for (const auto& p : pieces) s.Push(p, &reasoning, &answer);
  s.Flush(&reasoning, &answer);
  return {reasoning, answer};
}

TEST(ThinkingSplitter, SeparatesReasoningFromAnswer) {
  auto [r, a] = SplitPieces({"<think>", "\nLet me see.", "\n", "</think>", "\n\n", "The answer", " is 4."}, false);
  EXPECT_EQ(r, "\nLet me see.\n");
  EXPECT_EQ(a, "The answer is 4.");
}

TEST(ThinkingSplitter, TagsSplitAcrossPiecesAndPromptOpenedThinking) {
  auto [r, a] = SplitPieces({"<th", "ink>abc</th", "ink>xyz"}, false);
  EXPECT_EQ(r, "abc");
  EXPECT_EQ(a, "xyz");
  auto [r2, a2] = SplitPieces({"still thinking", "</think>\n\nok"}, true);
  EXPECT_EQ(r2, "still thinking");
  EXPECT_EQ(a2, "ok");
}

TEST(ThinkingSplitter, NoThinkingAndLateTagsAreAnswer) {
  auto [r, a] = SplitPieces({"Just an answer with a <think> inside."}, false);
  EXPECT_EQ(r, "");
  EXPECT_EQ(a, "Just an answer with a <think> inside.");
  auto [r2, a2] = SplitPieces({"<think>\n\n</think>\n\n", "Hi"}, false);
  EXPECT_EQ(r2, "\n\n");
  EXPECT_EQ(a2, "Hi");
}

TEST(ThinkingSplitter, PromptOpensThinking) {
  EXPECT_TRUE(PromptOpensThinking("<|im_start|>assistant\n<think>\n"));
  EXPECT_FALSE(PromptOpensThinking("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  EXPECT_FALSE(PromptOpensThinking("<|im_start|>assistant\n"));
}

}  // namespace
}  // namespace pinmoe
