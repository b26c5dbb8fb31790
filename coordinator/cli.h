// The `pinmoe` subcommands behind the flags: main.cc parses flags into these structs, and these
// functions do the work, writing the user's output to `out` and notes to `err`.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/session.h"

namespace pinmoe {

struct RunCommandOptions {
  SessionOptions session;
  bool demo = false;  // model_dir is the built-in demo (say so: its weights are random)
  std::string prompt;
  std::vector<int32_t> prompt_ids;  // used instead of prompt when non-empty
  int max_new_tokens = 128;
  std::optional<float> temperature, top_p;
  std::optional<int> top_k;
  uint64_t seed = 0;
  bool ignore_eos = false;
  bool json = false;
  int top_logprobs = 0;
  // Chat mode: the prompt is the model's chat template rendered over [system?, user: chat].
  std::optional<std::string> chat;
  std::optional<std::string> system;
  std::optional<bool> thinking;  // --think / --no-think (the template's enable_thinking)
};

absl::Status RunCommand(const RunCommandOptions& options, std::ostream& out, std::ostream& err);

// An interactive multi-turn conversation on `in`: keeps the history, streams each reply, shows the
// thinking apart from the answer. Commands: /exit, /reset.
absl::Status ChatCommand(const RunCommandOptions& options, std::istream& in, std::ostream& out,
                         std::ostream& err);

// Prints the prompt's token ids as a JSON list.
absl::Status TokenizeCommand(const std::string& model_dir, const std::string& text,
                             std::ostream& out);

}  // namespace pinmoe
