#include "learner/optimizer.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

namespace recstream::learner {
namespace {

TEST_CASE("RowOptimizer: Adagrad and SGD with L2 and clipping", "[optimizer]") {
  const RowOptimizer adagrad(Optimizer::kAdagrad, 0.0f, 0.01f, 5.0f);
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
    adagrad.Update(w.data(), acc.data(), size_t(n), g.data(), n, 0.2f);
    for (int i = 0; i < n; ++i) {
      INFO("n " << n << " i " << i);
      CHECK(w[i] == Approx(want_w[i]).epsilon(1e-5));
      CHECK(acc[i] == Approx(want_acc[i]).epsilon(1e-5));
    }
  }
  const RowOptimizer sgd(Optimizer::kSgd, 0.0f, 0.0f, 1.0f);
  float w[2] = {1.0f, 1.0f}, state[2] = {7.0f, 7.0f}, g[2] = {0.5f, -9.0f};
  sgd.Update(w, state, 2, g, 2, 0.1f);
  CHECK(w[0] == Approx(0.95f));
  CHECK(w[1] == Approx(1.1f));  // clipped to -1
  CHECK(state[0] == 7.0f);      // SGD keeps no state
}

TEST_CASE("RowOptimizer: FTRL-Proximal, sparse with L1", "[optimizer]") {
  const float lr = 0.1f;
  const RowOptimizer ftrl(Optimizer::kFtrl, 0.0f, 0.0f, 5.0f);
  CHECK(ftrl.state_blocks() == 2);
  // A row starts from its initial value: z = -w * z_scale gives it back.
  const float scale = ftrl.InitialZScale(lr, 1.0f);
  CHECK(scale == Approx((1.0f + 1.0f) / lr));
  float w[2] = {0.3f, -0.2f}, state[4] = {-0.3f * scale, 0.2f * scale, 1.0f, 1.0f};
  const float zero[2] = {0.0f, 0.0f};
  ftrl.Update(w, state, 2, zero, 2, lr);  // no gradient: no change
  CHECK(w[0] == Approx(0.3f));
  CHECK(w[1] == Approx(-0.2f));
  // A steady gradient moves the value against it, and n accumulates.
  const float g[2] = {1.0f, -1.0f};
  for (int i = 0; i < 20; ++i) ftrl.Update(w, state, 2, g, 2, lr);
  CHECK(w[0] < 0.0f);
  CHECK(w[1] > 0.0f);
  CHECK(state[2] == Approx(21.0f));
  // With L1, a coordinate whose gradients cancel out stays exactly 0.
  const RowOptimizer sparse(Optimizer::kFtrl, 0.5f, 0.0f, 5.0f);
  float v[1] = {0.0f}, st[2] = {0.0f, 1.0f};
  for (int i = 0; i < 10; ++i) {
    const float gi[1] = {i % 2 ? 0.3f : -0.3f};
    sparse.Update(v, st, 1, gi, 1, lr);
    CHECK(v[0] == 0.0f);
  }
  // A consistent one crosses the threshold.
  for (int i = 0; i < 10; ++i) sparse.Update(v, st, 1, g, 1, lr);
  CHECK(v[0] < 0.0f);
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
