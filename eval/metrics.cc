#include "eval/metrics.h"

#include <tbb/parallel_sort.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace recstream::eval {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

double Auc(std::span<const float> pred, std::span<const float> label) {
  const size_t n = std::min(pred.size(), label.size());
  // The pairs themselves are sorted (not indices into them: a sort by an
  // indirect key misses the cache on every comparison), on all threads; the
  // order within a tie does not matter, as ties are grouped below.
  struct Scored {
    float pred;
    bool positive;
  };
  std::vector<Scored> order(n);
  size_t positives = 0;
  for (size_t i = 0; i < n; ++i) {
    order[i] = {pred[i], label[i] > 0.5f};
    positives += order[i].positive;
  }
  if (positives == 0 || positives == n)
    return kNaN;  // one class (a positive-only log): no order to sort
  tbb::parallel_sort(order.begin(), order.end(),
                     [](const Scored& a, const Scored& b) { return a.pred < b.pred; });
  // Sum of the (1-based, tie-averaged) ranks of the positives.
  double pos_rank_sum = 0.0;
  uint64_t pos = 0;
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    uint64_t pos_in_group = 0;
    while (j < n && order[j].pred == order[i].pred) {
      pos_in_group += order[j].positive;
      ++j;
    }
    const double mid_rank = 0.5 * double(i + 1 + j);  // mean of ranks i+1 .. j
    pos_rank_sum += mid_rank * double(pos_in_group);
    pos += pos_in_group;
    i = j;
  }
  const uint64_t neg = n - pos;
  if (pos == 0 || neg == 0) return kNaN;
  return (pos_rank_sum - 0.5 * double(pos) * double(pos + 1)) / (double(pos) * double(neg));
}

double LogLoss(std::span<const float> pred, std::span<const float> label, double eps) {
  const size_t n = std::min(pred.size(), label.size());
  if (n == 0) return kNaN;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double p = std::clamp<double>(pred[i], eps, 1.0 - eps);
    sum -= label[i] > 0.5f ? std::log(p) : std::log(1.0 - p);
  }
  return sum / double(n);
}

double Mae(std::span<const float> pred, std::span<const float> label) {
  const size_t n = std::min(pred.size(), label.size());
  if (n == 0) return kNaN;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::abs(double(pred[i]) - double(label[i]));
  return sum / double(n);
}

double Rmse(std::span<const float> pred, std::span<const float> label) {
  const size_t n = std::min(pred.size(), label.size());
  if (n == 0) return kNaN;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double e = double(pred[i]) - double(label[i]);
    sum += e * e;
  }
  return std::sqrt(sum / double(n));
}

Decisions DecisionsAt(std::span<const float> pred, std::span<const float> label, float threshold) {
  const size_t n = std::min(pred.size(), label.size());
  double true_pos = 0, predicted = 0, actual = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool p = pred[i] >= threshold, a = label[i] > 0.5f;
    true_pos += p && a;
    predicted += p;
    actual += a;
  }
  Decisions d;
  d.precision = predicted > 0 ? true_pos / predicted : kNaN;
  d.recall = actual > 0 ? true_pos / actual : kNaN;
  d.f1 = predicted + actual > 0 ? 2 * true_pos / (predicted + actual) : kNaN;
  return d;
}

RankHit RankAt(double rank, int k) {
  RankHit hit;
  if (rank < double(k)) {
    hit.hr = 1.0;
    hit.ndcg = 1.0 / std::log2(rank + 2.0);
  }
  return hit;
}

RankHit RankHitAt(int64_t greater, int64_t ties, int k) {
  RankHit hit;
  greater = std::max<int64_t>(greater, 0);
  ties = std::max<int64_t>(ties, 0);
  // The target's 0-based rank is uniform over greater .. greater + ties.
  const double positions = double(ties + 1);
  const int64_t last = std::min<int64_t>(greater + ties, int64_t(k) - 1);
  for (int64_t r = greater; r <= last; ++r) {
    hit.hr += 1.0 / positions;
    hit.ndcg += 1.0 / (positions * std::log2(double(r) + 2.0));
  }
  return hit;
}

double RankingAccumulator::hr() const { return count_ ? hr_sum_ / double(count_) : kNaN; }
double RankingAccumulator::ndcg() const { return count_ ? ndcg_sum_ / double(count_) : kNaN; }

}  // namespace recstream::eval
