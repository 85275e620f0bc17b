// Optimizers: every parameter update of the learner goes through one of the
// two types here.
//
// RowOptimizer updates embedding rows (user, item and feature vectors, their
// per-task biases, trainable pretrained vectors): n values with their state
// n floats away (EmbeddingTable's layout: values, then accumulators).
//   adagrad: g = clip(grad + l2 w); acc += g^2; w -= lr g / (sqrt(acc) + 1e-8)
//   sgd:     w -= lr clip(grad + l2 w)
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

#include <cstddef>
#include <cstdint>

#include "learner/options.h"

namespace recstream::learner {

class RowOptimizer {
 public:
  RowOptimizer(Optimizer kind, float l2, float clip)
      : sgd_(kind == Optimizer::kSgd), l2_(l2), clip_(clip) {}
  // w[0, n) and their state state[0, n).
  void Update(float* w, float* state, const float* grad, int n, float lr) const;

 private:
  bool sgd_;
  float l2_, clip_;
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

}  // namespace recstream::learner
