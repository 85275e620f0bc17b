// Generator: a synthetic event stream with known ground truth (JSONL events of
// docs/interface.md section 1, `recstream gen`), for testing and benchmarking
// the learner.
//
// The world. Each user and each item has a latent factor vector (Gaussian,
// `factors` dimensions) and a bias. Users belong to one of a few age groups
// and items to one of a few dozen categories; the group's and the category's
// own Gaussian vectors are added to the factors, so the side features
// (`"age=3"`, `"category=c12"`) carry signal. Users are drawn uniformly, items
// with a Zipf-like popularity skew. The affinity of a pair is a = u.v.
//
// The stream. Each step, a user sees an item:
//  - about 27% of steps are a rating: value = clip(mu + b_u + b_i + a + noise)
//    rounded to the nearest 0.5, truth.mean = the noiseless clipped value;
//  - the others are an impression: a click event whose label is
//    Bernoulli(p_click), p_click = sigmoid(c + b_i + 1.5 a) (truth.p = p_click),
//    with about 30% of impressions clicked;
//  - a clicked impression is followed, with probability 0.1, by a purchase
//    event (the checkout decision) whose label is Bernoulli(p_purchase),
//    p_purchase = sigmoid(c' + b_i + 2 a): purchase events are about 3% of
//    click events and purchases (label 1) about 1% of click events.
// Users are JSON numbers (42), items strings ("i123"), so both id forms are
// exercised. `ts` increases by 1-3 ms per event from 2024-01-01.
//
// The output depends only on the options: the same options give the same
// bytes (the generator has its own random number generator and does not
// depend on the standard library's distributions).
//
// Thread safety: a Generator is not thread safe; use one per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "common/status.h"

namespace recstream::eval {

struct GeneratorOptions {
  // Number of events (lines) to produce.
  uint64_t events = 0;
  // Number of distinct users and items.
  int users = 10000;
  int items = 2000;
  uint64_t seed = 1;
  // Dimension of the latent factors.
  int factors = 8;
  // Write `user_features` and `item_features`. The latent structure is the
  // same either way; without them the learner cannot see the groups.
  bool side_features = true;
  // Range of rating values (rating.min / rating.max, docs/interface.md section 6).
  float rating_min = 1.0f;
  float rating_max = 5.0f;
};

// InvalidArgument naming the field when an option is out of range.
Status ValidateGeneratorOptions(const GeneratorOptions& options);

// The hidden world behind a stream: what the ground truth is computed from.
// Only reference bounds read it (eval/oracle.h), never a learner.
struct World {
  int factors = 0;
  std::vector<int> user_age;      // age group of each user
  std::vector<double> age_vec;    // age groups x factors
  std::vector<double> user_vec;   // users x factors (age vector included)
  std::vector<double> user_bias;  // rating bias of each user
  std::vector<double> item_vec;   // items x factors (category vector included)
  std::vector<double> item_bias;
  double user_own_sd = 0;  // sd of a user's own part, per factor
  double user_bias_sd = 0;
  // click p = sigmoid(click_intercept + b_i + click_affinity a)
  double click_intercept = 0, click_affinity = 0;
  // purchase p = sigmoid(purchase_intercept + purchase_item_bias b_i + purchase_affinity a)
  double purchase_intercept = 0, purchase_item_bias = 0, purchase_affinity = 0;
  // rating mean = clip(rating_mu + rating_scale (b_u + b_i + rating_affinity a)),
  // value = mean + rating_scale rating_noise N(0, 1), rounded and clipped.
  double rating_mu = 0, rating_scale = 1, rating_affinity = 0, rating_noise = 0;
};

class Generator {
 public:
  // Options must be valid (see ValidateGeneratorOptions); out-of-range values
  // are clamped to something usable.
  explicit Generator(const GeneratorOptions& options);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Writes the next event, one JSON object without the trailing newline,
  // into *json_line (overwritten). False once `events` lines were produced.
  bool Next(std::string* json_line);

  // Writes every remaining event to *out, one per line. IOError when the
  // stream fails.
  Status WriteAll(std::ostream* out);

  // Lines produced so far.
  uint64_t produced() const;

  // The world the events are drawn from (fixed by the options).
  const World& world() const;

  // Writes one "pretrained" vector per item, the way text embeddings of item
  // descriptions would look to recstream (`recstream import-embeddings`
  // input): JSONL {"item":"i7","vector":[...]} with `dim` values
  // p = A v_item + noise N(0, 1) per value, where A is a fixed random
  // dim x factors matrix with N(0, 1/factors) entries. The vectors carry
  // the item's latent factors (category included) but not its bias. They
  // come from their own random stream: writing them does not change the
  // events. InvalidArgument for dim outside [1, 8192] or a negative or
  // non-finite noise; IOError when the stream fails.
  Status WriteItemVectors(std::ostream* out, int dim, double noise) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::eval
