#include "worker/gpu/gpu_expert_store.h"

#include <algorithm>
#include <optional>

#include "common/status.h"
#include "common/str_cat.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {

absl::StatusOr<std::unique_ptr<GpuExpertStore>> GpuExpertStore::Load(const ModelConfig& config, Checkpoint& ckpt,
                                                                     const std::vector<LayerExpertSet>& assignment,
                                                                     int device) {
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
        const std::string name = ExpertTensorName(set.layer, e, proj);
        ASSIGN_OR_RETURN(const TensorInfo* info, ckpt.Info(name));
        const std::vector<int64_t> want = p == 2 ? std::vector<int64_t>{h, inter} : std::vector<int64_t>{inter, h};
        if (info->shape != want) {
          return absl::InvalidArgumentError(StrCat(ckpt.dir(), ": tensor '", name, "' has shape ",
                                                   ShapeString(info->shape), ", expected ", ShapeString(want)));
        }
        // One storage type per worker: bf16 as is; fp32 and f16 held as fp32.
        const DType held = info->dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
        if (!IsWeightDType(info->dtype)) {
          return absl::InvalidArgumentError(StrCat(ckpt.dir(), ": tensor '", name, "' is ", DTypeName(info->dtype)));
        }
        if (dtype && *dtype != held) {
          return absl::UnimplementedError(StrCat(ckpt.dir(), ": experts mix bf16 and other dtypes ('", name, "')"));
        }
        dtype = held;
        // Stored as held (bf16, f32): straight from the memory map to the device. F16 is widened first.
        std::span<const uint8_t> bytes;
        std::vector<float> widened;
        if (info->dtype == held) {
          ASSIGN_OR_RETURN(bytes, ckpt.RawBytes(name));
        } else {
          ASSIGN_OR_RETURN(widened, ckpt.ReadF32(name, want));
          bytes = {reinterpret_cast<const uint8_t*>(widened.data()), widened.size() * sizeof(float)};
        }
        void* dev = nullptr;
        CUDA_RETURN_IF_ERROR(cudaMalloc(&dev, bytes.size()));
        s->allocations_.push_back(dev);
        CUDA_RETURN_IF_ERROR(cudaMemcpy(dev, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
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
  s->checkpoint_bytes_ = ckpt.bytes_read();
  return s;
}

GpuExpertStore::~GpuExpertStore() {
  cudaSetDevice(device_);
  for (void* p : allocations_) cudaFree(p);
  if (act_ != nullptr) cudaFree(act_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
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
  const size_t need = pairs * config_.moe_intermediate_size;
  if (need > act_capacity_) {
    if (act_ != nullptr) cudaFree(act_);
    act_ = nullptr;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&act_, need * sizeof(float)));
    act_capacity_ = need;
  }
  // Batches beyond the kernel's grid limit go in slices of tokens.
  const uint32_t max_tokens = std::max<uint32_t>(1, 65535 / top_k);
  for (uint32_t t0 = 0; t0 < tokens; t0 += max_tokens) {
    ExpertFfnArgs a;
    a.x = x + static_cast<size_t>(t0) * config_.hidden_size;
    a.routing = routing + static_cast<size_t>(t0) * top_k;
    a.experts = table->second;
    a.num_experts = config_.num_experts;
    a.tokens = static_cast<int>(std::min(max_tokens, tokens - t0));
    a.top_k = static_cast<int>(top_k);
    a.hidden = config_.hidden_size;
    a.inter = config_.moe_intermediate_size;
    a.act = act_;
    a.out = out + static_cast<size_t>(t0) * top_k * config_.hidden_size;
    a.fp32_weights = fp32_;
    CUDA_RETURN_IF_ERROR(LaunchExpertFfnDecode(a, stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return mine;
}

}  // namespace pinmoe
