// pinmoe: runs Mixture-of-Experts language models with each expert pinned to one worker process.
// Flags live here only; they are parsed into the option structs of coordinator/cli.h.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "coordinator/cli.h"
#include "coordinator/demo_model.h"
#include "coordinator/plan.h"
#if PINMOE_WITH_CUDA
#include "coordinator/gpu/bench.h"
#endif

ABSL_FLAG(std::string, model, "", "Model directory (config.json, *.safetensors, tokenizer.json)");
ABSL_FLAG(std::string, prompt, "", "Prompt text");
ABSL_FLAG(std::string, prompt_ids, "", "Prompt as comma-separated token ids");
ABSL_FLAG(std::string, text, "", "Text to tokenize");
ABSL_FLAG(int, max_new_tokens, 128, "Most tokens to generate");
ABSL_FLAG(std::string, temperature, "", "Sampling temperature; 0 is greedy");
ABSL_FLAG(std::string, top_k, "", "Sample from the k most likely tokens (0: all)");
ABSL_FLAG(std::string, top_p, "", "Nucleus sampling mass (1: off)");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(int, workers, 1, "Expert worker processes (0: experts in the coordinator)");
ABSL_FLAG(std::string, worker_device, "cpu", "Where workers keep their experts: cpu or cuda:N");
ABSL_FLAG(std::string, device, "cpu", "Where the coordinator runs the dense part: cpu or cuda:N");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of streaming text");
ABSL_FLAG(int, top_logprobs, 0, "With --json: the K most likely tokens at each generated position");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past end-of-sequence tokens");
ABSL_FLAG(int, context, 0, "Context length (0: the model's max_position_embeddings)");
ABSL_FLAG(std::string, worker_binary, "", "pinmoe-worker to start (default: beside pinmoe)");
ABSL_FLAG(std::vector<std::string>, worker_arg, {}, "Extra arguments for every worker (repeatable)");
ABSL_FLAG(int, step_timeout_ms, 60000, "Longest wait for workers to finish one MoE layer");
ABSL_FLAG(std::string, chat, "", "Chat message: the prompt is the model's chat template over it");
ABSL_FLAG(std::string, system, "", "System message for --chat and `pinmoe chat`");
ABSL_FLAG(bool, think, false, "Ask a thinking model to think (enable_thinking=true)");
ABSL_FLAG(bool, no_think, false, "Ask a thinking model not to think (enable_thinking=false)");
ABSL_FLAG(std::string, gpus, "", "GPUs to use, e.g. 0,1 (with --gpu-mem)");
ABSL_FLAG(std::string, gpu_mem, "", "Memory budget per GPU, e.g. 0=70GiB,1=14GiB");
ABSL_FLAG(std::string, cpu_mem, "", "System memory for experts that do not fit on the GPUs, e.g. 64GiB");
ABSL_FLAG(std::string, synthetic, "",
          "bench: a published shape with seeded synthetic weights (qwen3-30b-a3b, qwen3-next-80b-a3b)");
ABSL_FLAG(int, layers, 0, "bench --synthetic: keep the first N layers (0: all)");
ABSL_FLAG(int, prompt_tokens, 2048, "bench: prompt length for the prefill measurement");
ABSL_FLAG(int, decode_tokens, 128, "bench: greedy steps for the decode measurement");
ABSL_FLAG(int, depth, 0, "bench: tokens already in the cache when the decode measurement starts");
ABSL_FLAG(int, batch, 1, "bench: sequences decoded together, one token each per step (greedy)");
ABSL_FLAG(int, repetitions, 3, "bench: runs of each measurement (the best is reported)");
ABSL_FLAG(int, sample_top_k, 0, "bench: decode by sampling from the top k (device-selected) instead of greedily");
ABSL_FLAG(bool, cuda_graphs, true, "bench: replay decode steps as CUDA graphs");
ABSL_FLAG(std::string, delta_form, "auto",
          "bench: Qwen3-Next's DeltaNet form: auto (chunked for prompts), recurrent or chunked");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "the GPU path's KV cache elements: auto (bf16 for bf16 weights, else f32), f32 or bf16");
ABSL_FLAG(bool, timeline, false, "bench, with workers: also time each layer's hand-over on the GPU's clock");
ABSL_FLAG(std::string, out, "", "make-demo: output directory (default: the demo model directory)");
ABSL_FLAG(std::string, tokenizer, "", "make-demo: tokenizer.json to ship with the demo model");

namespace {

constexpr const char* kUsage = R"(pinmoe - run Mixture-of-Experts language models with experts pinned to worker processes

Usage:
  pinmoe run [--model DIR] (--prompt TEXT | --prompt-ids 1,2,3 | --chat TEXT) [options]
  pinmoe chat [--model DIR] [--system TEXT] [--think | --no-think] [options]
  pinmoe plan --model DIR --gpu-mem 0=70GiB[,1=14GiB] [--gpus 0,1] [--cpu-mem 64GiB] [--context N]
  pinmoe bench (--synthetic qwen3-30b-a3b|qwen3-next-80b-a3b [--layers N] | --model DIR) [--workers N] [options]
  pinmoe tokenize --model DIR --text TEXT
  pinmoe make-demo [--out DIR] [--tokenizer tokenizer.json]
  pinmoe help

run: generates a continuation of the prompt and streams it to stdout (notes go to stderr).
  --model DIR           a Hugging Face model directory as downloaded from the hub: config.json,
                        model.safetensors or sharded *.safetensors with model.safetensors.index.json,
                        tokenizer.json, generation_config.json. Without --model, the built-in demo
                        model is used (random weights: meaningless text; made by `pinmoe make-demo`).
  --prompt TEXT         prompt text (tokenized with the model's tokenizer.json)
  --prompt-ids LIST     the prompt as token ids instead, e.g. --prompt-ids 9707,11,1879
  --chat TEXT           a chat message: the prompt is the model's chat template (tokenizer_config.json
                        or chat_template.jinja) rendered over it; generation stops at the end of the
                        turn; thinking goes to stderr, the answer to stdout
  --system TEXT         a system message for --chat (and for `pinmoe chat`)
  --think, --no-think   turn a thinking model's reasoning on or off (the template's enable_thinking)
  --max-new-tokens N    most tokens to generate (default 128); generation also stops at an
                        end-of-sequence id from generation_config.json (see --ignore-eos)
  --temperature T       0 is greedy; default: generation_config.json's, else greedy
  --top-k K             sample among the K most likely tokens (0: no limit)
  --top-p P             sample from the smallest set of tokens whose probability reaches P
  --seed S              seed for sampling (default 0)
  --device D            where this process runs the dense part: cpu (default; fp32) or cuda:N
                        (weights in the checkpoint's dtype, fp32 activations)
  --workers N           expert worker processes (default 1); 0 keeps experts in this process (on the
                        --device GPU when there is one)
  --worker-device D     where the workers keep their experts: cpu (default) or cuda:N; with cuda:N the
                        activations reach them through CUDA IPC; a list (cuda:0,cpu) gives each worker
                        its own device. With --device cuda:N and GPU workers only, each step costs one
                        message and the layers hand over on the GPU; CPU workers cost a host round trip
                        per layer
  --gpus 0,1 --gpu-mem 0=70GiB,1=14GiB [--cpu-mem 64GiB]
                        one worker per device, experts split by `pinmoe plan` over these budgets
                        (system memory takes only what the GPUs cannot hold)
  --json                print one JSON object: prompt_token_ids, token_ids, text, finish_reason,
                        timing (prefill and decode tokens/s); with --chat also rendered_prompt and
                        reasoning (the thinking, apart from the answer in text)
  --top-logprobs K      with --json: the K most likely ids and log-probabilities at each position
  --context N           context length (default: max_position_embeddings)
  --kv-cache-dtype T    the GPU path's KV cache: auto (default: bf16 for bf16 weights, as transformers
                        keeps it; else f32), f32 or bf16 (half the bytes, each key and value rounded
                        as it is stored); the CPU path's cache is always f32
  --ignore-eos          do not stop at end-of-sequence ids
  --worker-binary PATH  the pinmoe-worker to start (default: the one beside pinmoe)
  --step-timeout-ms MS  longest wait for the workers on one MoE layer (default 60000)

chat: an interactive conversation in the terminal that keeps the history and streams each reply,
  showing the thinking apart from the answer. /reset forgets the conversation; /exit or Ctrl-D quits.
  Takes run's sampling, --workers and --context options.

bench: prefill and decode speed on a GPU (like llama-bench's pp and tg): --prompt-tokens N (2048) as one
  prompt, then --decode-tokens N (128) greedy steps from an empty cache (--depth D: after a context of D
  tokens, prefilled untimed, like llama-bench's -d), best of --repetitions (3);
  prints tokens/s, the weight bytes each decoded token reads and the fraction of the card's memory
  bandwidth. --synthetic qwen3-30b-a3b or qwen3-next-80b-a3b draws seeded bf16 weights of that published
  shape on the device (--layers N keeps the first N layers; --seed S); --model DIR uses a checkpoint;
  --cuda-graphs=false launches every kernel of a decode step instead of replaying a captured graph;
  --sample-top-k K decodes by drawing from the top K logits (selected on the device) instead; --batch B
  decodes B sequences together (aggregate tokens/s); --delta-form recurrent runs Qwen3-Next's prompt
  through the token-by-token DeltaNet instead of the chunked form (for comparison); with --workers,
  --timeline adds a decode run that stamps every layer's hand-over with the GPU's clock (gate kernels
  and kernel-stored counters, so MPS) and prints where a layer's time goes. --device, --workers,
  --kv-cache-dtype
  and --worker-device as for run (here cpu means cuda:0: bench measures the GPU path). Start MPS
  (nvidia-cuda-mps-control -d) when workers share the coordinator's GPU: without it the GPU time-slices
  between the processes and every layer's hand-over costs ~0.3 ms.

plan: from config.json alone (no weights are read), prints how the model splits over the devices:
  the dense part and its caches on the first, every MoE layer's experts spread over the GPUs in
  proportion to their free budget, system memory (--cpu-mem) only for what the GPUs cannot hold;
  refuses (exit 1) when the budgets cannot hold the model. The caches count --context tokens in
  --kv-cache-dtype.

tokenize: prints the token ids of --text as a JSON list.
make-demo: writes the demo model (random weights) to --out, with --tokenizer's vocabulary if given.

Examples:
  pinmoe run --prompt "The capital of France is"
  pinmoe run --model ~/models/Qwen3-30B-A3B --prompt "Hello" --workers 2 --temperature 0
  pinmoe run --model DIR --prompt "Hi" --json --top-logprobs 5 --max-new-tokens 8
)";

// Accept --max-new-tokens as well as --max_new_tokens.
std::vector<char*> NormalizeFlagNames(int argc, char** argv, std::vector<std::string>* storage) {
  storage->reserve(argc);
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      for (size_t j = 2; j < (eq == std::string::npos ? a.size() : eq); ++j) {
        if (a[j] == '-') a[j] = '_';
      }
    }
    storage->push_back(a);
  }
  std::vector<char*> out;
  for (auto& s : *storage) out.push_back(s.data());
  return out;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "pinmoe: error: %s\n", std::string(status.message()).c_str());
  return 1;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "pinmoe: error: %s\nRun `pinmoe help` for usage.\n", message.c_str());
  return 2;
}

template <typename T>
bool ParseOptional(const std::string& flag, const std::string& text, std::optional<T>* out,
                   std::string* error) {
  if (text.empty()) return true;
  T value;
  bool ok;
  if constexpr (std::is_same_v<T, int>) {
    ok = absl::SimpleAtoi(text, &value);
  } else {
    ok = absl::SimpleAtof(text, &value);
  }
  if (!ok) {
    *error = "--" + flag + " '" + text + "' is not a number";
    return false;
  }
  *out = value;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0 ||
        (i == 1 && std::strcmp(argv[i], "help") == 0)) {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  std::vector<std::string> storage;
  std::vector<char*> args = NormalizeFlagNames(argc, argv, &storage);
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  if (positional.size() > 2) return UsageError(std::string("unexpected argument '") + positional[2] + "'");
  const std::string command = positional[1];

  if (command == "tokenize") {
    if (absl::GetFlag(FLAGS_model).empty()) return UsageError("tokenize needs --model");
    absl::Status st = pinmoe::TokenizeCommand(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_text), std::cout);
    return st.ok() ? 0 : Fail(st);
  }
  if (command == "bench") {
#if PINMOE_WITH_CUDA
    pinmoe::BenchOptions b;
    b.model_dir = absl::GetFlag(FLAGS_model);
    b.synthetic = absl::GetFlag(FLAGS_synthetic);
    b.layers = absl::GetFlag(FLAGS_layers);
    b.seed = absl::GetFlag(FLAGS_seed) == 0 ? 1 : absl::GetFlag(FLAGS_seed);
    b.device = absl::GetFlag(FLAGS_device) == "cpu" ? "cuda:0" : absl::GetFlag(FLAGS_device);
    b.workers = absl::GetFlag(FLAGS_workers);
    b.worker_device = absl::GetFlag(FLAGS_worker_device) == "cpu" ? b.device : absl::GetFlag(FLAGS_worker_device);
    b.worker_binary = absl::GetFlag(FLAGS_worker_binary).empty()
                          ? pinmoe::JoinPath(pinmoe::ExecutableDir(), "pinmoe-worker")
                          : absl::GetFlag(FLAGS_worker_binary);
    b.prompt_tokens = absl::GetFlag(FLAGS_prompt_tokens);
    b.decode_tokens = absl::GetFlag(FLAGS_decode_tokens);
    b.depth = absl::GetFlag(FLAGS_depth);
    b.batch = absl::GetFlag(FLAGS_batch);
    b.repetitions = absl::GetFlag(FLAGS_repetitions);
    b.sample_top_k = absl::GetFlag(FLAGS_sample_top_k);
    b.graphs = absl::GetFlag(FLAGS_cuda_graphs);
    b.delta_form = absl::GetFlag(FLAGS_delta_form);
    auto kv = pinmoe::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
    if (!kv.ok()) return Fail(kv.status());
    b.kv_cache_dtype = *kv;
    b.timeline = absl::GetFlag(FLAGS_timeline);
    absl::Status st = pinmoe::RunBench(b, std::cout, std::cerr);
    return st.ok() ? 0 : Fail(st);
#else
    return Fail(absl::UnimplementedError("bench measures the GPU path; this build has no CUDA"));
#endif
  }
  if (command == "plan") {
    if (absl::GetFlag(FLAGS_model).empty()) return UsageError("plan needs --model");
    auto config = pinmoe::LoadModelConfig(absl::GetFlag(FLAGS_model));
    if (!config.ok()) return Fail(config.status());
    auto devices = pinmoe::ParseDeviceBudgets(absl::GetFlag(FLAGS_gpus), absl::GetFlag(FLAGS_gpu_mem),
                                              absl::GetFlag(FLAGS_cpu_mem));
    if (!devices.ok()) return Fail(devices.status());
    int context = absl::GetFlag(FLAGS_context);
    if (context <= 0 || context > config->max_position_embeddings) context = config->max_position_embeddings;
    auto kv = pinmoe::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
    if (!kv.ok()) return Fail(kv.status());
    auto plan = pinmoe::PlanMemory(*config, *devices, context, *kv);
    if (!plan.ok()) return Fail(plan.status());
    std::fputs(pinmoe::FormatMemoryPlan(*config, *plan, context).c_str(), stdout);
    return 0;
  }
  if (command == "make-demo") {
    pinmoe::DemoModelOptions d;
    d.out_dir = absl::GetFlag(FLAGS_out).empty() ? pinmoe::DefaultDemoModelDir() : absl::GetFlag(FLAGS_out);
    d.tokenizer_json = absl::GetFlag(FLAGS_tokenizer);
    absl::Status st = pinmoe::WriteDemoModel(d);
    if (!st.ok()) return Fail(st);
    std::fprintf(stderr, "pinmoe: wrote the demo model (random weights) to %s\n", d.out_dir.c_str());
    return 0;
  }
  if (command != "run" && command != "chat") return UsageError("unknown command '" + command + "'");

  pinmoe::RunCommandOptions o;
  o.session.model_dir = absl::GetFlag(FLAGS_model);
  if (o.session.model_dir.empty()) {
    o.demo = true;
    o.session.model_dir = pinmoe::DefaultDemoModelDir();
    if (!pinmoe::FileExists(pinmoe::JoinPath(o.session.model_dir, "config.json"))) {
      pinmoe::DemoModelOptions d;
      d.out_dir = o.session.model_dir;
      absl::Status st = pinmoe::WriteDemoModel(d);
      if (!st.ok()) return Fail(st);
    }
  }
  o.session.workers = absl::GetFlag(FLAGS_workers);
  if (o.session.workers < 0) return UsageError("--workers must be >= 0");
  o.session.worker_binary = absl::GetFlag(FLAGS_worker_binary).empty()
                                ? pinmoe::JoinPath(pinmoe::ExecutableDir(), "pinmoe-worker")
                                : absl::GetFlag(FLAGS_worker_binary);
  o.session.extra_worker_args = absl::GetFlag(FLAGS_worker_arg);
  o.session.worker_device = absl::GetFlag(FLAGS_worker_device);
  o.session.device = absl::GetFlag(FLAGS_device);
  if (!absl::GetFlag(FLAGS_gpu_mem).empty() || !absl::GetFlag(FLAGS_cpu_mem).empty()) {
    auto devices = pinmoe::ParseDeviceBudgets(absl::GetFlag(FLAGS_gpus), absl::GetFlag(FLAGS_gpu_mem),
                                              absl::GetFlag(FLAGS_cpu_mem));
    if (!devices.ok()) return Fail(devices.status());
    o.session.devices = *devices;
  } else if (!absl::GetFlag(FLAGS_gpus).empty()) {
    return UsageError("--gpus needs --gpu-mem with a budget for each GPU (e.g. --gpu-mem 0=70GiB)");
  }
  o.session.context = absl::GetFlag(FLAGS_context);
  auto kv = pinmoe::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
  if (!kv.ok()) return Fail(kv.status());
  o.session.kv_cache_dtype = *kv;
  o.session.step_timeout_ms = absl::GetFlag(FLAGS_step_timeout_ms);
  o.prompt = absl::GetFlag(FLAGS_prompt);
  if (!absl::GetFlag(FLAGS_chat).empty()) o.chat = absl::GetFlag(FLAGS_chat);
  if (!absl::GetFlag(FLAGS_system).empty()) o.system = absl::GetFlag(FLAGS_system);
  if (absl::GetFlag(FLAGS_think) && absl::GetFlag(FLAGS_no_think)) {
    return UsageError("--think and --no-think contradict each other");
  }
  if (absl::GetFlag(FLAGS_think)) o.thinking = true;
  if (absl::GetFlag(FLAGS_no_think)) o.thinking = false;
  const std::string ids = absl::GetFlag(FLAGS_prompt_ids);
  if (command == "run") {
    const int sources = !ids.empty() + !o.prompt.empty() + o.chat.has_value();
    if (sources != 1) {
      return UsageError("run needs exactly one of --prompt TEXT, --prompt-ids LIST or --chat TEXT");
    }
    for (absl::string_view part : absl::StrSplit(ids, ',', absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) return UsageError("--prompt-ids: '" + std::string(part) + "' is not an id");
      o.prompt_ids.push_back(id);
    }
  }
  o.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  std::string error;
  if (!ParseOptional<float>("temperature", absl::GetFlag(FLAGS_temperature), &o.temperature, &error) ||
      !ParseOptional<float>("top-p", absl::GetFlag(FLAGS_top_p), &o.top_p, &error) ||
      !ParseOptional<int>("top-k", absl::GetFlag(FLAGS_top_k), &o.top_k, &error)) {
    return UsageError(error);
  }
  o.seed = absl::GetFlag(FLAGS_seed);
  o.json = absl::GetFlag(FLAGS_json);
  o.top_logprobs = absl::GetFlag(FLAGS_top_logprobs);
  o.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  absl::Status st = command == "chat" ? pinmoe::ChatCommand(o, std::cin, std::cout, std::cerr)
                                      : pinmoe::RunCommand(o, std::cout, std::cerr);
  return st.ok() ? 0 : Fail(st);
}
