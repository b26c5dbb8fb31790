// Device side of CounterStore (counter_kernels.h): the last block of a grid publishes a counter after
// every block's writes, so that a peer process's gate (a kernel polling with acquire loads, or a
// stream wait) may start on them before this kernel has even retired.
#pragma once

#include "worker/gpu/counter_kernels.h"

namespace pinmoe {

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint32_t LoadAcquireSys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint32_t LoadRelaxedSys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.relaxed.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// One thread: polls *counter until it holds `value`, for at most kCounterSpinLimitNs (a dead peer cannot
// wedge the GPU; the host's bounded waits report it), with acquire semantics either way (PollForm,
// counter_kernels.h): acquire loads, or relaxed loads and then an acquire fence (the PTX memory model's
// acquire pattern). With a back-off ceiling the warp sleeps between polls.
__device__ __forceinline__ void SpinUntilEquals(const uint32_t* counter, uint32_t value, PollForm poll = PollForm()) {
  const uint64_t start = GlobalTimerNs();
  uint32_t sleep_ns = 32;
  while ((poll.relaxed ? LoadRelaxedSys(counter) : LoadAcquireSys(counter)) != value) {
    if (GlobalTimerNs() - start > kCounterSpinLimitNs) break;
    if (poll.max_sleep_ns != 0) {
      __nanosleep(sleep_ns);
      sleep_ns = sleep_ns * 2 < poll.max_sleep_ns ? sleep_ns * 2 : poll.max_sleep_ns;
    }
  }
  if (poll.relaxed) asm volatile("fence.acq_rel.sys;" ::: "memory");
}

// Every thread of every block, before its first read of what the peer wrote (CounterWait,
// counter_kernels.h): thread 0 polls, then the block meets. The acquire and the barrier order the
// block's later loads after the peer's release.
__device__ __forceinline__ void BlockWaitsCounter(const CounterWait& w) {
  if (w.counter == nullptr) return;
  if (threadIdx.x == 0) {
    SpinUntilEquals(w.counter, w.value, w.poll);
    if (w.stamp != nullptr && blockIdx.x == 0) *w.stamp = GlobalTimerNs();
  }
  __syncthreads();
}

// Every thread of the block: its earlier writes become visible at the store's scope.
__device__ __forceinline__ void FenceForStore(const CounterStore& s) {
  if (s.system) {
    __threadfence_system();
  } else {
    __threadfence();
  }
}

enum class StoreOrder { kRelease, kRelaxed };

// One thread: *counter = value. kRelease, after FenceForStore by every writer and whatever
// synchronisation made their writes its own (a __syncthreads, the arrival counter): with release
// semantics. kRelaxed: with no ordering of the thread's earlier accesses (no fence), for a hint that
// carries no data, such as the router's `soon`, whose reader waits for a released counter before it
// reads anything (a release would stall the storing warp on the fence, in the kernel's way).
__device__ __forceinline__ void StoreCounter(const CounterStore& s, StoreOrder order = StoreOrder::kRelease) {
  if (s.stamp != nullptr) *s.stamp = GlobalTimerNs();
  if (order == StoreOrder::kRelaxed) {
    if (s.system) {
      asm volatile("st.relaxed.sys.global.u32 [%0], %1;" ::"l"(s.counter), "r"(s.value) : "memory");
    } else {
      asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(s.counter), "r"(s.value) : "memory");
    }
  } else if (s.system) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(s.counter), "r"(s.value) : "memory");
  } else {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(s.counter), "r"(s.value) : "memory");
  }
}

// Every thread of every block, as the kernel's last act: the last block to arrive stores the counter.
// `arrivals` is a zeroed counter of this kernel's own, left zeroed (the next kernel that uses it must
// be ordered after this one, e.g. by programmatic dependent launch's wait).
__device__ __forceinline__ void LastBlockStoresCounter(const CounterStore& s, unsigned int* arrivals) {
  if (s.counter == nullptr) return;
  FenceForStore(s);
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(arrivals, 1u) == gridDim.x - 1) {
    *arrivals = 0u;
    FenceForStore(s);  // acquires the other blocks' arrivals (and so their writes) before the release
    StoreCounter(s);
  }
}

// Every thread of every block, as the kernel's last act, in the add form (CounterStore::add): the block
// meets, and one thread adds the block's share of s.add with a release (which, after the barrier, covers
// every thread's writes of the block). The shares add up to s.add exactly, and none is 0 while
// gridDim.x <= s.add, so the counter reaches s.value only after every block's writes. With a stamp,
// each block raises it to its clock first (the stamp keeps the latest: the last block's).
__device__ __forceinline__ void BlocksAddToCounter(const CounterStore& s) {
  if (s.counter == nullptr) return;
  __syncthreads();
  if (threadIdx.x != 0) return;
  const uint64_t b = blockIdx.x, g = gridDim.x;
  const uint32_t share = static_cast<uint32_t>((b + 1) * s.add / g - b * s.add / g);
  if (s.stamp != nullptr) atomicMax(reinterpret_cast<unsigned long long*>(s.stamp), GlobalTimerNs());
  if (s.system) {
    asm volatile("red.release.sys.global.add.u32 [%0], %1;" ::"l"(s.counter), "r"(share) : "memory");
  } else {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(s.counter), "r"(share) : "memory");
  }
}

// The kernel's last act for a CounterStore of either form.
__device__ __forceinline__ void PublishCounter(const CounterStore& s, unsigned int* arrivals) {
  if (s.add != 0) {
    BlocksAddToCounter(s);
  } else {
    LastBlockStoresCounter(s, arrivals);
  }
}

}  // namespace pinmoe
