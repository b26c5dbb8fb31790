#include "coordinator/gpu/gpu_causal_lm.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "common/env.h"
#include "common/str_cat.h"
#include "coordinator/attention_form.h"
#include "coordinator/gpu/flash_attention.h"
#include "coordinator/layers.h"
#include "coordinator/model_loading.h"

namespace pinmoe {

// attention_form.h counts on batches that change the attention's splits taking cuBLAS anyway.
static_assert(kAttnOneSplitBatch > kGemvMaxTokens, "a GEMV-sized batch would change its attention's splits");
namespace {

// bf16 models run prefill attention on tensor cores from this many tokens per step on.
constexpr int kFlashMinTokens = 16;

// The decode attention's most splits and grouped mode (PickAttentionForm, coordinator/attention_form.h):
// by default kAttnMaxSplits and by context. For A/B measurements: PINMOE_ATTN_SPLITS=0 picks one block
// per head over every position, 1 to kAttnMaxSplits that many splits at most; PINMOE_ATTN_GROUPED=0 the
// per-head split form, 1 the grouped one, at every context; PINMOE_ATTN_TENSOR_CORES=0 keeps the grouped
// form on the CUDA cores where its tensor-core kernel serves (QkNormRopeCacheArgs::tensor_cores);
// PINMOE_ATTN_PREFETCH=0 keeps the per-head split form from asking L2 for its keys and values early.
int AttnSplits() { return std::clamp(EnvInt("PINMOE_ATTN_SPLITS", kAttnMaxSplits), 0, kAttnMaxSplits); }

// -1: by context, 0: never grouped, 1: always (where supported).
int AttnGroupedMode(const ModelConfig& c) {
  if (!DecodeAttentionGroupedSupports(c.num_heads, c.num_kv_heads, c.head_dim)) return 0;
  const char* v = std::getenv("PINMOE_ATTN_GROUPED");
  if (v == nullptr) return -1;
  return std::string_view(v) == "1" ? 1 : std::string_view(v) == "0" ? 0 : -1;
}

}  // namespace

absl::Status CheckCudaDevice(int device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return absl::FailedPreconditionError(StrCat("--device cuda:", device, ": no usable CUDA device here (",
                                                cudaGetErrorString(err), "); run with --device cpu"));
  }
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(StrCat("--device cuda:", device, ": this machine has ", count,
                                                " CUDA device(s); pick one of them or run with --device cpu"));
  }
  return absl::OkStatus();
}

absl::Status GpuCausalLm::InitCommon(const ModelConfig& c, Checkpoint* ckpt, const GpuModelOptions& options,
                                     float final_norm_add) {
  config_ = c;
  options_ = options;
  max_context_ = options.max_context <= 0 || options.max_context > c.max_position_embeddings
                     ? c.max_position_embeddings
                     : options.max_context;
  if (options.max_batch < 1 || static_cast<uint32_t>(options.max_batch) > options.max_step_tokens) {
    return absl::InvalidArgumentError(StrCat("a batch of ", options.max_batch, " sequences needs 1 to ",
                                             options.max_step_tokens, " (the tokens per step)"));
  }
  positions_.assign(options.max_batch, 0);
  cache_elems_ = static_cast<size_t>(max_context_) * c.num_kv_heads * c.head_dim;
  kv_cache_dtype_ = ResolveKvCacheDtype(options.kv_cache_dtype, c);
  if (options.synthetic_seed == 0) {
    if (ckpt == nullptr) return absl::InvalidArgumentError("a GPU model needs a checkpoint or a synthetic seed");
    weights_ = DeviceWeights::FromCheckpoint(ckpt, options.device);
  } else {
    weights_ = DeviceWeights::Synthetic(options.synthetic_seed, options.device);
  }
  RETURN_IF_ERROR(CheckCudaDevice(options.device));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&step_done_, cudaEventDisableTiming));
  ASSIGN_OR_RETURN(linear_, LinearRunner::Create(stream_));
  DeviceWeights& w = *weights_;
  const int64_t h = c.hidden_size;
  ASSIGN_OR_RETURN(embed_, w.Matrix("model.embed_tokens.weight", c.vocab_size, h));
  ASSIGN_OR_RETURN(final_norm_, w.Vector("model.norm.weight", h, final_norm_add));
  if (c.tie_word_embeddings) {
    lm_head_ = embed_;
  } else {
    ASSIGN_OR_RETURN(lm_head_, w.Matrix("lm_head.weight", c.vocab_size, h));
  }
  const size_t t = options.max_step_tokens, batch = options.max_batch;
  RETURN_IF_ERROR(Alloc(t, &ids_dev_));
  RETURN_IF_ERROR(Alloc(t * h, &own_x_));
  x_ = own_x_;
  RETURN_IF_ERROR(Alloc(t * std::max(c.num_experts, 1), &router_logits_));
  RETURN_IF_ERROR(Alloc(t * std::max(c.top_k, 1), &own_route_weights_));
  route_weights_ = own_route_weights_;
  RETURN_IF_ERROR(Alloc(batch, &position_dev_));
  RETURN_IF_ERROR(Alloc(1, &router_blocks_done_));
  RETURN_IF_ERROR(Alloc(batch * h, &last_h_));
  RETURN_IF_ERROR(Alloc(batch * c.vocab_size, &logits_));
  RETURN_IF_ERROR(Alloc(batch, &argmax_));
  uint64_t* am = nullptr;
  RETURN_IF_ERROR(Alloc(2 * batch, &am));
  argmax_scratch_.resize(batch);
  for (size_t b = 0; b < batch; ++b) {
    argmax_scratch_[b].key = reinterpret_cast<unsigned long long*>(am + 2 * b);
    argmax_scratch_[b].blocks_done = reinterpret_cast<unsigned int*>(am + 2 * b + 1);
  }
  attn_splits_ = c.head_dim % 32 == 0 ? AttnSplits() : 0;  // the split forms need whole warps of dimensions
  attn_grouped_mode_ = AttnGroupedMode(c);
  attn_tensor_cores_ = EnvInt("PINMOE_ATTN_TENSOR_CORES", 1) != 0;
  attn_prefetch_ = EnvInt("PINMOE_ATTN_PREFETCH", 1) != 0;
  step_ahead_ = EnvInt("PINMOE_STEP_AHEAD", 0) != 0;
  router_cluster_ = EnvInt("PINMOE_ROUTER_CLUSTER", 1) != 0;
  if (attn_splits_ >= 1) {
    RETURN_IF_ERROR(Alloc(AttnSplitPartialFloats(static_cast<int>(batch), c.num_heads, c.head_dim, attn_splits_),
                          &attn_partials_));
    RETURN_IF_ERROR(Alloc(batch * c.num_heads, &attn_counters_));
  }
  RETURN_IF_ERROR(Alloc(TopKPartialKeys(c.vocab_size), &topk_partial_));
  RETURN_IF_ERROR(Alloc(kDeviceTopKMax, &topk_keys_));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&ids_host_, t * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&position_host_, batch * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&logits_host_, batch * c.vocab_size * sizeof(float)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&argmax_host_, batch * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&topk_host_, kDeviceTopKMax * sizeof(unsigned long long)));
  // RoPE frequencies exactly as the CPU path computes them.
  Rope rope(c.head_dim, c.RotaryDim(), c.rope_theta);
  RETURN_IF_ERROR(Alloc(rope.inv_freq().size(), &inv_freq_));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(inv_freq_, rope.inv_freq().data(), rope.inv_freq().size() * sizeof(float),
                                  cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

void GpuCausalLm::set_experts(GpuExperts* experts) {
  experts_ = experts;
  // Steps never exceed the experts' max_tokens(), so their buffers are large enough. The captured graphs
  // name the old buffers: they go.
  const GpuExperts::Buffers b = experts != nullptr ? experts->buffers() : GpuExperts::Buffers();
  const bool adopt = b.residual != nullptr && b.weights != nullptr;
  x_ = adopt ? b.residual : own_x_;
  route_weights_ = adopt ? b.weights : own_route_weights_;
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
}

GpuCausalLm::~GpuCausalLm() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  linear_.reset();
  if (ids_host_ != nullptr) cudaFreeHost(ids_host_);
  if (logits_host_ != nullptr) cudaFreeHost(logits_host_);
  if (argmax_host_ != nullptr) cudaFreeHost(argmax_host_);
  if (topk_host_ != nullptr) cudaFreeHost(topk_host_);
  if (position_host_ != nullptr) cudaFreeHost(position_host_);
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g);
  if (step_done_ != nullptr) cudaEventDestroy(step_done_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void GpuCausalLm::Reset() {
  std::fill(positions_.begin(), positions_.end(), 0);
  seq_ = 0;
  absl::Status st = ResetState();
  PINMOE_CHECK(st.ok());
}

absl::Status GpuCausalLm::SelectSequence(int s) {
  if (s < 0 || s >= options_.max_batch) {
    return absl::OutOfRangeError(StrCat("sequence ", s, " of a model holding ", options_.max_batch));
  }
  seq_ = s;
  return absl::OkStatus();
}

absl::Status GpuCausalLm::CheckIds(std::span<const int32_t> ids) const {
  if (ids.empty()) return absl::InvalidArgumentError("no tokens to run");
  if (positions_[seq_] + static_cast<int64_t>(ids.size()) > max_context_) {
    return absl::OutOfRangeError(StrCat(positions_[seq_], " + ", ids.size(), " tokens exceed the context of ",
                                        max_context_));
  }
  return CheckVocabulary(ids);
}

absl::Status GpuCausalLm::CheckVocabulary(std::span<const int32_t> ids) const {
  for (int32_t id : ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(StrCat("token id ", id, " is outside the vocabulary of ", config_.vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuCausalLm::Step(const int32_t* ids, int n, Output output, bool want_output) {
  RETURN_IF_ERROR(Submit(std::span<const int32_t>(ids, n), /*batch=*/1, output, want_output));
  positions_[seq_] += n;
  return absl::OkStatus();
}

absl::Status GpuCausalLm::Submit(std::span<const int32_t> ids, int batch, Output output, bool want_output) {
  PINMOE_CHECK(experts_ != nullptr);
  cudaStream_t s = stream_;
  const int n = static_cast<int>(ids.size());
  std::copy(ids.begin(), ids.end(), ids_host_);
  if (batch > 1) {
    std::copy(positions_.begin(), positions_.begin() + batch, position_host_);
  } else {
    *position_host_ = positions_[seq_];
  }
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ids_dev_, ids_host_, n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(position_dev_, position_host_, batch * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  ASSIGN_OR_RETURN(const int variant, experts_->BeginStep(static_cast<uint32_t>(n)));
  batch_ = batch;
  // The decode attention's form for this step, by the longest context it attends.
  int longest = 0;
  for (int b = 0; b < batch; ++b) longest = std::max(longest, (batch > 1 ? positions_[b] : positions_[seq_]) + 1);
  step_attn_ =
      PickAttentionForm(attn_splits_, attn_grouped_mode_, longest, batch, config_.num_heads, config_.head_dim);
  const absl::Status st = Launch(n, output, want_output, variant);
  last_launch_ = std::chrono::steady_clock::now();
  batch_ = 1;
  RETURN_IF_ERROR(st);
  CUDA_RETURN_IF_ERROR(cudaEventRecord(step_done_, s));
  // A decode step is most likely followed by another of as many tokens: its experts may learn of that
  // one now, while this one runs (a prefill's next step has other tokens). Off by default: on the H200
  // it took the workers' first-layer wait away but the step was no shorter (bench/NOTES.md).
  if (step_ahead_ && (n == 1 || batch > 1)) RETURN_IF_ERROR(experts_->SendAhead(static_cast<uint32_t>(n)));
  return experts_->FinishStep(step_done_);
}

absl::Status GpuCausalLm::DecodeBatch(std::span<const int32_t> ids, std::vector<int32_t>* argmax,
                                      std::vector<float>* logits) {
  PINMOE_CHECK(experts_ != nullptr);
  const int batch = static_cast<int>(ids.size());
  if (batch < 1 || batch > options_.max_batch) {
    return absl::InvalidArgumentError(StrCat("a batch of ", ids.size(), " sequences; this model holds 1 to ",
                                             options_.max_batch));
  }
  if (static_cast<uint32_t>(batch) > experts_->max_tokens()) {
    return absl::InvalidArgumentError(StrCat("a batch of ", batch, " exceeds the experts' ", experts_->max_tokens(),
                                             " tokens per step"));
  }
  for (int b = 0; b < batch; ++b) {
    if (positions_[b] + 1 > max_context_) {
      return absl::OutOfRangeError(StrCat("sequence ", b, " is full (", max_context_, " tokens)"));
    }
  }
  RETURN_IF_ERROR(CheckVocabulary(ids));
  RETURN_IF_ERROR(Submit(ids, batch, logits != nullptr ? Output::kLogits : Output::kArgMax, /*want_output=*/true));
  for (int b = 0; b < batch; ++b) ++positions_[b];
  argmax->assign(argmax_host_, argmax_host_ + batch);
  if (logits != nullptr) {
    logits->assign(logits_host_, logits_host_ + static_cast<size_t>(batch) * config_.vocab_size);
  }
  return absl::OkStatus();
}

absl::Status GpuCausalLm::Launch(int n, Output output, bool want_output, int variant) {
  cudaStream_t s = stream_;
  const bool decode = n == 1 || batch_ > 1;
  if (!decode || !want_output || !options_.graphs || variant >= experts_->graph_variants()) {
    return EnqueueStep(n, output, want_output, variant);
  }
  // The graph bakes in the sequence's cache and state addresses, the top-k's k and the attention's form:
  // one per each.
  const GraphKey key{variant, static_cast<int>(output), batch_ > 1 ? -1 : seq_, batch_,
                     output == Output::kTopK ? top_k_ : 0, step_attn_.grouped, step_attn_.splits};
  cudaGraphExec_t& exec = graphs_[key];
  if (exec == nullptr) {
    CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    absl::Status st = EnqueueStep(n, output, want_output, variant);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(s, &graph);
    if (!st.ok() || end != cudaSuccess) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      graphs_.erase(key);
      RETURN_IF_ERROR(st);
      CUDA_RETURN_IF_ERROR(end);
    }
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
      graphs_.erase(key);
      CUDA_RETURN_IF_ERROR(inst);
    }
  }
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, s));
  return absl::OkStatus();
}

absl::Status GpuCausalLm::EnqueueStep(int n, Output output, bool want_output, int variant) {
  const int h = config_.hidden_size, vocab = config_.vocab_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  CUDA_RETURN_IF_ERROR(LaunchEmbed(embed_.data, embed_.bf16, ids_dev_, n, h, x_, stream_));
  RETURN_IF_ERROR(EnqueueLayers(n, variant));
  if (!want_output) return absl::OkStatus();
  // One row of logits per sequence: the last token's, or every token's in a batched step.
  const int rows = batch_;
  CUDA_RETURN_IF_ERROR(
      LaunchRmsNorm(x_ + static_cast<size_t>(n - rows) * h, final_norm_, last_h_, rows, h, eps, stream_));
  RETURN_IF_ERROR(linear_->Run(lm_head_, last_h_, rows, logits_, /*accumulate=*/false));
  auto argmax_rows = [&]() -> absl::Status {
    for (int r = 0; r < rows; ++r) {
      CUDA_RETURN_IF_ERROR(LaunchArgMax(logits_ + static_cast<size_t>(r) * vocab, vocab, argmax_scratch_[r],
                                        argmax_ + r, stream_));
    }
    return CudaStatus(cudaMemcpyAsync(argmax_host_, argmax_, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
                      "arg-max copy");
  };
  if (output == Output::kArgMax) {
    RETURN_IF_ERROR(argmax_rows());
  } else if (output == Output::kTopK) {
    PINMOE_CHECK(rows == 1);
    CUDA_RETURN_IF_ERROR(LaunchTopK(logits_, config_.vocab_size, top_k_, topk_partial_, topk_keys_, stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(topk_host_, topk_keys_, top_k_ * sizeof(unsigned long long),
                                         cudaMemcpyDeviceToHost, stream_));
  } else {
    if (rows > 1) RETURN_IF_ERROR(argmax_rows());  // the greedy ids come along with the logits
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits_host_, logits_, static_cast<size_t>(rows) * vocab * sizeof(float),
                                         cudaMemcpyDeviceToHost, stream_));
  }
  return absl::OkStatus();
}

QkNormRopeCacheArgs GpuCausalLm::FusedQkvLayout(const float* qkv, bool gated_query, const float* q_norm,
                                                const float* k_norm, float* q_out, void* k_cache,
                                                void* v_cache) const {
  const int hd = config_.head_dim, nh = config_.num_heads, nkv = config_.num_kv_heads;
  const int q_rows = (gated_query ? 2 : 1) * nh * hd;
  QkNormRopeCacheArgs qa;
  qa.qkv = qkv;
  qa.row_stride = q_rows + 2 * nkv * hd;
  qa.q_offset = 0;
  qa.q_head_stride = (gated_query ? 2 : 1) * hd;
  qa.k_offset = q_rows;
  qa.v_offset = q_rows + nkv * hd;
  qa.heads = nh;
  qa.kv_heads = nkv;
  qa.head_dim = hd;
  qa.rotary_dim = config_.RotaryDim();
  qa.q_norm = q_norm;
  qa.k_norm = k_norm;
  qa.q_out = q_out;
  const size_t offset = SeqOffset(cache_elems_) * KvCacheElementBytes(kv_cache_dtype_);
  qa.k_cache = static_cast<uint8_t*>(k_cache) + offset;
  qa.v_cache = static_cast<uint8_t*>(v_cache) + offset;
  qa.cache_bf16 = kv_cache_dtype_ == KvCacheDtype::kBf16;
  qa.batch = batch_;
  qa.cache_seq_stride = cache_elems_;
  return qa;
}

absl::Status GpuCausalLm::LoadDenseMlp(int layer, DeviceMatrix* gate_up, DeviceMatrix* down) {
  const int64_t h = config_.hidden_size, inter = config_.intermediate_size;
  const std::vector<std::string> names = {LayerTensor(layer, "mlp.gate_proj.weight"),
                                          LayerTensor(layer, "mlp.up_proj.weight")};
  const std::vector<int64_t> rows = {inter, inter};
  ASSIGN_OR_RETURN(*gate_up, weights_->Matrix(names, rows, h));
  ASSIGN_OR_RETURN(*down, weights_->Matrix(LayerTensor(layer, "mlp.down_proj.weight"), h, inter));
  return absl::OkStatus();
}

absl::Status GpuCausalLm::EnqueueDenseMlp(const DeviceMatrix& gate_up, const DeviceMatrix& down, const float* post_norm,
                                          int inter, int n, float* gate_up_out, float* act) {
  const float eps = static_cast<float>(config_.rms_norm_eps);
  RETURN_IF_ERROR(linear_->RunNormed(gate_up, x_, GemvNorm{post_norm, eps, nullptr}, n, gate_up_out,
                                     /*accumulate=*/false));
  CUDA_RETURN_IF_ERROR(LaunchSiluMul(gate_up_out, 2 * inter, n, inter, act, stream_));
  return linear_->Run(down, act, n, x_, /*accumulate=*/true);
}

absl::Status GpuCausalLm::EnqueueAttention(const QkNormRopeCacheArgs& layout, int n, bool bf16_model,
                                           float* attn_out) {
  QkNormRopeCacheArgs qa = layout;
  qa.inv_freq = inv_freq_;
  qa.eps = static_cast<float>(config_.rms_norm_eps);
  qa.position_dev = position_dev_;
  if (n == 1 || batch_ > 1) {
    qa.splits = step_attn_.splits;
    qa.grouped = step_attn_.grouped;
    qa.tensor_cores = attn_tensor_cores_;
    qa.prefetch = attn_prefetch_;
    qa.split_partials = attn_partials_;
    qa.split_counters = attn_counters_;
    return CudaStatus(LaunchDecodeAttentionFused(qa, attn_out, stream_), "decode attention launch");
  }
  CUDA_RETURN_IF_ERROR(LaunchQkNormRopeCache(qa, n, stream_));
  if (n >= kFlashMinTokens && bf16_model && FlashAttentionSupports(qa.head_dim)) {
    FlashAttentionArgs fa;
    fa.q = qa.q_out;
    fa.k_cache = qa.k_cache;
    fa.v_cache = qa.v_cache;
    fa.cache_bf16 = qa.cache_bf16;
    fa.tokens = n;
    fa.heads = qa.heads;
    fa.kv_heads = qa.kv_heads;
    fa.head_dim = qa.head_dim;
    fa.first_position = positions_[seq_];  // prefill steps are never captured in a graph
    fa.out = attn_out;
    return CudaStatus(LaunchFlashAttention(fa, stream_), "flash attention launch");
  }
  return CudaStatus(LaunchAttention(AttentionAfter(qa, attn_out), n, stream_), "attention launch");
}

absl::Status GpuCausalLm::Run(std::span<const int32_t> ids, Output output) {
  RETURN_IF_ERROR(CheckIds(ids));
  const int chunk = static_cast<int>(std::min<uint32_t>(experts_->max_tokens(), options_.max_step_tokens));
  for (size_t i = 0; i < ids.size(); i += chunk) {
    const int n = static_cast<int>(std::min<size_t>(chunk, ids.size() - i));
    RETURN_IF_ERROR(Step(ids.data() + i, n, output, /*want_output=*/i + n == ids.size()));
  }
  return absl::OkStatus();
}

absl::Status GpuCausalLm::Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) {
  RETURN_IF_ERROR(Run(ids, Output::kLogits));
  last_logits->assign(logits_host_, logits_host_ + config_.vocab_size);
  return absl::OkStatus();
}

absl::StatusOr<int32_t> GpuCausalLm::ForwardGreedy(std::span<const int32_t> ids) {
  RETURN_IF_ERROR(Run(ids, Output::kArgMax));
  return *argmax_host_;
}

absl::Status GpuCausalLm::ForwardTopK(std::span<const int32_t> ids, int k, std::vector<Candidate>* top) {
  if (k <= 0 || k > kDeviceTopKMax || k > config_.vocab_size) return CausalLm::ForwardTopK(ids, k, top);
  top_k_ = k;
  RETURN_IF_ERROR(Run(ids, Output::kTopK));
  top->resize(k);
  for (int i = 0; i < k; ++i) DecodeTopKKey(topk_host_[i], &(*top)[i].id, &(*top)[i].logit);
  return absl::OkStatus();
}

}  // namespace pinmoe
