// Several trainers on one model (learner/sharing.h): the exchange of changes
// between owners and followers.
#include "learner/sharing.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "learner/learner.h"

namespace recstream::learner {
namespace {

std::vector<Event> Stream(int n, int users, int items, uint64_t seed, const std::string& prefix) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pu(0, users - 1), pi(0, items - 1);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::vector<Event> out;
  for (int i = 0; i < n; ++i) {
    const int u = pu(rng), it = pi(rng);
    Event e;
    e.user = prefix + std::to_string(u);
    e.item = "i" + std::to_string(it);
    e.user_features = {"ug=" + std::to_string(u % 4)};
    e.item_features = {"ig=" + std::to_string(it % 4)};
    const double p = (u % 4) == (it % 4) ? 0.8 : 0.2;
    if (unif(rng) < 0.7) {
      e.task = Task::kClick;
      e.label = unif(rng) < p ? 1.0f : 0.0f;
    } else {
      e.task = Task::kRating;
      e.label = float(1.0 + 4.0 * p);
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::unique_ptr<Learner> Make(int index, int count, int64_t expire_item_s = 0) {
  LearnerOptions o;
  o.dim = 8;
  o.hidden = 8;
  o.threads = 1;
  o.trainer_count = count;
  o.trainer_index = index;
  o.expire_item_s = expire_item_s;
  std::unique_ptr<Learner> l;
  REQUIRE(Learner::Create(o, &l).ok());
  return l;
}

// Every row of the shared tables, by table and id.
std::map<std::string, std::map<std::string, std::vector<float>>> SharedRows(Learner* l) {
  ModelSnapshot s;
  l->TakeSnapshot(true, &s);
  std::map<std::string, std::map<std::string, std::vector<float>>> out;
  for (const TableDelta& t : s.tables) {
    if (t.table == "user") continue;
    for (size_t i = 0; i < t.keys.size(); ++i)
      out[t.table][t.keys[i]].assign(t.values.data() + i * size_t(t.width),
                                     t.values.data() + (i + 1) * size_t(t.width));
  }
  return out;
}

// One exchange among `trainers`: changes to their owners, then every
// owner's rows to everyone else (nothing learned in between).
void Exchange(const std::vector<Learner*>& trainers) { REQUIRE(ExchangeDirectly(trainers).ok()); }

TEST_CASE("Ownership of shared rows is stable and spread over the trainers", "[sharing]") {
  std::vector<int> per(4, 0);
  for (int i = 0; i < 4000; ++i) {
    const std::string id = "item" + std::to_string(i);
    const int o = OwnerOf(id, 4);
    REQUIRE(o >= 0);
    REQUIRE(o < 4);
    CHECK(OwnerOf(id, 4) == o);
    ++per[size_t(o)];
  }
  for (int c : per) CHECK(c > 800);
  CHECK(OwnerOf("anything", 1) == 0);
  CHECK(OwnerOf("i7", 2) == OwnerOf("i7", 2));
}

TEST_CASE("An owner adds a follower's change exactly once, and both hold the same rows after",
          "[sharing]") {
  auto a = Make(0, 2), b = Make(1, 2);
  a->Train(Stream(3000, 50, 40, 1, "a"));
  b->Train(Stream(3000, 50, 40, 2, "b"));
  const auto before_a = SharedRows(a.get()), before_b = SharedRows(b.get());

  // Each item row after the exchange is its owner's value plus the other
  // trainer's whole change since the row's initial values.
  ModelChanges from_b;
  b->TakeChanges(&from_b);
  REQUIRE(from_b.rows() > 0);
  std::map<std::string, std::vector<float>> change_b;
  for (const TableDelta& t : from_b.tables)
    for (size_t i = 0; i < t.keys.size(); ++i)
      change_b[t.table + "/" + t.keys[i]].assign(t.values.data() + i * size_t(t.width),
                                                 t.values.data() + (i + 1) * size_t(t.width));
  std::vector<ModelChanges> split;
  SplitByOwner(from_b, 2, &split);
  REQUIRE(a->AddChanges(split[0]).ok());
  CHECK(a->Stats().shared_rows_added == split[0].rows());
  CHECK(a->Stats().shared_not_owned == 0);
  // Rows b owns are not a's to change.
  REQUIRE(a->AddChanges(split[1]).ok());
  CHECK(a->Stats().shared_not_owned == split[1].rows());

  const auto after_a = SharedRows(a.get());
  int checked = 0;
  for (const auto& [table, rows] : after_a) {
    for (const auto& [key, values] : rows) {
      if (OwnerOf(key, 2) != 0) continue;
      auto c = change_b.find(table + "/" + key);
      auto was = before_a.find(table);
      const bool had = was != before_a.end() && was->second.count(key);
      if (c == change_b.end()) {
        if (had) CHECK(values == was->second.at(key));
        continue;
      }
      REQUIRE(had);  // every item and feature appeared in both streams
      for (size_t k = 0; k < values.size(); ++k)
        REQUIRE(values[k] == was->second.at(key)[k] + c->second[k]);
      ++checked;
    }
  }
  CHECK(checked > 20);

  // The rest of the exchange: a's changes to b, then both follow.
  ModelChanges from_a;
  a->TakeChanges(&from_a);
  REQUIRE(from_a.rows() > 0);
  SplitByOwner(from_a, 2, &split);
  REQUIRE(b->AddChanges(split[1]).ok());
  ModelSnapshot pub_a, pub_b;
  ModelChanges none;
  a->TakeChanges(&none, &pub_a);
  b->TakeChanges(&none, &pub_b);
  REQUIRE(a->FollowOwners(pub_b).ok());
  REQUIRE(b->FollowOwners(pub_a).ok());
  // Quiet trainers hold the same shared rows, bit for bit, and the same
  // dense layers (b took a's as they were published).
  CHECK(SharedRows(a.get()) == SharedRows(b.get()));
  ModelSnapshot sa, sb;
  a->TakeSnapshot(true, &sa);
  b->TakeSnapshot(true, &sb);
  for (const auto& [name, values] : sa.dense) {
    if (name != "dense" && name != "history_match" && name != "history_gate" &&
        name != "tower_weight")
      continue;
    for (const auto& [n2, v2] : sb.dense)
      if (n2 == name) CHECK(v2 == values);
  }
  // A following copy sends only what it learned since.
  a->TakeChanges(&from_a);
  CHECK(from_a.rows() == 0);
  (void)before_b;
}

TEST_CASE("Two trainers that exchange learn an item's group as one trainer does", "[sharing]") {
  // Users of a learn only items 0-19, users of b only 20-39; the item rows
  // of the other half reach each through the exchange, so each scores the
  // other's items by their learned groups.
  auto a = Make(0, 2), b = Make(1, 2);
  auto lone_a = Make(0, 2), lone_b = Make(1, 2);  // never exchange
  auto one = Make(0, 1);                          // learns both streams
  std::vector<Event> sa = Stream(20000, 40, 20, 3, "a"), sb = Stream(20000, 40, 20, 4, "b");
  for (Event& e : sb) e.item = "i" + std::to_string(20 + std::stoi(e.item.substr(1)));
  for (size_t at = 0; at < sa.size(); at += 1000) {
    std::vector<Event> pa(sa.begin() + long(at), sa.begin() + long(at + 1000));
    std::vector<Event> pb(sb.begin() + long(at), sb.begin() + long(at + 1000));
    a->Train(pa);
    b->Train(pb);
    lone_a->Train(pa);
    lone_b->Train(pb);
    one->Train(pa);
    one->Train(pb);
    Exchange({a.get(), b.get()});
  }
  // a's user 0 (group 0) against b's items 20 (group 0) and 21 (group 1).
  auto gap = [](Learner* l) {
    return l->Score("a0", "i20", Blend()).prediction.click -
           l->Score("a0", "i21", Blend()).prediction.click;
  };
  CHECK(a->Score("a0", "i20", Blend()).item_known);
  INFO("one trainer " << gap(one.get()) << ", two " << gap(a.get()) << ", apart "
                      << gap(lone_a.get()));
  CHECK(gap(a.get()) > 0.8f * gap(one.get()));
  CHECK(std::abs(gap(lone_a.get())) < 0.05f);  // never saw those items learned
  CHECK(a->Stats().shared_rows_followed > 0);
  CHECK(b->Stats().shared_rows_sent > 0);
}

TEST_CASE("A trainer follows from each publisher only the rows it owns", "[sharing]") {
  // Trainer 2's version holds its own rows and its copies of rows 0 owns
  // (a whole snapshot): trainer 1 takes only the former, and no dense
  // block (trainer 0 owns those).
  auto t1 = Make(1, 3), t2 = Make(2, 3);
  t2->Train(Stream(2000, 20, 30, 8, "c"));
  ModelSnapshot version;
  t2->TakeSnapshot(true, &version);
  ModelSnapshot before1;
  t1->TakeSnapshot(true, &before1);
  REQUIRE(t1->FollowOwners(version, 2).ok());
  const auto rows1 = SharedRows(t1.get()), rows2 = SharedRows(t2.get());
  int taken = 0;
  for (const auto& [table, rows] : rows2) {
    for (const auto& [key, values] : rows) {
      const bool have = rows1.count(table) && rows1.at(table).count(key);
      if (OwnerOf(key, 3) == 2) {
        REQUIRE(have);
        CHECK(rows1.at(table).at(key) == values);
        ++taken;
      } else if (have) {
        // Created for an item list at most (initial values), never taken
        // from another's copy, which learned.
        CHECK(rows1.at(table).at(key) != values);
      }
    }
  }
  CHECK(taken > 5);
  ModelSnapshot after1;
  t1->TakeSnapshot(true, &after1);
  for (size_t i = 0; i < after1.dense.size(); ++i)
    if (after1.dense[i].first == "dense") CHECK(after1.dense[i].second == before1.dense[i].second);
}

TEST_CASE("A change that is not finite is refused by its owner", "[sharing]") {
  auto a = Make(0, 2), b = Make(1, 2);
  b->Train(Stream(500, 10, 10, 5, "b"));
  ModelChanges c;
  b->TakeChanges(&c);
  std::vector<ModelChanges> split;
  SplitByOwner(c, 2, &split);
  REQUIRE(split[0].rows() > 0);
  split[0].tables[0].values[0] = std::numeric_limits<float>::infinity();
  REQUIRE(a->AddChanges(split[0]).ok());
  CHECK(a->Stats().nonfinite_updates_refused == 1);
  CHECK(a->Stats().shared_rows_added == split[0].rows() - 1);
  for (const auto& [table, rows] : SharedRows(a.get()))
    for (const auto& [key, values] : rows)
      for (float v : values) REQUIRE(std::isfinite(v));
  // A table the learner does not share is refused whole.
  ModelChanges bad;
  bad.tables.push_back({"user", 1, {"x"}, {}});
  CHECK(a->AddChanges(bad).IsCorruption());
}

TEST_CASE("A restored follower sends nothing it sent before the checkpoint", "[sharing]") {
  auto b = Make(1, 2);
  b->Train(Stream(2000, 20, 20, 6, "b"));
  ModelChanges c;
  b->TakeChanges(&c);  // sent with the checkpoint below
  REQUIRE(c.rows() > 0);
  ModelSnapshot full;
  b->TakeSnapshot(true, &full);
  auto again = Make(1, 2);
  REQUIRE(again->ApplySnapshot(full).ok());
  again->TakeChanges(&c);
  CHECK(c.rows() == 0);
  // Dense changes are counted from the restored values too.
  for (const auto& [name, values] : c.dense)
    if (name == "dense")
      for (float v : values) REQUIRE(v == 0.0f);
  again->Train(Stream(200, 20, 20, 7, "b"));
  again->TakeChanges(&c);
  CHECK(c.rows() > 0);
}

TEST_CASE(
    "An owner publishes every row it changed since its last publish, whatever it sent between",
    "[sharing]") {
  // Takes that only send (no `owned`) between two publishes must not lose
  // the owner's changed rows, also when item rows expire and are made
  // again for ids of either owner.
  auto phase = [](uint64_t seed, const std::string& items, int64_t ts_s) {
    std::vector<Event> s = Stream(3000, 30, 40, seed, "u");
    for (Event& e : s) {
      e.item = items + e.item.substr(1);
      e.ts_ms = ts_s * 1000;
    }
    return s;
  };
  auto often = Make(0, 2, 100), once = Make(0, 2, 100);
  ModelChanges sent;
  ModelSnapshot published_often, published_once;
  auto sends_only_theirs = [&] {
    often->TakeChanges(&sent);
    for (const TableDelta& t : sent.tables)
      for (const std::string& key : t.keys) REQUIRE(OwnerOf(key, 2) == 1);
  };
  for (Learner* l : {often.get(), once.get()}) l->Train(phase(1, "i", 1000));
  sends_only_theirs();
  // In batches with checkpoints between, as the service learns: the
  // expired rows go to new ids once histories no longer refer to them.
  ModelSnapshot checkpoint;
  for (const auto& [seed, items] : {std::pair<uint64_t, std::string>{2, "j"}, {3, "k"}}) {
    const std::vector<Event> events = phase(seed, items, 2000);
    for (size_t at = 0; at < events.size(); at += 300) {
      const std::vector<Event> batch(events.begin() + long(at), events.begin() + long(at + 300));
      for (Learner* l : {often.get(), once.get()}) {
        l->Train(batch);
        l->TakeSnapshot(false, &checkpoint);
      }
      sends_only_theirs();
    }
  }
  CHECK(often->Stats().expired_items > 0);
  often->TakeChanges(&sent, &published_often);
  once->TakeChanges(&sent, &published_once);
  auto rows = [](const ModelSnapshot& s) {
    std::map<std::string, std::vector<float>> out;
    for (const TableDelta& t : s.tables)
      for (size_t i = 0; i < t.keys.size(); ++i) {
        CHECK(OwnerOf(t.keys[i], 2) == 0);
        out[t.table + "/" + t.keys[i]].assign(t.values.data() + i * size_t(t.width),
                                              t.values.data() + (i + 1) * size_t(t.width));
      }
    return out;
  };
  const auto a = rows(published_often), b = rows(published_once);
  CHECK(a.size() > 20);
  CHECK(a == b);
  for (const auto& [key, values] : b) CHECK(key.find("item/i") != 0);  // expired
}

TEST_CASE("The items one trainer adds to its negative ring reach the other's, in lists of bounded size",
          "[sharing]") {
  // Positive-only clicks (implicit feedback): every learned item enters the
  // learner's ring of recent items.
  std::vector<Event> events;
  for (int i = 0; i < 5000; ++i) {
    Event e;
    e.user = "u" + std::to_string(i % 50);
    e.item = "ring-item-" + std::to_string(i);
    e.task = Task::kClick;
    e.label = 1.0f;
    events.push_back(std::move(e));
  }
  auto a = Make(0, 2), b = Make(1, 2);
  b->Train(events);
  ModelChanges changes;
  b->TakeChanges(&changes);
  const FeatureListDelta* adds = nullptr;
  for (const FeatureListDelta& l : changes.feature_lists)
    if (l.table == kRingAdds) adds = &l;
  REQUIRE(adds != nullptr);
  size_t items = 0;
  REQUIRE(adds->keys.size() == adds->features.size());
  CHECK(adds->keys.size() >= 3);  // 5,000 items in lists of at most 2,048
  for (size_t i = 0; i < adds->keys.size(); ++i) {
    CHECK(adds->keys[i] == "ring" + std::to_string(i));
    CHECK(adds->features[i].size() <= 2048);
    items += adds->features[i].size();
  }
  CHECK(items == 5000);
  CHECK(adds->features.back().back() == "ring-item-4999");  // oldest first

  REQUIRE(a->AddChanges(changes).ok());
  ModelSnapshot s;
  a->TakeSnapshot(true, &s);
  std::set<std::string> ring;
  for (const FeatureListDelta& l : s.feature_lists)
    if (l.table == "negative_ring")
      for (const auto& list : l.features) ring.insert(list.begin(), list.end());
  CHECK(ring.count("ring-item-0") == 1);
  CHECK(ring.count("ring-item-2500") == 1);
  CHECK(ring.count("ring-item-4999") == 1);
}

}  // namespace
}  // namespace recstream::learner
