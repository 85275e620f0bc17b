#include "learner/task_weighting.h"

#include <catch2/catch.hpp>
#include <cmath>

namespace recstream::learner {
namespace {

LearnerOptions With(Weighting w) {
  LearnerOptions o;
  o.weighting = w;
  return o;
}

// A chunk of `n` events per task with these mean losses and gradient norms.
TaskChunkStats Chunk(std::array<double, kNumTasks> loss, std::array<double, kNumTasks> grad,
                     uint64_t n = 64) {
  TaskChunkStats c;
  for (int t = 0; t < kNumTasks; ++t) {
    c.loss_sum[t] = loss[t] * double(n);
    c.grad_norm_sum[t] = grad[t] * double(n);
    c.count[t] = n;
  }
  return c;
}

float W(const TaskWeighting& w, Task t) { return w.weight(t); }

TEST_CASE("TaskWeighting fixed: the configured weights, whatever the losses", "[weighting]") {
  LearnerOptions o = With(Weighting::kFixed);
  o.fixed_weights = {1.0f, 3.0f, 0.5f};
  TaskWeighting w(o);
  for (int i = 0; i < 100; ++i) w.Update(Chunk({0.1, 5.0, 2.0}, {1, 1, 1}));
  CHECK(W(w, Task::kClick) == 1.0f);
  CHECK(W(w, Task::kPurchase) == 3.0f);
  CHECK(W(w, Task::kRating) == 0.5f);
}

TEST_CASE("TaskWeighting uncertainty: a task with a larger loss gets a smaller weight",
          "[weighting]") {
  TaskWeighting w(With(Weighting::kUncertainty));
  CHECK(W(w, Task::kClick) == 1.0f);
  for (int i = 0; i < 2000; ++i) w.Update(Chunk({0.2, 0.2, 3.0}, {1, 1, 1}));
  // exp(-s) -> 1/L at the optimum: about 5 for L = 0.2, 1/3 for L = 3.
  CHECK(W(w, Task::kClick) > 3.0f);
  CHECK(W(w, Task::kRating) < 0.5f);
  // Bounded even when a loss goes to zero (an all-positive task).
  for (int i = 0; i < 20000; ++i) w.Update(Chunk({0.0, 0.2, 3.0}, {1, 1, 1}));
  CHECK(W(w, Task::kClick) <= std::exp(4.0f) * 1.0001f);
}

TEST_CASE("TaskWeighting DWA: the task whose loss falls slower gets more weight", "[weighting]") {
  TaskWeighting w(With(Weighting::kDwa));
  // Click's loss halves from window to window, rating's stays: rating's
  // ratio r = 1 beats click's 0.5.
  double click = 1.0;
  for (int window = 0; window < 4; ++window) {
    for (int i = 0; i < 40; ++i) w.Update(Chunk({click, 0.5, 1.0}, {1, 1, 1}));  // 2560 events
    click *= 0.5;
  }
  CHECK(W(w, Task::kRating) > W(w, Task::kClick) + 0.05f);
  CHECK(W(w, Task::kClick) + W(w, Task::kPurchase) + W(w, Task::kRating) ==
        Approx(3.0).epsilon(1e-5));
}

TEST_CASE("TaskWeighting GradNorm: a task with a larger gradient norm loses weight",
          "[weighting]") {
  TaskWeighting w(With(Weighting::kGradNorm));
  // Equal training rates; click's gradients are 4x the others'.
  for (int i = 0; i < 400; ++i) w.Update(Chunk({0.7, 0.7, 0.7}, {4.0, 1.0, 1.0}));
  CHECK(W(w, Task::kClick) < 0.9f);
  CHECK(W(w, Task::kPurchase) > 1.05f);
  CHECK(W(w, Task::kClick) + W(w, Task::kPurchase) + W(w, Task::kRating) ==
        Approx(3.0).epsilon(1e-4));
}

TEST_CASE("TaskWeighting state round-trips through Save and Load", "[weighting]") {
  for (Weighting kind : {Weighting::kUncertainty, Weighting::kGradNorm, Weighting::kDwa}) {
    TaskWeighting a(With(kind)), b(With(kind));
    for (int i = 0; i < 300; ++i) a.Update(Chunk({0.3 + i * 1e-3, 0.6, 1.2}, {2, 1, 0.5}));
    REQUIRE(b.Load(a.Save()));
    for (Task t : kAllTasks) CHECK(W(a, t) == W(b, t));
    a.Update(Chunk({0.2, 0.5, 1.0}, {1, 1, 1}));
    b.Update(Chunk({0.2, 0.5, 1.0}, {1, 1, 1}));
    for (Task t : kAllTasks) CHECK(W(a, t) == W(b, t));
    CHECK_FALSE(b.Load(std::vector<float>(3)));
  }
}

}  // namespace
}  // namespace recstream::learner
