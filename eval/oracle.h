// Oracle bound: how well could any online learner do on a generated stream?
//
// The Bayes ceiling (truth in every event) assumes the true probabilities
// are known from the first event on; no learner can reach it, because it
// must learn each user from that user's own few events. The oracle bound is
// a sharper reference: a predictor that is given the whole hidden world
// (every item's vector and bias, the age group vectors, the intercepts and
// scales, the noise levels) and only has to infer each user's own vector
// and rating bias online, from the user's events in stream order, exactly
// (up to the usual Gaussian approximations) by Bayesian filtering: a
// Gaussian posterior per user, the probit approximation of the logistic
// likelihood for clicks and purchases (assumed-density filtering) and a
// Kalman update for ratings (ignoring the rounding and clipping of values).
// Each event is predicted with the posterior before it is learned, as in
// progressive validation.
//
// A real learner also has to learn the items, so it stays below this bound;
// the gap between the bound and the Bayes ceiling is what the stream itself
// leaves unknowable with that many events per user.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "eval/generator.h"

namespace recstream::eval {

struct OracleTaskBound {
  uint64_t count = 0;
  // click and purchase: AUC over all events and over the last 10% of that
  // task's events, with the Bayes AUC over the same last 10%.
  double auc = 0, last10_auc = 0, last10_bayes_auc = 0;
  // rating: MAE likewise.
  double mae = 0, last10_mae = 0, last10_bayes_mae = 0;
};

struct OracleReport {
  OracleTaskBound click, purchase, rating;
};

// Regenerates the stream of `options` (the same events `recstream gen` writes
// with these options) and computes the oracle bound over it.
// InvalidArgument when the options are invalid.
Status RunOracle(const GeneratorOptions& options, OracleReport* report);

}  // namespace recstream::eval
