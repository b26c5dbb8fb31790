// The step doorbell (pools of GPU workers only; on by default, PINMOE_STEP_DOORBELL=0 turns it off for
// A/B): a decode step whose Step message would repeat one a worker already has (every other step: the
// same bytes but the sequence) is announced by storing its sequence number in the worker's slot of a
// small host shared-memory segment instead of sending the message. A worker polling its socket without
// blocking (the hot window after each step) reads the slot on every turn, with no system call, and
// replays its cached Step of that parity. A message takes ~96 µs from the coordinator's Send to the
// workers' Done on the lent H200 machine (bench/control_send_bench), the Send itself ~5 µs; the store is
// seen within a turn of the poll. There the doorbell took the first layer's wait for the workers from
// ~33 to 0.8 µs (median) and the 2-worker decode cost from +9.1% to +6.3% of the in-process time
// (bench/NOTES.md, "The twelfth session"). A ring that a worker misses (it had left its hot window) is
// read after its next 200 ms receive timeout.
//
// The coordinator rings only for the sequence right after the worker's last one, and only within half
// the worker's hot window of the last step; the worker takes a ring only when it is the sequence right
// after the last one it handled (a message still in flight goes first). Everything else (the first
// steps, other tokens, errors, Done) stays on ZeroMQ.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "common/env.h"

namespace pinmoe {

// One worker's slot: 8 bytes at the start of its own cache line.
inline constexpr uint64_t kDoorbellSlotBytes = 64;

inline void RingDoorbell(uint8_t* slot, uint64_t sequence) {
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(slot)).store(sequence, std::memory_order_release);
}

inline uint64_t ReadDoorbell(uint8_t* slot) {
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(slot)).load(std::memory_order_acquire);
}

inline bool StepDoorbellOn() {
  static const bool on = EnvInt("PINMOE_STEP_DOORBELL", 1) != 0;
  return on;
}

// How long a worker polls for the next Step without blocking after each step; PINMOE_WORKER_HOT_POLL_MS
// overrides it (A/B measurements; 0 turns it off). The coordinator reads the same, to ring only while
// the worker is surely still polling.
inline std::chrono::milliseconds WorkerHotPoll() {
  static const std::chrono::milliseconds poll{std::max(0, EnvInt("PINMOE_WORKER_HOT_POLL_MS", 50))};
  return poll;
}

// The coordinator's record of one worker's Steps, and its choice for the next one.
struct DoorbellRecord {
  uint64_t last_sequence = 0;
  std::chrono::steady_clock::time_point last_time;
  std::string shape[2];  // the last Step sent by message of each parity, serialised without its sequence
};

// Whether the Step `sequence`, serialised without its sequence as `shape`, may be rung rather than sent
// at `now`: the step right after the worker's last, the same as its last message of that parity, within
// half the worker's hot window `hot` of the last step. Either way the record takes the step as the
// worker's last (and, when it is to be sent, as its parity's last message).
inline bool DecideRing(DoorbellRecord& r, uint64_t sequence, std::string shape,
                       std::chrono::steady_clock::time_point now, std::chrono::milliseconds hot) {
  const int parity = static_cast<int>(sequence & 1);
  const bool ring = r.last_sequence != 0 && r.last_sequence + 1 == sequence && r.shape[parity] == shape &&
                    now - r.last_time < hot / 2;
  r.last_sequence = sequence;
  r.last_time = now;
  if (!ring) r.shape[parity] = std::move(shape);
  return ring;
}

}  // namespace pinmoe
