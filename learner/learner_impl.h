// Private to recstream_learner: what a Learner is made of. The facade
// (learner.h) forwards to three parts:
//   Model    (model.h)    the shared state: tables, feature lists, dense
//                         block, task weighting, counters, metrics;
//   Trainer  (trainer.h)  learning events into the model;
//   Scorer   (scorer.h)   scores and recommendations from the model.
// Snapshots (learner_snapshot.cc) export and apply the Model directly.
// Not installed, not included outside learner/.
#pragma once

#include "learner/learner.h"
#include "learner/model.h"
#include "learner/scorer.h"
#include "learner/trainer.h"

namespace recstream::learner {

struct Learner::Impl {
  explicit Impl(const LearnerOptions& o) : model(o), trainer(&model), scorer(&model) {}
  Model model;
  Trainer trainer;
  // Declared last: destroyed first, stopping its refresher thread before
  // the model goes.
  Scorer scorer;
};

}  // namespace recstream::learner
