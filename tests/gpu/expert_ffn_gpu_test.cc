// The GPU expert FFNs against a CPU reference (double accumulation over the same bf16 weights), over
// several shapes, token counts and top-k, with some experts owned elsewhere (their outputs must be left
// untouched): the decode kernels (fp32 activations) and the grouped tensor-core prefill kernels (bf16
// activations, so the reference rounds x and the SwiGLU output to bf16 as they do); the decode kernels'
// in-kernel counter store and wait too. Runs on a machine with a GPU: scripts/device-test.
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"
#include "worker/gpu/expert_ffn.h"

namespace pinmoe {
namespace {


struct Shape {
  int hidden, inter, experts, tokens, top_k;
  bool fp32 = false;     // fp32 weights instead of bf16
  bool grouped = false;  // the grouped prefill kernels instead of the decode kernels
};

class ExpertFfnGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(ExpertFfnGpuTest, MatchesCpuReference) {
  const Shape s = GetParam();
  std::mt19937 rng(s.hidden * 31 + s.tokens);
  std::normal_distribution<float> normal(0.f, 1.f);
  const size_t in_elems = static_cast<size_t>(s.inter) * s.hidden;
  // Host weights (bf16 bits) and their fp32 values.
  std::vector<std::vector<uint16_t>> w(s.experts * 3);
  // Weight values are bf16-representable in both modes, so one reference serves both.
  for (auto& m : w) {
    m.resize(in_elems);
    for (auto& v : m) v = F32ToBf16(normal(rng) / std::sqrt(static_cast<float>(s.hidden)));
  }
  const size_t wbytes = s.fp32 ? 4 : 2;
  std::vector<float> x(static_cast<size_t>(s.tokens) * s.hidden);
  for (float& v : x) v = normal(rng);
  std::vector<int32_t> routing(static_cast<size_t>(s.tokens) * s.top_k);
  for (int t = 0; t < s.tokens; ++t) {
    std::vector<int> ids(s.experts);
    for (int e = 0; e < s.experts; ++e) ids[e] = e;
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int k = 0; k < s.top_k; ++k) routing[t * s.top_k + k] = ids[k];
  }
  // This "worker" owns the even experts.
  auto owned = [](int e) { return e % 2 == 0; };

  std::vector<void*> dev(w.size(), nullptr);
  std::vector<GpuExpert> table(s.experts);
  for (int e = 0; e < s.experts; ++e) {
    if (!owned(e)) continue;
    for (int p = 0; p < 3; ++p) {
      ASSERT_CUDA(cudaMalloc(&dev[e * 3 + p], in_elems * wbytes));
      if (s.fp32) {
        std::vector<float> wide(in_elems);
        for (size_t i = 0; i < in_elems; ++i) wide[i] = Bf16ToF32(w[e * 3 + p][i]);
        ASSERT_CUDA(cudaMemcpy(dev[e * 3 + p], wide.data(), in_elems * 4, cudaMemcpyHostToDevice));
      } else {
        ASSERT_CUDA(cudaMemcpy(dev[e * 3 + p], w[e * 3 + p].data(), in_elems * 2, cudaMemcpyHostToDevice));
      }
    }
    table[e] = {dev[e * 3], dev[e * 3 + 1], dev[e * 3 + 2]};
  }
  const size_t pairs = routing.size();
  float *d_x, *d_act, *d_out;
  int32_t* d_routing;
  GpuExpert* d_table;
  ASSERT_CUDA(cudaMalloc(&d_x, x.size() * 4));
  ASSERT_CUDA(cudaMalloc(&d_act, pairs * s.inter * 4));
  ASSERT_CUDA(cudaMalloc(&d_out, pairs * s.hidden * 4));
  ASSERT_CUDA(cudaMalloc(&d_routing, pairs * 4));
  ASSERT_CUDA(cudaMalloc(&d_table, table.size() * sizeof(GpuExpert)));
  ASSERT_CUDA(cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(d_routing, routing.data(), pairs * 4, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(d_table, table.data(), table.size() * sizeof(GpuExpert), cudaMemcpyHostToDevice));
  // Poison: every owned pair must be overwritten, every other pair left alone.
  std::vector<float> poison(pairs * s.hidden, 12345.f);
  ASSERT_CUDA(cudaMemcpy(d_out, poison.data(), poison.size() * 4, cudaMemcpyHostToDevice));

  ExpertFfnArgs a;
  a.x = d_x;
  a.routing = d_routing;
  a.experts = d_table;
  a.num_experts = s.experts;
  a.tokens = s.tokens;
  a.top_k = s.top_k;
  a.hidden = s.hidden;
  a.inter = s.inter;
  a.act = d_act;
  a.out = d_out;
  a.fp32_weights = s.fp32;
  GroupedFfnScratch g;
  std::vector<void*> scratch;
  if (s.grouped) {
    const int max_tiles = GroupedMaxTiles(static_cast<int>(pairs), s.experts);
    for (auto [ptr, bytes] : {std::pair<void*, size_t>{&g.sorted_pair, pairs * 4},
                              {&g.tile_expert, max_tiles * 4ul}, {&g.tile_row0, max_tiles * 4ul},
                              {&g.tile_rows, max_tiles * 4ul}, {&g.num_tiles, 4ul}, {&g.act, pairs * s.inter * 2}}) {
      ASSERT_CUDA(cudaMalloc(static_cast<void**>(ptr), bytes));
      scratch.push_back(*static_cast<void**>(ptr));
    }
    ASSERT_CUDA(LaunchExpertFfnGrouped(a, g, nullptr));
  } else {
    // The decode kernels also hand over: the down kernel's last block stores a counter (system scope
    // on every other shape), leaving its arrival counter zeroed; or, on a third of the shapes (one-token
    // ones among them), every block adds its share to a counter that holds value - add, with an `add`
    // small enough (37 + tokens) that the grid is cut to it.
    for (auto [ptr, bytes] : {std::pair<void*, size_t>{&a.done.counter, 4ul}, {&a.arrivals, 4ul}}) {
      ASSERT_CUDA(cudaMalloc(static_cast<void**>(ptr), bytes));
      ASSERT_CUDA(cudaMemset(*static_cast<void**>(ptr), 0, bytes));
      scratch.push_back(*static_cast<void**>(ptr));
    }
    a.done.value = 1000u + s.tokens;
    a.done.system = s.tokens % 2 == 1;
    if ((s.tokens + s.top_k) % 3 == 0) {
      a.done.add = 37u + s.tokens;
      const uint32_t before = a.done.value - a.done.add;
      ASSERT_CUDA(cudaMemcpy(a.done.counter, &before, 4, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaFree(a.arrivals));  // not needed in the add form
      scratch.pop_back();
      a.arrivals = nullptr;
    }
    ASSERT_CUDA(LaunchExpertFfnDecode(a, nullptr));
  }
  ASSERT_CUDA(cudaDeviceSynchronize());
  if (!s.grouped) {
    uint32_t stored = 0, arrivals = 0;
    ASSERT_CUDA(cudaMemcpy(&stored, a.done.counter, 4, cudaMemcpyDeviceToHost));
    if (a.arrivals != nullptr) {
      ASSERT_CUDA(cudaMemcpy(&arrivals, a.arrivals, 4, cudaMemcpyDeviceToHost));
    }
    EXPECT_EQ(stored, a.done.value);
    EXPECT_EQ(arrivals, 0u);
  }
  std::vector<float> out(pairs * s.hidden);
  ASSERT_CUDA(cudaMemcpy(out.data(), d_out, out.size() * 4, cudaMemcpyDeviceToHost));

  double err2 = 0, ref2 = 0;
  for (size_t p = 0; p < pairs; ++p) {
    const int e = routing[p];
    std::vector<float> xt(x.begin() + (p / s.top_k) * s.hidden, x.begin() + (p / s.top_k + 1) * s.hidden);
    if (s.grouped) {
      for (float& v : xt) v = Bf16ToF32(F32ToBf16(v));
    }
    if (!owned(e)) {
      for (int o = 0; o < s.hidden; ++o) ASSERT_EQ(out[p * s.hidden + o], 12345.f) << "pair " << p << " not owned";
      continue;
    }
    std::vector<double> act(s.inter);
    for (int i = 0; i < s.inter; ++i) {
      double g = 0, u = 0;
      for (int h = 0; h < s.hidden; ++h) {
        g += static_cast<double>(Bf16ToF32(w[e * 3][i * s.hidden + h])) * xt[h];
        u += static_cast<double>(Bf16ToF32(w[e * 3 + 1][i * s.hidden + h])) * xt[h];
      }
      act[i] = g / (1 + std::exp(-g)) * u;
      if (s.grouped) act[i] = Bf16ToF32(F32ToBf16(static_cast<float>(act[i])));
    }
    for (int o = 0; o < s.hidden; ++o) {
      double ref = 0;
      for (int i = 0; i < s.inter; ++i) ref += static_cast<double>(Bf16ToF32(w[e * 3 + 2][o * s.inter + i])) * act[i];
      const double got = out[p * s.hidden + o];
      ASSERT_TRUE(std::isfinite(got));
      err2 += (got - ref) * (got - ref);
      ref2 += ref * ref;
    }
  }
  const double rel = std::sqrt(err2 / std::max(ref2, 1e-30));
  // Decode: fp32 accumulation of the same bf16 weights. Grouped: the same, plus the odd SwiGLU output
  // whose bf16 rounding went the other way (one bf16 step, 2^-8 relative, on a few elements).
  EXPECT_LT(rel, s.grouped ? 2e-3 : 1e-5) << "relative L2 error " << rel;
  RecordProperty("relative_l2_error", std::to_string(rel));
  for (auto* p : dev) cudaFree(p);
  for (auto* p : scratch) cudaFree(p);
  cudaFree(d_x);
  cudaFree(d_act);
  cudaFree(d_out);
  cudaFree(d_routing);
  cudaFree(d_table);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ExpertFfnGpuTest,
                         ::testing::Values(Shape{64, 32, 4, 1, 2}, Shape{64, 48, 8, 5, 3},
                                           Shape{256, 512, 16, 3, 8}, Shape{2048, 768, 16, 1, 8},
                                           Shape{2048, 512, 12, 7, 10}, Shape{1032, 136, 6, 17, 2},
                                           Shape{64, 48, 600, 9, 4},  // past kMaxDecodeExperts: unsorted
                                           Shape{256, 128, 64, 40, 8},  // 320 pairs: one 512-pair pass
                                           Shape{64, 48, 8, 5, 3, true}, Shape{2048, 768, 16, 2, 8, true},
                                           Shape{64, 48, 8, 100, 3, false, true},
                                           Shape{2048, 768, 16, 200, 8, false, true},
                                           Shape{1032, 136, 6, 70, 2, false, true},
                                           Shape{256, 512, 128, 300, 8, false, true}));

// Seeded random experts in device memory (fp32 values, or the same rounded to bf16), owned by
// `mats`; the table names the matrices of the experts `owned` picks and leaves the others null.
template <typename Owned>
std::vector<GpuExpert> RandomExperts(int hidden, int inter, int experts, bool fp32, Owned owned,
                                     std::vector<std::unique_ptr<testing::Dev>>* mats) {
  std::vector<GpuExpert> table(experts);
  for (int e = 0; e < experts; ++e) {
    const void* m[3];
    for (int p = 0; p < 3; ++p) {
      const std::vector<float> v = testing::Random(static_cast<size_t>(hidden) * inter, 100 * e + p, 0.05f);
      std::vector<uint16_t> b(v.size());
      for (size_t i = 0; i < v.size(); ++i) b[i] = F32ToBf16(v[i]);
      mats->push_back(fp32 ? std::make_unique<testing::Dev>(v) : std::make_unique<testing::Dev>(b));
      m[p] = mats->back()->p;
    }
    if (owned(e)) table[e] = {m[0], m[1], m[2]};
  }
  return table;
}

// Batches of more than one token run each expert's pairs together (sorted by expert; 320 pairs: one pass
// of the 512-pair form): every pair's output must be bit-identical to the same token computed alone, for bf16
// and fp32 weights, all experts owned or every third one elsewhere.
TEST(ExpertFfnGpu, GroupedDecodeEqualsOneTokenAtATime) {
  using testing::Dev;
  using testing::Random;
  for (const bool fp32 : {false, true}) {
    for (const bool split : {false, true}) {
      const int hidden = 256, inter = 96, experts = 6, tokens = 80, top_k = 4;
      const size_t pairs = static_cast<size_t>(tokens) * top_k;
      std::vector<std::unique_ptr<Dev>> mats;
      const std::vector<GpuExpert> table =
          RandomExperts(hidden, inter, experts, fp32, [&](int e) { return !split || e % 3 != 1; }, &mats);
      std::mt19937 rng(9);
      std::vector<int32_t> routing(pairs);
      for (int t = 0; t < tokens; ++t) {
        std::vector<int> ids = {0, 1, 2, 3, 4, 5};
        std::shuffle(ids.begin(), ids.end(), rng);
        for (int k = 0; k < top_k; ++k) routing[t * top_k + k] = ids[k];
      }
      Dev dx(Random(static_cast<size_t>(tokens) * hidden, 7)), dr(routing), dt(table);
      Dev act(pairs * inter * 4), out(pairs * hidden * 4);
      ExpertFfnArgs a;
      a.experts = dt.as<GpuExpert>();
      a.num_experts = experts;
      a.top_k = top_k;
      a.hidden = hidden;
      a.inter = inter;
      a.act = act.as<float>();
      a.fp32_weights = fp32;
      // One token at a time (each token's top-k experts are distinct: no grouping).
      ASSERT_CUDA(cudaMemset(out.p, 0xff, out.bytes));
      for (int t = 0; t < tokens; ++t) {
        a.x = dx.as<float>() + static_cast<size_t>(t) * hidden;
        a.routing = dr.as<int32_t>() + t * top_k;
        a.out = out.as<float>() + static_cast<size_t>(t) * top_k * hidden;
        a.tokens = 1;
        ASSERT_CUDA(LaunchExpertFfnDecode(a, nullptr));
      }
      const std::vector<uint32_t> alone = out.get<uint32_t>();
      ASSERT_CUDA(cudaMemset(out.p, 0xff, out.bytes));
      a.x = dx.as<float>();
      a.routing = dr.as<int32_t>();
      a.out = out.as<float>();
      a.tokens = tokens;
      ASSERT_CUDA(LaunchExpertFfnDecode(a, nullptr));
      const std::vector<uint32_t> batched = out.get<uint32_t>();
      size_t differ = 0, untouched = 0;
      for (size_t i = 0; i < batched.size(); ++i) {
        differ += batched[i] != alone[i];
        untouched += batched[i] == 0xffffffffu;
      }
      EXPECT_EQ(differ, 0u) << (fp32 ? "fp32" : "bf16") << (split ? ", split" : "");
      // Pairs of experts owned elsewhere stay untouched (both ways), the others are written.
      size_t foreign = 0;
      for (int32_t e : routing) foreign += table[e].gate == nullptr;
      EXPECT_EQ(untouched, foreign * hidden);
    }
  }
}

// The early hand-over (ExpertFfnArgs::ready): launched before its inputs exist, the decode kernels wait
// for the counter, then read the x and routing written meanwhile (by copies on another stream) and give
// the results of a launch after them, bit for bit.
TEST(ExpertFfnGpu, DecodeKernelsWaitForTheReadyCounter) {
  using testing::Dev;
  using testing::Random;
  // Back-to-back acquire polls, and the other poll forms (PollForm: relaxed loads, a back-off).
  for (const auto& [tokens, poll] : {std::pair{1, PollForm{}}, std::pair{5, PollForm{}},
                                     std::pair{1, PollForm{1024, false}}, std::pair{5, PollForm{256, true}},
                                     std::pair{1, PollForm{0, true}}}) {
    const int hidden = 256, inter = 96, experts = 8, top_k = 4;
    const size_t pairs = static_cast<size_t>(tokens) * top_k;
    std::vector<std::unique_ptr<Dev>> mats;
    const std::vector<GpuExpert> table =
        RandomExperts(hidden, inter, experts, /*fp32=*/false, [](int) { return true; }, &mats);
    std::vector<int32_t> routing(pairs);
    for (size_t i = 0; i < pairs; ++i) routing[i] = static_cast<int32_t>((i * 3 + i / top_k) % experts);
    const std::vector<float> x = Random(static_cast<size_t>(tokens) * hidden, 3);
    Dev dx(x), dr(routing), dt(table), act(pairs * inter * 4), out(pairs * hidden * 4);
    Dev counter(4), stamp(8);
    ASSERT_CUDA(cudaMemset(counter.p, 0, 4));
    ASSERT_CUDA(cudaMemset(stamp.p, 0, 8));
    ExpertFfnArgs a;
    a.x = dx.as<float>();
    a.routing = dr.as<int32_t>();
    a.experts = dt.as<GpuExpert>();
    a.num_experts = experts;
    a.tokens = tokens;
    a.top_k = top_k;
    a.hidden = hidden;
    a.inter = inter;
    a.act = act.as<float>();
    a.out = out.as<float>();
    ASSERT_CUDA(LaunchExpertFfnDecode(a, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<uint32_t> expected = out.get<uint32_t>();

    // Inputs poisoned (an expert id out of range is skipped, so a kernel that read them early would
    // leave pairs unwritten), outputs poisoned, then the launch behind a counter that is not there yet.
    ASSERT_CUDA(cudaMemset(dx.p, 0x7f, dx.bytes));
    ASSERT_CUDA(cudaMemset(dr.p, 0x7f, dr.bytes));
    ASSERT_CUDA(cudaMemset(out.p, 0xff, out.bytes));
    cudaStream_t run = nullptr, writer = nullptr;
    ASSERT_CUDA(cudaStreamCreateWithFlags(&run, cudaStreamNonBlocking));
    ASSERT_CUDA(cudaStreamCreateWithFlags(&writer, cudaStreamNonBlocking));
    a.ready = CounterWait{counter.as<uint32_t>(), 42u, stamp.as<uint64_t>(), poll};
    ASSERT_CUDA(LaunchExpertFfnDecode(a, run));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(cudaStreamQuery(run), cudaErrorNotReady) << "the kernels did not wait";
    const uint32_t wrong = 41u;  // a value that is not the one waited for changes nothing
    ASSERT_CUDA(cudaMemcpyAsync(counter.p, &wrong, 4, cudaMemcpyHostToDevice, writer));
    ASSERT_CUDA(cudaMemcpyAsync(dx.p, x.data(), dx.bytes, cudaMemcpyHostToDevice, writer));
    ASSERT_CUDA(cudaMemcpyAsync(dr.p, routing.data(), dr.bytes, cudaMemcpyHostToDevice, writer));
    ASSERT_CUDA(cudaStreamSynchronize(writer));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(cudaStreamQuery(run), cudaErrorNotReady) << "the kernels did not wait for the value";
    const uint32_t value = 42u;
    ASSERT_CUDA(cudaMemcpyAsync(counter.p, &value, 4, cudaMemcpyHostToDevice, writer));
    ASSERT_CUDA(cudaStreamSynchronize(writer));
    ASSERT_CUDA(cudaStreamSynchronize(run));
    EXPECT_EQ(out.get<uint32_t>(), expected)
        << tokens << " tokens, back-off " << poll.max_sleep_ns << " ns, relaxed " << poll.relaxed;
    EXPECT_NE(stamp.get<uint64_t>()[0], 0u);
    cudaStreamDestroy(run);
    cudaStreamDestroy(writer);
  }
}

// Arguments with a shape and no buffers, for the launchers' checks that come before any launch.
ExpertFfnArgs ShapeOnly(int hidden, int inter) {
  ExpertFfnArgs a;
  a.hidden = hidden;
  a.inter = inter;
  a.tokens = 1;
  a.top_k = 1;
  return a;
}

// The one-token down kernel that combines as it goes (ExpertFfnArgs::residual): the slots are the
// plain kernels' bits, and the residual gains exactly what MoeCombine adds (fused multiply-adds over the
// slots in order, then one add), over shapes whose row groups number fewer or more than the blocks,
// bf16 and fp32 weights, slots that fit one block and slots that take several rounds, with the done
// counter stored by the last block, added in shares, or in shares small enough that the grid is cut to
// them.
TEST(ExpertFfnGpu, DownKernelCombinesIntoTheResidual) {
  using testing::Dev;
  using testing::Random;
  struct Case {
    int hidden, inter, experts, top_k;
    bool fp32;
    uint32_t add;  // the done counter's form: 0 the last block's store, else every block's share of `add`
  };
  for (const Case c : {Case{2048, 768, 16, 8, false, 0}, Case{2048, 768, 16, 8, false, 2048},
                       Case{2048, 512, 12, 10, false, 37}, Case{64, 48, 8, 3, false, 2048},
                       Case{1032, 136, 6, 2, true, 0}, Case{256, 96, 8, 4, true, 5},
                       // 256 threads a slot: three slots a block, the rest in further rounds
                       Case{256, 1024, 12, 8, true, 0}, Case{512, 2048, 10, 7, false, 2048}}) {
    std::vector<std::unique_ptr<Dev>> mats;
    const std::vector<GpuExpert> table =
        RandomExperts(c.hidden, c.inter, c.experts, c.fp32, [](int) { return true; }, &mats);
    std::vector<int32_t> routing(c.top_k);
    for (int k = 0; k < c.top_k; ++k) routing[k] = (k * 5 + 3) % c.experts;  // distinct: top_k <= experts
    std::vector<float> weights = Random(c.top_k, 11);
    const std::vector<float> x = Random(c.hidden, 12), residual0 = Random(c.hidden, 13, 4.f);
    Dev dx(x), dr(routing), dt(table), dw(weights), act(c.top_k * c.inter * 4), out(c.top_k * c.hidden * 4);
    Dev residual(residual0), counter(4), arrivals(4);
    ExpertFfnArgs a;
    a.x = dx.as<float>();
    a.routing = dr.as<int32_t>();
    a.experts = dt.as<GpuExpert>();
    a.num_experts = c.experts;
    a.tokens = 1;
    a.top_k = c.top_k;
    a.hidden = c.hidden;
    a.inter = c.inter;
    a.act = act.as<float>();
    a.out = out.as<float>();
    a.fp32_weights = c.fp32;
    ASSERT_CUDA(LaunchExpertFfnDecode(a, nullptr));
    const std::vector<uint32_t> slots = out.get<uint32_t>();

    ASSERT_CUDA(cudaMemset(out.p, 0xff, out.bytes));
    ASSERT_CUDA(cudaMemset(arrivals.p, 0, 4));
    const uint32_t before = c.add == 0 ? 0u : 900u;
    ASSERT_CUDA(cudaMemcpy(counter.p, &before, 4, cudaMemcpyHostToDevice));
    a.done = CounterStore{counter.as<uint32_t>(), before + (c.add == 0 ? 77u : c.add), false, nullptr, c.add};
    a.arrivals = c.add == 0 ? arrivals.as<unsigned int>() : nullptr;
    a.residual = residual.as<float>();
    a.combine_weights = dw.as<float>();
    ASSERT_CUDA(LaunchExpertFfnDecode(a, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_EQ(out.get<uint32_t>(), slots) << c.hidden << "x" << c.inter;
    EXPECT_EQ(counter.get<uint32_t>()[0], a.done.value);
    const std::vector<float> got = residual.get<float>();
    std::vector<float> slot_values(slots.size());
    std::memcpy(slot_values.data(), slots.data(), slots.size() * 4);
    size_t differ = 0;
    for (int i = 0; i < c.hidden; ++i) {
      float o = 0.f;
      for (int k = 0; k < c.top_k; ++k) o = std::fma(weights[k], slot_values[static_cast<size_t>(k) * c.hidden + i], o);
      const float want = residual0[i] + o;
      differ += std::memcmp(&want, &got[i], 4) != 0;
    }
    EXPECT_EQ(differ, 0u) << c.hidden << "x" << c.inter << " top-" << c.top_k << (c.fp32 ? " fp32" : " bf16");
  }
  // Only for one token, with weights.
  ExpertFfnArgs a = ShapeOnly(64, 32);
  float dummy = 0.f;
  a.residual = &dummy;
  EXPECT_EQ(LaunchExpertFfnDecode(a, nullptr), cudaErrorInvalidValue);
  a.combine_weights = &dummy;
  a.tokens = 2;
  EXPECT_EQ(LaunchExpertFfnDecode(a, nullptr), cudaErrorInvalidValue);
}

// The grouped kernels take no in-kernel wait (the caller gates the stream).
TEST(ExpertFfnGpu, GroupedRejectsAnInKernelWait) {
  ExpertFfnArgs a = ShapeOnly(64, 32);
  uint32_t dummy = 0;
  a.ready.counter = &dummy;
  EXPECT_EQ(LaunchExpertFfnGrouped(a, GroupedFfnScratch(), nullptr), cudaErrorInvalidValue);
}

TEST(ExpertFfnGpu, RejectsUnalignedShapes) {
  EXPECT_EQ(LaunchExpertFfnDecode(ShapeOnly(60, 32), nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace pinmoe
