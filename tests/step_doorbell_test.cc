// The step doorbell's slots (common/step_doorbell.h) between processes: a sequence stored in one
// process's mapping of the shared segment is read by another's, slot by slot, with nothing else in
// between (no socket, no system call on the reading side).
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "common/shared_memory.h"
#include "common/step_doorbell.h"
#include "gtest/gtest.h"

namespace pinmoe {
namespace {

TEST(StepDoorbell, ARingIsSeenByAnotherProcess) {
  auto shm = SharedMemory::Create("pinmoe-doorbell-test", 3 * kDoorbellSlotBytes);
  ASSERT_TRUE(shm.ok()) << shm.status();
  std::memset((*shm)->data(), 0, (*shm)->size());
  const std::string name = (*shm)->name();
  const uint64_t size = (*shm)->size();  // rounded up to the segments' alignment
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The "worker": waits (bounded) for slot 1 to hold 7, then answers 8 in slot 2 and checks slot 0.
    auto mine = SharedMemory::Open(name, size);
    if (!mine.ok()) _exit(2);
    uint8_t* base = (*mine)->data();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ReadDoorbell(base + kDoorbellSlotBytes) != 7u) {
      if (std::chrono::steady_clock::now() > deadline) _exit(3);
    }
    RingDoorbell(base + 2 * kDoorbellSlotBytes, 8u);
    _exit(ReadDoorbell(base) == 0u ? 0 : 4);
  }
  uint8_t* base = (*shm)->data();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the child is polling by now, most likely
  RingDoorbell(base + kDoorbellSlotBytes, 7u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (ReadDoorbell(base + 2 * kDoorbellSlotBytes) != 8u && std::chrono::steady_clock::now() < deadline) {
  }
  EXPECT_EQ(ReadDoorbell(base + 2 * kDoorbellSlotBytes), 8u);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: could not open the segment, 3: never saw the ring, 4: slot 0 moved";
  EXPECT_EQ(ReadDoorbell(base), 0u);  // untouched slots stay as they were
}

// The coordinator rings only for the step right after the worker's last, with the same contents as
// that parity's last message, within half the hot window; everything else goes as a message and becomes
// the parity's last.
TEST(StepDoorbell, RingsOnlyARepeatOfTheLastStepsOfItsParity) {
  using std::chrono::milliseconds;
  const milliseconds hot(50);
  auto t = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  DoorbellRecord r;
  EXPECT_FALSE(DecideRing(r, 1, "A", t, hot));  // first steps: messages
  EXPECT_FALSE(DecideRing(r, 2, "B", t += milliseconds(3), hot));
  EXPECT_TRUE(DecideRing(r, 3, "A", t += milliseconds(3), hot));  // repeats step 1
  EXPECT_TRUE(DecideRing(r, 4, "B", t += milliseconds(3), hot));
  EXPECT_FALSE(DecideRing(r, 5, "C", t += milliseconds(3), hot));  // other contents: a message...
  EXPECT_TRUE(DecideRing(r, 6, "B", t += milliseconds(3), hot));
  EXPECT_TRUE(DecideRing(r, 7, "C", t += milliseconds(3), hot));   // ...which is its parity's last from then
  EXPECT_FALSE(DecideRing(r, 9, "C", t += milliseconds(3), hot));  // a gap (8 went elsewhere): a message,
  EXPECT_TRUE(DecideRing(r, 10, "B", t += milliseconds(3), hot));  // after which 10 follows the worker's 9
  EXPECT_TRUE(DecideRing(r, 11, "C", t += milliseconds(3), hot));
  EXPECT_FALSE(DecideRing(r, 12, "B", t += milliseconds(30), hot));  // past half the window: a message
  EXPECT_TRUE(DecideRing(r, 13, "C", t += milliseconds(24), hot));
  DoorbellRecord never;
  EXPECT_FALSE(DecideRing(never, 1, "A", t, milliseconds(0)));
  EXPECT_FALSE(DecideRing(never, 2, "B", t, milliseconds(0)));
  EXPECT_FALSE(DecideRing(never, 3, "A", t, milliseconds(0)));  // no hot window: never rung
}

}  // namespace
}  // namespace pinmoe
