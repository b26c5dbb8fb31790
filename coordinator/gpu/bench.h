// `pinmoe bench`: prefill and decode speed of the GPU path, like llama-bench's pp/tg: a prompt of
// --prompt-tokens run as one forward (prefill tokens/s), then, from an empty cache (or after --depth
// tokens of context, prefilled untimed), --decode-tokens greedy steps (decode tokens/s); with --batch B,
// B sequences decode together, one token each per step (aggregate tokens/s). Weights come from a checkpoint or are drawn on the device from a seed in the
// full shape of a published model (optionally with fewer layers), so no download is needed. Prints the
// bytes of weights each decoded token reads and the fraction of the card's memory bandwidth that is.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "coordinator/kv_cache_dtype.h"

namespace pinmoe {

struct BenchOptions {
  std::string model_dir;      // a checkpoint, or empty with `synthetic`
  std::string synthetic;      // "qwen3-30b-a3b"
  int layers = 0;             // 0: the model's; fewer cut the model (synthetic only)
  uint64_t seed = 1;
  std::string device = "cuda:0";
  int workers = 0;            // 0: experts in the coordinator process
  std::string worker_device = "cuda:0";
  std::string worker_binary;
  int prompt_tokens = 2048;
  int decode_tokens = 128;
  int depth = 0;              // tokens in each sequence's cache before the decode steps (llama-bench's -d)
  int batch = 1;              // sequences per decode step
  int repetitions = 3;        // the best of these is reported
  bool graphs = true;         // decode steps as CUDA graph replays
  int sample_top_k = 0;       // > 0: decode draws from the top k (temperature 0.7) instead of greedily
  std::string delta_form = "auto";  // Qwen3-Next's DeltaNet: auto, recurrent or chunked
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kAuto;
  // With workers: after the timed runs, one more decode run stamping every hand-over with the GPU's
  // clock, and a table of where a layer's time goes (WorkerPool::GpuStepTimeline).
  bool timeline = false;
};

absl::Status RunBench(const BenchOptions& options, std::ostream& out, std::ostream& log);

}  // namespace pinmoe
