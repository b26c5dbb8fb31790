// A Jinja2 subset large enough for Hugging Face chat templates (Qwen3, Qwen3-Next and their kin), with
// the environment transformers uses (trim_blocks, lstrip_blocks, loop controls):
//   {{ }}, {% if/elif/else %}, {% for x in xs [if c] %} with loop.* and else, {% set %} (also
//   namespace attributes and {% set x %}...{% endset %}), {% macro %}, {% break/continue %},
//   {% generation %}; whitespace control; Python-like values, slicing, string methods (startswith,
//   split, strip, ...), filters (length, tojson, trim, join, default, ...), tests (defined, none,
//   string, ...), namespace(), range(), raise_exception().
// Templates are untrusted: anything outside the subset is an error naming the line, and rendering is
// bounded in steps, output size, list sizes and recursion depth.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace pinmoe::jinja {

struct Limits {
  int64_t max_steps = 2'000'000;
  size_t max_output_bytes = 64u << 20;
  size_t max_list_items = 100'000;
  int max_depth = 200;
};

class Template {
 public:
  static absl::StatusOr<std::unique_ptr<Template>> Parse(std::string_view source);
  ~Template();
  // Renders with the JSON object's members as top-level variables.
  absl::StatusOr<std::string> Render(const nlohmann::json& context, const Limits& limits = {}) const;

  struct Node;

 private:
  Template() = default;
  std::unique_ptr<Node> root_;
};

}  // namespace pinmoe::jinja
