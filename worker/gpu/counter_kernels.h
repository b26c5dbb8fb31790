// The kernel form of stream_sync.h's counter hand-over: a one-block gate kernel that polls the counters
// from an SM (sub-microsecond) instead of a stream wait (the front end's poll, several microseconds
// under MPS), and a one-thread kernel that publishes a counter after the stream's earlier work. Both
// are launched with programmatic dependent launch, so the kernel after a gate starts as soon as the
// gate lets it. A gate never waits more than kCounterSpinLimitNs: a peer that died cannot wedge the
// GPU, and the host's bounded waits report it (WorkerPool::FinishGpuStep).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pinmoe {

constexpr int kMaxCounters = 32;
constexpr uint64_t kCounterSpinLimitNs = 60ull * 1000 * 1000 * 1000;

// Under MPS the waits are gate kernels, and other processes' gates (the coordinator's while a worker's
// experts run, another worker's waiting for its next layer) each hold a block slot of some SM. A grid
// sized to exactly one resident wave (row_dot.cuh) then runs a block as a second wave, after the others
// (measured: a worker's experts 32.3 -> 28.4 us a layer, bench/NOTES.md).
// The blocks such a grid leaves free: kGateSlots under gate kernels, 0 otherwise; PINMOE_GRID_MARGIN
// overrides (A/B measurements).
constexpr int kGateSlots = 4;
int ResidentGridMargin();

// A counter that a kernel stores as its last act, once every block's writes are done: the in-kernel
// form of EnqueueWriteCounter (stream_sync.h), which spares the stream operation behind the kernel.
// `system` when a reader runs on another GPU (its writes are then fenced at system scope, else at GPU
// scope: processes sharing one GPU, MPS or not, see each other's stores through its L2).
// `add` != 0 (the add form, BlocksAddToCounter): the counter already holds value - add, and every block
// adds its share of `add` with a release instead, so the counter reaches `value` as the last block's
// writes are done, without that block's round trip to learn it is the last (shares are at least 1: the
// kernel's grid must be at most `add`).
struct CounterStore {
  uint32_t* counter = nullptr;  // null: nothing to store
  uint32_t value = 0;
  bool system = false;
  uint64_t* stamp = nullptr;    // optional: receives the GPU's %globaltimer (ns) just before the store
  uint32_t add = 0;
};

// The values of the workers' done counters: a layer's tick times kDoneUnits, so that a layer's down
// kernel can reach it in the add form from the worker's previous layer's value (a grid of at most
// kDoneUnits blocks). Ticks stay below 2^21 (WorkerPool's parity bases), so the values fit 32 bits.
constexpr uint32_t kDoneUnits = 2048;
constexpr uint32_t DoneValue(uint32_t tick) { return tick * kDoneUnits; }

// How a poller reads its counter (SpinUntilEquals, counter_store.cuh). `relaxed`: relaxed loads, then
// one acquire fence once the value is there, instead of an acquire load every time (each may invalidate
// the SM's L1, in the way of the kernels that share the SM); `max_sleep_ns`: a back-off ceiling between
// polls (__nanosleep, 32 ns doubling), 0 for back-to-back polls.
struct PollForm {
  uint32_t max_sleep_ns = 0;
  bool relaxed = false;
};

// The polls of gate kernels (LaunchWaitCounters) and of the worker's in-kernel waits in the early
// hand-over, from PINMOE_POLL_RELAXED and PINMOE_GATE_POLL_NS / PINMOE_EARLY_POLL_NS (A/B knobs).
PollForm GatePoll();
PollForm EarlyPoll();

// The in-kernel form of a gate: a kernel's blocks wait until *counter == value before reading their
// inputs (one thread of each block polls as `poll` says, with acquire semantics, at most
// kCounterSpinLimitNs, then the block meets at a barrier), so the kernel may be launched behind an
// earlier signal and be resident when the real one comes. Inputs written by the peer must then be read
// with ordinary (coherent) loads, never through the read-only path. `stamp`, when set, receives block
// 0's GPU clock (ns) when its wait is over.
struct CounterWait {
  const uint32_t* counter = nullptr;  // null: no wait
  uint32_t value = 0;
  uint64_t* stamp = nullptr;
  PollForm poll;
};

struct CounterSet {
  const uint32_t* counters[kMaxCounters] = {};
  int count = 0;
};

// Enqueues a wait until every counter of `set` equals `value`; `stamp`, when set, receives the GPU's
// %globaltimer (ns, one clock for every process on the GPU) when the wait is over. `let_next_in`: the
// next kernel may be scheduled as soon as the wait starts (its blocks then sit in their PdlWait, which
// still returns only once the wait is over) instead of when it ends, sparing its launch behind the gate.
cudaError_t LaunchWaitCounters(const CounterSet& set, uint32_t value, cudaStream_t stream,
                               uint64_t* stamp = nullptr, bool let_next_in = false, PollForm poll = PollForm());
// Enqueues "*counter = value" after all earlier work on the stream (system-scope release).
cudaError_t LaunchWriteCounter(uint32_t* counter, uint32_t value, cudaStream_t stream);

}  // namespace pinmoe
