#include "learner/optimizer.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

namespace recstream::learner {
namespace {

TEST_CASE("RowOptimizer: Adagrad and SGD with L2 and clipping", "[optimizer]") {
  const RowOptimizer adagrad(Optimizer::kAdagrad, 0.01f, 5.0f);
  for (int n : {1, 3, 8, 19}) {
    std::vector<float> w(n), acc(n, 1.0f), g(n);
    for (int i = 0; i < n; ++i) {
      w[i] = 0.1f * float(i) - 0.5f;
      g[i] = i % 3 == 0 ? 100.0f : 0.5f - 0.1f * float(i);  // some beyond the clip
    }
    std::vector<float> want_w = w, want_acc = acc;
    for (int i = 0; i < n; ++i) {
      const double gi = std::clamp(double(g[i]) + 0.01 * w[i], -5.0, 5.0);
      want_acc[i] = float(acc[i] + gi * gi);
      want_w[i] = float(w[i] - 0.2 * gi / (std::sqrt(double(want_acc[i])) + 1e-8));
    }
    adagrad.Update(w.data(), acc.data(), g.data(), n, 0.2f);
    for (int i = 0; i < n; ++i) {
      INFO("n " << n << " i " << i);
      CHECK(w[i] == Approx(want_w[i]).epsilon(1e-5));
      CHECK(acc[i] == Approx(want_acc[i]).epsilon(1e-5));
    }
  }
  const RowOptimizer sgd(Optimizer::kSgd, 0.0f, 1.0f);
  float w[2] = {1.0f, 1.0f}, state[2] = {7.0f, 7.0f}, g[2] = {0.5f, -9.0f};
  sgd.Update(w, state, g, 2, 0.1f);
  CHECK(w[0] == Approx(0.95f));
  CHECK(w[1] == Approx(1.1f));  // clipped to -1
  CHECK(state[0] == 7.0f);      // SGD keeps no state
}

TEST_CASE("DenseOptimizer: each kind's step", "[optimizer]") {
  LearnerOptions o;
  o.lr_dense = 0.1f;
  o.grad_clip = 5.0f;
  const float g[2] = {1.0f, -2.0f};
  for (Optimizer kind :
       {Optimizer::kAdagrad, Optimizer::kSgd, Optimizer::kAdam, Optimizer::kAdamW}) {
    INFO(OptimizerName(kind));
    o.dense_optimizer = kind;
    const DenseOptimizer opt(o);
    CHECK(opt.needs_moments() == (kind == Optimizer::kAdam || kind == Optimizer::kAdamW));
    float w[2] = {0.5f, 0.5f}, acc[2] = {0.0f, 0.0f}, m[2] = {0.0f, 0.0f};
    opt.Step(w, acc, m, g, 2, 1);
    // Every kind steps against the gradient.
    CHECK(w[0] < 0.5f);
    CHECK(w[1] > 0.5f);
    if (kind == Optimizer::kSgd) CHECK(w[0] == Approx(0.4f));
    if (kind == Optimizer::kAdagrad) CHECK(w[0] == Approx(0.5f - 0.1f));  // g / sqrt(g^2)
    if (kind == Optimizer::kAdam)
      CHECK(w[0] == Approx(0.5f - 0.1f).epsilon(1e-4));  // bias-corrected
    if (kind == Optimizer::kAdamW)
      CHECK(w[0] == Approx(0.5f - 0.1f - 0.1f * o.weight_decay * 0.5f).epsilon(1e-4));
  }
}

}  // namespace
}  // namespace recstream::learner
