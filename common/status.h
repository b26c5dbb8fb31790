// Error handling in three tiers (see style.md): absl::Status / StatusOr for anything that can fail at run
// time, PINMOE_CHECK for invariants that only a bug can break, and no exceptions of our own.
// Abseil 20220623 has no status macros, so these are ours.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define PINMOE_CONCAT_INNER(a, b) a##b
#define PINMOE_CONCAT(a, b) PINMOE_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status pinmoe_status_ = (expr);      \
    if (!pinmoe_status_.ok()) return pinmoe_status_; \
  } while (0)

#define PINMOE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(*tmp)

#define ASSIGN_OR_RETURN(lhs, expr) \
  PINMOE_ASSIGN_OR_RETURN_IMPL(PINMOE_CONCAT(pinmoe_statusor_, __LINE__), lhs, expr)

namespace pinmoe::internal {
[[noreturn]] inline void CheckFailed(const char* file, int line, const char* cond) {
  std::fprintf(stderr, "pinmoe: internal error: CHECK(%s) failed at %s:%d\n", cond, file, line);
  std::abort();
}
}  // namespace pinmoe::internal

#define PINMOE_CHECK(cond) \
  ((cond) ? (void)0 : ::pinmoe::internal::CheckFailed(__FILE__, __LINE__, #cond))
