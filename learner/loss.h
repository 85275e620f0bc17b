// Task losses: for a head's output y (a logit, or the rating itself) and the
// event's label, the prediction served, the loss and dL/dy. One small type
// per loss, as fastText's src/loss.h; the trainer picks the task's loss and
// backpropagates dy.
//
// Contract: pure functions of their arguments, safe from any thread. For
// finite inputs the outputs are finite except where noted; the trainer
// still checks (a non-finite loss or gradient refuses the update).
#pragma once

#include <algorithm>
#include <cmath>

#include "learner/options.h"

namespace recstream::learner {

struct LossOutput {
  float prediction = 0.0f;  // what a score reports for this y
  float loss = 0.0f;
  float dy = 0.0f;  // dL/dy
};

// Click and purchase: the logistic (log) loss of p = sigmoid(y). The loss
// uses p clamped to [1e-7, 1 - 1e-7], so it stays finite at saturation.
struct LogisticLoss {
  static LossOutput Forward(float y, float label) {
    const float p = 1.0f / (1.0f + std::exp(-y));
    const float pc = std::clamp(p, 1e-7f, 1.0f - 1e-7f);
    return {p, -(label * std::log(pc) + (1 - label) * std::log(1 - pc)), p - label};
  }
};

// Rating: half the squared error; the prediction is y clipped to the rating
// range (the gradient is not).
struct SquaredLoss {
  float rating_min, rating_max;
  LossOutput Forward(float y, float label) const {
    const float err = y - label;
    return {std::clamp(y, rating_min, rating_max), 0.5f * err * err, err};
  }
};

// Rating: Huber with threshold delta: squared within delta, linear beyond
// (its gradient is bounded by delta).
struct HuberLoss {
  float rating_min, rating_max, delta;
  LossOutput Forward(float y, float label) const {
    const float err = y - label;
    if (std::abs(err) <= delta) return SquaredLoss{rating_min, rating_max}.Forward(y, label);
    return {std::clamp(y, rating_min, rating_max), delta * (std::abs(err) - 0.5f * delta),
            err > 0 ? delta : -delta};
  }
};

// ESMM's purchase (Ma et al., SIGIR 2018): p = p_click * p_cvr, with the log
// loss of p against the purchase label. Two outputs feed it, so it gives
// two gradients: dy for the purchase (cvr) head and dy_click for the click
// head. dL/dy_x = (p - label) / (1 - p) * (1 - p_x), with p clamped to
// [1e-7, 1 - 1e-6] so that the factor stays finite.
struct EsmmProductLoss {
  struct Output {
    LossOutput purchase;
    float dy_click = 0.0f;
  };
  static Output Forward(float y_cvr, float y_click, float label) {
    const float pc = 1.0f / (1.0f + std::exp(-y_click)), pv = 1.0f / (1.0f + std::exp(-y_cvr));
    const float p = std::clamp(pc * pv, 1e-7f, 1.0f - 1e-6f);
    const float k = (p - label) / (1.0f - p);
    return {{pc * pv, -(label * std::log(p) + (1 - label) * std::log(1 - p)), k * (1.0f - pv)},
            k * (1.0f - pc)};
  }
};

// The loss of each task under the options: logistic for click and purchase,
// squared or Huber for rating (ESMM's product is chosen by the trainer,
// which needs the click head's output for it).
class TaskLosses {
 public:
  explicit TaskLosses(const LearnerOptions& o)
      : huber_(o.rating_loss == RatingLoss::kHuber),
        squared_{o.rating_min, o.rating_max},
        huber_loss_{o.rating_min, o.rating_max, o.huber_delta} {}
  LossOutput Forward(Task task, float y, float label) const {
    if (task != Task::kRating) return LogisticLoss::Forward(y, label);
    return huber_ ? huber_loss_.Forward(y, label) : squared_.Forward(y, label);
  }

 private:
  bool huber_;
  SquaredLoss squared_;
  HuberLoss huber_loss_;
};

}  // namespace recstream::learner
