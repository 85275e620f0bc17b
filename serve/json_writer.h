// JsonWriter: appends compact JSON to a string. Small and allocation-light;
// the caller is responsible for the structure (matching Begin/End calls,
// Key before each value inside an object), the writer for commas, string
// escaping and number formatting.
//
// Strings are escaped per RFC 8259: '"', '\\' and control characters are
// escaped; invalid UTF-8 bytes are replaced by U+FFFD so the output is always
// valid JSON. Floating-point numbers are written in their shortest form that
// reads back to the same value; NaN and infinities (which JSON lacks) become
// null.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace recstream::serve {

class JsonWriter {
 public:
  explicit JsonWriter(std::string* out) : out_(out) {}

  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view value);
  JsonWriter& Bool(bool value);
  JsonWriter& Null();
  JsonWriter& Int(int64_t value);
  JsonWriter& Uint(uint64_t value);
  JsonWriter& Float(float value);
  JsonWriter& Double(double value);

  // Appends `s` as a quoted, escaped JSON string to `out`.
  static void AppendString(std::string* out, std::string_view s);
  // Appends `value` as Float() writes it (null when not finite).
  static void AppendFloat(std::string* out, float value);

  // The same, written at `p` into a buffer the caller has sized, returning
  // the end of what was written: for loops that write many values into one
  // buffer (POST /v1/score), without a string append per piece.
  // WriteString needs MaxStringChars(s.size()) bytes, WriteFloat
  // kMaxFloatChars.
  static constexpr size_t MaxStringChars(size_t n) { return 6 * n + 2; }
  static constexpr size_t kMaxFloatChars = 24;  // "-1234567890000000" is 17
  static char* WriteString(char* p, std::string_view s);
  static char* WriteFloat(char* p, float value);

 private:
  // Writes the comma due before a value or key, if any.
  void Separate();

  std::string* out_;
  // One entry per open container: true once it holds an element.
  std::vector<bool> has_element_;
  bool after_key_ = false;
};

// {"error":"<message>"}.
std::string ErrorBody(std::string_view message);

}  // namespace recstream::serve
