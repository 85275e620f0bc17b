#include "learner/model.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace recstream::learner {
namespace {

LearnerOptions Small() {
  LearnerOptions o;
  o.dim = 4;
  o.hidden = 4;
  return o;
}

TEST_CASE("Model: Rows keeps each user's features as its list, Gather sums them", "[model]") {
  Model m(Small());
  CHECK(m.width == 4 + kNumTasks);
  CHECK(m.table("user") == &m.users);
  CHECK(m.table("item_pretrained") == nullptr);  // pretrained vectors off
  CHECK(m.all_tables().size() == 4);
  const uint32_t u = m.users.GetOrCreate("u1");
  std::vector<uint32_t> rows;
  m.Rows(u, {"age=3", "city=x"}, m.users, m.user_features, m.user_lists, &rows);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] == u);
  // Later events without features use the stored list.
  std::vector<uint32_t> again;
  m.Rows(u, {}, m.users, m.user_features, m.user_lists, &again);
  CHECK(again == rows);
  std::vector<float> vec(4), bias(kNumTasks);
  m.Gather(m.users, m.user_features, rows, vec.data(), bias.data());
  for (int k = 0; k < 4; ++k) {
    const float want =
        m.users.Row(rows[0])[k] + m.user_features.Row(rows[1])[k] + m.user_features.Row(rows[2])[k];
    CHECK(vec[k] == want);
  }
  CHECK(m.PretrainedRow(0) == EmbeddingTable::kNoRow);
}

TEST_CASE("Model: the dense block and its optimizer state follow the options", "[model]") {
  LearnerOptions o = Small();
  Model adagrad(o);
  CHECK(adagrad.dense.size() == adagrad.shape.dense_size());
  CHECK(adagrad.dense_m.empty());
  o.dense_optimizer = Optimizer::kAdam;
  Model adam(o);
  CHECK(adam.adam());
  CHECK(adam.dense_m.size() == adam.dense.size());
  // FTRL rows carry z and n after the values.
  o.embedding_optimizer = Optimizer::kFtrl;
  Model ftrl(o);
  CHECK(ftrl.users.row_floats() == 3 * size_t(ftrl.width));
  const float* r = ftrl.users.Row(ftrl.users.GetOrCreate("u"));
  CHECK(r[2 * ftrl.width] == o.adagrad_init);            // n
  if (r[0] != 0.0f) CHECK(r[ftrl.width] * r[0] < 0.0f);  // z opposes the value
}

TEST_CASE(
    "Model: the popularity prior counts the window's newest quarter twice, and a restore "
    "rebuilds it",
    "[model]") {
  LearnerOptions o = Small();
  o.negative_window = 8;  // its newest quarter: the last 2 items
  Model m(o);
  REQUIRE(m.recent.size() == 8 * Model::kRingWindows);
  auto push = [&](Model& x, const std::string& id) {
    x.PushRecent(x.items.GetOrCreate(id), Model::IdHash(id));
  };
  // The window's count n + n'.
  auto count = [](const Model& x, const std::string& id) {
    const uint32_t h = Model::IdHash(id);
    return x.RecentCount(h).load() + x.QuarterCount(h).load();
  };
  for (const char* id : {"a", "a", "b", "c", "c", "d", "b", "b"}) push(m, id);
  // Window a a b c c d b b; newest quarter b b.
  CHECK(count(m, "a") == 2);
  CHECK(count(m, "b") == 5);
  CHECK(count(m, "c") == 2);
  CHECK(count(m, "d") == 1);
  push(m, "d");
  // Window a b c c d b b d; newest quarter b d: "d", seen as often as "a"
  // in the window but just now, ranks above it.
  CHECK(count(m, "a") == 1);
  CHECK(count(m, "b") == 4);
  CHECK(count(m, "d") == 3);
  push(m, "e");
  push(m, "e");
  // Window c c d b b d e e; newest quarter e e. "a" left the window, not the
  // ring.
  CHECK(count(m, "a") == 0);
  CHECK(count(m, "b") == 2);
  CHECK(count(m, "e") == 4);
  CHECK(m.LongCount(Model::IdHash("a")).load() == 2);
  CHECK(m.LongCount(Model::IdHash("b")).load() == 3);
  CHECK(m.recent_distinct.load() == 4);  // c d b e

  // The prior mixes the window's count with the ring's, by how much the
  // window repeats itself: w = 1 - 4 / 8, the ring's 11 entries scaled to
  // the window's 8 + 2.
  auto prior = [](const Model& x, const std::string& id) {
    return std::expm1(x.RecentPopularity(Model::IdHash(id)));
  };
  CHECK(prior(m, "a") == Approx(0.5 * 0 + 0.5 * 10.0 / 11 * 2).epsilon(1e-5));
  CHECK(prior(m, "b") == Approx(0.5 * 2 + 0.5 * 10.0 / 11 * 3).epsilon(1e-5));
  CHECK(prior(m, "e") == Approx(0.5 * 4 + 0.5 * 10.0 / 11 * 2).epsilon(1e-5));
  // Once the window holds no repeat, the window's count alone.
  for (const char* id : {"f", "g", "h", "i", "j", "k", "l", "m"}) push(m, id);
  CHECK(prior(m, "m") == Approx(2).epsilon(1e-6));
  CHECK(prior(m, "a") == 0);
  // After kRingWindows windows, entries leave the ring too.
  for (int i = 0; i < 8 * Model::kRingWindows; ++i) push(m, "z" + std::to_string(i % 5));
  CHECK(m.LongCount(Model::IdHash("a")).load() == 0);
  CHECK(m.LongCount(Model::IdHash("z0")).load() == 8 * Model::kRingWindows / 5 + 1);
  for (const char* id : {"a", "b", "c", "d", "e", "f"}) push(m, id);

  // A restore from the model's snapshots rebuilds every count: a full one,
  // then one with only the chunks written since.
  auto restore_check = [&](const Model& x, const Model& y) {
    for (const char* id : {"a", "b", "c", "d", "e", "f", "m", "z0", "z3"}) {
      const uint32_t h = Model::IdHash(id);
      CHECK(y.RecentCount(h).load() == x.RecentCount(h).load());
      CHECK(y.QuarterCount(h).load() == x.QuarterCount(h).load());
      CHECK(y.LongCount(h).load() == x.LongCount(h).load());
      CHECK(y.RecentPopularity(h) == x.RecentPopularity(h));
    }
    CHECK(y.recent_distinct.load() == x.recent_distinct.load());
    CHECK(y.recent_next.load() == x.recent_next.load());
    for (size_t i = 0; i < x.recent.size(); ++i)
      CHECK(uint32_t(y.recent[i].load()) == uint32_t(x.recent[i].load()));
  };
  // The ring as ExportSnapshot lists it: "next", then the chunks.
  auto lists = [](const Model& x, bool all, uint64_t from) {
    FeatureListDelta ring;
    ring.table = "negative_ring";
    ring.keys = {"next"};
    ring.features = {{std::to_string(x.recent_next.load()), std::to_string(x.recent.size())}};
    std::vector<std::string> names;
    for (size_t i = 0; i < x.recent.size(); ++i) {
      const uint64_t v = x.recent[i].load();
      names.push_back(v == Model::kNoEntry ? "" : std::string(x.items.key(uint32_t(v >> 32))));
    }
    for (uint64_t at = all ? 0 : from; at < x.recent_next.load(); ++at) {
      const std::string key = "chunk" + std::to_string(at % x.recent.size() / Model::kRingChunk);
      if (std::find(ring.keys.begin(), ring.keys.end(), key) != ring.keys.end()) continue;
      const size_t c = at % x.recent.size() / Model::kRingChunk;
      ring.keys.push_back(key);
      ring.features.emplace_back(
          names.begin() + c * Model::kRingChunk,
          names.begin() + std::min(names.size(), (c + 1) * Model::kRingChunk));
    }
    return ring;
  };
  Model restored(o);
  restored.SetRing(lists(m, true, 0));
  restore_check(m, restored);
  // Both go on alike.
  for (Model* x : {&m, &restored}) push(*x, "a");
  restore_check(m, restored);
  const uint64_t since = m.recent_next.load();
  for (const char* id : {"b", "b", "q"}) push(m, id);
  restored.SetRing(lists(m, false, since));
  restore_check(m, restored);

  // A ring stored whole by an older build (its next position, then one
  // window of slots) gives the same window.
  Model old_build(o), upgraded(o);
  std::vector<std::string> whole = {"11"};
  for (const char* id : {"j", "k", "c", "d", "e", "f", "g", "h"}) push(old_build, id);
  for (const char* id : {"a", "b", "c"}) push(old_build, id);
  // Positions 3..10 of an 8-slot ring: slot p % 8.
  for (const char* id : {"a", "b", "c", "d", "e", "f", "g", "h"}) whole.push_back(id);
  FeatureListDelta legacy;
  legacy.table = "negative_ring";
  legacy.keys = {"ring"};
  legacy.features = {whole};
  upgraded.SetRing(legacy);
  CHECK(upgraded.recent_next.load() == 11);
  for (const char* id : {"a", "b", "c", "d", "h"}) {
    const uint32_t h = Model::IdHash(id);
    CHECK(upgraded.RecentCount(h).load() == old_build.RecentCount(h).load());
    CHECK(upgraded.QuarterCount(h).load() == old_build.QuarterCount(h).load());
  }
  // The older ring knew only one window: the three oldest positions are
  // not in it.
  CHECK(upgraded.LongCount(Model::IdHash("j")).load() == 0);
}

TEST_CASE("Model: an item removed leaves the negative ring, and every count agrees with a recount",
          "[model]") {
  LearnerOptions o = Small();
  o.negative_window = 8;  // a ring of 8 windows
  Model m(o);
  auto push = [&](const std::string& id) {
    m.PushRecent(m.items.GetOrCreate(id), Model::IdHash(id));
  };
  for (int k = 0; k < 30; ++k) push(k % 3 == 0 ? "a" : "x" + std::to_string(k % 7));
  for (const char* id : {"a", "b", "a", "c", "a", "d", "a", "b"}) push(id);
  const uint32_t a = Model::IdHash("a");
  REQUIRE(m.RecentCount(a).load() == 4);
  REQUIRE(m.LongCount(a).load() == 14);
  m.RemoveRow(m.items, m.items.Find("a"), true);
  m.ScrubStep(1024);
  CHECK(m.RecentCount(a).load() == 0);
  CHECK(m.QuarterCount(a).load() == 0);
  CHECK(m.LongCount(a).load() == 0);
  for (const auto& e : m.recent) CHECK(uint32_t(e.load()) != a);
  // What the pushes and the removal kept up equals a count from scratch.
  auto state = [](const Model& x) {
    std::vector<uint32_t> v = {x.recent_distinct.load(), x.counted[0].load(), x.counted[1].load(),
                               x.counted[2].load()};
    for (const char* id : {"b", "c", "d", "x1", "x2", "x5"}) {
      const uint32_t h = Model::IdHash(id);
      v.insert(v.end(), {x.RecentCount(h).load(), x.QuarterCount(h).load(), x.LongCount(h).load()});
    }
    return v;
  };
  const std::vector<uint32_t> kept = state(m);
  CHECK(kept[0] == 3);  // b c d in the window
  CHECK(kept[1] == 4);  // the window's entries left: b c d b
  m.Recount();
  CHECK(state(m) == kept);
}

TEST_CASE("Model: a replica's ring, set from each snapshot's chunks, counts as the trainer's",
          "[model]") {
  LearnerOptions o = Small();
  o.negative_window = 512;  // a ring of 4,096 slots: 4 chunks
  Model m(o), replica(o);
  std::mt19937_64 rng(3);
  std::geometric_distribution<int> pick(0.02);
  std::vector<std::string> ids;
  for (int i = 0; i < 400; ++i) ids.push_back("i" + std::to_string(i));
  // The chunks written since position `from` (all of them for 0), as
  // ExportSnapshot lists them.
  auto lists = [&](uint64_t from) {
    FeatureListDelta ring;
    ring.table = "negative_ring";
    ring.keys = {"next"};
    ring.features = {{std::to_string(m.recent_next.load()), std::to_string(m.recent.size())}};
    std::set<size_t> chunks;
    for (uint64_t at = from; at < m.recent_next.load(); ++at)
      chunks.insert(at % m.recent.size() / Model::kRingChunk);
    for (size_t c : chunks) {
      ring.keys.push_back("chunk" + std::to_string(c));
      auto& names = ring.features.emplace_back();
      for (size_t i = c * Model::kRingChunk; i < (c + 1) * Model::kRingChunk; ++i) {
        const uint64_t v = m.recent[i].load();
        names.push_back(v == Model::kNoEntry ? "" : std::string(m.items.key(uint32_t(v >> 32))));
      }
    }
    return ring;
  };
  auto state = [&](Model& x) {
    std::vector<uint32_t> v = {x.recent_distinct.load(), x.counted[0].load(), x.counted[1].load(),
                               x.counted[2].load()};
    for (const std::string& id : ids) {
      const uint32_t h = Model::IdHash(id);
      v.insert(v.end(), {x.RecentCount(h).load(), x.QuarterCount(h).load(), x.LongCount(h).load()});
    }
    return v;
  };
  uint64_t exported = 0;
  for (int step : {300, 700, 1, 0, 2500, 4095, 5000, 900}) {
    for (int k = 0; k < step; ++k) {
      const std::string& id = ids[size_t(std::min(pick(rng), 399))];
      m.PushRecent(m.items.GetOrCreate(id), Model::IdHash(id));
    }
    FeatureListDelta delta = lists(exported);
    if (step == 900 && delta.keys.size() > 2) {
      // A version in two parts (a replica's bootstrap blocks may cut one):
      // "next" with its first chunk, then the other chunks.
      FeatureListDelta rest;
      rest.table = delta.table;
      rest.keys.assign(delta.keys.begin() + 2, delta.keys.end());
      rest.features.assign(delta.features.begin() + 2, delta.features.end());
      delta.keys.resize(2);
      delta.features.resize(2);
      replica.SetRing(delta);
      std::vector<uint32_t> between = state(replica);
      replica.Recount();
      CHECK(state(replica) == between);  // counted as the ring stands
      delta = std::move(rest);
    }
    replica.SetRing(delta);
    exported = m.recent_next.load();
    INFO("after " << exported << " pushes");
    const std::vector<uint32_t> got = state(replica);
    CHECK(got == state(m));
    // What the replica kept up equals a count from scratch.
    replica.Recount();
    CHECK(state(replica) == got);
  }
}

TEST_CASE(
    "Model: the history match starts with repeats at the negatives' margin and shared "
    "features summing to it, the latest heavier",
    "[model]") {
  LearnerOptions o = Small();
  o.history = 30;
  o.implicit_negatives = 8;
  Model m(o);
  const float margin = std::log(9.0f);
  for (int t = 0; t < kNumTasks; ++t) {
    const float* w = m.MatchWeights(t);
    float sum = 0;
    for (int p = 0; p < o.history; ++p) {
      CHECK(w[p] == margin);  // same item at any position
      sum += w[o.history + p];
      if (p > 0) CHECK(w[o.history + p] < w[o.history + p - 1]);
    }
    CHECK(sum == Approx(margin).epsilon(1e-5));
    // Halving every 5 positions.
    CHECK(w[o.history + 5] == Approx(w[o.history] / 2).epsilon(1e-5));
  }
}

}  // namespace
}  // namespace recstream::learner
