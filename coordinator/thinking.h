// Splits a streamed assistant reply into its reasoning (<think>...</think>) and its answer, for models
// that think (Qwen3, Qwen3-Next-Thinking). Tags may arrive split across pieces; text that could still
// become a tag is held back until it cannot.
#pragma once

#include <string>

namespace pinmoe {

class ThinkingSplitter {
 public:
  // starts_in_thinking: the rendered prompt already opened a <think> block.
  explicit ThinkingSplitter(bool starts_in_thinking = false) : thinking_(starts_in_thinking) {}

  // Feeds decoded text; appends what is now certain to *reasoning and *answer.
  void Push(const std::string& text, std::string* reasoning, std::string* answer);
  void Flush(std::string* reasoning, std::string* answer);
  bool thinking() const { return thinking_; }

 private:
  bool thinking_;
  bool seen_answer_text_ = false;
  bool skip_newlines_ = false;  // drop the newlines that follow </think>
  std::string pending_;
};

// True when `prompt` ends inside an open <think> block (the template put "<think>\n" in the prompt).
bool PromptOpensThinking(const std::string& prompt);

}  // namespace pinmoe
