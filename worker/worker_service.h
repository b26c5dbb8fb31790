// pinmoe-worker's service loop: register with the coordinator, take an expert assignment, map the
// coordinator's shared buffers, load the experts, then answer Work with Done until Shutdown.
//
// The worker holds no model state besides its weights, so killing it loses nothing: the coordinator can
// start another and replay the step. It leaves when its coordinator does.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace pinmoe {

// Deliberate failures for tests of the coordinator's failure handling.
enum class WorkerFault { kNone, kCrashOnWork, kHangOnWork, kExitBeforeRegister };

struct WorkerOptions {
  std::string endpoint;     // the coordinator's ROUTER, e.g. ipc:///run/user/1000/pinmoe-x/control
  uint32_t worker_id = 0;
  int64_t parent_pid = 0;   // when > 0, exit as soon as this process is no longer our parent
  int assign_timeout_ms = 60000;
  int step_timeout_ms = 60000;  // a GPU step whose stream has not finished by then fails
  std::string device = "cpu";
  WorkerFault fault = WorkerFault::kNone;
  uint32_t fault_after_works = 0;  // the fault fires on Work number fault_after_works + 1
};

absl::Status RunWorker(const WorkerOptions& options);

}  // namespace pinmoe
