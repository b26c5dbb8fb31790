// Small file-system helpers with Status errors that name the path.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace pinmoe {

std::string JoinPath(std::string_view dir, std::string_view name);
bool FileExists(const std::string& path);
// Reads a whole file, refusing files larger than max_bytes.
absl::StatusOr<std::string> ReadFileToString(const std::string& path, uint64_t max_bytes);
absl::Status WriteStringToFile(const std::string& path, std::string_view contents);
// The directory holding the running executable.
std::string ExecutableDir();

}  // namespace pinmoe
