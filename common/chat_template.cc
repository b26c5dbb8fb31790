#include "common/chat_template.h"

#include "common/files.h"
#include "common/status.h"
#include "common/str_cat.h"

namespace pinmoe {
namespace {

using Json = nlohmann::json;

// A special token in tokenizer_config.json is a string or an AddedToken-like {"content": ...}.
std::optional<std::string> TokenString(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Load(const std::string& model_dir) {
  const std::string config_path = JoinPath(model_dir, "tokenizer_config.json");
  Json config = Json::object();
  if (FileExists(config_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(config_path, 64u << 20));
    config = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(StrCat(config_path, ": not a JSON object"));
    }
  }
  Json special = Json::object();
  for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token"}) {
    if (config.contains(key)) {
      if (auto s = TokenString(config[key])) special[key] = *s;
    }
  }
  std::string source;
  const std::string jinja_path = JoinPath(model_dir, "chat_template.jinja");
  if (FileExists(jinja_path)) {
    ASSIGN_OR_RETURN(source, ReadFileToString(jinja_path, 16u << 20));
  } else if (config.contains("chat_template")) {
    const Json& ct = config["chat_template"];
    if (ct.is_string()) {
      source = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& entry : ct) {
        if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
            entry["template"].is_string()) {
          source = entry["template"].get<std::string>();
        }
      }
      if (source.empty()) {
        return absl::InvalidArgumentError(StrCat(config_path, ": chat_template list has no \"default\" template"));
      }
    } else {
      return absl::InvalidArgumentError(StrCat(config_path, ": chat_template is neither text nor a list"));
    }
  } else {
    return absl::NotFoundError(StrCat(model_dir, " has no chat template (chat_template.jinja or ",
                                      "tokenizer_config.json's chat_template)"));
  }
  auto t = FromSource(source, special);
  if (!t.ok()) {
    return absl::Status(t.status().code(),
                        StrCat(FileExists(jinja_path) ? jinja_path : config_path, ": ", t.status().message()));
  }
  return t;
}

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::FromSource(const std::string& source,
                                                                       const Json& special_tokens) {
  auto t = std::unique_ptr<ChatTemplate>(new ChatTemplate());
  ASSIGN_OR_RETURN(t->template_, jinja::Template::Parse(source));
  t->special_tokens_ = special_tokens.is_object() ? special_tokens : Json::object();
  if (t->special_tokens_.contains("eos_token")) t->eos_token_ = t->special_tokens_["eos_token"].get<std::string>();
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Render(const Json& messages, const ChatRenderOptions& options) const {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages must be a list");
  Json ctx = special_tokens_;
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = options.add_generation_prompt;
  if (options.enable_thinking.has_value()) ctx["enable_thinking"] = *options.enable_thinking;
  if (!options.tools.is_null()) ctx["tools"] = options.tools;
  return template_->Render(ctx);
}

}  // namespace pinmoe
