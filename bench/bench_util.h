// Small helpers shared by the benchmark programs: clocks, resident memory,
// percentiles and the machine's load. Benchmarks only; no library depends on
// this header.
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>
#include <vector>

namespace recstream::bench {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// User + system CPU time of the whole process (every thread), in seconds.
inline double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) * 1e-6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

// CPU time of the calling thread, in seconds.
inline double ThreadCpuSeconds() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}

// Resident set size of this process, in bytes (/proc/self/statm).
inline uint64_t ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * uint64_t(::sysconf(_SC_PAGESIZE));
}

// Peak resident set size of this process, in bytes (VmHWM).
inline uint64_t PeakResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// The 1/5/15-minute load averages, as /proc/loadavg prints them.
inline std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// The q-quantile (0..1) of `v` by the nearest-rank method; sorts `v`.
inline double Quantile(std::vector<double>* v, double q) {
  if (v->empty()) return 0.0;
  std::sort(v->begin(), v->end());
  size_t rank = size_t(q * double(v->size()));
  if (rank >= v->size()) rank = v->size() - 1;
  return (*v)[rank];
}

inline double MiB(uint64_t bytes) { return double(bytes) / (1024.0 * 1024.0); }

}  // namespace recstream::bench
