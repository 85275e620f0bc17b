// Baselines that `recstream eval` runs beside the learner on the same stream
// for a side-by-side comparison. Each predicts every event of a task before
// learning from it (progressive validation, like the learner).
//
//  popularity   click/purchase: the item's smoothed positive rate so far;
//               rating: the item's smoothed mean rating so far.
//  biased_mf    one online matrix factorisation per task, trained by SGD:
//               y = mu + b_u + b_i + p_u . q_i (logistic for click and
//               purchase, squared error for rating). Side features unused.
//  single_task  one learner::Learner per task (the evaluated options), each
//               seeing only its own task's events.
//
// Thread safety: a Baseline is not thread safe.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "learner/learner.h"

namespace recstream::eval {

class Baseline {
 public:
  virtual ~Baseline() = default;
  virtual std::string_view name() const = 0;
  // For each event in order: predict its task (probability, or rating
  // clipped to the learner options' range) into (*before)[i], then learn.
  virtual void Train(std::span<const learner::Event> events, std::vector<float>* before) = 0;
};

struct BiasedMfOptions {
  int dim = 16;
  float lr = 0.05f;         // SGD learning rate of factors and biases
  float l2 = 0.01f;         // L2 on factors and biases, per update
  float init_scale = 0.1f;  // factors start uniform in [-init_scale, init_scale]
  uint64_t seed = 7;
};

// `learner` gives the rating range (and, for single_task, the model).
std::unique_ptr<Baseline> NewPopularityBaseline(const learner::LearnerOptions& learner);
std::unique_ptr<Baseline> NewBiasedMfBaseline(const learner::LearnerOptions& learner,
                                              const BiasedMfOptions& options = {});
// Fails (nullptr) only when the learner options are invalid.
std::unique_ptr<Baseline> NewSingleTaskBaseline(const learner::LearnerOptions& learner);

}  // namespace recstream::eval
