#include "learner/learner.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <random>
#include <thread>

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
  auto l = MakeLearner(o);
  std::vector<Event> events(200, Event{Task::kClick, "u", "i", 1.0f});
  std::vector<Prediction> before;
  l->Train(events, &before);
  REQUIRE(before.size() == 200);
  CHECK(before[0].click == Approx(0.5f).margin(0.1));
  CHECK(before[199].click > before[0].click);
  CHECK(before[199].click < l->Score("u", "i", Blend()).prediction.click + 1e-6f);
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
  REQUIRE(full.feature_lists.size() == 2);
  CHECK(full.feature_lists[0].keys.size() == 30);
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

}  // namespace recstream::learner
