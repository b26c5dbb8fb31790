#include "coordinator/placement.h"

#include "common/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/device_name.h"
#include "common/status.h"

namespace pinmoe {

PlacementSplit SplitForDevices(const std::vector<std::string>& worker_devices) {
  if (worker_devices.size() < 2) return PlacementSplit::kExperts;
  for (const std::string& d : worker_devices) {
    const absl::StatusOr<int> gpu = ParseDeviceName(d);
    if (!gpu.ok() || *gpu < 0 || d != worker_devices[0]) return PlacementSplit::kExperts;
  }
  return PlacementSplit::kLayers;
}

Placement MakePlacement(const ModelConfig& config, int num_workers, PlacementSplit split) {
  PINMOE_CHECK(num_workers > 0);
  Placement p;
  p.per_worker.resize(num_workers);
  p.bytes_per_worker.assign(num_workers, 0);
  p.owner.assign(config.num_layers, std::vector<int>());
  const int e_total = config.num_experts;
  int moe_layers = 0;
  for (int l = 0; l < config.num_layers; ++l) moe_layers += config.IsMoeLayer(l) ? 1 : 0;
  if (split == PlacementSplit::kLayers && num_workers > moe_layers) split = PlacementSplit::kExperts;
  int moe_index = 0;
  for (int l = 0; l < config.num_layers; ++l) {
    if (!config.IsMoeLayer(l)) {
      p.owner[l].assign(e_total, -1);
      continue;
    }
    if (split == PlacementSplit::kLayers) {
      // MoE layer m goes to worker m * n / M: runs of floor or ceil(M / n) layers.
      const int w = static_cast<int>(static_cast<int64_t>(moe_index++) * num_workers / moe_layers);
      LayerExpertSet set;
      set.layer = l;
      for (int e = 0; e < e_total; ++e) set.experts.push_back(e);
      p.owner[l].assign(e_total, w);
      p.bytes_per_worker[w] += static_cast<uint64_t>(e_total) * config.ExpertBytes();
      p.per_worker[w].push_back(std::move(set));
      continue;
    }
    p.owner[l].resize(e_total);
    const int base = e_total / num_workers, extra = e_total % num_workers;
    int next = 0;
    for (int w = 0; w < num_workers; ++w) {
      // Worker (w - l) mod n ranks among the first `extra` that get one more expert this layer.
      const int rank = ((w - l) % num_workers + num_workers) % num_workers;
      const int count = base + (rank < extra ? 1 : 0);
      LayerExpertSet set;
      set.layer = l;
      for (int i = 0; i < count; ++i) {
        set.experts.push_back(next);
        p.owner[l][next] = w;
        ++next;
      }
      p.bytes_per_worker[w] += static_cast<uint64_t>(count) * config.ExpertBytes();
      if (!set.experts.empty()) p.per_worker[w].push_back(std::move(set));
    }
  }
  return p;
}

std::string FormatPlacement(const ModelConfig& config, const Placement& placement) {
  std::string out = absl::StrFormat("%-8s %-8s %12s  %s\n", "worker", "experts", "bytes",
                                    "layer:experts");
  for (size_t w = 0; w < placement.per_worker.size(); ++w) {
    size_t n = 0;
    std::vector<std::string> parts;
    for (const auto& set : placement.per_worker[w]) {
      n += set.experts.size();
      parts.push_back(StrCat(set.layer, ":", set.experts.front(), "-", set.experts.back()));
    }
    std::string layers = absl::StrJoin(parts, " ");
    if (layers.size() > 100) layers = layers.substr(0, 97) + "...";
    out += absl::StrFormat("%-8d %-8d %12d  %s\n", w, n, placement.bytes_per_worker[w], layers);
  }
  return out;
}

}  // namespace pinmoe
