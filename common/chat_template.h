// A model's chat template: read from chat_template.jinja or from tokenizer_config.json's chat_template
// (a string, or a list of named templates, "default" first), rendered the way transformers'
// apply_chat_template renders it (same variables: messages, add_generation_prompt, the special tokens,
// and extra keyword arguments such as enable_thinking).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/jinja.h"
#include "nlohmann/json.hpp"

namespace pinmoe {

struct ChatRenderOptions {
  bool add_generation_prompt = true;
  std::optional<bool> enable_thinking;  // passed only when set, as transformers does with kwargs
  nlohmann::json tools;                 // null: no tools
};

class ChatTemplate {
 public:
  // NotFound when the model directory has no chat template.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> Load(const std::string& model_dir);
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> FromSource(const std::string& source,
                                                                  const nlohmann::json& special_tokens);

  // messages: a JSON list of {"role": ..., "content": ..., optional "reasoning_content": ...}.
  absl::StatusOr<std::string> Render(const nlohmann::json& messages, const ChatRenderOptions& options) const;

  // tokenizer_config.json's eos_token (the end of an assistant turn for Qwen: "<|im_end|>"), or empty.
  const std::string& eos_token() const { return eos_token_; }

 private:
  std::unique_ptr<jinja::Template> template_;
  nlohmann::json special_tokens_;  // bos_token, eos_token, ... as strings
  std::string eos_token_;
};

}  // namespace pinmoe
