#include "worker/gpu/stream_sync.h"

#include <cuda.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

#include "common/env.h"
#include "common/status.h"
#include "common/str_cat.h"
#include "worker/gpu/counter_kernels.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {
namespace {

using WaitFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using WriteFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

struct MemOps {
  WaitFn wait = nullptr;
  WriteFn write = nullptr;
  cudaError_t error = cudaSuccess;
};

const MemOps& Ops() {
  static const MemOps ops = [] {
    MemOps o;
    cudaDriverEntryPointQueryResult found;
    void* fn = nullptr;
    o.error = cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &fn, 12000, cudaEnableDefault, &found);
    if (o.error == cudaSuccess && found == cudaDriverEntryPointSuccess) o.wait = reinterpret_cast<WaitFn>(fn);
    fn = nullptr;
    o.error = cudaGetDriverEntryPointByVersion("cuStreamWriteValue32", &fn, 12000, cudaEnableDefault, &found);
    if (o.error == cudaSuccess && found == cudaDriverEntryPointSuccess) o.write = reinterpret_cast<WriteFn>(fn);
    return o;
  }();
  return ops;
}

absl::Status DriverStatus(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return absl::OkStatus();
  return absl::InternalError(StrCat(what, " failed with CUresult ", static_cast<int>(r)));
}

}  // namespace

absl::Status StreamWriteCounter(cudaStream_t stream, uint32_t* counter, uint32_t value) {
  const MemOps& o = Ops();
  if (o.write == nullptr) return absl::UnavailableError("the CUDA driver offers no cuStreamWriteValue32");
  return DriverStatus(o.write(stream, reinterpret_cast<CUdeviceptr>(counter), value, CU_STREAM_WRITE_VALUE_DEFAULT),
                      "cuStreamWriteValue32");
}

absl::Status StreamWaitCounter(cudaStream_t stream, const uint32_t* counter, uint32_t value) {
  const MemOps& o = Ops();
  if (o.wait == nullptr) return absl::UnavailableError("the CUDA driver offers no cuStreamWaitValue32");
  return DriverStatus(o.wait(stream, reinterpret_cast<CUdeviceptr>(counter), value, CU_STREAM_WAIT_VALUE_EQ),
                      "cuStreamWaitValue32");
}

namespace {

// PINMOE_COUNTER_WAIT / PINMOE_COUNTER_WRITE = kernel | stream pick the form of each half.
bool KernelForm(const char* variable, bool fallback) {
  const char* v = std::getenv(variable);
  if (v == nullptr || v[0] == '\0') return fallback;
  return std::string_view(v) != "stream";
}

// Whether this process's CUDA work goes through an MPS server: the driver connects a client whenever
// the control daemon's pipe exists.
bool MpsActive() {
  const char* dir = std::getenv("CUDA_MPS_PIPE_DIRECTORY");
  const std::string control = std::string(dir != nullptr && dir[0] != '\0' ? dir : "/tmp/nvidia-mps") + "/control";
  return ::access(control.c_str(), F_OK) == 0;
}

// Gate kernels only under MPS: without it, processes sharing a GPU are time-sliced, and a spinning gate
// would keep its process's slice while the one it waits for cannot run (measured: 4.7 tok/s against 52
// with stream waits, one worker on the coordinator's H100).
bool KernelWaits() {
  static const bool kernel = KernelForm("PINMOE_COUNTER_WAIT", MpsActive());
  return kernel;
}

enum class WriteForm { kFused, kStream, kKernel };

WriteForm Writes() {
  static const WriteForm form = [] {
    const char* v = std::getenv("PINMOE_COUNTER_WRITE");
    const std::string_view s = v == nullptr ? "" : v;
    if (s == "stream") return WriteForm::kStream;
    if (s == "kernel") return WriteForm::kKernel;
    return WriteForm::kFused;
  }();
  return form;
}

}  // namespace

int ResidentGridMargin() {
  static const int margin = std::max(0, EnvInt("PINMOE_GRID_MARGIN", KernelWaits() ? kGateSlots : 0));
  return margin;
}

bool KernelWaitsCounters() { return KernelWaits(); }

namespace {
PollForm PollFrom(const char* sleep_knob) {
  PollForm p;
  p.relaxed = EnvInt("PINMOE_POLL_RELAXED", 0) != 0;
  p.max_sleep_ns = static_cast<uint32_t>(std::clamp(EnvInt(sleep_knob, 0), 0, 1 << 20));
  return p;
}
}  // namespace

PollForm GatePoll() {
  static const PollForm p = PollFrom("PINMOE_GATE_POLL_NS");
  return p;
}

PollForm EarlyPoll() {
  static const PollForm p = PollFrom("PINMOE_EARLY_POLL_NS");
  return p;
}

absl::Status EnqueueWaitCounters(cudaStream_t stream, std::span<const uint32_t* const> counters, uint32_t value,
                                 uint64_t* stamp, bool let_next_in) {
  if (!KernelWaits()) {
    for (const uint32_t* c : counters) RETURN_IF_ERROR(StreamWaitCounter(stream, c, value));
    return absl::OkStatus();
  }
  for (size_t i = 0; i < counters.size(); i += kMaxCounters) {
    CounterSet set;
    for (size_t j = i; j < counters.size() && set.count < kMaxCounters; ++j) set.counters[set.count++] = counters[j];
    const bool last = i + kMaxCounters >= counters.size();
    CUDA_RETURN_IF_ERROR(
        LaunchWaitCounters(set, value, stream, last ? stamp : nullptr, last && let_next_in, GatePoll()));
  }
  return absl::OkStatus();
}

absl::Status EnqueueWriteCounter(cudaStream_t stream, uint32_t* counter, uint32_t value) {
  if (Writes() != WriteForm::kKernel) return StreamWriteCounter(stream, counter, value);
  return CudaStatus(LaunchWriteCounter(counter, value, stream), "counter write kernel");
}

bool KernelsStoreCounters() { return Writes() == WriteForm::kFused; }

bool ExpertsCombine() {
  static const bool on = EnvInt("PINMOE_EXPERT_COMBINE", 1) != 0;
  return on;
}

absl::Status WaitForEvent(cudaEvent_t event, std::chrono::milliseconds timeout, std::string_view what,
                          const std::function<absl::Status()>& poll) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now(), deadline = start + timeout;
  auto next_poll = start;
  while (true) {
    const cudaError_t q = cudaEventQuery(event);
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) return CudaStatus(q, StrCat("waiting for ", what).c_str());
    const auto now = Clock::now();
    if (now >= next_poll) {
      if (poll) RETURN_IF_ERROR(poll());
      next_poll = now + std::chrono::milliseconds(1);
    }
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          StrCat(what, " did not finish within ", timeout.count() / 1000.0, " s"));
    }
    std::this_thread::yield();
  }
}

}  // namespace pinmoe
