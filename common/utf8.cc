#include "common/utf8.h"

namespace pinmoe {
namespace {

// For a lead byte: the sequence length and the allowed range of the second byte; length 0 means the
// byte can never start a sequence.
struct Lead {
  int length;
  unsigned char lo, hi;
};

Lead ClassifyLead(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xc2 && b <= 0xdf) return {2, 0x80, 0xbf};
  if (b == 0xe0) return {3, 0xa0, 0xbf};
  if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) return {3, 0x80, 0xbf};
  if (b == 0xed) return {3, 0x80, 0x9f};
  if (b == 0xf0) return {4, 0x90, 0xbf};
  if (b >= 0xf1 && b <= 0xf3) return {4, 0x80, 0xbf};
  if (b == 0xf4) return {4, 0x80, 0x8f};
  return {0, 0, 0};
}

// How many bytes from s[i] form a valid (possibly incomplete) prefix of one sequence, and whether the
// sequence is complete.
size_t ValidPrefix(std::string_view s, size_t i, bool* complete) {
  unsigned char b = static_cast<unsigned char>(s[i]);
  Lead lead = ClassifyLead(b);
  *complete = false;
  if (lead.length == 0) return 0;
  if (lead.length == 1) {
    *complete = true;
    return 1;
  }
  size_t n = 1;
  while (n < static_cast<size_t>(lead.length) && i + n < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i + n]);
    unsigned char lo = n == 1 ? lead.lo : 0x80;
    unsigned char hi = n == 1 ? lead.hi : 0xbf;
    if (c < lo || c > hi) return n;
    ++n;
  }
  *complete = n == static_cast<size_t>(lead.length);
  return n;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    bool complete;
    size_t n = ValidPrefix(s, i, &complete);
    if (!complete) return false;
    i += n;
  }
  return true;
}

std::string Utf8Lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    bool complete;
    size_t n = ValidPrefix(s, i, &complete);
    if (complete) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out.append("\xef\xbf\xbd");
      i += n == 0 ? 1 : n;
    }
  }
  return out;
}

size_t IncompleteUtf8Tail(std::string_view s) {
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    size_t i = s.size() - back;
    unsigned char b = static_cast<unsigned char>(s[i]);
    if (b >= 0x80 && b < 0xc0) continue;  // a continuation byte: look further back
    bool complete;
    size_t n = ValidPrefix(s, i, &complete);
    return (!complete && n == back) ? back : 0;
  }
  return 0;
}

}  // namespace pinmoe
