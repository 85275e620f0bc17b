#include "serve/json_writer.h"

#include <fmt/compile.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace recstream::serve {

namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 when invalid
// (truncated, overlong, surrogate, beyond U+10FFFF).
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
  if (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
  return n;
}

// "00" "01" ... "99".
constexpr char kTwoDigits[] =
    "00010203040506070809101112131415161718192021222324"
    "25262728293031323334353637383940414243444546474849"
    "50515253545556575859606162636465666768697071727374"
    "75767778798081828384858687888990919293949596979899";

constexpr uint32_t kPow10[10] = {1,      10,      100,      1000,      10000,
                                 100000, 1000000, 10000000, 100000000, 1000000000};

// Writes the decimal digits of `v` so that they end just before `end`.
inline void WriteDigits(char* end, uint32_t v) {
  while (v >= 100) {
    const uint32_t q = v / 100;
    end -= 2;
    std::memcpy(end, kTwoDigits + 2 * (v - q * 100), 2);
    v = q;
  }
  if (v >= 10) {
    std::memcpy(end - 2, kTwoDigits + 2 * v, 2);
  } else {
    end[-1] = char('0' + v);
  }
}

// Appends the shortest round-trip form of `value` (fmt's "{}"), formatted
// on the stack: fmt writing through a back_insert_iterator appends one
// character at a time.
template <typename T>
void AppendNumber(std::string* out, T value) {
  char buf[64];
  char* end = fmt::format_to(buf, FMT_COMPILE("{}"), value);
  out->append(buf, end);
}

// True for bytes AppendString copies as they are.
inline bool Plain(unsigned char c) { return c >= 0x20 && c < 0x7F && c != '"' && c != '\\'; }

}  // namespace

char* JsonWriter::WriteString(char* p, std::string_view s) {
  *p++ = '"';
  size_t i = 0;
  while (i < s.size()) {
    // Runs of plain ASCII (ids, keys: nearly everything) in one copy.
    size_t run = i;
    while (run < s.size() && Plain(static_cast<unsigned char>(s[run]))) ++run;
    if (run > i) {
      std::memcpy(p, s.data() + i, run - i);
      p += run - i;
      i = run;
      if (i == s.size()) break;
    }
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t n = Utf8SequenceLength(s, i);
      if (n == 0) {
        std::memcpy(p, "\xEF\xBF\xBD", 3);  // U+FFFD
        p += 3;
        ++i;
      } else {
        std::memcpy(p, s.data() + i, n);
        p += n;
        i += n;
      }
      continue;
    }
    const char* escape = nullptr;
    switch (c) {
      case '"':
        escape = "\\\"";
        break;
      case '\\':
        escape = "\\\\";
        break;
      case '\b':
        escape = "\\b";
        break;
      case '\f':
        escape = "\\f";
        break;
      case '\n':
        escape = "\\n";
        break;
      case '\r':
        escape = "\\r";
        break;
      case '\t':
        escape = "\\t";
        break;
    }
    if (escape != nullptr) {
      std::memcpy(p, escape, 2);
      p += 2;
    } else {  // the other control characters and DEL (Plain() let through the rest)
      static constexpr char kHex[] = "0123456789abcdef";
      std::memcpy(p, "\\u00", 4);
      p[4] = kHex[c >> 4];
      p[5] = kHex[c & 15];
      p += 6;
    }
    ++i;
  }
  *p++ = '"';
  return p;
}

void JsonWriter::AppendString(std::string* out, std::string_view s) {
  if (std::all_of(s.begin(), s.end(),
                  [](char c) { return Plain(static_cast<unsigned char>(c)); })) {
    // Nothing to escape (ids, keys: nearly everything).
    out->reserve(out->size() + s.size() + 2);
    out->push_back('"');
    out->append(s);
    out->push_back('"');
    return;
  }
  const size_t at = out->size();
  out->resize(at + MaxStringChars(s.size()));
  char* end = WriteString(out->data() + at, s);
  out->resize(size_t(end - out->data()));
}

void JsonWriter::Separate() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (!has_element_.empty()) {
    if (has_element_.back()) out_->push_back(',');
    has_element_.back() = true;
  }
}

JsonWriter& JsonWriter::BeginObject() {
  Separate();
  out_->push_back('{');
  has_element_.push_back(false);
  return *this;
}

JsonWriter& JsonWriter::EndObject() {
  out_->push_back('}');
  has_element_.pop_back();
  return *this;
}

JsonWriter& JsonWriter::BeginArray() {
  Separate();
  out_->push_back('[');
  has_element_.push_back(false);
  return *this;
}

JsonWriter& JsonWriter::EndArray() {
  out_->push_back(']');
  has_element_.pop_back();
  return *this;
}

JsonWriter& JsonWriter::Key(std::string_view key) {
  Separate();
  AppendString(out_, key);
  out_->push_back(':');
  after_key_ = true;
  return *this;
}

JsonWriter& JsonWriter::String(std::string_view value) {
  Separate();
  AppendString(out_, value);
  return *this;
}

JsonWriter& JsonWriter::Bool(bool value) {
  Separate();
  out_->append(value ? "true" : "false");
  return *this;
}

JsonWriter& JsonWriter::Null() {
  Separate();
  out_->append("null");
  return *this;
}

JsonWriter& JsonWriter::Int(int64_t value) {
  Separate();
  AppendNumber(out_, value);
  return *this;
}

JsonWriter& JsonWriter::Uint(uint64_t value) {
  Separate();
  AppendNumber(out_, value);
  return *this;
}

JsonWriter& JsonWriter::Float(float value) {
  Separate();
  AppendFloat(out_, value);
  return *this;
}

// The shortest decimal digits that read back to `value` come from fmt's
// Dragonbox (fmt::detail::dragonbox::to_decimal, exported by libfmt 9); the
// layout is written here, byte for byte what fmt's "{}" writes (the test
// compares the two), without fmt's general formatting machinery around it,
// which took more time than the digits themselves: POST /v1/score writes
// 4 floats per item.
void JsonWriter::AppendFloat(std::string* out, float value) {
  char buf[kMaxFloatChars];
  out->append(buf, WriteFloat(buf, value));
}

char* JsonWriter::WriteFloat(char* p, float value) {
  if (!std::isfinite(value)) {
    std::memcpy(p, "null", 4);
    return p + 4;
  }
  if (std::signbit(value)) {
    *p++ = '-';
    value = -value;
  }
  if (value == 0) {
    *p++ = '0';
    return p;
  }
  const auto dec = fmt::detail::dragonbox::to_decimal(value);
  const uint32_t sig = dec.significand;  // at most 9 digits for a float
  int n = 1;                             // digits of sig, without branches
  for (int k = 1; k < 10; ++k) n += sig >= kPow10[k];
  const int exp = dec.exponent;  // value = sig x 10^exp
  const int output_exp = exp + n - 1;
  if (output_exp < -4 || output_exp >= 16) {  // fmt's bounds for "{}"
    // d.ddde-XX: the digits one place to the right, then the first moved
    // in front of the point.
    WriteDigits(p + 1 + n, sig);
    p[0] = p[1];
    if (n > 1) {
      p[1] = '.';
      p += n + 1;
    } else {
      p += 1;
    }
    *p++ = 'e';
    *p++ = output_exp < 0 ? '-' : '+';
    int a = output_exp < 0 ? -output_exp : output_exp;
    if (a >= 100) {
      *p++ = char('0' + a / 100);
      a %= 100;
    }
    std::memcpy(p, kTwoDigits + 2 * a, 2);
    p += 2;
  } else if (exp >= 0) {  // 1234e2 -> 123400
    WriteDigits(p + n, sig);
    p += n;
    for (int i = 0; i < exp; ++i) *p++ = '0';
  } else if (exp + n > 0) {  // 1234e-2 -> 12.34
    const int int_digits = exp + n;
    WriteDigits(p + n + 1, sig);
    for (int i = 0; i < int_digits; ++i) p[i] = p[i + 1];
    p[int_digits] = '.';
    p += n + 1;
  } else {  // 1234e-6 -> 0.001234
    *p++ = '0';
    *p++ = '.';
    for (int i = 0; i < -(exp + n); ++i) *p++ = '0';
    WriteDigits(p + n, sig);
    p += n;
  }
  return p;
}

JsonWriter& JsonWriter::Double(double value) {
  Separate();
  if (!std::isfinite(value)) {
    out_->append("null");
  } else {
    AppendNumber(out_, value);
  }
  return *this;
}

std::string ErrorBody(std::string_view message) {
  std::string out;
  JsonWriter w(&out);
  w.BeginObject().Key("error").String(message).EndObject();
  return out;
}

}  // namespace recstream::serve
