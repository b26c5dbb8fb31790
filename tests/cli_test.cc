// The pinmoe program as a user meets it: help, the JSON output, the demo model, and one clear error line
// with a non-zero exit (never a crash or a hang) for each kind of bad input.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_split.h"
#include "common/files.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

using testing::RunCommandLine;

std::string Pinmoe() { return testing::BinDir() + "/pinmoe"; }

std::string BrokenCopy(const std::string& name) {
  const std::string dir = testing::MakeTempDir(name);
  testing::CopyDir(testing::TestData("qwen3moe-f32"), dir);
  return dir;
}

void PatchFile(const std::string& path, const std::string& from, const std::string& to) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << path;
  s.replace(at, from.size(), to);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << s;
}

// Runs pinmoe on a model directory and expects exactly one error line containing every word.
void ExpectCleanFailure(const std::string& args, std::initializer_list<std::string> words) {
  // A chat run takes its prompt from the template; the others get a fixed prompt.
  const std::string prompt = args.find("--chat") == std::string::npos ? " --prompt-ids 1,2,3" : "";
  auto r = RunCommandLine(Pinmoe() + " run --max-new-tokens 4" + prompt + " " + args, 60);
  EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
  std::vector<std::string> errors;
  for (absl::string_view line : absl::StrSplit(r.err, '\n')) {
    if (absl::StartsWith(line, "pinmoe: error:")) errors.emplace_back(line);
  }
  ASSERT_EQ(errors.size(), 1u) << r.err;
  for (const auto& w : words) EXPECT_NE(errors[0].find(w), std::string::npos) << w << " not in " << errors[0];
  EXPECT_EQ(r.err.find("internal error"), std::string::npos) << r.err;
}

TEST(Cli, HelpExplainsUsage) {
  auto r = RunCommandLine(Pinmoe() + " --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("pinmoe run"), std::string::npos);
  EXPECT_NE(r.out.find("--top-logprobs"), std::string::npos);
  auto bad = RunCommandLine(Pinmoe() + " frobnicate");
  EXPECT_EQ(bad.exit_code, 2);
}

TEST(Cli, JsonOutputWithTopLogprobsMatchesReference) {
  const auto ref = testing::ReadJson(testing::TestData("qwen3moe-f32/reference.json"))["cases"][1];
  std::string ids;
  for (int id : ref["prompt_ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  auto r = RunCommandLine(Pinmoe() + " run --model " + testing::TestData("qwen3moe-f32") +
                          " --prompt-ids " + ids + " --max-new-tokens 6 --temperature 0 --ignore-eos" +
                          " --workers 2 --json --top-logprobs 3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_token_ids"], ref["prompt_ids"]);
  std::vector<int> want(ref["greedy_ids"].begin(), ref["greedy_ids"].begin() + 6);
  EXPECT_EQ(j["token_ids"].get<std::vector<int>>(), want);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_GT(j["timing"]["prefill_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["timing"]["decode_tokens_per_s"].get<double>(), 0);
  ASSERT_EQ(j["top_logprobs"].size(), 6u);
  for (size_t pos = 0; pos < 6; ++pos) {
    const auto& list = j["top_logprobs"][pos];
    ASSERT_EQ(list.size(), 3u);
    EXPECT_EQ(list[0]["id"], want[pos]);
    EXPECT_LE(list[0]["logprob"].get<double>(), 0.0);
    EXPECT_GE(list[0]["logprob"].get<double>(), list[1]["logprob"].get<double>());
    EXPECT_EQ(list[1]["id"], ref["top_logits"][pos][1]["id"]);
  }
}

TEST(Cli, StopsAtEndOfSequenceFromGenerationConfig) {
  const std::string dir = BrokenCopy("eos");
  const auto ref = testing::ReadJson(testing::TestData("qwen3moe-f32/reference.json"))["cases"][0];
  const int third = ref["greedy_ids"][2];
  ASSERT_TRUE(WriteStringToFile(dir + "/generation_config.json",
                                "{\"eos_token_id\": [" + std::to_string(third) + "]}").ok());
  auto r = RunCommandLine(Pinmoe() + " run --model " + dir + " --prompt-ids 17 --max-new-tokens 20 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["finish_reason"], "stop");
  EXPECT_EQ(j["token_ids"].size(), 2u);
}

TEST(Cli, DemoModelRunsEndToEndAndSaysItIsRandom) {
  const std::string demo = testing::MakeTempDir("demo");
  auto r = RunCommandLine("env PINMOE_DEMO_DIR=" + demo + "/m " + Pinmoe() +
                          " run --prompt 'Hello there' --max-new-tokens 5 --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("RANDOM"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated 5 tokens"), std::string::npos) << r.err;
  EXPECT_TRUE(FileExists(demo + "/m/model.safetensors"));
  auto t = RunCommandLine(Pinmoe() + " tokenize --model " + demo + "/m --text 'hi'");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_EQ(nlohmann::json::parse(t.out), nlohmann::json::parse("[104, 105]"));  // byte-level, no merges
}

TEST(Cli, Qwen3NextLoadsSaysItIgnoresMtpAndMatchesReference) {
  const auto ref = testing::ReadJson(testing::TestData("qwen3next-f32/reference.json"))["cases"][0];
  auto r = RunCommandLine(Pinmoe() + " run --model " + testing::TestData("qwen3next-f32") +
                          " --prompt-ids 17 --max-new-tokens 4 --temperature 0 --workers 3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("ignoring 4 mtp.* tensors"), std::string::npos) << r.err;
  std::string want;
  for (int i = 0; i < 4; ++i) want += std::to_string(ref["greedy_ids"][i].get<int>()) + " ";
  EXPECT_EQ(r.out, want + "\n");
}

TEST(CliBadInput, LayerKindsThatDisagreeWithTheTensors) {
  const std::string dir = testing::MakeTempDir("kinds");
  testing::CopyDir(testing::TestData("qwen3next-f32"), dir);
  PatchFile(dir + "/config.json", "\"full_attention_interval\": 4", "\"full_attention_interval\": 2");
  ExpectCleanFailure("--model " + dir, {"layer 1", "full_attention", "linear_attn"});
}

// The demo model with the real Qwen3 tokenizer and chat template (random weights).
std::string Qwen3Demo() {
  static const std::string dir = [] {
    const std::string d = testing::MakeTempDir("qwen3-demo");
    auto r = RunCommandLine(Pinmoe() + " make-demo --out " + d + " --tokenizer " + testing::Qwen3TokenizerPath());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return d;
  }();
  return dir;
}

TEST(CliChat, RunChatRendersTheTemplateExactlyAsTransformers) {
  const auto refs = testing::ReadJson(testing::TestData("chat_templates.json"))["cases"];
  struct Case {
    int ref;
    std::string flags;
  } cases[] = {{0, "--chat 'Hello!' --think"}, {1, "--chat 'Hello!' --no-think"},
               {2, "--chat Hi --system 'You are terse.'"}};
  for (const auto& c : cases) {
    auto r = RunCommandLine(Pinmoe() + " run --model " + Qwen3Demo() + " " + c.flags +
                            " --max-new-tokens 3 --json --workers 2");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["rendered_prompt"], refs[c.ref]["text"]) << c.flags;
    EXPECT_EQ(j["prompt_token_ids"], refs[c.ref]["ids"]) << c.flags;
    EXPECT_TRUE(j.contains("reasoning"));
    EXPECT_EQ(j["token_ids"].size(), 3u);
  }
}

TEST(CliChat, InteractiveSessionKeepsGoingAcrossTurnsAndResets) {
  const std::string script = testing::MakeTempDir("script") + "/in.txt";
  ASSERT_TRUE(WriteStringToFile(script, "Hello\nAnd again\n/reset\nFresh start\n/exit\n").ok());
  auto r = RunCommandLine(Pinmoe() + " chat --model " + Qwen3Demo() + " --max-new-tokens 4 --no-think", 120, script);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("/reset forgets"), std::string::npos);
  EXPECT_NE(r.out.find("(conversation cleared)"), std::string::npos);
  size_t prompts = 0;
  for (size_t p = r.out.find("> "); p != std::string::npos; p = r.out.find("> ", p + 2)) ++prompts;
  EXPECT_GE(prompts, 5u) << r.out;
}

TEST(CliBadInput, ChatTemplateWithAnUnsupportedConstruct) {
  const std::string dir = testing::MakeTempDir("badtmpl");
  testing::CopyDir(Qwen3Demo(), dir);
  ASSERT_TRUE(WriteStringToFile(dir + "/chat_template.jinja", "{% for m in messages %}\n{% include 'x' %}{% endfor %}").ok());
  ExpectCleanFailure("--model " + dir + " --chat hi",
                     {"chat_template.jinja", "line 2", "unsupported tag {% include %}"});
}

TEST(CliBadInput, ChatTemplateThatLoopsForever) {
  const std::string dir = testing::MakeTempDir("looptmpl");
  testing::CopyDir(Qwen3Demo(), dir);
  ASSERT_TRUE(WriteStringToFile(dir + "/chat_template.jinja",
                                "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}").ok());
  ExpectCleanFailure("--model " + dir + " --chat hi", {"exceeded", "steps"});
}

TEST(CliPlan, PrintsATableFromConfigAloneAndRefusesWhatDoesNotFit) {
  // Only config.json: plan must not need weights.
  const std::string dir = testing::MakeTempDir("plan");
  std::filesystem::copy_file(testing::TestData("qwen3next-f32/config.json"), dir + "/config.json");
  auto ok = RunCommandLine(Pinmoe() + " plan --model " + dir + " --gpu-mem 0=64MiB,1=16MiB");
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_NE(ok.out.find("cuda:0"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("cuda:1"), std::string::npos) << ok.out;
  // Room for the dense part, its caches and step buffers (~16.5 MiB), not for the experts.
  auto refused = RunCommandLine(Pinmoe() + " plan --model " + dir + " --gpu-mem 0=17MiB --context 64");
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("pinmoe: error: the model needs"), std::string::npos) << refused.err;
  auto no_room = RunCommandLine(Pinmoe() + " plan --model " + dir + " --gpu-mem 0=2MiB --context 64");
  EXPECT_EQ(no_room.exit_code, 1);
  EXPECT_NE(no_room.err.find("holds the dense part"), std::string::npos) << no_room.err;
  EXPECT_NE(no_room.err.find("step buffers"), std::string::npos) << no_room.err;
  auto no_budget = RunCommandLine(Pinmoe() + " plan --model " + dir + " --gpus 0,1 --gpu-mem 0=1GiB");
  EXPECT_EQ(no_budget.exit_code, 1);
  EXPECT_NE(no_budget.err.find("no memory budget for GPU 1"), std::string::npos) << no_budget.err;
}

// --kv-cache-dtype: the plan counts and names the cache's dtype (auto follows the weights: f32 here); a
// name it does not know is a clean error; the CPU path says it keeps f32.
TEST(CliPlan, CountsTheKvCacheInItsDtype) {
  const std::string dir = testing::MakeTempDir("plan-kv");
  std::filesystem::copy_file(testing::TestData("qwen3moe-f32/config.json"), dir + "/config.json");
  auto f32 = RunCommandLine(Pinmoe() + " plan --model " + dir + " --gpu-mem 0=1GiB");
  ASSERT_EQ(f32.exit_code, 0) << f32.err;
  EXPECT_NE(f32.out.find("(f32 KV)"), std::string::npos) << f32.out;
  auto bf16 = RunCommandLine(Pinmoe() + " plan --model " + dir + " --gpu-mem 0=1GiB --kv-cache-dtype bf16");
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  EXPECT_NE(bf16.out.find("(bf16 KV)"), std::string::npos) << bf16.out;
  auto bad = RunCommandLine(Pinmoe() + " plan --model " + dir + " --gpu-mem 0=1GiB --kv-cache-dtype fp8");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("pinmoe: error: --kv-cache-dtype fp8: expected auto, f32 or bf16"), std::string::npos)
      << bad.err;
  auto cpu = RunCommandLine(Pinmoe() + " run --model " + testing::TestData("qwen3moe-f32") +
                            " --prompt-ids 1,2,3 --max-new-tokens 2 --workers 0 --kv-cache-dtype bf16");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  EXPECT_NE(cpu.err.find("the CPU path keeps its KV cache in f32"), std::string::npos) << cpu.err;
}

TEST(CliBadInput, TruncatedSafetensors) {
  const std::string dir = BrokenCopy("trunc");
  const std::string shard = dir + "/model-00002-of-00003.safetensors";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) / 2);
  ExpectCleanFailure("--model " + dir, {"model-00002-of-00003.safetensors", "truncated"});
}

TEST(CliBadInput, HeaderThatLiesAboutOffsets) {
  const std::string dir = BrokenCopy("lies");
  // Grow the first tensor's end offset by one digit: its range no longer matches its shape.
  const std::string shard = dir + "/model-00001-of-00003.safetensors";
  PatchFile(shard, "\"data_offsets\":[0,", "\"data_offsets\":[1,");
  ExpectCleanFailure("--model " + dir, {"model-00001-of-00003.safetensors", "tensor '"});
}

TEST(CliBadInput, MissingShard) {
  const std::string dir = BrokenCopy("shard");
  std::filesystem::remove(dir + "/model-00003-of-00003.safetensors");
  ExpectCleanFailure("--model " + dir, {"model-00003-of-00003.safetensors", "missing"});
}

TEST(CliBadInput, TensorOfTheWrongShape) {
  const std::string dir = BrokenCopy("shape");
  PatchFile(dir + "/config.json", "\"moe_intermediate_size\": 48", "\"moe_intermediate_size\": 40");
  ExpectCleanFailure("--model " + dir, {"mlp.experts.", "[48, 64]", "[40, 64]"});
}

TEST(CliBadInput, UnknownDtype) {
  const std::string dir = BrokenCopy("dtype");
  PatchFile(dir + "/model-00001-of-00003.safetensors", "\"dtype\":\"F32\"", "\"dtype\":\"Q4K\"");
  ExpectCleanFailure("--model " + dir, {"model-00001-of-00003.safetensors", "unknown dtype 'Q4K'"});
}

TEST(CliBadInput, ConfigMissingAKey) {
  const std::string dir = BrokenCopy("key");
  PatchFile(dir + "/config.json", "\"hidden_size\": 64,", "");
  ExpectCleanFailure("--model " + dir, {"config.json", "missing key 'hidden_size'"});
}

TEST(CliBadInput, UnsupportedArchitecture) {
  const std::string dir = BrokenCopy("arch");
  PatchFile(dir + "/config.json", "Qwen3MoeForCausalLM", "MambaForCausalLM");
  ExpectCleanFailure("--model " + dir, {"unsupported architecture 'MambaForCausalLM'"});
}

TEST(CliBadInput, MalformedTokenizerJson) {
  const std::string dir = BrokenCopy("tok");
  ASSERT_TRUE(WriteStringToFile(dir + "/tokenizer.json", "{\"model\": [").ok());
  ExpectCleanFailure("--model " + dir, {"tokenizer.json", "not a JSON object"});
}

TEST(CliBadInput, PromptLongerThanContext) {
  ExpectCleanFailure("--model " + testing::TestData("qwen3moe-f32") + " --context 3",
                     {"prompt has 3 tokens", "context is 3"});
}

TEST(CliBadInput, WorkerBinaryMissing) {
  ExpectCleanFailure("--model " + testing::TestData("qwen3moe-f32") + " --worker-binary /nonexistent/w",
                     {"/nonexistent/w"});
}

TEST(CliBadInput, WorkerThatExitsAtOnce) {
  ExpectCleanFailure("--model " + testing::TestData("qwen3moe-f32") + " --worker-binary /bin/false --workers 2",
                     {"worker", "exited with status 1"});
}

TEST(CliBadInput, TextPromptWithoutTokenizer) {
  auto r = RunCommandLine(Pinmoe() + " run --model " + testing::TestData("qwen3moe-f32") + " --prompt hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--prompt-ids"), std::string::npos) << r.err;
}

// A GPU that is not there (or a build without CUDA) is one clear error that names the flag, for the
// dense part and for bench alike, on any machine.
TEST(CliBadInput, MissingGpuDevice) {
  ExpectCleanFailure("--model " + testing::TestData("qwen3moe-f32") + " --device cuda:99 --workers 0",
                     {"--device cuda:99"});
  auto r = RunCommandLine(Pinmoe() + " bench --synthetic qwen3-30b-a3b --layers 1 --device cuda:99", 60);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("pinmoe: error:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("CUDA"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace pinmoe
