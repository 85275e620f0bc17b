#include "learner/optimizer.h"

#include <algorithm>
#include <cmath>

#include "learner/model_math.h"

namespace recstream::learner {

float RowOptimizer::InitialZScale(float lr, float accum_init) const {
  if (kind_ != Optimizer::kFtrl) return 0.0f;
  return (1.0f + std::sqrt(accum_init)) / lr + l2_;
}

DenseOptimizer::DenseOptimizer(const LearnerOptions& o)
    : kind_(o.dense_optimizer),
      lr_(o.lr_dense),
      clip_(o.grad_clip),
      beta1_(o.adam_beta1),
      beta2_(o.adam_beta2),
      weight_decay_(o.weight_decay) {}

void DenseOptimizer::Step(float* w, float* acc, float* m, const float* grad, size_t n,
                          uint64_t step) const {
  switch (kind_) {
    case Optimizer::kAdagrad:
      // A zero gradient leaves its value and accumulator as they are.
      AdagradUpdate(w, acc, grad, n, lr_, 0.0f, clip_);
      return;
    case Optimizer::kSgd:
      for (size_t i = 0; i < n; ++i) w[i] -= lr_ * std::clamp(grad[i], -clip_, clip_);
      return;
    case Optimizer::kAdam:
    case Optimizer::kAdamW: {
      const float b1 = beta1_, b2 = beta2_;
      const float c1 = float(1.0 - std::pow(double(b1), double(step)));
      const float c2 = float(1.0 - std::pow(double(b2), double(step)));
      const float decay = kind_ == Optimizer::kAdamW ? lr_ * weight_decay_ : 0.0f;
      for (size_t i = 0; i < n; ++i) {
        const float g = std::clamp(grad[i], -clip_, clip_);
        m[i] = b1 * m[i] + (1 - b1) * g;
        acc[i] = b2 * acc[i] + (1 - b2) * g * g;
        w[i] -= lr_ * (m[i] / c1) / (std::sqrt(acc[i] / c2) + 1e-8f) + decay * w[i];
      }
      return;
    }
  }
}

}  // namespace recstream::learner
