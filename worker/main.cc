// pinmoe-worker: owns a fixed set of routed experts and computes them for the coordinator.
// Normally started by the coordinator (or systemd); see `pinmoe-worker --help`.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, connect, "", "Coordinator control endpoint (ipc://...)");
ABSL_FLAG(uint32_t, worker_id, 0, "This worker's index in the coordinator's placement plan");
ABSL_FLAG(int64_t, parent_pid, 0, "Exit when this process stops being our parent (0: never)");
ABSL_FLAG(int, assign_timeout_ms, 60000, "How long to wait for the coordinator's assignment");
ABSL_FLAG(std::string, device, "cpu", "Where experts live: cpu or cuda:N");
ABSL_FLAG(std::string, fault, "", "Testing only: crash-on-work, hang-on-work or exit-before-register");
ABSL_FLAG(uint32_t, fault_after, 0, "Testing only: Work messages served before the fault fires");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "pinmoe-worker --connect ipc://DIR/control --worker-id N\n"
      "Holds the routed experts that the coordinator assigns to it and computes them on request.\n"
      "The coordinator starts its workers itself; run this by hand only to attach a worker to a\n"
      "running coordinator.");
  absl::ParseCommandLine(argc, argv);
  pinmoe::WorkerOptions options;
  options.endpoint = absl::GetFlag(FLAGS_connect);
  options.worker_id = absl::GetFlag(FLAGS_worker_id);
  options.parent_pid = absl::GetFlag(FLAGS_parent_pid);
  options.assign_timeout_ms = absl::GetFlag(FLAGS_assign_timeout_ms);
  options.device = absl::GetFlag(FLAGS_device);
  options.fault_after_works = absl::GetFlag(FLAGS_fault_after);
  const std::string fault = absl::GetFlag(FLAGS_fault);
  if (fault == "crash-on-work") {
    options.fault = pinmoe::WorkerFault::kCrashOnWork;
  } else if (fault == "hang-on-work") {
    options.fault = pinmoe::WorkerFault::kHangOnWork;
  } else if (fault == "exit-before-register") {
    options.fault = pinmoe::WorkerFault::kExitBeforeRegister;
  } else if (!fault.empty()) {
    std::fprintf(stderr, "pinmoe-worker: error: unknown --fault '%s'\n", fault.c_str());
    return 2;
  }
  if (options.endpoint.empty()) {
    std::fprintf(stderr, "pinmoe-worker: error: --connect is required\n");
    return 2;
  }
  absl::Status status = pinmoe::RunWorker(options);
  if (!status.ok()) {
    std::fprintf(stderr, "pinmoe-worker %u: error: %s\n", options.worker_id,
                 std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
