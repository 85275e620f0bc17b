// Options of serve/. Plain data, cheap to include.
#pragma once

#include <charconv>
#include <cstddef>
#include <string>
#include <string_view>

namespace recstream::serve {

struct ServeOptions {
  // host:port to listen on; port 0 picks a free port.
  std::string listen = "127.0.0.1:8080";
  // Admin endpoints need "Authorization: Bearer <admin_token>"; empty
  // disables them.
  std::string admin_token;
  // I/O threads of the HTTP server.
  int threads = 2;
  // Scheduling of the I/O threads (requests are handled on them), so that a
  // request need not wait for a CPU behind background work (training, Kafka,
  // checkpoints, other processes):
  //   ""        inherit the process's scheduling (default);
  //   "nice:N"  nice value N, -20 <= N <= 19;
  //   "fifo:P"  real-time SCHED_FIFO priority P, 1 <= P <= 99: a request
  //             preempts every normal thread at once. A slow handler (a large
  //             /v1/recommend or POST /v1/score) then holds its core for its
  //             whole duration. Under overload (more requests than the
  //             threads can answer) the I/O threads take every core they
  //             run on: with as many I/O threads as cores, learning then
  //             stops and the kernel's real-time throttling
  //             (sched_rt_runtime_us, 95% by default) stalls the I/O threads
  //             for the rest of each second. Keep `threads` below the number
  //             of cores (e.g. 1 on 2 cores) to bound serving's share.
  // A negative nice or a real-time priority needs CAP_SYS_NICE (e.g. root)
  // or a high enough RLIMIT_NICE / RLIMIT_RTPRIO; without it HttpServer::Start
  // fails. Threads the I/O threads start do not inherit the setting
  // (SCHED_RESET_ON_FORK).
  std::string io_priority;
  // The scheduler time slice the I/O threads ask for, in microseconds
  // (common/thread_slice.h; Linux 6.12+, ignored by older kernels; not with
  // "fifo:P"). Shorter than the background threads' slice, it lets a
  // request preempt training or Kafka work at once instead of at the
  // kernel's next tick. 0 keeps the inherited slice.
  int io_slice_us = 100;
  size_t max_body_bytes = 8 << 20;
  size_t max_header_bytes = 16 << 10;
  int request_timeout_ms = 10000;
  int max_connections = 4096;
  // Most items in one POST /v1/score.
  size_t max_batch_items = 10000;
  // Most k in /v1/recommend.
  int max_k = 1000;
};

// ServeOptions::io_priority, parsed.
struct IoPriority {
  enum class Kind { kInherit, kNice, kFifo };
  Kind kind = Kind::kInherit;
  int value = 0;  // the nice value or the SCHED_FIFO priority
};

// Parses ServeOptions::io_priority; false when `spec` is not one of the forms
// listed there.
inline bool ParseIoPriority(std::string_view spec, IoPriority* out) {
  if (spec.empty()) {
    *out = IoPriority{};
    return true;
  }
  IoPriority p;
  int lo, hi;
  if (spec.substr(0, 5) == "nice:") {
    p.kind = IoPriority::Kind::kNice, lo = -20, hi = 19;
  } else if (spec.substr(0, 5) == "fifo:") {
    p.kind = IoPriority::Kind::kFifo, lo = 1, hi = 99;
  } else {
    return false;
  }
  std::string_view number = spec.substr(5);
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), p.value);
  if (number.empty() || ec != std::errc() || end != number.data() + number.size() || p.value < lo ||
      p.value > hi) {
    return false;
  }
  *out = p;
  return true;
}

}  // namespace recstream::serve
