// pinmoe against transformers 5.17 (fp32, CPU): the references in tests/data/*/reference.json were made by
// scripts/make_references.py on small random-weight Qwen3-MoE checkpoints in the hub's format. Greedy ids
// must match for every generated position and the top-5 logits within 1e-4, with the experts in 1 and 3
// worker processes (and in-process); and the logits must be bit-identical whatever the worker count.
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "coordinator/generate.h"
#include "coordinator/session.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

using testing::ReadJson;
using testing::TestData;

constexpr float kLogitTolerance = 1e-4f;

using testing::GreedyRun;

GreedyRun Greedy(const std::string& model_dir, int workers, const std::vector<int32_t>& prompt, int new_tokens) {
  SessionOptions so;
  so.model_dir = model_dir;
  so.workers = workers;
  return testing::Greedy(so, prompt, new_tokens);
}

class ReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTest, GreedyIdsAndLogitsMatchTransformers) {
  const std::string dir = TestData(GetParam());
  const auto ref = ReadJson(dir + "/reference.json");
  ASSERT_GE(ref["cases"].size(), 4u);
  for (int workers : {1, 3}) {
    for (const auto& c : ref["cases"]) {
      const std::vector<int32_t> prompt = c["prompt_ids"].get<std::vector<int32_t>>();
      const std::vector<int32_t> want = c["greedy_ids"].get<std::vector<int32_t>>();
      ASSERT_GE(want.size(), 24u);
      SCOPED_TRACE(::testing::Message() << GetParam() << " workers=" << workers << " prompt of "
                                        << prompt.size() << " tokens");
      GreedyRun run = Greedy(dir, workers, prompt, static_cast<int>(want.size()));
      ASSERT_EQ(run.ids, want);
      ASSERT_EQ(run.logits.size(), want.size());
      float worst = 0;
      for (size_t step = 0; step < want.size(); ++step) {
        for (const auto& top : c["top_logits"][step]) {
          const float expected = top["logit"].get<float>();
          const float got = run.logits[step][top["id"].get<int>()];
          worst = std::max(worst, std::fabs(got - expected));
          EXPECT_NEAR(got, expected, kLogitTolerance) << "step " << step << " id " << top["id"];
        }
      }
      RecordProperty("max_abs_logit_error", std::to_string(worst));
    }
  }
}

TEST_P(ReferenceTest, LogitsAreBitIdenticalForAnyWorkerCount) {
  const std::string dir = TestData(GetParam());
  const auto ref = ReadJson(dir + "/reference.json");
  // The long prompt exercises the prefill path; the short one decode.
  for (size_t ci : {size_t{1}, ref["cases"].size() - 1}) {
    const std::vector<int32_t> prompt = ref["cases"][ci]["prompt_ids"].get<std::vector<int32_t>>();
    GreedyRun base = Greedy(dir, /*workers=*/1, prompt, 12);
    ASSERT_EQ(base.logits.size(), 12u);
    for (int workers : {0, 2, 3}) {
      GreedyRun other = Greedy(dir, workers, prompt, 12);
      ASSERT_EQ(other.ids, base.ids) << "workers=" << workers;
      for (size_t s = 0; s < base.logits.size(); ++s) {
        ASSERT_EQ(0, std::memcmp(base.logits[s].data(), other.logits[s].data(),
                                 base.logits[s].size() * sizeof(float)))
            << "workers=" << workers << " step " << s;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, ReferenceTest,
                         ::testing::Values("qwen3moe-f32", "qwen3moe-bf16", "qwen3next-f32",
                                           "qwen3next-bf16"));

// Decoding after a prefill must equal feeding the same tokens one at a time (for Qwen3-Next this checks
// that the conv and recurrent states carry across calls).
class PrefillDecodeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefillDecodeTest, PrefillThenDecodeEqualsTokenByToken) {
  SessionOptions so;
  so.model_dir = TestData(GetParam());
  so.workers = 0;
  auto session = Session::Open(so, nullptr);
  ASSERT_TRUE(session.ok()) << session.status();
  CausalLm& m = (*session)->model();
  const std::vector<int32_t> ids = {5, 99, 123, 7, 300, 42, 8, 1000};
  std::vector<float> all_at_once, one_by_one;
  m.Reset();
  ASSERT_TRUE(m.Forward(ids, &all_at_once).ok());
  m.Reset();
  for (int32_t id : ids) ASSERT_TRUE(m.Forward(std::span<const int32_t>(&id, 1), &one_by_one).ok());
  ASSERT_EQ(all_at_once.size(), one_by_one.size());
  for (size_t i = 0; i < all_at_once.size(); ++i) EXPECT_NEAR(all_at_once[i], one_by_one[i], 1e-4f);
  // Prefill in two pieces, as a chat turn appended to a cached history does.
  std::vector<float> split;
  m.Reset();
  ASSERT_TRUE(m.Forward(std::span<const int32_t>(ids).first(5), &split).ok());
  ASSERT_TRUE(m.Forward(std::span<const int32_t>(ids).subspan(5), &split).ok());
  for (size_t i = 0; i < split.size(); ++i) EXPECT_NEAR(split[i], one_by_one[i], 1e-4f);
}

INSTANTIATE_TEST_SUITE_P(Models, PrefillDecodeTest, ::testing::Values("qwen3moe-f32", "qwen3next-f32"));

}  // namespace
}  // namespace pinmoe
