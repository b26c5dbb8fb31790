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

// Workers sharing one GPU hold whole layers: each MoE layer has one owner holding all its experts, the
// layers come in contiguous runs that differ by at most one layer, and dense layers stay unowned.
TEST(Placement, LayerSplitGivesEachLayerOneOwner) {
  for (int workers : {1, 2, 3, 5}) {
    ModelConfig c = Config(11, 8);
    c.mlp_only_layers = {4};
    Placement p = MakePlacement(c, workers, PlacementSplit::kLayers);
    std::vector<int> layers_of(workers, 0);
    int last_owner = 0;
    for (int l = 0; l < c.num_layers; ++l) {
      if (l == 4) {
        EXPECT_EQ(p.owner[l][0], -1);
        continue;
      }
      const int w = p.owner[l][0];
      for (int e = 0; e < 8; ++e) EXPECT_EQ(p.owner[l][e], w) << "layer " << l;
      EXPECT_GE(w, last_owner) << "runs are contiguous";
      last_owner = w;
      ++layers_of[w];
    }
    auto [lo, hi] = std::minmax_element(layers_of.begin(), layers_of.end());
    EXPECT_LE(*hi - *lo, 1) << workers << " workers";
    EXPECT_GE(*lo, 1);
    uint64_t total = 0;
    for (auto b : p.bytes_per_worker) total += b;
    EXPECT_EQ(total, c.ExpertBytes() * 10 * 8);
  }
  // More workers than MoE layers: every layer's experts split instead, so every worker holds some.
  Placement many = MakePlacement(Config(2, 8), 4, PlacementSplit::kLayers);
  for (const auto& w : many.per_worker) EXPECT_FALSE(w.empty());
}

TEST(Placement, LayersSplitOnlyForWorkersSharingOneGpu) {
  EXPECT_EQ(SplitForDevices({"cuda:0", "cuda:0"}), PlacementSplit::kLayers);
  EXPECT_EQ(SplitForDevices({"cuda:1", "cuda:1", "cuda:1"}), PlacementSplit::kLayers);
  EXPECT_EQ(SplitForDevices({"cuda:0"}), PlacementSplit::kExperts);
  EXPECT_EQ(SplitForDevices({"cuda:0", "cuda:1"}), PlacementSplit::kExperts);
  EXPECT_EQ(SplitForDevices({"cpu", "cpu"}), PlacementSplit::kExperts);
  EXPECT_EQ(SplitForDevices({"cuda:0", "cpu"}), PlacementSplit::kExperts);
}

}  // namespace
}  // namespace pinmoe
