#include "coordinator/gpu/gpu_qwen3_moe.h"

#include <algorithm>

#include "common/status.h"
#include "coordinator/model_loading.h"
#include "coordinator/qwen3_moe.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {

absl::StatusOr<std::unique_ptr<GpuQwen3Moe>> GpuQwen3Moe::Load(const ModelConfig& c, Checkpoint* ckpt,
                                                               const GpuModelOptions& options) {
  auto m = std::unique_ptr<GpuQwen3Moe>(new GpuQwen3Moe());
  if (options.synthetic_seed == 0 && ckpt != nullptr) RETURN_IF_ERROR(CheckQwen3MoeCheckpoint(c, *ckpt));
  RETURN_IF_ERROR(m->InitCommon(c, ckpt, options, /*final_norm_add=*/0.f));
  DeviceWeights& w = *m->weights_;
  const int64_t h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  m->layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = m->layers_[l];
    ASSIGN_OR_RETURN(L.input_norm, w.Vector(LayerTensor(l, "input_layernorm.weight"), h));
    ASSIGN_OR_RETURN(L.post_norm, w.Vector(LayerTensor(l, "post_attention_layernorm.weight"), h));
    const std::vector<std::string> qkv = {LayerTensor(l, "self_attn.q_proj.weight"),
                                          LayerTensor(l, "self_attn.k_proj.weight"),
                                          LayerTensor(l, "self_attn.v_proj.weight")};
    const std::vector<int64_t> qkv_rows = {nh * hd, nkv * hd, nkv * hd};
    ASSIGN_OR_RETURN(L.qkv, w.Matrix(qkv, qkv_rows, h));
    ASSIGN_OR_RETURN(L.o, w.Matrix(LayerTensor(l, "self_attn.o_proj.weight"), h, nh * hd));
    ASSIGN_OR_RETURN(L.q_norm, w.Vector(LayerTensor(l, "self_attn.q_norm.weight"), hd));
    ASSIGN_OR_RETURN(L.k_norm, w.Vector(LayerTensor(l, "self_attn.k_norm.weight"), hd));
    L.moe = c.IsMoeLayer(l);
    if (L.moe) {
      ASSIGN_OR_RETURN(L.router, w.Matrix(LayerTensor(l, "mlp.gate.weight"), c.num_experts, h));
    } else {
      RETURN_IF_ERROR(m->LoadDenseMlp(l, &L.gate_up, &L.down));
    }
    RETURN_IF_ERROR(m->AllocCache(&L.k_cache));
    RETURN_IF_ERROR(m->AllocCache(&L.v_cache));
  }
  const size_t t = options.max_step_tokens;
  RETURN_IF_ERROR(m->Alloc(t * (nh + 2 * nkv) * hd, &m->qkv_));
  RETURN_IF_ERROR(m->Alloc(t * nh * hd, &m->q_));
  RETURN_IF_ERROR(m->Alloc(t * nh * hd, &m->attn_));
  RETURN_IF_ERROR(m->Alloc(t * 2 * c.intermediate_size, &m->gate_up_));
  RETURN_IF_ERROR(m->Alloc(t * c.intermediate_size, &m->act_));
  RETURN_IF_ERROR(m->linear_->Reserve(t * std::max<int64_t>({h, nh * hd, c.intermediate_size})));
  return m;
}

absl::Status GpuQwen3Moe::EnqueueLayers(int n, int variant) {
  const ModelConfig& c = config_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = layers_[l];
    // Attention block: x += o_proj(attention(norm(x))).
    RETURN_IF_ERROR(linear_->RunNormed(L.qkv, x_, GemvNorm{L.input_norm, eps, nullptr}, n, qkv_,
                                       /*accumulate=*/false));
    const QkNormRopeCacheArgs qa =
        FusedQkvLayout(qkv_, /*gated_query=*/false, L.q_norm, L.k_norm, q_, L.k_cache, L.v_cache);
    RETURN_IF_ERROR(EnqueueAttention(qa, n, L.qkv.bf16, attn_));
    RETURN_IF_ERROR(linear_->Run(L.o, attn_, n, x_, /*accumulate=*/true));
    // MLP block: routed experts, or a dense SwiGLU layer.
    if (L.moe) {
      RETURN_IF_ERROR(EnqueueRoutedMoe(l, L.router, L.post_norm, n, variant, [] { return absl::OkStatus(); }));
    } else {
      RETURN_IF_ERROR(EnqueueDenseMlp(L.gate_up, L.down, L.post_norm, c.intermediate_size, n, gate_up_, act_));
    }
  }
  return absl::OkStatus();
}

}  // namespace pinmoe
