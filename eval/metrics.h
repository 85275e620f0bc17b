// Offline metrics for `recstream eval`: exact (not binned) AUC, logloss, MAE,
// RMSE, and the per-event terms of HR@K and NDCG@K.
//
// All functions take predictions and labels as parallel spans of equal
// length; a length mismatch uses the shorter length. Metrics that are
// undefined for the input (no events, or AUC without both classes) are NaN.
#pragma once

#include <cstdint>
#include <span>

namespace recstream::eval {

// Area under the ROC curve: the probability that a random positive (label >
// 0.5) scores above a random negative, ties counting one half (Mann-Whitney
// with mid-ranks). O(n log n). NaN unless both classes are present.
double Auc(std::span<const float> pred, std::span<const float> label);

// Mean binary cross-entropy, predictions clamped to [eps, 1 - eps].
double LogLoss(std::span<const float> pred, std::span<const float> label, double eps = 1e-7);

// Precision, recall and F1 of the decisions pred >= threshold against
// labels > 0.5. Precision is NaN without a predicted positive, recall
// without an actual one, F1 without either.
struct Decisions {
  double precision = 0.0, recall = 0.0, f1 = 0.0;
};
Decisions DecisionsAt(std::span<const float> pred, std::span<const float> label, float threshold);

// Mean absolute and root mean squared error.
double Mae(std::span<const float> pred, std::span<const float> label);
double Rmse(std::span<const float> pred, std::span<const float> label);

// HR@K and NDCG@K of one ranked event: the target scored below `greater`
// candidates and equal to `ties` candidates. Ties are broken uniformly at
// random, and the expectation over that draw is returned, so a model that
// scores everything the same gets k / (candidates + 1), not 0 or 1.
// With a single relevant item, NDCG@K = 1 / log2(rank + 2) when rank < K.
struct RankHit {
  double hr = 0.0;
  double ndcg = 0.0;
};
RankHit RankHitAt(int64_t greater, int64_t ties, int k);

// HR@K and NDCG@K of one ranked event at (possibly fractional) rank `rank`
// (0: first): a hit when rank < K, NDCG 1 / log2(rank + 2) then.
RankHit RankAt(double rank, int k);

// Running means of RankHitAt over events.
class RankingAccumulator {
 public:
  void Add(const RankHit& hit) {
    hr_sum_ += hit.hr;
    ndcg_sum_ += hit.ndcg;
    ++count_;
  }
  uint64_t count() const { return count_; }
  // NaN with no events.
  double hr() const;
  double ndcg() const;

 private:
  double hr_sum_ = 0.0;
  double ndcg_sum_ = 0.0;
  uint64_t count_ = 0;
};

}  // namespace recstream::eval
