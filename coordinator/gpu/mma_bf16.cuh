// Warp-level bf16 tensor-core products (mma.sync m16n8k16, fp32 accumulation, sm_80 and later) and the
// packing they need, for kernels that lay out their own fragments (the decode attention's tensor-core
// form, dense_kernels.cu). Fragment layouts as the PTX ISA gives them, for lane = 4 * group + quad:
//   A (16 x 16, row-major): a0 = rows group, columns 2 quad and 2 quad + 1; a1 = row group + 8, the same
//     columns; a2, a3 = as a0, a1 at columns + 8. Lower-indexed element in the low half of each register.
//   B (16 x 8): b0 = rows 2 quad and 2 quad + 1 of column group; b1 = rows + 8.
//   C / D (16 x 8, fp32): d0, d1 = row group, columns 2 quad and 2 quad + 1; d2, d3 = row group + 8.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace pinmoe {

// d += A B.
__device__ __forceinline__ void MmaBf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Two values rounded to bf16 in one register, `lo` in the low half.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// x = hi + lo + (a rest of at most 2^-17 of |x|), hi and lo bf16: two bf16 products carry an fp32 operand
// to about 17 bits where one would carry 8.
__device__ __forceinline__ void SplitBf16(float x, float& hi, float& lo) {
  hi = __bfloat162float(__float2bfloat16_rn(x));
  lo = x - hi;
}

// The low (high) halves of x and y: one element from each of two rows, lo from x.
__device__ __forceinline__ uint32_t LowHalves(uint32_t x, uint32_t y) { return __byte_perm(x, y, 0x5410); }
__device__ __forceinline__ uint32_t HighHalves(uint32_t x, uint32_t y) { return __byte_perm(x, y, 0x7632); }

}  // namespace pinmoe
