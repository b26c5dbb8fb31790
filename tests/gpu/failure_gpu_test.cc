// Failures on the GPU-ordered path (dense part on the GPU, GPU workers handing over through counters in
// device memory): a worker that crashes or hangs during a step turns into an error that names it within
// the step timeout, the coordinator's stream is released (the session then closes without hanging), and
// later steps fail fast with the same error. Runs on a machine with a GPU: scripts/device-test.
#include <chrono>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/session.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

using Clock = std::chrono::steady_clock;

SessionOptions Options(const std::vector<std::string>& fault) {
  SessionOptions so;
  so.model_dir = testing::TestData("qwen3moe-bf16");
  so.device = "cuda:0";
  so.workers = 2;
  so.worker_device = "cuda:0";
  so.worker_binary = testing::BinDir() + "/pinmoe-worker";
  so.register_timeout_ms = 60000;
  so.step_timeout_ms = 3000;
  so.context = 256;
  so.extra_worker_args = fault;
  return so;
}

// Prefill then decode until something fails (at most 8 steps).
absl::Status RunSteps(Session& s) {
  std::vector<float> logits;
  std::vector<int32_t> ids = {17, 5, 9};
  RETURN_IF_ERROR(s.model().Forward(ids, &logits));
  for (int i = 0; i < 8; ++i) {
    const int32_t next = 1 + i;
    RETURN_IF_ERROR(s.model().Forward(std::span<const int32_t>(&next, 1), &logits));
  }
  return absl::OkStatus();
}

void ExpectMentions(const absl::Status& st, const std::vector<std::string>& parts) {
  ASSERT_FALSE(st.ok());
  for (const auto& p : parts) EXPECT_NE(st.message().find(p), std::string::npos) << p << " not in: " << st;
}

TEST(GpuFailure, CrashedWorkerIsNamedAndTheStreamIsReleased) {
  const auto t0 = Clock::now();
  {
    auto s = Session::Open(Options({"--fault=crash-on-work", "--fault_after=2"}), nullptr);
    ASSERT_TRUE(s.ok()) << s.status();
    ExpectMentions(RunSteps(**s), {"worker", "pid", "signal 6", "GPU step"});
    const auto t1 = Clock::now();
    EXPECT_FALSE(RunSteps(**s).ok());
    EXPECT_LT(Clock::now() - t1, std::chrono::milliseconds(500));
  }  // the session closes: its stream was released
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(30));
}

TEST(GpuFailure, HungWorkerIsNamedWithinTheStepTimeout) {
  const auto t0 = Clock::now();
  {
    auto s = Session::Open(Options({"--fault=hang-on-work", "--fault_after=1"}), nullptr);
    ASSERT_TRUE(s.ok()) << s.status();
    const auto t1 = Clock::now();
    ExpectMentions(RunSteps(**s), {"did not finish within 3 s", "may be hung", "worker"});
    EXPECT_LT(Clock::now() - t1, std::chrono::seconds(12));
  }
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(40));
}

}  // namespace
}  // namespace pinmoe
