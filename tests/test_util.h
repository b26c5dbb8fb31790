// Paths and small helpers shared by the tests.
#pragma once

#include <string>
#include <vector>

#include "coordinator/session.h"
#include "nlohmann/json.hpp"

namespace pinmoe::testing {

std::string TestData(const std::string& relative);
std::string BinDir();
std::string WorkerBinary();
std::string Qwen3TokenizerPath();  // $PINMOE_QWEN3_TOKENIZER or the path scripts/setup fills

// A fresh, empty directory under the test's temporary directory.
std::string MakeTempDir(const std::string& name);
// Copies every file of one directory into another (both flat).
void CopyDir(const std::string& from, const std::string& to);
nlohmann::json ReadJson(const std::string& path);

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs a shell command line with a time limit (seconds), standard input from `stdin_path`.
CommandResult RunCommandLine(const std::string& command, int timeout_seconds = 120,
                             const std::string& stdin_path = "/dev/null");

// A session of the GPU path: the dense part on `device` (cuda:N), `workers` workers on `worker_device`
// (as SessionOptions reads it; 0 workers: experts in-process), this build's worker binary, a 1,024-token
// context and a generous registration wait.
SessionOptions GpuSession(const std::string& dir, const std::string& device, int workers,
                          const std::string& worker_device);

// Greedy generation (ignoring end-of-sequence) with every position's logits; failures are test failures
// and give an empty result.
struct GreedyRun {
  std::vector<int32_t> ids;
  std::vector<std::vector<float>> logits;
};
GreedyRun Greedy(SessionOptions options, const std::vector<int32_t>& prompt, int new_tokens);

}  // namespace pinmoe::testing
