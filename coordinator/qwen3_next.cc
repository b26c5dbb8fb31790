#include "coordinator/qwen3_next.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "common/cpu_kernels.h"
#include "common/status.h"
#include "common/str_cat.h"
#include "coordinator/model_loading.h"
#include "coordinator/moe_block.h"

namespace pinmoe {
namespace {

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void AddOne(std::vector<float>* w) {
  for (float& v : *w) v += 1.0f;
}

}  // namespace

absl::StatusOr<int> CheckQwen3NextCheckpoint(const ModelConfig& c, Checkpoint& ckpt) {
  static const char* kAttn[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                "self_attn.q_norm.weight", "self_attn.k_norm.weight"};
  static const char* kDelta[] = {"linear_attn.in_proj_qkvz.weight", "linear_attn.in_proj_ba.weight",
                                 "linear_attn.conv1d.weight", "linear_attn.dt_bias",
                                 "linear_attn.A_log", "linear_attn.norm.weight",
                                 "linear_attn.out_proj.weight"};
  // Layer kinds first, with an error that says which layer disagrees with the checkpoint.
  for (int l = 0; l < c.num_layers; ++l) {
    const bool linear = c.layer_kinds[l] == LayerKind::kLinearAttention;
    const bool has_attn = ckpt.Has(LayerTensor(l, kAttn[0]));
    const bool has_delta = ckpt.Has(LayerTensor(l, kDelta[0]));
    if ((linear && !has_delta && has_attn) || (!linear && !has_attn && has_delta)) {
      return absl::InvalidArgumentError(StrCat(
          ckpt.dir(), ": config.json makes layer ", l, " ", linear ? "linear_attention" : "full_attention",
          " but the checkpoint holds ", linear ? "self_attn" : "linear_attn",
          " weights there (layer_types / full_attention_interval disagree with the tensors)"));
    }
  }
  std::set<std::string> expected = {"model.embed_tokens.weight", "model.norm.weight"};
  if (!c.tie_word_embeddings) expected.insert("lm_head.weight");
  for (int l = 0; l < c.num_layers; ++l) {
    expected.insert(LayerTensor(l, "input_layernorm.weight"));
    expected.insert(LayerTensor(l, "post_attention_layernorm.weight"));
    if (c.layer_kinds[l] == LayerKind::kLinearAttention) {
      for (const char* n : kDelta) expected.insert(LayerTensor(l, n));
    } else {
      for (const char* n : kAttn) expected.insert(LayerTensor(l, n));
    }
    if (c.IsMoeLayer(l)) {
      for (const char* n : {"mlp.gate.weight", "mlp.shared_expert.gate_proj.weight",
                            "mlp.shared_expert.up_proj.weight", "mlp.shared_expert.down_proj.weight",
                            "mlp.shared_expert_gate.weight"}) {
        expected.insert(LayerTensor(l, n));
      }
    } else {
      for (const char* n : {"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
        expected.insert(LayerTensor(l, n));
      }
    }
  }
  AddExpertNames(c, &expected);
  int ignored = 0;
  std::vector<std::string> ignore = {"mtp."};
  if (c.tie_word_embeddings) ignore.push_back("lm_head.weight");
  RETURN_IF_ERROR(CheckTensorNames(ckpt, expected, ignore, &ignored));
  RETURN_IF_ERROR(CheckExpertShapes(c, ckpt));
  return ignored;

}

absl::StatusOr<std::unique_ptr<Qwen3NextModel>> Qwen3NextModel::Load(const ModelConfig& c,
                                                                    Checkpoint& ckpt,
                                                                    int max_context) {
  if (max_context <= 0 || max_context > c.max_position_embeddings) max_context = c.max_position_embeddings;
  auto m = std::unique_ptr<Qwen3NextModel>(new Qwen3NextModel(c, max_context));
  const int64_t h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t nk = c.linear_num_key_heads, nv = c.linear_num_value_heads;
  const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
  const int64_t key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
  const int64_t kernel = c.linear_conv_kernel_dim;

  ASSIGN_OR_RETURN(const int ignored, CheckQwen3NextCheckpoint(c, ckpt));
  if (ignored > 0) {
    m->notes_.push_back(StrCat("ignoring ", ignored,
                               " mtp.* tensors (multi-token prediction is not used yet)"));
  }

  auto read = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float>* dst) {
    ASSIGN_OR_RETURN(*dst, ckpt.ReadF32(name, shape));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(read("model.embed_tokens.weight", {c.vocab_size, h}, &m->embed_));
  RETURN_IF_ERROR(read("model.norm.weight", {h}, &m->norm_));
  AddOne(&m->norm_);
  if (!c.tie_word_embeddings) RETURN_IF_ERROR(read("lm_head.weight", {c.vocab_size, h}, &m->lm_head_));
  m->layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = m->layers_[l];
    L.kind = c.layer_kinds[l];
    auto lr = [&](std::string_view n, std::vector<int64_t> shape, std::vector<float>* dst) {
      return read(LayerTensor(l, n), std::move(shape), dst);
    };
    RETURN_IF_ERROR(lr("input_layernorm.weight", {h}, &L.input_norm));
    RETURN_IF_ERROR(lr("post_attention_layernorm.weight", {h}, &L.post_norm));
    AddOne(&L.input_norm);
    AddOne(&L.post_norm);
    if (L.kind == LayerKind::kFullAttention) {
      FullAttention& a = L.attn;
      RETURN_IF_ERROR(lr("self_attn.q_proj.weight", {nh * hd * 2, h}, &a.q_proj));
      RETURN_IF_ERROR(lr("self_attn.k_proj.weight", {nkv * hd, h}, &a.k_proj));
      RETURN_IF_ERROR(lr("self_attn.v_proj.weight", {nkv * hd, h}, &a.v_proj));
      RETURN_IF_ERROR(lr("self_attn.o_proj.weight", {h, nh * hd}, &a.o_proj));
      RETURN_IF_ERROR(lr("self_attn.q_norm.weight", {hd}, &a.q_norm));
      RETURN_IF_ERROR(lr("self_attn.k_norm.weight", {hd}, &a.k_norm));
      AddOne(&a.q_norm);
      AddOne(&a.k_norm);
      a.cache.kv_heads = c.num_kv_heads;
      a.cache.head_dim = c.head_dim;
    } else {
      DeltaNet& d = L.delta;
      RETURN_IF_ERROR(lr("linear_attn.in_proj_qkvz.weight", {2 * key_dim + 2 * value_dim, h}, &d.in_proj_qkvz));
      RETURN_IF_ERROR(lr("linear_attn.in_proj_ba.weight", {2 * nv, h}, &d.in_proj_ba));
      RETURN_IF_ERROR(lr("linear_attn.conv1d.weight", {conv_dim, 1, kernel}, &d.conv));
      RETURN_IF_ERROR(lr("linear_attn.dt_bias", {nv}, &d.dt_bias));
      RETURN_IF_ERROR(lr("linear_attn.A_log", {nv}, &d.a_log));
      RETURN_IF_ERROR(lr("linear_attn.norm.weight", {dv}, &d.norm));
      RETURN_IF_ERROR(lr("linear_attn.out_proj.weight", {h, value_dim}, &d.out_proj));
      d.conv_state.assign(static_cast<size_t>((kernel - 1) * conv_dim), 0.0f);
      d.state.assign(static_cast<size_t>(nv * dk * dv), 0.0f);
    }
    L.moe = c.IsMoeLayer(l);
    if (L.moe) {
      const int64_t si = c.shared_expert_intermediate_size;
      RETURN_IF_ERROR(lr("mlp.gate.weight", {c.num_experts, h}, &L.router));
      RETURN_IF_ERROR(lr("mlp.shared_expert.gate_proj.weight", {si, h}, &L.shared_gate));
      RETURN_IF_ERROR(lr("mlp.shared_expert.up_proj.weight", {si, h}, &L.shared_up));
      RETURN_IF_ERROR(lr("mlp.shared_expert.down_proj.weight", {h, si}, &L.shared_down));
      RETURN_IF_ERROR(lr("mlp.shared_expert_gate.weight", {1, h}, &L.shared_scale));
    } else {
      const int64_t inter = c.intermediate_size;
      RETURN_IF_ERROR(lr("mlp.gate_proj.weight", {inter, h}, &L.shared_gate));
      RETURN_IF_ERROR(lr("mlp.up_proj.weight", {inter, h}, &L.shared_up));
      RETURN_IF_ERROR(lr("mlp.down_proj.weight", {h, inter}, &L.shared_down));
    }
  }
  return m;
}

void Qwen3NextModel::Reset() {
  position_ = 0;
  for (auto& L : layers_) {
    L.attn.cache.length = 0;
    L.attn.cache.k.clear();
    L.attn.cache.v.clear();
    std::fill(L.delta.conv_state.begin(), L.delta.conv_state.end(), 0.0f);
    std::fill(L.delta.state.begin(), L.delta.state.end(), 0.0f);
  }
}

void Qwen3NextModel::Attention(FullAttention& a, const float* h, int tokens, float* out) {
  const int hd = config_.head_dim, nh = config_.num_heads, nkv = config_.num_kv_heads;
  const size_t hidden = config_.hidden_size;
  std::vector<float> qg(static_cast<size_t>(tokens) * nh * hd * 2);
  std::vector<float> k(static_cast<size_t>(tokens) * nkv * hd), v(k.size());
  MatMulTransposed(h, a.q_proj.data(), qg.data(), tokens, hidden, qg.size() / tokens);
  MatMulTransposed(h, a.k_proj.data(), k.data(), tokens, hidden, static_cast<size_t>(nkv) * hd);
  MatMulTransposed(h, a.v_proj.data(), v.data(), tokens, hidden, static_cast<size_t>(nkv) * hd);
  // Split each head's [query | gate] halves.
  std::vector<float> q(static_cast<size_t>(tokens) * nh * hd), gate(q.size());
  for (size_t th = 0; th < static_cast<size_t>(tokens) * nh; ++th) {
    std::copy_n(qg.data() + th * 2 * hd, hd, q.data() + th * hd);
    std::copy_n(qg.data() + th * 2 * hd + hd, hd, gate.data() + th * hd);
  }
  std::vector<float> attn(q.size());
  QkNormRopeAttend(rope_, a.q_norm.data(), a.k_norm.data(), config_.rms_norm_eps, position_, tokens, nh, q.data(),
                   k, v, &a.cache, attn.data());
  for (size_t i = 0; i < attn.size(); ++i) attn[i] *= Sigmoid(gate[i]);
  MatMulTransposed(attn.data(), a.o_proj.data(), out, tokens, static_cast<size_t>(nh) * hd, hidden);
}

void Qwen3NextModel::GatedDeltaNet(DeltaNet& d, const float* h, int tokens, float* out) {
  const int nk = config_.linear_num_key_heads, nv = config_.linear_num_value_heads;
  const int dk = config_.linear_key_head_dim, dv = config_.linear_value_head_dim;
  const int kernel = config_.linear_conv_kernel_dim;
  const int key_dim = nk * dk, value_dim = nv * dv;
  const size_t hidden = config_.hidden_size;
  const int qkvz_dim = 2 * key_dim + 2 * value_dim;
  std::vector<float> qkvz(static_cast<size_t>(tokens) * qkvz_dim), ba(static_cast<size_t>(tokens) * 2 * nv);
  MatMulTransposed(h, d.in_proj_qkvz.data(), qkvz.data(), tokens, hidden, qkvz_dim);
  MatMulTransposed(h, d.in_proj_ba.data(), ba.data(), tokens, hidden, 2 * nv);

  DeltaNetStep step;
  step.key_heads = nk;
  step.value_heads = nv;
  step.key_head_dim = dk;
  step.value_head_dim = dv;
  step.conv_kernel = kernel;
  step.eps = static_cast<float>(config_.rms_norm_eps);
  step.conv = d.conv.data();
  step.a_log = d.a_log.data();
  step.dt_bias = d.dt_bias.data();
  step.norm = d.norm.data();
  step.conv_state = d.conv_state.data();
  step.state = d.state.data();
  std::vector<float> core(static_cast<size_t>(tokens) * value_dim);
  GatedDeltaRule(step, qkvz.data(), qkvz_dim, ba.data(), 2 * nv, tokens, core.data());
  MatMulTransposed(core.data(), d.out_proj.data(), out, tokens, value_dim, hidden);
}

absl::Status Qwen3NextModel::Mlp(int index, Layer& L, const float* h, int tokens, float* out) {
  const size_t hidden = config_.hidden_size;
  const size_t inter = L.moe ? config_.shared_expert_intermediate_size : config_.intermediate_size;
  std::vector<float> shared(static_cast<size_t>(tokens) * hidden);
  std::vector<float> scratch(2 * static_cast<size_t>(tokens) * inter);
  SwigluFfn(h, L.shared_gate.data(), L.shared_up.data(), L.shared_down.data(), shared.data(), tokens,
            hidden, inter, scratch.data());
  if (!L.moe) {
    std::copy(shared.begin(), shared.end(), out);
    return absl::OkStatus();
  }
  PINMOE_CHECK(experts_ != nullptr);
  RETURN_IF_ERROR(RoutedMoe(config_, *experts_, index, L.router.data(), h, tokens, out));
  for (int t = 0; t < tokens; ++t) {
    const float scale = Sigmoid(Dot(h + t * hidden, L.shared_scale.data(), hidden));
    for (size_t i = 0; i < hidden; ++i) out[t * hidden + i] += scale * shared[t * hidden + i];
  }
  return absl::OkStatus();
}

absl::Status Qwen3NextModel::Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) {
  const int tokens = static_cast<int>(ids.size());
  std::vector<float> x;
  RETURN_IF_ERROR(EmbedTokens(config_, embed_, ids, position_, max_context_, &x));
  const size_t hidden = config_.hidden_size;
  std::vector<float> h(x.size()), y(x.size());
  for (int l = 0; l < config_.num_layers; ++l) {
    Layer& L = layers_[l];
    RmsNorm(x.data(), L.input_norm.data(), h.data(), tokens, hidden, config_.rms_norm_eps);
    if (L.kind == LayerKind::kFullAttention) {
      Attention(L.attn, h.data(), tokens, y.data());
    } else {
      GatedDeltaNet(L.delta, h.data(), tokens, y.data());
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    RmsNorm(x.data(), L.post_norm.data(), h.data(), tokens, hidden, config_.rms_norm_eps);
    RETURN_IF_ERROR(Mlp(l, L, h.data(), tokens, y.data()));
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }
  position_ += tokens;
  LastTokenLogits(config_, x.data() + (tokens - 1) * hidden, norm_.data(),
                  config_.tie_word_embeddings ? embed_.data() : lm_head_.data(), last_logits);
  return absl::OkStatus();
}

}  // namespace pinmoe
