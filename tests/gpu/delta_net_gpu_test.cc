// The Gated DeltaNet kernels (conv, the recurrence, the chunked form) against the CPU reference
// GatedDeltaRule over several shapes and token counts, from random (non-zero) conv and recurrent
// states, and batched sequences against the same sequences one at a time.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "coordinator/gpu/delta_net.h"
#include "coordinator/layers.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"

namespace pinmoe {
namespace {

using testing::Dev;
using testing::Random;

struct Shape {
  int nk, nv, dk, dv, kernel;
  float a_log_mean;  // the decay's speed: exp(A_log) scales the per-token log decay
};

struct Sizes {
  int qkvz_dim, proj_stride, conv_dim, value_dim;
  size_t conv_state, state;
};

Sizes SizesOf(const Shape& s) {
  Sizes z;
  const int key_dim = s.nk * s.dk;
  z.value_dim = s.nv * s.dv;
  z.qkvz_dim = 2 * key_dim + 2 * z.value_dim;
  z.proj_stride = z.qkvz_dim + 2 * s.nv + 3;  // padded, as a fused projection with other rows might be
  z.conv_dim = 2 * key_dim + z.value_dim;
  z.conv_state = static_cast<size_t>(s.kernel - 1) * z.conv_dim;
  z.state = static_cast<size_t>(s.nv) * s.dk * s.dv;
  return z;
}

// Max |a - b| / (1 + |b|) and the relative L2 error.
struct Err {
  double max_rel = 0, l2 = 0;
};
Err Compare(const std::vector<float>& got, const std::vector<float>& want) {
  double e2 = 0, w2 = 0;
  Err e;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) {
      e.max_rel = INFINITY;
      continue;
    }
    const double d = static_cast<double>(got[i]) - want[i];
    e.max_rel = std::max(e.max_rel, std::fabs(d) / (1.0 + std::fabs(want[i])));
    e2 += d * d;
    w2 += static_cast<double>(want[i]) * want[i];
  }
  e.l2 = std::sqrt(e2 / std::max(w2, 1e-30));
  return e;
}

// The layer's weights and its states for `batch` sequences.
struct Case {
  Shape s;
  Sizes z;
  int batch = 1, tokens = 1;
  std::vector<float> proj, conv_w, a_log, dt_bias, norm_w, conv_state, state;
};

Case MakeCase(const Shape& s, int batch, int tokens, uint64_t seed) {
  Case c;
  c.s = s;
  c.z = SizesOf(s);
  c.batch = batch;
  c.tokens = tokens;
  c.proj = Random(static_cast<size_t>(batch) * tokens * c.z.proj_stride, seed);
  c.conv_w = Random(static_cast<size_t>(c.z.conv_dim) * s.kernel, seed + 1, 0.5f);
  c.a_log = Random(s.nv, seed + 2, 0.5f, s.a_log_mean);
  c.dt_bias = Random(s.nv, seed + 3, 0.5f);
  c.norm_w = Random(s.dv, seed + 4, 0.3f, 1.f);
  c.conv_state = Random(batch * c.z.conv_state, seed + 5);
  c.state = Random(batch * c.z.state, seed + 6, 0.3f);
  return c;
}

// The CPU reference, one sequence at a time: core [batch * tokens, value_dim]; the states are updated.
std::vector<float> Reference(Case& c) {
  const Shape& s = c.s;
  std::vector<float> core(static_cast<size_t>(c.batch) * c.tokens * c.z.value_dim);
  for (int b = 0; b < c.batch; ++b) {
    DeltaNetStep d;
    d.key_heads = s.nk;
    d.value_heads = s.nv;
    d.key_head_dim = s.dk;
    d.value_head_dim = s.dv;
    d.conv_kernel = s.kernel;
    d.eps = 1e-6f;
    d.conv = c.conv_w.data();
    d.a_log = c.a_log.data();
    d.dt_bias = c.dt_bias.data();
    d.norm = c.norm_w.data();
    d.conv_state = c.conv_state.data() + b * c.z.conv_state;
    d.state = c.state.data() + b * c.z.state;
    const float* rows = c.proj.data() + static_cast<size_t>(b) * c.tokens * c.z.proj_stride;
    GatedDeltaRule(d, rows, c.z.proj_stride, rows + c.z.qkvz_dim, c.z.proj_stride, c.tokens,
                   core.data() + static_cast<size_t>(b) * c.tokens * c.z.value_dim);
  }
  return core;
}

struct GpuResult {
  std::vector<float> core, conv_state, state;
};

// Runs the two launchers over the case's inputs (its states as they are now).
void RunGpu(const Case& c, GpuResult* r, DeltaForm form = DeltaForm::kAuto) {
  const Shape& s = c.s;
  Dev proj(c.proj), conv_w(c.conv_w), a_log(c.a_log), dt_bias(c.dt_bias), norm_w(c.norm_w),
      conv_state(c.conv_state), state(c.state);
  const size_t rows = static_cast<size_t>(c.batch) * c.tokens;
  Dev conv_out(rows * c.z.conv_dim * sizeof(float)), core(rows * c.z.value_dim * sizeof(float));
  // Poison the outputs: every element must be written.
  ASSERT_CUDA(cudaMemset(core.p, 0xff, core.bytes));
  ASSERT_CUDA(cudaMemset(conv_out.p, 0xff, conv_out.bytes));
  DeltaNetArgs a;
  a.nk = s.nk;
  a.nv = s.nv;
  a.dk = s.dk;
  a.dv = s.dv;
  a.kernel = s.kernel;
  a.proj = proj.as<float>();
  a.proj_stride = c.z.proj_stride;
  a.conv_w = conv_w.as<float>();
  a.conv_state = conv_state.as<float>();
  a.conv_out = conv_out.as<float>();
  a.a_log = a_log.as<float>();
  a.dt_bias = dt_bias.as<float>();
  a.norm_w = norm_w.as<float>();
  a.eps = 1e-6f;
  a.state = state.as<float>();
  a.core = core.as<float>();
  a.batch = c.batch;
  a.form = form;
  ASSERT_CUDA(LaunchDeltaConv(a, c.tokens, nullptr));
  ASSERT_CUDA(LaunchDeltaRule(a, c.tokens, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  r->core = core.get<float>();
  r->conv_state = conv_state.get<float>();
  r->state = state.get<float>();
}

const Shape kShapes[] = {
    {2, 4, 16, 24, 4, 0.f},       // the test checkpoints' shape
    {16, 32, 128, 128, 4, 0.f},   // Qwen3-Next-80B-A3B
    {16, 32, 128, 128, 4, -4.f},  // the same with slow decay: long memory across chunks
    {1, 3, 64, 40, 3, 0.5f},      // value columns that do not fill the last slice; another kernel size
};

// One sequence, each form at every length (the step size picks between them: below and from
// kDeltaChunkedMinTokens): one partial chunk, exact chunks, several chunks with a partial last one.
TEST(DeltaNetGpu, BothFormsMatchCpuReference) {
  for (const Shape& s : kShapes) {
    for (int tokens : {1, 3, kDeltaChunkedMinTokens - 1, kDeltaChunkedMinTokens, 64, 100, 129, 300}) {
      for (DeltaForm form : {DeltaForm::kRecurrent, DeltaForm::kChunked}) {
        Case c = MakeCase(s, /*batch=*/1, tokens, 1000u * tokens + s.dv);
        GpuResult g;
        RunGpu(c, &g, form);
        if (HasFatalFailure()) return;
        const std::vector<float> ref = Reference(c);
        const Err core = Compare(g.core, ref), state = Compare(g.state, c.state);
        const Err conv = Compare(g.conv_state, c.conv_state);
        const bool chunked = form == DeltaForm::kChunked;
        std::printf("delta net nk %d nv %d dk %d dv %d a_log %+.1f, %3d tokens (%s): core max %.1e L2 %.1e, "
                    "state max %.1e L2 %.1e\n",
                    s.nk, s.nv, s.dk, s.dv, s.a_log_mean, tokens, chunked ? "chunked" : "recurrent", core.max_rel,
                    core.l2, state.max_rel, state.l2);
        // The recurrence follows the CPU's order (differences are expf/sqrtf ulps); the chunked form
        // reassociates every sum (a triangular solve instead of the sequence).
        const double max_tol = chunked ? 2e-3 : 1e-4, l2_tol = chunked ? 2e-4 : 1e-5;
        EXPECT_LT(core.max_rel, max_tol) << tokens << " tokens, dv " << s.dv << (chunked ? " chunked" : "");
        EXPECT_LT(core.l2, l2_tol) << tokens << " tokens, dv " << s.dv << (chunked ? " chunked" : "");
        EXPECT_LT(state.max_rel, max_tol) << tokens << " tokens, dv " << s.dv << (chunked ? " chunked" : "");
        EXPECT_LT(state.l2, l2_tol) << tokens << " tokens, dv " << s.dv << (chunked ? " chunked" : "");
        EXPECT_EQ(conv.max_rel, 0.0) << "the conv state holds copies of the inputs";
      }
    }
  }
}

// Decode-shaped batches: each sequence has its own states and equals the CPU run of that sequence.
TEST(DeltaNetGpu, BatchedSequencesKeepTheirOwnState) {
  for (const Shape& s : {kShapes[0], kShapes[1]}) {
    for (int batch : {2, 5}) {
      for (int tokens : {1, 2}) {
        Case c = MakeCase(s, batch, tokens, 77u * batch + tokens);
        GpuResult g;
        RunGpu(c, &g);
        if (HasFatalFailure()) return;
        const std::vector<float> ref = Reference(c);
        const Err core = Compare(g.core, ref), state = Compare(g.state, c.state);
        EXPECT_LT(core.max_rel, 1e-4) << batch << " x " << tokens;
        EXPECT_LT(state.max_rel, 1e-4) << batch << " x " << tokens;
        EXPECT_EQ(Compare(g.conv_state, c.conv_state).max_rel, 0.0);
      }
    }
  }
}

// Chunked prefill followed by recurrent decode steps equals the reference over the whole sequence: the
// chunked form leaves the state the recurrence continues from.
TEST(DeltaNetGpu, ChunkedPrefillThenDecode) {
  const Shape s = kShapes[1];
  Case c = MakeCase(s, 1, 200, 5);
  GpuResult g;
  RunGpu(c, &g);
  if (HasFatalFailure()) return;
  Reference(c);  // c's states are now the reference's after the prompt
  // Continue both from their own states.
  Case cpu = c;
  Case next = c;
  next.state = g.state;
  next.conv_state = g.conv_state;
  next.tokens = 1;
  for (int step = 0; step < 8; ++step) {
    const std::vector<float> row = Random(c.z.proj_stride, 900 + step);
    next.proj = row;
    cpu.proj = row;
    cpu.tokens = 1;
    GpuResult d;
    RunGpu(next, &d);
    if (HasFatalFailure()) return;
    const std::vector<float> ref = Reference(cpu);
    EXPECT_LT(Compare(d.core, ref).max_rel, 2e-3) << "decode step " << step;
    next.state = d.state;
    next.conv_state = d.conv_state;
  }
  EXPECT_LT(Compare(next.state, cpu.state).max_rel, 2e-3);
}

}  // namespace
}  // namespace pinmoe
