#include "coordinator/placement.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace pinmoe {
namespace {

ModelConfig Config(int layers, int experts) {
  ModelConfig c;
  c.num_layers = layers;
  c.num_experts = experts;
  c.top_k = 2;
  c.hidden_size = 16;
  c.moe_intermediate_size = 8;
  c.weight_dtype = DType::kBF16;
  return c;
}

TEST(Placement, EveryExpertHasExactlyOneOwnerAndBytesBalance) {
  for (int workers : {1, 2, 3, 5, 8}) {
    const ModelConfig c = Config(6, 8);
    Placement p = MakePlacement(c, workers);
    std::vector<std::vector<int>> seen(6, std::vector<int>(8, 0));
    for (int w = 0; w < workers; ++w) {
      for (const auto& set : p.per_worker[w]) {
        for (int e : set.experts) {
          seen[set.layer][e]++;
          EXPECT_EQ(p.owner[set.layer][e], w);
        }
      }
    }
    for (const auto& layer : seen) {
      for (int n : layer) EXPECT_EQ(n, 1);
    }
    auto [lo, hi] = std::minmax_element(p.bytes_per_worker.begin(), p.bytes_per_worker.end());
    // Rotating the larger shares keeps workers within a few experts of each other.
    EXPECT_LE(*hi - *lo, c.ExpertBytes() * 6);
    uint64_t total = 0;
    for (auto b : p.bytes_per_worker) total += b;
    EXPECT_EQ(total, c.ExpertBytes() * 6 * 8);
    EXPECT_NE(FormatPlacement(c, p).find("worker"), std::string::npos);
  }
}

TEST(Placement, SkipsDenseLayers) {
  ModelConfig c = Config(3, 4);
  c.mlp_only_layers = {1};
  Placement p = MakePlacement(c, 2);
  for (const auto& w : p.per_worker) {
    for (const auto& set : w) EXPECT_NE(set.layer, 1);
  }
  EXPECT_EQ(p.owner[1][0], -1);
}

}  // namespace
}  // namespace pinmoe
