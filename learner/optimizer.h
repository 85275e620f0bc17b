// Optimizers: every parameter update of the learner goes through one of the
// two types here.
//
// RowOptimizer updates embedding rows (user, item and feature vectors, their
// per-task biases, trainable pretrained vectors): n values w, and their
// state in blocks `block` floats apart (EmbeddingTable's layout: values,
// then the state blocks).
//   adagrad: g = clip(grad + l2 w); acc += g^2; w -= lr g / (sqrt(acc) + 1e-8)
//   sgd:     w -= lr clip(grad + l2 w)
//   ftrl:    FTRL-Proximal (McMahan et al., KDD 2013), per coordinate, with
//            beta = 1, state z (first block) and n (second):
//            g = clip(grad); s = (sqrt(n + g^2) - sqrt(n)) / lr;
//            z += g - s w; n += g^2;
//            w = 0 if |z| <= l1, else -(z - sign(z) l1) / ((1 + sqrt(n)) / lr + l2)
// DenseOptimizer updates the dense block (bottom, experts, gates, heads,
// projection) once per chunk from the chunk's summed gradient:
//   adagrad as above without L2; sgd; adam / adamw (bias-corrected moments,
//   adamw with decoupled weight decay lr * weight_decay).
//
// Contract: Update/Step write only the memory they are given; they do not
// check for NaN (the trainer refuses non-finite gradients before calling).
// Const and stateless apart from their settings: safe from any thread on
// distinct memory, and under Hogwild on shared rows (a lost update is
// possible, a torn float is not).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "learner/model_math.h"
#include "learner/options.h"

namespace recstream::learner {

class RowOptimizer {
 public:
  RowOptimizer(Optimizer kind, float l1, float l2, float clip)
      : kind_(kind), l1_(l1), l2_(l2), clip_(clip) {}
  // Updates w[0, n) from grad[0, n); their state is state[0, n) (and
  // state[block, block + n) for ftrl).
  void Update(float* w, float* state, size_t block, const float* grad, int n, float lr) const;
  // The state blocks a row needs (EmbeddingTable::RowState::blocks).
  int state_blocks() const { return kind_ == Optimizer::kFtrl ? 2 : 1; }
  // With ftrl, the z_scale of a new row's state (EmbeddingTable::RowState)
  // for values learned at `lr` from accumulators starting at `accum_init`:
  // the z that gives the initial values back. 0 otherwise.
  float InitialZScale(float lr, float accum_init) const;

 private:
  Optimizer kind_;
  float l1_, l2_, clip_;
};

class DenseOptimizer {
 public:
  explicit DenseOptimizer(const LearnerOptions& options);
  // Whether Step needs `moments` (Adam's first moments).
  bool needs_moments() const { return kind_ == Optimizer::kAdam || kind_ == Optimizer::kAdamW; }
  // One step over w[0, n): `accum` holds Adagrad's accumulators or Adam's
  // second moments, `moments` Adam's first moments (else unused); `step` is
  // the 1-based step count (Adam's bias correction).
  void Step(float* w, float* accum, float* moments, const float* grad, size_t n,
            uint64_t step) const;

 private:
  Optimizer kind_;
  float lr_, clip_, beta1_, beta2_, weight_decay_;
};

// Inline: the trainer calls it for every row of every event (a bias, one
// value, as often as a vector).
inline void RowOptimizer::Update(float* w, float* state, size_t block, const float* grad, int n,
                                 float lr) const {
  if (kind_ == Optimizer::kFtrl) {
    float* z = state;
    float* acc = state + block;
    for (int i = 0; i < n; ++i) {
      const float g = std::clamp(grad[i], -clip_, clip_);
      const float n_new = acc[i] + g * g;
      const float sigma = (std::sqrt(n_new) - std::sqrt(acc[i])) / lr;
      z[i] += g - sigma * w[i];
      acc[i] = n_new;
      w[i] = std::abs(z[i]) <= l1_
                 ? 0.0f
                 : -(z[i] - std::copysign(l1_, z[i])) / ((1.0f + std::sqrt(n_new)) / lr + l2_);
    }
    return;
  }
  if (kind_ == Optimizer::kSgd) {
    for (int i = 0; i < n; ++i) w[i] -= lr * std::clamp(grad[i] + l2_ * w[i], -clip_, clip_);
    return;
  }
  if (n == 1) {  // a bias: not worth the vector kernel's call
    const float g = std::clamp(grad[0] + l2_ * w[0], -clip_, clip_);
    state[0] += g * g;
    w[0] -= lr * g / (std::sqrt(state[0]) + 1e-8f);
    return;
  }
  AdagradUpdate(w, state, grad, size_t(n), lr, l2_, clip_);
}

}  // namespace recstream::learner
