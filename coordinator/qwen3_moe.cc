#include "coordinator/qwen3_moe.h"

#include <algorithm>
#include <set>

#include "common/str_cat.h"
#include "common/cpu_kernels.h"
#include "common/status.h"
#include "coordinator/model_loading.h"
#include "coordinator/moe_block.h"

namespace pinmoe {

absl::Status CheckQwen3MoeCheckpoint(const ModelConfig& c, Checkpoint& ckpt) {
  // The names config.json implies, checked against the checkpoint before any weight is read.
  std::set<std::string> expected = {"model.embed_tokens.weight", "model.norm.weight"};
  if (!c.tie_word_embeddings) expected.insert("lm_head.weight");
  for (int l = 0; l < c.num_layers; ++l) {
    for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight",
                          "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                          "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                          "self_attn.q_norm.weight", "self_attn.k_norm.weight"}) {
      expected.insert(LayerTensor(l, n));
    }
    if (c.IsMoeLayer(l)) {
      expected.insert(LayerTensor(l, "mlp.gate.weight"));
    } else {
      for (const char* p : {"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
        expected.insert(LayerTensor(l, p));
      }
    }
  }
  AddExpertNames(c, &expected);
  // Tied checkpoints sometimes carry lm_head.weight anyway; it is the embedding and is not read.
  int ignored = 0;
  RETURN_IF_ERROR(CheckTensorNames(ckpt, expected,
                                   c.tie_word_embeddings ? std::vector<std::string>{"lm_head.weight"}
                                                         : std::vector<std::string>{},
                                   &ignored));
  return CheckExpertShapes(c, ckpt);
}

absl::StatusOr<std::unique_ptr<Qwen3MoeModel>> Qwen3MoeModel::Load(const ModelConfig& c,
                                                                   Checkpoint& ckpt,
                                                                   int max_context) {
  if (max_context <= 0 || max_context > c.max_position_embeddings) max_context = c.max_position_embeddings;
  auto m = std::unique_ptr<Qwen3MoeModel>(new Qwen3MoeModel(c, max_context));
  const int64_t h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;

  RETURN_IF_ERROR(CheckQwen3MoeCheckpoint(c, ckpt));

  ASSIGN_OR_RETURN(m->embed_, ckpt.ReadF32("model.embed_tokens.weight", std::vector<int64_t>{c.vocab_size, h}));
  ASSIGN_OR_RETURN(m->norm_, ckpt.ReadF32("model.norm.weight", std::vector<int64_t>{h}));
  if (!c.tie_word_embeddings) {
    ASSIGN_OR_RETURN(m->lm_head_, ckpt.ReadF32("lm_head.weight", std::vector<int64_t>{c.vocab_size, h}));
  }
  m->layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = m->layers_[l];
    auto read = [&](std::string_view n, std::vector<int64_t> shape, std::vector<float>* dst) {
      ASSIGN_OR_RETURN(*dst, ckpt.ReadF32(LayerTensor(l, n), shape));
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(read("input_layernorm.weight", {h}, &L.input_norm));
    RETURN_IF_ERROR(read("post_attention_layernorm.weight", {h}, &L.post_norm));
    RETURN_IF_ERROR(read("self_attn.q_proj.weight", {nh * hd, h}, &L.q_proj));
    RETURN_IF_ERROR(read("self_attn.k_proj.weight", {nkv * hd, h}, &L.k_proj));
    RETURN_IF_ERROR(read("self_attn.v_proj.weight", {nkv * hd, h}, &L.v_proj));
    RETURN_IF_ERROR(read("self_attn.o_proj.weight", {h, nh * hd}, &L.o_proj));
    RETURN_IF_ERROR(read("self_attn.q_norm.weight", {hd}, &L.q_norm));
    RETURN_IF_ERROR(read("self_attn.k_norm.weight", {hd}, &L.k_norm));
    L.moe = c.IsMoeLayer(l);
    if (L.moe) {
      RETURN_IF_ERROR(read("mlp.gate.weight", {c.num_experts, h}, &L.router));
    } else {
      const int64_t inter = c.intermediate_size;
      RETURN_IF_ERROR(read("mlp.gate_proj.weight", {inter, h}, &L.mlp_gate));
      RETURN_IF_ERROR(read("mlp.up_proj.weight", {inter, h}, &L.mlp_up));
      RETURN_IF_ERROR(read("mlp.down_proj.weight", {h, inter}, &L.mlp_down));
    }
    L.cache.kv_heads = c.num_kv_heads;
    L.cache.head_dim = c.head_dim;
  }
  return m;
}

void Qwen3MoeModel::Reset() {
  position_ = 0;
  for (auto& L : layers_) {
    L.cache.length = 0;
    L.cache.k.clear();
    L.cache.v.clear();
  }
}

absl::Status Qwen3MoeModel::Attention(Layer& L, const float* h, int tokens, float* out) {
  const int hd = config_.head_dim, nh = config_.num_heads, nkv = config_.num_kv_heads;
  const size_t hidden = config_.hidden_size;
  std::vector<float> q(static_cast<size_t>(tokens) * nh * hd);
  std::vector<float> k(static_cast<size_t>(tokens) * nkv * hd), v(k.size());
  MatMulTransposed(h, L.q_proj.data(), q.data(), tokens, hidden, static_cast<size_t>(nh) * hd);
  MatMulTransposed(h, L.k_proj.data(), k.data(), tokens, hidden, static_cast<size_t>(nkv) * hd);
  MatMulTransposed(h, L.v_proj.data(), v.data(), tokens, hidden, static_cast<size_t>(nkv) * hd);
  // Per-head RMSNorm on q and k, then RoPE at each token's position.
  std::vector<float> attn(q.size());
  QkNormRopeAttend(rope_, L.q_norm.data(), L.k_norm.data(), config_.rms_norm_eps, position_, tokens, nh, q.data(),
                   k, v, &L.cache, attn.data());
  MatMulTransposed(attn.data(), L.o_proj.data(), out, tokens, static_cast<size_t>(nh) * hd, hidden);
  return absl::OkStatus();
}

absl::Status Qwen3MoeModel::Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) {
  const int tokens = static_cast<int>(ids.size());
  std::vector<float> x;
  RETURN_IF_ERROR(EmbedTokens(config_, embed_, ids, position_, max_context_, &x));
  const size_t hidden = config_.hidden_size;
  std::vector<float> h(x.size()), y(x.size());
  for (int l = 0; l < config_.num_layers; ++l) {
    Layer& L = layers_[l];
    RmsNorm(x.data(), L.input_norm.data(), h.data(), tokens, hidden, config_.rms_norm_eps);
    RETURN_IF_ERROR(Attention(L, h.data(), tokens, y.data()));
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    RmsNorm(x.data(), L.post_norm.data(), h.data(), tokens, hidden, config_.rms_norm_eps);
    if (L.moe) {
      PINMOE_CHECK(experts_ != nullptr);
      RETURN_IF_ERROR(RoutedMoe(config_, *experts_, l, L.router.data(), h.data(), tokens, y.data()));
    } else {
      std::vector<float> scratch(2 * static_cast<size_t>(tokens) * config_.intermediate_size);
      SwigluFfn(h.data(), L.mlp_gate.data(), L.mlp_up.data(), L.mlp_down.data(), y.data(), tokens,
                hidden, config_.intermediate_size, scratch.data());
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }
  position_ += tokens;
  LastTokenLogits(config_, x.data() + (tokens - 1) * hidden, norm_.data(),
                  config_.tie_word_embeddings ? embed_.data() : lm_head_.data(), last_logits);
  return absl::OkStatus();
}

}  // namespace pinmoe
