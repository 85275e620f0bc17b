#include "learner/admission.h"

#include <catch2/catch.hpp>
#include <string>

namespace recstream::learner {
namespace {

TEST_CASE("Admission sketch counts occurrences and never under-counts", "[admission]") {
  AdmissionSketch s;
  CHECK(s.Estimate("new") == 0);
  CHECK(s.Add("new") == 1);
  CHECK(s.Add("new") == 2);
  CHECK(s.Estimate("new") == 2);
  for (int i = 0; i < 300; ++i) s.Add("busy");
  CHECK(s.Estimate("busy") == 255);  // saturates, never wraps
  // Many other ids: a counted id keeps at least its count.
  for (int i = 0; i < 100000; ++i) s.Add("other" + std::to_string(i));
  CHECK(s.Estimate("new") >= 2);
}

TEST_CASE("Admission sketch: few ids seen once look like seen twice", "[admission]") {
  // A full halving period of distinct ids, each seen once: the rate at
  // which one of them would be admitted with admit_after = 2.
  AdmissionSketch s;
  const int n = int(AdmissionSketch::kWidth) - 1;
  for (int i = 0; i < n; ++i) s.Add("visitor" + std::to_string(i));
  int twice = 0;
  for (int i = 0; i < n; ++i) twice += s.Estimate("visitor" + std::to_string(i)) >= 2;
  CHECK(double(twice) / n < 0.05);  // 0.0446 measured
}

TEST_CASE("Admission sketch halves its counts every period", "[admission]") {
  AdmissionSketch s;
  for (int i = 0; i < 8; ++i) s.Add("old");
  for (uint32_t i = 0; i + 8 < AdmissionSketch::kWidth; ++i) s.Add("x" + std::to_string(i));
  CHECK(s.Estimate("old") == 4);
}

TEST_CASE("Admission sketch survives export and import", "[admission]") {
  AdmissionSketch a;
  for (int i = 0; i < 1000; ++i) a.Add("id" + std::to_string(i % 97));
  const std::vector<float> v = a.Export();
  AdmissionSketch b;
  REQUIRE(b.Import(v));
  for (int i = 0; i < 97; ++i)
    CHECK(b.Estimate("id" + std::to_string(i)) == a.Estimate("id" + std::to_string(i)));
  CHECK(b.Export() == v);
  std::vector<float> bad = v;
  bad.pop_back();
  CHECK_FALSE(b.Import(bad));
  bad = v;
  bad[3] = -1.0f;
  CHECK_FALSE(b.Import(bad));
}

}  // namespace
}  // namespace recstream::learner
