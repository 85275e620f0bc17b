#include "store/snapshot_accumulator.h"

#include <algorithm>
#include <catch2/catch.hpp>

namespace recstream::store {
namespace {

learner::ModelSnapshot Rows(std::vector<std::string> users, float value) {
  learner::ModelSnapshot s;
  s.shape = "shape";
  learner::TableDelta t;
  t.table = "user";
  t.width = 1;
  for (const std::string& u : users) {
    t.keys.push_back(u);
    t.values.push_back(value);
  }
  s.tables.push_back(std::move(t));
  learner::FeatureListDelta l;
  l.table = "user_history";
  for (const std::string& u : users) {
    l.keys.push_back(u);
    l.features.push_back({"i1"});
  }
  s.feature_lists.push_back(std::move(l));
  return s;
}

learner::ModelSnapshot Deletion(std::vector<std::string> users) {
  learner::ModelSnapshot s;
  s.shape = "shape";
  s.deleted.push_back({"user", users});
  for (const std::string& u : users) s.deleted_purchases.emplace_back(u, "i1");
  return s;
}

std::vector<std::string> Keys(const learner::ModelSnapshot& s, const std::string& table) {
  for (const auto& t : s.tables)
    if (t.table == table) return t.keys;
  return {};
}
std::vector<std::string> ListKeys(const learner::ModelSnapshot& s, const std::string& table) {
  for (const auto& l : s.feature_lists)
    if (l.table == table) return l.keys;
  return {};
}
std::vector<std::string> Deleted(const learner::ModelSnapshot& s) {
  std::vector<std::string> out;
  for (const auto& d : s.deleted) out.insert(out.end(), d.keys.begin(), d.keys.end());
  std::sort(out.begin(), out.end());
  return out;
}

TEST_CASE("SnapshotAccumulator: a deletion after a row drops the row and keeps the deletion",
          "[accumulator][expiry]") {
  SnapshotAccumulator acc;
  learner::ModelSnapshot a = Rows({"u1", "u2"}, 1.0f);
  a.new_purchases = {{"u1", "i1"}, {"u2", "i1"}};
  acc.Merge(a, false);
  acc.Merge(Deletion({"u1"}), false);
  learner::ModelSnapshot out;
  bool full = false;
  acc.Take(&out, &full);
  CHECK(Keys(out, "user") == std::vector<std::string>{"u2"});
  CHECK(ListKeys(out, "user_history") == std::vector<std::string>{"u2"});
  CHECK(Deleted(out) == std::vector<std::string>{"u1"});
  CHECK(out.new_purchases == std::vector<std::pair<std::string, std::string>>{{"u2", "i1"}});
  CHECK(out.deleted_purchases == std::vector<std::pair<std::string, std::string>>{{"u1", "i1"}});
}

TEST_CASE("SnapshotAccumulator: an id back after its deletion keeps its new row",
          "[accumulator][expiry]") {
  SnapshotAccumulator acc;
  acc.Merge(Rows({"u1"}, 1.0f), false);
  acc.Merge(Deletion({"u1"}), false);
  learner::ModelSnapshot back = Rows({"u1"}, 2.0f);
  back.new_purchases = {{"u1", "i1"}};
  acc.Merge(back, false);
  learner::ModelSnapshot out;
  bool full = false;
  acc.Take(&out, &full);
  REQUIRE(Keys(out, "user") == std::vector<std::string>{"u1"});
  CHECK(out.tables[0].values[0] == 2.0f);
  CHECK(ListKeys(out, "user_history") == std::vector<std::string>{"u1"});
  CHECK(Deleted(out).empty());
  CHECK(out.deleted_purchases.empty());
  CHECK(out.new_purchases.size() == 1);
}

TEST_CASE("SnapshotAccumulator: deletions survive a full snapshot merged after them",
          "[accumulator][expiry]") {
  // The store still holds what the deletions remove; a full snapshot
  // lists live rows only.
  SnapshotAccumulator acc;
  acc.Merge(Deletion({"gone", "back"}), false);
  acc.Merge(Rows({"back", "other"}, 3.0f), /*full=*/true);
  learner::ModelSnapshot out;
  bool full = false;
  acc.Take(&out, &full);
  CHECK(full);
  CHECK(Deleted(out) == std::vector<std::string>{"gone"});
  std::vector<std::string> keys = Keys(out, "user");
  std::sort(keys.begin(), keys.end());
  CHECK(keys == std::vector<std::string>{"back", "other"});
  // Taken: the next round starts empty.
  acc.Merge(Rows({"x"}, 1.0f), false);
  acc.Take(&out, &full);
  CHECK(Deleted(out).empty());
}

}  // namespace
}  // namespace recstream::store
