// The environment knobs kept for A/B measurements (PINMOE_GRID_MARGIN, PINMOE_WORKER_HOT_POLL_MS, ...).
#pragma once

#include <cstdlib>

namespace pinmoe {

// The integer in environment variable `name` (atoi's reading of it), or `fallback` when it is unset or
// empty.
inline int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' ? std::atoi(v) : fallback;
}

}  // namespace pinmoe
