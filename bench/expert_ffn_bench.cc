// CPU expert FFN throughput, in GB/s of expert weights streamed, beside this machine's memory bandwidth.
//
// Decode reads each routed expert's three matrices once per token, so at batch 1 the FFN is bound by
// memory: the fraction of the read bandwidth it reaches is the number that matters. The experts have
// Qwen3-30B-A3B's shape (hidden 2048, intermediate 768, fp32 after widening) and there are enough of them
// (default 48, 900 MB) that they cannot sit in cache; every step picks top_k (8) at random, as routing
// would.
//
//   build/bin/expert_ffn_bench [--experts N] [--seconds S] [--rows R]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/cpu_kernels.h"

namespace {

using Clock = std::chrono::steady_clock;

double Elapsed(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Read bandwidth: sum a buffer far larger than the caches.
double ReadBandwidth(const std::vector<float>& big, double seconds) {
  volatile float sink = 0;
  size_t bytes = 0;
  auto t0 = Clock::now();
  while (Elapsed(t0) < seconds) {
    float acc[8] = {};
    for (size_t i = 0; i + 8 <= big.size(); i += 8) {
      for (int k = 0; k < 8; ++k) acc[k] += big[i + k];
    }
    sink = sink + acc[0] + acc[7];
    bytes += big.size() * sizeof(float);
  }
  return bytes / Elapsed(t0) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int num_experts = 48, rows = 1, top_k = 8;
  double seconds = 3.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--experts") num_experts = std::atoi(argv[i + 1]);
    else if (a == "--seconds") seconds = std::atof(argv[i + 1]);
    else if (a == "--rows") rows = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: expert_ffn_bench [--experts N] [--seconds S] [--rows R]\n");
      return 2;
    }
  }
  const size_t hidden = 2048, inter = 768;
  const size_t expert_floats = 3 * hidden * inter;
  std::printf("expert FFN, Qwen3-30B-A3B expert shape: hidden %zu, intermediate %zu, fp32; %d experts "
              "(%.0f MB), top-%d per step, %d token(s) per step\n",
              hidden, inter, num_experts, num_experts * expert_floats * 4 / 1e6, top_k, rows);
  std::vector<float> weights(num_experts * expert_floats);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (float& w : weights) w = dist(rng);
  std::vector<float> x(rows * hidden, 0.5f), y(rows * hidden), scratch(2 * rows * inter);

  const double mem_gbs = ReadBandwidth(weights, seconds);
  std::uniform_int_distribution<int> pick(0, num_experts - 1);
  size_t experts_run = 0;
  auto t0 = Clock::now();
  while (Elapsed(t0) < seconds) {
    for (int k = 0; k < top_k; ++k) {
      const float* e = weights.data() + static_cast<size_t>(pick(rng)) * expert_floats;
      pinmoe::SwigluFfn(x.data(), e, e + hidden * inter, e + 2 * hidden * inter, y.data(), rows, hidden,
                        inter, scratch.data());
      ++experts_run;
    }
  }
  const double t = Elapsed(t0);
  const double gbs = experts_run * expert_floats * 4.0 / t / 1e9;
  const double gflops = experts_run * 2.0 * expert_floats * rows / t / 1e9;
  std::printf("memory read bandwidth (one thread, summing %.0f MB): %.2f GB/s\n",
              weights.size() * 4 / 1e6, mem_gbs);
  std::printf("expert FFN: %.2f GB/s of weights streamed (%.0f%% of the read bandwidth), %.2f GFLOP/s, "
              "%.2f ms per token-layer of %d experts\n",
              gbs, 100.0 * gbs / mem_gbs, gflops, 1e3 * t / (experts_run / top_k), top_k);
  return 0;
}
