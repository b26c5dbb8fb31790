// CUDA error handling in the project's three tiers: a failed CUDA call at run time becomes an
// absl::Status naming the call and the error.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "common/str_cat.h"

namespace pinmoe {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

}  // namespace pinmoe

#define CUDA_RETURN_IF_ERROR(call) RETURN_IF_ERROR(::pinmoe::CudaStatus((call), #call))
