// How much does it cost to hand each layer's expert work to other processes on the same GPU without the
// host in the loop? The coordinator enqueues, per layer, a "dense" kernel, a 32-bit stream write of a
// counter in IPC-shared device memory, and one stream wait per worker on that worker's "done" counter;
// each worker process enqueues, per layer, a wait on the coordinator's counter, an "expert" kernel and
// a write of its own counter. The kernels spin for a set time on a set number of blocks, so what is left
// over is the synchronisation and the switching between the processes' contexts.
//
//   gpu_ipc_sync_bench --workers 2 --dense-us 20 --expert-us 30   (0 workers: everything in one stream)
#include <cuda.h>
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)
#define CU(x)                                                                  \
  do {                                                                         \
    CUresult r_ = (x);                                                         \
    if (r_ != CUDA_SUCCESS) {                                                  \
      std::fprintf(stderr, "%s:%d %s: CUresult %d\n", __FILE__, __LINE__, #x, \
                   static_cast<int>(r_));                                      \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

__global__ void Spin(unsigned long long ns) {
  unsigned long long start;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  if (ns == 0) return;
  for (;;) {
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start >= ns) break;
  }
}

struct Options {
  int workers = 2, layers = 48, steps = 40, warmup = 5, blocks = 132;
  bool host_sync = false;  // hosts poll counters in shared host memory and launch, instead of stream waits
  double dense_us = 20, expert_us = 30;
};

volatile uint32_t* g_host_flags = nullptr;  // MAP_SHARED before fork: [0] coordinator, [1 + w] workers

void SpinUntil(int index, uint32_t tick) {
  while (static_cast<int32_t>(g_host_flags[index] - tick) < 0) {
  }
}

// Counters: [0] the coordinator's tick, [1 + w] worker w's tick.
void RunWorker(int w, const Options& o, int read_fd) {
  cudaIpcMemHandle_t handle;
  if (read(read_fd, &handle, sizeof(handle)) != sizeof(handle)) std::exit(2);
  CK(cudaSetDevice(0));
  void* base = nullptr;
  CK(cudaIpcOpenMemHandle(&base, handle, cudaIpcMemLazyEnablePeerAccess));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const CUdeviceptr flags = reinterpret_cast<CUdeviceptr>(base);
  const unsigned long long ns = static_cast<unsigned long long>(o.expert_us * 1000 / o.workers);
  const int total = (o.warmup + o.steps) * o.layers;
  if (o.host_sync) {
    CK(cudaHostRegister(const_cast<uint32_t*>(g_host_flags), 4096, cudaHostRegisterMapped));
    void* dev = nullptr;
    CK(cudaHostGetDevicePointer(&dev, const_cast<uint32_t*>(g_host_flags), 0));
    for (int i = 1; i <= total; ++i) {
      SpinUntil(0, i);
      Spin<<<o.blocks, 128, 0, s>>>(ns);
      CU(cuStreamWriteValue32(s, reinterpret_cast<CUdeviceptr>(dev) + 4 * (1 + w), i,
                              CU_STREAM_WRITE_VALUE_DEFAULT));
    }
    CK(cudaStreamSynchronize(s));
    std::exit(0);
  }
  for (int i = 1; i <= total; ++i) {
    CU(cuStreamWaitValue32(s, flags, i, CU_STREAM_WAIT_VALUE_GEQ));
    Spin<<<o.blocks, 128, 0, s>>>(ns);
    CU(cuStreamWriteValue32(s, flags + 4 * (1 + w), i, CU_STREAM_WRITE_VALUE_DEFAULT));
  }
  CK(cudaStreamSynchronize(s));
  CK(cudaIpcCloseMemHandle(base));
  std::exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const double v = std::atof(argv[i + 1]);
    if (k == "--workers") o.workers = static_cast<int>(v);
    else if (k == "--layers") o.layers = static_cast<int>(v);
    else if (k == "--steps") o.steps = static_cast<int>(v);
    else if (k == "--blocks") o.blocks = static_cast<int>(v);
    else if (k == "--dense-us") o.dense_us = v;
    else if (k == "--expert-us") o.expert_us = v;
    else if (k == "--host-sync") o.host_sync = v != 0;
    else { std::fprintf(stderr, "unknown flag %s\n", k.c_str()); return 2; }
  }
  g_host_flags = static_cast<volatile uint32_t*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  // Children are forked before this process touches CUDA.
  std::vector<int> pipes;
  std::vector<pid_t> pids;
  for (int w = 0; w < o.workers; ++w) {
    int fd[2];
    if (pipe(fd) != 0) return 1;
    const pid_t pid = fork();
    if (pid == 0) { close(fd[1]); RunWorker(w, o, fd[0]); }
    close(fd[0]);
    pipes.push_back(fd[1]);
    pids.push_back(pid);
  }
  CK(cudaSetDevice(0));
  void* base = nullptr;
  CK(cudaMalloc(&base, 2 << 20));
  CK(cudaMemset(base, 0, 2 << 20));
  CK(cudaDeviceSynchronize());
  cudaIpcMemHandle_t handle;
  CK(cudaIpcGetMemHandle(&handle, base));
  for (int fd : pipes) {
    if (write(fd, &handle, sizeof(handle)) != sizeof(handle)) return 1;
    close(fd);
  }
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t start, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&stop));
  CUdeviceptr flags = reinterpret_cast<CUdeviceptr>(base);
  if (o.host_sync) {
    CK(cudaHostRegister(const_cast<uint32_t*>(g_host_flags), 4096, cudaHostRegisterMapped));
    void* dev = nullptr;
    CK(cudaHostGetDevicePointer(&dev, const_cast<uint32_t*>(g_host_flags), 0));
    flags = reinterpret_cast<CUdeviceptr>(dev);
  }
  const auto dense_ns = static_cast<unsigned long long>(o.dense_us * 1000);
  const auto expert_ns = static_cast<unsigned long long>(o.expert_us * 1000);
  int tick = 0;
  for (int step = 0; step < o.warmup + o.steps; ++step) {
    if (step == o.warmup) CK(cudaEventRecord(start, s));
    for (int l = 0; l < o.layers; ++l) {
      ++tick;
      Spin<<<o.blocks, 128, 0, s>>>(dense_ns);
      if (o.workers == 0) {
        Spin<<<o.blocks, 128, 0, s>>>(expert_ns);
        continue;
      }
      CU(cuStreamWriteValue32(s, flags, tick, CU_STREAM_WRITE_VALUE_DEFAULT));
      if (o.host_sync) {
        for (int w = 0; w < o.workers; ++w) SpinUntil(1 + w, tick);
        continue;
      }
      for (int w = 0; w < o.workers; ++w) {
        CU(cuStreamWaitValue32(s, flags + 4 * (1 + w), tick, CU_STREAM_WAIT_VALUE_GEQ));
      }
    }
  }
  CK(cudaEventRecord(stop, s));
  CK(cudaEventSynchronize(stop));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, start, stop));
  const double per_layer_us = 1000.0 * ms / (o.steps * o.layers);
  const double ideal = o.dense_us + o.expert_us;
  std::printf("%s sync: ", o.host_sync ? "host" : "stream");
  std::printf("workers %d  layers %d  dense %.1f us  expert %.1f us  ->  %.2f us per layer (ideal %.1f, "
              "overhead %.2f us), %.3f ms per step\n",
              o.workers, o.layers, o.dense_us, o.expert_us, per_layer_us, ideal, per_layer_us - ideal,
              ms / o.steps);
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { std::fprintf(stderr, "worker failed\n"); return 1; }
  }
  return 0;
}
