#include "coordinator/plan.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/str_cat.h"
#include "coordinator/attention_form.h"

namespace pinmoe {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// 1.50 GiB, 12.3 MiB or 512 KiB: small test models stay readable.
std::string Size(uint64_t bytes) {
  if (bytes >= (1ull << 30)) return absl::StrFormat("%.2f GiB", bytes / kGiB);
  if (bytes >= (1ull << 20)) return absl::StrFormat("%.1f MiB", bytes / (1024.0 * 1024.0));
  return absl::StrFormat("%.0f KiB", bytes / 1024.0);
}

}  // namespace

uint64_t DenseWeightBytes(const ModelConfig& c) {
  const uint64_t h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const bool next = c.architecture == Architecture::kQwen3Next;
  uint64_t params = static_cast<uint64_t>(c.vocab_size) * h * (c.tie_word_embeddings ? 1 : 2) + h;
  for (int l = 0; l < c.num_layers; ++l) {
    params += 2 * h;
    if (c.layer_kinds[l] == LayerKind::kFullAttention) {
      params += nh * hd * h * (next ? 2 : 1) + 2 * nkv * hd * h + h * nh * hd + 2 * hd;
    } else {
      const uint64_t kd = static_cast<uint64_t>(c.linear_num_key_heads) * c.linear_key_head_dim;
      const uint64_t vd = static_cast<uint64_t>(c.linear_num_value_heads) * c.linear_value_head_dim;
      const uint64_t nv = c.linear_num_value_heads;
      params += (2 * kd + 2 * vd) * h + 2 * nv * h + (2 * kd + vd) * c.linear_conv_kernel_dim + 2 * nv +
                c.linear_value_head_dim + h * vd;
    }
    if (c.IsMoeLayer(l)) {
      params += static_cast<uint64_t>(c.num_experts) * h;
      if (next) params += 3 * h * c.shared_expert_intermediate_size + h;
    } else {
      params += 3 * h * c.intermediate_size;
    }
  }
  return params * DTypeSize(c.weight_dtype);
}

namespace {

// One sequence's caches, in two parts: the K and V of every attention layer for one position (elements
// of kv_bytes), and the fp32 recurrent and conv states of every DeltaNet layer (whatever the context).
struct SequenceCacheBytes {
  uint64_t per_position = 0;
  uint64_t states = 0;
};

SequenceCacheBytes CacheParts(const ModelConfig& c, KvCacheDtype kv) {
  const uint64_t kv_bytes = static_cast<uint64_t>(KvCacheElementBytes(kv));
  SequenceCacheBytes b;
  for (int l = 0; l < c.num_layers; ++l) {
    if (c.layer_kinds[l] == LayerKind::kFullAttention) {
      b.per_position += 2ull * c.num_kv_heads * c.head_dim * kv_bytes;
    } else {
      const uint64_t kd = static_cast<uint64_t>(c.linear_num_key_heads) * c.linear_key_head_dim;
      const uint64_t vd = static_cast<uint64_t>(c.linear_num_value_heads) * c.linear_value_head_dim;
      b.states += (static_cast<uint64_t>(c.linear_num_value_heads) * c.linear_key_head_dim * c.linear_value_head_dim +
                   (2 * kd + vd) * (c.linear_conv_kernel_dim - 1)) * sizeof(float);
    }
  }
  return b;
}

}  // namespace

uint64_t CacheBytes(const ModelConfig& c, int context, KvCacheDtype kv) {
  const SequenceCacheBytes b = CacheParts(c, kv);
  return b.per_position * static_cast<uint64_t>(context) + b.states;
}

// Bytes of weights one decode step of `batch` sequences reads: every dense matrix except the embedding
// (one row each), the routed experts' three matrices once per distinct expert per MoE layer, and
// lm_head. At batch 1 that is top_k experts; above it the expected number of distinct experts when
// routes spread uniformly, E (1 - (1 - k/E)^batch) (an estimate: real routers are less even, which
// reads fewer). (Qwen3-Next: gated attention doubles q_proj; DeltaNet layers read in_proj_qkvz/ba and
// out_proj instead; every MoE layer adds the shared expert and its gate.)
uint64_t DecodeWeightBytes(const ModelConfig& c, int bytes_per_weight, int batch) {
  const double experts = static_cast<double>(c.num_experts);
  const double distinct =
      batch == 1 ? c.top_k : experts * (1.0 - std::pow(1.0 - static_cast<double>(c.top_k) / experts, batch));
  const uint64_t h = c.hidden_size, hd = c.head_dim;
  const bool next = c.architecture == Architecture::kQwen3Next;
  uint64_t params = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (next && c.layer_kinds[l] == LayerKind::kLinearAttention) {
      const uint64_t key_dim = static_cast<uint64_t>(c.linear_num_key_heads) * c.linear_key_head_dim;
      const uint64_t value_dim = static_cast<uint64_t>(c.linear_num_value_heads) * c.linear_value_head_dim;
      params += h * (2 * key_dim + 2 * value_dim + 2ull * c.linear_num_value_heads) + value_dim * h;
    } else {
      params += h * ((next ? 2ull : 1ull) * c.num_heads + 2ull * c.num_kv_heads) * hd + c.num_heads * hd * h;
    }
    if (c.IsMoeLayer(l)) {
      params += static_cast<uint64_t>(c.num_experts) * h +
                static_cast<uint64_t>(distinct * 3.0 * static_cast<double>(h * c.moe_intermediate_size));
      if (next) params += 3ull * h * c.shared_expert_intermediate_size + h;
    } else {
      params += 3ull * h * c.intermediate_size;
    }
  }
  params += static_cast<uint64_t>(c.vocab_size) * h;
  return params * bytes_per_weight;
}

uint64_t DecodeCacheBytes(const ModelConfig& c, int batch, double context, KvCacheDtype kv) {
  const SequenceCacheBytes b = CacheParts(c, kv);
  // K and V read up to `context`; the states read and written back.
  return static_cast<uint64_t>(
      std::llround(batch * (static_cast<double>(b.per_position) * context + 2.0 * static_cast<double>(b.states))));
}

StepBuffers StepBufferBytes(const ModelConfig& c, uint32_t tokens) {
  const uint64_t t = tokens, h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const uint64_t k = std::max(c.top_k, 1), experts = std::max(c.num_experts, 1);
  StepBuffers b;
  // GpuCausalLm: x, router logits and weights (ids and positions are a few KB), one row of logits.
  uint64_t floats = t * (h + experts + k) + static_cast<uint64_t>(c.vocab_size);
  // The decode attention's split shares and counters (kAttnMaxSplits per head; AttnSplitPartialFloats,
  // dense_kernels.h), where the split forms apply (head_dim a multiple of a warp).
  if (hd % 32 == 0) floats += nh * kAttnMaxSplits * (hd + 2) + nh;
  uint64_t widest_gemm = std::max(h, nh * hd);  // LinearRunner::Reserve's width
  if (c.architecture == Architecture::kQwen3Next) {
    const uint64_t kd = static_cast<uint64_t>(c.linear_num_key_heads) * c.linear_key_head_dim;
    const uint64_t vd = static_cast<uint64_t>(c.linear_num_value_heads) * c.linear_value_head_dim;
    const uint64_t nv = c.linear_num_value_heads;
    uint64_t widest_mlp = std::max<uint64_t>(1, c.shared_expert_intermediate_size);
    for (int l = 0; l < c.num_layers; ++l) {
      if (!c.IsMoeLayer(l)) widest_mlp = std::max<uint64_t>(widest_mlp, c.intermediate_size);
    }
    // qkv (with the query gates), q, attn, the DeltaNet projections, conv output and core, the MLP.
    floats += t * ((2 * nh + 2 * nkv) * hd + 2 * nh * hd + (2 * kd + 2 * vd + 2 * nv) + (2 * kd + vd) + vd +
                   (2 * widest_mlp + 1) + widest_mlp + h);
    widest_gemm = std::max({widest_gemm, vd, widest_mlp});
  } else {
    const uint64_t inter = c.intermediate_size;
    floats += t * ((nh + 2 * nkv) * hd + 2 * nh * hd + 3 * inter);  // qkv, q, attn, gate/up, act
    widest_gemm = std::max(widest_gemm, inter);
  }
  b.model = floats * sizeof(float);
  b.linear = t * widest_gemm * (sizeof(float) + 2);
  b.expert_io = t * (h + k * h) * sizeof(float) + t * k * sizeof(int32_t);
  // fp32 activations for every pair, and for bf16 weights the grouped kernels' bf16 copy.
  const uint64_t pair_floats = t * k * c.moe_intermediate_size;
  b.expert_scratch = pair_floats * sizeof(float) + (DTypeSize(c.weight_dtype) == 2 ? pair_floats * 2 : 0);
  return b;
}

absl::StatusOr<MemoryPlan> PlanMemory(const ModelConfig& c, const std::vector<DeviceBudget>& devices, int context,
                                      KvCacheDtype kv) {
  if (devices.empty()) return absl::InvalidArgumentError("no devices to plan for (--gpus/--gpu-mem/--cpu-mem)");
  MemoryPlan plan;
  plan.dense_bytes = DenseWeightBytes(c);
  plan.kv_cache_dtype =
      devices[0].name == "cpu" ? KvCacheDtype::kF32 : ResolveKvCacheDtype(kv, c);
  plan.cache_bytes = CacheBytes(c, context, plan.kv_cache_dtype);
  const StepBuffers step = StepBufferBytes(c, kGpuStepTokens);
  plan.step_bytes = step.model + step.linear + step.expert_io;
  plan.expert_scratch_bytes = step.expert_scratch;
  const uint64_t per_expert = c.ExpertBytes();
  int moe_layers = 0;
  for (int l = 0; l < c.num_layers; ++l) moe_layers += c.IsMoeLayer(l);
  const uint64_t total_experts = static_cast<uint64_t>(moe_layers) * c.num_experts;
  plan.expert_bytes = total_experts * per_expert;

  // Expert capacity of each device once the first has taken the dense part.
  std::vector<uint64_t> capacity(devices.size());
  uint64_t budget_total = 0, capacity_total = 0;
  for (size_t d = 0; d < devices.size(); ++d) {
    uint64_t reserved = devices[d].name == "cpu" ? 0 : plan.expert_scratch_bytes;
    if (d == 0) reserved += plan.dense_bytes + plan.cache_bytes + plan.step_bytes;
    const uint64_t free = devices[d].bytes > reserved ? devices[d].bytes - reserved : 0;
    capacity[d] = per_expert > 0 ? free / per_expert : 0;
    capacity_total += capacity[d];
    budget_total += devices[d].bytes;
  }
  // System memory is the slow tier: it takes only what the GPUs cannot hold.
  uint64_t gpu_capacity = 0;
  for (size_t d = 0; d < devices.size(); ++d) gpu_capacity += devices[d].name == "cpu" ? 0 : capacity[d];
  for (size_t d = 0; d < devices.size(); ++d) {
    if (devices[d].name != "cpu") continue;
    const uint64_t overflow = total_experts > gpu_capacity ? total_experts - gpu_capacity : 0;
    capacity_total -= capacity[d];
    capacity[d] = std::min(capacity[d], overflow);
    capacity_total += capacity[d];
  }
  const uint64_t needed = plan.dense_bytes + plan.cache_bytes + plan.step_bytes + plan.expert_bytes;
  if (devices[0].bytes < plan.dense_bytes + plan.cache_bytes + plan.step_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s holds the dense part (%s of weights + %s of caches for %d tokens + %s of step buffers) but its "
        "budget is %s; give it more (--gpu-mem) or shorten --context",
        devices[0].name, Size(plan.dense_bytes), Size(plan.cache_bytes), context, Size(plan.step_bytes),
        Size(devices[0].bytes)));
  }
  if (capacity_total < total_experts) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the model needs %s (dense %s, caches %s, step buffers %s, experts %s, and %s of expert scratch on "
        "each GPU) but the budgets give %s: %llu of %llu experts do not fit; add GPUs, raise --gpu-mem, or "
        "put the rest in system memory with --cpu-mem",
        Size(needed), Size(plan.dense_bytes), Size(plan.cache_bytes), Size(plan.step_bytes), Size(plan.expert_bytes),
        Size(plan.expert_scratch_bytes), Size(budget_total),
        static_cast<unsigned long long>(total_experts - capacity_total), static_cast<unsigned long long>(total_experts)));
  }

  // Per layer, split the experts in proportion to capacity; the largest running deficits take the
  // remainders, so totals track the proportions and never pass a device's capacity.
  const size_t n = devices.size();
  Placement& p = plan.placement;
  p.per_worker.assign(n, {});
  p.bytes_per_worker.assign(n, 0);
  p.owner.assign(c.num_layers, std::vector<int>(c.num_experts, -1));
  std::vector<uint64_t> assigned(n, 0);
  int layer_index = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    ++layer_index;
    std::vector<int> count(n, 0);
    int left = c.num_experts;
    // Target cumulative count after this layer.
    std::vector<double> deficit(n);
    for (size_t d = 0; d < n; ++d) {
      const double target = static_cast<double>(layer_index) * c.num_experts * capacity[d] / capacity_total;
      deficit[d] = target - static_cast<double>(assigned[d]);
      const int base = std::max(0, static_cast<int>(std::floor(deficit[d])));
      count[d] = static_cast<int>(std::min<uint64_t>({static_cast<uint64_t>(base), capacity[d] - assigned[d],
                                                      static_cast<uint64_t>(left)}));
      left -= count[d];
    }
    while (left > 0) {
      size_t best = n;
      for (size_t d = 0; d < n; ++d) {
        if (assigned[d] + count[d] >= capacity[d]) continue;
        if (best == n || deficit[d] - count[d] > deficit[best] - count[best]) best = d;
      }
      PINMOE_CHECK(best < n);  // capacity_total >= total_experts
      ++count[best];
      --left;
    }
    int next_expert = 0;
    for (size_t d = 0; d < n; ++d) {
      if (count[d] == 0) continue;
      LayerExpertSet set;
      set.layer = l;
      for (int k = 0; k < count[d]; ++k) {
        set.experts.push_back(next_expert);
        p.owner[l][next_expert++] = static_cast<int>(d);
      }
      assigned[d] += count[d];
      p.bytes_per_worker[d] += static_cast<uint64_t>(count[d]) * per_expert;
      p.per_worker[d].push_back(std::move(set));
    }
  }
  for (size_t d = 0; d < n; ++d) {
    DevicePlan dp;
    dp.name = devices[d].name;
    dp.budget = devices[d].bytes;
    dp.dense_bytes = d == 0 ? plan.dense_bytes + plan.cache_bytes + plan.step_bytes : 0;
    dp.expert_bytes = p.bytes_per_worker[d];
    dp.scratch_bytes = devices[d].name != "cpu" && assigned[d] > 0 ? plan.expert_scratch_bytes : 0;
    dp.experts = static_cast<int>(assigned[d]);
    plan.devices.push_back(dp);
  }
  return plan;
}

std::string FormatMemoryPlan(const ModelConfig& c, const MemoryPlan& plan, int context) {
  std::string out = absl::StrFormat(
      "%s: %d layers, %d experts per MoE layer (top-%d), %s weights; context %d tokens\n"
      "dense %s, caches %s (%s KV), step buffers %s (%u tokens), routed experts %s (%s each) and %s of their "
      "scratch on each GPU\n\n",
      c.architecture_name, c.num_layers, c.num_experts, c.top_k, std::string(DTypeName(c.weight_dtype)), context,
      Size(plan.dense_bytes), Size(plan.cache_bytes), KvCacheDtypeName(plan.kv_cache_dtype), Size(plan.step_bytes),
      kGpuStepTokens, Size(plan.expert_bytes),
      Size(c.ExpertBytes()), Size(plan.expert_scratch_bytes));
  // "dense part": weights, caches and step buffers; "scratch": the experts' step scratch.
  out += absl::StrFormat("%-8s %8s %12s %12s %12s %12s %12s %6s\n", "device", "experts", "experts", "scratch",
                         "dense part", "used", "budget", "used");
  for (const auto& d : plan.devices) {
    const uint64_t used = d.dense_bytes + d.expert_bytes + d.scratch_bytes;
    out += absl::StrFormat("%-8s %8d %12s %12s %12s %12s %12s %5.0f%%\n", d.name, d.experts, Size(d.expert_bytes),
                           Size(d.scratch_bytes), Size(d.dense_bytes), Size(used), Size(d.budget),
                           d.budget > 0 ? 100.0 * used / d.budget : 0.0);
  }
  return out;
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  size_t k = 0;
  while (k < text.size() && (std::isdigit(static_cast<unsigned char>(text[k])) || text[k] == '.')) ++k;
  double value;
  if (k == 0 || !absl::SimpleAtod(text.substr(0, k), &value) || value < 0) {
    return absl::InvalidArgumentError(StrCat("'", text, "' is not a size like 70GiB"));
  }
  static const std::map<std::string, double> kUnits = {
      {"", 1},          {"B", 1},           {"KiB", 1024.0},      {"MiB", 1024.0 * 1024},
      {"GiB", kGiB},    {"TiB", kGiB * 1024}, {"KB", 1e3},         {"MB", 1e6},
      {"GB", 1e9},      {"TB", 1e12},       {"K", 1024.0},        {"M", 1024.0 * 1024},
      {"G", kGiB},      {"T", kGiB * 1024}};
  auto it = kUnits.find(text.substr(k));
  if (it == kUnits.end()) return absl::InvalidArgumentError(StrCat("'", text, "': unknown unit (use GiB, GB, MiB...)"));
  return static_cast<uint64_t>(value * it->second);
}

absl::StatusOr<std::vector<DeviceBudget>> ParseDeviceBudgets(const std::string& gpus, const std::string& gpu_mem,
                                                             const std::string& cpu_mem) {
  std::map<int, uint64_t> mem;
  for (absl::string_view part : absl::StrSplit(gpu_mem, ',', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(part, '=');
    int id;
    if (kv.size() != 2 || !absl::SimpleAtoi(kv[0], &id) || id < 0) {
      return absl::InvalidArgumentError(StrCat("--gpu-mem: '", std::string(part), "' is not GPU=SIZE (e.g. 0=70GiB)"));
    }
    ASSIGN_OR_RETURN(mem[id], ParseByteSize(kv[1]));
  }
  std::vector<int> ids;
  if (!gpus.empty()) {
    for (absl::string_view part : absl::StrSplit(gpus, ',', absl::SkipEmpty())) {
      int id;
      if (!absl::SimpleAtoi(part, &id) || id < 0) return absl::InvalidArgumentError(StrCat("--gpus: '", std::string(part), "' is not a GPU index"));
      ids.push_back(id);
    }
  } else {
    for (const auto& [id, b] : mem) ids.push_back(id);
  }
  std::vector<DeviceBudget> out;
  for (int id : ids) {
    auto it = mem.find(id);
    if (it == mem.end()) {
      return absl::InvalidArgumentError(StrCat("no memory budget for GPU ", id, ": add ", id, "=SIZE to --gpu-mem"));
    }
    out.push_back({StrCat("cuda:", id), it->second});
  }
  for (const auto& [id, b] : mem) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) {
      return absl::InvalidArgumentError(StrCat("--gpu-mem names GPU ", id, ", which --gpus leaves out"));
    }
  }
  if (!cpu_mem.empty()) {
    ASSIGN_OR_RETURN(uint64_t b, ParseByteSize(cpu_mem));
    out.push_back({"cpu", b});
  }
  return out;
}

}  // namespace pinmoe
