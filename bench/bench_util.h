// Small helpers shared by the benchmark programs: clocks, resident memory,
// percentiles, the machine's load and the hypervisor's steal time. Benchmarks only; no library depends on
// this header.
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
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

// CPU time (user + system, seconds) of each of this process's live threads,
// by thread id, with the thread's name (/proc/self/task/*/comm and stat);
// threads that ended are not in it. Linux only.
struct ThreadCpu {
  std::string name;
  double seconds = 0;
};
inline std::map<long, ThreadCpu> CpuByThread() {
  std::map<long, ThreadCpu> out;
  const double tick = 1.0 / double(::sysconf(_SC_CLK_TCK));
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    ThreadCpu t;
    std::string stat;
    std::getline(std::ifstream(task.path() / "comm"), t.name);
    std::getline(std::ifstream(task.path() / "stat"), stat);
    // Fields after the ")" that ends the name: state is field 3, utime 14, stime 15.
    const size_t close = stat.rfind(')');
    if (t.name.empty() || close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    t.seconds = (utime + stime) * tick;
    out[std::atol(task.path().filename().c_str())] = std::move(t);
  }
  return out;
}

// The CPU each thread name took between two CpuByThread() readings: each
// thread's own difference (a thread new since `before` counts whole),
// summed by name.
inline std::map<std::string, double> CpuByNameSince(const std::map<long, ThreadCpu>& before,
                                                    const std::map<long, ThreadCpu>& after) {
  std::map<std::string, double> out;
  for (const auto& [tid, t] : after) {
    const auto it = before.find(tid);
    out[t.name] += t.seconds - (it != before.end() ? it->second.seconds : 0.0);
  }
  return out;
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

// Starts PeakResidentBytes() over from the current resident set (writing 5
// to /proc/self/clear_refs, Linux 4.0 and later), so that a later phase's
// peak is its own. Returns false where the kernel refuses.
inline bool ResetPeakResidentBytes() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return bool(out);
}

// The 1/5/15-minute load averages, as /proc/loadavg prints them.
inline std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// The machine's CPU time over all its CPUs, in USER_HZ ticks, from the first
// line of /proc/stat. `steal` is time a vCPU wanted to run while the
// hypervisor ran something else: on a shared host it is the part of a slow
// or late run that no change of ours can remove.
struct HostTicks {
  uint64_t total = 0;  // user nice system idle iowait irq softirq steal
  uint64_t steal = 0;

  static HostTicks Now() {
    std::ifstream in("/proc/stat");
    std::string cpu;
    uint64_t v[8] = {};
    in >> cpu;
    HostTicks t;
    for (int i = 0; i < 8 && (in >> v[i]); ++i) t.total += v[i];
    t.steal = v[7];
    return t;
  }
  HostTicks& operator+=(const HostTicks& o) {
    total += o.total, steal += o.steal;
    return *this;
  }
  HostTicks operator-(const HostTicks& o) const { return {total - o.total, steal - o.steal}; }
  // "steal=N ticks (P% of the CPU time)".
  std::string SummaryText() const {
    char buf[80];
    std::snprintf(buf, sizeof buf, "steal=%llu ticks (%.1f%% of the CPU time)",
                  (unsigned long long)steal, total ? 100.0 * double(steal) / double(total) : 0.0);
    return buf;
  }
};

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
