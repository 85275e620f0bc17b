#include "eval/metrics.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

namespace recstream::eval {
namespace {

using V = std::vector<float>;

TEST_CASE("Auc on hand-computed cases", "[metrics]") {
  struct Case {
    const char* name;
    V pred, label;
    double auc;
  };
  const std::vector<Case> cases = {
      {"perfect", {0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}, 1.0},
      {"inverted", {0.9f, 0.8f, 0.2f, 0.1f}, {0, 0, 1, 1}, 0.0},
      {"all tied", {0.5f, 0.5f, 0.5f, 0.5f}, {0, 1, 0, 1}, 0.5},
      {"one tie between classes", {0.5f, 0.5f}, {0, 1}, 0.5},
      // pairs (pos, neg): (0.8,0.1)=1 (0.8,0.5)=1 (0.5,0.1)=1 (0.5,0.5)=0.5 -> 3.5/4
      {"partial tie", {0.1f, 0.5f, 0.5f, 0.8f}, {0, 0, 1, 1}, 0.875},
      // pos 0.6 beats 0.2 and 0.4 but not 0.7: 2/3
      {"one positive", {0.2f, 0.7f, 0.6f, 0.4f}, {0, 0, 1, 0}, 2.0 / 3.0},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    CHECK(Auc(c.pred, c.label) == Approx(c.auc));
  }
}

TEST_CASE("Auc is NaN without both classes", "[metrics]") {
  CHECK(std::isnan(Auc(V{0.1f, 0.2f}, V{1, 1})));
  CHECK(std::isnan(Auc(V{0.1f, 0.2f}, V{0, 0})));
  CHECK(std::isnan(Auc(V{}, V{})));
}

TEST_CASE("Auc matches the pairwise definition on a larger input", "[metrics]") {
  V pred, label;
  for (int i = 0; i < 300; ++i) {
    pred.push_back(float((i * 37) % 23) / 23.0f);  // many ties
    label.push_back(float((i * 11) % 7 < 3));
  }
  double wins = 0, pairs = 0;
  for (size_t i = 0; i < pred.size(); ++i)
    for (size_t j = 0; j < pred.size(); ++j)
      if (label[i] > 0.5f && label[j] < 0.5f) {
        pairs += 1;
        wins += pred[i] > pred[j] ? 1.0 : pred[i] == pred[j] ? 0.5 : 0.0;
      }
  CHECK(Auc(pred, label) == Approx(wins / pairs));
}

TEST_CASE("LogLoss, Mae and Rmse on hand-computed cases", "[metrics]") {
  CHECK(LogLoss(V{0.5f, 0.5f}, V{0, 1}) == Approx(std::log(2.0)));
  CHECK(LogLoss(V{0.8f, 0.1f}, V{1, 0}) ==
        Approx(-(std::log(0.8) + std::log(0.9)) / 2).epsilon(1e-6));
  // Clamped: a confident miss costs -log(1e-7), not infinity.
  CHECK(LogLoss(V{0.0f}, V{1}) == Approx(-std::log(1e-7)));
  CHECK(std::isfinite(LogLoss(V{1.0f}, V{0})));
  CHECK(std::isnan(LogLoss(V{}, V{})));

  CHECK(Mae(V{1, 2, 3}, V{2, 2, 5}) == Approx(1.0));
  CHECK(Rmse(V{1, 2, 3}, V{2, 2, 5}) == Approx(std::sqrt(5.0 / 3.0)));
  CHECK(Mae(V{3}, V{3}) == 0.0);
  CHECK(std::isnan(Rmse(V{}, V{})));
}

TEST_CASE("RankHitAt: HR@K and NDCG@K of one event", "[metrics]") {
  // Ranked first: hit, NDCG 1.
  RankHit top = RankHitAt(0, 0, 10);
  CHECK(top.hr == 1.0);
  CHECK(top.ndcg == Approx(1.0));
  // Rank 2 (0-based): NDCG 1/log2(4) = 0.5.
  RankHit third = RankHitAt(2, 0, 10);
  CHECK(third.hr == 1.0);
  CHECK(third.ndcg == Approx(0.5));
  // Rank 10 with K=10 is a miss.
  RankHit miss = RankHitAt(10, 0, 10);
  CHECK(miss.hr == 0.0);
  CHECK(miss.ndcg == 0.0);
  // Everything tied among 100 candidates: expected HR@10 = 10/101.
  RankHit tied = RankHitAt(0, 100, 10);
  CHECK(tied.hr == Approx(10.0 / 101.0));
  double ndcg = 0;
  for (int r = 0; r < 10; ++r) ndcg += 1.0 / std::log2(r + 2.0);
  CHECK(tied.ndcg == Approx(ndcg / 101.0));
  // One tie at rank 9: half a hit.
  CHECK(RankHitAt(9, 1, 10).hr == Approx(0.5));
}

TEST_CASE("RankingAccumulator averages events", "[metrics]") {
  RankingAccumulator acc;
  CHECK(std::isnan(acc.hr()));
  acc.Add(RankHitAt(0, 0, 5));
  acc.Add(RankHitAt(7, 0, 5));
  CHECK(acc.count() == 2);
  CHECK(acc.hr() == Approx(0.5));
  CHECK(acc.ndcg() == Approx(0.5));
}

TEST_CASE("DecisionsAt: precision, recall and F1 at a threshold", "[metrics]") {
  const std::vector<float> pred = {0.9f, 0.6f, 0.4f, 0.2f, 0.7f};
  const std::vector<float> label = {1, 0, 1, 0, 1};
  Decisions d = DecisionsAt(pred, label, 0.5f);  // predicted 0, 1, 4; actual 0, 2, 4
  CHECK(d.precision == Approx(2.0 / 3));
  CHECK(d.recall == Approx(2.0 / 3));
  CHECK(d.f1 == Approx(2.0 / 3));
  d = DecisionsAt(pred, label, 0.8f);  // predicted 0 only
  CHECK(d.precision == 1.0);
  CHECK(d.recall == Approx(1.0 / 3));
  CHECK(d.f1 == Approx(0.5));
  d = DecisionsAt(pred, label, 0.95f);  // nothing predicted positive
  CHECK(std::isnan(d.precision));
  CHECK(d.recall == 0.0);
  CHECK(d.f1 == 0.0);
}

}  // namespace
}  // namespace recstream::eval
