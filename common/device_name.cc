#include "common/device_name.h"

#include "absl/strings/numbers.h"
#include "common/str_cat.h"

namespace pinmoe {

absl::StatusOr<int> ParseDeviceName(const std::string& name) {
  if (name == "cpu") return -1;
  int n;
  if (name.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(name.substr(5), &n) && n >= 0) return n;
  return absl::InvalidArgumentError(StrCat("device '", name, "' is not cpu or cuda:N"));
}

}  // namespace pinmoe
