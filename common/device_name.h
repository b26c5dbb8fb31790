// Device names on the command line and in messages: "cpu" or "cuda:N".
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace pinmoe {

// -1 for "cpu", N for "cuda:N"; an error naming the text otherwise.
absl::StatusOr<int> ParseDeviceName(const std::string& name);

}  // namespace pinmoe
