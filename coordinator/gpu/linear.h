// Linear layers on the GPU: y[tokens, rows] = x[tokens, cols] . W[rows, cols]^T (or +=, for residual
// adds), with W in bf16 or fp32 as the checkpoint stores it and fp32 activations and accumulation.
//
// Decode-sized batches (up to 8 tokens) go to our GEMV kernel, which streams each weight row once with
// 16-byte loads for all tokens: at batch 1 it is bound by memory bandwidth, and tensor cores have nothing
// to add. Larger batches go to cuBLAS: bf16 weights with the activations rounded to bf16 (as transformers
// computes in bf16) on tensor cores with fp32 accumulation, fp32 weights through SGEMM (no TF32, so that
// the fp32 references hold).
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "worker/gpu/counter_kernels.h"

namespace pinmoe {

// A weight matrix in device memory, row-major [rows, cols] (the checkpoint's [out, in] layout).
struct DeviceMatrix {
  const void* data = nullptr;
  bool bf16 = false;  // else fp32
  int64_t rows = 0;
  int64_t cols = 0;
};

constexpr int kGemvMaxTokens = 8;
constexpr int kGemvRouterMaxExperts = 512;  // the fused top-k's register budget (route_topk.cuh)

// An RMSNorm applied to x on the way in: x' = weight * x / sqrt(mean(x^2) + eps) per token, computed
// inside the GEMV (decode) or by a separate kernel first (cuBLAS path). normed_out, when set, receives x'.
struct GemvNorm {
  const float* weight = nullptr;  // [cols]
  float eps = 1e-6f;
  float* normed_out = nullptr;    // [tokens, cols] or null
};

// A router's softmax top-k fused behind its GEMV (y are the logits, rows the experts <= 512): the last
// block to finish routes each token. blocks_done is a zeroed counter the kernel leaves zeroed. When
// `ready` names a counter, the last block stores it once the routing and the normalised rows are
// written (the hand-over to expert workers; counter_kernels.h). When `soon` names one, the last block
// to start (after the wait for the earlier kernels) stores it: the workers may then let their expert
// kernels in, which wait for `ready` themselves (every router block is resident by then, so the
// experts' blocks take only the slots left over).
//
// one_cluster: where it serves (sm_90 and later, one token, at most kClusterRouterExperts experts), the
// router runs as one cluster of thread blocks instead (RouterClusterKernel, linear.cu): each block's
// logits go straight into the first block's shared memory, and that block routes after a cluster
// barrier, with no round trips through L2 to learn that it is the last. The same sums in the same
// order: the same logits, bit for bit.
struct GemvTopK {
  int top_k = 0;
  bool norm = false;  // renormalise the picked probabilities
  int32_t* ids = nullptr;     // [tokens, top_k]
  float* weights = nullptr;   // [tokens, top_k]
  unsigned int* blocks_done = nullptr;
  CounterStore ready;
  CounterStore soon;
  bool one_cluster = true;
};
constexpr int kClusterRouterExperts = 128;

// The GEMV kernel alone (tokens <= kGemvMaxTokens); cols a multiple of 8; `norm` may be null; `topk`
// (optional) needs `norm`.
cudaError_t LaunchGemv(const DeviceMatrix& w, const float* x, int tokens, float* y, bool accumulate,
                       const GemvNorm* norm, cudaStream_t stream, const GemvTopK* topk = nullptr);
// Whether LaunchGemv runs that router as one cluster (GemvTopK::one_cluster): asked for, one token, at
// most kClusterRouterExperts experts, and a GPU that launches and can hold such a cluster.
bool RouterRunsOnOneCluster(const DeviceMatrix& w, int tokens, const GemvTopK* topk);

// y = x rounded to bf16, n elements.
cudaError_t LaunchToBf16(const float* x, size_t n, __nv_bfloat16* y, cudaStream_t stream);

class LinearRunner {
 public:
  static absl::StatusOr<std::unique_ptr<LinearRunner>> Create(cudaStream_t stream);
  ~LinearRunner();
  LinearRunner(const LinearRunner&) = delete;
  LinearRunner& operator=(const LinearRunner&) = delete;

  // Enqueues y (=|+=) x . W^T on the runner's stream.
  absl::Status Run(const DeviceMatrix& w, const float* x, int tokens, float* y, bool accumulate);
  // The same with an RMSNorm of x first (see GemvNorm); norm.normed_out may be null.
  absl::Status RunNormed(const DeviceMatrix& w, const float* x, const GemvNorm& norm, int tokens, float* y,
                         bool accumulate);
  // A router: the normed product into logits y, then softmax top-k into topk.ids / topk.weights (fused
  // into the GEMV for decode batches, a separate kernel otherwise), then topk.ready stored (by the
  // GEMV's last block where KernelsStoreCounters(), else by a write enqueued behind the kernels);
  // topk.soon by the GEMV's last block to start, or by a write enqueued just before ready's.
  absl::Status RunRouter(const DeviceMatrix& w, const float* x, const GemvNorm& norm, int tokens, float* y,
                         const GemvTopK& topk);
  // Sizes the bf16 activation scratch for `elements` (tokens x cols), so that Run never allocates.
  absl::Status Reserve(size_t elements);

 private:
  LinearRunner() = default;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  __nv_bfloat16* x_bf16_ = nullptr;  // activations rounded for the tensor-core path
  size_t x_bf16_capacity_ = 0;
  float* normed_ = nullptr;          // the cuBLAS path's normalised activations
  size_t normed_capacity_ = 0;
};

}  // namespace pinmoe
