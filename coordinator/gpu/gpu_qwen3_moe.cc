#include "coordinator/gpu/gpu_qwen3_moe.h"

#include <algorithm>

#include "common/status.h"
#include "common/str_cat.h"
#include "coordinator/gpu/dense_kernels.h"
#include "coordinator/gpu/flash_attention.h"
#include "coordinator/layers.h"
#include "coordinator/model_loading.h"
#include "coordinator/qwen3_moe.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {
namespace {

// bf16 models run prefill attention on tensor cores from this many tokens per step on.
constexpr int kFlashMinTokens = 16;

}  // namespace

absl::StatusOr<std::unique_ptr<GpuQwen3Moe>> GpuQwen3Moe::Load(const ModelConfig& c, Checkpoint* ckpt,
                                                               const GpuModelOptions& options) {
  auto m = std::unique_ptr<GpuQwen3Moe>(new GpuQwen3Moe());
  m->config_ = c;
  m->options_ = options;
  m->max_context_ = options.max_context <= 0 || options.max_context > c.max_position_embeddings
                        ? c.max_position_embeddings
                        : options.max_context;
  if (options.synthetic_seed == 0) {
    if (ckpt == nullptr) return absl::InvalidArgumentError("a GPU model needs a checkpoint or a synthetic seed");
    RETURN_IF_ERROR(CheckQwen3MoeCheckpoint(c, *ckpt));
    m->weights_ = DeviceWeights::FromCheckpoint(ckpt, options.device);
  } else {
    m->weights_ = DeviceWeights::Synthetic(options.synthetic_seed, options.device);
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking));
  CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&m->step_done_, cudaEventDisableTiming));
  ASSIGN_OR_RETURN(m->linear_, LinearRunner::Create(m->stream_));

  DeviceWeights& w = *m->weights_;
  const int64_t h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  ASSIGN_OR_RETURN(m->embed_, w.Matrix("model.embed_tokens.weight", c.vocab_size, h));
  ASSIGN_OR_RETURN(m->final_norm_, w.Vector("model.norm.weight", h));
  if (c.tie_word_embeddings) {
    m->lm_head_ = m->embed_;
  } else {
    ASSIGN_OR_RETURN(m->lm_head_, w.Matrix("lm_head.weight", c.vocab_size, h));
  }
  const size_t cache_floats = static_cast<size_t>(m->max_context_) * nkv * hd;
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
      const int64_t inter = c.intermediate_size;
      const std::vector<std::string> gu = {LayerTensor(l, "mlp.gate_proj.weight"),
                                           LayerTensor(l, "mlp.up_proj.weight")};
      const std::vector<int64_t> gu_rows = {inter, inter};
      ASSIGN_OR_RETURN(L.gate_up, w.Matrix(gu, gu_rows, h));
      ASSIGN_OR_RETURN(L.down, w.Matrix(LayerTensor(l, "mlp.down_proj.weight"), h, inter));
    }
    ASSIGN_OR_RETURN(void* kc, w.Scratch(cache_floats * sizeof(float)));
    ASSIGN_OR_RETURN(void* vc, w.Scratch(cache_floats * sizeof(float)));
    L.k_cache = static_cast<float*>(kc);
    L.v_cache = static_cast<float*>(vc);
  }
  // Activations for up to max_step_tokens tokens.
  const size_t t = options.max_step_tokens;
  auto alloc = [&](size_t floats, auto** dst) -> absl::Status {
    ASSIGN_OR_RETURN(void* p, w.Scratch(std::max<size_t>(floats, 1) * 4));
    *dst = static_cast<std::remove_pointer_t<decltype(dst)>>(p);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(alloc(t, &m->ids_dev_));
  RETURN_IF_ERROR(alloc(t * h, &m->x_));
  RETURN_IF_ERROR(alloc(t * h, &m->h_));
  RETURN_IF_ERROR(alloc(t * (nh + 2 * nkv) * hd, &m->qkv_));
  RETURN_IF_ERROR(alloc(t * nh * hd, &m->q_));
  RETURN_IF_ERROR(alloc(t * nh * hd, &m->attn_));
  RETURN_IF_ERROR(alloc(t * c.num_experts, &m->router_logits_));
  RETURN_IF_ERROR(alloc(t * c.top_k, &m->route_weights_));
  RETURN_IF_ERROR(alloc(t * 2 * c.intermediate_size, &m->gate_up_));
  RETURN_IF_ERROR(alloc(t * c.intermediate_size, &m->act_));
  RETURN_IF_ERROR(alloc(h, &m->last_h_));
  RETURN_IF_ERROR(alloc(c.vocab_size, &m->logits_));
  RETURN_IF_ERROR(alloc(1, &m->argmax_));
  RETURN_IF_ERROR(alloc(1, &m->position_dev_));
  ASSIGN_OR_RETURN(void* am, w.Scratch(16));
  m->argmax_scratch_.key = static_cast<unsigned long long*>(am);
  m->argmax_scratch_.blocks_done = reinterpret_cast<unsigned int*>(static_cast<uint8_t*>(am) + 8);
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&m->position_host_, sizeof(int32_t)));
  const int64_t widest = std::max<int64_t>({h, nh * hd, c.intermediate_size});
  RETURN_IF_ERROR(m->linear_->Reserve(t * widest));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&m->ids_host_, t * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&m->logits_host_, c.vocab_size * sizeof(float)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&m->argmax_host_, sizeof(int32_t)));
  // RoPE frequencies exactly as the CPU path computes them.
  Rope rope(c.head_dim, c.RotaryDim(), c.rope_theta);
  ASSIGN_OR_RETURN(void* f, w.Scratch(rope.inv_freq().size() * sizeof(float)));
  m->inv_freq_ = static_cast<float*>(f);
  CUDA_RETURN_IF_ERROR(cudaMemcpy(f, rope.inv_freq().data(), rope.inv_freq().size() * sizeof(float),
                                  cudaMemcpyHostToDevice));
  return m;
}

GpuQwen3Moe::~GpuQwen3Moe() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  linear_.reset();
  if (ids_host_ != nullptr) cudaFreeHost(ids_host_);
  if (logits_host_ != nullptr) cudaFreeHost(logits_host_);
  if (argmax_host_ != nullptr) cudaFreeHost(argmax_host_);
  if (position_host_ != nullptr) cudaFreeHost(position_host_);
  for (auto& by_variant : graphs_) {
    for (cudaGraphExec_t g : by_variant) {
      if (g != nullptr) cudaGraphExecDestroy(g);
    }
  }
  if (step_done_ != nullptr) cudaEventDestroy(step_done_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status GpuQwen3Moe::CheckIds(std::span<const int32_t> ids) const {
  if (ids.empty()) return absl::InvalidArgumentError("no tokens to run");
  if (position_ + static_cast<int64_t>(ids.size()) > max_context_) {
    return absl::OutOfRangeError(StrCat(position_, " + ", ids.size(), " tokens exceed the context of ",
                                        max_context_));
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(StrCat("token id ", id, " is outside the vocabulary of ", config_.vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuQwen3Moe::Step(const int32_t* ids, int n, bool greedy, bool want_output) {
  PINMOE_CHECK(experts_ != nullptr);
  cudaStream_t s = stream_;
  std::copy(ids, ids + n, ids_host_);
  *position_host_ = position_;
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ids_dev_, ids_host_, n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(position_dev_, position_host_, sizeof(int32_t), cudaMemcpyHostToDevice, s));
  ASSIGN_OR_RETURN(const int variant, experts_->BeginStep(static_cast<uint32_t>(n)));
  if (n == 1 && want_output && options_.graphs && variant < experts_->graph_variants() && variant < 2) {
    cudaGraphExec_t& exec = graphs_[variant][greedy ? 1 : 0];
    if (exec == nullptr) {
      // Capture once per (variant, greedy); every later decode step replays it.
      CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      absl::Status st = EnqueueStep(n, greedy, want_output, variant);
      cudaGraph_t graph = nullptr;
      const cudaError_t end = cudaStreamEndCapture(s, &graph);
      RETURN_IF_ERROR(st);
      CUDA_RETURN_IF_ERROR(end);
      const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      CUDA_RETURN_IF_ERROR(inst);
    }
    CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, s));
  } else {
    RETURN_IF_ERROR(EnqueueStep(n, greedy, want_output, variant));
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(step_done_, s));
  RETURN_IF_ERROR(experts_->FinishStep(step_done_));
  position_ += n;
  return absl::OkStatus();
}

absl::Status GpuQwen3Moe::EnqueueStep(int n, bool greedy, bool want_output, int variant) {
  const ModelConfig& c = config_;
  const int h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads, k = c.top_k;
  const float eps = static_cast<float>(c.rms_norm_eps);
  cudaStream_t s = stream_;
  const GpuExperts::Buffers moe = experts_->buffers();
  CUDA_RETURN_IF_ERROR(LaunchEmbed(embed_.data, embed_.bf16, ids_dev_, n, h, x_, s));
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = layers_[l];
    // Attention block.
    RETURN_IF_ERROR(linear_->RunNormed(L.qkv, x_, GemvNorm{L.input_norm, eps, nullptr}, n, qkv_,
                                       /*accumulate=*/false));
    QkNormRopeCacheArgs qa;
    qa.qkv = qkv_;
    qa.row_stride = (nh + 2 * nkv) * hd;
    qa.q_offset = 0;
    qa.q_head_stride = hd;
    qa.k_offset = nh * hd;
    qa.v_offset = (nh + nkv) * hd;
    qa.heads = nh;
    qa.kv_heads = nkv;
    qa.head_dim = hd;
    qa.rotary_dim = c.RotaryDim();
    qa.q_norm = L.q_norm;
    qa.k_norm = L.k_norm;
    qa.inv_freq = inv_freq_;
    qa.eps = eps;
    qa.position_dev = position_dev_;
    qa.q_out = q_;
    qa.k_cache = L.k_cache;
    qa.v_cache = L.v_cache;
    CUDA_RETURN_IF_ERROR(LaunchQkNormRopeCache(qa, n, s));
    AttentionArgs aa;
    aa.q = q_;
    aa.k_cache = L.k_cache;
    aa.v_cache = L.v_cache;
    aa.heads = nh;
    aa.kv_heads = nkv;
    aa.head_dim = hd;
    aa.position_dev = position_dev_;
    aa.out = attn_;
    if (n >= kFlashMinTokens && L.qkv.bf16 && FlashAttentionSupports(hd)) {
      FlashAttentionArgs fa;
      fa.q = q_;
      fa.k_cache = L.k_cache;
      fa.v_cache = L.v_cache;
      fa.tokens = n;
      fa.heads = nh;
      fa.kv_heads = nkv;
      fa.head_dim = hd;
      fa.first_position = position_;  // prefill steps are never captured in a graph
      fa.out = attn_;
      CUDA_RETURN_IF_ERROR(LaunchFlashAttention(fa, s));
    } else {
      CUDA_RETURN_IF_ERROR(LaunchAttention(aa, n, s));
    }
    RETURN_IF_ERROR(linear_->Run(L.o, attn_, n, x_, /*accumulate=*/true));
    // MLP block: routed experts, or a dense SwiGLU layer.
    if (L.moe) {
      // The router's GEMV normalises x and leaves the normalised rows in the experts' input buffer.
      RETURN_IF_ERROR(linear_->RunNormed(L.router, x_, GemvNorm{L.post_norm, eps, moe.input}, n, router_logits_,
                                         /*accumulate=*/false));
      CUDA_RETURN_IF_ERROR(LaunchRouteTopK(router_logits_, n, c.num_experts, k, c.norm_topk_prob, moe.routing,
                                           route_weights_, s));
      RETURN_IF_ERROR(experts_->EnqueueLayer(l, static_cast<uint32_t>(n), s, variant));
      CUDA_RETURN_IF_ERROR(LaunchMoeCombine(moe.slots, route_weights_, n, k, h, x_, s));
    } else {
      RETURN_IF_ERROR(linear_->RunNormed(L.gate_up, x_, GemvNorm{L.post_norm, eps, nullptr}, n, gate_up_,
                                         /*accumulate=*/false));
      CUDA_RETURN_IF_ERROR(LaunchSiluMul(gate_up_, n, c.intermediate_size, act_, s));
      RETURN_IF_ERROR(linear_->Run(L.down, act_, n, x_, /*accumulate=*/true));
    }
  }
  if (want_output) {
    CUDA_RETURN_IF_ERROR(LaunchRmsNorm(x_ + static_cast<size_t>(n - 1) * h, final_norm_, last_h_, 1, h, eps, s));
    RETURN_IF_ERROR(linear_->Run(lm_head_, last_h_, 1, logits_, /*accumulate=*/false));
    if (greedy) {
      CUDA_RETURN_IF_ERROR(LaunchArgMax(logits_, c.vocab_size, argmax_scratch_, argmax_, s));
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(argmax_host_, argmax_, sizeof(int32_t), cudaMemcpyDeviceToHost, s));
    } else {
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits_host_, logits_, c.vocab_size * sizeof(float),
                                           cudaMemcpyDeviceToHost, s));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuQwen3Moe::Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) {
  RETURN_IF_ERROR(CheckIds(ids));
  const int chunk = static_cast<int>(std::min<uint32_t>(experts_->max_tokens(), options_.max_step_tokens));
  for (size_t i = 0; i < ids.size(); i += chunk) {
    const int n = static_cast<int>(std::min<size_t>(chunk, ids.size() - i));
    RETURN_IF_ERROR(Step(ids.data() + i, n, /*greedy=*/false, /*want_output=*/i + n == ids.size()));
  }
  last_logits->assign(logits_host_, logits_host_ + config_.vocab_size);
  return absl::OkStatus();
}

absl::StatusOr<int32_t> GpuQwen3Moe::ForwardGreedy(std::span<const int32_t> ids) {
  RETURN_IF_ERROR(CheckIds(ids));
  const int chunk = static_cast<int>(std::min<uint32_t>(experts_->max_tokens(), options_.max_step_tokens));
  for (size_t i = 0; i < ids.size(); i += chunk) {
    const int n = static_cast<int>(std::min<size_t>(chunk, ids.size() - i));
    RETURN_IF_ERROR(Step(ids.data() + i, n, /*greedy=*/true, /*want_output=*/i + n == ids.size()));
  }
  return *argmax_host_;
}

}  // namespace pinmoe
