// fp32 CPU kernels shared by the coordinator's dense layers and the workers' experts.
//
// Determinism matters more than peak speed here: every output element is one dot product accumulated in
// a fixed order (eight interleaved partial sums, then a fixed reduction) that does not depend on how many
// rows are batched together or which process runs it. That is what makes results bit-identical for any
// number of workers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pinmoe {

// Dot product of two fp32 vectors of length n in the fixed order described above.
float Dot(const float* a, const float* b, size_t n);

// y[t, o] = sum_i x[t, i] * w[o, i] for t < rows, o < out_dim (w is [out_dim, in_dim], row-major, as
// PyTorch stores Linear weights). `y` must not alias `x`.
void MatMulTransposed(const float* x, const float* w, float* y, size_t rows, size_t in_dim,
                      size_t out_dim);

// RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * weight, per row.
void RmsNorm(const float* x, const float* weight, float* y, size_t rows, size_t dim, float eps);

// SwiGLU FFN for `rows` tokens: y = down(silu(gate(x)) * up(x)).
// gate, up: [inter, hidden]; down: [hidden, inter]; scratch holds 2 * rows * inter floats.
void SwigluFfn(const float* x, const float* gate, const float* up, const float* down, float* y,
               size_t rows, size_t hidden, size_t inter, float* scratch);

}  // namespace pinmoe
