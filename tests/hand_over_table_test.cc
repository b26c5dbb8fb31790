// The hand-over timeline's table from known stamps: which interval each row measures, where a step starts
// and ends, and the gap between steps.
#include "coordinator/hand_over_table.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace pinmoe {
namespace {

// layer, tick stored, workers' gates open, done stored, coordinator's gate open.
WorkerPool::LayerTimes Layer(int layer, uint64_t tick, uint64_t workers_open, uint64_t done, uint64_t coordinator_open) {
  return WorkerPool::LayerTimes{layer, tick, workers_open, done, coordinator_open};
}

// The row that starts with `what`, from the table.
std::string Row(const std::string& table, const std::string& what) {
  const size_t at = table.find(what);
  if (at == std::string::npos) return "";
  return table.substr(at, table.find('\n', at) - at);
}

TEST(HandOverTable, MeasuresEachIntervalAndTheStepsItsRowsName) {
  // Two decode steps of MoE layers 1 and 3 (GPU clock in ns).
  const std::vector<WorkerPool::LayerTimes> steps = {
      Layer(1, 1000, 3000, 10000, 11000),  Layer(3, 20000, 21000, 30000, 31000),  // step 1
      Layer(1, 40000, 45000, 50000, 51000), Layer(3, 60000, 61000, 70000, 72000),  // step 2
  };
  const std::string table = HandOverTable(steps, {4100.0, 4200.0, 4300.0});
  // The first layer of each step apart (2 and 5 µs) from the others (1 µs twice).
  EXPECT_NE(Row(table, "first layer of a step").find("2.00    2.00    2.00  (2)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "router stored the tick").find("1.00    1.00    1.00  (2)"), std::string::npos) << table;
  // Experts 7, 9, 5 and 9 µs: p10 / median / p90 pick the 1st, 2nd and 3rd of the four.
  EXPECT_NE(Row(table, "workers' gates open ->").find("5.00    7.00    9.00  (4)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "done stored ->").find("1.00    1.00    1.00  (4)"), std::string::npos) << table;
  // Within a step only: layer 1's gate to layer 3's tick (9 µs), tick to tick (19 and 20 µs; of two
  // values each quantile picks the lower).
  EXPECT_NE(Row(table, "(dense part)").find("9.00    9.00    9.00  (2)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "layer period").find("19.00   19.00   19.00  (2)"), std::string::npos) << table;
  // Spans 30 and 32 µs; one boundary, from step 1's last gate to step 2's first tick (9 µs).
  EXPECT_NE(Row(table, "a step's first tick").find("(2)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "step boundary").find("9.00    9.00    9.00  (1)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "decode step, host wall clock").find("4100.00 4200.00 4200.00  (3)"), std::string::npos)
      << table;
  EXPECT_NE(Row(table, "the first steps' spans in order").find(" 30 32"), std::string::npos) << table;
}

TEST(HandOverTable, SplitsTheHostsPartOfTheStepBoundary) {
  const std::vector<WorkerPool::LayerTimes> steps = {Layer(1, 1000, 3000, 10000, 11000),
                                                     Layer(1, 40000, 45000, 50000, 51000)};
  // Launched at 0 and 3,100 µs; events seen 3,000 µs and 2,950 µs later; Done in 5 and 15 µs after that.
  const std::string table = HandOverTable(steps, {3100.0, 3100.0}, {{0, 3000, 3005}, {3100, 6050, 6065}});
  EXPECT_NE(Row(table, "host: graph launched").find("2950.00 2950.00 2950.00  (2)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "host: event seen").find("5.00    5.00    5.00  (2)"), std::string::npos) << table;
  // Between steps only: 3,005 -> 3,100.
  EXPECT_NE(Row(table, "host: step returned").find("95.00   95.00   95.00  (1)"), std::string::npos) << table;
  // Without host times the rows are left out.
  EXPECT_EQ(HandOverTable(steps, {}).find("host:"), std::string::npos);
}

TEST(HandOverTable, SaysWhatWasNotStamped) {
  // The stream form of a hand-over leaves its stamps at 0.
  const std::string table = HandOverTable({Layer(0, 1000, 0, 0, 5000), Layer(0, 9000, 0, 0, 12000)}, {});
  EXPECT_NE(Row(table, "workers' gates open ->").find("not stamped"), std::string::npos) << table;
  EXPECT_NE(Row(table, "decode step, host wall clock").find("not stamped"), std::string::npos) << table;
  // One MoE layer a step: each entry is both a step's first and last layer.
  EXPECT_NE(Row(table, "step boundary").find("4.00    4.00    4.00  (1)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "a step's first tick").find("3.00    3.00    3.00  (2)"), std::string::npos) << table;
  EXPECT_NE(Row(table, "(dense part)").find("not stamped"), std::string::npos) << table;
}

}  // namespace
}  // namespace pinmoe
