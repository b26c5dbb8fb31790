// GPU decode expert FFN throughput against the card's memory bandwidth.
//
// Shape: Qwen3-30B-A3B experts (hidden 2048, intermediate 768, bf16), top-8 routing, batch 1: each
// token-layer reads 8 x 9.4 MB = 75 MB of expert weights, more than the L2 cache, so the kernel is bound
// by device memory. 256 experts (2.4 GB) are allocated and every layer step picks 8 of them at random;
// 48 steps make one token. Prints per-layer time, GB/s of weights read, the fraction of a device-to-device
// copy's measured bandwidth and of the card's datasheet bandwidth.
//
// With more than one token, tokens may share experts: the bytes counted are each layer's distinct
// experts (what a kernel must read at least). --kernel grouped runs the tensor-core prefill kernels
// instead of the decode ones.
//
// --ipc 1 puts the buffers a worker reaches through the coordinator's IPC handles (the token's input,
// the routing table, the output slice, the done counter) in memory that another process allocated and
// exported, as a worker sees them; --ipc 0 (the default) allocates them here. The other process is this
// program again (--serve-ipc BYTES), which prints the handle and lives until it is killed.
//
//   build-device/bin/gpu_expert_ffn_bench [--hidden H --inter I --experts E --top-k K --tokens T]
//                                         [--kernel decode|grouped] [--done-store 0|1|2] [--ipc 0|1]
//                                         [--combine 0|1]
#include <cuda_runtime.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "worker/gpu/expert_ffn.h"

#include <set>

namespace {

#define CHECK_CUDA(call)                                                                            \
  do {                                                                                              \
    cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "gpu_expert_ffn_bench: %s: %s\n", #call, cudaGetErrorString(e_));        \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

__global__ void FillBf16(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffff) / 65536.f - 0.5f) * 0.05f);
  }
}

// --serve-ipc: allocates `bytes` of device memory, zeroed, prints its IPC handle in hex and sleeps until
// killed (or until its parent is gone).
int ServeIpc(size_t bytes) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, bytes));
  CHECK_CUDA(cudaMemset(p, 0, bytes));
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaIpcMemHandle_t h;
  CHECK_CUDA(cudaIpcGetMemHandle(&h, p));
  for (size_t i = 0; i < sizeof(h); ++i) std::printf("%02x", static_cast<unsigned char>(h.reserved[i]));
  std::printf("\n");
  std::fflush(stdout);
  const pid_t parent = getppid();
  while (getppid() == parent) usleep(10000);
  return 0;
}

// Starts this program with --serve-ipc, reads its handle and opens it. The child's pid goes to *child.
char* OpenServedBuffer(size_t bytes, pid_t* child) {
  int fds[2];
  if (pipe(fds) != 0) std::exit(1);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    const std::string n = std::to_string(bytes);
    execl("/proc/self/exe", "gpu_expert_ffn_bench", "--serve-ipc", n.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string hex;
  char c;
  while (read(fds[0], &c, 1) == 1 && c != '\n') hex += c;
  close(fds[0]);
  cudaIpcMemHandle_t h;
  if (hex.size() != 2 * sizeof(h)) {
    std::fprintf(stderr, "gpu_expert_ffn_bench: the --serve-ipc child printed no handle\n");
    std::exit(1);
  }
  for (size_t i = 0; i < sizeof(h); ++i) h.reserved[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  void* p = nullptr;
  CHECK_CUDA(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess));
  *child = pid;
  return static_cast<char*>(p);
}

double DatasheetGBs(const cudaDeviceProp& prop) {
  const std::string name = prop.name;
  if (name.find("H200") != std::string::npos) return 4800;
  if (name.find("H100") != std::string::npos) return name.find("PCIe") != std::string::npos ? 2000 : 3350;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int hidden = 2048, inter = 768, experts = 256, top_k = 8, tokens = 1, layers = 48, reps = 20;
  bool grouped = false;
  // Each layer's down kernel publishes a done counter, as a worker's does: 1, its last block stores it;
  // 2, every block adds its share (the add form, CounterStore::add).
  int done_store = 0, ipc = 0;
  // 1: one token; the down kernel also adds the weighted slots to a residual (ExpertFfnArgs::residual).
  int combine = 0;
  if (argc == 3 && std::string(argv[1]) == "--serve-ipc") return ServeIpc(std::stoull(argv[2]));
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--kernel") grouped = std::string(argv[i + 1]) == "grouped";
    else if (a == "--hidden") hidden = v;
    else if (a == "--inter") inter = v;
    else if (a == "--experts") experts = v;
    else if (a == "--top-k") top_k = v;
    else if (a == "--tokens") tokens = v;
    else if (a == "--done-store") done_store = v;
    else if (a == "--ipc") ipc = v;
    else if (a == "--combine") combine = v;
    else {
      std::fprintf(stderr,
                   "usage: gpu_expert_ffn_bench [--hidden H --inter I --experts E --top-k K --tokens T]"
                   " [--kernel decode|grouped] [--done-store 0|1|2] [--ipc 0|1] [--combine 0|1]\n");
      return 2;
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const size_t mat = static_cast<size_t>(hidden) * inter;
  __nv_bfloat16* weights;
  CHECK_CUDA(cudaMalloc(&weights, mat * 3 * experts * sizeof(__nv_bfloat16)));
  FillBf16<<<1024, 256>>>(weights, mat * 3 * experts, 7);
  CHECK_CUDA(cudaGetLastError());
  std::vector<pinmoe::GpuExpert> table(experts);
  for (int e = 0; e < experts; ++e) {
    table[e] = {weights + mat * 3 * e, weights + mat * (3 * e + 1), weights + mat * (3 * e + 2)};
  }
  const int pairs = tokens * top_k;
  float *x, *act, *out;
  int32_t* routing;
  uint32_t* done = nullptr;
  pinmoe::GpuExpert* d_table;
  // x, routing, out and the done counter: here, or in one buffer of another process (--ipc 1).
  const size_t x_bytes = static_cast<size_t>(tokens) * hidden * 4, out_bytes = static_cast<size_t>(pairs) * hidden * 4;
  const size_t routing_bytes = static_cast<size_t>(layers) * pairs * 4;
  pid_t child = 0;
  if (ipc != 0) {
    auto up = [](size_t n) { return (n + 255) / 256 * 256; };
    const size_t total = up(x_bytes) + up(out_bytes) + up(routing_bytes) + 256;
    char* base = OpenServedBuffer(total, &child);
    x = reinterpret_cast<float*>(base);
    out = reinterpret_cast<float*>(base + up(x_bytes));
    routing = reinterpret_cast<int32_t*>(base + up(x_bytes) + up(out_bytes));
    done = reinterpret_cast<uint32_t*>(base + up(x_bytes) + up(out_bytes) + up(routing_bytes));
  } else {
    CHECK_CUDA(cudaMalloc(&x, x_bytes));
    CHECK_CUDA(cudaMalloc(&out, out_bytes));
    CHECK_CUDA(cudaMalloc(&routing, routing_bytes));
    CHECK_CUDA(cudaMalloc(&done, sizeof(uint32_t)));
  }
  CHECK_CUDA(cudaMalloc(&act, static_cast<size_t>(pairs) * inter * 4));
  CHECK_CUDA(cudaMalloc(&d_table, experts * sizeof(pinmoe::GpuExpert)));
  CHECK_CUDA(cudaMemcpy(d_table, table.data(), experts * sizeof(pinmoe::GpuExpert), cudaMemcpyHostToDevice));
  std::vector<float> hx(static_cast<size_t>(tokens) * hidden, 0.25f);
  CHECK_CUDA(cudaMemcpy(x, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
  // A routing table per layer: top_k distinct experts per token, at random.
  std::mt19937 rng(3);
  std::vector<int32_t> hr(static_cast<size_t>(layers) * pairs);
  std::vector<int> ids(experts);
  for (int l = 0; l < layers; ++l) {
    for (int t = 0; t < tokens; ++t) {
      for (int e = 0; e < experts; ++e) ids[e] = e;
      std::shuffle(ids.begin(), ids.end(), rng);
      for (int k = 0; k < top_k; ++k) hr[(static_cast<size_t>(l) * tokens + t) * top_k + k] = ids[k];
    }
  }
  CHECK_CUDA(cudaMemcpy(routing, hr.data(), hr.size() * 4, cudaMemcpyHostToDevice));

  // Ceiling: a large device-to-device copy (bytes read + written).
  const size_t copy_bytes = 1ull << 30;
  void *ca, *cb;
  CHECK_CUDA(cudaMalloc(&ca, copy_bytes));
  CHECK_CUDA(cudaMalloc(&cb, copy_bytes));
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  CHECK_CUDA(cudaMemcpy(cb, ca, copy_bytes, cudaMemcpyDeviceToDevice));
  CHECK_CUDA(cudaEventRecord(e0));
  for (int r = 0; r < 10; ++r) CHECK_CUDA(cudaMemcpyAsync(cb, ca, copy_bytes, cudaMemcpyDeviceToDevice));
  CHECK_CUDA(cudaEventRecord(e1));
  CHECK_CUDA(cudaEventSynchronize(e1));
  float copy_ms;
  CHECK_CUDA(cudaEventElapsedTime(&copy_ms, e0, e1));
  const double copy_gbs = 2.0 * copy_bytes * 10 / (copy_ms * 1e-3) / 1e9;

  // One "token": 48 layers, each a different random expert set. Captured as a graph to keep launch gaps
  // out, replayed `reps` times; median of the replays.
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  pinmoe::GroupedFfnScratch scratch;
  if (grouped) {
    const size_t tiles = pinmoe::GroupedMaxTiles(pairs, experts);
    CHECK_CUDA(cudaMalloc(&scratch.sorted_pair, pairs * sizeof(int32_t)));
    CHECK_CUDA(cudaMalloc(&scratch.tile_expert, tiles * sizeof(int32_t)));
    CHECK_CUDA(cudaMalloc(&scratch.tile_row0, tiles * sizeof(int32_t)));
    CHECK_CUDA(cudaMalloc(&scratch.tile_rows, tiles * sizeof(int32_t)));
    CHECK_CUDA(cudaMalloc(&scratch.num_tiles, sizeof(int32_t)));
    CHECK_CUDA(cudaMalloc(&scratch.act, static_cast<size_t>(pairs) * inter * sizeof(__nv_bfloat16)));
  }
  unsigned int* arrivals = nullptr;
  CHECK_CUDA(cudaMalloc(&arrivals, sizeof(unsigned int)));
  CHECK_CUDA(cudaMemset(done, 0, sizeof(uint32_t)));
  CHECK_CUDA(cudaMemset(arrivals, 0, sizeof(unsigned int)));
  float *residual = nullptr, *combine_weights = nullptr;
  if (combine != 0) {
    if (tokens != 1 || grouped) {
      std::fprintf(stderr, "--combine 1 is for one token and the decode kernels\n");
      return 2;
    }
    CHECK_CUDA(cudaMalloc(&residual, hidden * sizeof(float)));
    CHECK_CUDA(cudaMemset(residual, 0, hidden * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&combine_weights, top_k * sizeof(float)));
    CHECK_CUDA(cudaMemset(combine_weights, 0, top_k * sizeof(float)));
  }
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int l = 0; l < layers; ++l) {
    pinmoe::ExpertFfnArgs a;
    a.x = x;
    a.routing = routing + static_cast<size_t>(l) * pairs;
    a.experts = d_table;
    a.num_experts = experts;
    a.tokens = tokens;
    a.top_k = top_k;
    a.hidden = hidden;
    a.inter = inter;
    a.act = act;
    a.out = out;
    if (done_store != 0) {
      a.done = pinmoe::CounterStore{done, pinmoe::DoneValue(static_cast<uint32_t>(l + 1))};
      if (done_store == 2) {
        a.done.add = pinmoe::kDoneUnits;
      } else {
        a.arrivals = arrivals;
      }
    }
    a.residual = residual;
    a.combine_weights = combine_weights;
    CHECK_CUDA(grouped ? pinmoe::LaunchExpertFfnGrouped(a, scratch, stream) : pinmoe::LaunchExpertFfnDecode(a, stream));
  }
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));  // warm-up
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<float> times;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(e0, stream));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaEventRecord(e1, stream));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  const double ms = times[times.size() / 2];
  // Distinct experts per layer: what has to be read.
  double distinct = 0;
  for (int l = 0; l < layers; ++l) {
    distinct += std::set<int32_t>(hr.begin() + static_cast<size_t>(l) * pairs,
                                  hr.begin() + static_cast<size_t>(l + 1) * pairs).size();
  }
  const double bytes = distinct * mat * 3 * 2;
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  const double peak = DatasheetGBs(prop);
  std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  std::printf("shape: hidden %d, intermediate %d, bf16; top-%d of %d experts; %d token(s) (%.1f distinct experts a "
              "layer); %d layers; %s kernels\n",
              hidden, inter, top_k, experts, tokens, distinct / layers, layers,
              grouped ? "grouped tensor-core" : "decode");
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);
  if (ipc != 0) std::printf("input, routing table, output and done counter in another process's memory (IPC)\n");
  if (done_store != 0) {
    std::printf("each layer's down kernel publishes a done counter, as in a worker: %s\n",
                done_store == 2 ? "every block adds its share" : "its last block stores it");
  }
  if (combine != 0) std::printf("the down kernel also combines the slots into a residual (one kernel)\n");
  std::printf("expert FFN: %.1f us per layer, %.0f GB/s of distinct weights = %.0f%% of the copy",
              ms * 1e3 / layers, gbs, 100 * gbs / copy_gbs);
  if (peak > 0) std::printf(", %.0f%% of the %.0f GB/s datasheet bandwidth", 100 * gbs / peak, peak);
  std::printf("\n");
  if (child > 0) {
    CHECK_CUDA(cudaIpcCloseMemHandle(x));
    kill(child, SIGTERM);
    waitpid(child, nullptr, 0);
  }
  return 0;
}
