#include "worker/gpu/gpu_expert_store.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>

#include "common/status.h"
#include "common/str_cat.h"
#include "worker/gpu/cuda_check.h"
#include "worker/gpu/stream_sync.h"
#include "worker/gpu/synthetic.h"

namespace pinmoe {

template <typename Fill>
absl::StatusOr<std::unique_ptr<GpuExpertStore>> GpuExpertStore::Build(const ModelConfig& config,
                                                                      const std::vector<LayerExpertSet>& assignment,
                                                                      int device, Fill fill) {
  auto s = std::unique_ptr<GpuExpertStore>(new GpuExpertStore());
  s->config_ = config;
  s->device_ = device;
  if (config.hidden_size % 8 != 0 || config.moe_intermediate_size % 8 != 0) {
    return absl::UnimplementedError(StrCat("GPU experts need hidden_size and moe_intermediate_size that are ",
                                           "multiples of 8 (", config.hidden_size, ", ",
                                           config.moe_intermediate_size, ")"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->stream_, cudaStreamNonBlocking));
  const int64_t h = config.hidden_size, inter = config.moe_intermediate_size;
  std::optional<DType> dtype;
  for (const auto& set : assignment) {
    if (set.layer < 0 || set.layer >= config.num_layers || !config.IsMoeLayer(set.layer)) {
      return absl::InvalidArgumentError(StrCat("assignment names layer ", set.layer, ", which is not an MoE layer"));
    }
    std::vector<GpuExpert> table(config.num_experts);
    std::vector<bool> owned(config.num_experts, false);
    for (int e : set.experts) {
      if (e < 0 || e >= config.num_experts) {
        return absl::InvalidArgumentError(StrCat("assignment names expert ", e, " of layer ", set.layer));
      }
      const void* ptrs[3];
      int p = 0;
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
        const std::vector<int64_t> want = p == 2 ? std::vector<int64_t>{h, inter} : std::vector<int64_t>{inter, h};
        DType held = DType::kBF16;
        void* dev = nullptr;
        RETURN_IF_ERROR(fill(*s, set.layer, e, proj, want, &held, &dev));
        if (dtype && *dtype != held) {
          return absl::UnimplementedError(StrCat("experts mix bf16 and other dtypes (",
                                                 ExpertTensorName(set.layer, e, proj), ")"));
        }
        dtype = held;
        ptrs[p++] = dev;
      }
      table[e] = {ptrs[0], ptrs[1], ptrs[2]};
      owned[e] = true;
      ++s->num_experts_;
    }
    void* dev_table = nullptr;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&dev_table, table.size() * sizeof(GpuExpert)));
    s->allocations_.push_back(dev_table);
    CUDA_RETURN_IF_ERROR(cudaMemcpy(dev_table, table.data(), table.size() * sizeof(GpuExpert), cudaMemcpyHostToDevice));
    s->tables_[set.layer] = static_cast<GpuExpert*>(dev_table);
    s->owned_[set.layer] = std::move(owned);
  }
  s->fp32_ = dtype == DType::kF32;
  return s;
}

absl::StatusOr<std::unique_ptr<GpuExpertStore>> GpuExpertStore::Load(const ModelConfig& config, Checkpoint& ckpt,
                                                                     const std::vector<LayerExpertSet>& assignment,
                                                                     int device) {
  auto fill = [&](GpuExpertStore& s, int layer, int e, const char* proj, const std::vector<int64_t>& want,
                  DType* held, void** dev) -> absl::Status {
    const std::string name = ExpertTensorName(layer, e, proj);
    ASSIGN_OR_RETURN(const TensorInfo* info, ckpt.Info(name));
    if (info->shape != want) {
      return absl::InvalidArgumentError(StrCat(ckpt.dir(), ": tensor '", name, "' has shape ",
                                               ShapeString(info->shape), ", expected ", ShapeString(want)));
    }
    if (!IsWeightDType(info->dtype)) {
      return absl::InvalidArgumentError(StrCat(ckpt.dir(), ": tensor '", name, "' is ", DTypeName(info->dtype)));
    }
    // One storage type per worker: bf16 as is; fp32 and f16 held as fp32. Stored as held: straight from
    // the memory map to the device; f16 is widened first.
    *held = info->dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
    std::span<const uint8_t> bytes;
    std::vector<float> widened;
    if (info->dtype == *held) {
      ASSIGN_OR_RETURN(bytes, ckpt.RawBytes(name));
    } else {
      ASSIGN_OR_RETURN(widened, ckpt.ReadF32(name, want));
      bytes = {reinterpret_cast<const uint8_t*>(widened.data()), widened.size() * sizeof(float)};
    }
    CUDA_RETURN_IF_ERROR(cudaMalloc(dev, bytes.size()));
    s.allocations_.push_back(*dev);
    CUDA_RETURN_IF_ERROR(cudaMemcpy(*dev, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  };
  ASSIGN_OR_RETURN(auto s, Build(config, assignment, device, fill));
  s->checkpoint_bytes_ = ckpt.bytes_read();
  return s;
}

absl::StatusOr<std::unique_ptr<GpuExpertStore>> GpuExpertStore::Synthetic(const ModelConfig& config,
                                                                          const std::vector<LayerExpertSet>& assignment,
                                                                          int device, uint64_t seed) {
  auto fill = [&](GpuExpertStore& s, int layer, int e, const char* proj, const std::vector<int64_t>& want,
                  DType* held, void** dev) -> absl::Status {
    *held = DType::kBF16;
    const size_t n = static_cast<size_t>(want[0]) * want[1];
    CUDA_RETURN_IF_ERROR(cudaMalloc(dev, n * 2));
    s.allocations_.push_back(*dev);
    // Uniform with variance 1/cols: outputs keep the scale of their inputs.
    const float scale = std::sqrt(3.0f / static_cast<float>(want[1]));
    CUDA_RETURN_IF_ERROR(LaunchFillUniformBf16(static_cast<__nv_bfloat16*>(*dev), n, scale, 0.f, seed,
                                               SyntheticKey(ExpertTensorName(layer, e, proj)), s.stream_));
    s.checkpoint_bytes_ += n * 2;
    return absl::OkStatus();
  };
  ASSIGN_OR_RETURN(auto s, Build(config, assignment, device, fill));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s->stream_));
  return s;
}

GpuExpertStore::~GpuExpertStore() {
  cudaSetDevice(device_);
  for (void* p : grouped_allocations_) cudaFree(p);
  for (void* p : allocations_) cudaFree(p);
  if (act_ != nullptr) cudaFree(act_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status GpuExpertStore::Reserve(uint32_t max_tokens, uint32_t top_k, bool grouped) {
  const size_t pairs = static_cast<size_t>(max_tokens) * top_k;
  const size_t need = pairs * config_.moe_intermediate_size;
  const bool grow_act = need > act_capacity_;
  const bool grow_grouped = grouped && !fp32_ && max_tokens >= kGroupedMinTokens && pairs > grouped_pairs_;
  if (!grow_act && !grow_grouped && arrivals_ != nullptr) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (arrivals_ == nullptr) {
    void* p = nullptr;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&p, sizeof(unsigned int)));
    allocations_.push_back(p);
    CUDA_RETURN_IF_ERROR(cudaMemset(p, 0, sizeof(unsigned int)));
    arrivals_ = static_cast<unsigned int*>(p);
  }
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());  // no queued kernel may still use the old scratch
  if (grow_grouped) {
    for (void* p : grouped_allocations_) cudaFree(p);
    grouped_allocations_.clear();
    grouped_ = GroupedFfnScratch();
    grouped_pairs_ = 0;
    const size_t tiles = GroupedMaxTiles(static_cast<int>(pairs), config_.num_experts);
    auto alloc = [&](void** p, size_t bytes) -> absl::Status {
      CUDA_RETURN_IF_ERROR(cudaMalloc(p, bytes));
      grouped_allocations_.push_back(*p);
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(alloc(reinterpret_cast<void**>(&grouped_.sorted_pair), pairs * sizeof(int32_t)));
    RETURN_IF_ERROR(alloc(reinterpret_cast<void**>(&grouped_.tile_expert), tiles * sizeof(int32_t)));
    RETURN_IF_ERROR(alloc(reinterpret_cast<void**>(&grouped_.tile_row0), tiles * sizeof(int32_t)));
    RETURN_IF_ERROR(alloc(reinterpret_cast<void**>(&grouped_.tile_rows), tiles * sizeof(int32_t)));
    RETURN_IF_ERROR(alloc(reinterpret_cast<void**>(&grouped_.num_tiles), sizeof(int32_t)));
    RETURN_IF_ERROR(alloc(reinterpret_cast<void**>(&grouped_.act),
                          pairs * config_.moe_intermediate_size * sizeof(__nv_bfloat16)));
    grouped_pairs_ = pairs;
  }
  if (grow_act) {
    if (act_ != nullptr) cudaFree(act_);
    act_ = nullptr;
    act_capacity_ = 0;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&act_, need * sizeof(float)));
    act_capacity_ = need;
  }
  return absl::OkStatus();
}

absl::Status GpuExpertStore::Enqueue(int layer, const float* x, uint32_t tokens, uint32_t top_k,
                                     const int32_t* routing, float* out, cudaStream_t stream, bool allow_grouped,
                                     const CounterStore& after, const CounterWait& before,
                                     const ExpertCombine& combine) {
  if (combine.residual != nullptr && (tokens != 1 || combine.weights == nullptr || !HasWholeLayer(layer))) {
    return absl::InvalidArgumentError(StrCat("layer ", layer, ": combining into the residual needs one token (not ",
                                             tokens, "), the routing weights and every expert of the layer here"));
  }
  // `after` in the form this process uses: by the decode down kernel's last block, else a write enqueued
  // behind the kernels.
  auto write_after = [&]() -> absl::Status {
    return after.counter == nullptr ? absl::OkStatus() : EnqueueWriteCounter(stream, after.counter, after.value);
  };
  // `before` where no kernel of ours polls it: a gate on the stream.
  auto wait_before = [&]() -> absl::Status {
    if (before.counter == nullptr) return absl::OkStatus();
    return EnqueueWaitCounters(stream, std::span<const uint32_t* const>(&before.counter, 1), before.value,
                               before.stamp);
  };
  if (before.counter != nullptr && !KernelWaitsCounters()) {
    return absl::FailedPreconditionError("an in-kernel counter wait needs gate kernels (MPS)");
  }
  auto table = tables_.find(layer);
  if (table == tables_.end()) {  // no experts of this layer here
    RETURN_IF_ERROR(wait_before());
    return write_after();
  }
  if (static_cast<size_t>(tokens) * top_k * config_.moe_intermediate_size > act_capacity_) {
    return absl::InternalError(StrCat("expert scratch reserved for fewer than ", tokens, " tokens"));
  }
  ExpertFfnArgs a;
  a.x = x;
  a.routing = routing;
  a.experts = table->second;
  a.num_experts = config_.num_experts;
  a.tokens = static_cast<int>(tokens);
  a.top_k = static_cast<int>(top_k);
  a.hidden = config_.hidden_size;
  a.inter = config_.moe_intermediate_size;
  a.out = out;
  if (allow_grouped && !fp32_ && tokens >= kGroupedMinTokens) {
    if (static_cast<size_t>(tokens) * top_k > grouped_pairs_) {
      return absl::InternalError(StrCat("grouped expert scratch reserved for fewer than ", tokens, " tokens"));
    }
    RETURN_IF_ERROR(wait_before());
    RETURN_IF_ERROR(CudaStatus(LaunchExpertFfnGrouped(a, grouped_, stream), "grouped expert FFN launch"));
    return write_after();
  }
  a.ready = before;
  a.residual = combine.residual;
  a.combine_weights = combine.weights;
  a.act = act_;
  a.fp32_weights = fp32_;
  const bool fused = after.counter != nullptr && KernelsStoreCounters();
  if (fused) {
    a.done = after;
    a.arrivals = arrivals_;
  }
  RETURN_IF_ERROR(CudaStatus(LaunchExpertFfnDecode(a, stream), "expert FFN launch"));
  return fused ? absl::OkStatus() : write_after();
}

bool GpuExpertStore::HasWholeLayer(int layer) const {
  const auto owned = owned_.find(layer);
  return owned != owned_.end() && std::all_of(owned->second.begin(), owned->second.end(), [](bool b) { return b; });
}

absl::StatusOr<uint32_t> GpuExpertStore::Compute(int layer, const float* x, uint32_t tokens, uint32_t top_k,
                                                 const int32_t* routing, float* out) {
  auto table = tables_.find(layer);
  if (table == tables_.end()) return 0u;  // no experts of this layer here
  const size_t pairs = static_cast<size_t>(tokens) * top_k;
  // The routing table is small; reading it back counts our pairs and validates the ids.
  std::vector<int32_t> ids(pairs);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ids.data(), routing, pairs * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  uint32_t mine = 0;
  const std::vector<bool>& owned = owned_[layer];
  for (size_t p = 0; p < pairs; ++p) {
    if (ids[p] < 0 || ids[p] >= config_.num_experts) {
      return absl::InvalidArgumentError(StrCat("routing table entry ", p, " of layer ", layer, " names expert ", ids[p]));
    }
    mine += owned[ids[p]];
  }
  if (mine == 0) return 0u;
  RETURN_IF_ERROR(Reserve(tokens, top_k, /*grouped=*/false));
  RETURN_IF_ERROR(Enqueue(layer, x, tokens, top_k, routing, out, stream_, /*allow_grouped=*/false));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return mine;
}

}  // namespace pinmoe
