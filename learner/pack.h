// Exact round trip of doubles and counters through the float vectors of
// ModelSnapshot dense blocks: each 64-bit value is stored as two floats'
// worth of raw bits (never read as floats).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace recstream::learner {

inline void PackDouble(double v, std::vector<float>* out) {
  float f[2];
  static_assert(sizeof(f) == sizeof(v));
  std::memcpy(f, &v, sizeof(v));
  out->push_back(f[0]);
  out->push_back(f[1]);
}

inline double UnpackDouble(const std::vector<float>& in, size_t i) {
  double v;
  std::memcpy(&v, &in[2 * i], sizeof(v));
  return v;
}

}  // namespace recstream::learner
