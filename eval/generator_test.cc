#include "eval/generator.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "eval/metrics.h"
#include "ingest/parser.h"

namespace recstream::eval {
namespace {

using learner::Task;

std::vector<std::string> Generate(const GeneratorOptions& options) {
  Generator gen(options);
  std::vector<std::string> lines;
  std::string line;
  while (gen.Next(&line)) lines.push_back(line);
  return lines;
}

TEST_CASE("Generator is deterministic given the seed", "[generator]") {
  GeneratorOptions options;
  options.events = 5000;
  options.seed = 7;
  auto a = Generate(options);
  auto b = Generate(options);
  REQUIRE(a.size() == 5000);
  CHECK(a == b);
  options.seed = 8;
  CHECK(Generate(options) != a);
}

TEST_CASE("Generator::WriteAll writes the same lines as Next", "[generator]") {
  GeneratorOptions options;
  options.events = 3000;
  auto lines = Generate(options);
  std::ostringstream out;
  Generator gen(options);
  REQUIRE(gen.WriteAll(&out).ok());
  CHECK(gen.produced() == 3000);
  std::string expected;
  for (const auto& l : lines) expected += l + "\n";
  CHECK(out.str() == expected);
}

TEST_CASE("ValidateGeneratorOptions names the bad field", "[generator]") {
  GeneratorOptions options;
  CHECK(ValidateGeneratorOptions(options).ok());
  options.items = 0;
  Status s = ValidateGeneratorOptions(options);
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("items") != std::string::npos);
  options = GeneratorOptions();
  options.rating_min = 5;
  options.rating_max = 1;
  CHECK(ValidateGeneratorOptions(options).IsInvalidArgument());
}

struct Mix {
  uint64_t counts[3] = {0, 0, 0};
  uint64_t positives[3] = {0, 0, 0};
  std::vector<float> click_truth, click_label;
};

TEST_CASE("Every generated event is valid and the mix matches the model", "[generator]") {
  for (bool side : {true, false}) {
    DYNAMIC_SECTION("side_features=" << side) {
      GeneratorOptions options;
      options.events = 100000;
      options.users = 2000;
      options.items = 500;
      options.side_features = side;
      ingest::EventParser parser{ingest::ParserOptions()};
      learner::Event e;
      Generator gen(options);
      std::string line;
      Mix mix;
      int64_t last_ts = 0;
      std::map<std::string, uint64_t> items;
      while (gen.Next(&line)) {
        std::string detail;
        auto reason = parser.Parse(line, &e, 0, &detail);
        if (reason)
          FAIL(line << " rejected: " << ingest::RejectReasonName(*reason) << " " << detail);
        REQUIRE(e.has_truth);
        REQUIRE(e.ts_ms > last_ts);
        last_ts = e.ts_ms;
        REQUIRE(e.user_features.size() == (side ? 1u : 0u));
        REQUIRE(e.item_features.size() == (side ? 1u : 0u));
        REQUIRE(e.item.front() == 'i');
        ++items[e.item];
        const int t = int(e.task);
        ++mix.counts[t];
        if (e.task == Task::kRating) {
          REQUIRE(e.label >= 1.0f);
          REQUIRE(e.label <= 5.0f);
          REQUIRE(e.label * 2 == float(int(e.label * 2)));  // multiples of 0.5
          REQUIRE(e.truth >= 1.0);
          REQUIRE(e.truth <= 5.0);
        } else {
          REQUIRE(e.truth >= 0.0);
          REQUIRE(e.truth <= 1.0);
          mix.positives[t] += e.label > 0.5f;
          if (e.task == Task::kClick) {
            mix.click_truth.push_back(float(e.truth));
            mix.click_label.push_back(e.label);
          }
        }
      }
      const double n = double(options.events);
      const double clicks = double(mix.counts[0]);
      INFO("click " << mix.counts[0] << " purchase " << mix.counts[1] << " rating " << mix.counts[2]
                    << " clicked " << mix.positives[0] << " purchased " << mix.positives[1]);
      // About 25-30% ratings.
      CHECK(mix.counts[2] / n > 0.24);
      CHECK(mix.counts[2] / n < 0.31);
      // About 30% of impressions clicked.
      CHECK(mix.positives[0] / clicks > 0.2);
      CHECK(mix.positives[0] / clicks < 0.4);
      // Purchases are rare: purchase events a few percent of clicks, purchases 1-3%.
      CHECK(mix.counts[1] / clicks > 0.01);
      CHECK(mix.counts[1] / clicks < 0.06);
      CHECK(mix.positives[1] / clicks > 0.005);
      CHECK(mix.positives[1] / clicks < 0.03);
      CHECK(mix.positives[1] > 0);
      CHECK(mix.positives[1] < mix.counts[1]);
      // Popularity is skewed, yet reaches most items.
      CHECK(items.size() > 400);
      uint64_t top = 0;
      for (const auto& [item, count] : items) top = std::max(top, count);
      CHECK(double(top) > 10.0 * n / double(options.items));
      // The truth is informative: the Bayes AUC of clicks is well above chance.
      CHECK(Auc(mix.click_truth, mix.click_label) > 0.7);
    }
  }
}

TEST_CASE("Generator respects a custom rating range", "[generator]") {
  GeneratorOptions options;
  options.events = 20000;
  options.rating_min = 0;
  options.rating_max = 10;
  ingest::ParserOptions popts;
  popts.rating_min = 0;
  popts.rating_max = 10;
  ingest::EventParser parser(popts);
  learner::Event e;
  float lo = 100, hi = -100;
  for (const auto& line : Generate(options)) {
    REQUIRE_FALSE(parser.Parse(line, &e, 0).has_value());
    if (e.task != Task::kRating) continue;
    lo = std::min(lo, e.label);
    hi = std::max(hi, e.label);
  }
  CHECK(lo >= 0.0f);
  CHECK(hi <= 10.0f);
  CHECK(hi - lo > 4.0f);  // uses a good part of the range
}

}  // namespace
}  // namespace recstream::eval
