#include "coordinator/gpu/linear.h"

#include "common/status.h"
#include "common/str_cat.h"
#include "coordinator/gpu/dense_kernels.h"
#include "worker/gpu/cuda_check.h"
#include "worker/gpu/stream_sync.h"

namespace pinmoe {
namespace {

absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(StrCat(what, ": cuBLAS status ", static_cast<int>(s)));
}

// Grows a stream's device scratch to hold n elements; the old one is freed only once queued work that
// may still read it has finished.
template <typename T>
absl::Status GrowScratch(cudaStream_t stream, size_t n, T** buffer, size_t* capacity) {
  if (n <= *capacity) return absl::OkStatus();
  if (*buffer != nullptr) {
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    cudaFree(*buffer);
  }
  *buffer = nullptr;
  *capacity = 0;
  CUDA_RETURN_IF_ERROR(cudaMalloc(buffer, n * sizeof(T)));
  *capacity = n;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LinearRunner>> LinearRunner::Create(cudaStream_t stream) {
  auto r = std::unique_ptr<LinearRunner>(new LinearRunner());
  r->stream_ = stream;
  RETURN_IF_ERROR(CublasStatus(cublasCreate(&r->handle_), "cublasCreate"));
  RETURN_IF_ERROR(CublasStatus(cublasSetStream(r->handle_, stream), "cublasSetStream"));
  return r;
}

absl::Status LinearRunner::Reserve(size_t n) {
  RETURN_IF_ERROR(GrowScratch(stream_, n, &normed_, &normed_capacity_));
  return GrowScratch(stream_, n, &x_bf16_, &x_bf16_capacity_);
}

absl::Status LinearRunner::RunNormed(const DeviceMatrix& w, const float* x, const GemvNorm& norm, int tokens,
                                     float* y, bool accumulate) {
  if (tokens <= kGemvMaxTokens) {
    return CudaStatus(LaunchGemv(w, x, tokens, y, accumulate, &norm, stream_), "GEMV launch");
  }
  float* normed = norm.normed_out;
  if (normed == nullptr) {
    RETURN_IF_ERROR(GrowScratch(stream_, static_cast<size_t>(tokens) * w.cols, &normed_, &normed_capacity_));
    normed = normed_;
  }
  CUDA_RETURN_IF_ERROR(LaunchRmsNorm(x, norm.weight, normed, tokens, static_cast<int>(w.cols), norm.eps, stream_));
  return Run(w, normed, tokens, y, accumulate);
}

absl::Status LinearRunner::RunRouter(const DeviceMatrix& w, const float* x, const GemvNorm& norm, int tokens,
                                     float* y, const GemvTopK& topk) {
  if (tokens <= kGemvMaxTokens && w.rows <= kGemvRouterMaxExperts) {
    GemvTopK fused = topk;
    if (!KernelsStoreCounters()) fused.ready = fused.soon = CounterStore();
    RETURN_IF_ERROR(CudaStatus(LaunchGemv(w, x, tokens, y, /*accumulate=*/false, &norm, stream_, &fused),
                               "router launch"));
    if (KernelsStoreCounters()) return absl::OkStatus();  // the kernel stored soon and ready
  } else {
    RETURN_IF_ERROR(RunNormed(w, x, norm, tokens, y, /*accumulate=*/false));
    RETURN_IF_ERROR(CudaStatus(LaunchRouteTopK(y, tokens, static_cast<int>(w.rows), topk.top_k, topk.norm,
                                               topk.ids, topk.weights, stream_),
                               "route top-k launch"));
  }
  if (topk.soon.counter != nullptr) RETURN_IF_ERROR(EnqueueWriteCounter(stream_, topk.soon.counter, topk.soon.value));
  if (topk.ready.counter == nullptr) return absl::OkStatus();
  return EnqueueWriteCounter(stream_, topk.ready.counter, topk.ready.value);
}

LinearRunner::~LinearRunner() {
  if (normed_ != nullptr) cudaFree(normed_);
  if (x_bf16_ != nullptr) cudaFree(x_bf16_);
  if (handle_ != nullptr) cublasDestroy(handle_);
}

absl::Status LinearRunner::Run(const DeviceMatrix& w, const float* x, int tokens, float* y, bool accumulate) {
  if (tokens <= kGemvMaxTokens) {
    return CudaStatus(LaunchGemv(w, x, tokens, y, accumulate, nullptr, stream_), "GEMV launch");
  }
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  const int m = static_cast<int>(w.rows), k = static_cast<int>(w.cols);
  if (!w.bf16) {
    return CublasStatus(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, m, tokens, k, &alpha,
                                    static_cast<const float*>(w.data), k, x, k, &beta, y, m),
                        "cublasSgemm");
  }
  const size_t n = static_cast<size_t>(tokens) * k;
  RETURN_IF_ERROR(GrowScratch(stream_, n, &x_bf16_, &x_bf16_capacity_));
  CUDA_RETURN_IF_ERROR(LaunchToBf16(x, n, x_bf16_, stream_));
  return CublasStatus(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, m, tokens, k, &alpha, w.data, CUDA_R_16BF,
                                   k, x_bf16_, CUDA_R_16BF, k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT),
                      "cublasGemmEx");
}

}  // namespace pinmoe
