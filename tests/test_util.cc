#include "tests/test_util.h"

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "coordinator/generate.h"
#include "gtest/gtest.h"

namespace pinmoe::testing {

// Compiled-in paths, overridable for a tree that moved (the GPU machine gets a copy of it).
std::string EnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}
std::string TestData(const std::string& relative) { return EnvOr("PINMOE_TEST_DATA", PINMOE_TEST_DATA) + "/" + relative; }
std::string BinDir() { return EnvOr("PINMOE_BIN_DIR", PINMOE_BIN_DIR); }
std::string WorkerBinary() { return BinDir() + "/pinmoe-worker"; }

SessionOptions GpuSession(const std::string& dir, const std::string& device, int workers,
                          const std::string& worker_device) {
  SessionOptions so;
  so.model_dir = dir;
  so.device = device;
  so.workers = workers;
  so.worker_device = worker_device;
  so.worker_binary = WorkerBinary();
  so.register_timeout_ms = 60000;
  so.context = 1024;
  return so;
}

std::string Qwen3TokenizerPath() {
  const char* env = std::getenv("PINMOE_QWEN3_TOKENIZER");
  return env != nullptr && *env != '\0' ? env : PINMOE_QWEN3_TOKENIZER;
}

std::string MakeTempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path root = base != nullptr ? base : std::filesystem::temp_directory_path();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir = root / ("pinmoe-test-" + std::to_string(::getpid())) /
                              (info != nullptr ? std::string(info->name()) : std::string("none")) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

void CopyDir(const std::string& from, const std::string& to) {
  std::filesystem::create_directories(to);
  for (const auto& e : std::filesystem::directory_iterator(from)) {
    std::filesystem::copy_file(e.path(), std::filesystem::path(to) / e.path().filename(),
                               std::filesystem::copy_options::overwrite_existing);
  }
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

CommandResult RunCommandLine(const std::string& command, int timeout_seconds, const std::string& stdin_path) {
  const std::string dir = MakeTempDir("cmd");
  const std::string out = dir + "/out", err = dir + "/err";
  const std::string line = "timeout -s KILL " + std::to_string(timeout_seconds) + " " + command +
                           " >" + out + " 2>" + err + " <" + stdin_path;
  int status = std::system(line.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

GreedyRun Greedy(SessionOptions options, const std::vector<int32_t>& prompt, int new_tokens) {
  if (options.worker_binary.empty()) options.worker_binary = WorkerBinary();
  auto session = Session::Open(options, nullptr);
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return {};
  GenerateParams p;
  p.max_new_tokens = new_tokens;
  p.ignore_eos = true;
  auto r = Generate((*session)->model(), prompt, p, nullptr, /*keep_logits=*/true);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  return {r->token_ids, r->logits};
}

}  // namespace pinmoe::testing
