#include "coordinator/gpu/bench.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_format.h"
#include "common/device_name.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/str_cat.h"
#include "coordinator/gpu/gpu_experts.h"
#include "coordinator/gpu/gpu_qwen3_moe.h"
#include "coordinator/gpu/gpu_qwen3_next.h"
#include "coordinator/hand_over_table.h"
#include "coordinator/plan.h"
#include "coordinator/sampler.h"
#include "coordinator/worker_pool.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {
namespace {

// Published shapes (the models' config.json on the hub), written as a config.json the workers can read.
absl::StatusOr<std::string> PresetConfig(const std::string& name, int layers) {
  if (name == "qwen3-30b-a3b") {
    return absl::StrFormat(
        R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
 "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": %d, "num_attention_heads": 32,
 "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
 "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
 "tie_word_embeddings": false, "decoder_sparse_step": 1, "mlp_only_layers": [], "torch_dtype": "bfloat16",
 "hidden_act": "silu"})",
        layers > 0 ? layers : 48);
  }
  if (name == "qwen3-next-80b-a3b") {
    return absl::StrFormat(
        R"({"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "hidden_size": 2048,
 "intermediate_size": 5120, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
 "num_hidden_layers": %d, "full_attention_interval": 4, "num_attention_heads": 16, "num_key_value_heads": 2,
 "head_dim": 256, "partial_rotary_factor": 0.25, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
 "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "num_experts": 512,
 "num_experts_per_tok": 10, "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
 "vocab_size": 151936, "max_position_embeddings": 262144, "rope_theta": 10000000.0, "rms_norm_eps": 1e-06,
 "tie_word_embeddings": false, "torch_dtype": "bfloat16", "hidden_act": "silu"})",
        layers > 0 ? layers : 48);
  }
  return absl::InvalidArgumentError(
      StrCat("--synthetic ", name, ": known shapes are qwen3-30b-a3b and qwen3-next-80b-a3b"));
}

double PeakBandwidth(int device, std::string* name) {
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, device);
  *name = p.name;
  int clock_khz = 0, bus_bits = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
  return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;  // double data rate
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// The decode attention's form, for the header line.
std::string DescribeAttention(const GpuCausalLm& model) {
  const int splits = model.attention_splits();
  if (splits == 0) return ", attention one block per head";
  switch (model.attention_grouped_mode()) {
    case 0: return StrCat(", attention in ", splits, " split(s) per head");
    case 1: return StrCat(", attention grouped in up to ", splits, " split(s)");
    default:
      return StrCat(", attention by context (one sequence: per head in ", kAttnShortSplits, " splits, ",
                    kAttnMidSplits, " from ", kAttnMidPositions, " positions",
                    model.config().num_heads <= kAttnWideMaxHeads
                        ? StrCat(", ", splits, " from ", kAttnWidePositions)
                        : std::string(),
                    ", grouped in up to ", splits, " from ", AttnGroupedMinPositions(model.config().head_dim),
                    "; batches: per head in ", kAttnShortSplits, " splits, 1 from batch ", kAttnOneSplitBatch,
                    ", grouped from ", kAttnGroupedMinPositions, ")");
  }
}

}  // namespace

absl::Status RunBench(const BenchOptions& o, std::ostream& out, std::ostream& log) {
  if (o.batch < 1 || o.batch > 256) return absl::InvalidArgumentError("--batch: 1 to 256 sequences");
  if (o.batch > 1 && o.sample_top_k > 0) {
    return absl::InvalidArgumentError("--sample-top-k measures batch 1; batched decode is greedy");
  }
  if (o.prompt_tokens < 1 || o.decode_tokens < 1) return absl::InvalidArgumentError("token counts must be positive");
  if (o.depth < 0) return absl::InvalidArgumentError("--depth must be >= 0");
  ASSIGN_OR_RETURN(const int device, ParseDeviceName(o.device));
  if (device < 0) return absl::InvalidArgumentError("bench measures the GPU path: --device cuda:N");
  // The model directory: the checkpoint, or a temporary one holding only the preset's config.json.
  std::string dir = o.model_dir;
  std::string temp_dir;
  uint64_t seed = 0;
  if (!o.synthetic.empty()) {
    ASSIGN_OR_RETURN(std::string json, PresetConfig(o.synthetic, o.layers));
    std::string templ = (std::filesystem::temp_directory_path() / "pinmoe-bench-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) return absl::InternalError("cannot create a temporary directory");
    temp_dir = dir = templ;
    std::ofstream(dir + "/config.json") << json;
    seed = o.seed == 0 ? 1 : o.seed;
  } else if (dir.empty()) {
    return absl::InvalidArgumentError("bench needs --model DIR or --synthetic SHAPE");
  }
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      if (!dir.empty()) std::filesystem::remove_all(dir);
    }
  } cleanup{temp_dir};
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  std::unique_ptr<Checkpoint> checkpoint;
  if (seed == 0) {
    ASSIGN_OR_RETURN(checkpoint, Checkpoint::Open(dir));
  }

  GpuModelOptions mo;
  mo.device = device;
  mo.max_context = std::max(o.prompt_tokens, o.depth + o.decode_tokens + 1) + 8;
  mo.synthetic_seed = seed;
  mo.graphs = o.graphs;
  mo.max_step_tokens = static_cast<uint32_t>(std::max(std::min(o.prompt_tokens, 2048), o.batch));
  mo.max_batch = o.batch;
  mo.kv_cache_dtype = o.kv_cache_dtype;
  if (o.delta_form == "recurrent") {
    mo.delta_form = DeltaForm::kRecurrent;
  } else if (o.delta_form == "chunked") {
    mo.delta_form = DeltaForm::kChunked;
  } else if (o.delta_form != "auto") {
    return absl::InvalidArgumentError(StrCat("--delta-form ", o.delta_form, ": auto, recurrent or chunked"));
  }
  auto start = std::chrono::steady_clock::now();
  std::unique_ptr<GpuCausalLm> model;
  if (config.architecture == Architecture::kQwen3Next) {
    ASSIGN_OR_RETURN(model, GpuQwen3Next::Load(config, checkpoint.get(), mo));
  } else {
    ASSIGN_OR_RETURN(model, GpuQwen3Moe::Load(config, checkpoint.get(), mo));
  }
  std::unique_ptr<WorkerPool> pool;
  std::unique_ptr<GpuExperts> experts;
  if (o.workers == 0) {
    ASSIGN_OR_RETURN(experts, DeviceExperts::Load(config, checkpoint.get(), device, mo.max_step_tokens, seed));
  } else {
    WorkerPoolOptions po;
    po.num_workers = o.workers;
    po.worker_binary = o.worker_binary;
    po.model_dir = dir;
    po.worker_device = o.worker_device;
    po.buffer_device = device;
    po.max_tokens_per_step = mo.max_step_tokens;
    po.synthetic_seed = seed;
    po.timeline = o.timeline;
    ASSIGN_OR_RETURN(pool, WorkerPool::Start(config, po));
    ASSIGN_OR_RETURN(experts, PooledGpuExperts::Create(pool.get()));
  }
  model->set_experts(experts.get());
  log << absl::StrFormat("pinmoe bench: loaded in %.1f s (%s, %d layers, %s weights)\n", Seconds(start),
                         o.synthetic.empty() ? o.model_dir : o.synthetic + " synthetic", config.num_layers,
                         seed != 0 ? "bf16" : "checkpoint");

  std::mt19937 rng(1234);
  std::vector<int32_t> prompt(o.prompt_tokens);
  for (auto& id : prompt) id = static_cast<int32_t>(rng() % config.vocab_size);
  // Warm-up: every kernel and cuBLAS path once.
  RETURN_IF_ERROR(model->ForwardGreedy(std::span<const int32_t>(prompt.data(), std::min<size_t>(prompt.size(), 64))).status());
  for (int i = 0; i < 4; ++i) RETURN_IF_ERROR(model->ForwardGreedy(std::span<const int32_t>(prompt.data(), 1)).status());
  std::vector<int32_t> batch_ids(o.batch), batch_next;
  if (o.batch > 1) {
    for (int b = 0; b < o.batch; ++b) batch_ids[b] = prompt[b % prompt.size()];
    for (int i = 0; i < 2; ++i) RETURN_IF_ERROR(model->DecodeBatch(batch_ids, &batch_next, nullptr));
  }
  // Before the decode steps: an empty cache, or every sequence holding the same `depth` tokens of
  // context (prefilled in steps of at most max_step_tokens; not timed).
  std::vector<int32_t> context(o.depth);
  for (auto& id : context) id = static_cast<int32_t>(rng() % config.vocab_size);
  auto start_decode = [&]() -> absl::Status {
    model->Reset();
    if (context.empty()) return absl::OkStatus();
    for (int b = 0; b < o.batch; ++b) {
      RETURN_IF_ERROR(model->SelectSequence(b));
      for (size_t at = 0; at < context.size(); at += mo.max_step_tokens) {
        const size_t n = std::min<size_t>(mo.max_step_tokens, context.size() - at);
        RETURN_IF_ERROR(model->ForwardGreedy(std::span<const int32_t>(context.data() + at, n)).status());
      }
    }
    return model->SelectSequence(0);
  };
  // One decode step from `next` (batch 1) or batch_ids (every sequence one token per step).
  int32_t next = prompt[0];
  const SamplingParams sampling{.temperature = 0.7f, .top_k = o.sample_top_k, .seed = 7};
  Sampler sampler(sampling);
  std::vector<Candidate> top;
  auto decode_step = [&]() -> absl::Status {
    if (o.batch > 1) {
      RETURN_IF_ERROR(model->DecodeBatch(batch_ids, &batch_next, nullptr));
      batch_ids = batch_next;
    } else if (o.sample_top_k > 0) {
      RETURN_IF_ERROR(model->ForwardTopK(std::span<const int32_t>(&next, 1), o.sample_top_k, &top));
      next = sampler.SampleTop(top);
    } else {
      ASSIGN_OR_RETURN(next, model->ForwardGreedy(std::span<const int32_t>(&next, 1)));
    }
    return absl::OkStatus();
  };
  double best_prefill = 1e30, best_decode = 1e30;
  for (int r = 0; r < o.repetitions; ++r) {
    model->Reset();
    start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(model->ForwardGreedy(prompt).status());
    best_prefill = std::min(best_prefill, Seconds(start));
    RETURN_IF_ERROR(start_decode());
    next = prompt[0];
    sampler = Sampler(sampling);  // every repetition draws the same tokens
    start = std::chrono::steady_clock::now();
    for (int i = 0; i < o.decode_tokens; ++i) RETURN_IF_ERROR(decode_step());
    RETURN_IF_ERROR(model->Settle());  // with workers, the step sent ahead of the last: a request's end pays it
    best_decode = std::min(best_decode, Seconds(start) / o.decode_tokens);
  }
  std::string card;
  const double peak = PeakBandwidth(device, &card);
  const int bytes_per_weight = seed != 0 ? 2 : (config.weight_dtype == DType::kF32 ? 4 : 2);
  const uint64_t weights = DecodeWeightBytes(config, bytes_per_weight, o.batch);
  // The timed steps attend depth + 1 to depth + decode_tokens positions: their mean, for the caches.
  const KvCacheDtype kv = model->kv_cache_dtype();
  const uint64_t caches = DecodeCacheBytes(config, o.batch, o.depth + (o.decode_tokens + 1) / 2.0, kv);
  const uint64_t bytes = weights + caches;
  const double roofline = o.batch * peak / static_cast<double>(bytes);
  out << absl::StrFormat("card: %s, peak memory bandwidth %.0f GB/s (memory clock x bus width)\n", card, peak / 1e9);
  out << absl::StrFormat("model: %s, %d layers%s, %s KV cache, decode %s%s%s, experts %s\n",
                         o.synthetic.empty() ? o.model_dir : o.synthetic, config.num_layers,
                         o.delta_form == "auto" ? std::string() : StrCat(", DeltaNet ", o.delta_form),
                         KvCacheDtypeName(kv),
                         o.graphs ? "as CUDA graphs" : "launching each kernel",
                         DescribeAttention(*model),
                         o.sample_top_k > 0 ? StrCat(", sampling from the top ", o.sample_top_k) : std::string(),
                         o.workers == 0 ? std::string("in-process")
                                        : StrCat(o.workers, " worker process(es) on ", o.worker_device));
  out << absl::StrFormat("prefill %5d tokens: %9.1f tokens/s  (%.1f ms)\n", o.prompt_tokens,
                         o.prompt_tokens / best_prefill, best_prefill * 1e3);
  // The GB/s and the roofline count the weights and the caches and states the steps move.
  const std::string at_depth = o.depth > 0 ? StrCat(" at depth ", o.depth) : std::string();
  if (o.batch == 1) {
    out << absl::StrFormat(
        "decode  %5d tokens%s: %9.1f tokens/s  (%.3f ms/token; %.2f GB of weights + %.2f GB of caches per token = "
        "%.0f GB/s, %.1f%% of peak; roofline %.0f tokens/s)\n",
        o.decode_tokens, at_depth, 1.0 / best_decode, best_decode * 1e3, weights / 1e9, caches / 1e9,
        bytes / best_decode / 1e9, 100.0 * bytes / best_decode / peak, roofline);
  } else {
    out << absl::StrFormat(
        "decode  %5d tokens x %d sequences%s: %9.1f tokens/s (%.1f per sequence; %.3f ms/step; ~%.2f GB of "
        "weights if routes spread uniformly + %.2f GB of caches per step = %.0f GB/s, %.1f%% of peak; roofline "
        "~%.0f tokens/s)\n",
        o.decode_tokens, o.batch, at_depth, o.batch / best_decode, 1.0 / best_decode, best_decode * 1e3,
        weights / 1e9, caches / 1e9, bytes / best_decode / 1e9, 100.0 * bytes / best_decode / peak, roofline);
  }
  if (o.timeline && pool != nullptr) {
    RETURN_IF_ERROR(start_decode());
    next = prompt[0];
    sampler = Sampler(sampling);
    std::vector<WorkerPool::LayerTimes> steps;
    std::vector<double> wall_us;
    std::vector<HostStepTimes> host;
    const auto origin = std::chrono::steady_clock::now();
    auto us = [&](std::chrono::steady_clock::time_point t) {
      return std::chrono::duration<double, std::micro>(t - origin).count();
    };
    for (int i = 0; i < o.decode_tokens; ++i) {
      const auto start = std::chrono::steady_clock::now();
      RETURN_IF_ERROR(decode_step());
      wall_us.push_back(Seconds(start) * 1e6);
      const WorkerPool::HostTimes h = pool->last_host_times();
      host.push_back({us(model->last_launch()), us(h.event_seen), us(h.returned)});
      // This read-back falls between the step's return and the next launch: the table's host turnaround
      // row includes it, so it overstates the timed loop's gap.
      ASSIGN_OR_RETURN(std::vector<WorkerPool::LayerTimes> times, pool->GpuStepTimeline());
      steps.insert(steps.end(), times.begin(), times.end());
    }
    RETURN_IF_ERROR(model->Settle());
    out << HandOverTable(steps, std::move(wall_us), host);
  }
  return absl::OkStatus();
}

}  // namespace pinmoe
