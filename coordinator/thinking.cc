#include "coordinator/thinking.h"

#include <algorithm>
#include <string_view>

namespace pinmoe {
namespace {
constexpr std::string_view kOpen = "<think>";
constexpr std::string_view kClose = "</think>";

// Length of the longest suffix of s that is a proper prefix of tag.
size_t PartialTagSuffix(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  }
  return 0;
}
}  // namespace

bool PromptOpensThinking(const std::string& prompt) {
  size_t open = prompt.rfind(kOpen);
  return open != std::string::npos && prompt.find(kClose, open) == std::string::npos;
}

void ThinkingSplitter::Push(const std::string& text, std::string* reasoning, std::string* answer) {
  pending_ += text;
  while (!pending_.empty()) {
    const std::string_view tag = thinking_ ? kClose : kOpen;
    size_t at = pending_.find(tag);
    // An opening tag counts only before any answer text (a reply that starts by thinking).
    const bool tag_allowed = thinking_ || !seen_answer_text_;
    if (at != std::string::npos && tag_allowed) {
      std::string before = pending_.substr(0, at);
      if (thinking_) {
        *reasoning += before;
      } else if (before.find_first_not_of(" \n\t\r") != std::string::npos) {
        // Text came first: this <think> is part of the answer, not the start of reasoning.
        *answer += pending_.substr(0, at + tag.size());
        pending_.erase(0, at + tag.size());
        seen_answer_text_ = true;
        continue;
      }
      pending_.erase(0, at + tag.size());
      thinking_ = !thinking_;
      if (!thinking_) {  // the answer usually starts after blank lines
        size_t k = pending_.find_first_not_of('\n');
        pending_.erase(0, k == std::string::npos ? pending_.size() : k);
        skip_newlines_ = pending_.empty();
      }
      continue;
    }
    size_t hold = tag_allowed ? PartialTagSuffix(pending_, tag) : 0;
    std::string ready = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    if (thinking_) {
      *reasoning += ready;
    } else {
      if (skip_newlines_) {
        size_t k = ready.find_first_not_of('\n');
        ready.erase(0, k == std::string::npos ? ready.size() : k);
        if (!ready.empty()) skip_newlines_ = false;
      }
      if (!ready.empty() && ready.find_first_not_of(" \n\t\r") != std::string::npos) seen_answer_text_ = true;
      *answer += ready;
    }
    break;
  }
}

void ThinkingSplitter::Flush(std::string* reasoning, std::string* answer) {
  if (thinking_) {
    *reasoning += pending_;
  } else {
    *answer += pending_;
  }
  pending_.clear();
}

}  // namespace pinmoe
