#include "learner/history.h"

#include <catch2/catch.hpp>
#include <vector>

namespace recstream::learner {
namespace {

std::vector<uint32_t> Items(const Histories& h, uint32_t user) {
  std::vector<uint32_t> out;
  h.Get(user, &out);
  return out;
}

std::vector<uint32_t> Dirty(Histories& h, bool all) {
  std::vector<uint32_t> out;
  h.ForEachDirtyRow(all, [&](uint32_t user) { out.push_back(user); });
  return out;
}

TEST_CASE("Histories keep each user's latest items, oldest first", "[Histories]") {
  Histories h(3);
  CHECK(Items(h, 7).empty());
  for (uint32_t item : {10u, 11u, 11u, 12u}) h.Push(7, item);
  // A repeat of the latest item adds nothing.
  CHECK(Items(h, 7) == std::vector<uint32_t>{10, 11, 12});
  h.Push(7, 13);  // full: the oldest drops out
  CHECK(Items(h, 7) == std::vector<uint32_t>{11, 12, 13});
  h.Push(7, 11);  // an older item again is the latest now
  CHECK(Items(h, 7) == std::vector<uint32_t>{12, 13, 11});
  // Users far apart live in other chunks; others are untouched.
  h.Push(1'000'000, 5);
  CHECK(Items(h, 1'000'000) == std::vector<uint32_t>{5});
  CHECK(Items(h, 8).empty());
}

TEST_CASE("Histories mark changed users and restore with Set", "[Histories]") {
  Histories h(4);
  h.Push(2, 1);
  h.Push(9, 1);
  CHECK(Dirty(h, false) == std::vector<uint32_t>{2, 9});
  CHECK(Dirty(h, false).empty());  // the marks were cleared
  h.Push(9, 1);                    // unchanged: not marked
  CHECK(Dirty(h, false).empty());
  CHECK(Dirty(h, true) == std::vector<uint32_t>{2, 9});  // every user with a history

  // Set keeps the last `capacity` items of a longer list, and the ring goes
  // on from there as if they had been pushed.
  Histories restored(4);
  const std::vector<uint32_t> long_list = {1, 2, 3, 4, 5, 6};
  restored.Set(3, long_list.data(), long_list.data() + long_list.size());
  CHECK(Items(restored, 3) == std::vector<uint32_t>{3, 4, 5, 6});
  restored.Push(3, 7);
  CHECK(Items(restored, 3) == std::vector<uint32_t>{4, 5, 6, 7});
  const std::vector<uint32_t> short_list = {8};
  restored.Set(3, short_list.data(), short_list.data() + 1);
  restored.Push(3, 9);
  CHECK(Items(restored, 3) == std::vector<uint32_t>{8, 9});
}

TEST_CASE("Histories of capacity 0 hold nothing", "[Histories]") {
  Histories h(0);
  h.Push(1, 2);
  CHECK(Items(h, 1).empty());
  CHECK(Dirty(h, true).empty());
}

}  // namespace
}  // namespace recstream::learner
