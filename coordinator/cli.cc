#include "coordinator/cli.h"

#include <unistd.h>

#include "absl/strings/str_format.h"
#include "common/chat_template.h"
#include "common/files.h"
#include "common/status.h"
#include "common/str_cat.h"
#include "common/tokenizer.h"
#include "coordinator/generate.h"
#include "coordinator/thinking.h"
#include "nlohmann/json.hpp"

namespace pinmoe {

namespace {

// Everything a generation needs besides the prompt: sampling from generation_config.json and the flags,
// and the ids that end a turn.
absl::StatusOr<GenerateParams> MakeParams(const RunCommandOptions& o, const Session& session,
                                          const ChatTemplate* chat) {
  GenerateParams params;
  const GenerationConfig& gc = session.generation_config();
  params.max_new_tokens = o.max_new_tokens;
  params.eos_ids.assign(gc.eos_token_ids.begin(), gc.eos_token_ids.end());
  if (chat != nullptr && session.tokenizer() != nullptr && !chat->eos_token().empty()) {
    if (auto id = session.tokenizer()->TokenToId(chat->eos_token())) params.eos_ids.push_back(*id);
  }
  params.ignore_eos = o.ignore_eos;
  params.top_logprobs = o.top_logprobs;
  // Defaults come from generation_config.json, as transformers and vLLM do; flags override them.
  const bool sample = gc.do_sample.value_or(false);
  params.sampling.temperature =
      o.temperature.value_or(sample ? static_cast<float>(gc.temperature.value_or(1.0)) : 0.0f);
  params.sampling.top_k = o.top_k.value_or(sample ? gc.top_k.value_or(0) : 0);
  params.sampling.top_p = o.top_p.value_or(sample ? static_cast<float>(gc.top_p.value_or(1.0)) : 1.0f);
  params.sampling.seed = o.seed;
  if (params.sampling.temperature < 0) return absl::InvalidArgumentError("--temperature must be >= 0");
  if (!(params.sampling.top_p > 0 && params.sampling.top_p <= 1)) {
    return absl::InvalidArgumentError("--top-p must be in (0, 1]");
  }
  if (o.max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  if (o.top_logprobs < 0 || o.top_logprobs > 100) {
    return absl::InvalidArgumentError("--top-logprobs must be between 0 and 100");
  }
  return params;
}

absl::StatusOr<std::unique_ptr<ChatTemplate>> LoadChat(const Session& session, const std::string& dir) {
  if (session.tokenizer() == nullptr) {
    return absl::FailedPreconditionError(StrCat(dir, " has no tokenizer.json, which chat needs"));
  }
  return ChatTemplate::Load(dir);
}

// Thinking shown dim on a terminal, plain otherwise.
struct Style {
  bool tty;
  const char* dim() const { return tty ? "\x1b[2m" : ""; }
  const char* reset() const { return tty ? "\x1b[0m" : ""; }
};

}  // namespace

absl::Status RunCommand(const RunCommandOptions& o, std::ostream& out, std::ostream& err) {
  if (o.demo) {
    err << "pinmoe: no --model given: using the built-in demo model at " << o.session.model_dir
        << ".\npinmoe: its weights are RANDOM, so the text below is meaningless; pass --model DIR "
           "for a real model.\n";
  }
  ASSIGN_OR_RETURN(auto session, Session::Open(o.session, o.json ? nullptr : &err));
  const Tokenizer* tok = session->tokenizer();

  std::unique_ptr<ChatTemplate> chat;
  std::string rendered;
  std::vector<int32_t> prompt = o.prompt_ids;
  if (o.chat.has_value()) {
    ASSIGN_OR_RETURN(chat, LoadChat(*session, o.session.model_dir));
    nlohmann::json messages = nlohmann::json::array();
    if (o.system.has_value()) messages.push_back({{"role", "system"}, {"content", *o.system}});
    messages.push_back({{"role", "user"}, {"content", *o.chat}});
    ChatRenderOptions ro;
    ro.enable_thinking = o.thinking;
    ASSIGN_OR_RETURN(rendered, chat->Render(messages, ro));
    ASSIGN_OR_RETURN(prompt, tok->Encode(rendered));
  } else if (prompt.empty()) {
    if (tok == nullptr) {
      return absl::FailedPreconditionError(StrCat(
          o.session.model_dir, " has no tokenizer.json; give the prompt as --prompt-ids"));
    }
    ASSIGN_OR_RETURN(prompt, tok->Encode(o.prompt));
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  ASSIGN_OR_RETURN(GenerateParams params, MakeParams(o, *session, chat.get()));

  const Style style{isatty(STDERR_FILENO) != 0};
  std::unique_ptr<StreamDecoder> stream;
  if (tok != nullptr && !o.json) stream = std::make_unique<StreamDecoder>(*tok, /*skip_special=*/true);
  ThinkingSplitter splitter(chat != nullptr && PromptOpensThinking(rendered));
  auto emit = [&](const std::string& text, bool flush) {
    if (chat == nullptr) {
      out << text;
      return;
    }
    std::string reasoning, answer;
    splitter.Push(text, &reasoning, &answer);
    if (flush) splitter.Flush(&reasoning, &answer);
    if (!reasoning.empty()) err << style.dim() << reasoning << style.reset();
    out << answer;
  };
  auto on_token = [&](int32_t id) {
    if (o.json) return;
    if (stream) {
      emit(stream->Push(id), false);
    } else {
      out << id << ' ';
    }
    out.flush();
    err.flush();
  };
  ASSIGN_OR_RETURN(GenerateResult r, Generate(session->model(), prompt, params, on_token));

  const double prefill_tps = r.prefill_seconds > 0 ? prompt.size() / r.prefill_seconds : 0;
  const size_t decoded = r.token_ids.size() > 1 ? r.token_ids.size() - 1 : 0;
  const double decode_tps = r.decode_seconds > 0 && decoded > 0 ? decoded / r.decode_seconds : 0;
  if (o.json) {
    nlohmann::json j;
    j["model"] = o.session.model_dir;
    j["prompt_token_ids"] = prompt;
    j["token_ids"] = r.token_ids;
    const std::string full = tok != nullptr ? tok->Decode(r.token_ids, /*skip_special=*/true) : std::string();
    if (chat != nullptr) {
      j["rendered_prompt"] = rendered;
      std::string reasoning, answer;
      ThinkingSplitter split(PromptOpensThinking(rendered));
      split.Push(full, &reasoning, &answer);
      split.Flush(&reasoning, &answer);
      j["reasoning"] = reasoning;
      j["text"] = answer;
    } else {
      j["text"] = full;
    }
    j["finish_reason"] = FinishReasonName(r.finish_reason);
    j["workers"] = o.session.workers;
    j["timing"] = {{"prefill_tokens", prompt.size()},
                   {"prefill_seconds", r.prefill_seconds},
                   {"prefill_tokens_per_s", prefill_tps},
                   {"decode_tokens", decoded},
                   {"decode_seconds", r.decode_seconds},
                   {"decode_tokens_per_s", decode_tps}};
    if (o.top_logprobs > 0) {
      nlohmann::json tl = nlohmann::json::array();
      for (const auto& pos : r.top_logprobs) {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& t : pos) list.push_back({{"id", t.id}, {"logprob", t.logprob}});
        tl.push_back(list);
      }
      j["top_logprobs"] = tl;
    }
    out << j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    if (stream) emit(stream->Flush(), true);
    out << "\n";
    err << absl::StrFormat(
        "pinmoe: prompt %d tokens, %.1f tok/s prefill; generated %d tokens, %.1f tok/s decode; "
        "finish: %s\n",
        prompt.size(), prefill_tps, r.token_ids.size(), decode_tps, FinishReasonName(r.finish_reason));
  }
  return absl::OkStatus();
}

absl::Status ChatCommand(const RunCommandOptions& o, std::istream& in, std::ostream& out, std::ostream& err) {
  if (o.demo) {
    err << "pinmoe: no --model given: chatting with the built-in demo model at " << o.session.model_dir
        << ".\npinmoe: its weights are RANDOM, so its replies are meaningless.\n";
  }
  ASSIGN_OR_RETURN(auto session, Session::Open(o.session, &err));
  ASSIGN_OR_RETURN(auto chat, LoadChat(*session, o.session.model_dir));
  ASSIGN_OR_RETURN(GenerateParams params, MakeParams(o, *session, chat.get()));
  const Tokenizer& tok = *session->tokenizer();
  const Style style{isatty(STDOUT_FILENO) != 0};
  nlohmann::json history = nlohmann::json::array();
  if (o.system.has_value()) history.push_back({{"role", "system"}, {"content", *o.system}});
  const size_t base = history.size();
  out << "pinmoe chat: type a message and press Enter; /reset forgets the conversation, /exit (or "
         "Ctrl-D) quits.\n";
  std::string line;
  while (true) {
    out << "> " << std::flush;
    if (!std::getline(in, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      history.erase(history.begin() + static_cast<std::ptrdiff_t>(base), history.end());
      out << "(conversation cleared)\n";
      continue;
    }
    if (line.empty()) continue;
    history.push_back({{"role", "user"}, {"content", line}});
    ChatRenderOptions ro;
    ro.enable_thinking = o.thinking;
    ASSIGN_OR_RETURN(std::string rendered, chat->Render(history, ro));
    ASSIGN_OR_RETURN(std::vector<int32_t> prompt, tok.Encode(rendered));
    StreamDecoder stream(tok, /*skip_special=*/true);
    ThinkingSplitter splitter(PromptOpensThinking(rendered));
    bool in_reasoning = false;
    std::string full;
    auto show = [&](const std::string& reasoning, const std::string& answer) {
      if (!reasoning.empty()) {
        if (!in_reasoning) out << style.dim() << "[thinking] ";
        in_reasoning = true;
        out << reasoning;
      }
      if (!answer.empty()) {
        if (in_reasoning) out << style.reset() << "\n";
        in_reasoning = false;
        out << answer;
      }
      out.flush();
    };
    auto on_token = [&](int32_t id) {
      std::string piece = stream.Push(id);
      full += piece;
      std::string reasoning, answer;
      splitter.Push(piece, &reasoning, &answer);
      show(reasoning, answer);
    };
    absl::StatusOr<GenerateResult> r = Generate(session->model(), prompt, params, on_token);
    if (!r.ok()) {
      if (!absl::IsOutOfRange(r.status())) return r.status();
      // The conversation no longer fits the context: say so and let the user go on or /reset.
      out << (in_reasoning ? style.reset() : "") << "\n";
      err << "pinmoe: " << r.status().message() << "; /reset to start over\n";
      history.erase(history.end() - 1);
      continue;
    }
    std::string tail = stream.Flush();
    full += tail;
    std::string reasoning, answer;
    splitter.Push(tail, &reasoning, &answer);
    splitter.Flush(&reasoning, &answer);
    show(reasoning, answer);
    if (in_reasoning) out << style.reset();
    out << "\n";
    // The whole reply (thinking included) goes into the history; the template drops old reasoning.
    history.push_back({{"role", "assistant"}, {"content", full}});
  }
  out << "\n";
  return absl::OkStatus();
}

absl::Status TokenizeCommand(const std::string& model_dir, const std::string& text,
                             std::ostream& out) {
  ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(JoinPath(model_dir, "tokenizer.json")));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode(text));
  out << nlohmann::json(ids).dump() << "\n";
  return absl::OkStatus();
}

}  // namespace pinmoe
