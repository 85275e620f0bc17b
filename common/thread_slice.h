// The scheduler time slice a thread asks for (Linux 6.12 and later, EEVDF:
// sched_attr.sched_runtime of a SCHED_OTHER or SCHED_BATCH thread). A waking
// thread whose slice is shorter than the running one's may preempt it at
// once; with equal slices it waits until the running thread's slice is used
// up, which the kernel checks only at its next tick (4 ms at HZ=250). So the
// service gives its HTTP I/O threads a short slice and the threads that do
// background work (training, ingest, Kafka, checkpoints) a long one.
//
// A hint: no privilege is needed, the kernel clamps the value to
// [100 us, 100 ms], and older kernels accept and ignore it. The thread's
// policy, nice value and other attributes are kept; threads it starts
// afterwards inherit the slice.
#pragma once

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace recstream {

namespace internal {
// struct sched_attr of <linux/sched/types.h> (glibc 2.36 does not declare it).
struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
  uint32_t util_min;
  uint32_t util_max;
};

// Reads the calling thread's attributes; false when they cannot be read or
// the thread is not SCHED_OTHER or SCHED_BATCH (no slice to ask for).
inline bool ReadFairAttr(SchedAttr* a) {
  *a = SchedAttr{};
  if (syscall(SYS_sched_getattr, 0, a, sizeof *a, 0) != 0) return false;
  return a->sched_policy == SCHED_OTHER || a->sched_policy == SCHED_BATCH;
}
}  // namespace internal

// The calling thread's slice in microseconds; 0 when it cannot be read or
// the thread is not SCHED_OTHER or SCHED_BATCH.
inline int64_t ThreadSliceMicros() {
  internal::SchedAttr a;
  return internal::ReadFairAttr(&a) ? int64_t(a.sched_runtime / 1000) : 0;
}

// Asks for a slice of `micros` for the calling thread. False when the
// thread is not SCHED_OTHER or SCHED_BATCH, micros <= 0, or the kernel
// refused it.
inline bool SetThreadSliceMicros(int64_t micros) {
  internal::SchedAttr a;
  if (micros <= 0 || !internal::ReadFairAttr(&a)) return false;
  a.size = sizeof a;
  a.sched_flags &= 0x01;  // SCHED_FLAG_RESET_ON_FORK stays as it was
  a.sched_runtime = uint64_t(micros) * 1000;
  return syscall(SYS_sched_setattr, 0, &a, 0) == 0;
}

// Sets the calling thread's slice for its lifetime (threads started
// meanwhile keep it) and restores the previous one at the end.
class ThreadSliceScope {
 public:
  explicit ThreadSliceScope(int64_t micros)
      : saved_(micros > 0 ? ThreadSliceMicros() : 0),
        set_(saved_ > 0 && SetThreadSliceMicros(micros)) {}
  ~ThreadSliceScope() {
    if (set_) SetThreadSliceMicros(saved_);
  }
  ThreadSliceScope(const ThreadSliceScope&) = delete;
  ThreadSliceScope& operator=(const ThreadSliceScope&) = delete;

 private:
  const int64_t saved_;
  const bool set_;
};

}  // namespace recstream
