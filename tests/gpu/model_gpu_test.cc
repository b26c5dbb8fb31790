// The coordinator's GPU dense path (Qwen3-MoE and Qwen3-Next) against transformers:
//  - fp32 weights: greedy ids equal and logits within 1e-3 of the fp32 reference, with the experts
//    in-process on the GPU, in 1 or 3 GPU worker processes (bit-identical to in-process: the same
//    kernels see the same bytes) and in a CPU+GPU worker mix (through the host; within 1e-3).
//  - bf16 weights: against transformers run in bf16 on the GPU, step by step under teacher forcing
//    (transformers' own bf16 greedy run leaves its fp32 run on these small random models, so a
//    free-running comparison would test noise). The tolerances are measured, not guessed: the reference
//    carries transformers' fp32 logits on the same tokens, so D = max |bf16 - fp32| over a prompt's steps
//    and top-5 ids is how far bf16 arithmetic alone moves logits in that context (0.2-1.5 here). We are
//    another bf16 computation of the same fp32 truth (fp32 activations in decode, bf16-rounded ones in
//    prefill GEMMs and attention), so we require (1) |ours - fp32| <= D + 0.125: never further from the
//    truth than transformers' bf16 gets on that prompt (0.125 is the bf16 step of a logit between 16
//    and 32), hence (2) |ours - bf16 reference| <= 2 D + 0.125, and (3) top-1 equal to the forced token
//    at every step whose reference margin exceeds that step's own noise (2 D_step + 0.125); steps with
//    smaller margins are ties under bf16 and are counted, not judged.
//  - batched decode: B sequences decoded together equal the same sequences decoded one at a time.
// Runs on a machine with a GPU: scripts/device-test.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <tuple>

#include "common/model_config.h"
#include "common/safetensors.h"
#include "coordinator/generate.h"
#include "coordinator/gpu/gpu_experts.h"
#include "coordinator/gpu/gpu_qwen3_moe.h"
#include "coordinator/gpu/gpu_qwen3_next.h"
#include "coordinator/plan.h"
#include "coordinator/session.h"
#include "coordinator/worker_pool.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

SessionOptions Options(const std::string& dir, int workers, const std::string& worker_device) {
  return testing::GpuSession(dir, "cuda:0", workers, worker_device);
}

// Logits after the prompt and after each forced token.
std::vector<std::vector<float>> TeacherForced(const SessionOptions& so, const std::vector<int32_t>& prompt,
                                              const std::vector<int32_t>& forced) {
  std::ostringstream log;
  auto session = Session::Open(so, &log);
  EXPECT_TRUE(session.ok()) << session.status() << "\n" << log.str();
  if (!session.ok()) return {};
  std::vector<std::vector<float>> out;
  std::vector<float> logits;
  absl::Status st = (*session)->model().Forward(prompt, &logits);
  EXPECT_TRUE(st.ok()) << st;
  out.push_back(logits);
  for (size_t i = 0; i + 1 < forced.size() && st.ok(); ++i) {
    st = (*session)->model().Forward(std::span<const int32_t>(&forced[i], 1), &logits);
    EXPECT_TRUE(st.ok()) << st;
    out.push_back(logits);
  }
  return out;
}

int ArgMax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

class GpuModelFp32 : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuModelFp32, MatchesTransformersInProcessAndInWorkers) {
  const std::string dir = testing::TestData(GetParam());
  const auto ref = testing::ReadJson(dir + "/reference.json");
  for (const auto& c : ref["cases"]) {
    const std::vector<int32_t> prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> want = c["greedy_ids"].get<std::vector<int32_t>>();
    SCOPED_TRACE(::testing::Message() << "prompt of " << prompt.size() << " tokens");
    testing::GreedyRun in_process = testing::Greedy(Options(dir, 0, "cpu"), prompt, static_cast<int>(want.size()));
    ASSERT_EQ(in_process.ids, want);
    float worst = 0;
    for (size_t step = 0; step < want.size(); ++step) {
      for (const auto& top : c["top_logits"][step]) {
        const float err = std::fabs(in_process.logits[step][top["id"].get<int>()] - top["logit"].get<float>());
        worst = std::max(worst, err);
        EXPECT_LT(err, 1e-3f) << "step " << step;
      }
    }
    std::printf("%s, GPU dense + GPU experts, prompt %zu: max |logit error| %.2e\n", GetParam().c_str(),
                prompt.size(), worst);
    {  // greedy without logits: the arg-max is taken on the device, one id comes back per step
      auto session = Session::Open(Options(dir, 2, "cuda:0"), nullptr);
      ASSERT_TRUE(session.ok()) << session.status();
      GenerateParams p;
      p.max_new_tokens = static_cast<int>(want.size());
      p.ignore_eos = true;
      auto r = Generate((*session)->model(), prompt, p, nullptr, /*keep_logits=*/false);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->token_ids, want);
      // Sampling bounded by top-k: the candidates are selected on the device; the draws must be those
      // of the host sampler over the full logits (keep_logits forces that path), seed for seed.
      for (const SamplingParams& sp : {SamplingParams{.temperature = 0.8f, .top_k = 20, .top_p = 0.9f, .seed = 3},
                                       SamplingParams{.temperature = 1.5f, .top_k = 64, .seed = 4}}) {
        GenerateParams q = p;
        q.sampling = sp;
        q.max_new_tokens = 12;
        auto device = Generate((*session)->model(), prompt, q, nullptr, /*keep_logits=*/false);
        auto host = Generate((*session)->model(), prompt, q, nullptr, /*keep_logits=*/true);
        ASSERT_TRUE(device.ok() && host.ok()) << device.status() << host.status();
        EXPECT_EQ(device->token_ids, host->token_ids) << "top_k " << sp.top_k;
      }
    }
    for (int workers : {1, 3}) {
      testing::GreedyRun pooled = testing::Greedy(Options(dir, workers, "cuda:0"), prompt, 8);
      ASSERT_EQ(pooled.logits.size(), 8u);
      for (size_t s = 0; s < 8; ++s) {
        ASSERT_EQ(0, std::memcmp(pooled.logits[s].data(), in_process.logits[s].data(), in_process.logits[s].size() * 4))
            << workers << " GPU workers, step " << s;
      }
    }
    testing::GreedyRun mixed = testing::Greedy(Options(dir, 2, "cuda:0,cpu"), prompt, 8);
    ASSERT_EQ(mixed.ids, std::vector<int32_t>(want.begin(), want.begin() + 8));
    for (size_t s = 0; s < 8; ++s) {
      for (size_t i = 0; i < mixed.logits[s].size(); ++i) ASSERT_NEAR(mixed.logits[s][i], in_process.logits[s][i], 1e-3f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GpuModelFp32, ::testing::Values("qwen3moe-f32", "qwen3next-f32"));

// With the KV cache in bf16 (the default for bf16 weights, as transformers keeps it) and in f32.
class GpuModelBf16 : public ::testing::TestWithParam<std::tuple<std::string, KvCacheDtype>> {};

TEST_P(GpuModelBf16, MatchesTransformersBf16UnderTeacherForcing) {
  const std::string dir = testing::TestData(std::get<0>(GetParam()));
  const KvCacheDtype kv = std::get<1>(GetParam());
  auto options = [&](int workers, const std::string& worker_device) {
    SessionOptions so = Options(dir, workers, worker_device);
    so.kv_cache_dtype = kv;
    return so;
  };
  const auto ref = testing::ReadJson(dir + "/reference_bf16_cuda.json");
  int compared = 0, top1_checked = 0, ties = 0, steps = 0;
  float worst_vs_fp32_ratio = 0, worst_vs_bf16_ratio = 0;
  for (const auto& c : ref["cases"]) {
    const std::vector<int32_t> prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> forced = c["greedy_ids"].get<std::vector<int32_t>>();
    SCOPED_TRACE(::testing::Message() << "prompt of " << prompt.size() << " tokens");
    const auto logits = TeacherForced(options(0, "cpu"), prompt, forced);
    ASSERT_EQ(logits.size(), forced.size());
    const auto pooled = TeacherForced(options(2, "cuda:0"), prompt, forced);
    ASSERT_EQ(pooled.size(), logits.size());
    float noise = 0;  // D for this prompt
    for (const auto& top : c["top_logits"]) {
      for (const auto& t : top) noise = std::max(noise, std::fabs(t["logit"].get<float>() - t["fp32_logit"].get<float>()));
    }
    const float tol_fp32 = noise + 0.125f, tol_bf16 = 2 * noise + 0.125f;
    for (size_t s = 0; s < logits.size(); ++s, ++steps) {
      ASSERT_EQ(0, std::memcmp(pooled[s].data(), logits[s].data(), logits[s].size() * 4)) << "workers differ at " << s;
      const auto& top = c["top_logits"][s];
      float step_noise = 0;
      for (const auto& t : top) {
        const float ours = logits[s][t["id"].get<int>()];
        const float vs_fp32 = std::fabs(ours - t["fp32_logit"].get<float>());
        const float vs_bf16 = std::fabs(ours - t["logit"].get<float>());
        worst_vs_fp32_ratio = std::max(worst_vs_fp32_ratio, vs_fp32 / tol_fp32);
        worst_vs_bf16_ratio = std::max(worst_vs_bf16_ratio, vs_bf16 / tol_bf16);
        EXPECT_LE(vs_fp32, tol_fp32) << "step " << s << " id " << t["id"] << " (D " << noise << ")";
        EXPECT_LE(vs_bf16, tol_bf16) << "step " << s << " id " << t["id"] << " (D " << noise << ")";
        step_noise = std::max(step_noise, std::fabs(t["logit"].get<float>() - t["fp32_logit"].get<float>()));
        ++compared;
      }
      const float margin = top[0]["logit"].get<float>() - top[1]["logit"].get<float>();
      if (margin > 2 * step_noise + 0.125f) {
        EXPECT_EQ(ArgMax(logits[s]), forced[s]) << "step " << s << " margin " << margin;
        ++top1_checked;
      } else {
        ++ties;
      }
    }
  }
  std::printf("%s, %s KV cache, vs transformers (teacher forced, %d logits): worst distance to fp32 %.2f of D + "
              "0.125, to the bf16 reference %.2f of 2D + 0.125; top-1 equal at all %d decisive steps of %d (%d ties "
              "under bf16 noise)\n", std::get<0>(GetParam()).c_str(), KvCacheDtypeName(kv), compared,
              worst_vs_fp32_ratio, worst_vs_bf16_ratio, top1_checked, steps, ties);
  EXPECT_GT(top1_checked, steps / 4);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GpuModelBf16,
                         ::testing::Combine(::testing::Values("qwen3moe-bf16", "qwen3next-bf16"),
                                            ::testing::Values(KvCacheDtype::kAuto, KvCacheDtype::kF32)));

// A GPU model holding several sequences, with its experts in-process or in GPU worker processes.
struct BatchedModel {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<GpuCausalLm> model;
  std::unique_ptr<WorkerPool> pool;
  std::unique_ptr<GpuExperts> experts;
};

absl::StatusOr<BatchedModel> LoadBatched(const std::string& dir, int max_batch, int workers, bool timeline = false) {
  BatchedModel m;
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(m.checkpoint, Checkpoint::Open(dir));
  GpuModelOptions mo;
  mo.max_context = 512;
  mo.max_batch = max_batch;
  if (config.architecture == Architecture::kQwen3Next) {
    ASSIGN_OR_RETURN(m.model, GpuQwen3Next::Load(config, m.checkpoint.get(), mo));
  } else {
    ASSIGN_OR_RETURN(m.model, GpuQwen3Moe::Load(config, m.checkpoint.get(), mo));
  }
  if (workers == 0) {
    ASSIGN_OR_RETURN(m.experts, DeviceExperts::Load(config, m.checkpoint.get(), 0, mo.max_step_tokens, 0));
  } else {
    WorkerPoolOptions po;
    po.num_workers = workers;
    po.worker_binary = testing::BinDir() + "/pinmoe-worker";
    po.model_dir = dir;
    po.worker_device = "cuda:0";
    po.buffer_device = 0;
    po.register_timeout_ms = 60000;
    po.max_tokens_per_step = mo.max_step_tokens;
    po.timeline = timeline;
    ASSIGN_OR_RETURN(m.pool, WorkerPool::Start(config, po));
    ASSIGN_OR_RETURN(m.experts, PooledGpuExperts::Create(m.pool.get()));
  }
  m.model->set_experts(m.experts.get());
  return m;
}

// Batched decode (one token of each of B sequences per forward pass) against the same sequences decoded
// one at a time by the same model: prompts of different lengths (the longest prefilled by the chunked
// DeltaNet), so every sequence sits at its own position with its own caches and states. Every kernel of
// a decode step computes each token's row with the same arithmetic at any batch up to the GEMV's 8
// tokens, so the logits are expected to be bit-identical; the test allows 1e-5 and reports which.
class GpuModelBatch : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(GpuModelBatch, BatchedDecodeEqualsOneSequenceAtATime) {
  const auto& [name, workers] = GetParam();
  const std::string dir = testing::TestData(name);
  constexpr int kBatch = 4, kSteps = 6;
  auto loaded = LoadBatched(dir, kBatch, workers);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  GpuCausalLm& model = *loaded->model;
  const int vocab = model.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {1, 9, 45, 140}) {
    std::vector<int32_t> p(len);
    for (int i = 0; i < len; ++i) p[i] = (37 * i + 11 * len + 5) % vocab;
    prompts.push_back(p);
  }
  // One sequence at a time: prompt, then greedy decode steps, keeping each step's logits.
  std::vector<std::vector<std::vector<float>>> alone(kBatch);
  std::vector<std::vector<int32_t>> alone_ids(kBatch);
  model.Reset();
  for (int b = 0; b < kBatch; ++b) {
    ASSERT_TRUE(model.SelectSequence(b).ok());
    std::vector<float> logits;
    ASSERT_TRUE(model.Forward(prompts[b], &logits).ok());
    int32_t next = ArgMax(logits);
    for (int s = 0; s < kSteps; ++s) {
      alone_ids[b].push_back(next);
      ASSERT_TRUE(model.Forward(std::span<const int32_t>(&next, 1), &logits).ok());
      alone[b].push_back(logits);
      next = ArgMax(logits);
    }
    alone_ids[b].push_back(next);
  }
  // The same sequences decoded together.
  model.Reset();
  std::vector<int32_t> ids(kBatch);
  for (int b = 0; b < kBatch; ++b) {
    ASSERT_TRUE(model.SelectSequence(b).ok());
    auto first = model.ForwardGreedy(prompts[b]);
    ASSERT_TRUE(first.ok()) << first.status();
    ids[b] = *first;
    ASSERT_EQ(ids[b], alone_ids[b][0]) << "sequence " << b;
  }
  float worst = 0;
  for (int s = 0; s < kSteps; ++s) {
    std::vector<int32_t> next;
    std::vector<float> logits;
    const absl::Status st = model.DecodeBatch(ids, &next, &logits);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(logits.size(), static_cast<size_t>(kBatch) * vocab);
    for (int b = 0; b < kBatch; ++b) {
      EXPECT_EQ(model.sequence_position(b), static_cast<int>(prompts[b].size()) + s + 1);
      for (int i = 0; i < vocab; ++i) {
        const float want = alone[b][s][i], got = logits[static_cast<size_t>(b) * vocab + i];
        worst = std::max(worst, std::fabs(got - want));
        ASSERT_NEAR(got, want, 1e-5f * (1 + std::fabs(want))) << "sequence " << b << " step " << s << " id " << i;
      }
      EXPECT_EQ(next[b], alone_ids[b][s + 1]) << "sequence " << b << " step " << s;
    }
    ids = next;
  }
  // Greedy batches without logits (their own graph: arg-max rows on the device) give the same ids.
  model.Reset();
  for (int b = 0; b < kBatch; ++b) {
    ASSERT_TRUE(model.SelectSequence(b).ok());
    auto first = model.ForwardGreedy(prompts[b]);
    ASSERT_TRUE(first.ok()) << first.status();
    ids[b] = *first;
  }
  for (int s = 0; s < kSteps; ++s) {
    std::vector<int32_t> next;
    ASSERT_TRUE(model.DecodeBatch(ids, &next, nullptr).ok());
    for (int b = 0; b < kBatch; ++b) EXPECT_EQ(next[b], alone_ids[b][s + 1]) << "greedy, sequence " << b << " step " << s;
    ids = next;
  }
  std::printf("%s, %d worker(s): batched decode of %d sequences, max |logit difference| to one at a time %.2e%s\n",
              name.c_str(), workers, kBatch, worst, worst == 0 ? " (bit-identical)" : "");
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GpuModelBatch,
                         ::testing::Combine(::testing::Values("qwen3moe-f32", "qwen3next-f32", "qwen3moe-bf16",
                                                              "qwen3next-bf16"),
                                            ::testing::Values(0, 2)));

// The hand-over timeline (pinmoe bench --timeline): with 2 workers every MoE layer of a decode step has
// its tick and its done counters stamped by the kernels that store them, in order (tick, then done, then
// the next layer's tick); the gates' stamps are there only in their kernel form (under MPS: these tests
// run without it) and then fall in between.
TEST(GpuModelTimeline, HandOversAreStampedInOrder) {
  auto loaded = LoadBatched(testing::TestData("qwen3moe-f32"), 1, 2, /*timeline=*/true);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  GpuCausalLm& model = *loaded->model;
  model.Reset();
  std::vector<float> logits;
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  ASSERT_TRUE(model.Forward(prompt, &logits).ok());
  int32_t next = ArgMax(logits);
  for (int step = 0; step < 4; ++step) {
    ASSERT_TRUE(model.Forward(std::span<const int32_t>(&next, 1), &logits).ok());
    next = ArgMax(logits);
    auto times = loaded->pool->GpuStepTimeline();
    ASSERT_TRUE(times.ok()) << times.status();
    ASSERT_EQ(times->size(), static_cast<size_t>(model.config().num_layers));
    for (size_t i = 0; i < times->size(); ++i) {
      const WorkerPool::LayerTimes& t = (*times)[i];
      EXPECT_GT(t.tick_stored, 0u) << "layer " << t.layer;
      EXPECT_GE(t.done_stored, t.tick_stored) << "layer " << t.layer;  // >=: the clock's resolution
      if (t.workers_open != 0) {
        EXPECT_GE(t.workers_open, t.tick_stored);
        EXPECT_LE(t.workers_open, t.done_stored);
      }
      if (t.coordinator_open != 0) {
        EXPECT_GE(t.coordinator_open, t.done_stored);
      }
      if (i + 1 < times->size()) {
        EXPECT_GE((*times)[i + 1].tick_stored, t.done_stored) << "layer " << t.layer;
      }
    }
  }
}

// A decode step sends the workers the next step ahead (GpuExperts::SendAhead), which they enqueue
// behind the current one. Whatever comes instead must not see it: a step of other tokens withdraws it
// first (its workers then compute into slots nobody reads), as do Settle (the end of a generation) and
// the pool's shutdown, which would otherwise find its workers waiting for ticks and kill them after 2 s.
// The same calls with the experts in-process give the logits, bit for bit.
struct AheadRun {
  std::vector<std::vector<float>> logits;
  std::vector<uint32_t> ahead;  // the tokens of the step sent ahead after each call (workers only)
  double close_seconds = 0;
};

AheadRun RunWithStepsAhead(const std::string& dir, int workers) {
  AheadRun r;
  auto loaded = std::make_unique<absl::StatusOr<BatchedModel>>(LoadBatched(dir, 1, workers));
  EXPECT_TRUE(loaded->ok()) << loaded->status();
  if (!loaded->ok()) return r;
  GpuCausalLm& model = *(*loaded)->model;
  WorkerPool* pool = (*loaded)->pool.get();
  std::vector<float> logits;
  auto step = [&](const std::vector<int32_t>& ids) {
    const absl::Status st = model.Forward(ids, &logits);
    EXPECT_TRUE(st.ok()) << st;
    r.logits.push_back(logits);
    if (pool != nullptr) r.ahead.push_back(pool->tokens_ahead());
  };
  model.Reset();
  step({3, 1, 4, 1, 5});
  for (int i = 0; i < 3; ++i) step({ArgMax(logits)});
  step({9, 2, 6});  // three tokens: the one-token step sent ahead is withdrawn first
  step({ArgMax(logits)});
  const absl::Status settled = model.Settle();
  EXPECT_TRUE(settled.ok()) << settled;
  if (pool != nullptr) EXPECT_EQ(pool->tokens_ahead(), 0u);
  step({ArgMax(logits)});
  model.Reset();  // a new sequence: its prompt withdraws the step sent ahead of it
  step({8, 8, 2});
  step({ArgMax(logits)});
  const auto t0 = std::chrono::steady_clock::now();
  loaded.reset();  // with a step sent ahead
  r.close_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

TEST(GpuModelStepAhead, WithdrawnStepsLeaveNoTrace) {
  const std::string dir = testing::TestData("qwen3moe-f32");
  // Off by default (an A/B form): on for the models this test loads.
  const char* before = std::getenv("PINMOE_STEP_AHEAD");
  const std::string saved = before != nullptr ? before : "";
  ::setenv("PINMOE_STEP_AHEAD", "1", 1);
  const AheadRun in_process = RunWithStepsAhead(dir, 0);
  const AheadRun pooled = RunWithStepsAhead(dir, 2);
  if (before != nullptr) {
    ::setenv("PINMOE_STEP_AHEAD", saved.c_str(), 1);
  } else {
    ::unsetenv("PINMOE_STEP_AHEAD");
  }
  ASSERT_EQ(in_process.logits.size(), 9u);
  ASSERT_EQ(pooled.logits.size(), in_process.logits.size());
  for (size_t s = 0; s < pooled.logits.size(); ++s) {
    ASSERT_EQ(0, std::memcmp(pooled.logits[s].data(), in_process.logits[s].data(), pooled.logits[s].size() * 4))
        << "call " << s;
  }
  // A step is sent ahead after every one-token step and after none of the prompts.
  EXPECT_EQ(pooled.ahead, (std::vector<uint32_t>{0, 1, 1, 1, 0, 1, 1, 0, 1}));
  EXPECT_LT(pooled.close_seconds, 1.5) << "the workers did not leave by themselves";
  std::printf("2 workers, steps sent ahead and withdrawn: logits bit-identical to in-process; the pool "
              "closed in %.3f s\n", pooled.close_seconds);
}

}  // namespace
}  // namespace pinmoe

namespace pinmoe {
namespace {

// `pinmoe plan` counts, for the device holding the dense part, its weights, caches and step buffers from
// config.json alone (coordinator/plan.h). What the GPU models allocate must agree: full-size layer
// shapes of both architectures (synthetic weights, a few layers) and both KV cache dtypes (auto is
// bf16 for these bf16 configs), within the handful of small buffers (ids, positions, norms held in
// fp32) the plan leaves out.
TEST(GpuModelMemory, DeviceBytesMatchThePlan) {
  for (const auto& [next, kv] : {std::pair{false, KvCacheDtype::kAuto}, std::pair{true, KvCacheDtype::kAuto},
                                std::pair{false, KvCacheDtype::kF32}, std::pair{true, KvCacheDtype::kF32}}) {
    nlohmann::json j = {{"vocab_size", 151936}, {"hidden_size", 2048}, {"rope_theta", 1000000.0},
                        {"norm_topk_prob", true}, {"torch_dtype", "bfloat16"}, {"max_position_embeddings", 40960}};
    if (next) {
      j.update({{"architectures", {"Qwen3NextForCausalLM"}}, {"num_hidden_layers", 4}, {"num_attention_heads", 16},
                {"num_key_value_heads", 2}, {"head_dim", 256}, {"num_experts", 512}, {"num_experts_per_tok", 10},
                {"moe_intermediate_size", 512}, {"shared_expert_intermediate_size", 512},
                {"intermediate_size", 5120}, {"full_attention_interval", 4}, {"partial_rotary_factor", 0.25},
                {"linear_num_key_heads", 16}, {"linear_num_value_heads", 32}, {"linear_key_head_dim", 128},
                {"linear_value_head_dim", 128}, {"linear_conv_kernel_dim", 4}});
    } else {
      j.update({{"architectures", {"Qwen3MoeForCausalLM"}}, {"num_hidden_layers", 2}, {"num_attention_heads", 32},
                {"num_key_value_heads", 4}, {"head_dim", 128}, {"num_experts", 128}, {"num_experts_per_tok", 8},
                {"moe_intermediate_size", 768}, {"intermediate_size", 6144}});
    }
    auto config = ParseModelConfig(j.dump(), next ? "qwen3-next shape" : "qwen3-30b shape");
    ASSERT_TRUE(config.ok()) << config.status();
    GpuModelOptions mo;
    mo.max_context = 1024;
    mo.synthetic_seed = 1;
    mo.kv_cache_dtype = kv;
    uint64_t device_bytes = 0;
    if (next) {
      auto model = GpuQwen3Next::Load(*config, nullptr, mo);
      ASSERT_TRUE(model.ok()) << model.status();
      device_bytes = (*model)->weight_bytes();
    } else {
      auto model = GpuQwen3Moe::Load(*config, nullptr, mo);
      ASSERT_TRUE(model.ok()) << model.status();
      device_bytes = (*model)->weight_bytes();
    }
    const uint64_t planned =
        DenseWeightBytes(*config) + CacheBytes(*config, 1024, ResolveKvCacheDtype(kv, *config)) +
        StepBufferBytes(*config, mo.max_step_tokens).model;
    const double slack = 1.0 * (1 << 20) + 0.005 * static_cast<double>(planned);
    EXPECT_NEAR(static_cast<double>(device_bytes), static_cast<double>(planned), slack)
        << config->architecture_name << ", " << KvCacheDtypeName(kv) << " KV cache: the GPU model holds "
        << device_bytes << " bytes, the plan counts "
        << planned;
  }
}

}  // namespace
}  // namespace pinmoe
