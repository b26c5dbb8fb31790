// Chat templates against transformers 5.17's apply_chat_template on the real Qwen3 template
// (tests/data/chat_templates.json, made by scripts/make_references.py), and the Jinja subset's limits.
#include "common/chat_template.h"

#include <filesystem>

#include "common/jinja.h"
#include "common/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

std::string Qwen3Dir() { return std::filesystem::path(testing::Qwen3TokenizerPath()).parent_path().string(); }

TEST(ChatTemplate, Qwen3ConversationsRenderExactlyAsTransformers) {
  auto tmpl = ChatTemplate::Load(Qwen3Dir());
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  auto tok = Tokenizer::Load(testing::Qwen3TokenizerPath());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tmpl)->eos_token(), "<|im_end|>");
  const auto refs = testing::ReadJson(testing::TestData("chat_templates.json"));
  ASSERT_GE(refs["cases"].size(), 10u);
  for (const auto& c : refs["cases"]) {
    ChatRenderOptions o;
    o.add_generation_prompt = c["kwargs"]["add_generation_prompt"].get<bool>();
    if (c["kwargs"].contains("enable_thinking")) o.enable_thinking = c["kwargs"]["enable_thinking"].get<bool>();
    auto text = (*tmpl)->Render(c["messages"], o);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << c["messages"].dump();
    auto ids = (*tok)->Encode(*text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>());
  }
}

std::string Render(const std::string& src, const nlohmann::json& ctx = nlohmann::json::object()) {
  auto t = jinja::Template::Parse(src);
  if (!t.ok()) return "PARSE ERROR: " + std::string(t.status().message());
  auto r = (*t)->Render(ctx);
  if (!r.ok()) return "RENDER ERROR: " + std::string(r.status().message());
  return *r;
}

TEST(Jinja, ExpressionsFiltersTestsAndLoops) {
  EXPECT_EQ(Render("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 % 3 }}|{{ 'a' ~ 1 }}|{{ 2 ** 10 }}"), "7|3|2|a1|1024");
  EXPECT_EQ(Render("{{ [1, 2, 3][::-1] }}|{{ 'hello'[1:3] }}|{{ [1,2,3][-1] }}"), "[3, 2, 1]|el|3");
  EXPECT_EQ(Render("{{ ' x '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b  c'.split() | length }}"),
            "x|['a', 'b', '', 'c']|3");
  EXPECT_EQ(Render("{{ x is defined }}|{{ none is none }}|{{ 'a' is string }}|{{ y is not defined }}",
                   {{"x", 1}}),
            "True|True|True|True");
  EXPECT_EQ(Render("{% for a in xs %}{{ loop.index }}{{ a }}{% if not loop.last %},{% endif %}{% endfor %}",
                   {{"xs", {"a", "b", "c"}}}),
            "1a,2b,3c");
  EXPECT_EQ(Render("{% for a in xs if a > 1 %}{{ a }}{% else %}none{% endfor %}", {{"xs", {1, 2, 3}}}), "23");
  EXPECT_EQ(Render("{% for a in xs %}{{ a }}{% else %}none{% endfor %}", {{"xs", nlohmann::json::array()}}), "none");
  EXPECT_EQ(Render("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}", {{"d", {{"a", 1}, {"b", 2}}}}), "a=1;b=2;");
  EXPECT_EQ(Render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"), "6");
  EXPECT_EQ(Render("{% set x = 1 %}{% for i in range(2) %}{% set x = 5 %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(Render("{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "012");
  EXPECT_EQ(Render("{{ {'b': 1, 'a': [true, none, 'é\"']} | tojson }}"), "{\"b\": 1, \"a\": [true, null, \"é\\\"\"]}");
  EXPECT_EQ(Render("{{ {'a': 1} | tojson(indent=2) }}"), "{\n  \"a\": 1\n}");
  EXPECT_EQ(Render("{% macro greet(name, punct='!') %}hi {{ name }}{{ punct }}{% endmacro %}{{ greet('bob') }}"), "hi bob!");
  EXPECT_EQ(Render("{{ 'yes' if x else 'no' }}", {{"x", false}}), "no");
  EXPECT_EQ(Render("{{ xs | selectattr('r', 'equalto', 1) | map(attribute='v') | join(',') }}",
                   {{"xs", {{{"r", 1}, {"v", "a"}}, {{"r", 2}, {"v", "b"}}, {{"r", 1}, {"v", "c"}}}}}),
            "a,c");
}

TEST(Jinja, WhitespaceControlMatchesTrimAndLstripBlocks) {
  EXPECT_EQ(Render("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  EXPECT_EQ(Render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(Render("{# comment #}\nx {{- ' y ' -}} z"), "x y z");
  EXPECT_EQ(Render("{% raw %}{{ not rendered }}{% endraw %}"), "{{ not rendered }}");
}

TEST(Jinja, UnsupportedConstructsAreClearErrors) {
  EXPECT_NE(Render("{% include 'other.jinja' %}").find("line 1: unsupported tag {% include %}"), std::string::npos);
  EXPECT_NE(Render("{% if x %}never closed").find("missing {% endif %}"), std::string::npos);
  EXPECT_NE(Render("{{ x | shuffle }}").find("filter 'shuffle' is not supported"), std::string::npos);
  EXPECT_NE(Render("\n\n{{ 'a'.zfill(3) }}").find("line 3"), std::string::npos);
  EXPECT_NE(Render("{{ raise_exception('no tools') }}").find("no tools"), std::string::npos);
  EXPECT_NE(Render("{{ 1 +* 2 }}").find("PARSE ERROR"), std::string::npos);
}

TEST(Jinja, RenderingIsBoundedInTimeAndMemory) {
  // Loops that would run for ever (10^10 iterations) stop at the step budget.
  EXPECT_NE(Render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
                .find("exceeded"),
            std::string::npos);
  EXPECT_NE(Render("{% for i in range(100000000000) %}{% endfor %}").find("exceeds the limit"), std::string::npos);
  // Doubling a string 64 times stops at the size limit, not at the machine's memory.
  EXPECT_NE(Render("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}")
                .find("exceeds"),
            std::string::npos);
  EXPECT_NE(Render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("too deeply"), std::string::npos);
  std::string deep(5000, '(');
  EXPECT_NE(Render("{{ " + deep + " }}").find("ERROR"), std::string::npos);
}

}  // namespace
}  // namespace pinmoe
