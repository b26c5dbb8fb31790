// Gated DeltaNet prefill on the GPU: the conv + delta rule of one layer (after its input projection),
// token-by-token recurrence against the chunked form, for prompt-sized steps.
//
// Shape: Qwen3-Next-80B-A3B (16 key heads, 32 value heads, head dims 128, conv kernel 4). The
// recurrence keeps one block per value head (32 blocks) walking the tokens; the chunked form solves 64
// tokens at a time in 32 x 4 blocks. Prints the median time of one layer per form and step size, and
// what 36 such layers (the model's DeltaNet layers) cost per prompt token.
//
//   build-device/bin/gpu_delta_net_bench [--tokens T ...]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "coordinator/gpu/delta_net.h"

namespace {

#define CHECK_CUDA(call)                                                                     \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "gpu_delta_net_bench: %s: %s\n", #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

float* DeviceRandom(size_t n, uint64_t seed, float scale, float mean = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  float* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, n * sizeof(float)));
  CHECK_CUDA(cudaMemcpy(p, v.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> steps;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--tokens") steps.push_back(std::atoi(argv[i + 1]));
  }
  if (steps.empty()) steps = {64, 512, 2048, 8192};
  const int nk = 16, nv = 32, dk = 128, dv = 128, kernel = 4, layers = 36, reps = 9;
  const int key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
  const int proj_stride = 2 * key_dim + 2 * value_dim + 2 * nv;
  const int max_tokens = *std::max_element(steps.begin(), steps.end());
  pinmoe::DeltaNetArgs a;
  a.nk = nk;
  a.nv = nv;
  a.dk = dk;
  a.dv = dv;
  a.kernel = kernel;
  a.proj = DeviceRandom(static_cast<size_t>(max_tokens) * proj_stride, 1, 1.f);
  a.proj_stride = proj_stride;
  a.conv_w = DeviceRandom(static_cast<size_t>(conv_dim) * kernel, 2, 0.5f);
  a.conv_state = DeviceRandom(static_cast<size_t>(kernel - 1) * conv_dim, 3, 1.f);
  a.a_log = DeviceRandom(nv, 4, 0.5f);
  a.dt_bias = DeviceRandom(nv, 5, 0.5f);
  a.norm_w = DeviceRandom(dv, 6, 0.3f, 1.f);
  a.state = DeviceRandom(static_cast<size_t>(nv) * dk * dv, 7, 0.3f);
  CHECK_CUDA(cudaMalloc(&a.conv_out, static_cast<size_t>(max_tokens) * conv_dim * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&a.core, static_cast<size_t>(max_tokens) * value_dim * sizeof(float)));
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("gpu_delta_net_bench on %s: Qwen3-Next DeltaNet layer (nk %d, nv %d, dk %d, dv %d), median of %d\n",
              prop.name, nk, nv, dk, dv, reps);
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int tokens : steps) {
    float ms[2] = {};
    for (int f = 0; f < 2; ++f) {
      a.form = f == 0 ? pinmoe::DeltaForm::kRecurrent : pinmoe::DeltaForm::kChunked;
      std::vector<float> times;
      for (int r = 0; r < reps + 1; ++r) {
        CHECK_CUDA(cudaEventRecord(start));
        CHECK_CUDA(pinmoe::LaunchDeltaConv(a, tokens, nullptr));
        CHECK_CUDA(pinmoe::LaunchDeltaRule(a, tokens, nullptr));
        CHECK_CUDA(cudaEventRecord(stop));
        CHECK_CUDA(cudaEventSynchronize(stop));
        float t = 0;
        CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
        if (r > 0) times.push_back(t);  // the first is the warm-up
      }
      std::sort(times.begin(), times.end());
      ms[f] = times[times.size() / 2];
    }
    std::printf("%5d tokens: recurrent %8.3f ms, chunked %7.3f ms (%.1fx); %d layers: %.2f vs %.2f us per token\n",
                tokens, ms[0], ms[1], ms[0] / ms[1], layers, 1e3 * ms[0] * layers / tokens,
                1e3 * ms[1] * layers / tokens);
  }
  return 0;
}
