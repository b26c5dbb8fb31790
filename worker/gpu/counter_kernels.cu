#include "worker/gpu/counter_kernels.h"

#include "worker/gpu/counter_store.cuh"
#include "worker/gpu/pdl.cuh"

namespace pinmoe {
namespace {

// One thread per counter polls until it holds `value` (at most kCounterSpinLimitNs); then the block
// lets the next kernel in the stream start (its blocks were not resident while this one waited, so a
// waiting gate holds one block slot of one SM and nothing else), or, with let_next_in, lets it in at
// once (its blocks wait in their PdlWait for this grid to end).
__global__ void WaitCountersKernel(CounterSet set, uint32_t value, uint64_t* stamp, bool let_next_in,
                                   PollForm poll) {
  PdlWait();  // ordered after the stream's earlier work, like a stream wait
  if (let_next_in) PdlTrigger();
  if (threadIdx.x < set.count) SpinUntilEquals(set.counters[threadIdx.x], value, poll);
  __syncthreads();
  if (stamp != nullptr && threadIdx.x == 0) *stamp = GlobalTimerNs();
  PdlTrigger();
}

__global__ void WriteCounterKernel(uint32_t* counter, uint32_t value) {
  PdlWait();  // everything before it in the stream has finished and its writes are visible
  __threadfence_system();
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(counter), "r"(value) : "memory");
  PdlTrigger();
}

}  // namespace

cudaError_t LaunchWaitCounters(const CounterSet& set, uint32_t value, cudaStream_t stream, uint64_t* stamp,
                               bool let_next_in, PollForm poll) {
  if (set.count <= 0 || set.count > kMaxCounters) return cudaErrorInvalidValue;
  return LaunchPdl(WaitCountersKernel, dim3(1), dim3(32), 0, stream, set, value, stamp, let_next_in, poll);
}

cudaError_t LaunchWriteCounter(uint32_t* counter, uint32_t value, cudaStream_t stream) {
  return LaunchPdl(WriteCounterKernel, dim3(1), dim3(1), 0, stream, counter, value);
}

}  // namespace pinmoe
