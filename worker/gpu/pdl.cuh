// Programmatic dependent launch (Hopper and later): a kernel launched with LaunchPdl may be scheduled
// while the kernel before it in the stream is still running; it must call PdlWait() before it reads
// anything that kernel (or any earlier one) wrote, and may do independent work — such as pulling its
// own weights toward L2 — before that. PdlTrigger() lets the next kernel be scheduled early. This hides
// the launch latency and ramp-up of the small, dependent kernels of a decode step (about ten per
// layer). On older GPUs the attribute is not set and the calls compile to nothing.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <utility>

namespace pinmoe {

__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void PdlTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Asks L2 for the 128-byte line that holds p (a hint: nothing is read).
__device__ __forceinline__ void PrefetchLineL2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Prefetches [p, p + bytes) into L2, one 128-byte line per thread of the calling group of `threads`.
__device__ __forceinline__ void PrefetchL2(const void* p, size_t bytes, int thread, int threads) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = static_cast<size_t>(thread) * 128; off < bytes; off += static_cast<size_t>(threads) * 128) {
    PrefetchLineL2(c + off);
  }
}

// Whether the current GPU is sm_90 or later (Hopper: programmatic dependent launch, thread-block
// clusters), asked once.
inline bool HopperOrLater() {
  static const bool later = [] {
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    return major >= 9;
  }();
  return later;
}

inline bool PdlSupported() {
  static const bool supported = [] {
    const char* off = std::getenv("PINMOE_NO_PDL");  // for A/B measurements
    if (off != nullptr && off[0] == '1') return false;
    return HopperOrLater();
  }();
  return supported;
}

// Whether the GPU launches thread-block clusters.
inline bool ClustersSupported() { return HopperOrLater(); }

// The launch attribute for clusters of `cluster` blocks along x.
inline cudaLaunchAttribute ClusterAttribute(int cluster) {
  cudaLaunchAttribute a;
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = static_cast<unsigned int>(cluster);
  a.val.clusterDim.y = 1;
  a.val.clusterDim.z = 1;
  return a;
}

// LaunchPdl with the grid in clusters of `cluster` blocks along x (0: no clusters; then
// ClustersSupported() need not hold).
template <typename... KernelArgs, typename... Args>
cudaError_t LaunchPdlClustered(int cluster, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                               cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  unsigned int n = 0;
  if (PdlSupported()) {
    attribute[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 0) attribute[n++] = ClusterAttribute(cluster);
  config.attrs = attribute;
  config.numAttrs = n;
  cudaError_t err = cudaLaunchKernelEx(&config, kernel, static_cast<KernelArgs>(args)...);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchPdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  return LaunchPdlClustered(0, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace pinmoe
