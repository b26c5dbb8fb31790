#include "coordinator/worker_pool.h"

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/device_name.h"
#include "common/env.h"
#include "common/status.h"
#include "common/step_doorbell.h"
#if PINMOE_WITH_CUDA
#include <cuda_runtime.h>

#include "worker/gpu/counter_kernels.h"
#include "worker/gpu/cuda_check.h"
#include "worker/gpu/stream_sync.h"
#endif

extern char** environ;

namespace pinmoe {
namespace {

using Clock = std::chrono::steady_clock;

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return StrCat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  }
  return "stopped";
}

absl::StatusOr<std::string> MakeRuntimeDir() {
  const char* base = std::getenv("XDG_RUNTIME_DIR");
  std::string root = (base != nullptr && *base != '\0') ? base : "/tmp";
  std::string templ = root + "/pinmoe-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {  // mkdtemp creates it 0700
    return absl::InternalError(StrCat("cannot create a runtime directory under ", root, ": ",
                                            std::strerror(errno)));
  }
  return std::string(buf.data());
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Buffer ids in Assign and Work messages.
constexpr uint32_t kHostBuffer = 0;
constexpr uint32_t kDeviceBuffer = 1;
constexpr uint32_t kDoorbellBuffer = 2;  // host shared memory: the step doorbell's slots (PINMOE_STEP_DOORBELL)
// The GPU-ordered path's counters live in the first 4 KiB of the buffers, one per 64-byte line: ready,
// each worker's done, and soon in the last line.
constexpr uint64_t kCounterBytes = 4096;
constexpr uint64_t kCounterStride = 64;
constexpr uint64_t kSoonOffset = kCounterBytes - kCounterStride;
constexpr uint32_t kParityBase = 1u << 20;
#if PINMOE_WITH_CUDA
static_assert(static_cast<uint64_t>(2 * kParityBase) * kDoneUnits <= (1ull << 32), "done values must fit 32 bits");
#endif
uint32_t ParityBase(int parity) { return parity == 0 ? 0u : kParityBase; }

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Start(const ModelConfig& config,
                                                              const WorkerPoolOptions& options) {
  if (options.num_workers < 1) return absl::InvalidArgumentError("--workers must be at least 1");
  if (options.num_workers > config.num_experts) {
    return absl::InvalidArgumentError(StrCat("--workers ", options.num_workers,
                                                   " exceeds the model's ", config.num_experts,
                                                   " experts per layer"));
  }
  if (::access(options.worker_binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(StrCat("worker binary ", options.worker_binary, ": ",
                                            std::strerror(errno)));
  }
  auto pool = std::unique_ptr<WorkerPool>(new WorkerPool(config, options));
  absl::Status st = pool->Launch();
  if (!st.ok()) return st;  // the destructor stops whatever was started
  return pool;
}

absl::Status WorkerPool::Launch() {
  if (options_.placement.has_value()) {
    if (static_cast<int>(options_.placement->per_worker.size()) != options_.num_workers) {
      return absl::InvalidArgumentError("the placement plan and the worker count disagree");
    }
    placement_ = *options_.placement;
  }
  std::vector<std::string> devices = options_.worker_devices;
  if (devices.empty()) devices.assign(options_.num_workers, options_.worker_device);
  if (static_cast<int>(devices.size()) != options_.num_workers) {
    return absl::InvalidArgumentError("one device per worker is needed");
  }
  if (!options_.placement.has_value()) {
    // PINMOE_PLACEMENT_SPLIT=experts splits every layer even for workers sharing a GPU (for A/B
    // measurements of the split; bench/NOTES.md).
    const char* forced = std::getenv("PINMOE_PLACEMENT_SPLIT");
    const PlacementSplit split = forced != nullptr && std::string_view(forced) == "experts"
                                     ? PlacementSplit::kExperts
                                     : SplitForDevices(devices);
    placement_ = MakePlacement(config_, options_.num_workers, split);
  }
  ASSIGN_OR_RETURN(runtime_dir_, MakeRuntimeDir());
  ASSIGN_OR_RETURN(router_, RouterSocket::Bind(StrCat("ipc://", runtime_dir_, "/control")));

  // One buffer per kind of worker in use: input [T, H] f32 | routing [T, K] i32 | output [T, K, H] f32.
  const uint64_t t = options_.max_tokens_per_step, h = config_.hidden_size, k = config_.top_k;
  if (static_cast<uint64_t>(options_.num_workers + 1) * kCounterStride > kSoonOffset) {
    return absl::InvalidArgumentError(StrCat("at most ", kSoonOffset / kCounterStride - 1, " workers"));
  }
  moe_index_.assign(config_.num_layers, -1);
  for (int l = 0; l < config_.num_layers; ++l) {
    if (config_.IsMoeLayer(l)) moe_index_[l] = num_moe_layers_++;
  }
  layer_owners_.assign(config_.num_layers, {});
  for (int w = 0; w < options_.num_workers; ++w) {
    for (const auto& set : placement_.per_worker[w]) {
      if (!set.experts.empty()) layer_owners_[set.layer].push_back(w);
    }
  }
  timeline_offset_ = kCounterBytes;
  timeline_bytes_ = options_.timeline
                        ? static_cast<uint64_t>(options_.num_workers + 1) * num_moe_layers_ * 2 * sizeof(uint64_t)
                        : 0;
  input_offset_ = AlignUp(timeline_offset_ + timeline_bytes_, 4096);
  routing_offset_ = AlignUp(input_offset_ + t * h * sizeof(float), 4096);
  output_offset_ = AlignUp(routing_offset_ + t * k * sizeof(int32_t), 4096);
  residual_offset_ = AlignUp(output_offset_ + t * k * h * sizeof(float), 4096);
  weights_offset_ = AlignUp(residual_offset_ + t * h * sizeof(float), 4096);
  const uint64_t total = weights_offset_ + t * k * sizeof(float);
  int first_gpu = -1;
  bool any_cpu = false;
  for (const std::string& d : devices) {
    ASSIGN_OR_RETURN(int gpu, ParseDeviceName(d));
    if (gpu < 0) any_cpu = true;
    if (gpu >= 0 && first_gpu < 0) first_gpu = gpu;
  }
  if (any_cpu) {
    ASSIGN_OR_RETURN(buffer_, SharedMemory::Create("pinmoe-moe", total));
  }
  if (!any_cpu && StepDoorbellOn()) {
    ASSIGN_OR_RETURN(doorbell_, SharedMemory::Create("pinmoe-doorbell", kDoorbellSlotBytes * options_.num_workers));
    std::memset(doorbell_->data(), 0, doorbell_->size());
    doorbell_records_.resize(options_.num_workers);
  }
  if (first_gpu >= 0) {
    // On the first GPU worker's device; workers on other GPUs reach it through peer access.
    ASSIGN_OR_RETURN(device_buffer_, DeviceBuffer::Create(
                                         options_.buffer_device >= 0 ? options_.buffer_device : first_gpu, total));
  }

  workers_.resize(options_.num_workers);
  for (int i = 0; i < options_.num_workers; ++i) {
    workers_[i].index = i;
    workers_[i].identity = StrCat("worker-", i);
    workers_[i].device = devices[i];
    workers_[i].gpu = devices[i] != "cpu";
    RETURN_IF_ERROR(Spawn(workers_[i]));
  }
  // A layer whose experts all live in one worker: in one-token steps that worker's down kernel adds
  // the weighted slots to the model's residual itself (CombinesGpuLayer).
  layer_whole_.assign(config_.num_layers, false);
  for (int l = 0; l < config_.num_layers; ++l) {
    const std::vector<int>& owner = placement_.owner[l];
    layer_whole_[l] = layer_owners_[l].size() == 1 && !owner.empty() &&
                      std::all_of(owner.begin(), owner.end(), [&](int w) { return w == layer_owners_[l][0]; });
  }
  layer_cross_gpu_.assign(config_.num_layers, false);
  for (int l = 0; l < config_.num_layers && device_buffer_ != nullptr; ++l) {
    for (int w : layer_owners_[l]) {
      ASSIGN_OR_RETURN(int gpu, ParseDeviceName(devices[w]));
      if (gpu != device_buffer_->device()) layer_cross_gpu_[l] = true;
    }
  }

  // Register, then load. A fast worker's Ready may arrive while others are still registering, so one
  // handler serves both phases.
  auto handle = [&](Worker& w, const proto::Envelope& env) -> absl::Status {
    if (env.has_ready()) {
      w.ready = true;
      w.weight_bytes = env.ready().weight_bytes();
      return absl::OkStatus();
    }
    if (!env.has_register_()) return absl::OkStatus();
    if (env.register_().worker_id() != static_cast<uint32_t>(w.index)) {
      return absl::InvalidArgumentError(StrCat(Describe(w), " registered as worker ",
                                               env.register_().worker_id()));
    }
    w.registered = true;
    proto::Envelope assign = MakeEnvelope();
    proto::Assign* a = assign.mutable_assign();
    a->set_model_dir(options_.model_dir);
    a->set_synthetic_seed(options_.synthetic_seed);
    for (const auto& set : placement_.per_worker[w.index]) {
      proto::LayerExperts* le = a->add_experts();
      le->set_layer(set.layer);
      for (int e : set.experts) le->add_experts(e);
    }
    proto::SharedBuffer* b = a->add_buffers();
    if (!w.gpu) {
      b->set_id(kHostBuffer);
      b->set_shm_name(buffer_->name());
      b->set_size_bytes(buffer_->size());
    } else {
      b->set_id(kDeviceBuffer);
      b->set_cuda_ipc_handle(device_buffer_->ipc_handle());
      b->set_cuda_device(device_buffer_->device());
      b->set_size_bytes(device_buffer_->size());
      if (doorbell_ != nullptr) {
        proto::SharedBuffer* d = a->add_buffers();
        d->set_id(kDoorbellBuffer);
        d->set_shm_name(doorbell_->name());
        d->set_size_bytes(doorbell_->size());
      }
    }
    return router_->Send(w.identity, assign);
  };
  auto all = [&](bool Worker::*flag) {
    return std::all_of(workers_.begin(), workers_.end(), [&](const Worker& w) { return w.*flag; });
  };
  RETURN_IF_ERROR(Pump(options_.register_timeout_ms, "registering", handle,
                       [&] { return all(&Worker::registered); },
                       [](const Worker& w) { return !w.registered; }));
  return Pump(options_.load_timeout_ms, "loading its experts", handle,
              [&] { return all(&Worker::ready); }, [](const Worker& w) { return !w.ready; });
}

absl::Status WorkerPool::Spawn(Worker& w) {
  std::vector<std::string> args = {options_.worker_binary,
                                   StrCat("--connect=ipc://", runtime_dir_, "/control"),
                                   StrCat("--worker_id=", w.index),
                                   StrCat("--parent_pid=", ::getpid()), StrCat("--device=", w.device)};
  args.insert(args.end(), options_.extra_worker_args.begin(), options_.extra_worker_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, options_.worker_binary.c_str(), nullptr, nullptr, argv.data(), environ);
  if (rc != 0) {
    return absl::InternalError(StrCat("cannot start worker ", w.index, " (",
                                            options_.worker_binary, "): ", std::strerror(rc)));
  }
  w.pid = pid;
  return absl::OkStatus();
}

std::string WorkerPool::Describe(const Worker& w) const {
  return StrCat("worker ", w.index, " (pid ", w.pid, ")");
}

WorkerPool::Worker* WorkerPool::ByIdentity(const std::string& identity) {
  for (auto& w : workers_) {
    if (w.identity == identity) return &w;
  }
  return nullptr;
}

absl::Status WorkerPool::CheckChildren(std::string_view what) {
  for (auto& w : workers_) {
    if (w.exited || w.pid <= 0) continue;
    int status = 0;
    pid_t r = ::waitpid(w.pid, &status, WNOHANG);
    if (r == w.pid) {
      w.exited = true;
      w.wait_status = status;
      return absl::UnavailableError(StrCat(Describe(w), " ", DescribeExit(status), " while ", what));
    }
  }
  return absl::OkStatus();
}

template <typename Handler, typename DonePred, typename WaitingPred>
absl::Status WorkerPool::Pump(int timeout_ms, std::string_view what, Handler handle, DonePred done,
                              WaitingPred waiting_on) {
  if (broken_) return first_error_;
  auto fail = [&](absl::Status st) {
    broken_ = true;
    first_error_ = st;
    return st;
  };
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done()) {
    absl::Status children = CheckChildren(what);
    if (!children.ok()) return fail(children);
    const auto now = Clock::now();
    if (now >= deadline) {
      std::string late;
      for (const auto& w : workers_) {
        if (!w.exited && waiting_on(w)) late = StrCat(late, late.empty() ? "" : ", ", Describe(w));
      }
      return fail(absl::DeadlineExceededError(absl::StrFormat(
          "no answer within %.1f s while %s from %s; the worker may be hung",
          timeout_ms / 1000.0, what, late)));
    }
    const int slice = static_cast<int>(std::min<int64_t>(
        50, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1));
    absl::StatusOr<std::optional<Incoming>> in = router_->Receive(slice);
    if (!in.ok()) return fail(in.status());
    if (!in->has_value()) continue;
    Worker* w = ByIdentity((*in)->peer);
    if (w == nullptr) continue;  // not one of ours: ignore
    if ((*in)->envelope.has_error()) {
      return fail(absl::InternalError(StrCat(Describe(*w), " failed while ", what, ": ",
                                                   (*in)->envelope.error().message())));
    }
    absl::Status st = handle(*w, (*in)->envelope);
    if (!st.ok()) return fail(st);
  }
  return absl::OkStatus();
}

absl::Status WorkerPool::RunMoe(int layer, const float* x, uint32_t tokens, const int32_t* routing,
                                float* out) {
  if (broken_) return first_error_;
  RETURN_IF_ERROR(WithdrawGpuStepAhead());  // the workers take messages in order
  const uint64_t h = config_.hidden_size, k = config_.top_k;
  for (uint32_t t0 = 0; t0 < tokens; t0 += options_.max_tokens_per_step) {
    const uint32_t n = std::min(tokens - t0, options_.max_tokens_per_step);
    for (bool device : {false, true}) {
      const bool present = device ? device_buffer_ != nullptr : buffer_ != nullptr;
      if (!present) continue;
      RETURN_IF_ERROR(CopyIn(device, input_offset_, x + static_cast<uint64_t>(t0) * h, n * h * sizeof(float)));
      RETURN_IF_ERROR(CopyIn(device, routing_offset_, routing + static_cast<uint64_t>(t0) * k, n * k * sizeof(int32_t)));
    }
    // Only workers owning an expert that some token was routed to get a message.
    std::vector<bool> needed(workers_.size(), false);
    for (uint64_t p = 0; p < n * k; ++p) {
      const int32_t e = routing[static_cast<uint64_t>(t0) * k + p];
      if (e < 0 || e >= config_.num_experts) {
        return absl::InternalError(StrCat("routing names expert ", e, " in layer ", layer));
      }
      needed[placement_.owner[layer][e]] = true;
    }
    const uint64_t seq = ++sequence_;
    // One message per buffer kind: CPU workers read the shared memory, GPU workers the device buffer.
    proto::Envelope envs[2];
    for (uint32_t id : {kHostBuffer, kDeviceBuffer}) {
      envs[id] = MakeEnvelope();
      proto::Work* work = envs[id].mutable_work();
      work->set_sequence(seq);
      work->set_layer(layer);
      work->set_tokens(n);
      work->set_top_k(static_cast<uint32_t>(k));
      auto set_slice = [id](proto::Slice* s, uint64_t off, uint64_t len) {
        s->set_buffer_id(id);
        s->set_offset(off);
        s->set_length(len);
      };
      set_slice(work->mutable_input(), input_offset_, n * h * sizeof(float));
      set_slice(work->mutable_routing(), routing_offset_, n * k * sizeof(int32_t));
      set_slice(work->mutable_output(), output_offset_, n * k * h * sizeof(float));
    }
    size_t pending = 0;
    std::vector<bool> answered(workers_.size(), true);
    uint64_t pairs = 0;
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!needed[w]) continue;
      absl::Status st = router_->Send(workers_[w].identity, envs[workers_[w].gpu ? kDeviceBuffer : kHostBuffer]);
      if (!st.ok()) {
        // A peer that vanished has usually exited: give the exit a moment to be reaped and report it.
        absl::Status exited = absl::OkStatus();
        for (int tries = 0; tries < 40 && exited.ok(); ++tries) {
          exited = CheckChildren(StrCat("computing layer ", layer));
          if (exited.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        broken_ = true;
        first_error_ = !exited.ok() ? exited
                                    : absl::UnavailableError(StrCat(Describe(workers_[w]), ": ", st.message()));
        return first_error_;
      }
      answered[w] = false;
      ++pending;
    }
    const std::string what = StrCat("computing layer ", layer, " (step ", seq, ")");
    RETURN_IF_ERROR(Pump(
        options_.step_timeout_ms, what,
        [&](Worker& w, const proto::Envelope& e) -> absl::Status {
          if (!e.has_done() || e.done().sequence() != seq || answered[w.index]) return absl::OkStatus();
          answered[w.index] = true;
          pairs += e.done().pairs_computed();
          --pending;
          return absl::OkStatus();
        },
        [&] { return pending == 0; }, [&](const Worker& w) { return !answered[w.index]; }));
    if (pairs != static_cast<uint64_t>(n) * k) {
      return absl::InternalError(StrCat("workers computed ", pairs, " of ", n * k,
                                              " (token, expert) pairs in layer ", layer));
    }
    // Each (token, slot) comes back from the buffer of the worker that owns its expert.
    float* dst = out + static_cast<uint64_t>(t0) * k * h;
    const uint64_t out_bytes = n * k * h * sizeof(float);
    if (buffer_ == nullptr || device_buffer_ == nullptr) {
      RETURN_IF_ERROR(CopyOut(device_buffer_ != nullptr, dst, output_offset_, out_bytes));
    } else {
      RETURN_IF_ERROR(CopyOut(/*from_device=*/false, dst, output_offset_, out_bytes));
      std::vector<float> from_gpu(n * k * h);
      RETURN_IF_ERROR(CopyOut(/*from_device=*/true, from_gpu.data(), output_offset_, out_bytes));
      for (uint64_t p = 0; p < n * k; ++p) {
        const int32_t e = routing[static_cast<uint64_t>(t0) * k + p];
        if (workers_[placement_.owner[layer][e]].gpu) {
          std::copy_n(from_gpu.data() + p * h, h, dst + p * h);
        }
      }
    }
  }
  return absl::OkStatus();
}

// The coordinator's dense part still runs on the CPU: activations enter and leave the device buffer with
// plain copies. (When the dense part moves to the GPU they stay there.)
absl::Status WorkerPool::CopyIn(bool to_device, uint64_t offset, const void* src, uint64_t bytes) {
  if (!to_device) {
    std::memcpy(buffer_->data() + offset, src, bytes);
    return absl::OkStatus();
  }
#if PINMOE_WITH_CUDA
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_buffer_->device()));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(device_buffer_->data() + offset, src, bytes, cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before the DMA lands; the workers (other processes) must
  // not see the buffer before it has.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(nullptr));
  return absl::OkStatus();
#else
  PINMOE_CHECK(false);
#endif
}

absl::Status WorkerPool::CopyOut(bool from_device, void* dst, uint64_t offset, uint64_t bytes) {
  if (!from_device) {
    std::memcpy(dst, buffer_->data() + offset, bytes);
    return absl::OkStatus();
  }
#if PINMOE_WITH_CUDA
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_buffer_->device()));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, device_buffer_->data() + offset, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
#else
  PINMOE_CHECK(false);
#endif
}

std::vector<pid_t> WorkerPool::worker_pids() const {
  std::vector<pid_t> pids;
  for (const auto& w : workers_) pids.push_back(w.pid);
  return pids;
}

std::vector<uint64_t> WorkerPool::worker_weight_bytes() const {
  std::vector<uint64_t> bytes;
  for (const auto& w : workers_) bytes.push_back(w.weight_bytes);
  return bytes;
}

void WorkerPool::Stop() {
  // A step sent ahead holds its workers until its ticks come; without it they could not read the Bye.
  if (ahead_.has_value()) {
    absl::Status st = WithdrawGpuStepAhead();
    if (!st.ok()) std::fprintf(stderr, "pinmoe: stopping the workers: %s\n", std::string(st.message()).c_str());
  }
#if PINMOE_WITH_CUDA
  if (drain_stream_ != nullptr) {
    cudaStreamDestroy(static_cast<cudaStream_t>(drain_stream_));
    if (drain_event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(drain_event_));
    drain_stream_ = nullptr;
    drain_event_ = nullptr;
  }
#endif
  if (router_ != nullptr) {
    proto::Envelope bye = MakeEnvelope();
    bye.mutable_shutdown()->set_reason("coordinator is stopping");
    for (auto& w : workers_) {
      if (w.pid > 0 && !w.exited) router_->Send(w.identity, bye).IgnoreError();
    }
  }
  // Bounded: give workers a moment to leave, then kill what is left.
  const auto deadline = Clock::now() + std::chrono::milliseconds(2000);
  for (auto& w : workers_) {
    if (w.pid <= 0 || w.exited) continue;
    while (true) {
      int status;
      pid_t r = ::waitpid(w.pid, &status, WNOHANG);
      if (r == w.pid || r < 0) break;
      if (Clock::now() > deadline) {
        ::kill(w.pid, SIGKILL);
        ::waitpid(w.pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    w.exited = true;
  }
  router_.reset();
  buffer_.reset();
  device_buffer_.reset();
  if (!runtime_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(runtime_dir_, ec);
  }
}

WorkerPool::~WorkerPool() { Stop(); }

bool WorkerPool::all_gpu() const {
  return std::all_of(workers_.begin(), workers_.end(), [](const Worker& w) { return w.gpu; });
}

#if PINMOE_WITH_CUDA

namespace {

// The early forms of the GPU hand-over, only where waits are gate kernels (MPS; stream_sync.h), off by
// default: measured, they gained nothing (bench/NOTES.md, "The early hand-over"); kept behind knobs for
// A/B measurements of their successors:
//  - experts (PINMOE_EARLY_EXPERTS=1 turns it on): the router also stores the layer's tick at `soon`
//    as its last block starts; a worker's gate waits for that and lets its expert kernels in, whose
//    blocks wait for the real tick themselves, so their launch overlaps the router;
//  - combine (PINMOE_EARLY_COMBINE=1): in one-token steps, the coordinator's gate on the workers' done
//    counters lets the next kernel (the combine, a block per 128 of hidden) in as it starts waiting, so
//    that it is resident when the experts are done. Not in larger steps: the blocks of a prefill's
//    combine, parked in their wait, filled every SM and left the workers' experts none (a deadlock
//    until the gate's spin limit; measured under MPS with a 300-token prompt).
bool EarlyExperts() {
  static const bool on = KernelWaitsCounters() && EnvInt("PINMOE_EARLY_EXPERTS", 0) != 0;
  return on;
}
bool EarlyCombine() {
  static const bool on = KernelWaitsCounters() && EnvInt("PINMOE_EARLY_COMBINE", 0) != 0;
  return on;
}

}  // namespace

absl::StatusOr<WorkerPool::DeviceSlots> WorkerPool::device_slots() {
  if (device_buffer_ == nullptr || !all_gpu()) {
    return absl::FailedPreconditionError("the GPU-ordered path needs every worker on a GPU");
  }
  uint8_t* base = device_buffer_->data();
  return DeviceSlots{reinterpret_cast<float*>(base + input_offset_),
                     reinterpret_cast<int32_t*>(base + routing_offset_),
                     reinterpret_cast<float*>(base + output_offset_),
                     reinterpret_cast<float*>(base + residual_offset_),
                     reinterpret_cast<float*>(base + weights_offset_)};
}

bool WorkerPool::CombinesGpuLayer(int layer, uint32_t tokens) const {
  return tokens == 1 && ExpertsCombine() && layer >= 0 && layer < static_cast<int>(layer_whole_.size()) &&
         layer_whole_[layer];
}

absl::StatusOr<int> WorkerPool::BeginGpuStep(uint32_t tokens) {
  if (broken_) return first_error_;
  RETURN_IF_ERROR(CheckStepTokens(tokens));
  if (ahead_.has_value() && ahead_->tokens != tokens) RETURN_IF_ERROR(WithdrawGpuStepAhead());
  if (ahead_.has_value()) return TakeUpAhead();  // its Step messages went out during the step before
  const uint64_t sequence = ++sequence_;
  ASSIGN_OR_RETURN(std::vector<bool> pending, SendStep(sequence, tokens));
  return MakeCurrent(sequence, tokens, std::move(pending));
}

int WorkerPool::MakeCurrent(uint64_t sequence, uint32_t tokens, std::vector<bool> pending) {
  const int parity = static_cast<int>(sequence & 1);
  step_sequence_ = sequence;
  step_base_ = ParityBase(parity);
  step_tokens_ = tokens;
  step_pending_ = std::move(pending);
  return parity;
}

int WorkerPool::TakeUpAhead() {
  SentStep ahead = std::move(*ahead_);
  ahead_.reset();
  return MakeCurrent(ahead.sequence, ahead.tokens, std::move(ahead.pending));
}

absl::Status WorkerPool::CheckStepTokens(uint32_t tokens) const {
  if (tokens == 0 || tokens > options_.max_tokens_per_step) {
    return absl::InvalidArgumentError(StrCat("a GPU step of ", tokens, " tokens (at most ",
                                             options_.max_tokens_per_step, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<bool>> WorkerPool::SendStep(uint64_t sequence, uint32_t tokens) {
  const uint32_t base = ParityBase(static_cast<int>(sequence & 1));
  std::vector<bool> pending(workers_.size(), false);
  const uint64_t h = config_.hidden_size, k = config_.top_k;
  auto slice = [](proto::Slice* s, uint64_t off, uint64_t len) {
    s->set_buffer_id(kDeviceBuffer);
    s->set_offset(off);
    s->set_length(len);
  };
  for (size_t w = 0; w < workers_.size(); ++w) {
    proto::Envelope env = MakeEnvelope();
    proto::Step* step = env.mutable_step();
    step->set_sequence(sequence);
    step->set_tokens(tokens);
    step->set_top_k(static_cast<uint32_t>(k));
    for (int l = 0; l < config_.num_layers; ++l) {
      const auto& owners = layer_owners_[l];
      if (std::find(owners.begin(), owners.end(), static_cast<int>(w)) == owners.end()) continue;
      step->add_layers(l);
      step->add_ticks(base + 1 + moe_index_[l]);
      step->add_combine(CombinesGpuLayer(l, tokens));
    }
    if (step->layers_size() == 0) continue;
    if (std::find(step->combine().begin(), step->combine().end(), true) != step->combine().end()) {
      slice(step->mutable_residual(), residual_offset_, h * sizeof(float));
      slice(step->mutable_weights(), weights_offset_, k * sizeof(float));
    } else {
      step->clear_combine();
    }
    slice(step->mutable_input(), input_offset_, tokens * h * sizeof(float));
    slice(step->mutable_routing(), routing_offset_, tokens * k * sizeof(int32_t));
    slice(step->mutable_output(), output_offset_, tokens * k * h * sizeof(float));
    slice(step->mutable_ready(), 0, sizeof(uint32_t));
    slice(step->mutable_done(), kCounterStride * (w + 1), sizeof(uint32_t));
    if (EarlyExperts()) slice(step->mutable_soon(), kSoonOffset, sizeof(uint32_t));
    if (timeline_bytes_ > 0) {
      slice(step->mutable_timeline(), TimelineOffset(static_cast<int>(w) + 1, 0),
            static_cast<uint64_t>(step->layers_size()) * 2 * sizeof(uint64_t));
    }
    absl::Status st;
    if (doorbell_ == nullptr || !Ring(static_cast<int>(w), step)) st = router_->Send(workers_[w].identity, env);
    if (!st.ok()) {
      broken_ = true;
      absl::Status exited = CheckChildren(StrCat("starting step ", sequence));
      first_error_ = !exited.ok() ? exited : absl::UnavailableError(StrCat(Describe(workers_[w]), ": ", st.message()));
      return first_error_;
    }
    pending[w] = true;
  }
  return pending;
}

bool WorkerPool::Ring(int w, proto::Step* step) {
  const uint64_t sequence = step->sequence();
  proto::Slice* d = step->mutable_doorbell();
  d->set_buffer_id(kDoorbellBuffer);
  d->set_offset(kDoorbellSlotBytes * static_cast<uint64_t>(w));
  d->set_length(sizeof(uint64_t));
  step->clear_sequence();
  std::string shape = step->SerializeAsString();
  step->set_sequence(sequence);
  if (!DecideRing(doorbell_records_[w], sequence, std::move(shape), Clock::now(), WorkerHotPoll())) return false;
  RingDoorbell(doorbell_->data() + kDoorbellSlotBytes * static_cast<uint64_t>(w), sequence);
  return true;
}

absl::Status WorkerPool::SendGpuStepAhead(uint32_t tokens) {
  if (broken_) return first_error_;
  RETURN_IF_ERROR(CheckStepTokens(tokens));
  if (ahead_.has_value() || step_sequence_ != sequence_ || step_sequence_ == 0) {
    return absl::FailedPreconditionError("a step is sent ahead only while the one before it is the last begun");
  }
  const uint64_t sequence = ++sequence_;
  ASSIGN_OR_RETURN(std::vector<bool> pending, SendStep(sequence, tokens));
  ahead_ = SentStep{sequence, tokens, std::move(pending)};
  return absl::OkStatus();
}

absl::Status WorkerPool::WithdrawGpuStepAhead() {
  if (!ahead_.has_value()) return absl::OkStatus();
  if (broken_) {
    ahead_.reset();
    return first_error_;
  }
  // The workers wait for the step's ticks: hand them over in turn, each until its owners are done with
  // it. They compute on the buffers' last contents (a step of the same tokens wrote them) into slots
  // that nobody reads, and those that combine (CombinesGpuLayer) add into the residual's first row,
  // which the next step's embedding overwrites: this runs before the model enqueues it.
  const int parity = TakeUpAhead();
  auto drain = [&]() -> absl::Status {
    CUDA_RETURN_IF_ERROR(cudaSetDevice(device_buffer_->device()));
    if (drain_stream_ == nullptr) {
      cudaStream_t stream = nullptr;
      cudaEvent_t event = nullptr;
      CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      drain_stream_ = stream;
      CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
      drain_event_ = event;
    }
    for (int l = 0; l < config_.num_layers; ++l) {
      if (moe_index_[l] >= 0) RETURN_IF_ERROR(EnqueueGpuLayer(l, drain_stream_, parity));
    }
    CUDA_RETURN_IF_ERROR(
        cudaEventRecord(static_cast<cudaEvent_t>(drain_event_), static_cast<cudaStream_t>(drain_stream_)));
    return absl::OkStatus();
  };
  absl::Status st = drain();
  if (!st.ok()) {
    broken_ = true;
    first_error_ = absl::InternalError(StrCat("withdrawing step ", step_sequence_, ": ", st.message()));
    return first_error_;
  }
  return FinishGpuStep(drain_event_);
}

absl::Status WorkerPool::EnqueueGpuLayer(int layer, void* stream, int parity) {
  ASSIGN_OR_RETURN(GpuTick tick, GpuLayerTick(layer, parity));
  if (tick.soon != nullptr) {
    RETURN_IF_ERROR(EnqueueWriteCounter(static_cast<cudaStream_t>(stream), tick.soon, tick.value));
  }
  RETURN_IF_ERROR(EnqueueWriteCounter(static_cast<cudaStream_t>(stream), tick.counter, tick.value));
  return AwaitGpuLayer(layer, stream, parity);
}

absl::StatusOr<WorkerPool::GpuTick> WorkerPool::GpuLayerTick(int layer, int parity) {
  if (layer < 0 || layer >= config_.num_layers || moe_index_[layer] < 0) {
    return absl::InvalidArgumentError(StrCat("layer ", layer, " is not an MoE layer"));
  }
  if (device_buffer_ == nullptr) return absl::FailedPreconditionError("the pool has no device buffer");
  GpuTick tick;
  tick.counter = reinterpret_cast<uint32_t*>(device_buffer_->data());
  tick.value = ParityBase(parity) + 1 + static_cast<uint32_t>(moe_index_[layer]);
  tick.system_scope = layer_cross_gpu_[layer];
  tick.stamp = CoordinatorStamps(moe_index_[layer]);
  if (EarlyExperts()) tick.soon = reinterpret_cast<uint32_t*>(device_buffer_->data() + kSoonOffset);
  return tick;
}

uint64_t* WorkerPool::CoordinatorStamps(int moe) {
  if (timeline_bytes_ == 0) return nullptr;
  return reinterpret_cast<uint64_t*>(device_buffer_->data() + TimelineOffset(0, moe));
}

absl::Status WorkerPool::AwaitGpuLayer(int layer, void* stream, int parity) {
  if (layer < 0 || layer >= config_.num_layers || moe_index_[layer] < 0) {
    return absl::InvalidArgumentError(StrCat("layer ", layer, " is not an MoE layer"));
  }
  const uint32_t tick = ParityBase(parity) + 1 + static_cast<uint32_t>(moe_index_[layer]);
  uint8_t* base = device_buffer_->data();
  std::vector<const uint32_t*> done;
  for (int w : layer_owners_[layer]) done.push_back(reinterpret_cast<const uint32_t*>(base + kCounterStride * (w + 1)));
  uint64_t* stamps = CoordinatorStamps(moe_index_[layer]);
  // Not early where the worker combines: the next kernel is then the model's next layer, whose blocks
  // would park on every SM while the worker's down kernel still needs them.
  return EnqueueWaitCounters(static_cast<cudaStream_t>(stream), done, DoneValue(tick),
                             stamps != nullptr ? stamps + 1 : nullptr,
                             EarlyCombine() && step_tokens_ == 1 && !CombinesGpuLayer(layer, step_tokens_));
}

absl::Status WorkerPool::FinishGpuStep(void* event) {
  if (broken_) return first_error_;
  const std::string what = StrCat("GPU step ", step_sequence_);
  auto on_message = [&](Worker& w, const proto::Envelope& e) -> absl::Status {
    if (e.has_error()) {
      return absl::InternalError(StrCat(Describe(w), " failed in ", what, ": ", e.error().message()));
    }
    if (e.has_done() && e.done().sequence() == step_sequence_) step_pending_[w.index] = false;
    return absl::OkStatus();
  };
  // While the stream runs: notice a dead worker or an error message without waiting for the deadline.
  auto poll = [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckChildren(what));
    while (true) {
      ASSIGN_OR_RETURN(std::optional<Incoming> in, router_->Receive(0));
      if (!in) return absl::OkStatus();
      Worker* w = ByIdentity(in->peer);
      if (w != nullptr) RETURN_IF_ERROR(on_message(*w, in->envelope));
    }
  };
  absl::Status st = WaitForEvent(static_cast<cudaEvent_t>(event),
                                 std::chrono::milliseconds(options_.step_timeout_ms), what, poll);
  if (st.ok()) {
    const auto event_seen = Clock::now();
    st = Pump(options_.step_timeout_ms, what, on_message,
              [&] { return std::none_of(step_pending_.begin(), step_pending_.end(), [](bool p) { return p; }); },
              [&](const Worker& w) { return static_cast<bool>(step_pending_[w.index]); });
    if (st.ok()) host_times_ = {event_seen, Clock::now()};
  }
  if (!st.ok() && absl::IsDeadlineExceeded(st)) {
    // Name the workers that are behind: their done counters have not reached the step's last tick.
    cudaSetDevice(device_buffer_->device());
    std::string late;
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!step_pending_[w]) continue;
      uint32_t done = 0;
      cudaMemcpy(&done, device_buffer_->data() + kCounterStride * (w + 1), sizeof(done), cudaMemcpyDeviceToHost);
      int last_layer = -1;
      for (int l = 0; l < config_.num_layers; ++l) {
        if (moe_index_[l] >= 0 && DoneValue(step_base_ + 1 + static_cast<uint32_t>(moe_index_[l])) == done) {
          last_layer = l;
        }
      }
      late = StrCat(late, late.empty() ? "" : "; ", Describe(workers_[w]),
                    last_layer < 0 ? std::string(" finished no layer of it")
                                   : StrCat(" finished up to layer ", last_layer));
    }
    st = absl::DeadlineExceededError(StrCat(st.message(), "; the worker may be hung: ", late));
  }
  if (!st.ok()) {
    // Release the coordinator's stream, which may wait for a tick nobody will write: cycle every tick
    // of the step through the done counters (each held long enough for the stream's poll to see it)
    // until the step's event completes, then report.
    cudaSetDevice(device_buffer_->device());
    const auto give_up = Clock::now() + std::chrono::seconds(5);
    while (cudaEventQuery(static_cast<cudaEvent_t>(event)) == cudaErrorNotReady && Clock::now() < give_up) {
      for (int i = 1; i <= num_moe_layers_; ++i) {
        const uint32_t value = DoneValue(step_base_ + static_cast<uint32_t>(i));
        for (size_t w = 0; w < workers_.size(); ++w) {
          cudaMemcpy(device_buffer_->data() + kCounterStride * (w + 1), &value, sizeof(value), cudaMemcpyHostToDevice);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    if (!broken_) {
      broken_ = true;
      first_error_ = st;
    }
    return first_error_;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<WorkerPool::LayerTimes>> WorkerPool::GpuStepTimeline() {
  if (timeline_bytes_ == 0) return absl::FailedPreconditionError("the pool was started without a timeline");
  std::vector<uint64_t> stamps(timeline_bytes_ / sizeof(uint64_t));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_buffer_->device()));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(stamps.data(), device_buffer_->data() + timeline_offset_, timeline_bytes_,
                                  cudaMemcpyDeviceToHost));
  // The first or second stamp of process p's pair `slot`.
  auto at = [&](int process, int slot, int half) {
    return stamps[(TimelineOffset(process, slot) - timeline_offset_) / sizeof(uint64_t) + half];
  };
  std::vector<LayerTimes> times;
  std::vector<int> next_entry(workers_.size(), 0);  // a worker's entries follow its owned layers
  for (int l = 0; l < config_.num_layers; ++l) {
    if (moe_index_[l] < 0) continue;
    LayerTimes t;
    t.layer = l;
    t.tick_stored = at(0, moe_index_[l], 0);
    t.coordinator_open = at(0, moe_index_[l], 1);
    for (int w : layer_owners_[l]) {
      const int entry = next_entry[w]++;
      t.workers_open = std::max(t.workers_open, at(w + 1, entry, 0));
      t.done_stored = std::max(t.done_stored, at(w + 1, entry, 1));
    }
    times.push_back(t);
  }
  return times;
}

#else

absl::StatusOr<WorkerPool::DeviceSlots> WorkerPool::device_slots() {
  return absl::UnimplementedError("this build has no CUDA");
}
absl::StatusOr<int> WorkerPool::BeginGpuStep(uint32_t) { return absl::UnimplementedError("this build has no CUDA"); }
absl::Status WorkerPool::SendGpuStepAhead(uint32_t) { return absl::UnimplementedError("this build has no CUDA"); }
absl::Status WorkerPool::WithdrawGpuStepAhead() { return absl::OkStatus(); }  // nothing can have been sent
absl::Status WorkerPool::EnqueueGpuLayer(int, void*, int) { return absl::UnimplementedError("this build has no CUDA"); }
absl::StatusOr<WorkerPool::GpuTick> WorkerPool::GpuLayerTick(int, int) {
  return absl::UnimplementedError("this build has no CUDA");
}
absl::Status WorkerPool::AwaitGpuLayer(int, void*, int) { return absl::UnimplementedError("this build has no CUDA"); }
bool WorkerPool::CombinesGpuLayer(int, uint32_t) const { return false; }
absl::Status WorkerPool::FinishGpuStep(void*) { return absl::UnimplementedError("this build has no CUDA"); }
absl::StatusOr<std::vector<WorkerPool::LayerTimes>> WorkerPool::GpuStepTimeline() {
  return absl::UnimplementedError("this build has no CUDA");
}

#endif

}  // namespace pinmoe
