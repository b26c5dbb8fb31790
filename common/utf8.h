// UTF-8 helpers shared by the tokenizer and the streaming decoder.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace pinmoe {

// True when `s` is well-formed UTF-8 (no surrogates, no overlongs, nothing past U+10FFFF).
bool IsValidUtf8(std::string_view s);

// Replaces each maximal ill-formed subpart with U+FFFD, as Rust's String::from_utf8_lossy (and so Hugging
// Face tokenizers' decode) does.
std::string Utf8Lossy(std::string_view s);

// Length of a trailing, still incomplete but so far valid, UTF-8 sequence (0..3): bytes a streaming
// decoder must hold back until the next token completes them.
size_t IncompleteUtf8Tail(std::string_view s);

}  // namespace pinmoe
