// A CUPTI injection library for profiling where Nsight Systems is not installed (the lent GPU machine
// has ncu and CUPTI but no nsys): with CUDA_INJECTION64_PATH naming it, the CUDA driver calls
// InitializeInjection in every process that starts CUDA (the coordinator and each worker alike), which
// records every kernel the process runs, kernels inside CUDA graphs one by one, and at exit writes them
// to $PINMOE_TRACE_DIR/kernels-<pid>.tsv (start and end in ns on CUPTI's clock, stream, graph node,
// demangled name). scripts/kernel_trace.py summarises the files; scripts/device-profile runs it all.
#include <cupti.h>
#include <cxxabi.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr size_t kBufferBytes = 8u << 20;

struct Kernel {
  uint64_t start, end;
  uint32_t stream;
  uint64_t graph_node;
  std::string name;  // mangled, as CUPTI gives it
};

std::mutex mu;
std::vector<Kernel>* kernels = nullptr;  // left allocated: the exit handler runs after static destructors
size_t dropped = 0;                      // records CUPTI could not keep (a trace missing them says so)

void Report(const char* what, CUptiResult r) {
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "kernel_trace (pid %d): %s: %s\n", static_cast<int>(getpid()), what, text ? text : "?");
}

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer != nullptr ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext context, uint32_t stream, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    size_t lost = 0;
    if (cuptiActivityGetNumDroppedRecords(context, stream, &lost) == CUPTI_SUCCESS) dropped += lost;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      kernels->push_back({k->start, k->end, k->streamId, k->graphNodeId, k->name != nullptr ? k->name : "?"});
    }
  }
  std::free(buffer);
}

std::string Demangle(const std::string& name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  std::string out = status == 0 && d != nullptr ? d : name;
  std::free(d);
  return out;
}

void WriteTrace() {
  if (CUptiResult r = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED); r != CUPTI_SUCCESS) {
    Report("flushing the activity buffers", r);
  }
  const char* dir = std::getenv("PINMOE_TRACE_DIR");
  const std::string path = std::string(dir != nullptr && dir[0] != '\0' ? dir : ".") + "/kernels-" +
                           std::to_string(getpid()) + ".tsv";
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "kernel_trace: cannot write %s\n", path.c_str());
    return;
  }
  std::lock_guard<std::mutex> lock(mu);
  for (const Kernel& k : *kernels) {
    std::fprintf(f, "%llu\t%llu\t%u\t%llu\t%s\n", static_cast<unsigned long long>(k.start),
                 static_cast<unsigned long long>(k.end), k.stream, static_cast<unsigned long long>(k.graph_node),
                 Demangle(k.name).c_str());
  }
  std::fclose(f);
  std::fprintf(stderr, "kernel_trace: %zu kernels -> %s%s\n", kernels->size(), path.c_str(),
               dropped == 0 ? "" : (" (" + std::to_string(dropped) + " records dropped by CUPTI)").c_str());
}

}  // namespace

extern "C" int InitializeInjection() {
  kernels = new std::vector<Kernel>();
  kernels->reserve(1 << 20);
  if (CUptiResult r = cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted); r != CUPTI_SUCCESS) {
    Report("registering the buffer callbacks", r);
    return 0;
  }
  if (CUptiResult r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL); r != CUPTI_SUCCESS) {
    Report("enabling kernel records", r);
    return 0;
  }
  std::atexit(WriteTrace);
  return 1;
}
