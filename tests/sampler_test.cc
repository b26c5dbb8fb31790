#include "coordinator/sampler.h"

#include <cmath>
#include <map>
#include <random>

#include "gtest/gtest.h"

namespace pinmoe {
namespace {

TEST(Sampler, GreedyAtTemperatureZero) {
  Sampler s({.temperature = 0.0f});
  std::vector<float> logits = {0.1f, 3.0f, 2.9f, -1.0f};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.Sample(logits), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
  Sampler s({.temperature = 5.0f, .top_k = 1, .seed = 3});
  std::vector<float> logits = {0.1f, 3.0f, 2.9f, -1.0f};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.Sample(logits), 1);
}

TEST(Sampler, SameSeedSameDraws) {
  std::vector<float> logits = {1.0f, 1.1f, 0.9f, 1.05f, 0.95f};
  Sampler a({.temperature = 1.0f, .seed = 42}), b({.temperature = 1.0f, .seed = 42});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.Sample(logits), b.Sample(logits));
}

TEST(Sampler, FrequenciesFollowSoftmaxAndTopPCuts) {
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler s({.temperature = 1.0f, .seed = 7});
  std::map<int, int> count;
  const int n = 20000;
  for (int i = 0; i < n; ++i) count[s.Sample(logits)]++;
  EXPECT_NEAR(count[0] / double(n), 0.5, 0.02);
  EXPECT_NEAR(count[2] / double(n), 0.2, 0.02);
  Sampler p({.temperature = 1.0f, .top_p = 0.7f, .seed = 7});  // keeps {0.5, 0.3}
  std::map<int, int> cut;
  for (int i = 0; i < n; ++i) cut[p.Sample(logits)]++;
  EXPECT_EQ(cut[2], 0);
  EXPECT_NEAR(cut[0] / double(n), 0.625, 0.02);
}

TEST(TopCandidates, LargestFirstTiesToLowerId) {
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.5f};
  const auto top = TopCandidates(logits, 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].id, 1);
  EXPECT_EQ(top[1].id, 3);
  EXPECT_EQ(top[2].id, 4);
  EXPECT_EQ(top[2].logit, 1.5f);
  EXPECT_EQ(TopCandidates(logits, 9).size(), 5u);
}

// A model that supplies its top candidates (the GPU path) must draw exactly what the full-logits path
// draws, seed for seed.
TEST(Sampler, DrawFromTopCandidatesMatchesDrawFromAllLogits) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> logits(5000);
  for (float& l : logits) l = std::round(normal(rng) * 8.f) / 8.f;  // coarse values: many ties
  for (const SamplingParams& p : {SamplingParams{.temperature = 0.7f, .top_k = 20, .top_p = 0.9f, .seed = 11},
                                  SamplingParams{.temperature = 1.3f, .top_k = 64, .seed = 12},
                                  SamplingParams{.temperature = 0.2f, .top_k = 1, .top_p = 0.5f, .seed = 13}}) {
    Sampler full(p), top(p);
    ASSERT_EQ(top.CandidatesNeeded(), p.top_k);
    for (int i = 0; i < 300; ++i) {
      const auto cands = TopCandidates(logits, top.CandidatesNeeded());
      ASSERT_EQ(full.Sample(logits), top.SampleTop(cands)) << "draw " << i << " top_k " << p.top_k;
    }
  }
  EXPECT_EQ(Sampler({.temperature = 0.7f}).CandidatesNeeded(), 0);  // unbounded: needs every logit
  EXPECT_EQ(Sampler({.temperature = 0.0f, .top_k = 5}).CandidatesNeeded(), 0);  // greedy: the arg-max path
}

TEST(TopLogprobs, AreLogSoftmaxSorted) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f};
  auto top = TopLogprobs(logits, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].id, 1);
  EXPECT_EQ(top[1].id, 2);
  double z = std::log(std::exp(1.0) + std::exp(3.0) + std::exp(2.0));
  EXPECT_NEAR(top[0].logprob, 3.0 - z, 1e-6);
}

}  // namespace
}  // namespace pinmoe
