#include "common/cpu_kernels.h"

#include <cmath>

namespace pinmoe {

float Dot(const float* a, const float* b, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  for (; i < n; ++i) acc[i % 8] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void MatMulTransposed(const float* x, const float* w, float* y, size_t rows, size_t in_dim,
                      size_t out_dim) {
  // Blocks of output rows keep a slice of w in cache while it meets every token.
  constexpr size_t kOutBlock = 64;
  for (size_t o0 = 0; o0 < out_dim; o0 += kOutBlock) {
    size_t o1 = o0 + kOutBlock < out_dim ? o0 + kOutBlock : out_dim;
    for (size_t t = 0; t < rows; ++t) {
      const float* xr = x + t * in_dim;
      float* yr = y + t * out_dim;
      for (size_t o = o0; o < o1; ++o) yr[o] = Dot(xr, w + o * in_dim, in_dim);
    }
  }
}

void RmsNorm(const float* x, const float* weight, float* y, size_t rows, size_t dim, float eps) {
  for (size_t t = 0; t < rows; ++t) {
    const float* xr = x + t * dim;
    float* yr = y + t * dim;
    float ss = Dot(xr, xr, dim);
    float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (size_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }

void SwigluFfn(const float* x, const float* gate, const float* up, const float* down, float* y,
               size_t rows, size_t hidden, size_t inter, float* scratch) {
  float* g = scratch;
  float* u = scratch + rows * inter;
  MatMulTransposed(x, gate, g, rows, hidden, inter);
  MatMulTransposed(x, up, u, rows, hidden, inter);
  for (size_t i = 0; i < rows * inter; ++i) g[i] = Silu(g[i]) * u[i];
  MatMulTransposed(g, down, y, rows, inter, hidden);
}

}  // namespace pinmoe
