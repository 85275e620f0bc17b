#include "learner/learner.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>

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

}  // namespace recstream::learner
