#include "coordinator/cli.h"

#include "common/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "coordinator/generate.h"
#include "nlohmann/json.hpp"

namespace pinmoe {

absl::Status RunCommand(const RunCommandOptions& o, std::ostream& out, std::ostream& err) {
  if (o.max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  if (o.top_logprobs < 0 || o.top_logprobs > 100) {
    return absl::InvalidArgumentError("--top-logprobs must be between 0 and 100");
  }
  if (o.demo) {
    err << "pinmoe: no --model given: using the built-in demo model at " << o.session.model_dir
        << ".\npinmoe: its weights are RANDOM, so the text below is meaningless; pass --model DIR "
           "for a real model.\n";
  }
  ASSIGN_OR_RETURN(auto session, Session::Open(o.session, o.json ? nullptr : &err));
  const Tokenizer* tok = session->tokenizer();

  std::vector<int32_t> prompt = o.prompt_ids;
  if (prompt.empty()) {
    if (tok == nullptr) {
      return absl::FailedPreconditionError(StrCat(
          o.session.model_dir, " has no tokenizer.json; give the prompt as --prompt-ids"));
    }
    ASSIGN_OR_RETURN(prompt, tok->Encode(o.prompt));
    if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  }

  GenerateParams params;
  const GenerationConfig& gc = session->generation_config();
  params.max_new_tokens = o.max_new_tokens;
  params.eos_ids.assign(gc.eos_token_ids.begin(), gc.eos_token_ids.end());
  params.ignore_eos = o.ignore_eos;
  params.top_logprobs = o.top_logprobs;
  // Defaults come from generation_config.json, as transformers and vLLM do; flags override them.
  const bool sample = gc.do_sample.value_or(false);
  params.sampling.temperature = o.temperature.value_or(sample ? static_cast<float>(gc.temperature.value_or(1.0)) : 0.0f);
  params.sampling.top_k = o.top_k.value_or(sample ? gc.top_k.value_or(0) : 0);
  params.sampling.top_p = o.top_p.value_or(sample ? static_cast<float>(gc.top_p.value_or(1.0)) : 1.0f);
  params.sampling.seed = o.seed;
  if (params.sampling.temperature < 0) return absl::InvalidArgumentError("--temperature must be >= 0");
  if (!(params.sampling.top_p > 0 && params.sampling.top_p <= 1)) {
    return absl::InvalidArgumentError("--top-p must be in (0, 1]");
  }

  std::unique_ptr<StreamDecoder> stream;
  if (tok != nullptr && !o.json) stream = std::make_unique<StreamDecoder>(*tok, /*skip_special=*/true);
  auto on_token = [&](int32_t id) {
    if (o.json) return;
    if (stream) {
      out << stream->Push(id);
    } else {
      out << id << ' ';
    }
    out.flush();
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
    j["text"] = tok != nullptr ? tok->Decode(r.token_ids, /*skip_special=*/true) : std::string();
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
    if (stream) out << stream->Flush();
    out << "\n";
    err << absl::StrFormat(
        "pinmoe: prompt %d tokens, %.1f tok/s prefill; generated %d tokens, %.1f tok/s decode; "
        "finish: %s\n",
        prompt.size(), prefill_tps, r.token_ids.size(), decode_tps, FinishReasonName(r.finish_reason));
  }
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
