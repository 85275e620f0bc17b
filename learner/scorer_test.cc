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

}  // namespace
}  // namespace recstream::learner
