// Status: the result of an operation that can fail, returned as a value.
// Modeled on leveldb::Status / absl::Status. A default Status is OK. Errors
// carry a code (for the caller to branch on) and a message (for humans).
// Status is [[nodiscard]]: ignoring a returned Status is a compile warning.
#pragma once

#include <string>
#include <string_view>
#include <utility>

namespace recstream {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kInvalidArgument,  // caller's input is wrong (bad config value, bad request)
    kNotFound,         // the thing asked for does not exist
    kIOError,          // the disk, network or a library failed
    kCorruption,       // stored data is unreadable or inconsistent
    kUnavailable,      // try again later (broker down, not ready)
    kInternal,         // a bug or an invariant violation
  };

  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status IOError(std::string m) { return {Code::kIOError, std::move(m)}; }
  static Status Corruption(std::string m) { return {Code::kCorruption, std::move(m)}; }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  bool IsInvalidArgument() const { return code_ == Code::kInvalidArgument; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsIOError() const { return code_ == Code::kIOError; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }

  // "OK" or "<code name>: <message>".
  std::string ToString() const {
    if (ok()) return "OK";
    return std::string(CodeName(code_)) + ": " + message_;
  }

  static std::string_view CodeName(Code c) {
    switch (c) {
      case Code::kOk:
        return "OK";
      case Code::kInvalidArgument:
        return "Invalid argument";
      case Code::kNotFound:
        return "Not found";
      case Code::kIOError:
        return "IO error";
      case Code::kCorruption:
        return "Corruption";
      case Code::kUnavailable:
        return "Unavailable";
      case Code::kInternal:
        return "Internal";
    }
    return "Unknown";
  }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

}  // namespace recstream

// Returns early from the enclosing function when `expr` is not OK.
#define RECSTREAM_RETURN_IF_ERROR(expr) \
  do {                                  \
    ::recstream::Status _st = (expr);   \
    if (!_st.ok()) return _st;          \
  } while (0)
