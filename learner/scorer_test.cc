#include "learner/scorer.h"

#include <catch2/catch.hpp>

#include "learner/trainer.h"

namespace recstream::learner {
namespace {

// (Appending avoids GCC 12's false -Wrestrict on "u" + std::to_string.)
std::string Id(const char* prefix, int n) {
  std::string id = prefix;
  return id += std::to_string(n);
}

std::vector<Event> Stream(int n) {
  std::vector<Event> events(n);
  for (int i = 0; i < n; ++i) {
    Event& e = events[i];
    e.task = i % 5 == 4 ? Task::kRating : Task::kClick;
    e.user = Id("u", i % 30);
    e.item = Id("i", (i * 7) % 40);
    e.label = e.task == Task::kRating ? float(1 + i % 5) : float((i / 3) % 2);
  }
  return events;
}

TEST_CASE("Scorer: Score, ScoreMany and Recommend agree bit for bit", "[scorer]") {
  LearnerOptions o;
  o.threads = 1;
  Model model(o);
  Trainer trainer(&model);
  trainer.Train(Stream(3000), nullptr);
  const Scorer scorer(&model);
  const Blend blend;
  std::vector<std::string> items;
  for (int i = 0; i < 40; ++i) items.push_back(Id("i", i));
  items.push_back("never-seen");
  std::vector<ScoreResult> many;
  scorer.ScoreMany("u3", items, blend, &many);
  REQUIRE(many.size() == items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const ScoreResult one = scorer.Score("u3", items[i], blend);
    CHECK(one.score == many[i].score);
    CHECK(one.prediction.click == many[i].prediction.click);
    CHECK(one.item_known == (i < 40));
  }
  const auto top = scorer.Recommend("u3", 5, false, blend);
  REQUIRE(top.size() == 5);
  for (size_t k = 0; k < top.size(); ++k) {
    CHECK(scorer.Score("u3", top[k].item, blend).score == top[k].score);
    if (k > 0) CHECK(top[k - 1].score >= top[k].score);
  }
  // Nothing outside the top scores higher than its last entry.
  for (const ScoreResult& r : many)
    if (r.item_known) CHECK(r.score <= top.front().score);
}

TEST_CASE("Scorer: request-time features score a never-seen item from its features", "[scorer]") {
  // Items of category good are clicked, those of category bad are not.
  std::vector<Event> events(6000);
  for (int i = 0; i < int(events.size()); ++i) {
    Event& e = events[size_t(i)];
    e.task = Task::kClick;
    e.user = Id("u", i % 40);
    const bool good = i % 2 == 0;
    e.item = Id(good ? "g" : "b", (i / 2) % 100);
    e.item_features = {good ? "cat=good" : "cat=bad"};
    e.label = good ? 1.0f : 0.0f;
  }
  LearnerOptions o;
  o.threads = 1;
  Model model(o);
  Trainer trainer(&model);
  trainer.Train(events, nullptr);
  const Scorer scorer(&model);
  const Blend blend;
  const std::vector<std::string> good = {"cat=good"}, bad = {"cat=bad"}, none = {"cat=unseen"};
  const ScoreResult cold_good = scorer.Score("u1", "new-item", blend, nullptr, &good);
  const ScoreResult cold_bad = scorer.Score("u1", "new-item", blend, nullptr, &bad);
  const ScoreResult cold_plain = scorer.Score("u1", "new-item", blend);
  CHECK_FALSE(cold_good.item_known);
  CHECK(cold_good.prediction.click > cold_plain.prediction.click + 0.1f);
  CHECK(cold_bad.prediction.click < cold_plain.prediction.click - 0.1f);
  // A feature the model never saw adds nothing.
  CHECK(scorer.Score("u1", "new-item", blend, nullptr, &none).score == cold_plain.score);
  // A known item with its stored features given again scores the same.
  CHECK(scorer.Score("u1", "g0", blend, nullptr, &good).score ==
        scorer.Score("u1", "g0", blend).score);
  // ScoreMany takes features per item, null meaning the stored ones.
  const std::vector<std::string> items = {"new-item", "g0", "new-item"};
  const std::vector<std::string>* per_item[3] = {&good, nullptr, &bad};
  std::vector<ScoreResult> many;
  scorer.ScoreMany("u1", items, blend, &many, nullptr, per_item);
  REQUIRE(many.size() == 3);
  CHECK(many[0].score == cold_good.score);
  CHECK(many[1].score == scorer.Score("u1", "g0", blend).score);
  CHECK(many[2].score == cold_bad.score);
  // User features at request time: a never-seen user with no known
  // feature scores as one without features.
  CHECK(scorer.Score("nobody", "g0", blend, &none, nullptr).score ==
        scorer.Score("nobody", "g0", blend).score);
}

}  // namespace
}  // namespace recstream::learner
