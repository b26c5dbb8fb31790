// GPU expert FFN for decode: bf16 (or fp32) weights, fp32 activations and accumulation. Reads only the weights of
// experts that some token was routed to, each row once per (token, slot), with 16-byte loads.
//
// Two kernels per MoE layer: gate/up (+ SiLU(gate) * up, into an fp32 scratch) and down. A pair whose
// expert has no weights here (owned by another worker) is skipped, so several workers can share one
// routing table and one output buffer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pinmoe {

// One routed expert's weights in device memory: gate, up [inter, hidden], down [hidden, inter],
// row-major as the checkpoint stores them, bf16 or fp32 (ExpertFfnArgs::fp32_weights). All null when
// another worker owns the expert.
struct GpuExpert {
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* down = nullptr;
};

struct ExpertFfnArgs {
  const float* x = nullptr;           // [tokens, hidden]
  const int32_t* routing = nullptr;   // [tokens, top_k] expert ids
  const GpuExpert* experts = nullptr; // device array [num_experts]
  int num_experts = 0;
  int tokens = 0;
  int top_k = 0;
  int hidden = 0;                     // multiple of 8
  int inter = 0;                      // multiple of 8
  float* act = nullptr;               // scratch [tokens, top_k, inter]
  float* out = nullptr;               // [tokens, top_k, hidden]; pairs not owned are left untouched
  bool fp32_weights = false;          // weights are fp32 (checked against references) instead of bf16
};

// Enqueues both kernels on `stream`. Returns the launch error, if any.
cudaError_t LaunchExpertFfnDecode(const ExpertFfnArgs& args, cudaStream_t stream);

}  // namespace pinmoe
