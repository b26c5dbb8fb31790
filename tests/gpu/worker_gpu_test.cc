// Expert workers on the GPU, fed through CUDA IPC: the transformers references still hold (fp32 weights:
// greedy ids equal, logits within 1e-3; bf16 weights: the same bf16 values accumulated in fp32, so the
// same bound holds), results are bit-identical for 1, 2 and 3 workers sharing one GPU, and within fp32
// tolerance of CPU workers and of a mix of CPU and GPU workers. Runs on a machine with a GPU:
// scripts/device-test.
#include <cmath>
#include <cstring>

#include "coordinator/generate.h"
#include "coordinator/session.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

using testing::GreedyRun;

GreedyRun Greedy(const std::string& model, const std::string& device, int workers, const std::vector<int32_t>& prompt,
                 int new_tokens) {
  SessionOptions so;
  so.model_dir = model;
  so.workers = workers;
  so.worker_device = device;
  so.register_timeout_ms = 60000;
  return testing::Greedy(so, prompt, new_tokens);
}

class GpuWorkerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuWorkerTest, MatchesTransformersAndIsIdenticalForAnyWorkerCount) {
  const std::string dir = testing::TestData(GetParam());
  const auto ref = testing::ReadJson(dir + "/reference.json");
  for (const auto& c : ref["cases"]) {
    const std::vector<int32_t> prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> want = c["greedy_ids"].get<std::vector<int32_t>>();
    SCOPED_TRACE(::testing::Message() << GetParam() << " prompt of " << prompt.size() << " tokens");
    GreedyRun one = Greedy(dir, "cuda:0", 1, prompt, static_cast<int>(want.size()));
    ASSERT_EQ(one.ids, want);
    float worst = 0;
    for (size_t step = 0; step < want.size(); ++step) {
      for (const auto& top : c["top_logits"][step]) {
        const float err = std::fabs(one.logits[step][top["id"].get<int>()] - top["logit"].get<float>());
        worst = std::max(worst, err);
        EXPECT_LT(err, 1e-3f) << "step " << step;
      }
    }
    RecordProperty("max_abs_logit_error_" + std::to_string(prompt.size()), std::to_string(worst));
    GreedyRun three = Greedy(dir, "cuda:0", 3, prompt, 8);
    ASSERT_EQ(three.logits.size(), 8u);
    for (size_t s = 0; s < 8; ++s) {
      ASSERT_EQ(0, std::memcmp(three.logits[s].data(), one.logits[s].data(), one.logits[s].size() * 4)) << s;
    }
    // CPU workers alone, and CPU and GPU workers mixed: within fp32 tolerance, same ids.
    for (const char* devices : {"cpu", "cuda:0,cpu,cuda:0"}) {
      GreedyRun other = Greedy(dir, devices, 2, prompt, 8);
      ASSERT_EQ(other.ids, std::vector<int32_t>(one.ids.begin(), one.ids.begin() + 8)) << devices;
      for (size_t s = 0; s < 8; ++s) {
        for (size_t i = 0; i < other.logits[s].size(); ++i) {
          ASSERT_NEAR(other.logits[s][i], one.logits[s][i], 1e-3f) << devices;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GpuWorkerTest,
                         ::testing::Values("qwen3moe-f32", "qwen3moe-bf16", "qwen3next-f32", "qwen3next-bf16"));

}  // namespace
}  // namespace pinmoe
