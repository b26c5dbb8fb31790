// The coordinator's side of the process split: starts one pinmoe-worker per slot of the placement plan,
// registers it, hands it its experts and the shared activation buffer, and then either (CPU dense part)
// sends, for each MoE layer, the workers that own experts there one Work message each and waits for their
// Done, or (GPU dense part, GPU workers) sends one Step per forward step and lets the GPU order the layers
// through counters in the device buffer (see the GPU-ordered path below).
//
// Every wait is bounded. A worker that exits, reports an error or stays silent past its deadline turns
// into an error that names it (index, pid, what it was doing); nothing hangs. Restarting a dead worker
// and replaying its work is the next step and fits here: workers are stateless besides their weights, and
// the buffers stay with the coordinator.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/shared_memory.h"
#include "common/step_doorbell.h"
#include "common/transport.h"
#include "coordinator/expert_backend.h"
#include "coordinator/placement.h"
#include "worker/gpu/device_buffer.h"

namespace pinmoe {

struct WorkerPoolOptions {
  int num_workers = 1;
  std::string worker_binary;  // path to pinmoe-worker
  std::string model_dir;
  std::vector<std::string> extra_worker_args;
  int register_timeout_ms = 10000;
  int load_timeout_ms = 600000;  // loading weights from disk can be slow
  int step_timeout_ms = 60000;
  uint32_t max_tokens_per_step = 512;  // larger batches are split into several Work rounds
  // Where every worker keeps its experts: "cpu", or "cuda:N" (the activation buffer then lives on GPU N
  // and travels to the workers as a CUDA IPC handle).
  std::string worker_device = "cpu";
  // Per-worker devices instead (CPU and GPU workers may mix), and a placement to use instead of the
  // even split (from PlanMemory); both empty by default.
  std::vector<std::string> worker_devices;
  std::optional<Placement> placement;
  // Where the CUDA IPC buffer lives: the coordinator's GPU when its dense part runs on one; -1: the
  // first GPU worker's device.
  int buffer_device = -1;
  // Non-zero: workers draw seeded synthetic experts instead of reading a checkpoint (benchmarks; GPU
  // workers only; model_dir then needs only config.json).
  uint64_t synthetic_seed = 0;
  // The GPU-ordered path stamps every hand-over with the GPU's clock (GpuStepTimeline; `pinmoe bench
  // --timeline`). Only the kernel forms stamp: gate kernels (under MPS) and kernel-stored counters.
  bool timeline = false;
};

class WorkerPool : public ExpertBackend {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Start(const ModelConfig& config,
                                                           const WorkerPoolOptions& options);
  ~WorkerPool() override;

  absl::Status RunMoe(int layer, const float* x, uint32_t tokens, const int32_t* routing,
                      float* out) override;

  // ---- The GPU-ordered path, for a model whose dense part runs on a GPU while every worker is a GPU
  // worker: one Step message per forward step, and per layer a hand-over through 32-bit counters in the
  // device buffer (stored by the last block of the kernel that finishes the work, the router's or the
  // workers' down kernel's, and waited on by one-block gate kernels; see worker/gpu/stream_sync.h)
  // instead of a message round trip. Streams and events are
  // cudaStream_t / cudaEvent_t passed as void*, so that this header needs no CUDA.
  struct DeviceSlots {
    float* input = nullptr;      // [max_tokens_per_step, hidden]
    int32_t* routing = nullptr;  // [max_tokens_per_step, top_k]
    float* output = nullptr;     // [max_tokens_per_step, top_k, hidden]
    // The model's residual stream and routing weights, here so that a worker can combine into them
    // (CombinesGpuLayer).
    float* residual = nullptr;   // [max_tokens_per_step, hidden]
    float* weights = nullptr;    // [max_tokens_per_step, top_k]
  };
  bool all_gpu() const;
  uint32_t max_tokens_per_step() const { return options_.max_tokens_per_step; }
  absl::StatusOr<DeviceSlots> device_slots();
  // Sends each worker its Step (the MoE layers where it owns experts, with their ticks) and returns
  // the step's parity. Ticks are the same every other step — parity 0 uses 1..L, parity 1 uses
  // kParityBase + 1..L — so a CUDA graph captured for a parity replays unchanged, and the waits use
  // equality, which a stale value from the previous step can never satisfy.
  // A step sent ahead (below) of `tokens` tokens becomes this one without a message; one of other
  // tokens is withdrawn first.
  absl::StatusOr<int> BeginGpuStep(uint32_t tokens);
  // While the step just begun runs: send the Step of the one after it (the other parity), which each
  // worker takes up as soon as it has finished this one, so that its layers are enqueued and its first
  // gate waits on the GPU before the coordinator gets there (decode steps, where the next step is
  // expected to have as many tokens). A step sent ahead must be begun (BeginGpuStep) or withdrawn
  // before the coordinator goes idle: the workers wait for its ticks within their step timeout.
  absl::Status SendGpuStepAhead(uint32_t tokens);
  // Withdraws a step sent ahead (none: nothing to do), between steps: hands its ticks over in turn on
  // a stream of the pool's own and waits (bounded) until its workers are done; they compute on the
  // buffers' last contents into slots nobody reads (the cost of one step's experts) and into the
  // residual's first row, which the next step's embedding overwrites. RunMoe and the
  // pool's shutdown withdraw it themselves.
  absl::Status WithdrawGpuStepAhead();
  uint32_t tokens_ahead() const { return ahead_.has_value() ? ahead_->tokens : 0u; }
  // On `stream`, after the layer's input and routing are written: publish the layer's tick, then wait
  // until every worker owning experts of the layer has written it back.
  absl::Status EnqueueGpuLayer(int layer, void* stream, int parity);
  // Its two halves. The tick: the counter the coordinator stores once the layer's input and routing are
  // written (its router's last block, or a write on its stream) and the value to store;
  // `system_scope` when a worker of the layer runs on another GPU than the buffer.
  struct GpuTick {
    uint32_t* counter = nullptr;
    uint32_t value = 0;
    bool system_scope = false;
    uint64_t* stamp = nullptr;  // with options.timeline: for the GPU clock when the tick is stored
    // The early form (EarlyExperts in worker_pool.cc): the router also stores `value` here as its last
    // block starts, on which the workers let their expert kernels in; null otherwise.
    uint32_t* soon = nullptr;
  };
  absl::StatusOr<GpuTick> GpuLayerTick(int layer, int parity);
  // Then wait for the workers' (work may be enqueued in between).
  absl::Status AwaitGpuLayer(int layer, void* stream, int parity);
  // Whether, in a step of `tokens` tokens, the worker holding the layer adds its weighted slots to the
  // residual (DeviceSlots::residual) itself, after which the model has nothing to combine: one-token
  // steps, layers held whole by one worker.
  bool CombinesGpuLayer(int layer, uint32_t tokens) const;
  // Waits (bounded) for `event`, recorded after the step's last use of the slots, and for every worker's
  // Done. If a worker dies or hangs, the coordinator's stream is released and the error names it.
  absl::Status FinishGpuStep(void* event);
  // With options.timeline, after FinishGpuStep: the GPU clock (ns; 0 where that hand-over's form does
  // not stamp) at each of the last step's MoE layer's hand-overs, in layer order. Where several workers
  // own a layer, the latest of them.
  struct LayerTimes {
    int layer = 0;
    uint64_t tick_stored = 0;  // the router stored the tick
    uint64_t workers_open = 0;  // the workers' gates saw it
    uint64_t done_stored = 0;  // their down kernels stored their done counters
    uint64_t coordinator_open = 0;  // the coordinator's gate saw them all
  };
  absl::StatusOr<std::vector<LayerTimes>> GpuStepTimeline();
  // The host clock of the last FinishGpuStep that succeeded: when its event was seen complete and when
  // every worker's Done was in (HandOverTable's host rows).
  struct HostTimes {
    std::chrono::steady_clock::time_point event_seen, returned;
  };
  HostTimes last_host_times() const { return host_times_; }

  const Placement& placement() const { return placement_; }
  const std::string& runtime_dir() const { return runtime_dir_; }
  std::vector<pid_t> worker_pids() const;
  // Bytes of expert weights each worker read from the checkpoint (from its Ready message).
  std::vector<uint64_t> worker_weight_bytes() const;

 private:
  struct Worker {
    int index = 0;
    std::string identity;
    pid_t pid = -1;
    bool registered = false;
    bool ready = false;
    bool exited = false;
    int wait_status = 0;
    uint64_t weight_bytes = 0;  // as the worker reported in Ready
    std::string device;         // "cpu" or "cuda:N"
    bool gpu = false;
  };
  WorkerPool(const ModelConfig& config, const WorkerPoolOptions& options)
      : config_(config), options_(options) {}

  absl::Status Launch();
  absl::Status Spawn(Worker& w);
  // Receives until `done()` or the deadline; `what` describes the phase for error messages.
  // `waiting_on(w)` tells which workers the phase still waits for (named on a timeout).
  template <typename Handler, typename DonePred, typename WaitingPred>
  absl::Status Pump(int timeout_ms, std::string_view what, Handler handle, DonePred done,
                    WaitingPred waiting_on);
  absl::Status CheckChildren(std::string_view what);
  Worker* ByIdentity(const std::string& identity);
  std::string Describe(const Worker& w) const;
  void Stop();

  ModelConfig config_;
  WorkerPoolOptions options_;
  Placement placement_;
  std::string runtime_dir_;
  std::unique_ptr<RouterSocket> router_;
  std::unique_ptr<SharedMemory> buffer_;
  std::unique_ptr<DeviceBuffer> device_buffer_;  // instead of buffer_ for GPU workers
  // Copies into or out of the shared-memory buffer (to_device false) or the device buffer.
  absl::Status CopyIn(bool to_device, uint64_t offset, const void* src, uint64_t bytes);
  absl::Status CopyOut(bool from_device, void* dst, uint64_t offset, uint64_t bytes);
  uint64_t input_offset_ = 0, routing_offset_ = 0, output_offset_ = 0, residual_offset_ = 0, weights_offset_ = 0;
  // With options.timeline: [workers + 1][num_moe_layers][2] u64 stamps; the coordinator's first, then
  // worker w's (its owned layers in order).
  uint64_t timeline_offset_ = 0, timeline_bytes_ = 0;
  // Where process p's (0: the coordinator, w + 1: worker w) stamp pair `slot` lies in the buffer.
  uint64_t TimelineOffset(int process, int slot) const {
    return timeline_offset_ + (static_cast<uint64_t>(process) * num_moe_layers_ + slot) * 2 * sizeof(uint64_t);
  }
  // The coordinator's stamp pair of MoE layer `moe` in device memory; null without a timeline.
  uint64_t* CoordinatorStamps(int moe);
  // The GPU-ordered path's state: counters at the start of the device buffer (ready at 0, worker w's
  // done at kCounterStride * (w + 1), soon in the last line), the current step's tick base, and which
  // workers own experts in each layer.
  uint32_t step_base_ = 0;  // the current step's parity base
  uint32_t step_tokens_ = 0;
  uint64_t step_sequence_ = 0;
  std::vector<int> moe_index_;                 // layer -> index among the MoE layers, or -1
  int num_moe_layers_ = 0;
  std::vector<std::vector<int>> layer_owners_;  // layer -> workers with experts there
  // layer -> some owner runs on another GPU than the device buffer (its hand-over needs system scope)
  std::vector<bool> layer_cross_gpu_;
  std::vector<bool> layer_whole_;  // layer -> one worker holds every expert of it
  std::vector<bool> step_pending_;
  // A step whose messages went out ahead of it (SendGpuStepAhead): its workers still owe their Done.
  struct SentStep {
    uint64_t sequence = 0;
    uint32_t tokens = 0;
    std::vector<bool> pending;
  };
  std::optional<SentStep> ahead_;
  HostTimes host_times_;
  void* drain_stream_ = nullptr;  // cudaStream_t / cudaEvent_t of WithdrawGpuStepAhead
  void* drain_event_ = nullptr;
  absl::Status CheckStepTokens(uint32_t tokens) const;
  // Sends each worker owning experts its Step message; returns which workers got one.
  absl::StatusOr<std::vector<bool>> SendStep(uint64_t sequence, uint32_t tokens);
  // The step doorbell (common/step_doorbell.h; doorbell_ only for pools of GPU workers, unless
  // PINMOE_STEP_DOORBELL=0): names worker w's slot in `step` and rings it instead of a message where the
  // worker may take that (the step after its last, the same contents as its last Step of that parity,
  // within its hot window); returns whether it rang (DecideRing). Either way the step is w's last from here on.
  bool Ring(int w, proto::Step* step);
  std::unique_ptr<SharedMemory> doorbell_;
  std::vector<DoorbellRecord> doorbell_records_;
  // The step `sequence` becomes the current one (its parity base, tokens and the workers that owe their
  // Done); returns its parity.
  int MakeCurrent(uint64_t sequence, uint32_t tokens, std::vector<bool> pending);
  int TakeUpAhead();  // MakeCurrent for the step sent ahead
  std::vector<Worker> workers_;
  uint64_t sequence_ = 0;
  bool broken_ = false;  // a worker failed; every later step fails fast with the first error
  absl::Status first_error_;
};

}  // namespace pinmoe
