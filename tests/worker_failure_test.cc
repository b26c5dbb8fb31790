// The coordinator's bounded waits: a worker that is missing, exits at once, crashes mid-run or hangs gives
// an error naming it, within the time limit, and never a hang.
#include <signal.h>

#include <chrono>
#include <cmath>
#include <random>

#include "common/model_config.h"
#include "common/safetensors.h"
#include "coordinator/expert_backend.h"
#include "coordinator/generate.h"
#include "coordinator/placement.h"
#include "coordinator/worker_pool.h"
#include "coordinator/session.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#if PINMOE_WITH_CUDA
#include "worker/gpu/stream_sync.h"
#endif

namespace pinmoe {
namespace {

SessionOptions Options(int workers) {
  SessionOptions so;
  so.model_dir = testing::TestData("qwen3moe-f32");
  so.workers = workers;
  so.worker_binary = testing::WorkerBinary();
  so.register_timeout_ms = 5000;
  so.step_timeout_ms = 2000;
  return so;
}

absl::Status GenerateSome(Session& s) {
  GenerateParams p;
  p.max_new_tokens = 8;
  return Generate(s.model(), {1, 2, 3, 4}, p, nullptr).status();
}

void ExpectMentions(const absl::Status& st, std::initializer_list<std::string> words) {
  ASSERT_FALSE(st.ok());
  for (const auto& w : words) EXPECT_NE(st.message().find(w), std::string_view::npos) << w << " in " << st;
}

// Each worker reads exactly the bytes of the experts the placement plan gives it, and nothing more.
TEST(WorkerPool, WorkersReadOnlyTheirExperts) {
  auto s = Session::Open(Options(3), nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->pool()->worker_weight_bytes(), (*s)->pool()->placement().bytes_per_worker);
  for (uint64_t b : (*s)->pool()->worker_weight_bytes()) EXPECT_GT(b, 0u);
}

// A round of exactly max_tokens_per_step tokens fills the input slice of the shared buffer to its end:
// the routing table after it must not overlap it (it did: the last 4 KB of the input were the routing's
// first). CPU workers' expert outputs equal the in-process experts' on the same inputs.
TEST(WorkerPool, FullRoundMatchesInProcessExperts) {
  const std::string dir = testing::TestData("qwen3moe-f32");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<std::unique_ptr<InProcessExperts>> local = InProcessExperts::Load(*config, **checkpoint);
  ASSERT_TRUE(local.ok()) << local.status();
  WorkerPoolOptions po;
  po.num_workers = 2;
  po.worker_binary = testing::WorkerBinary();
  po.model_dir = dir;
  po.max_tokens_per_step = 64;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool = WorkerPool::Start(*config, po);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const uint32_t h = config->hidden_size, k = config->top_k;
  for (const uint32_t tokens : {64u, 64u + 64u, 64u + 5u}) {  // one full round; two; a full one and a part
    std::mt19937 rng(tokens);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> x(static_cast<size_t>(tokens) * h);
    for (float& v : x) v = normal(rng);
    std::vector<int32_t> routing(static_cast<size_t>(tokens) * k);
    for (size_t i = 0; i < routing.size(); ++i) routing[i] = static_cast<int32_t>((i * 7 + i / k) % config->num_experts);
    std::vector<float> want(routing.size() * h), got(routing.size() * h, -1.f);
    ASSERT_TRUE((*local)->RunMoe(0, x.data(), tokens, routing.data(), want.data()).ok());
    ASSERT_TRUE((*pool)->RunMoe(0, x.data(), tokens, routing.data(), got.data()).ok());
    size_t differ = 0;
    for (size_t i = 0; i < want.size(); ++i) differ += std::fabs(got[i] - want[i]) > 1e-5f * (1 + std::fabs(want[i]));
    EXPECT_EQ(differ, 0u) << tokens << " tokens";
  }
}

// Which layers a worker combines into the model's residual itself (WorkerPool::CombinesGpuLayer): in
// one-token steps, the layers one worker holds whole; never a layer split between workers, a step of more
// tokens, or a dense layer; and never with PINMOE_EXPERT_COMBINE=0 or in a build without CUDA, which has
// no GPU path.
TEST(WorkerPool, WorkersCombineOnlyWholeLayersOfOneTokenSteps) {
  const std::string dir = testing::TestData("qwen3moe-f32");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  for (const PlacementSplit split : {PlacementSplit::kLayers, PlacementSplit::kExperts}) {
    WorkerPoolOptions po;
    po.num_workers = 2;
    po.worker_binary = testing::WorkerBinary();
    po.model_dir = dir;
    po.placement = MakePlacement(*config, 2, split);
    absl::StatusOr<std::unique_ptr<WorkerPool>> pool = WorkerPool::Start(*config, po);
    ASSERT_TRUE(pool.ok()) << pool.status();
    int whole = 0;
    for (int l = 0; l < config->num_layers; ++l) {
      const bool combines = (*pool)->CombinesGpuLayer(l, 1);
      whole += combines;
#if PINMOE_WITH_CUDA
      EXPECT_EQ(combines, split == PlacementSplit::kLayers && config->IsMoeLayer(l) && ExpertsCombine())
          << "layer " << l;
#else
      EXPECT_FALSE(combines) << "layer " << l;
#endif
      EXPECT_FALSE((*pool)->CombinesGpuLayer(l, 2)) << "layer " << l;
    }
    EXPECT_FALSE((*pool)->CombinesGpuLayer(-1, 1));
    EXPECT_FALSE((*pool)->CombinesGpuLayer(config->num_layers, 1));
#if PINMOE_WITH_CUDA
    if (split == PlacementSplit::kLayers && ExpertsCombine()) EXPECT_GT(whole, 0);
#endif
  }
}

TEST(WorkerFailure, MissingBinary) {
  SessionOptions so = Options(2);
  so.worker_binary = "/nonexistent/pinmoe-worker";
  ExpectMentions(Session::Open(so, nullptr).status(), {"/nonexistent/pinmoe-worker", "No such file"});
}

TEST(WorkerFailure, WorkerThatExitsAtOnce) {
  SessionOptions so = Options(2);
  so.worker_binary = "/bin/false";
  auto t0 = std::chrono::steady_clock::now();
  ExpectMentions(Session::Open(so, nullptr).status(), {"worker", "exited with status 1", "registering"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));
  so = Options(2);
  so.extra_worker_args = {"--fault=exit-before-register"};
  ExpectMentions(Session::Open(so, nullptr).status(), {"worker", "exited with status 1"});
}

TEST(WorkerFailure, WorkerThatCrashesMidRunIsNamed) {
  SessionOptions so = Options(3);
  so.extra_worker_args = {"--fault=crash-on-work", "--fault_after=2"};
  auto s = Session::Open(so, nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  ExpectMentions(GenerateSome(**s), {"worker", "pid", "signal 6", "computing layer"});
  // Every later step fails fast with the same error instead of waiting again.
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(GenerateSome(**s).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500));
}

TEST(WorkerFailure, KilledWorkerIsNamed) {
  auto s = Session::Open(Options(2), nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(GenerateSome(**s).ok());
  const pid_t victim = (*s)->pool()->worker_pids()[1];
  ::kill(victim, SIGKILL);
  ExpectMentions(GenerateSome(**s), {"worker 1 (pid " + std::to_string(victim) + ")", "signal 9"});
}

TEST(WorkerFailure, HungWorkerTimesOut) {
  SessionOptions so = Options(2);
  so.extra_worker_args = {"--fault=hang-on-work"};
  auto s = Session::Open(so, nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  auto t0 = std::chrono::steady_clock::now();
  ExpectMentions(GenerateSome(**s), {"no answer within 2.0 s", "computing layer", "may be hung"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(6));
}

TEST(Generate, PromptLongerThanContextIsRefused) {
  SessionOptions so = Options(0);
  so.context = 16;
  auto s = Session::Open(so, nullptr);
  ASSERT_TRUE(s.ok());
  GenerateParams p;
  std::vector<int32_t> prompt(16, 5);
  ExpectMentions(Generate((*s)->model(), prompt, p, nullptr).status(), {"16 tokens", "context is 16"});
  // Generation that reaches the end of the context stops there with finish reason "context".
  prompt.resize(12);
  p.max_new_tokens = 100;
  p.ignore_eos = true;
  auto r = Generate((*s)->model(), prompt, p, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->finish_reason, FinishReason::kContext);
  EXPECT_EQ(r->token_ids.size(), 5u);
}

}  // namespace
}  // namespace pinmoe
