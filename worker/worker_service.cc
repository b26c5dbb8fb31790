#include "worker/worker_service.h"

#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "common/str_cat.h"
#include "common/device_name.h"
#include "common/env.h"
#include "common/step_doorbell.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/shared_memory.h"
#include "common/status.h"
#include "common/transport.h"
#include "worker/expert_store.h"
#if PINMOE_WITH_CUDA
#include "worker/gpu/counter_kernels.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/cuda_check.h"
#include "worker/gpu/gpu_expert_store.h"
#include "worker/gpu/stream_sync.h"
#endif

namespace pinmoe {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

#if PINMOE_WITH_CUDA
// Whether the down kernels after a step's first layer add to the done counter (CounterStore::add) rather
// than have their last block store it; PINMOE_DONE_ADD=0 turns it off (A/B measurements).
bool DoneAddForm() {
  static const bool on = EnvInt("PINMOE_DONE_ADD", 1) != 0;
  return on;
}
#endif

class Worker {
 public:
  explicit Worker(const WorkerOptions& options) : options_(options) {}

  absl::Status Run() {
    if (options_.parent_pid > 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != options_.parent_pid) return ParentGone();
    }
    if (options_.fault == WorkerFault::kExitBeforeRegister) {
      return absl::AbortedError("fault injection: exiting before registering");
    }
    ASSIGN_OR_RETURN(socket_, DealerSocket::Connect(options_.endpoint,
                                                    StrCat("worker-", options_.worker_id)));
    proto::Envelope reg = MakeEnvelope();
    reg.mutable_register_()->set_worker_id(options_.worker_id);
    reg.mutable_register_()->set_pid(::getpid());
    reg.mutable_register_()->set_device(options_.device);
    RETURN_IF_ERROR(socket_->Send(reg));

    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.assign_timeout_ms);
    while (!loaded_) {
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError(StrCat("no Assign from the coordinator at ",
                                                        options_.endpoint, " within ",
                                                        options_.assign_timeout_ms / 1000.0, " s"));
      }
      ASSIGN_OR_RETURN(auto in, socket_->Receive(/*timeout_ms=*/200));
      if (options_.parent_pid > 0 && ::getppid() != options_.parent_pid) return ParentGone();
      if (!in) continue;
      if (in->envelope.has_shutdown()) return absl::OkStatus();
      if (!in->envelope.has_assign()) continue;
      absl::Status st = HandleAssign(in->envelope.assign());
      if (!st.ok()) {
        SendError(st, 0);
        return st;
      }
    }

    uint32_t works = 0;
    // For a while after a Step the socket is polled without blocking: decode steps follow each other
    // within milliseconds, and the wake-up from a blocking poll made the step's first layer wait for us
    // (the hand-over timeline, bench/NOTES.md).
    auto hot_until = std::chrono::steady_clock::time_point{};
    // A Step, from a message or a ring of the step doorbell (common/step_doorbell.h).
    auto run_step = [&](const proto::Step& step) -> absl::Status {
      if (options_.fault != WorkerFault::kNone && works++ >= options_.fault_after_works) {
        if (options_.fault == WorkerFault::kCrashOnWork) std::abort();
        if (options_.fault == WorkerFault::kHangOnWork) {
          while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
        }
      }
      last_step_sequence_ = step.sequence();
#if PINMOE_WITH_CUDA
      absl::Status st = HandleStep(step);
      if (!st.ok()) {
        SendError(st, step.sequence());
        return absl::OkStatus();
      }
      proto::Envelope done = MakeEnvelope();
      done.mutable_done()->set_sequence(step.sequence());
      RETURN_IF_ERROR(socket_->Send(done));
      hot_until = std::chrono::steady_clock::now() + WorkerHotPoll();  // common/step_doorbell.h
#else
      SendError(absl::UnimplementedError("Step needs a GPU worker"), step.sequence());
#endif
      return absl::OkStatus();
    };
    while (true) {
      const bool hot = std::chrono::steady_clock::now() < hot_until;
      ASSIGN_OR_RETURN(auto in, socket_->Receive(/*timeout_ms=*/hot ? 0 : 200));
      if (!in && doorbell_ != nullptr) {
        // Rung for the step after our last: replay the cached Step of its parity under its sequence.
        const uint64_t rung = ReadDoorbell(doorbell_);
        if (rung == last_step_sequence_ + 1 && rung_steps_[rung & 1].has_value()) {
          proto::Step step = *rung_steps_[rung & 1];
          step.set_sequence(rung);
          RETURN_IF_ERROR(run_step(step));
          continue;
        }
      }
      if (!in && hot) {
        std::this_thread::yield();
        continue;
      }
      if (options_.parent_pid > 0 && ::getppid() != options_.parent_pid) return ParentGone();
      if (!in) continue;
      const proto::Envelope& env = in->envelope;
      if (env.has_shutdown()) return absl::OkStatus();
      if (env.has_heartbeat()) {
        RETURN_IF_ERROR(socket_->Send(env));
        continue;
      }
      if (env.has_step()) {
        // A Step that names a doorbell slot may be rung again for a later step of its parity.
        if (env.step().has_doorbell()) {
          absl::StatusOr<uint8_t*> slot = Resolve(env.step().doorbell(), sizeof(uint64_t), "doorbell slot");
          if (!slot.ok() || reinterpret_cast<uintptr_t>(*slot) % alignof(uint64_t) != 0) {
            SendError(slot.ok() ? absl::InvalidArgumentError("doorbell slot is misaligned") : slot.status(),
                      env.step().sequence());
            continue;
          }
          doorbell_ = *slot;
          rung_steps_[env.step().sequence() & 1] = env.step();
        }
        RETURN_IF_ERROR(run_step(env.step()));
        continue;
      }
      if (!env.has_work()) continue;
      if (options_.fault != WorkerFault::kNone && works++ >= options_.fault_after_works) {
        if (options_.fault == WorkerFault::kCrashOnWork) std::abort();
        if (options_.fault == WorkerFault::kHangOnWork) {
          while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
        }
      }
      auto start = std::chrono::steady_clock::now();
      absl::StatusOr<uint32_t> pairs = HandleWork(env.work());
      if (!pairs.ok()) {
        SendError(pairs.status(), env.work().sequence());
        continue;  // a bad message is the coordinator's bug; stay up for the next one
      }
      proto::Envelope done = MakeEnvelope();
      done.mutable_done()->set_sequence(env.work().sequence());
      done.mutable_done()->set_pairs_computed(*pairs);
      done.mutable_done()->set_compute_seconds(Seconds(start));
      RETURN_IF_ERROR(socket_->Send(done));
    }
  }

 private:
  absl::Status ParentGone() const {
    return absl::AbortedError(StrCat("coordinator (pid ", options_.parent_pid, ") is gone"));
  }

  void SendError(const absl::Status& status, uint64_t sequence) {
    proto::Envelope err = MakeEnvelope();
    err.mutable_error()->set_message(std::string(status.message()));
    err.mutable_error()->set_sequence(sequence);
    socket_->Send(err).IgnoreError();  // best effort: the coordinator also sees us exit
  }

  absl::StatusOr<int> DeviceIndex() const {
    ASSIGN_OR_RETURN(int n, ParseDeviceName(options_.device));
#if !PINMOE_WITH_CUDA
    if (n >= 0) return absl::UnimplementedError(StrCat("--device ", options_.device, ": this build has no CUDA"));
#endif
    return n;
  }

  absl::Status HandleAssign(const proto::Assign& assign) {
    auto start = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(device_, DeviceIndex());
    for (const auto& b : assign.buffers()) {
      if (!b.cuda_ipc_handle().empty()) {
#if PINMOE_WITH_CUDA
        if (device_ < 0) return absl::InvalidArgumentError("a CPU worker was given a CUDA buffer");
        ASSIGN_OR_RETURN(auto dev, DeviceBuffer::Open(device_, b.cuda_ipc_handle(), b.size_bytes()));
        device_buffers_[b.id()] = std::move(dev);
        buffer_devices_[b.id()] = b.cuda_device();
        continue;
#else
        return absl::UnimplementedError("a CUDA buffer was assigned to a worker built without CUDA");
#endif
      }
      ASSIGN_OR_RETURN(auto shm, SharedMemory::Open(b.shm_name(), b.size_bytes()));
      buffers_[b.id()] = std::move(shm);
    }
    ASSIGN_OR_RETURN(config_, LoadModelConfig(assign.model_dir()));
    std::unique_ptr<Checkpoint> checkpoint;
    if (assign.synthetic_seed() == 0) {
      ASSIGN_OR_RETURN(checkpoint, Checkpoint::Open(assign.model_dir()));
    } else if (device_ < 0) {
      return absl::UnimplementedError("synthetic experts are drawn on a GPU; this is a CPU worker");
    }
    std::vector<LayerExpertSet> sets;
    for (const auto& le : assign.experts()) {
      LayerExpertSet s;
      s.layer = static_cast<int>(le.layer());
      s.experts.assign(le.experts().begin(), le.experts().end());
      sets.push_back(std::move(s));
    }
    uint64_t weight_bytes = 0;
    size_t experts = 0;
    if (device_ >= 0) {
#if PINMOE_WITH_CUDA
      if (checkpoint == nullptr) {
        ASSIGN_OR_RETURN(gpu_store_, GpuExpertStore::Synthetic(config_, sets, device_, assign.synthetic_seed()));
      } else {
        ASSIGN_OR_RETURN(gpu_store_, GpuExpertStore::Load(config_, *checkpoint, sets, device_));
      }
      weight_bytes = gpu_store_->checkpoint_bytes();
      experts = gpu_store_->num_experts();
#endif
    } else {
      ASSIGN_OR_RETURN(store_, CpuExpertStore::Load(config_, *checkpoint, sets));
      weight_bytes = store_->checkpoint_bytes();
      experts = store_->num_experts();
    }
    loaded_ = true;
    proto::Envelope ready = MakeEnvelope();
    ready.mutable_ready()->set_weight_bytes(weight_bytes);
    ready.mutable_ready()->set_experts_loaded(static_cast<uint32_t>(experts));
    ready.mutable_ready()->set_load_seconds(Seconds(start));
    return socket_->Send(ready);
  }

  // A bounds-checked slice of an imported buffer (host or device memory).
  absl::StatusOr<uint8_t*> Resolve(const proto::Slice& slice, uint64_t expected_bytes, std::string_view what) {
    if (slice.length() != expected_bytes) {
      return absl::InvalidArgumentError(StrCat(what, " is ", slice.length(), " bytes, expected ", expected_bytes));
    }
    if (slice.offset() % alignof(float) != 0) return absl::InvalidArgumentError(StrCat(what, " is misaligned"));
    auto it = buffers_.find(slice.buffer_id());
    if (it != buffers_.end()) {
      ASSIGN_OR_RETURN(std::span<uint8_t> span, it->second->Slice(slice.offset(), slice.length()));
      return span.data();
    }
#if PINMOE_WITH_CUDA
    auto dev = device_buffers_.find(slice.buffer_id());
    if (dev != device_buffers_.end()) {
      const uint64_t size = dev->second->size();
      if (slice.offset() > size || slice.length() > size - slice.offset()) {
        return absl::OutOfRangeError(StrCat(what, " [", slice.offset(), ", +", slice.length(),
                                            ") is outside device buffer ", slice.buffer_id(), " of ", size, " bytes"));
      }
      return dev->second->data() + slice.offset();
    }
#endif
    return absl::InvalidArgumentError(StrCat(what, " names unknown buffer ", slice.buffer_id()));
  }

  absl::StatusOr<uint32_t> HandleWork(const proto::Work& work) {
    const uint64_t h = static_cast<uint64_t>(config_.hidden_size);
    const uint64_t t = work.tokens(), k = work.top_k();
    if (k != static_cast<uint64_t>(config_.top_k) || t == 0 || t > (1u << 24)) {
      return absl::InvalidArgumentError(StrCat("Work ", work.sequence(), " has tokens=", t,
                                                     " top_k=", k));
    }
    ASSIGN_OR_RETURN(uint8_t* in, Resolve(work.input(), t * h * sizeof(float), "input slice"));
    ASSIGN_OR_RETURN(uint8_t* routing, Resolve(work.routing(), t * k * sizeof(int32_t), "routing slice"));
    ASSIGN_OR_RETURN(uint8_t* out, Resolve(work.output(), t * k * h * sizeof(float), "output slice"));
#if PINMOE_WITH_CUDA
    if (gpu_store_ != nullptr) {
      return gpu_store_->Compute(static_cast<int>(work.layer()), reinterpret_cast<const float*>(in),
                                 static_cast<uint32_t>(t), static_cast<uint32_t>(k),
                                 reinterpret_cast<const int32_t*>(routing), reinterpret_cast<float*>(out));
    }
#endif
    return store_->Compute(static_cast<int>(work.layer()), reinterpret_cast<const float*>(in),
                           static_cast<uint32_t>(t), static_cast<uint32_t>(k),
                           reinterpret_cast<const int32_t*>(routing), reinterpret_cast<float*>(out));
  }

#if PINMOE_WITH_CUDA
  // Enqueues the whole step (wait for the coordinator's tick, experts, our tick, per layer) and waits
  // for it. On any failure the done counter is still advanced to the step's last tick, so that the
  // coordinator's stream is never left waiting on us.
  absl::Status HandleStep(const proto::Step& step) {
    if (gpu_store_ == nullptr) return absl::FailedPreconditionError("Step sent to a CPU worker");
    const uint64_t h = static_cast<uint64_t>(config_.hidden_size);
    const uint64_t t = step.tokens(), k = step.top_k();
    if (k != static_cast<uint64_t>(config_.top_k) || t == 0 || t > (1u << 24) ||
        step.layers_size() != step.ticks_size() || step.layers_size() == 0) {
      return absl::InvalidArgumentError(StrCat("Step ", step.sequence(), " has tokens=", t, " top_k=", k,
                                               " and ", step.layers_size(), " layers for ", step.ticks_size(),
                                               " ticks"));
    }
    if (step.combine_size() != 0 && (step.combine_size() != step.layers_size() || t != 1)) {
      return absl::InvalidArgumentError(StrCat("Step ", step.sequence(), " asks to combine ", step.combine_size(),
                                               " of ", step.layers_size(), " layers in a step of ", t,
                                               " tokens (one flag per layer, one-token steps only)"));
    }
    ASSIGN_OR_RETURN(uint8_t* done_ptr, Resolve(step.done(), sizeof(uint32_t), "done counter"));
    uint32_t* done = reinterpret_cast<uint32_t*>(done_ptr);
    // Our done counter lives in the coordinator's memory; a coordinator on another GPU needs our
    // stores fenced at system scope.
    const auto owner = buffer_devices_.find(step.done().buffer_id());
    const bool system_scope = owner == buffer_devices_.end() || owner->second != device_;
    cudaStream_t stream = gpu_store_->stream();
    auto run = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(uint8_t* ready, Resolve(step.ready(), sizeof(uint32_t), "ready counter"));
      ASSIGN_OR_RETURN(uint8_t* in, Resolve(step.input(), t * h * sizeof(float), "input slice"));
      ASSIGN_OR_RETURN(uint8_t* routing, Resolve(step.routing(), t * k * sizeof(int32_t), "routing slice"));
      ASSIGN_OR_RETURN(uint8_t* out, Resolve(step.output(), t * k * h * sizeof(float), "output slice"));
      uint64_t* stamps = nullptr;  // [layers][2]: our gate open, our done stored (a timeline was asked for)
      if (step.has_timeline()) {
        ASSIGN_OR_RETURN(uint8_t* tl, Resolve(step.timeline(), static_cast<uint64_t>(step.layers_size()) * 16,
                                              "timeline slice"));
        if (reinterpret_cast<uintptr_t>(tl) % alignof(uint64_t) != 0) {
          return absl::InvalidArgumentError("timeline slice is misaligned");
        }
        stamps = reinterpret_cast<uint64_t*>(tl);
      }
      // The early form (the coordinator sent a `soon` counter, which its router stores as it starts):
      // our gate waits for that one and lets the expert kernels in, whose blocks then wait for the real
      // tick themselves, so their launch overlaps the router. Only where waits are gate kernels.
      const uint32_t* soon = nullptr;
      if (step.has_soon() && KernelWaitsCounters()) {
        ASSIGN_OR_RETURN(uint8_t* soon_ptr, Resolve(step.soon(), sizeof(uint32_t), "soon counter"));
        soon = reinterpret_cast<const uint32_t*>(soon_ptr);
      }
      // The layers the coordinator left us to combine into its residual (Step.combine).
      ExpertCombine combine;
      if (step.combine_size() != 0) {
        ASSIGN_OR_RETURN(uint8_t* residual, Resolve(step.residual(), h * sizeof(float), "residual slice"));
        ASSIGN_OR_RETURN(uint8_t* weights, Resolve(step.weights(), k * sizeof(float), "routing weights slice"));
        combine = ExpertCombine{reinterpret_cast<float*>(residual), reinterpret_cast<const float*>(weights)};
      }
      RETURN_IF_ERROR(gpu_store_->Reserve(static_cast<uint32_t>(t), static_cast<uint32_t>(k)));
      // Every layer leaves the done counter at DoneValue(its tick), so after the step's first layer (whose
      // down kernel stores the value: the counter may hold anything from an earlier step) each may add
      // the difference instead (CounterStore::add).
      const bool add_form = DoneAddForm();
      auto enqueue = [&]() -> absl::Status {
        for (int i = 0; i < step.layers_size(); ++i) {
          const uint32_t* ready_counter = reinterpret_cast<const uint32_t*>(ready);
          uint64_t* open_stamp = stamps != nullptr ? stamps + 2 * i : nullptr;
          CounterWait before;
          if (soon != nullptr) {
            RETURN_IF_ERROR(EnqueueWaitCounters(stream, std::span<const uint32_t* const>(&soon, 1), step.ticks(i)));
            before = CounterWait{ready_counter, step.ticks(i), open_stamp, EarlyPoll()};
          } else {
            RETURN_IF_ERROR(EnqueueWaitCounters(stream, std::span<const uint32_t* const>(&ready_counter, 1),
                                                step.ticks(i), open_stamp));
          }
          RETURN_IF_ERROR(gpu_store_->Enqueue(static_cast<int>(step.layers(i)), reinterpret_cast<const float*>(in),
                                              static_cast<uint32_t>(t), static_cast<uint32_t>(k),
                                              reinterpret_cast<const int32_t*>(routing),
                                              reinterpret_cast<float*>(out), stream, /*allow_grouped=*/true,
                                              CounterStore{done, DoneValue(step.ticks(i)), system_scope,
                                                           stamps != nullptr ? stamps + 2 * i + 1 : nullptr,
                                                           add_form && i > 0
                                                               ? DoneValue(step.ticks(i)) - DoneValue(step.ticks(i - 1))
                                                               : 0u},
                                              before,
                                              step.combine_size() != 0 && step.combine(i) ? combine
                                                                                          : ExpertCombine()));
        }
        return absl::OkStatus();
      };
      // Decode steps repeat exactly every other step (same slices, same ticks per parity): capture each
      // once as a CUDA graph and replay it, one launch instead of four calls per layer.
      if (t == 1) {
        std::string key;
        proto::Step shape = step;
        shape.clear_sequence();
        shape.SerializeToString(&key);
        auto it = step_graphs_.find(key);
        if (it == step_graphs_.end()) {
          CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
          absl::Status st = enqueue();
          cudaGraph_t graph = nullptr;
          const cudaError_t end = cudaStreamEndCapture(stream, &graph);
          RETURN_IF_ERROR(st);
          CUDA_RETURN_IF_ERROR(end);
          cudaGraphExec_t exec = nullptr;
          const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
          cudaGraphDestroy(graph);
          CUDA_RETURN_IF_ERROR(inst);
          it = step_graphs_.emplace(key, exec).first;
        }
        CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream));
      } else {
        RETURN_IF_ERROR(enqueue());
      }
      if (step_event_ == nullptr) CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&step_event_, cudaEventDisableTiming));
      CUDA_RETURN_IF_ERROR(cudaEventRecord(step_event_, stream));
      return WaitForEvent(step_event_, std::chrono::milliseconds(options_.step_timeout_ms),
                          StrCat("step ", step.sequence()), [&]() -> absl::Status {
                            if (options_.parent_pid > 0 && ::getppid() != options_.parent_pid) return ParentGone();
                            return absl::OkStatus();
                          });
    };
    absl::Status st = run();
    if (!st.ok()) {
      // Release the coordinator, whose stream waits for one of our ticks: write each in turn, held
      // long enough for its poll to see it.
      for (uint32_t tick : step.ticks()) {
        const uint32_t value = DoneValue(tick);
        cudaMemcpy(done, &value, sizeof(value), cudaMemcpyHostToDevice);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    return st;
  }
  cudaEvent_t step_event_ = nullptr;
  std::map<std::string, cudaGraphExec_t> step_graphs_;  // by the Step's bytes without its sequence
#endif

  WorkerOptions options_;
  std::unique_ptr<DealerSocket> socket_;
  // The step doorbell (common/step_doorbell.h): our slot, the last Step of each parity that named it,
  // and the sequence of the last Step we handled, however it came.
  uint8_t* doorbell_ = nullptr;
  std::optional<proto::Step> rung_steps_[2];
  uint64_t last_step_sequence_ = 0;
  std::map<uint32_t, std::unique_ptr<SharedMemory>> buffers_;
  ModelConfig config_;
  std::unique_ptr<CpuExpertStore> store_;
  bool loaded_ = false;
  int device_ = -1;  // -1: CPU
#if PINMOE_WITH_CUDA
  std::map<uint32_t, std::unique_ptr<DeviceBuffer>> device_buffers_;
  std::map<uint32_t, int> buffer_devices_;  // the GPU each imported device buffer lives on
  std::unique_ptr<GpuExpertStore> gpu_store_;  // declared after the buffers: freed first
#endif
};

}  // namespace

absl::Status RunWorker(const WorkerOptions& options) { return Worker(options).Run(); }

}  // namespace pinmoe
