#include "common/model_config.h"

#include <algorithm>

#include "common/str_cat.h"
#include "common/files.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace pinmoe {
namespace {

using Json = nlohmann::json;

class Reader {
 public:
  Reader(const Json& j, std::string_view label) : j_(j), label_(label) {}

  absl::Status Int(std::string_view key, int* out, int min_value = 1) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return Missing(key);
    return ToInt(key, *it, out, min_value);
  }
  absl::Status IntOr(std::string_view key, int* out, int fallback, int min_value = 0) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      *out = fallback;
      return absl::OkStatus();
    }
    return ToInt(key, *it, out, min_value);
  }
  absl::Status BoolOr(std::string_view key, bool* out, bool fallback) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      *out = fallback;
      return absl::OkStatus();
    }
    if (!it->is_boolean()) return Bad(key, "is not true or false");
    *out = it->get<bool>();
    return absl::OkStatus();
  }
  absl::Status DoubleOr(std::string_view key, double* out, double fallback) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      *out = fallback;
      return absl::OkStatus();
    }
    if (!it->is_number()) return Bad(key, "is not a number");
    *out = it->get<double>();
    return absl::OkStatus();
  }
  bool Has(std::string_view key) const {
    auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }
  absl::Status Missing(std::string_view key) const {
    return absl::InvalidArgumentError(StrCat(label_, ": missing key '", key, "'"));
  }
  absl::Status Bad(std::string_view key, std::string_view why) const {
    return absl::InvalidArgumentError(StrCat(label_, ": '", key, "' ", why));
  }

 private:
  absl::Status ToInt(std::string_view key, const Json& v, int* out, int min_value) const {
    if (!v.is_number_integer()) return Bad(key, "is not an integer");
    int64_t x = v.get<int64_t>();
    if (x < min_value || x > (1 << 30)) {
      return Bad(key, StrCat("is ", x, ", outside [", min_value, ", ", 1 << 30, "]"));
    }
    *out = static_cast<int>(x);
    return absl::OkStatus();
  }
  const Json& j_;
  std::string_view label_;
};

}  // namespace

bool ModelConfig::IsMoeLayer(int layer) const {
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
    return false;
  }
  return num_experts > 0 && (layer + 1) % decoder_sparse_step == 0;
}

uint64_t ModelConfig::ExpertBytes() const {
  return 3ull * static_cast<uint64_t>(hidden_size) * static_cast<uint64_t>(moe_intermediate_size) *
         DTypeSize(weight_dtype);
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view label) {
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(StrCat(label, ": not a JSON object"));
  }
  Reader r(j, label);
  ModelConfig c;
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() &&
      !j["architectures"].empty() && j["architectures"][0].is_string()) {
    arch = j["architectures"][0].get<std::string>();
  } else if (j.contains("model_type") && j["model_type"].is_string()) {
    arch = j["model_type"].get<std::string>();
  } else {
    return r.Missing("architectures");
  }
  c.architecture_name = arch;
  if (arch == "Qwen3MoeForCausalLM" || arch == "qwen3_moe") {
    c.architecture = Architecture::kQwen3Moe;
  } else if (arch == "Qwen3NextForCausalLM" || arch == "qwen3_next") {
    c.architecture = Architecture::kQwen3Next;
  } else {
    return absl::UnimplementedError(
        StrCat(label, ": unsupported architecture '", arch,
               "' (supported: Qwen3MoeForCausalLM, Qwen3NextForCausalLM)"));
  }
  const bool next = c.architecture == Architecture::kQwen3Next;

  RETURN_IF_ERROR(r.Int("vocab_size", &c.vocab_size));
  RETURN_IF_ERROR(r.Int("hidden_size", &c.hidden_size));
  RETURN_IF_ERROR(r.Int("num_hidden_layers", &c.num_layers));
  RETURN_IF_ERROR(r.Int("num_attention_heads", &c.num_heads));
  RETURN_IF_ERROR(r.IntOr("num_key_value_heads", &c.num_kv_heads, c.num_heads, 1));
  if (r.Has("head_dim")) {
    RETURN_IF_ERROR(r.Int("head_dim", &c.head_dim));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return r.Bad("hidden_size", "is not a multiple of num_attention_heads and head_dim is absent");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) return r.Bad("head_dim", "must be even for rotary embeddings");
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Bad("num_attention_heads", "is not a multiple of num_key_value_heads");
  }
  if (r.Has("num_experts")) {
    RETURN_IF_ERROR(r.Int("num_experts", &c.num_experts));
  } else if (r.Has("num_local_experts")) {
    RETURN_IF_ERROR(r.Int("num_local_experts", &c.num_experts));
  } else {
    return r.Missing("num_experts");
  }
  RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c.top_k));
  if (c.top_k > c.num_experts) return r.Bad("num_experts_per_tok", "exceeds the number of experts");
  RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c.moe_intermediate_size));
  RETURN_IF_ERROR(r.IntOr("intermediate_size", &c.intermediate_size, 0));
  RETURN_IF_ERROR(r.IntOr("decoder_sparse_step", &c.decoder_sparse_step, 1, 1));
  if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null()) {
    if (!j["mlp_only_layers"].is_array()) return r.Bad("mlp_only_layers", "is not a list");
    for (const auto& v : j["mlp_only_layers"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= c.num_layers) {
        return r.Bad("mlp_only_layers", "holds something other than a layer index");
      }
      c.mlp_only_layers.push_back(v.get<int>());
    }
  }
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l) && c.intermediate_size == 0) {
      return r.Missing("intermediate_size");  // a dense layer needs it
    }
  }
  RETURN_IF_ERROR(r.BoolOr("norm_topk_prob", &c.norm_topk_prob, false));
  RETURN_IF_ERROR(r.BoolOr("tie_word_embeddings", &c.tie_word_embeddings, false));
  double eps = 1e-6;
  RETURN_IF_ERROR(r.DoubleOr("rms_norm_eps", &eps, 1e-6));
  c.rms_norm_eps = static_cast<float>(eps);
  RETURN_IF_ERROR(r.Int("max_position_embeddings", &c.max_position_embeddings));
  bool attention_bias = false;
  RETURN_IF_ERROR(r.BoolOr("attention_bias", &attention_bias, false));
  if (attention_bias) return r.Bad("attention_bias", "is true; pinmoe supports false only");
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return r.Bad("hidden_act", "is not 'silu'");
  }

  // RoPE: transformers 5 nests it in rope_parameters; the hub's files have top-level rope_theta and
  // an optional rope_scaling.
  if (r.Has("rope_parameters")) {
    const Json& rp = j["rope_parameters"];
    if (!rp.is_object()) return r.Bad("rope_parameters", "is not an object");
    Reader rr(rp, StrCat(label, ": rope_parameters"));
    RETURN_IF_ERROR(rr.DoubleOr("rope_theta", &c.rope_theta, 10000.0));
    RETURN_IF_ERROR(rr.DoubleOr("partial_rotary_factor", &c.partial_rotary_factor,
                                next ? 0.25 : 1.0));
    if (rp.contains("rope_type") && rp["rope_type"] != "default") {
      return r.Bad("rope_parameters", StrCat("has rope_type ", rp["rope_type"].dump(),
                                                   "; only 'default' is supported"));
    }
  } else {
    RETURN_IF_ERROR(r.DoubleOr("rope_theta", &c.rope_theta, 10000.0));
    RETURN_IF_ERROR(r.DoubleOr("partial_rotary_factor", &c.partial_rotary_factor, next ? 0.25 : 1.0));
    if (r.Has("rope_scaling")) {
      const Json& rs = j["rope_scaling"];
      std::string type = rs.is_object() && rs.contains("rope_type") ? rs["rope_type"].dump()
                         : rs.is_object() && rs.contains("type")    ? rs["type"].dump()
                                                                    : rs.dump();
      if (type != "\"default\"") {
        return r.Bad("rope_scaling", StrCat("is ", type, "; only unscaled RoPE is supported"));
      }
    }
  }
  if (!(c.rope_theta > 0)) return r.Bad("rope_theta", "must be positive");
  if (!(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1) || c.RotaryDim() % 2 != 0) {
    return r.Bad("partial_rotary_factor", "must give an even number of rotated dimensions");
  }

  // Layer kinds: layer_types when present, else every full_attention_interval-th layer is full
  // attention (the hub's Qwen3-Next config.json has only the interval).
  if (!next) {
    c.layer_kinds.assign(c.num_layers, LayerKind::kFullAttention);
  } else if (r.Has("layer_types")) {
    const Json& lt = j["layer_types"];
    if (!lt.is_array() || static_cast<int>(lt.size()) != c.num_layers) {
      return r.Bad("layer_types", StrCat("is not a list of num_hidden_layers (", c.num_layers, ") kinds"));
    }
    for (const auto& v : lt) {
      if (v == "linear_attention") {
        c.layer_kinds.push_back(LayerKind::kLinearAttention);
      } else if (v == "full_attention") {
        c.layer_kinds.push_back(LayerKind::kFullAttention);
      } else {
        return r.Bad("layer_types", StrCat("holds ", v.dump(), "; expected linear_attention or full_attention"));
      }
    }
  } else {
    int interval = 4;
    RETURN_IF_ERROR(r.IntOr("full_attention_interval", &interval, 4, 1));
    for (int l = 0; l < c.num_layers; ++l) {
      c.layer_kinds.push_back((l + 1) % interval == 0 ? LayerKind::kFullAttention
                                                      : LayerKind::kLinearAttention);
    }
  }
  if (next) {
    RETURN_IF_ERROR(r.Int("linear_num_key_heads", &c.linear_num_key_heads));
    RETURN_IF_ERROR(r.Int("linear_num_value_heads", &c.linear_num_value_heads));
    RETURN_IF_ERROR(r.Int("linear_key_head_dim", &c.linear_key_head_dim));
    RETURN_IF_ERROR(r.Int("linear_value_head_dim", &c.linear_value_head_dim));
    RETURN_IF_ERROR(r.IntOr("linear_conv_kernel_dim", &c.linear_conv_kernel_dim, 4, 1));
    RETURN_IF_ERROR(r.Int("shared_expert_intermediate_size", &c.shared_expert_intermediate_size));
    if (c.linear_num_value_heads % c.linear_num_key_heads != 0) {
      return r.Bad("linear_num_value_heads", "is not a multiple of linear_num_key_heads");
    }
  }

  std::string dtype_name = "bfloat16";
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (j.contains(key) && j[key].is_string()) {
      dtype_name = j[key].get<std::string>();
      break;
    }
  }
  if (dtype_name == "bfloat16") {
    c.weight_dtype = DType::kBF16;
  } else if (dtype_name == "float16") {
    c.weight_dtype = DType::kF16;
  } else if (dtype_name == "float32") {
    c.weight_dtype = DType::kF32;
  } else {
    return r.Bad("torch_dtype", StrCat("is '", dtype_name,
                                             "'; expected bfloat16, float16 or float32"));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = JoinPath(model_dir, "config.json");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, /*max_bytes=*/16 << 20));
  return ParseModelConfig(text, path);
}

absl::StatusOr<GenerationConfig> ParseGenerationConfig(std::string_view json_text,
                                                       std::string_view label) {
  GenerationConfig g;
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(StrCat(label, ": not a JSON object"));
  }
  Reader r(j, label);
  auto it = j.find("eos_token_id");
  if (it != j.end() && !it->is_null()) {
    auto add = [&](const Json& v) -> absl::Status {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 30)) {
        return r.Bad("eos_token_id", StrCat("holds ", v.dump()));
      }
      g.eos_token_ids.push_back(v.get<int>());
      return absl::OkStatus();
    };
    if (it->is_array()) {
      for (const auto& v : *it) RETURN_IF_ERROR(add(v));
    } else {
      RETURN_IF_ERROR(add(*it));
    }
  }
  if (r.Has("do_sample")) {
    bool b;
    RETURN_IF_ERROR(r.BoolOr("do_sample", &b, false));
    g.do_sample = b;
  }
  if (r.Has("temperature")) {
    double v;
    RETURN_IF_ERROR(r.DoubleOr("temperature", &v, 1.0));
    g.temperature = v;
  }
  if (r.Has("top_p")) {
    double v;
    RETURN_IF_ERROR(r.DoubleOr("top_p", &v, 1.0));
    g.top_p = v;
  }
  if (r.Has("top_k")) {
    int v;
    RETURN_IF_ERROR(r.IntOr("top_k", &v, 0));
    g.top_k = v;
  }
  return g;
}

absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& model_dir) {
  const std::string path = JoinPath(model_dir, "generation_config.json");
  if (!FileExists(path)) return GenerationConfig{};
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, /*max_bytes=*/1 << 20));
  return ParseGenerationConfig(text, path);
}

}  // namespace pinmoe
