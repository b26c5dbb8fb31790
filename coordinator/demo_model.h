// The built-in demo: a small Qwen3-MoE checkpoint in the hub's format with seeded random weights, so that
// `pinmoe run` works end to end on a fresh machine without any download. Its text is meaningless.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace pinmoe {

struct DemoModelOptions {
  std::string out_dir;
  // A Hugging Face tokenizer.json to ship with the model (the Qwen3 one, when scripts/setup fetched
  // it); empty: a byte-level tokenizer with no merges, generated here.
  std::string tokenizer_json;
  uint64_t seed = 1;
};

absl::Status WriteDemoModel(const DemoModelOptions& options);

// $PINMOE_DEMO_DIR, else demo-model/ beside the pinmoe executable.
std::string DefaultDemoModelDir();

}  // namespace pinmoe
