#include "learner/learner.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "learner/model_math.h"

namespace recstream::learner {
namespace {

// A small stream with latent structure: users like items whose factor
// matches theirs.
std::vector<Event> MakeStream(int n, int users, int items, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0.0, 0.3);
  std::uniform_int_distribution<int> pick_user(0, users - 1), pick_item(0, items - 1);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::vector<Event> out;
  for (int i = 0; i < n; ++i) {
    int u = pick_user(rng), it = pick_item(rng);
    double affinity = ((u % 4) == (it % 4)) ? 1.5 : -1.5;
    Event e;
    e.user = "u" + std::to_string(u);
    e.item = "i" + std::to_string(it);
    double r = unif(rng);
    if (r < 0.6) {
      e.task = Task::kClick;
      e.label = unif(rng) < 1.0 / (1.0 + std::exp(-affinity)) ? 1.0f : 0.0f;
    } else if (r < 0.7) {
      e.task = Task::kPurchase;
      e.label = unif(rng) < 1.0 / (1.0 + std::exp(-(affinity - 1.0))) ? 1.0f : 0.0f;
    } else {
      e.task = Task::kRating;
      e.label = float(std::clamp(3.0 + affinity + noise(rng), 1.0, 5.0));
    }
    out.push_back(std::move(e));
  }
  return out;
}

// MakeStream with side features: each user carries "ug=<u%4>" and each item
// "ig=<i%4>", the groups that decide the affinity.
std::vector<Event> WithFeatures(std::vector<Event> events) {
  for (Event& e : events) {
    e.user_features = {"ug=" + std::to_string(std::stoi(e.user.substr(1)) % 4)};
    e.item_features = {"ig=" + std::to_string(std::stoi(e.item.substr(1)) % 4)};
  }
  return events;
}

std::unique_ptr<Learner> MakeLearner(LearnerOptions o = {}) {
  std::unique_ptr<Learner> l;
  REQUIRE(Learner::Create(o, &l).ok());
  return l;
}

bool AllScoresEqual(const Learner& a, const Learner& b, int users, int items) {
  Blend blend;
  for (int u = 0; u < users; ++u)
    for (int i = 0; i < items; ++i) {
      auto sa = a.Score("u" + std::to_string(u), "i" + std::to_string(i), blend);
      auto sb = b.Score("u" + std::to_string(u), "i" + std::to_string(i), blend);
      if (sa.prediction.click != sb.prediction.click ||
          sa.prediction.purchase != sb.prediction.purchase ||
          sa.prediction.rating != sb.prediction.rating || sa.score != sb.score)
        return false;
    }
  return true;
}

}  // namespace

TEST_CASE("Learner rejects bad options naming the field", "[Learner]") {
  LearnerOptions o;
  o.dim = 0;
  std::unique_ptr<Learner> l;
  Status s = Learner::Create(o, &l);
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("model.dim") != std::string::npos);
  o = LearnerOptions();
  o.rating_min = 5;
  o.rating_max = 1;
  CHECK(Learner::Create(o, &l).IsInvalidArgument());
}

TEST_CASE("ParallelFor runs every index once, on Train's threads", "[Learner]") {
  const int threads = GENERATE(1, 2);
  LearnerOptions o;
  o.threads = threads;
  std::unique_ptr<Learner> learner;
  REQUIRE(Learner::Create(o, &learner).ok());
  for (size_t n : {size_t(0), size_t(1), size_t(100), size_t(10000)}) {
    std::vector<std::atomic<int>> hits(n);
    std::mutex mu;
    std::set<std::thread::id> ids;
    learner->ParallelFor(n, 64, [&](size_t begin, size_t end) {
      REQUIRE(begin < end);
      REQUIRE(end <= n);
      for (size_t i = begin; i < end; ++i) hits[i].fetch_add(1);
      std::lock_guard lock(mu);
      ids.insert(std::this_thread::get_id());
    });
    size_t once = 0;
    for (auto& h : hits) once += h.load() == 1;
    CHECK(once == n);
    CHECK(ids.size() <= size_t(threads));
  }
}

TEST_CASE("Repeated clicks raise that item's click score above a control item's", "[Learner]") {
  auto l = MakeLearner();
  std::vector<Event> events;
  for (int i = 0; i < 50; ++i) {
    events.push_back(Event{Task::kClick, "alice", "liked", 1.0f});
    events.push_back(Event{Task::kClick, "alice", "control", 0.0f});
  }
  l->Train(events);
  Blend blend;
  auto liked = l->Score("alice", "liked", blend);
  auto control = l->Score("alice", "control", blend);
  CHECK(liked.prediction.click > control.prediction.click + 0.3f);
  CHECK(liked.user_known);
  CHECK(liked.item_known);
  auto unknown = l->Score("nobody", "nothing", blend);
  CHECK_FALSE(unknown.user_known);
  CHECK_FALSE(unknown.item_known);
  CHECK(std::isfinite(unknown.score));
  CHECK(l->Stats().tasks[0].learned == 100);
}

TEST_CASE("Rating head learns user and item biases", "[Learner]") {
  auto l = MakeLearner();
  std::vector<Event> events;
  for (int i = 0; i < 300; ++i) {
    events.push_back(Event{Task::kRating, "generous", "movie" + std::to_string(i % 5), 5.0f});
    events.push_back(Event{Task::kRating, "harsh", "movie" + std::to_string(i % 5), 1.5f});
  }
  l->Train(events);
  Blend blend;
  float g = l->Score("generous", "movie1", blend).prediction.rating;
  float h = l->Score("harsh", "movie1", blend).prediction.rating;
  CHECK(g > 4.3f);
  CHECK(h < 2.2f);
  auto stats = l->Stats();
  CHECK(stats.tasks[2].learned == 600);
  CHECK(stats.tasks[2].mae > 0.0);
}

TEST_CASE("Learner learns latent structure, single- and multi-threaded, every arch and weighting",
          "[Learner]") {
  auto stream = MakeStream(60000, 200, 100, 11);
  for (Arch arch : {Arch::kSharedBottom, Arch::kMmoe})
    for (Weighting w :
         {Weighting::kFixed, Weighting::kUncertainty, Weighting::kGradNorm, Weighting::kDwa})
      for (int threads : {1, 2}) {
        LearnerOptions o;
        o.arch = arch;
        o.weighting = w;
        o.threads = threads;
        auto l = MakeLearner(o);
        for (size_t b = 0; b < stream.size(); b += 4096)
          l->Train(std::span(stream).subspan(b, std::min<size_t>(4096, stream.size() - b)));
        auto s = l->Stats();
        INFO("arch " << ArchName(arch) << " weighting " << WeightingName(w) << " threads "
                     << threads);
        CHECK(s.tasks[0].auc > 0.72);
        CHECK(s.tasks[2].mae < 0.9);
        for (const auto& t : s.tasks) {
          CHECK(std::isfinite(t.loss_weight));
          CHECK(t.loss_weight > 0.0);
        }
        CHECK(s.tasks[0].learned + s.tasks[1].learned + s.tasks[2].learned == stream.size());
        CHECK(s.users == 200);
        CHECK(s.items == 100);
      }
}

TEST_CASE("Uncertainty weighting moves weights away from 1", "[Learner]") {
  auto l = MakeLearner();
  auto stream = MakeStream(20000, 100, 50, 3);
  l->Train(stream);
  auto s = l->Stats();
  CHECK(s.tasks[1].loss_weight != Approx(1.0).margin(0.05));
}

TEST_CASE("Progressive predictions come before learning", "[Learner]") {
  LearnerOptions o;
  o.threads = 1;
  o.feedback = Feedback::kExplicit;  // one item: nothing to rank it against
  auto l = MakeLearner(o);
  std::vector<Event> events(200, Event{Task::kClick, "u", "i", 1.0f});
  std::vector<Prediction> before;
  l->Train(events, &before);
  REQUIRE(before.size() == 200);
  CHECK(before[0].click == Approx(0.5f).margin(0.1));
  CHECK(before[199].click > before[0].click);
  CHECK(before[199].click < l->Score("u", "i", Blend()).prediction.click + 1e-6f);
}

// A positive-only log (views only, as shops send them): 20 categories of
// 10 items each; in every category the first items are the most viewed.
// Each user views a few items of one category.
std::vector<Event> PositiveOnlyLog(int users, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> category(0, 19);
  std::geometric_distribution<int> rank(0.35);
  std::vector<Event> events;
  for (int u = 0; u < users; ++u) {
    const int c = category(rng);
    for (int k = 0; k < 5; ++k) {
      const int j = std::min(rank(rng), 9);
      Event e{Task::kClick, "u" + std::to_string(u),
              "c" + std::to_string(c) + "_" + std::to_string(j), 1.0f};
      e.item_features = {"cat=" + std::to_string(c)};
      events.push_back(std::move(e));
    }
  }
  std::shuffle(events.begin(), events.end(), rng);
  return events;
}

TEST_CASE("A model applied in parts (pages, blocks) keeps implicit feedback", "[Learner][implicit]") {
  // A replica gets a big model in parts: the dense blocks (with the
  // feedback state) in one, rows and lists in others. A part without dense
  // blocks must not turn implicit tasks explicit.
  auto l = MakeLearner();
  const std::vector<Event> log = PositiveOnlyLog(2000, 5);
  for (size_t b = 0; b < log.size(); b += 500) l->Train(std::span(log).subspan(b, 500));
  ModelSnapshot whole;
  l->TakeSnapshot(true, &whole);
  ModelSnapshot dense_part = whole, rows_part;
  dense_part.tables.clear();
  dense_part.feature_lists.clear();
  dense_part.new_purchases.clear();
  rows_part.shape = whole.shape;
  rows_part.learned = whole.learned;
  rows_part.tables = whole.tables;
  rows_part.feature_lists = whole.feature_lists;
  rows_part.new_purchases = whole.new_purchases;
  auto parts = MakeLearner();
  REQUIRE(parts->ApplySnapshot(dense_part).ok());
  REQUIRE(parts->ApplySnapshot(rows_part).ok());
  auto at_once = MakeLearner();
  REQUIRE(at_once->ApplySnapshot(whole).ok());
  Blend blend;
  for (const Event& e : std::span(log).subspan(0, 50)) {
    const auto a = parts->Score(e.user, e.item, blend), b = at_once->Score(e.user, e.item, blend),
               c = l->Score(e.user, e.item, blend);
    CHECK(a.prediction.click == b.prediction.click);
    CHECK(a.prediction.click == c.prediction.click);
  }
}

TEST_CASE("Positive-only logs learn as implicit feedback: histories and popularity",
          "[Learner][implicit]") {
  LearnerOptions o;
  o.threads = GENERATE(1, 2);
  auto l = MakeLearner(o);
  const std::vector<Event> log = PositiveOnlyLog(3000, 3);
  // In batches, as the service learns polls (the items drawn as negatives
  // are those of earlier batches).
  for (int pass = 0; pass < 2; ++pass)
    for (size_t b = 0; b < log.size(); b += 500) l->Train(std::span(log).subspan(b, 500));
  // No label 0 ever came: the click task is implicit, and its loss weight
  // did not run away.
  CHECK(l->Stats().tasks[0].loss_weight == Approx(1.0));
  // A user seen once, viewing an item of category 7: the user's history
  // lifts category 7 in every recommendation slot but a few.
  Event once{Task::kClick, "fresh", "c7_4", 1.0f};
  once.item_features = {"cat=7"};
  l->Train(std::vector<Event>{once});
  int same = 0;
  for (const Recommendation& r : l->Recommend("fresh", 10, true, Blend()))
    same += r.item.rfind("c7_", 0) == 0;
  CHECK(same >= 7);
  // A user never seen gets popular items: each category's first items.
  int popular = 0;
  for (const Recommendation& r : l->Recommend("nobody", 10, true, Blend()))
    popular += r.item.back() == '0' || r.item.back() == '1';
  CHECK(popular >= 8);
  // A new item scores from its category's embedding (request-time
  // features): for the fresh user, a new item of category 7 beats one of
  // another category.
  const std::vector<std::string> cat7 = {"cat=7"}, cat8 = {"cat=8"};
  CHECK(l->Score("fresh", "brand_new", Blend(), nullptr, &cat7).prediction.click >
        l->Score("fresh", "brand_new", Blend(), nullptr, &cat8).prediction.click);
}

TEST_CASE("Histories survive a restore bit for bit, also with another model.history",
          "[Learner][implicit]") {
  LearnerOptions o;
  o.threads = 1;
  auto l = MakeLearner(o);
  const std::vector<Event> log = PositiveOnlyLog(400, 6);
  l->Train(std::span(log).first(1000));
  ModelSnapshot full;
  l->TakeSnapshot(true, &full);
  l->Train(std::span(log).subspan(1000));
  ModelSnapshot delta;
  l->TakeSnapshot(false, &delta);
  auto restored = MakeLearner(o);
  REQUIRE(restored->ApplySnapshot(full).ok());
  REQUIRE(restored->ApplySnapshot(delta).ok());
  auto same = [](const Learner& a, const Learner& b) {
    for (int u = 0; u < 400; u += 7) {
      const std::string user = "u" + std::to_string(u);
      const auto ra = a.Recommend(user, 5, false, Blend());
      const auto rb = b.Recommend(user, 5, false, Blend());
      if (ra.size() != rb.size()) return false;
      for (size_t i = 0; i < ra.size(); ++i)
        if (ra[i].item != rb[i].item || ra[i].score != rb[i].score) return false;
    }
    return true;
  };
  CHECK(same(*l, *restored));
  // Both learn on alike (the negative ring and its draws are restored too).
  const std::vector<Event> more = PositiveOnlyLog(400, 7);
  l->Train(more);
  restored->Train(more);
  CHECK(same(*l, *restored));
  // A shorter history after a restart: the latest items and the weights of
  // their positions are kept.
  LearnerOptions shorter = o;
  shorter.history = 4;
  auto short_model = MakeLearner(shorter);
  REQUIRE(short_model->ApplySnapshot(full).ok());
  REQUIRE(short_model->ApplySnapshot(delta).ok());
  // A longer one: the positions the stored model had keep their learned
  // weights, the others start as a new model's do (not at 0).
  LearnerOptions longer = o;
  longer.history = o.history + 10;
  auto long_model = MakeLearner(longer), fresh = MakeLearner(longer);
  REQUIRE(long_model->ApplySnapshot(full).ok());
  auto match = [](const ModelSnapshot& s) {
    for (auto& [name, values] : s.dense)
      if (name == "history_match") return values;
    return std::vector<float>();
  };
  ModelSnapshot long_snap, fresh_snap;
  long_model->TakeSnapshot(true, &long_snap);
  fresh->TakeSnapshot(true, &fresh_snap);
  const std::vector<float> stored = match(full), now = match(long_snap), start = match(fresh_snap);
  const size_t was = size_t(o.history), h = size_t(longer.history);
  REQUIRE(now.size() == 4 * size_t(kNumTasks) * h);
  for (size_t block = 0; block < 2 * size_t(kNumTasks); ++block)  // the weights' blocks
    for (size_t p = 0; p < h; ++p)
      CHECK(now[block * h + p] == (p < was ? stored[block * was + p] : start[block * h + p]));
}

// Every `stride`-th event of `log` (of the first `count`) gets the same
// click score from both learners, bit for bit.
void CheckSameClicks(const Learner& a, const Learner& b, const std::vector<Event>& log,
                     size_t stride, size_t count = SIZE_MAX) {
  const Blend blend;
  for (size_t i = 0; i < std::min(count, log.size()); i += stride)
    CHECK(a.Score(log[i].user, log[i].item, blend).prediction.click ==
          b.Score(log[i].user, log[i].item, blend).prediction.click);
}

TEST_CASE("A replica that applies each snapshot scores implicit tasks as the trainer does",
          "[Learner][implicit]") {
  // The negative ring spans several chunks and wraps: each snapshot holds
  // only the chunks written since the one before, and the popularity prior
  // (counts over the window and the whole ring) must come out the same.
  LearnerOptions o;
  o.threads = 1;
  o.negative_window = 400;  // a ring of 3,200 slots: 4 chunks
  auto l = MakeLearner(o), replica = MakeLearner(o);
  const std::vector<Event> log = PositiveOnlyLog(1500, 8);
  REQUIRE(log.size() > 2 * 400 * 8);
  size_t snapshots = 0, ring_chunks = 0;
  for (size_t b = 0; b < log.size(); b += 300) {
    l->Train(std::span(log).subspan(b, std::min<size_t>(300, log.size() - b)));
    ModelSnapshot delta;
    l->TakeSnapshot(b == 0, &delta);
    for (const FeatureListDelta& d : delta.feature_lists)
      if (d.table == "negative_ring") ring_chunks += d.keys.size() - 1;
    ++snapshots;
    if (b != 0) {
      REQUIRE(replica->ApplySnapshot(delta).ok());
      continue;
    }
    // The first, as a replica may get a big model: in parts, the ring's
    // chunks before its "next" (pages are in key order).
    ModelSnapshot chunks = delta, next;
    next.shape = delta.shape;
    next.learned = delta.learned;
    for (FeatureListDelta& d : chunks.feature_lists) {
      if (d.table != "negative_ring") continue;
      REQUIRE(d.keys[0] == "next");
      FeatureListDelta& n = next.feature_lists.emplace_back();
      n.table = d.table;
      n.keys.assign(1, d.keys[0]);
      n.features.assign(1, d.features[0]);
      d.keys.erase(d.keys.begin());
      d.features.erase(d.features.begin());
    }
    REQUIRE(next.feature_lists.size() == 1);
    REQUIRE(replica->ApplySnapshot(chunks).ok());
    REQUIRE(replica->ApplySnapshot(next).ok());
    CheckSameClicks(*l, *replica, log, 7, 300);
  }
  // Fewer chunks than a whole ring per snapshot.
  CHECK(ring_chunks < snapshots * 4);
  CheckSameClicks(*l, *replica, log, 37);
  // And they learn on alike: the ring's draws are the same.
  const std::vector<Event> more = PositiveOnlyLog(300, 9);
  l->Train(more);
  replica->Train(more);
  CheckSameClicks(*l, *replica, more, 11);
}

TEST_CASE("A streaming restore may hand the negative ring over in blocks, on several threads",
          "[Learner][implicit]") {
  LearnerOptions o;
  o.threads = 1;
  o.negative_window = 400;  // a ring of 3,200 slots: 4 chunks
  auto l = MakeLearner(o);
  const std::vector<Event> log = PositiveOnlyLog(1500, 10);
  for (size_t b = 0; b < log.size(); b += 500)
    l->Train(std::span(log).subspan(b, std::min<size_t>(500, log.size() - b)));
  ModelSnapshot full;
  l->TakeSnapshot(true, &full);
  auto restored = MakeLearner(o);
  for (const TableDelta& t : full.tables) REQUIRE(restored->ApplyRows(t).ok());
  std::vector<FeatureListDelta> blocks;
  for (const FeatureListDelta& d : full.feature_lists) {
    if (d.table != "negative_ring") {
      blocks.push_back(d);
      continue;
    }
    // One block per key ("next" last, as the store's key order has it).
    REQUIRE(d.keys.size() == 5);
    for (size_t i = 0; i < d.keys.size(); ++i) {
      FeatureListDelta& b = blocks.emplace_back();
      b.table = d.table;
      b.keys = {d.keys[(i + 1) % d.keys.size()]};
      b.features = {d.features[(i + 1) % d.keys.size()]};
    }
  }
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (const FeatureListDelta& b : blocks)
    threads.emplace_back([&, b] { failed += !restored->ApplyLists(b).ok(); });
  for (std::thread& t : threads) t.join();
  REQUIRE(failed.load() == 0);
  ModelSnapshot rest = full;
  rest.tables.clear();
  rest.feature_lists.clear();
  REQUIRE(restored->ApplySnapshot(rest).ok());
  CheckSameClicks(*l, *restored, log, 29);
}

TEST_CASE("A model written before own items had tower weights of their own restores as it was",
          "[Learner][implicit]") {
  // Older builds wrote one set of tower weights (and accumulators) for
  // every candidate; now items of the user's history have a set of their
  // own. An old block must restore with both sets from it: the model then
  // scores as the old build did.
  LearnerOptions o;
  o.threads = 1;
  auto l = MakeLearner(o);
  const std::vector<Event> log = PositiveOnlyLog(400, 6);
  // In batches: the items drawn as negatives are those of earlier ones.
  for (int pass = 0; pass < 2; ++pass)
    for (size_t b = 0; b < log.size(); b += 500) l->Train(std::span(log).subspan(b, 500));
  ModelSnapshot snap;
  l->TakeSnapshot(true, &snap);
  auto block = std::find_if(snap.dense.begin(), snap.dense.end(),
                            [](const auto& b) { return b.first == "tower_weight"; });
  REQUIRE(block != snap.dense.end());
  const size_t set = size_t(kNumTasks) * 5;  // tasks x history-length buckets
  REQUIRE(block->second.size() == 4 * set);
  // The sets learned apart on this stream of repeats.
  CHECK(
      !std::equal(block->second.begin(), block->second.begin() + set, block->second.begin() + set));
  // The old layout: the weights for items new to the user, their
  // accumulators; and the same written out in the new one.
  std::vector<float> old_layout(block->second.begin(), block->second.begin() + set);
  old_layout.insert(old_layout.end(), block->second.begin() + 2 * set,
                    block->second.begin() + 3 * set);
  std::vector<float> wide = old_layout;
  wide.insert(wide.begin() + set, old_layout.begin(), old_layout.begin() + set);
  wide.insert(wide.end(), old_layout.begin() + set, old_layout.end());
  ModelSnapshot old_snap = snap, wide_snap = snap;
  for (auto* s : {&old_snap, &wide_snap})
    for (auto& [name, values] : s->dense)
      if (name == "tower_weight") values = s == &old_snap ? old_layout : wide;
  auto from_old = MakeLearner(o), from_wide = MakeLearner(o);
  REQUIRE(from_old->ApplySnapshot(old_snap).ok());
  REQUIRE(from_wide->ApplySnapshot(wide_snap).ok());
  ModelSnapshot again;
  from_old->TakeSnapshot(true, &again);
  for (const auto& [name, values] : again.dense)
    if (name == "tower_weight") CHECK(values == wide);
  for (int u = 0; u < 400; u += 13) {
    const std::string user = "u" + std::to_string(u);
    const auto a = from_old->Recommend(user, 5, false, Blend());
    const auto b = from_wide->Recommend(user, 5, false, Blend());
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].item == b[i].item);
      CHECK(a[i].score == b[i].score);
    }
  }
  // A block of any other size is refused.
  for (auto& [name, values] : old_snap.dense)
    if (name == "tower_weight") values.resize(3 * set);
  CHECK(!MakeLearner(o)->ApplySnapshot(old_snap).ok());
}

TEST_CASE("A task that receives a label 0 switches to explicit learning", "[Learner][implicit]") {
  LearnerOptions o;
  o.threads = 1;
  auto l = MakeLearner(o);
  l->Train(PositiveOnlyLog(200, 4));
  // Implicit: predictions are the two towers' scores, shifted so that a
  // typical item scores near 0.5 (Model::implicit_shift): even a user's
  // best items stay apart instead of rounding to 1.
  CHECK(l->Stats().tasks[0].implicit);
  for (const Recommendation& r : l->Recommend("u3", 10, false, Blend()))
    CHECK(r.prediction.click < 0.9999f);
  Event negative{Task::kClick, "u1", "c3_2", 0.0f};
  std::vector<Event> more = PositiveOnlyLog(200, 5);
  more.insert(more.begin(), negative);
  l->Train(more);
  // Explicit from then on: the head has learned (mostly label 1 now).
  CHECK_FALSE(l->Stats().tasks[0].implicit);
  CHECK(l->Score("nobody", "nothing", Blend()).prediction.click > 0.55f);
  // And it stays explicit after a snapshot and restore.
  ModelSnapshot snap;
  l->TakeSnapshot(true, &snap);
  auto restored = MakeLearner(o);
  REQUIRE(restored->ApplySnapshot(snap).ok());
  for (const std::string user : {"u1", "u7", "nobody"}) {
    const auto a = l->Recommend(user, 5, false, Blend());
    const auto b = restored->Recommend(user, 5, false, Blend());
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].item == b[i].item);
      CHECK(a[i].score == b[i].score);
    }
  }
}

TEST_CASE("Recommend ranks over known items and leaves out purchases", "[Learner]") {
  auto l = MakeLearner();
  std::vector<Event> events;
  for (int i = 0; i < 100; ++i) {
    events.push_back(Event{Task::kClick, "u", "good", 1.0f});
    events.push_back(Event{Task::kClick, "u", "bought", 1.0f});
    events.push_back(Event{Task::kClick, "u", "bad", 0.0f});
  }
  events.push_back(Event{Task::kPurchase, "u", "bought", 1.0f});
  l->Train(events);
  auto recs = l->Recommend("u", 10, true, Blend());
  REQUIRE(recs.size() == 2);
  CHECK(recs[0].item == "good");
  CHECK(recs[1].item == "bad");
  CHECK(recs[0].score >= recs[1].score);
  auto all = l->Recommend("u", 10, false, Blend());
  CHECK(all.size() == 3);
  CHECK(l->Recommend("u", 1, false, Blend()).size() == 1);
}

TEST_CASE("ScoreMany agrees with Score", "[Learner]") {
  auto l = MakeLearner();
  l->Train(MakeStream(5000, 20, 20, 5));
  std::vector<std::string> items = {"i1", "i2", "unknown", "i3"};
  std::vector<ScoreResult> many;
  l->ScoreMany("u1", items, Blend(), &many);
  REQUIRE(many.size() == 4);
  for (size_t i = 0; i < items.size(); ++i) {
    auto one = l->Score("u1", items[i], Blend());
    CHECK(many[i].score == one.score);
    CHECK(many[i].item_known == one.item_known);
  }
  CHECK_FALSE(many[2].item_known);
}

TEST_CASE("Snapshots restore the model bit for bit", "[Learner]") {
  LearnerOptions o;
  o.threads = 1;
  o.arch = GENERATE(Arch::kSharedBottom, Arch::kMmoe);
  auto stream = MakeStream(20000, 30, 30, 9);
  auto original = MakeLearner(o);
  original->Train(std::span(stream).first(10000));
  ModelSnapshot full;
  original->TakeSnapshot(true, &full);
  CHECK(full.rows() == 60);
  original->Train(std::span(stream).subspan(10000));
  ModelSnapshot delta;
  original->TakeSnapshot(false, &delta);
  CHECK(delta.rows() > 0);

  auto restored = MakeLearner(o);
  REQUIRE(restored->ApplySnapshot(full).ok());
  REQUIRE(restored->ApplySnapshot(delta).ok());
  CHECK(AllScoresEqual(*original, *restored, 30, 30));
  CHECK(restored->Stats().tasks[0].learned == original->Stats().tasks[0].learned);
  CHECK(restored->Stats().tasks[0].auc == original->Stats().tasks[0].auc);

  // Training both further keeps them identical (optimizer state restored).
  auto more = MakeStream(2000, 30, 30, 10);
  original->Train(more);
  restored->Train(more);
  CHECK(AllScoresEqual(*original, *restored, 30, 30));

  // Nothing changed since the last snapshot: an empty delta.
  ModelSnapshot none, none2;
  restored->TakeSnapshot(false, &none);
  restored->TakeSnapshot(false, &none2);
  CHECK(none2.rows() == 0);
}

// Each row of a snapshot by table and id.
std::map<std::pair<std::string, std::string>, std::vector<float>> RowsOf(const ModelSnapshot& s) {
  std::map<std::pair<std::string, std::string>, std::vector<float>> out;
  for (const TableDelta& t : s.tables)
    for (size_t i = 0; i < t.keys.size(); ++i)
      out[{t.table, t.keys[i]}].assign(t.values.begin() + i * t.width,
                                       t.values.begin() + (i + 1) * t.width);
  return out;
}

TEST_CASE("A snapshot finished while training goes on holds the model of when it began",
          "[Learner]") {
  LearnerOptions o;
  o.threads = 2;
  auto stream = WithFeatures(MakeStream(120000, 20000, 300, 21));
  auto l = MakeLearner(o);
  l->Train(std::span(stream).first(40000));
  ModelSnapshot reference;  // taken with nothing running beside it
  l->TakeSnapshot(true, &reference);

  ModelSnapshot during;
  l->BeginSnapshot(true, &during);
  std::thread finisher([&] { l->FinishSnapshot(&during); });
  l->Train(std::span(stream).subspan(40000));  // writes the rows being copied
  finisher.join();
  CHECK(during.rows() == reference.rows());
  CHECK(RowsOf(during) == RowsOf(reference));
  REQUIRE(during.dense.size() == reference.dense.size());
  for (size_t i = 0; i < during.dense.size(); ++i) {
    // Bytes, not floats: some blocks pack doubles into pairs of floats,
    // whose bits may read as a NaN.
    const auto& [name, a] = during.dense[i];
    const auto& b = reference.dense[i].second;
    INFO("dense block " << name);
    CHECK((a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0));
  }
  CHECK(during.learned == reference.learned);

  // What training changed meanwhile, rows copied by trainers included, is in
  // the next delta: the full snapshot plus that delta is the model.
  ModelSnapshot delta, now;
  l->TakeSnapshot(false, &delta);
  CHECK(delta.rows() > 0);
  l->TakeSnapshot(true, &now);
  auto restored = MakeLearner(o);
  REQUIRE(restored->ApplySnapshot(reference).ok());
  REQUIRE(restored->ApplySnapshot(delta).ok());
  ModelSnapshot again;
  restored->TakeSnapshot(true, &again);
  CHECK(RowsOf(again) == RowsOf(now));
  CHECK(RowsOf(again) != RowsOf(reference));
}

TEST_CASE("Two trainer threads land every update of the side features all events share",
          "[Learner]") {
  // Every event carries the same user feature, so both threads update its row
  // at every event (in parallel Train, each in a staged copy that is added back
  // when the call ends). Adagrad's accumulators count the updates: the summed
  // squared gradients of that row after two-thread training must match the
  // one-thread run's, neither lost nor added twice. The bias accumulators:
  // their gradient is the task's output gradient, which both runs share to a
  // few percent (the vector dimensions' follow each run's own factors).
  auto stream = WithFeatures(MakeStream(40000, 5000, 200, 31));
  for (Event& e : stream) e.user_features = {"all=1"};
  auto accumulators = [&](int threads) {
    LearnerOptions o;
    o.threads = threads;
    auto l = MakeLearner(o);
    for (size_t b = 0; b < stream.size(); b += 4096)
      l->Train(std::span(stream).subspan(b, std::min<size_t>(4096, stream.size() - b)));
    ModelSnapshot snap;
    l->TakeSnapshot(true, &snap);
    const auto rows = RowsOf(snap);
    auto it = rows.find({"user_feature", "all=1"});
    REQUIRE(it != rows.end());
    const std::vector<float>& row = it->second;
    const size_t width = row.size() / 2;  // values, then their accumulators
    const size_t d = width - kNumTasks;
    return std::vector<double>(row.begin() + width + d, row.end());
  };
  const std::vector<double> one = accumulators(1), two = accumulators(2);
  REQUIRE(one.size() == two.size());
  const double adagrad_init = LearnerOptions().adagrad_init;
  for (size_t j = 0; j < one.size(); ++j) {
    INFO("task " << j << "'s bias accumulator: one thread " << one[j] << ", two threads "
                 << two[j]);
    const double g1 = one[j] - adagrad_init, g2 = two[j] - adagrad_init;
    CHECK(g1 > 0);
    CHECK(std::abs(g2 - g1) < 0.1 * g1);
  }
}

TEST_CASE("A snapshot of another shape is refused", "[Learner]") {
  auto a = MakeLearner();
  ModelSnapshot snap;
  a->TakeSnapshot(true, &snap);
  LearnerOptions o;
  o.dim = 16;
  auto b = MakeLearner(o);
  CHECK(b->ApplySnapshot(snap).IsCorruption());
}

TEST_CASE("Non-finite inputs never reach a parameter", "[Learner]") {
  LearnerOptions o;
  o.threads = 1;
  auto l = MakeLearner(o);
  std::vector<Event> events = {Event{Task::kRating, "u", "i", std::nanf("")},
                               Event{Task::kRating, "u", "i", INFINITY},
                               Event{Task::kClick, "u", "i", 1.0f}};
  l->Train(events);
  CHECK(l->Stats().nonfinite_updates_refused >= 2);
  ModelSnapshot snap;
  l->TakeSnapshot(true, &snap);
  for (const auto& t : snap.tables)
    for (float v : t.values) REQUIRE(std::isfinite(v));
  for (float v : snap.dense[0].second) REQUIRE(std::isfinite(v));
  auto s = l->Score("u", "i", Blend());
  CHECK(std::isfinite(s.score));
}

TEST_CASE("Scoring uses the side features users and items were last seen with", "[Learner]") {
  LearnerOptions o;
  o.threads = 1;
  auto l = MakeLearner(o);
  l->Train(WithFeatures(MakeStream(20000, 40, 40, 3)));
  // The prediction Train makes before learning (from the event's features)
  // matches Score (from the remembered ones), with or without features on
  // the event.
  for (bool with_features : {true, false}) {
    Event e{Task::kClick, "u5", "i7", 1.0f};
    if (with_features) {
      e.user_features = {"ug=1"};
      e.item_features = {"ig=3"};
    }
    auto scored = l->Score("u5", "i7", Blend());
    std::vector<Prediction> before;
    l->Train(std::span(&e, 1), &before);
    CHECK(before[0].click == Approx(scored.prediction.click).epsilon(1e-4));
  }
  // A user seen once, with its group's feature, already scores like its
  // group: group 2 likes items of group 2 more than items of group 3.
  std::vector<Event> once = {Event{Task::kRating, "newcomer", "i0", 3.0f}};
  once[0].user_features = {"ug=2"};
  once[0].item_features = {"ig=0"};
  l->Train(once);
  double liked = 0, other = 0;
  for (int i = 0; i < 40; ++i) {
    float p = l->Score("newcomer", "i" + std::to_string(i), Blend()).prediction.click;
    if (i % 4 == 2) liked += p;
    if (i % 4 == 3) other += p;
  }
  CHECK(liked > other + 1.0);
}

TEST_CASE("A snapshot reads changed feature lists when it finishes and keeps them for the next",
          "[Learner]") {
  // BeginSnapshot (training's pause) lists only which users' lists changed;
  // FinishSnapshot reads the lists. A list set in between is taken as it is
  // then, and stays marked for the next snapshot, so full + deltas restore
  // the lists the model has.
  LearnerOptions o;
  o.threads = 1;
  auto stream = WithFeatures(MakeStream(4000, 30, 30, 23));
  auto l = MakeLearner(o);
  l->Train(std::span(stream).first(2000));
  ModelSnapshot full;
  l->BeginSnapshot(true, &full);
  std::vector<Event> moved(stream.begin() + 2000, stream.end());
  for (Event& e : moved) e.user_features = {"moved", e.user + "-own"};
  l->Train(moved);
  l->FinishSnapshot(&full);
  auto lists_of = [](const ModelSnapshot& s, const std::string& table) {
    std::map<std::string, std::vector<std::string>> out;
    for (const FeatureListDelta& d : s.feature_lists)
      if (d.table == table)
        for (size_t i = 0; i < d.keys.size(); ++i) out[d.keys[i]] = d.features[i];
    return out;
  };
  const auto in_full = lists_of(full, "user");
  REQUIRE(in_full.size() == 30);
  for (const auto& [user, features] : in_full)
    CHECK(features == std::vector<std::string>{"moved", user + "-own"});
  ModelSnapshot delta;
  l->TakeSnapshot(false, &delta);
  CHECK(lists_of(delta, "user") == in_full);
  ModelSnapshot now;
  l->TakeSnapshot(true, &now);
  auto restored = MakeLearner(o);
  REQUIRE(restored->ApplySnapshot(full).ok());
  REQUIRE(restored->ApplySnapshot(delta).ok());
  CHECK(AllScoresEqual(*l, *restored, 30, 30));
}

TEST_CASE("Snapshots restore feature lists and optimizer state bit for bit", "[Learner]") {
  LearnerOptions o;
  o.threads = 1;
  o.dense_optimizer = GENERATE(Optimizer::kAdagrad, Optimizer::kAdamW);
  o.esmm = GENERATE(false, true);
  auto stream = WithFeatures(MakeStream(12000, 30, 30, 19));
  auto original = MakeLearner(o);
  original->Train(std::span(stream).first(6000));
  ModelSnapshot full;
  original->TakeSnapshot(true, &full);
  // User and item features, user histories (and the negative ring).
  REQUIRE(full.feature_lists.size() >= 3);
  CHECK(full.feature_lists[0].keys.size() == 30);
  CHECK(full.feature_lists[2].table == "user_history");
  CHECK(full.feature_lists[2].keys.size() == 30);
  // Users change group: their lists change and travel in the delta.
  std::vector<Event> moved(stream.begin() + 6000, stream.end());
  for (Event& e : moved) e.user_features = {"moved"};
  original->Train(moved);
  ModelSnapshot delta;
  original->TakeSnapshot(false, &delta);
  REQUIRE_FALSE(delta.feature_lists.empty());

  auto restored = MakeLearner(o);
  REQUIRE(restored->ApplySnapshot(full).ok());
  REQUIRE(restored->ApplySnapshot(delta).ok());
  CHECK(AllScoresEqual(*original, *restored, 30, 30));
  auto more = MakeStream(2000, 30, 30, 20);
  original->Train(more);
  restored->Train(more);
  CHECK(AllScoresEqual(*original, *restored, 30, 30));
}

TEST_CASE("Optimizers, rating losses, ESMM, negative sampling and replay all learn", "[Learner]") {
  auto stream = MakeStream(60000, 200, 100, 23);
  struct Variant {
    const char* name;
    LearnerOptions o;
  };
  std::vector<Variant> variants;
  auto add = [&](const char* name, auto&& change) {
    LearnerOptions o;
    o.threads = 2;
    change(o);
    variants.push_back({name, o});
  };
  add("sgd", [](LearnerOptions& o) {
    o.embedding_optimizer = Optimizer::kSgd;
    o.dense_optimizer = Optimizer::kSgd;
    o.lr_embedding = 0.05f;
    o.lr_dense = 0.01f;
  });
  add("adam", [](LearnerOptions& o) {
    o.dense_optimizer = Optimizer::kAdam;
    o.lr_dense = 0.001f;
  });
  add("adamw", [](LearnerOptions& o) {
    o.dense_optimizer = Optimizer::kAdamW;
    o.lr_dense = 0.001f;
  });
  add("huber", [](LearnerOptions& o) { o.rating_loss = RatingLoss::kHuber; });
  add("esmm", [](LearnerOptions& o) { o.esmm = true; });
  add("negatives", [](LearnerOptions& o) { o.negatives = 2; });
  add("replay", [](LearnerOptions& o) { o.replay = 1; });
  for (const Variant& v : variants) {
    INFO(v.name);
    auto l = MakeLearner(v.o);
    l->Train(stream);
    auto stats = l->Stats();
    CHECK(stats.tasks[0].auc > 0.72);
    CHECK(stats.tasks[2].mae < 1.0);
    CHECK(stats.nonfinite_updates_refused == 0);
    auto s = l->Score("u1", "i1", Blend());
    CHECK(std::isfinite(s.score));
    if (v.o.esmm) CHECK(s.prediction.purchase <= s.prediction.click);
  }
  LearnerOptions bad;
  bad.embedding_optimizer = Optimizer::kAdam;
  std::unique_ptr<Learner> l;
  CHECK(Learner::Create(bad, &l).IsInvalidArgument());
  bad = LearnerOptions();
  bad.negatives = -1;
  CHECK(Learner::Create(bad, &l).IsInvalidArgument());
}

namespace {

// Pretrained vectors with the structure of MakeStream: the vector of item i
// is its group's direction (group i % 4) plus a little noise.
std::string Id(const char* prefix, int n) {
  std::string id = prefix;
  return id += std::to_string(n);
}

std::vector<float> GroupVector(int item, int dim, uint64_t seed) {
  std::mt19937_64 group_rng(1234 + uint64_t(item % 4));
  std::mt19937_64 noise_rng(seed * 1000003 + uint64_t(item));
  std::normal_distribution<float> unit(0.0f, 1.0f), noise(0.0f, 0.1f);
  std::vector<float> v(dim);
  for (float& x : v) x = unit(group_rng);
  for (float& x : v) x += noise(noise_rng);
  return v;
}

// ---- Batched scoring and Recommend's item panel (learner_scoring.cc) ----

// Every known item scored with Score(), best first by (score, item order).
std::vector<std::pair<float, std::string>> BruteForceTop(const Learner& l, const std::string& user,
                                                         const std::vector<std::string>& items,
                                                         size_t k, const Blend& blend) {
  std::vector<std::pair<float, std::string>> all;
  for (const auto& it : items) all.emplace_back(l.Score(user, it, blend).score, it);
  std::stable_sort(all.begin(), all.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  if (all.size() > k) all.resize(k);
  return all;
}

TEST_CASE("Recommend returns the exact top k with Score's predictions", "[Learner][recommend]") {
  LearnerOptions o;
  o.threads = 2;
  const char* variant = GENERATE("shared_bottom", "mmoe", "esmm+features");
  if (std::string(variant) == "mmoe") o.arch = Arch::kMmoe;
  if (std::string(variant) == "esmm+features") o.esmm = true;
  // 40,000 items: above the size where the scan is split between threads.
  const int n_items = GENERATE(300, 40000);
  auto l = MakeLearner(o);
  auto stream = MakeStream(std::max(20000, n_items), 40, n_items, 21);
  // Make sure every item exists.
  for (int i = 0; i < n_items; ++i)
    stream.push_back(
        Event{Task::kClick, "u" + std::to_string(i % 40), "i" + std::to_string(i), float(i % 2)});
  if (std::string(variant) == "esmm+features") stream = WithFeatures(std::move(stream));
  stream.push_back(Event{Task::kPurchase, "u1", "i0", 1.0f});
  l->Train(stream);
  std::vector<std::string> items;
  for (int i = 0; i < n_items; ++i) items.push_back("i" + std::to_string(i));
  Blend blend;
  for (const char* user : {"u1", "u2", "nobody"}) {
    auto recs = l->Recommend(user, 10, false, blend);
    REQUIRE(recs.size() == 10);
    auto expected = BruteForceTop(*l, user, items, 10, blend);
    for (size_t j = 0; j < recs.size(); ++j) {
      CAPTURE(variant, n_items, user, j, recs[j].item);
      // The quiet model: Recommend's numbers are Score's, bit for bit.
      ScoreResult s = l->Score(user, recs[j].item, blend);
      CHECK(recs[j].score == s.score);
      CHECK(recs[j].prediction.click == s.prediction.click);
      CHECK(recs[j].prediction.purchase == s.prediction.purchase);
      CHECK(recs[j].prediction.rating == s.prediction.rating);
      // And they are the best scores there are.
      CHECK(recs[j].score == expected[j].first);
    }
    for (size_t j = 1; j < recs.size(); ++j) CHECK(recs[j - 1].score >= recs[j].score);
  }
  // Purchases are left out on the split scan too.
  auto with = l->Recommend("u1", n_items, false, blend);
  auto without = l->Recommend("u1", n_items, true, blend);
  CHECK(with.size() == size_t(n_items));
  CHECK(without.size() < with.size());
  CHECK(std::none_of(without.begin(), without.end(),
                     [](const Recommendation& r) { return r.item == "i0"; }));
  // Leaving items out does not change the order of the others.
  std::vector<std::string> kept;
  for (const auto& r : with)
    if (std::any_of(without.begin(), without.end(),
                    [&](const Recommendation& x) { return x.item == r.item; }))
      kept.push_back(r.item);
  REQUIRE(kept.size() == without.size());
  for (size_t j = 0; j < kept.size(); j += 97) CHECK(kept[j] == without[j].item);
}

TEST_CASE("Recommend follows new items at once and model changes soon", "[Learner][recommend]") {
  LearnerOptions o;
  o.threads = 2;
  const int n_items = GENERATE(200, 40000);
  auto l = MakeLearner(o);
  std::vector<Event> events;
  for (int i = 0; i < n_items; ++i)
    events.push_back(
        Event{Task::kClick, "u" + std::to_string(i % 50), "i" + std::to_string(i), float(i % 2)});
  l->Train(events);
  Blend blend;
  REQUIRE(l->Recommend("fan", 5, true, blend).size() == 5);  // builds the panel

  // The score Recommend gives `item` when it ranks every item, -1 if absent.
  auto ranked = [&](const std::string& item) {
    for (const auto& r : l->Recommend("fan", n_items + 10, true, blend))
      if (r.item == item) return r.score;
    return -1.0f;
  };

  // A new item, created after the panel was built: ranked, and scored fresh.
  events.clear();
  for (int r = 0; r < 300; ++r) events.push_back(Event{Task::kClick, "fan", "hit", 1.0f});
  l->Train(events);
  CHECK(ranked("hit") == l->Score("fan", "hit", blend).score);

  // An old item's vector changes: small catalogues see it at once, large
  // ones within the documented staleness (a couple of seconds).
  events.clear();
  for (int r = 0; r < 600; ++r) events.push_back(Event{Task::kClick, "fan", "i7", 1.0f});
  l->Train(events);
  auto current = [&] { return ranked("i7") == l->Score("fan", "i7", blend).score; };
  if (n_items <= 200) {
    CHECK(current());
  } else {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    bool seen = false;
    while (!(seen = current()) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK(seen);
  }
}

TEST_CASE("ScoreMany and Score agree bit for bit in any batch position", "[Learner]") {
  auto l = MakeLearner();
  l->Train(WithFeatures(MakeStream(5000, 20, 50, 8)));
  std::vector<std::string> items;
  for (int i = 0; i < 37; ++i) items.push_back("i" + std::to_string((i * 7) % 50));
  items.push_back("unknown");
  std::vector<ScoreResult> many, reversed;
  l->ScoreMany("u3", items, Blend(), &many);
  std::vector<std::string> rev(items.rbegin(), items.rend());
  l->ScoreMany("u3", rev, Blend(), &reversed);
  for (size_t i = 0; i < items.size(); ++i) {
    ScoreResult one = l->Score("u3", items[i], Blend());
    CHECK(many[i].score == one.score);
    CHECK(many[i].prediction.rating == one.prediction.rating);
    CHECK(reversed[items.size() - 1 - i].score == one.score);
  }
  // A batch large enough to be split across threads (over 4,096 items).
  std::vector<std::string> large;
  for (int i = 0; i < 5000; ++i)
    large.push_back(i % 97 == 0 ? "unknown" + std::to_string(i) : "i" + std::to_string(i % 50));
  std::vector<ScoreResult> split;
  l->ScoreMany("u3", large, Blend(), &split);
  REQUIRE(split.size() == large.size());
  int differ = 0;
  for (size_t i = 0; i < large.size(); ++i) {
    ScoreResult one = l->Score("u3", large[i], Blend());
    if (split[i].score != one.score || split[i].item_known != one.item_known) ++differ;
  }
  CHECK(differ == 0);
}

}  // namespace

TEST_CASE("Pretrained vectors let a new item score before its first event",
          "[Learner][pretrained]") {
  LearnerOptions o;
  o.threads = 1;
  o.pretrained_dim = 16;
  o.pretrained_trainable = GENERATE(false, true);
  auto l = MakeLearner(o);
  // Items 0..39 have events and vectors; 40..47 only vectors.
  for (int i = 0; i < 48; ++i) {
    auto v = GroupVector(i, o.pretrained_dim, 1);
    REQUIRE(l->ImportPretrained(Id("i", i), v).ok());
  }
  CHECK(l->Stats().pretrained == 48);
  CHECK(l->Stats().items == 48);
  auto stream = MakeStream(40000, 40, 40, 21);
  l->Train(stream);

  // For each user, a new item of the user's group against new items of the
  // other groups: the liked group should win for nearly every user.
  Blend blend;
  int wins = 0, comparisons = 0;
  for (int u = 0; u < 40; ++u) {
    const std::string user = Id("u", u);
    for (int a = 40; a < 48; ++a) {
      if (a % 4 != u % 4) continue;
      const auto liked = l->Score(user, Id("i", a), blend);
      CHECK(liked.item_known);
      for (int b = 40; b < 48; ++b) {
        if (b % 4 == u % 4) continue;
        const auto other = l->Score(user, Id("i", b), blend);
        wins += liked.score > other.score;
        ++comparisons;
      }
    }
  }
  INFO("liked new item scored higher in " << wins << " of " << comparisons);
  CHECK(wins >= 0.9 * comparisons);

  // Without pretrained vectors the two kinds of new item are indistinguishable.
  auto plain = MakeLearner(LearnerOptions{.threads = 1});
  plain->Train(stream);
  CHECK(plain->Score("u0", "i40", blend).score == plain->Score("u0", "i41", blend).score);
}

TEST_CASE("ImportPretrained rejects bad vectors", "[Learner][pretrained]") {
  auto off = MakeLearner();
  std::vector<float> v(4, 0.5f);
  CHECK(off->ImportPretrained("i1", v).IsInvalidArgument());

  LearnerOptions o;
  o.pretrained_dim = 4;
  auto l = MakeLearner(o);
  CHECK(l->ImportPretrained("i1", v).ok());
  CHECK(l->ImportPretrained("", v).IsInvalidArgument());
  std::vector<float> short_v(3, 0.5f);
  CHECK(l->ImportPretrained("i2", short_v).IsInvalidArgument());
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    std::vector<float> b = v;
    b[2] = bad;
    CHECK(l->ImportPretrained("i3", b).IsInvalidArgument());
  }
  CHECK(l->Stats().pretrained == 1);
  CHECK(l->Stats().items == 1);
  LearnerOptions neg;
  neg.pretrained_dim = -1;
  std::unique_ptr<Learner> x;
  CHECK(Learner::Create(neg, &x).IsInvalidArgument());
}

TEST_CASE("Snapshots restore pretrained vectors bit for bit", "[Learner][pretrained]") {
  LearnerOptions o;
  o.threads = 1;
  o.pretrained_dim = 8;
  o.pretrained_trainable = GENERATE(false, true);
  auto original = MakeLearner(o);
  for (int i = 0; i < 36; ++i)
    REQUIRE(original->ImportPretrained(Id("i", i), GroupVector(i, 8, 2)).ok());
  auto stream = MakeStream(10000, 30, 30, 9);
  original->Train(std::span(stream).first(5000));
  ModelSnapshot full;
  original->TakeSnapshot(true, &full);
  bool has_table = false;
  for (const TableDelta& t : full.tables)
    if (t.table == "item_pretrained") {
      has_table = true;
      CHECK(t.width == 16);
      CHECK(t.keys.size() == 36);
    }
  CHECK(has_table);
  original->Train(std::span(stream).subspan(5000));
  REQUIRE(original->ImportPretrained("i35", GroupVector(35, 8, 3)).ok());
  ModelSnapshot delta;
  original->TakeSnapshot(false, &delta);
  for (const TableDelta& t : delta.tables)
    if (t.table == "item_pretrained") CHECK(t.keys.size() == (o.pretrained_trainable ? 31u : 1u));

  auto restored = MakeLearner(o);
  REQUIRE(restored->ApplySnapshot(full).ok());
  REQUIRE(restored->ApplySnapshot(delta).ok());
  CHECK(AllScoresEqual(*original, *restored, 30, 36));
  auto more = MakeStream(2000, 30, 36, 10);
  original->Train(more);
  restored->Train(more);
  CHECK(AllScoresEqual(*original, *restored, 30, 36));

  // A model without pretrained vectors refuses the snapshot (another shape).
  auto plain = MakeLearner(LearnerOptions{.threads = 1});
  CHECK(plain->ApplySnapshot(full).IsCorruption());
}

TEST_CASE("pretrained_dim = 0 leaves the shape as it was", "[Learner][pretrained]") {
  auto l = MakeLearner();
  ModelSnapshot s;
  l->TakeSnapshot(true, &s);
  CHECK(s.shape.find("pretrained") == std::string::npos);
  CHECK(s.tables.size() == 4);
}

// The nice value of thread `tid` of this process; INT_MIN when it is gone.
int ThreadNice(pid_t tid) {
  errno = 0;
  const int nice = ::getpriority(PRIO_PROCESS, tid);
  return errno == 0 ? nice : INT_MIN;
}

std::vector<pid_t> ThreadsOfProcess() {
  std::vector<pid_t> tids;
  if (DIR* dir = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(dir))
      if (e->d_name[0] != '.') tids.push_back(pid_t(std::atoi(e->d_name)));
    ::closedir(dir);
  }
  return tids;
}

TEST_CASE("train_nice is validated", "[Learner][nice]") {
  std::unique_ptr<Learner> l;
  for (int bad : {-1, 20, 100}) {
    LearnerOptions o;
    o.train_nice = bad;
    Status s = Learner::Create(o, &l);
    CHECK(s.IsInvalidArgument());
    CHECK(s.message().find("learner.train_nice") != std::string::npos);
  }
  for (int good : {0, 1, 19}) {
    LearnerOptions o;
    o.train_nice = good;
    CHECK(Learner::Create(o, &l).ok());
  }
}

TEST_CASE("train_nice lowers the priority of the training threads, not what they learn",
          "[Learner][nice]") {
  // In a thread of its own, so that the test's thread keeps its priority
  // where the process may not raise it back.
  std::thread([] {
    const pid_t caller = ::gettid();
    const int base = ThreadNice(caller);
    REQUIRE(base != INT_MIN);
    const int want = std::min(19, base + 5);
    LearnerOptions o;
    o.threads = 2;
    o.train_nice = 5;
    auto l = MakeLearner(o);
    auto stream = MakeStream(8192, 300, 100, 21);

    // Watch every thread of the process while Train runs: the caller and a
    // TBB worker must each be seen at the lowered priority (a machine with
    // one core runs no TBB worker).
    const bool workers = std::thread::hardware_concurrency() > 1;
    std::atomic<bool> seen_caller{false}, seen_worker{!workers}, stop{false};
    std::thread watcher([&] {
      const pid_t self = ::gettid();
      while (!stop.load() && !(seen_caller.load() && seen_worker.load())) {
        for (pid_t tid : ThreadsOfProcess()) {
          if (tid == self || ThreadNice(tid) != want) continue;
          (tid == caller ? seen_caller : seen_worker).store(true);
        }
      }
    });
    int rounds = 0;
    for (; rounds < 500 && !(seen_caller.load() && seen_worker.load()); ++rounds) l->Train(stream);
    stop.store(true);
    watcher.join();
    INFO("rounds " << rounds << ", base nice " << base);
    CHECK(seen_caller.load());
    CHECK(seen_worker.load());
    if (::geteuid() == 0) CHECK(ThreadNice(caller) == base);  // restored where permitted
    const auto stats = l->Stats();
    CHECK(stats.tasks[0].learned + stats.tasks[1].learned + stats.tasks[2].learned ==
          uint64_t(rounds) * stream.size());
  }).join();

  // One thread: the same model with and without train_nice.
  auto stream = MakeStream(5000, 50, 40, 22);
  LearnerOptions o;
  o.threads = 1;
  auto plain = MakeLearner(o);
  o.train_nice = 3;
  std::unique_ptr<Learner> niced;
  std::thread([&] {
    niced = MakeLearner(o);
    niced->Train(stream);
  }).join();
  plain->Train(stream);
  CHECK(AllScoresEqual(*plain, *niced, 50, 40));
}

// Finite differences of ModelShape's forward pass against its backward pass
// (with the expert gradients deferred and flushed), over shapes whose sizes
// are not multiples of the vector width, with and without MMoE.
// Runs `body` with the AVX2/FMA kernels (where the CPU has them), then with
// the portable ones.
template <typename Fn>
void WithEachKernelSet(Fn&& body) {
  for (bool avx2 : {true, false}) {
    const bool before = SetVectorKernelsForTesting(avx2);
    INFO((avx2 ? "AVX2 kernels (if the CPU has them)" : "portable kernels"));
    body();
    SetVectorKernelsForTesting(before);
  }
}

TEST_CASE("ModelShape's backward pass is the gradient of its forward pass", "[ModelShape]") {
  struct Case {
    Arch arch;
    int dim, hidden;
  };
  WithEachKernelSet([] {
    for (const Case& c :
         {Case{Arch::kSharedBottom, 32, 32}, Case{Arch::kSharedBottom, 5, 7},
          Case{Arch::kSharedBottom, 11, 36}, Case{Arch::kMmoe, 32, 32}, Case{Arch::kMmoe, 3, 5}}) {
      LearnerOptions o;
      o.arch = c.arch;
      o.dim = c.dim;
      o.hidden = c.hidden;
      o.experts = 3;
      const ModelShape shape(o);
      std::vector<float> dense(shape.dense_size());
      shape.Init(dense.data(), 5);
      std::mt19937 rng(c.dim * 100 + c.hidden);
      std::uniform_real_distribution<float> unif(-0.5f, 0.5f);
      for (float& w : dense) w += 0.2f * unif(rng);  // biases and heads away from their init
      Forward fw(shape);
      for (float& x : fw.u) x = unif(rng);
      for (float& x : fw.v) x = unif(rng);
      const int t = 1;
      const float bias = 0.3f;

      // Analytic: dy/d(everything) for dL/dy = 1, accumulated over 70 copies
      // of the example (more than ExpertGradients holds), so flushing while
      // recording is exercised too; then divided back.
      constexpr int kCopies = 70;
      std::vector<float> grad(shape.dense_size(), 0.0f), du(c.dim), dv(c.dim);
      ExpertGradients pending(shape);
      for (int i = 0; i < kCopies; ++i) {
        shape.ForwardTask(dense.data(), t, bias, &fw);
        shape.BackwardTask(dense.data(), t, 1.0f, &fw, grad.data(), du.data(), dv.data(), &pending);
      }
      shape.FlushExpertGradients(&pending, grad.data());
      CHECK(pending.count == 0);
      for (float& g : grad) g /= kCopies;

      // Numeric, in double around the float forward pass; a coordinate whose
      // step flips a relu is skipped (the function has a kink there).
      std::vector<float> z0;
      auto eval = [&](std::vector<float>& v, size_t i, float h, bool* same_units) {
        const float saved = v[i];
        v[i] = saved + h;
        const double y = shape.ForwardTask(dense.data(), t, bias, &fw);
        for (size_t j = 0; j < z0.size(); ++j)
          if ((fw.z[j] > 0) != (z0[j] > 0)) *same_units = false;
        v[i] = saved;
        return y;
      };
      shape.ForwardTask(dense.data(), t, bias, &fw);
      z0 = fw.z;
      auto check = [&](std::vector<float>& v, size_t i, float analytic, const char* what) {
        const float h = 1e-2f;
        bool same = true;
        const double num = (eval(v, i, h, &same) - eval(v, i, -h, &same)) / (2.0 * h);
        if (!same) return;
        INFO(ArchName(c.arch) << " dim " << c.dim << " hidden " << c.hidden << ": " << what << "["
                              << i << "]");
        CHECK(analytic == Approx(num).margin(2e-3).epsilon(2e-2));
      };
      for (int k = 0; k < c.dim; ++k) {
        check(fw.u, k, du[k], "du");
        check(fw.v, k, dv[k], "dv");
      }
      std::uniform_int_distribution<size_t> pick(0, dense.size() - 1);
      for (int n = 0; n < 400; ++n) {
        const size_t i = pick(rng);
        check(dense, i, grad[i], "dense");
      }
    }
  });
}

TEST_CASE("AdagradUpdate is Adagrad with L2 and clipping, at any length", "[ModelShape]") {
  WithEachKernelSet([] {
    for (int n : {1, 3, 4, 8, 13, 32, 35, 100}) {
      std::mt19937 rng(n);
      std::uniform_real_distribution<float> unif(-8.0f, 8.0f);
      std::vector<float> w(n), acc(n), g(n);
      for (int i = 0; i < n; ++i) {
        w[i] = unif(rng);
        acc[i] = std::abs(unif(rng)) * (i % 3);  // some accumulators start at 0
        g[i] = i % 4 == 0 ? 0.0f : unif(rng);
      }
      auto w2 = w, acc2 = acc;
      AdagradUpdate(w.data(), acc.data(), g.data(), size_t(n), 0.1f, 1e-3f, 5.0f);
      for (int i = 0; i < n; ++i) {
        const double gi = std::clamp(double(g[i]) + 1e-3 * w2[i], -5.0, 5.0);
        const double a = double(acc2[i]) + gi * gi;
        const double want = w2[i] - 0.1 * gi / (std::sqrt(a) + 1e-8);
        INFO("n " << n << " i " << i);
        CHECK(acc[i] == Approx(a).epsilon(1e-5));
        CHECK(w[i] == Approx(want).epsilon(1e-5).margin(1e-6));
      }
    }
  });
}

TEST_CASE("AllFinite finds any infinity or NaN, at any length and position", "[ModelShape]") {
  WithEachKernelSet([] {
    for (size_t n : {0, 1, 7, 8, 31, 32, 33, 100, 3200}) {
      std::vector<float> v(n);
      for (size_t i = 0; i < n; ++i)
        v[i] = i % 5 == 0 ? 3e38f : i % 5 == 1 ? -0.0f : i % 5 == 2 ? 1e-42f : float(i);
      INFO("n " << n);
      CHECK(AllFinite(v.data(), n));
      for (size_t at = 0; at < n; at += std::max<size_t>(1, n / 37)) {
        for (float bad : {INFINITY, -INFINITY, std::nanf("")}) {
          const float saved = v[at];
          v[at] = bad;
          INFO("at " << at << " value " << bad);
          CHECK_FALSE(AllFinite(v.data(), n));
          v[at] = saved;
        }
      }
    }
  });
}

TEST_CASE("The AVX2 and the portable kernels learn the same model up to rounding", "[Learner]") {
  auto stream = WithFeatures(MakeStream(20000, 200, 100, 31));
  std::vector<std::vector<Prediction>> before;
  std::vector<LearnerStats> stats;
  WithEachKernelSet([&] {
    LearnerOptions o;
    o.threads = 1;
    // The kernels under test are the dense layers', which only explicit
    // learning uses from the first event on.
    o.feedback = Feedback::kExplicit;
    auto l = MakeLearner(o);
    before.emplace_back();
    l->Train(stream, &before.back());
    stats.push_back(l->Stats());
  });
  REQUIRE(before.size() == 2);
  double max_diff = 0;
  for (size_t i = 0; i < stream.size(); ++i)
    max_diff = std::max<double>(
        max_diff, std::abs(before[0][i].Get(stream[i].task) - before[1][i].Get(stream[i].task)));
  CHECK(max_diff < 0.05);
  CHECK(stats[0].tasks[0].auc == Approx(stats[1].tasks[0].auc).margin(0.003));
  CHECK(stats[0].tasks[2].mae == Approx(stats[1].tasks[2].mae).margin(0.003));
}

TEST_CASE("Progressive precision, recall and F1 follow the threshold and survive a snapshot",
          "[Learner]") {
  auto events = MakeStream(6000, 100, 50, 9);
  LearnerOptions o;
  o.threads = 1;
  auto a = MakeLearner(o);
  a->Train(events);
  LearnerStats s = a->Stats();
  const TaskStats& click = s.tasks[int(Task::kClick)];
  CHECK(click.precision > 0.0);
  CHECK(click.recall > 0.0);
  CHECK(click.f1 == Approx(2 * click.precision * click.recall / (click.precision + click.recall)));
  // A higher threshold predicts fewer positives: recall cannot rise.
  o.decision_threshold = 0.9f;
  auto strict = MakeLearner(o);
  strict->Train(events);
  CHECK(strict->Stats().tasks[int(Task::kClick)].recall < click.recall);
  // Restored from a snapshot, the counts carry on.
  ModelSnapshot full;
  a->TakeSnapshot(true, &full);
  o.decision_threshold = 0.5f;
  auto b = MakeLearner(o);
  REQUIRE(b->ApplySnapshot(full).ok());
  CHECK(b->Stats().tasks[int(Task::kClick)].f1 == click.f1);
  CHECK(b->Stats().tasks[int(Task::kPurchase)].precision ==
        s.tasks[int(Task::kPurchase)].precision);
}

TEST_CASE("FTRL-Proximal rows: learn, restore bit for bit, and L1 makes them sparse", "[Learner]") {
  auto events = WithFeatures(MakeStream(8000, 200, 60, 13));
  LearnerOptions o;
  o.threads = 1;
  o.embedding_optimizer = Optimizer::kFtrl;
  auto a = MakeLearner(o);
  a->Train(events);
  const TaskStats click = a->Stats().tasks[int(Task::kClick)];
  CHECK(click.auc > 0.55);  // it learns
  ModelSnapshot full;
  a->TakeSnapshot(true, &full);
  CHECK(full.shape.find("rows=ftrl") != std::string::npos);
  for (const TableDelta& t : full.tables) {
    if (t.table == "user") CHECK(t.width == 3 * (o.dim + kNumTasks));  // values, z, n
  }
  auto b = MakeLearner(o);
  REQUIRE(b->ApplySnapshot(full).ok());
  for (int u = 0; u < 20; ++u) {
    std::string item = "i";
    item += std::to_string(u);
    auto x = a->Score(std::to_string(u), item, Blend());
    auto y = b->Score(std::to_string(u), item, Blend());
    CHECK(x.score == y.score);
  }
  // An Adagrad model refuses an FTRL snapshot (another shape).
  CHECK_FALSE(MakeLearner()->ApplySnapshot(full).ok());

  // With a strong L1, most embedding values are exactly zero.
  auto zeros = [&](float l1) {
    LearnerOptions p = o;
    p.l1 = l1;
    auto l = MakeLearner(p);
    l->Train(events);
    ModelSnapshot snap;
    l->TakeSnapshot(true, &snap);
    size_t zero = 0, all = 0;
    for (const TableDelta& t : snap.tables) {
      if (t.table != "user") continue;
      for (size_t r = 0; r < t.keys.size(); ++r)
        for (int k = 0; k < p.dim; ++k) {
          ++all;
          zero += t.values[r * size_t(t.width) + size_t(k)] == 0.0f;
        }
    }
    return double(zero) / double(all);
  };
  CHECK(zeros(0.0f) < 0.01);
  CHECK(zeros(5.0f) > 0.5);
}


// A replica applies the versions of a trainer that may have restarted from
// an older checkpoint: its counters can come back to a value they had. Its
// recommendations must still come from the model as applied, not from a
// panel of item vectors built before.
TEST_CASE("Recommend follows applied snapshots even when the counters repeat", "[Learner]") {
  LearnerOptions o;
  o.threads = 1;
  std::unique_ptr<Learner> a, b, replica;
  REQUIRE(Learner::Create(o, &a).ok());
  LearnerOptions other = o;
  other.seed = o.seed + 1;  // other values, the same counts of events
  REQUIRE(Learner::Create(other, &b).ok());
  REQUIRE(Learner::Create(o, &replica).ok());
  a->Train(MakeStream(3000, 40, 60, 1));
  b->Train(MakeStream(3000, 40, 60, 1));
  ModelSnapshot sa, sb;
  a->TakeSnapshot(true, &sa);
  b->TakeSnapshot(true, &sb);
  REQUIRE(sa.learned == sb.learned);
  REQUIRE(replica->ApplySnapshot(sa).ok());
  auto names = [](const std::vector<Recommendation>& rs) {
    std::vector<std::string> n;
    for (const Recommendation& r : rs) n.push_back(r.item + ":" + std::to_string(r.score));
    return n;
  };
  CHECK(names(replica->Recommend("u3", 10, false, Blend())) ==
        names(a->Recommend("u3", 10, false, Blend())));
  REQUIRE(replica->ApplySnapshot(sb).ok());
  CHECK(names(replica->Recommend("u3", 10, false, Blend())) ==
        names(b->Recommend("u3", 10, false, Blend())));
}

namespace {

Event Click(const std::string& user, const std::string& item, float label = 1.0f) {
  Event e{Task::kClick, user, item, label};
  e.item_features = {"cat=" + item.substr(0, 2)};
  return e;
}

}  // namespace

TEST_CASE("Admission: an id gets a row of its own at its admit_after-th occurrence",
          "[Learner][admission]") {
  LearnerOptions o;
  o.admit_after = 3;
  o.threads = GENERATE(1, 2);
  auto l = MakeLearner(o);
  Blend blend;
  // Warm items first, so that only the visitor waits for admission.
  for (int i = 0; i < 3; ++i)
    for (int u = 0; u < 20; ++u)
      l->Train(std::vector<Event>{Click("regular" + std::to_string(u), "i" + std::to_string(u % 5),
                                        float(u % 2))});
  const LearnerStats before = l->Stats();
  CHECK(before.items == 5);
  CHECK(before.users == 20);
  // Seen twice: learned through the prior row, no row of its own.
  l->Train(std::vector<Event>{Click("visitor", "i1")});
  l->Train(std::vector<Event>{Click("visitor", "i2")});
  CHECK_FALSE(l->Score("visitor", "i1", blend).user_known);
  CHECK(l->Stats().users == 20);
  CHECK(l->Stats().not_admitted_users == before.not_admitted_users + 2);
  // Scored as any id without a row: through the prior row.
  CHECK(l->Score("visitor", "i1", blend).prediction.click ==
        l->Score("never-seen", "i1", blend).prediction.click);
  // Not a candidate of any recommendation.
  for (const Recommendation& r : l->Recommend("regular1", 10, false, blend))
    CHECK(r.item.front() == 'i');

  SECTION("the third occurrence admits it") {
    l->Train(std::vector<Event>{Click("visitor", "i3")});
    CHECK(l->Score("visitor", "i1", blend).user_known);
    CHECK(l->Stats().users == 21);
  }
  SECTION("the counts are part of the stored model") {
    ModelSnapshot snap;
    l->TakeSnapshot(true, &snap);
    auto restored = MakeLearner(o);
    REQUIRE(restored->ApplySnapshot(snap).ok());
    CHECK(restored->Score("visitor", "i1", blend).prediction.click ==
          l->Score("visitor", "i1", blend).prediction.click);
    restored->Train(std::vector<Event>{Click("visitor", "i3")});
    CHECK(restored->Score("visitor", "i1", blend).user_known);
  }
}

TEST_CASE("Admission: bad admit_after is refused naming the key", "[Learner][admission]") {
  for (int bad : {0, 256}) {
    LearnerOptions o;
    o.admit_after = bad;
    std::unique_ptr<Learner> l;
    Status s = Learner::Create(o, &l);
    CHECK(s.IsInvalidArgument());
    CHECK(s.message().find("model.admit_after") != std::string::npos);
  }
}

namespace {

Event At(const std::string& user, const std::string& item, int64_t ts_s,
         Task task = Task::kClick) {
  Event e{task, user, item, 1.0f};
  e.ts_ms = ts_s * 1000;
  return e;
}

}  // namespace

TEST_CASE("Expiry removes users not seen for expire_user_s of event time", "[Learner][expiry]") {
  LearnerOptions o;
  o.expire_user_s = 100;
  o.threads = GENERATE(1, 2);
  auto l = MakeLearner(o);
  Blend blend;
  l->Train(std::vector<Event>{At("old", "i1", 1000), At("old", "i2", 1000, Task::kPurchase),
                              At("late", "i1", 1000)});
  ModelSnapshot snap;
  l->TakeSnapshot(true, &snap);  // the store has them
  l->Train(std::vector<Event>{At("recent", "i1", 1090)});
  CHECK(l->Stats().users == 3);  // 1000 is within 100 s of 1090
  // An event out of order (older than the latest) neither moves event time
  // back nor keeps its user alive past its own time.
  l->Train(std::vector<Event>{At("late", "i2", 1010), At("recent", "i2", 1201)});
  CHECK(l->Stats().event_time_s == 1201);
  CHECK(l->Stats().users == 1);  // old (1000) and late (1010) are over 100 s old
  CHECK(l->Stats().expired_users == 2);
  CHECK_FALSE(l->Score("old", "i1", blend).user_known);
  CHECK(l->Score("recent", "i1", blend).user_known);
  // A never-seen user and an expired one score alike: the expired one
  // starts afresh, its history and purchases gone.
  CHECK(l->Score("old", "i1", blend).prediction.click ==
        l->Score("stranger", "i1", blend).prediction.click);
  for (const Recommendation& r : l->Recommend("old", 5, true, blend)) CHECK(r.item != "");

  // The next snapshot carries the deletions, purchases included.
  ModelSnapshot delta;
  l->TakeSnapshot(false, &delta);
  REQUIRE(delta.deleted.size() == 1);
  std::vector<std::string> gone = delta.deleted[0].keys;
  std::sort(gone.begin(), gone.end());
  CHECK(gone == std::vector<std::string>{"late", "old"});
  CHECK(delta.deleted_purchases == std::vector<std::pair<std::string, std::string>>{{"old", "i2"}});
  for (const TableDelta& t : delta.tables)
    for (const std::string& k : t.keys) CHECK((t.table != "user" || (k != "old" && k != "late")));
  // Applied elsewhere (a replica, a restore), it removes them there too.
  auto other = MakeLearner(o);
  REQUIRE(other->ApplySnapshot(snap).ok());
  CHECK(other->Score("old", "i1", blend).user_known);
  REQUIRE(other->ApplySnapshot(delta).ok());
  CHECK_FALSE(other->Score("old", "i1", blend).user_known);
  CHECK(other->Stats().users == l->Stats().users);

  // A user who returns gets a row again, and the next snapshot has it.
  l->Train(std::vector<Event>{At("old", "i3", 1202)});
  CHECK(l->Score("old", "i1", blend).user_known);
  ModelSnapshot back;
  l->TakeSnapshot(false, &back);
  CHECK(back.deleted.empty());
  bool has_old = false;
  for (const TableDelta& t : back.tables)
    for (const std::string& k : t.keys) has_old |= t.table == "user" && k == "old";
  CHECK(has_old);
}

TEST_CASE("Expiry keeps memory flat while users come and go", "[Learner][expiry]") {
  LearnerOptions o;
  o.expire_user_s = 60;
  o.threads = 1;
  auto l = MakeLearner(o);
  // 200 rounds of 100 new users, a minute apart: about two rounds are alive
  // at any time; their rows are reused.
  for (int round = 0; round < 200; ++round) {
    std::vector<Event> events;
    for (int u = 0; u < 100; ++u)
      events.push_back(At("visitor" + std::to_string(round * 100 + u), "i" + std::to_string(u % 7),
                          1000 + 60 * round));
    l->Train(events);
  }
  const LearnerStats s = l->Stats();
  CHECK(s.users <= 300);
  CHECK(s.expired_users >= 19700);
  CHECK(s.user_rows_allocated <= 400);
}


TEST_CASE("Expiry removes items and features, and histories, purchases and lists drop them",
          "[Learner][expiry]") {
  LearnerOptions o;
  o.expire_item_s = 100;
  o.expire_feature_s = 100;
  o.threads = GENERATE(1, 2);
  auto l = MakeLearner(o);
  Blend blend;
  Event old_view = At("buyer", "old-item", 1000);
  old_view.item_features = {"cat=old"};
  Event old_buy = At("buyer", "old-item", 1000, Task::kPurchase);
  l->Train(std::vector<Event>{old_view, old_buy});
  ModelSnapshot first;
  l->TakeSnapshot(true, &first);
  // Two hundred seconds later the buyer and other items are active, the
  // old item and its category are not.
  for (int round = 0; round < 30; ++round) {
    std::vector<Event> events;
    for (int k = 0; k < 50; ++k) {
      Event e = At("u" + std::to_string(k), "fresh" + std::to_string((round * 50 + k) % 40),
                   1200 + round);
      e.item_features = {"cat=new"};
      events.push_back(e);
    }
    events.push_back(At("buyer", "fresh1", 1200 + round));
    l->Train(events);
  }
  const LearnerStats s = l->Stats();
  CHECK(s.expired_items == 1);
  CHECK(s.expired_features == 1);
  CHECK_FALSE(l->Score("buyer", "old-item", blend).item_known);
  for (const Recommendation& r : l->Recommend("buyer", 50, false, blend)) CHECK(r.item != "old-item");
  // Everything the store or a replica needs to forget it.
  ModelSnapshot delta;
  l->TakeSnapshot(false, &delta);
  std::map<std::string, std::vector<std::string>> deleted;
  for (const TableDeletion& d : delta.deleted) deleted[d.table] = d.keys;
  CHECK(deleted["item"] == std::vector<std::string>{"old-item"});
  CHECK(deleted["item_feature"] == std::vector<std::string>{"cat=old"});
  CHECK(delta.deleted_purchases ==
        std::vector<std::pair<std::string, std::string>>{{"buyer", "old-item"}});
  ModelSnapshot all;
  l->TakeSnapshot(true, &all);
  for (const FeatureListDelta& list : all.feature_lists)
    for (size_t i = 0; i < list.keys.size(); ++i)
      for (const std::string& f : list.features[i]) {
        CHECK(f != "old-item");
        CHECK(f != "cat=old");
      }
  // Applied to a copy of the old model, the deletions remove them there.
  auto replica = MakeLearner(o);
  REQUIRE(replica->ApplySnapshot(first).ok());
  CHECK(replica->Score("buyer", "old-item", blend).item_known);
  REQUIRE(replica->ApplySnapshot(all).ok());
  REQUIRE(replica->ApplySnapshot(delta).ok());
  CHECK_FALSE(replica->Score("buyer", "old-item", blend).item_known);

  // Items keep coming and going: their rows are reused once every user was
  // visited, so the table does not grow with them.
  for (int round = 0; round < 200; ++round) {
    std::vector<Event> events;
    for (int k = 0; k < 20; ++k)
      events.push_back(At("u" + std::to_string(k), "churn" + std::to_string(round * 20 + k),
                          1300 + 60 * round));
    l->Train(events);
  }
  CHECK(l->Stats().items <= 100);
  CHECK(l->Stats().expired_items >= 3800);
  ModelSnapshot end;
  l->TakeSnapshot(true, &end);
  for (const FeatureListDelta& list : end.feature_lists) {
    if (list.table != "user_history") continue;
    for (size_t i = 0; i < list.keys.size(); ++i)
      for (const std::string& item : list.features[i])
        CHECK(l->Score(list.keys[i], item, blend).item_known);
  }
}


TEST_CASE("Expiry during a snapshot: the next full snapshot leaves the removed users out",
          "[Learner][expiry]") {
  LearnerOptions o;
  o.expire_user_s = 100;
  o.threads = 1;
  auto l = MakeLearner(o);
  std::vector<Event> first;
  for (int u = 0; u < 50; ++u) first.push_back(At("early" + std::to_string(u), "i1", 1000));
  l->Train(first);
  // A full snapshot lists every row; while it is copied out, training goes
  // on and expiry removes the listed users.
  ModelSnapshot during;
  l->BeginSnapshot(true, &during);
  l->Train(std::vector<Event>{At("later", "i1", 2000)});
  l->FinishSnapshot(&during);
  CHECK(l->Stats().expired_users == 50);
  // The snapshot under way still had them (it was taken before); the next
  // ones do not, and the deletions come with the next one.
  ModelSnapshot after;
  l->BeginSnapshot(true, &after);
  l->FinishSnapshot(&after);
  size_t users = 0;
  for (const TableDelta& t : after.tables)
    if (t.table == "user") users = t.keys.size();
  CHECK(users == 1);
  size_t deleted = 0;
  for (const TableDeletion& d : after.deleted) deleted += d.keys.size();
  CHECK(deleted == 50);
  // Their rows go to new users afterwards.
  std::vector<Event> next;
  for (int u = 0; u < 50; ++u) next.push_back(At("next" + std::to_string(u), "i1", 2001));
  l->Train(next);
  l->Train(std::vector<Event>{At("later", "i1", 2002)});
  CHECK(l->Stats().user_rows_allocated <= 52);
}

}  // namespace recstream::learner
