// AdmissionSketch: how often ids without a row of their own have been seen,
// for LearnerOptions::admit_after (docs/interface.md, "Memory").
//
// A count-min sketch (Cormode and Muthukrishnan, 2005) of 4 rows of 2^19
// 8-bit saturating counters, 2 MiB whatever the number of ids, with the
// conservative update (only the counters at the minimum are raised, which
// keeps over-counting from collisions small). Every 2^19 additions every
// counter is halved, as TinyLFU does, so that counts follow recent
// traffic: an id seen once months ago does not count towards its admission
// today, and the counters never fill up.
//
// Errors are one-sided: a count is never under-estimated before a halving,
// so an id is never admitted late by more than one halving period, and may be
// admitted early when its counters collide with busy ids (admission_test:
// after 2^19 - 1 distinct ids, a whole period without a halving, 4.5% of the
// ids seen once read as seen twice; fewer earlier in a period).
//
// Thread safety: Add may be called from several threads at once (relaxed
// atomic counters; a race may lose one increment, as Hogwild loses updates);
// Halve, Export and Import must not run concurrently with Add.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace recstream::learner {

class AdmissionSketch {
 public:
  static constexpr int kDepth = 4;
  static constexpr uint32_t kWidthBits = 19;
  static constexpr uint32_t kWidth = 1u << kWidthBits;

  AdmissionSketch();
  // Counts one more occurrence of `id` and returns its estimated count
  // (at least 1, at most 255). Halves the counters every kWidth calls.
  // `salt` keeps the counts of different kinds of ids (users, items) apart.
  uint32_t Add(std::string_view id, uint64_t salt = 0);
  // The estimated count of `id`, 0 when never added (or halved away).
  uint32_t Estimate(std::string_view id, uint64_t salt = 0) const;

  // The counters as floats for a snapshot's dense block: three counters per
  // float (each float an exact integer below 2^24), then the additions
  // since the last halving.
  std::vector<float> Export() const;
  // False (and nothing changed) when `values` is not Export()'s size.
  bool Import(const std::vector<float>& values);
  static size_t ExportSize();

 private:
  void Halve();
  void Slots(std::string_view id, uint64_t salt, uint32_t* slots) const;

  std::unique_ptr<std::atomic<uint8_t>[]> counters_;  // kDepth x kWidth
  std::atomic<uint64_t> added_{0};
};

}  // namespace recstream::learner
