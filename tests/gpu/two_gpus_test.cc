// Experts on another GPU than the coordinator's: the workers open the coordinator's buffer through CUDA
// IPC with peer access, and every hand-over crosses GPUs (counters fenced at system scope, waits polling
// a peer's memory). The results must be those of the same model with its experts in-process, bit for
// bit (the same kernels on the same kind of GPU see the same bytes), whichever GPU the coordinator is on
// and however the experts are spread: one worker on the other GPU, one worker on each GPU, the placement
// that --gpus 0,1 --gpu-mem makes. Needs a machine with two GPUs (scripts/device-test-gpus); with fewer
// it fails, saying so.
#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "coordinator/plan.h"
#include "coordinator/session.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

void ExpectSameLogits(const testing::GreedyRun& got, const testing::GreedyRun& want, const std::string& what) {
  ASSERT_EQ(got.logits.size(), want.logits.size()) << what;
  EXPECT_EQ(got.ids, want.ids) << what;
  for (size_t s = 0; s < want.logits.size(); ++s) {
    ASSERT_EQ(got.logits[s].size(), want.logits[s].size()) << what;
    ASSERT_EQ(0, std::memcmp(got.logits[s].data(), want.logits[s].data(), want.logits[s].size() * sizeof(float)))
        << what << ", step " << s;
  }
}

class TwoGpus : public ::testing::TestWithParam<std::string> {};

TEST_P(TwoGpus, ExpertsOnTheOtherGpuGiveTheInProcessResults) {
  int gpus = 0;
  ASSERT_EQ(cudaGetDeviceCount(&gpus), cudaSuccess);
  ASSERT_GE(gpus, 2) << "this test needs two GPUs; this machine has " << gpus;
  const std::string dir = testing::TestData(GetParam());
  const auto ref = testing::ReadJson(dir + "/reference.json");
  const auto& c = ref["cases"][0];
  const std::vector<int32_t> prompt = c["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> want = c["greedy_ids"].get<std::vector<int32_t>>();
  const int steps = static_cast<int>(want.size());

  auto run = [&](const char* device, int workers, const char* worker_device) {
    return testing::Greedy(testing::GpuSession(dir, device, workers, worker_device), prompt, steps);
  };
  const testing::GreedyRun in_process = run("cuda:0", 0, "cpu");
  if (GetParam().find("f32") != std::string::npos) {
    ASSERT_EQ(in_process.ids, want);
  }
  ASSERT_EQ(in_process.logits.size(), want.size());

  ExpectSameLogits(run("cuda:1", 0, "cpu"), in_process, "coordinator on cuda:1, experts in-process");
  ExpectSameLogits(run("cuda:0", 1, "cuda:1"), in_process, "coordinator on cuda:0, 1 worker on cuda:1");
  ExpectSameLogits(run("cuda:1", 1, "cuda:0"), in_process, "coordinator on cuda:1, 1 worker on cuda:0");
  ExpectSameLogits(run("cuda:0", 2, "cuda:1,cuda:0"), in_process,
                   "coordinator on cuda:0, workers on cuda:1 and cuda:0");
  SessionOptions planned = testing::GpuSession(dir, "cuda:0", 0, "cpu");
  auto budgets = ParseDeviceBudgets("0,1", "0=8GiB,1=8GiB", "");
  ASSERT_TRUE(budgets.ok()) << budgets.status();
  planned.devices = *budgets;
  ExpectSameLogits(testing::Greedy(planned, prompt, steps), in_process, "--gpus 0,1 --gpu-mem 0=8GiB,1=8GiB");
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, TwoGpus,
                         ::testing::Values("qwen3moe-f32", "qwen3moe-bf16", "qwen3next-f32", "qwen3next-bf16"));

}  // namespace
}  // namespace pinmoe
