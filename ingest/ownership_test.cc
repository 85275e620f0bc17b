#include "ingest/ownership.h"

#include <catch2/catch.hpp>

namespace recstream::ingest {
namespace {

std::vector<TopicPartition> Parts(std::initializer_list<std::pair<const char*, int>> list) {
  std::vector<TopicPartition> out;
  for (auto [t, p] : list) out.push_back({t, p});
  return out;
}

TEST_CASE("Ownership splits partitions by p % count", "[ownership]") {
  Ownership one;
  for (int p = 0; p < 10; ++p) CHECK(one.Owns(p));
  Ownership a{2, 0}, b{2, 1};
  for (int p = 0; p < 10; ++p) CHECK(a.Owns(p) != b.Owns(p));  // exactly one owner
  CHECK(a.Owns(0));
  CHECK(b.Owns(3));
  CHECK_FALSE(a.Owns(-1));
}

TEST_CASE("PlanAssignment adds owned partitions and reports the ones gone", "[ownership]") {
  Ownership second{2, 1};
  // Found at start: nothing assigned yet.
  AssignmentPlan plan = PlanAssignment({{"c", 4}, {"r", 3}}, {}, {}, second);
  CHECK(plan.add == Parts({{"c", 1}, {"c", 3}, {"r", 1}}));
  CHECK(plan.gone.empty());

  // Nothing changed: nothing to do.
  plan = PlanAssignment({{"c", 4}, {"r", 3}}, plan.add, {}, second);
  CHECK(plan.add.empty());
  CHECK(plan.gone.empty());

  // The topic grew from 4 to 8 partitions: the new owned ones are added.
  plan = PlanAssignment({{"c", 8}}, Parts({{"c", 1}, {"c", 3}}), {}, second);
  CHECK(plan.add == Parts({{"c", 5}, {"c", 7}}));

  // A topic whose metadata could not be read changes nothing.
  plan = PlanAssignment({}, Parts({{"c", 1}}), Parts({{"c", 1}}), second);
  CHECK(plan.add.empty());
  CHECK(plan.gone.empty());

  // A deleted topic (0 partitions) and a stored position beyond the end.
  plan = PlanAssignment({{"c", 0}, {"r", 2}}, Parts({{"c", 1}, {"c", 3}, {"r", 1}}),
                        Parts({{"c", 1}, {"r", 1}, {"r", 3}}), second);
  CHECK(plan.add.empty());
  CHECK(plan.gone == Parts({{"c", 1}, {"c", 3}, {"r", 3}}));
}

TEST_CASE("ForeignPositions finds a store written with another trainer.count", "[ownership]") {
  OffsetMap stored = {{{"c", 0}, 5}, {{"c", 1}, 7}, {{"c", 2}, 9}, {{"r", 3}, 1}};
  CHECK(ForeignPositions(stored, Ownership{}).empty());
  CHECK(ForeignPositions(stored, Ownership{2, 0}) == Parts({{"c", 1}, {"r", 3}}));
  CHECK(ForeignPositions(stored, Ownership{2, 1}) == Parts({{"c", 0}, {"c", 2}}));
  CHECK(PartitionNames(Parts({{"c", 1}, {"r", 3}})) == "c/1, r/3");
  CHECK(PartitionNames(Parts({{"c", 1}, {"r", 3}, {"r", 4}}), 2) == "c/1, r/3, ...");
}

}  // namespace
}  // namespace recstream::ingest
