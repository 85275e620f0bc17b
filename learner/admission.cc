#include "learner/admission.h"

#include <algorithm>

namespace recstream::learner {
namespace {

uint64_t Mix(uint64_t h) {
  h = (h ^ (h >> 33)) * 0xff51afd7ed558ccdULL;
  h = (h ^ (h >> 33)) * 0xc4ceb9fe1a85ec53ULL;
  return h ^ (h >> 33);
}

constexpr size_t kCounters = size_t(AdmissionSketch::kDepth) * AdmissionSketch::kWidth;

}  // namespace

AdmissionSketch::AdmissionSketch() : counters_(new std::atomic<uint8_t>[kCounters]) {
  for (size_t i = 0; i < kCounters; ++i) counters_[i].store(0, std::memory_order_relaxed);
}

void AdmissionSketch::Slots(std::string_view id, uint64_t salt, uint32_t* slots) const {
  uint64_t h = 1469598103934665603ULL ^ (salt * 0x9e3779b97f4a7c15ULL);  // FNV-1a: stable across runs
  for (unsigned char c : id) h = (h ^ c) * 1099511628211ULL;
  // Two independent halves give the rows' positions (Kirsch-Mitzenmacher).
  const uint64_t a = Mix(h), b = Mix(h ^ 0x9e3779b97f4a7c15ULL) | 1;
  for (int d = 0; d < kDepth; ++d)
    slots[d] = uint32_t(d) * kWidth + uint32_t((a + uint64_t(d) * b) >> (64 - kWidthBits));
}

uint32_t AdmissionSketch::Estimate(std::string_view id, uint64_t salt) const {
  uint32_t slots[kDepth];
  Slots(id, salt, slots);
  uint32_t m = 255;
  for (uint32_t s : slots) m = std::min<uint32_t>(m, counters_[s].load(std::memory_order_relaxed));
  return m;
}

uint32_t AdmissionSketch::Add(std::string_view id, uint64_t salt) {
  uint32_t slots[kDepth];
  Slots(id, salt, slots);
  uint32_t m = 255;
  for (uint32_t s : slots) m = std::min<uint32_t>(m, counters_[s].load(std::memory_order_relaxed));
  const uint32_t next = std::min<uint32_t>(255, m + 1);
  // Conservative update: only the counters below the new estimate rise.
  for (uint32_t s : slots)
    if (counters_[s].load(std::memory_order_relaxed) < next)
      counters_[s].store(uint8_t(next), std::memory_order_relaxed);
  if (added_.fetch_add(1, std::memory_order_relaxed) + 1 >= kWidth) Halve();
  return next;
}

void AdmissionSketch::Halve() {
  // Whoever crosses the period halves; a racing Add of another thread may
  // see some counters halved and others not, which only shifts its estimate
  // by the halving it is part of anyway.
  added_.store(0, std::memory_order_relaxed);
  for (size_t i = 0; i < kCounters; ++i)
    counters_[i].store(uint8_t(counters_[i].load(std::memory_order_relaxed) >> 1),
                       std::memory_order_relaxed);
}

size_t AdmissionSketch::ExportSize() { return (kCounters + 2) / 3 + 1; }

std::vector<float> AdmissionSketch::Export() const {
  std::vector<float> out(ExportSize());
  for (size_t i = 0; i < kCounters; i += 3) {
    uint32_t v = 0;
    for (size_t k = 0; k < 3 && i + k < kCounters; ++k)
      v |= uint32_t(counters_[i + k].load(std::memory_order_relaxed)) << (8 * k);
    out[i / 3] = float(v);
  }
  out.back() = float(added_.load(std::memory_order_relaxed) % kWidth);
  return out;
}

bool AdmissionSketch::Import(const std::vector<float>& values) {
  if (values.size() != ExportSize()) return false;
  for (float f : values)
    if (!(f >= 0.0f && f < 16777216.0f)) return false;
  for (size_t i = 0; i < kCounters; i += 3) {
    const uint32_t v = uint32_t(values[i / 3]);
    for (size_t k = 0; k < 3 && i + k < kCounters; ++k)
      counters_[i + k].store(uint8_t(v >> (8 * k)), std::memory_order_relaxed);
  }
  added_.store(uint64_t(values.back()), std::memory_order_relaxed);
  return true;
}

}  // namespace recstream::learner
