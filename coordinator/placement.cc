#include "coordinator/placement.h"

#include "common/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace pinmoe {

Placement MakePlacement(const ModelConfig& config, int num_workers) {
  PINMOE_CHECK(num_workers > 0);
  Placement p;
  p.per_worker.resize(num_workers);
  p.bytes_per_worker.assign(num_workers, 0);
  p.owner.assign(config.num_layers, std::vector<int>());
  const int e_total = config.num_experts;
  for (int l = 0; l < config.num_layers; ++l) {
    if (!config.IsMoeLayer(l)) {
      p.owner[l].assign(e_total, -1);
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
