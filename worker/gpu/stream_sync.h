// Cross-process ordering on the GPU without the host: 32-bit counters in device memory (inside a buffer
// shared through CUDA IPC) that one process's stream writes and another's waits on. The driver API's
// stream memory operations are resolved at run time through the runtime, so binaries do not link
// libcuda (CPU-only machines still start them).
//
// Measured on the lent H100 (bench/gpu_ipc_sync_bench.cu): between processes on one GPU without MPS each
// hand-over costs ~140 us, because the GPU time-slices between the processes' contexts; under MPS the
// same hand-over costs ~5-10 us. Between GPUs there is no context switch to pay.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "absl/status/status.h"

namespace pinmoe {

// Enqueues "*counter = value" (after all earlier work on the stream, whose writes it makes visible).
absl::Status StreamWriteCounter(cudaStream_t stream, uint32_t* counter, uint32_t value);
// Enqueues a wait until *counter == value. Equality rather than "at least" lets a captured CUDA graph
// replay the same values every other step (see WorkerPool's step parity).
absl::Status StreamWaitCounter(cudaStream_t stream, const uint32_t* counter, uint32_t value);

// The same hand-overs in the form chosen for this process: under MPS a wait is a gate kernel
// (counter_kernels.h), otherwise a stream wait (a spinning gate would hold its process's time slice);
// a write is a stream memory operation. PINMOE_COUNTER_WAIT = kernel | stream overrides the wait's
// form, PINMOE_COUNTER_WRITE = fused | stream | kernel (a one-thread kernel) the write's (bench/NOTES.md).
// `counters` holds at most kMaxCounters (counter_kernels.h) for the kernel form; the wait is for all of
// them to equal value.
// `stamp` (kernel form only) receives the GPU's clock when the wait is over; `let_next_in` (kernel form
// only) schedules the next kernel as the wait starts (LaunchWaitCounters).
absl::Status EnqueueWaitCounters(cudaStream_t stream, std::span<const uint32_t* const> counters, uint32_t value,
                                 uint64_t* stamp = nullptr, bool let_next_in = false);
// Whether EnqueueWaitCounters enqueues gate kernels (under MPS, or PINMOE_COUNTER_WAIT=kernel): only then
// may a kernel poll a counter itself (CounterWait), since a spinning kernel of a time-sliced process
// would hold the GPU from the process it waits for.
bool KernelWaitsCounters();
absl::Status EnqueueWriteCounter(cudaStream_t stream, uint32_t* counter, uint32_t value);

// Whether the kernel that finishes a hand-over's work stores its counter itself from its last block
// (CounterStore, counter_kernels.h: the "fused" write, the default) instead of a write enqueued behind
// it. Where no kernel can (the prefill paths), callers enqueue EnqueueWriteCounter.
bool KernelsStoreCounters();

// Whether the one-token down kernel of a layer whose experts are all in one place adds the weighted
// slots to the model's residual itself (ExpertFfnArgs::residual), in-process and in GPU workers, instead
// of a combine kernel of the model's; PINMOE_EXPERT_COMBINE=0 turns it off (A/B).
bool ExpertsCombine();

// Waits for `event` with a deadline, calling `poll` about every millisecond (it may fail the wait, e.g.
// when a peer died). Spins between polls: the step's latency matters more than a host core.
absl::Status WaitForEvent(cudaEvent_t event, std::chrono::milliseconds timeout, std::string_view what,
                          const std::function<absl::Status()>& poll);

}  // namespace pinmoe
