#include "coordinator/gpu/gpu_qwen3_next.h"

#include <algorithm>

#include "common/status.h"
#include "common/str_cat.h"
#include "coordinator/model_loading.h"
#include "coordinator/qwen3_next.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {

absl::StatusOr<std::unique_ptr<GpuQwen3Next>> GpuQwen3Next::Load(const ModelConfig& c, Checkpoint* ckpt,
                                                                 const GpuModelOptions& options) {
  auto m = std::unique_ptr<GpuQwen3Next>(new GpuQwen3Next());
  if (options.synthetic_seed == 0 && ckpt != nullptr) {
    ASSIGN_OR_RETURN(const int ignored, CheckQwen3NextCheckpoint(c, *ckpt));
    if (ignored > 0) {
      m->notes_.push_back(StrCat("ignoring ", ignored, " mtp.* tensors (multi-token prediction is not used yet)"));
    }
  }
  RETURN_IF_ERROR(m->InitCommon(c, ckpt, options, /*final_norm_add=*/1.f));
  DeviceWeights& w = *m->weights_;
  const int64_t h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t nk = c.linear_num_key_heads, nv = c.linear_num_value_heads;
  const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
  const int64_t key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
  const int64_t qkvz_dim = 2 * key_dim + 2 * value_dim, kernel = c.linear_conv_kernel_dim;
  m->conv_state_floats_ = static_cast<size_t>(std::max<int64_t>(kernel - 1, 1)) * conv_dim;
  m->state_floats_ = static_cast<size_t>(nv) * dk * dv;
  int64_t widest_mlp = 1;
  m->layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = m->layers_[l];
    L.kind = c.layer_kinds[l];
    ASSIGN_OR_RETURN(L.input_norm, w.Vector(LayerTensor(l, "input_layernorm.weight"), h, 1.f));
    ASSIGN_OR_RETURN(L.post_norm, w.Vector(LayerTensor(l, "post_attention_layernorm.weight"), h, 1.f));
    if (L.kind == LayerKind::kFullAttention) {
      const std::vector<std::string> names = {LayerTensor(l, "self_attn.q_proj.weight"),
                                              LayerTensor(l, "self_attn.k_proj.weight"),
                                              LayerTensor(l, "self_attn.v_proj.weight")};
      const std::vector<int64_t> rows = {2 * nh * hd, nkv * hd, nkv * hd};
      ASSIGN_OR_RETURN(L.qkv, w.Matrix(names, rows, h));
      ASSIGN_OR_RETURN(L.o, w.Matrix(LayerTensor(l, "self_attn.o_proj.weight"), h, nh * hd));
      ASSIGN_OR_RETURN(L.q_norm, w.Vector(LayerTensor(l, "self_attn.q_norm.weight"), hd, 1.f));
      ASSIGN_OR_RETURN(L.k_norm, w.Vector(LayerTensor(l, "self_attn.k_norm.weight"), hd, 1.f));
      RETURN_IF_ERROR(m->AllocCache(&L.k_cache));
      RETURN_IF_ERROR(m->AllocCache(&L.v_cache));
    } else {
      const std::vector<std::string> names = {LayerTensor(l, "linear_attn.in_proj_qkvz.weight"),
                                              LayerTensor(l, "linear_attn.in_proj_ba.weight")};
      const std::vector<int64_t> rows = {qkvz_dim, 2 * nv};
      ASSIGN_OR_RETURN(L.in_proj, w.Matrix(names, rows, h));
      ASSIGN_OR_RETURN(L.out_proj, w.Matrix(LayerTensor(l, "linear_attn.out_proj.weight"), h, value_dim));
      ASSIGN_OR_RETURN(L.conv_w, w.Small(LayerTensor(l, "linear_attn.conv1d.weight"), {conv_dim, 1, kernel}, 0.f));
      ASSIGN_OR_RETURN(L.a_log, w.Small(LayerTensor(l, "linear_attn.A_log"), {nv}, 1.f));
      ASSIGN_OR_RETURN(L.dt_bias, w.Small(LayerTensor(l, "linear_attn.dt_bias"), {nv}, 1.f));
      ASSIGN_OR_RETURN(L.delta_norm, w.Vector(LayerTensor(l, "linear_attn.norm.weight"), dv));
      RETURN_IF_ERROR(m->Alloc(m->conv_state_floats_ * options.max_batch, &L.conv_state));
      RETURN_IF_ERROR(m->Alloc(m->state_floats_ * options.max_batch, &L.state));
    }
    L.moe = c.IsMoeLayer(l);
    if (L.moe) {
      const int64_t si = c.shared_expert_intermediate_size;
      ASSIGN_OR_RETURN(L.router, w.Matrix(LayerTensor(l, "mlp.gate.weight"), c.num_experts, h));
      const std::vector<std::string> names = {LayerTensor(l, "mlp.shared_expert.gate_proj.weight"),
                                              LayerTensor(l, "mlp.shared_expert.up_proj.weight"),
                                              LayerTensor(l, "mlp.shared_expert_gate.weight")};
      const std::vector<int64_t> rows = {si, si, 1};
      ASSIGN_OR_RETURN(L.gate_up, w.Matrix(names, rows, h));
      ASSIGN_OR_RETURN(L.down, w.Matrix(LayerTensor(l, "mlp.shared_expert.down_proj.weight"), h, si));
      widest_mlp = std::max(widest_mlp, si);
    } else {
      RETURN_IF_ERROR(m->LoadDenseMlp(l, &L.gate_up, &L.down));
      widest_mlp = std::max<int64_t>(widest_mlp, c.intermediate_size);
    }
  }
  const size_t t = options.max_step_tokens;
  RETURN_IF_ERROR(m->Alloc(t * (2 * nh + 2 * nkv) * hd, &m->qkv_));
  RETURN_IF_ERROR(m->Alloc(t * nh * hd, &m->q_));
  RETURN_IF_ERROR(m->Alloc(t * nh * hd, &m->attn_));
  RETURN_IF_ERROR(m->Alloc(t * (qkvz_dim + 2 * nv), &m->proj_));
  RETURN_IF_ERROR(m->Alloc(t * conv_dim, &m->conv_out_));
  RETURN_IF_ERROR(m->Alloc(t * value_dim, &m->core_));
  RETURN_IF_ERROR(m->Alloc(t * (2 * widest_mlp + 1), &m->gate_up_));
  RETURN_IF_ERROR(m->Alloc(t * widest_mlp, &m->act_));
  RETURN_IF_ERROR(m->Alloc(t * h, &m->mlp_out_));
  RETURN_IF_ERROR(m->linear_->Reserve(t * std::max<int64_t>({h, nh * hd, value_dim, widest_mlp})));
  return m;
}

absl::Status GpuQwen3Next::ResetState() {
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  for (Layer& L : layers_) {
    if (L.kind != LayerKind::kLinearAttention) continue;
    const size_t batch = options_.max_batch;
    CUDA_RETURN_IF_ERROR(cudaMemset(L.conv_state, 0, batch * conv_state_floats_ * sizeof(float)));
    CUDA_RETURN_IF_ERROR(cudaMemset(L.state, 0, batch * state_floats_ * sizeof(float)));
  }
  return absl::OkStatus();
}

absl::Status GpuQwen3Next::EnqueueLayers(int n, int variant) {
  const ModelConfig& c = config_;
  const int h = c.hidden_size, hd = c.head_dim, nh = c.num_heads;
  const int nv = c.linear_num_value_heads;
  const int qkvz_dim = 2 * c.linear_num_key_heads * c.linear_key_head_dim + 2 * nv * c.linear_value_head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = layers_[l];
    if (L.kind == LayerKind::kFullAttention) {
      // Gated attention: x += o_proj(attention(norm(x)) * sigmoid(gate)).
      RETURN_IF_ERROR(linear_->RunNormed(L.qkv, x_, GemvNorm{L.input_norm, eps, nullptr}, n, qkv_,
                                         /*accumulate=*/false));
      const QkNormRopeCacheArgs qa =
          FusedQkvLayout(qkv_, /*gated_query=*/true, L.q_norm, L.k_norm, q_, L.k_cache, L.v_cache);
      RETURN_IF_ERROR(EnqueueAttention(qa, n, L.qkv.bf16, attn_));
      CUDA_RETURN_IF_ERROR(LaunchSigmoidGate(attn_, qkv_ + hd, qa.row_stride, 2 * hd, n, nh, hd, stream_));
      RETURN_IF_ERROR(linear_->Run(L.o, attn_, n, x_, /*accumulate=*/true));
    } else {
      // Gated DeltaNet: x += out_proj(delta rule over conv(proj(norm(x)))).
      RETURN_IF_ERROR(linear_->RunNormed(L.in_proj, x_, GemvNorm{L.input_norm, eps, nullptr}, n, proj_,
                                         /*accumulate=*/false));
      DeltaNetArgs d;
      d.nk = c.linear_num_key_heads;
      d.nv = nv;
      d.dk = c.linear_key_head_dim;
      d.dv = c.linear_value_head_dim;
      d.kernel = c.linear_conv_kernel_dim;
      d.proj = proj_;
      d.proj_stride = qkvz_dim + 2 * nv;
      d.conv_w = L.conv_w;
      d.conv_state = L.conv_state + SeqOffset(conv_state_floats_);
      d.conv_out = conv_out_;
      d.a_log = L.a_log;
      d.dt_bias = L.dt_bias;
      d.norm_w = L.delta_norm;
      d.eps = eps;
      d.state = L.state + SeqOffset(state_floats_);
      d.core = core_;
      d.batch = batch_;  // a batched step: one token of each sequence
      d.form = batch_ > 1 ? DeltaForm::kAuto : options_.delta_form;
      const int tokens = batch_ > 1 ? 1 : n;
      CUDA_RETURN_IF_ERROR(LaunchDeltaConv(d, tokens, stream_));
      CUDA_RETURN_IF_ERROR(LaunchDeltaRule(d, tokens, stream_));
      RETURN_IF_ERROR(linear_->Run(L.out_proj, core_, n, x_, /*accumulate=*/true));
    }
    if (L.moe) {
      // The shared expert runs on the normalised rows the router leaves in the experts' input buffer,
      // while the routed experts run (in workers, concurrently); its gate is the last row of gate_up.
      const int si = c.shared_expert_intermediate_size;
      const float* moe_in = experts_->buffers().input;
      auto shared = [&]() -> absl::Status {
        RETURN_IF_ERROR(linear_->Run(L.gate_up, moe_in, n, gate_up_, /*accumulate=*/false));
        CUDA_RETURN_IF_ERROR(LaunchSiluMul(gate_up_, 2 * si + 1, n, si, act_, stream_));
        return linear_->Run(L.down, act_, n, mlp_out_, /*accumulate=*/false);
      };
      RETURN_IF_ERROR(EnqueueRoutedMoe(l, L.router, L.post_norm, n, variant, shared));
      CUDA_RETURN_IF_ERROR(LaunchGatedAdd(x_, mlp_out_, gate_up_ + 2 * si, 2 * si + 1, n, h, stream_));
    } else {
      RETURN_IF_ERROR(EnqueueDenseMlp(L.gate_up, L.down, L.post_norm, c.intermediate_size, n, gate_up_, act_));
    }
  }
  return absl::OkStatus();
}

}  // namespace pinmoe
