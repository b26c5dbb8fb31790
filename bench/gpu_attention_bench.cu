// Decode attention on the GPU (q/k norm, RoPE, cache append and attention of one new token per layer,
// LaunchDecodeAttentionFused) at a given context, in its forms: one block per head (splits 0), the
// per-head split form with 1 to 32 blocks per head (PINMOE_ATTN_SPLITS=S PINMOE_ATTN_GROUPED=0 in the
// model) and the grouped split form, up to S blocks per column of a kv head's query heads, one per 256
// positions (the model's default, S = 32), on tensor cores where it serves (a bf16 cache, 8 query heads
// per kv head, head_dim 128) and then also on the CUDA cores.
//
// Shapes: Qwen3-30B-A3B (32 query heads, 4 kv heads, head_dim 128) and Qwen3-Next-80B-A3B's gated
// attention (16 / 2 / 256, a quarter of the dimensions rotated). Each layer has its own cache (fp32, or
// bf16 with --kv-cache-dtype bf16), and the layers are cycled so that, as in the model, a layer's cache is
// not in L2 when it is read. Prints the median time of one layer and the bytes of K and V it reads per
// second.
//
//   build-device/bin/gpu_attention_bench [--context N ...] [--splits S ...] [--kv-cache-dtype f32|bf16]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/env.h"
#include "coordinator/gpu/dense_kernels.h"

namespace {

void Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "gpu_attention_bench: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

float* Upload(const std::vector<float>& v) {
  float* p = nullptr;
  Check(cudaMalloc(&p, v.size() * sizeof(float)), "cudaMalloc");
  Check(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  return p;
}

// v in device memory as the cache holds it: fp32, or rounded to bf16.
void* UploadCache(const std::vector<float>& v, bool bf16) {
  if (!bf16) return Upload(v);
  std::vector<__nv_bfloat16> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = __float2bfloat16(v[i]);
  void* p = nullptr;
  Check(cudaMalloc(&p, h.size() * sizeof(h[0])), "cudaMalloc");
  Check(cudaMemcpy(p, h.data(), h.size() * sizeof(h[0]), cudaMemcpyHostToDevice), "cudaMemcpy");
  return p;
}

std::vector<float> Random(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

struct Shape {
  const char* name;
  int heads, kv_heads, head_dim, rotary_dim;
  bool gated;  // each query head followed by its gate in the fused projection (Qwen3-Next)
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> contexts, splits;
  bool bf16 = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--context") {
      contexts.push_back(std::atoi(value.c_str()));
    } else if (flag == "--splits") {
      splits.push_back(std::atoi(value.c_str()));
    } else if (flag == "--kv-cache-dtype" && (value == "f32" || value == "bf16")) {
      bf16 = value == "bf16";
    } else {
      std::fprintf(stderr, "gpu_attention_bench: unknown flag or value: %s %s\n", flag.c_str(), value.c_str());
      return 2;
    }
  }
  if (contexts.empty()) contexts = {128, 1024, 4096, 16384};
  if (splits.empty()) splits = {0, 1, 4, 8, 16, 32};
  const int max_context = *std::max_element(contexts.begin(), contexts.end());
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  const int reps = 7;
  for (const Shape& s : {Shape{"Qwen3-30B-A3B", 32, 4, 128, 128, false}, Shape{"Qwen3-Next-80B-A3B", 16, 2, 256, 64, true}}) {
    const int hd = s.head_dim, q_stride = (s.gated ? 2 : 1) * hd;
    const int row = s.heads * q_stride + 2 * s.kv_heads * hd;
    const size_t cache_floats = static_cast<size_t>(max_context) * s.kv_heads * hd;
    // Enough layers that their caches at the longest context exceed L2 twice over (at least 4).
    const size_t elem_bytes = bf16 ? 2 : sizeof(float), cache_bytes = 2 * cache_floats * elem_bytes;
    const int layers = static_cast<int>(std::clamp<size_t>(2 * prop.l2CacheSize / cache_bytes + 1, 4, 48));
    std::vector<void*> k_cache(layers), v_cache(layers);
    for (int l = 0; l < layers; ++l) {
      k_cache[l] = UploadCache(Random(cache_floats, 10 + l, 1.f), bf16);
      v_cache[l] = UploadCache(Random(cache_floats, 100 + l, 1.f), bf16);
    }
    float* qkv = Upload(Random(row, 1, 2.f));
    float* q_norm = Upload(Random(hd, 2, 0.3f));
    float* k_norm = Upload(Random(hd, 3, 0.3f));
    std::vector<float> inv(s.rotary_dim / 2);
    for (int i = 0; i < s.rotary_dim / 2; ++i) inv[i] = std::pow(1e6f, -2.f * i / s.rotary_dim);
    float* inv_freq = Upload(inv);
    float* out = nullptr;
    Check(cudaMalloc(&out, static_cast<size_t>(s.heads) * hd * sizeof(float)), "cudaMalloc");
    float* partials = nullptr;
    unsigned int* counters = nullptr;
    Check(cudaMalloc(&partials, pinmoe::AttnSplitPartialFloats(1, s.heads, hd, pinmoe::kAttnMaxSplits) * sizeof(float)),
          "cudaMalloc");
    Check(cudaMalloc(&counters, s.heads * sizeof(unsigned int)), "cudaMalloc");
    Check(cudaMemset(counters, 0, s.heads * sizeof(unsigned int)), "cudaMemset");
    std::printf("gpu_attention_bench on %s: %s decode attention (%d heads, %d kv heads, head_dim %d), %s cache, "
                "%d layers' caches cycled, median of %d\n",
                prop.name, s.name, s.heads, s.kv_heads, hd, bf16 ? "bf16" : "fp32", layers, reps);
    cudaEvent_t start, stop;
    Check(cudaEventCreate(&start), "cudaEventCreate");
    Check(cudaEventCreate(&stop), "cudaEventCreate");
    for (int context : contexts) {
      std::printf("  context %6d:", context);
      struct Form {
        int splits;
        bool grouped, tensor_cores;
      };
      std::vector<Form> forms;
      for (int sp : splits) {
        forms.push_back({sp, false, false});
        if (sp >= 1) forms.push_back({sp, true, true});
        // The grouped form's CUDA-core kernel too where the tensor-core one serves (bf16, group 8, 128).
        if (sp >= 1 && bf16 && s.heads / s.kv_heads % 8 == 0 && hd == 128) forms.push_back({sp, true, false});
      }
      for (const auto& [sp, grouped, tensor_cores] : forms) {
        pinmoe::QkNormRopeCacheArgs a;
        a.qkv = qkv;
        a.row_stride = row;
        a.q_head_stride = q_stride;
        a.k_offset = s.heads * q_stride;
        a.v_offset = s.heads * q_stride + s.kv_heads * hd;
        a.heads = s.heads;
        a.kv_heads = s.kv_heads;
        a.head_dim = hd;
        a.rotary_dim = s.rotary_dim;
        a.q_norm = q_norm;
        a.k_norm = k_norm;
        a.inv_freq = inv_freq;
        a.first_position = context - 1;  // the new token attends `context` positions
        a.splits = sp;
        a.grouped = grouped;
        a.tensor_cores = tensor_cores;
        a.split_partials = partials;
        a.split_counters = counters;
        a.cache_bf16 = bf16;
        a.prefetch = pinmoe::EnvInt("PINMOE_ATTN_PREFETCH", 1) != 0;  // as the model reads it (gpu_causal_lm.cc)
        std::vector<float> ms;
        for (int r = 0; r < reps + 1; ++r) {
          Check(cudaEventRecord(start), "cudaEventRecord");
          for (int l = 0; l < layers; ++l) {
            a.k_cache = k_cache[l];
            a.v_cache = v_cache[l];
            Check(pinmoe::LaunchDecodeAttentionFused(a, out, nullptr), "decode attention launch");
          }
          Check(cudaEventRecord(stop), "cudaEventRecord");
          Check(cudaEventSynchronize(stop), "cudaEventSynchronize");
          float t = 0;
          Check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
          if (r > 0) ms.push_back(t / layers);  // the first round warms up
        }
        std::sort(ms.begin(), ms.end());
        const double us = ms[ms.size() / 2] * 1e3;
        const double kv_bytes = 2.0 * context * s.kv_heads * hd * elem_bytes;
        const char* name = !grouped ? "splits " : tensor_cores ? "grouped " : "grouped, CUDA cores ";
        std::printf("  %s%2d %8.1f us (%5.0f GB/s)", name, sp, us,
                    kv_bytes / (us * 1e-6) / 1e9);
      }
      std::printf("\n");
    }
    for (int l = 0; l < layers; ++l) {
      cudaFree(k_cache[l]);
      cudaFree(v_cache[l]);
    }
    cudaFree(qkv);
    cudaFree(q_norm);
    cudaFree(k_norm);
    cudaFree(inv_freq);
    cudaFree(out);
    cudaFree(partials);
    cudaFree(counters);
  }
  return 0;
}
