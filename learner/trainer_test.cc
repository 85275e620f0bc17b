#include "learner/trainer.h"

#include <catch2/catch.hpp>

namespace recstream::learner {
namespace {

// (Appending avoids GCC 12's false -Wrestrict on "u" + std::to_string.)
std::string Id(const char* prefix, int n) {
  std::string id = prefix;
  return id += std::to_string(n);
}

std::vector<Event> Stream(int n, int users) {
  std::vector<Event> events(n);
  for (int i = 0; i < n; ++i) {
    Event& e = events[i];
    e.task = Task::kClick;
    e.user = Id("u", i % users);
    e.item = Id("i", i % 17);
    // Even users click even items: learnable.
    e.label = float((i % users) % 2 == (i % 17) % 2);
    e.user_features = {Id("group=", (i % users) % 2)};
  }
  return events;
}

TEST_CASE("Trainer: predicts before learning, counts every event, learns the pattern",
          "[trainer]") {
  for (int threads : {1, 2}) {
    INFO("threads " << threads);
    LearnerOptions o;
    o.threads = threads;
    Model model(o);
    Trainer trainer(&model);
    const auto events = Stream(20000, 50);
    std::vector<Prediction> before;
    trainer.Train(events, &before);
    REQUIRE(before.size() == events.size());
    // The prior, before any learning (on two threads, chunks run in any
    // order: the first event's chunk may follow others).
    if (threads == 1) CHECK(before[0].click == Approx(0.5f).margin(0.05));
    CHECK(model.learned[int(Task::kClick)].load() == events.size());
    CHECK(model.refused.load() == 0);
    // Late predictions separate the two groups.
    double pos = 0, neg = 0, npos = 0, nneg = 0;
    for (size_t i = events.size() - 2000; i < events.size(); ++i) {
      (events[i].label > 0.5f ? pos : neg) += before[i].click;
      (events[i].label > 0.5f ? npos : nneg) += 1;
    }
    CHECK(pos / npos > neg / nneg + 0.2);
    // Every thread's updates of the shared feature rows landed (staged rows
    // are merged at the end of a parallel call): the group rows moved.
    const float* g0 = model.user_features.Row(model.user_features.Find("group=0"));
    const float* g1 = model.user_features.Row(model.user_features.Find("group=1"));
    CHECK(g0[model.width] > o.adagrad_init);  // accumulators grew
    CHECK(g1[model.width] > o.adagrad_init);
  }
}

TEST_CASE("Trainer: ParallelFor covers every index once", "[trainer]") {
  LearnerOptions o;
  o.threads = 2;
  Model model(o);
  Trainer trainer(&model);
  std::vector<std::atomic<int>> hits(10000);
  trainer.ParallelFor(hits.size(), 64, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
  });
  for (const auto& h : hits) CHECK(h.load() == 1);
}

}  // namespace
}  // namespace recstream::learner
