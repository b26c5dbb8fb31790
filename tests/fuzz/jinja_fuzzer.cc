// Fuzzes the chat-template engine: any template must parse or fail cleanly, and rendering must stay
// within its limits (small ones here, so that each input is quick).
#include <cstdint>
#include <string_view>

#include "common/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view src(reinterpret_cast<const char*>(data), size);
  auto t = pinmoe::jinja::Template::Parse(src);
  if (!t.ok()) return 0;
  pinmoe::jinja::Limits limits;
  limits.max_steps = 20000;
  limits.max_output_bytes = 1 << 20;
  limits.max_list_items = 10000;
  nlohmann::json ctx = {{"messages", {{{"role", "user"}, {"content", "hi <think>x</think> y"}}}},
                        {"add_generation_prompt", true},
                        {"n", 3}};
  auto r = (*t)->Render(ctx, limits);
  if (r.ok() && r->size() > limits.max_output_bytes) __builtin_trap();
  return 0;
}
