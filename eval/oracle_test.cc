#include "eval/oracle.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <charconv>
#include <cmath>
#include <string>

#include "eval/generator.h"
#include "ingest/parser.h"

namespace recstream::eval {
namespace {

using learner::Task;

// The oracle is only as good as World: every event's truth must follow from
// it exactly as the header says.
TEST_CASE("World reproduces every event's truth", "[oracle]") {
  GeneratorOptions options;
  options.events = 20000;
  options.users = 300;
  options.items = 200;
  options.seed = 5;
  Generator gen(options);
  const World& w = gen.world();
  REQUIRE(w.factors == options.factors);
  REQUIRE(w.user_vec.size() == size_t(options.users) * w.factors);
  ingest::EventParser parser{ingest::ParserOptions()};
  learner::Event e;
  std::string line;
  int checked[learner::kNumTasks] = {0, 0, 0};
  while (gen.Next(&line)) {
    REQUIRE_FALSE(parser.Parse(line, &e, 0).has_value());
    size_t u = 0, i = 0;
    std::from_chars(e.user.data(), e.user.data() + e.user.size(), u);
    std::from_chars(e.item.data() + 1, e.item.data() + e.item.size(), i);
    double a = 0;
    for (int k = 0; k < w.factors; ++k)
      a += w.user_vec[u * w.factors + k] * w.item_vec[i * w.factors + k];
    double expected = 0;
    if (e.task == Task::kClick) {
      expected = 1 / (1 + std::exp(-(w.click_intercept + w.item_bias[i] + w.click_affinity * a)));
    } else if (e.task == Task::kPurchase) {
      expected = 1 / (1 + std::exp(-(w.purchase_intercept + w.purchase_item_bias * w.item_bias[i] +
                                     w.purchase_affinity * a)));
    } else {
      expected = std::clamp(
          w.rating_mu + w.rating_scale * (w.user_bias[u] + w.item_bias[i] + w.rating_affinity * a),
          double(options.rating_min), double(options.rating_max));
    }
    INFO(line);
    REQUIRE(e.truth == Approx(expected).epsilon(1e-5));
    ++checked[int(e.task)];
  }
  CHECK(checked[0] > 1000);
  CHECK(checked[1] > 50);
  CHECK(checked[2] > 1000);
}

TEST_CASE("Oracle bound nears the Bayes ceiling with many events per user", "[oracle]") {
  GeneratorOptions options;
  options.events = 150000;
  options.items = 200;
  options.seed = 3;
  OracleReport many, few;
  options.users = 30;  // ~5,000 events per user
  REQUIRE(RunOracle(options, &many).ok());
  options.users = 30000;  // ~5 events per user
  REQUIRE(RunOracle(options, &few).ok());

  // Never above what the true probabilities get (up to sampling noise).
  CHECK(many.click.last10_auc <= many.click.last10_bayes_auc + 0.005);
  CHECK(few.click.last10_auc <= few.click.last10_bayes_auc + 0.005);
  // With thousands of events per user the posterior is sharp: the bound
  // nearly reaches the ceiling; with a handful it cannot.
  CHECK(many.click.last10_bayes_auc - many.click.last10_auc < 0.01);
  CHECK(few.click.last10_bayes_auc - few.click.last10_auc > 0.02);
  CHECK(many.rating.last10_mae < few.rating.last10_mae);
  CHECK(many.rating.last10_mae >= many.rating.last10_bayes_mae - 0.01);
  // Better than knowing nothing about the users.
  CHECK(few.click.last10_auc > 0.6);
  CHECK(few.purchase.count > 0);
}

TEST_CASE("RunOracle rejects invalid options", "[oracle]") {
  GeneratorOptions options;
  options.events = 10;
  options.users = 0;
  OracleReport r;
  CHECK(RunOracle(options, &r).IsInvalidArgument());
}

}  // namespace
}  // namespace recstream::eval
