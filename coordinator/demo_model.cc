#include "coordinator/demo_model.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/str_cat.h"
#include "common/dtype.h"
#include "common/files.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "nlohmann/json.hpp"
#include "worker/expert_store.h"

namespace pinmoe {
namespace {

using Json = nlohmann::json;

constexpr int kHidden = 128, kLayers = 4, kHeads = 4, kKvHeads = 2, kHeadDim = 32, kExperts = 16,
              kTopK = 4, kMoeInter = 64;

// The Qwen2/Qwen3 split pattern; the generated tokenizer uses the same pre-tokenizer as the real one.
constexpr const char* kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

Json ByteLevelTokenizer() {
  Json vocab = Json::object();
  bool direct[256] = {};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xa1; b <= 0xac; ++b) direct[b] = true;
  for (int b = 0xae; b <= 0xff; ++b) direct[b] = true;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = direct[b] ? static_cast<uint32_t>(b) : next++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
    vocab[s] = b;
  }
  Json added = Json::array();
  int id = 256;
  for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", id++}, {"content", t}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  Json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                     {"use_regex", false}};
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", kQwenPattern}}}, {"behavior", "Isolated"},
               {"invert", false}},
              byte_level}}}},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", Json::array()}}}};
}

class WeightMaker {
 public:
  explicit WeightMaker(uint64_t seed) : rng_(seed) {}
  TensorToWrite Make(std::string name, std::vector<int64_t> shape, float std, float mean = 0.0f) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    std::normal_distribution<float> dist(mean, std);
    TensorToWrite t{std::move(name), DType::kBF16, std::move(shape), std::vector<uint8_t>(2 * n)};
    for (size_t i = 0; i < n; ++i) {
      uint16_t b = F32ToBf16(dist(rng_));
      t.bytes[2 * i] = static_cast<uint8_t>(b & 0xff);
      t.bytes[2 * i + 1] = static_cast<uint8_t>(b >> 8);
    }
    return t;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

std::string DefaultDemoModelDir() {
  const char* env = std::getenv("PINMOE_DEMO_DIR");
  if (env != nullptr && *env != '\0') return env;
  return JoinPath(ExecutableDir(), "demo-model");
}

absl::Status WriteDemoModel(const DemoModelOptions& options) {
  if (::mkdir(options.out_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(StrCat(options.out_dir, ": cannot create directory"));
  }
  std::string tokenizer_text;
  Json eos = Json::array();
  if (!options.tokenizer_json.empty()) {
    ASSIGN_OR_RETURN(tokenizer_text, ReadFileToString(options.tokenizer_json, 512ull << 20));
  } else {
    tokenizer_text = ByteLevelTokenizer().dump();
  }
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromJson(tokenizer_text, options.tokenizer_json));
  for (const char* t : {"<|im_end|>", "<|endoftext|>"}) {
    if (auto id = tokenizer->TokenToId(t)) eos.push_back(*id);
  }
  const int vocab = (tokenizer->size() + 127) / 128 * 128;

  Json config = {{"architectures", {"Qwen3MoeForCausalLM"}},
                 {"model_type", "qwen3_moe"},
                 {"vocab_size", vocab},
                 {"hidden_size", kHidden},
                 {"intermediate_size", 4 * kHidden},
                 {"moe_intermediate_size", kMoeInter},
                 {"num_hidden_layers", kLayers},
                 {"num_attention_heads", kHeads},
                 {"num_key_value_heads", kKvHeads},
                 {"head_dim", kHeadDim},
                 {"num_experts", kExperts},
                 {"num_experts_per_tok", kTopK},
                 {"decoder_sparse_step", 1},
                 {"mlp_only_layers", Json::array()},
                 {"norm_topk_prob", true},
                 {"rms_norm_eps", 1e-6},
                 {"rope_theta", 1000000.0},
                 {"max_position_embeddings", 4096},
                 {"tie_word_embeddings", false},
                 {"hidden_act", "silu"},
                 {"attention_bias", false},
                 {"torch_dtype", "bfloat16"},
                 {"pinmoe_demo", "random weights generated by `pinmoe make-demo`"}};
  RETURN_IF_ERROR(WriteStringToFile(JoinPath(options.out_dir, "config.json"), config.dump(2)));
  Json gen = {{"eos_token_id", eos}, {"do_sample", true}, {"temperature", 0.7}, {"top_k", 20},
              {"top_p", 0.9}};
  RETURN_IF_ERROR(WriteStringToFile(JoinPath(options.out_dir, "generation_config.json"), gen.dump(2)));
  RETURN_IF_ERROR(WriteStringToFile(JoinPath(options.out_dir, "tokenizer.json"), tokenizer_text));
  // The tokenizer's own tokenizer_config.json (it holds the chat template), when it has one beside it.
  if (!options.tokenizer_json.empty()) {
    const size_t slash = options.tokenizer_json.rfind('/');
    const std::string config = JoinPath(
        slash == std::string::npos ? "." : options.tokenizer_json.substr(0, slash), "tokenizer_config.json");
    if (FileExists(config)) {
      ASSIGN_OR_RETURN(std::string text, ReadFileToString(config, 64u << 20));
      RETURN_IF_ERROR(WriteStringToFile(JoinPath(options.out_dir, "tokenizer_config.json"), text));
    }
  }

  WeightMaker w(options.seed);
  const float in_std = 1.0f / std::sqrt(static_cast<float>(kHidden));
  std::vector<TensorToWrite> tensors;
  tensors.push_back(w.Make("model.embed_tokens.weight", {vocab, kHidden}, 1.0f));
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = StrCat("model.layers.", l, ".");
    tensors.push_back(w.Make(p + "input_layernorm.weight", {kHidden}, 0.1f, 1.0f));
    tensors.push_back(w.Make(p + "post_attention_layernorm.weight", {kHidden}, 0.1f, 1.0f));
    tensors.push_back(w.Make(p + "self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden}, in_std));
    tensors.push_back(w.Make(p + "self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden}, in_std));
    tensors.push_back(w.Make(p + "self_attn.v_proj.weight", {kKvHeads * kHeadDim, kHidden}, in_std));
    tensors.push_back(w.Make(p + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim}, in_std));
    tensors.push_back(w.Make(p + "self_attn.q_norm.weight", {kHeadDim}, 0.1f, 1.0f));
    tensors.push_back(w.Make(p + "self_attn.k_norm.weight", {kHeadDim}, 0.1f, 1.0f));
    tensors.push_back(w.Make(p + "mlp.gate.weight", {kExperts, kHidden}, 2 * in_std));
    for (int e = 0; e < kExperts; ++e) {
      tensors.push_back(w.Make(ExpertTensorName(l, e, "gate_proj"), {kMoeInter, kHidden}, in_std));
      tensors.push_back(w.Make(ExpertTensorName(l, e, "up_proj"), {kMoeInter, kHidden}, in_std));
      tensors.push_back(w.Make(ExpertTensorName(l, e, "down_proj"), {kHidden, kMoeInter},
                               1.0f / std::sqrt(static_cast<float>(kMoeInter))));
    }
  }
  tensors.push_back(w.Make("model.norm.weight", {kHidden}, 0.1f, 1.0f));
  tensors.push_back(w.Make("lm_head.weight", {vocab, kHidden}, 4 * in_std));
  RETURN_IF_ERROR(WriteSafetensors(JoinPath(options.out_dir, "model.safetensors"), tensors));
  return WriteStringToFile(JoinPath(options.out_dir, "README.md"),
                           "# pinmoe demo model\n\nA Qwen3-MoE checkpoint in the Hugging Face hub's "
                           "format with **random weights**, written by `pinmoe make-demo`.\nIt exists "
                           "so that pinmoe runs end to end without a download; its output is "
                           "meaningless.\n");
}

}  // namespace pinmoe
