// Does pulling a decode GEMV's weights into L2 ahead of it pay, and which GEMV layout streams fastest?
// Times, per layer of a 48-layer graph (48 distinct matrices, so nothing stays in L2 from one replay to
// the next):
//   cold          the product's GEMV (LaunchGemv) alone, back to back
//   idle+gemv     a 1-block kernel spinning for --idle-us (an attention-like phase that leaves device
//                 memory idle), then the GEMV
//   bulk+idle+gemv, lines+idle+gemv, loads+idle+gemv
//                 the same with the matrix requested into L2 at the start of the idle phase: by bulk
//                 prefetches (cp.async.bulk.prefetch.L2), by one prefetch.global.L2 per 128-byte line,
//                 or by plain loads whose results are discarded
//   hot           the same matrix every time (it stays in L2 when it fits): the GEMV's floor from L2
//   splitk*, persist*, read
//                 the same cold and hot for candidate layouts: a block of 256 threads splitting the
//                 columns over 8 or 16 rows, the same over 8 or 4 rows with the grid cut to one
//                 resident wave walking the rows (what linear.cu does now), and a plain read of every
//                 byte (the floor). Results: bench/NOTES.md.
//
//   build-device/bin/gpu_gemv_l2_bench [--rows R --cols C --idle-us U --blocks B]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "coordinator/gpu/linear.h"
#include "worker/gpu/pdl.cuh"
#include "worker/gpu/row_dot.cuh"

using namespace pinmoe;

namespace {

#define CHECK_CUDA(call)                                                                     \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "gpu_gemv_l2_bench: %s: %s\n", #call, cudaGetErrorString(e_));   \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

__global__ void Fill(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffff) / 65536.f - 0.5f) * 0.05f);
  }
}

enum Mode { kNone = 0, kBulk = 1, kLines = 2, kLoads = 3 };

struct L2Prefetch {
  const void* data = nullptr;
  size_t bytes = 0;
};

// The block's share of `range` as bulk L2 prefetches (Hopper's copy engine), 32 KB per instruction.
__device__ void BulkPrefetchL2(L2Prefetch range, int block, int blocks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr size_t kPiece = 32 * 1024;
  const size_t bytes = range.bytes & ~static_cast<size_t>(15), pieces = (bytes + kPiece - 1) / kPiece;
  const char* base = static_cast<const char*>(range.data);
  const size_t step = static_cast<size_t>(blocks) * blockDim.x;
  for (size_t i = block + static_cast<size_t>(threadIdx.x) * blocks; i < pieces; i += step) {
    const size_t off = i * kPiece;
    const unsigned size = static_cast<unsigned>(bytes - off < kPiece ? bytes - off : kPiece);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + off), "r"(size) : "memory");
  }
#endif
}

// Block 0 spins for `cycles` (the idle phase); every block first requests its share of the range.
__global__ void IdleKernel(L2Prefetch range, int mode, long long cycles, unsigned* sink) {
  if (mode == kBulk) BulkPrefetchL2(range, blockIdx.x, gridDim.x);
  const size_t threads = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t t = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (mode == kLines) PrefetchL2(range.data, range.bytes, static_cast<int>(t), static_cast<int>(threads));
  if (mode == kLoads) {
    const uint4* p = static_cast<const uint4*>(range.data);
    unsigned acc = 0;
    for (size_t i = t * 8; i < range.bytes / 16; i += threads * 8) acc ^= __ldcg(p + i).x;  // one per 128 B
    if (acc == 0x9e3779b9u) *sink = acc;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
  }
}

// Candidate: each block takes R rows; its 256 threads split the columns (16 bytes each per step), so each
// thread keeps R loads in flight; partial sums meet in shared memory in a fixed order. persistent: the
// grid is sized to the resident blocks and each block walks row groups, requesting the next group's
// weights before computing the current one.
template <int R, bool kPersistent>
__global__ void __launch_bounds__(256) GemvSplitK(const __nv_bfloat16* __restrict__ w, const float* __restrict__ x,
                                                  int rows, int cols, float* __restrict__ y) {
  __shared__ float red[8][R];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = cols / 8, groups = rows / R;
  int g = blockIdx.x;
  uint4 v[R];
  auto load = [&](int grp, int c) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      v[r] = __ldg(reinterpret_cast<const uint4*>(w + (static_cast<size_t>(grp) * R + r) * cols) + c);
    }
  };
  if (g < groups) load(g, threadIdx.x);
  PdlWait();
  PdlTrigger();
  while (g < groups) {
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    for (int c = threadIdx.x; c < chunks; c += 256) {
      const float* xc = x + c * 8;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += Dot16(v[r], xc, __nv_bfloat16());
      int nc = c + 256, ng = g;
      if (nc >= chunks) {
        nc = threadIdx.x;
        ng = kPersistent ? g + gridDim.x : groups;
      }
      if (ng < groups) load(ng, nc);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float t = WarpSum(acc[r]);
      if (lane == 0) red[warp][r] = t;
    }
    __syncthreads();
    if (threadIdx.x < R) {
      float t = 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) t += red[k][threadIdx.x];
      y[static_cast<size_t>(g) * R + threadIdx.x] = t;
    }
    __syncthreads();
    if (!kPersistent) break;
    g += gridDim.x;
  }
}

// Floor: read every byte once (4 loads of 16 B in flight per thread), no arithmetic to speak of.
__global__ void __launch_bounds__(256) ReadAll(const uint4* __restrict__ p, size_t n, unsigned* sink) {
  PdlWait();
  PdlTrigger();
  unsigned acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldg(p + i), b = __ldg(p + i + stride);
    const uint4 c = __ldg(p + i + 2 * stride), d = __ldg(p + i + 3 * stride);
    acc ^= a.x ^ b.y ^ c.z ^ d.w;
  }
  for (; i < n; i += stride) acc ^= __ldg(p + i).x;
  if (acc == 0x9e3779b9u) *sink = acc;
}

}  // namespace

int main(int argc, char** argv) {
  int rows = 5120, cols = 2048, blocks = 32, layers = 48, reps = 20;
  double idle_us = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--rows") rows = std::atoi(argv[i + 1]);
    else if (a == "--cols") cols = std::atoi(argv[i + 1]);
    else if (a == "--idle-us") idle_us = std::atof(argv[i + 1]);
    else if (a == "--blocks") blocks = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "gpu_gemv_l2_bench: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const size_t elems = static_cast<size_t>(rows) * cols, bytes = elems * 2;
  std::vector<__nv_bfloat16*> w(layers);
  for (int l = 0; l < layers; ++l) {
    CHECK_CUDA(cudaMalloc(&w[l], bytes));
    Fill<<<1024, 256>>>(w[l], elems, 17u + l);
  }
  float *x = nullptr, *y = nullptr;
  unsigned* sink = nullptr;
  CHECK_CUDA(cudaMalloc(&x, cols * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&y, rows * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&sink, sizeof(unsigned)));
  CHECK_CUDA(cudaMemset(x, 0, cols * sizeof(float)));
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int clock_khz = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  const long long cycles = static_cast<long long>(idle_us * clock_khz / 1e3);
  std::printf("device: %s (%d SMs, %d MB L2); matrix %d x %d bf16 = %.1f MB, %d layers; idle phase %.1f us, "
              "%d blocks\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, rows, cols, bytes / 1e6, layers, idle_us,
              blocks);
  struct Case {
    const char* name;
    bool idle;
    int mode;
    bool hot;
    int kernel = 0;  // 0 LaunchGemv, 1 split-K R=8, 2 split-K R=16, 3 persistent R=8, 4 persistent R=4, 5 read
  };
  const Case cases[] = {{"cold", false, kNone, false},          {"idle+gemv", true, kNone, false},
                        {"bulk+idle+gemv", true, kBulk, false}, {"lines+idle+gemv", true, kLines, false},
                        {"loads+idle+gemv", true, kLoads, false}, {"idle alone", true, kNone, false},
                        {"hot", false, kNone, true},
                        {"splitk8 cold", false, kNone, false, 1}, {"splitk8 hot", false, kNone, true, 1},
                        {"splitk16 cold", false, kNone, false, 2}, {"splitk16 hot", false, kNone, true, 2},
                        {"persist8 cold", false, kNone, false, 3}, {"persist8 hot", false, kNone, true, 3},
                        {"persist4 cold", false, kNone, false, 4}, {"persist4 hot", false, kNone, true, 4},
                        {"read cold", false, kNone, false, 5}, {"read hot", false, kNone, true, 5}};
  for (const Case& c : cases) {
    const bool gemv = std::string(c.name) != "idle alone";
    CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int l = 0; l < layers; ++l) {
      const DeviceMatrix m{c.hot ? w[0] : w[l], true, rows, cols};
      if (c.idle) IdleKernel<<<blocks, 256, 0, s>>>(L2Prefetch{m.data, bytes}, c.mode, cycles, sink);
      const __nv_bfloat16* wp = static_cast<const __nv_bfloat16*>(m.data);
      if (!gemv) continue;
      switch (c.kernel) {
        case 0: CHECK_CUDA(LaunchGemv(m, x, 1, y, false, nullptr, s)); break;
        case 1:
          CHECK_CUDA(LaunchPdl(GemvSplitK<8, false>, dim3(rows / 8), dim3(256), 0, s, wp, x, rows, cols, y));
          break;
        case 2:
          CHECK_CUDA(LaunchPdl(GemvSplitK<16, false>, dim3(rows / 16), dim3(256), 0, s, wp, x, rows, cols, y));
          break;
        case 3: {
          int grid = 0;
          CHECK_CUDA(ResidentGrid(GemvSplitK<8, true>, 256, 0, rows / 8, &grid));
          CHECK_CUDA(LaunchPdl(GemvSplitK<8, true>, dim3(grid), dim3(256), 0, s, wp, x, rows, cols, y));
          break;
        }
        case 4: {
          int grid = 0;
          CHECK_CUDA(ResidentGrid(GemvSplitK<4, true>, 256, 0, rows / 4, &grid));
          CHECK_CUDA(LaunchPdl(GemvSplitK<4, true>, dim3(grid), dim3(256), 0, s, wp, x, rows, cols, y));
          break;
        }
        case 5: {
          const uint4* p = reinterpret_cast<const uint4*>(wp);
          int grid = 0;
          CHECK_CUDA(ResidentGrid(ReadAll, 256, 0, static_cast<long>(bytes / 16), &grid));
          CHECK_CUDA(LaunchPdl(ReadAll, dim3(grid), dim3(256), 0, s, p, bytes / 16, sink));
          break;
        }
      }
    }
    cudaGraph_t g;
    CHECK_CUDA(cudaStreamEndCapture(s, &g));
    cudaGraphExec_t exec;
    CHECK_CUDA(cudaGraphInstantiate(&exec, g, 0));
    CHECK_CUDA(cudaGraphLaunch(exec, s));
    CHECK_CUDA(cudaStreamSynchronize(s));
    cudaEvent_t a, b;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    CHECK_CUDA(cudaEventRecord(a, s));
    for (int r = 0; r < reps; ++r) CHECK_CUDA(cudaGraphLaunch(exec, s));
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    const double us = ms * 1e3 / reps / layers;
    std::printf("%-18s %8.2f us per layer\n", c.name, us);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(g);
  }
  return 0;
}
