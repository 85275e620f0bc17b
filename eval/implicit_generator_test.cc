#include "eval/implicit_generator.h"

#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "ingest/parser.h"

namespace recstream::eval {
namespace {

std::string Stream(uint64_t events, uint64_t seed) {
  ImplicitGeneratorOptions o;
  o.events = events;
  o.seed = seed;
  std::ostringstream out;
  REQUIRE(WriteImplicitStream(o, &out).ok());
  return out.str();
}

TEST_CASE("The implicit stream is positive-only, valid, deterministic and long-tailed",
          "[implicit]") {
  const std::string s = Stream(50000, 3);
  CHECK(s == Stream(50000, 3));
  CHECK(s != Stream(50000, 4));
  ingest::EventParser parser(ingest::ParserOptions{});
  learner::Event e;
  std::string detail;
  std::istringstream in(s);
  std::string line;
  uint64_t n = 0, purchases = 0, new_item_events = 0;
  std::map<std::string, int> per_item, per_user;
  std::set<std::string> categories;
  int64_t last_ts = 0;
  while (std::getline(in, line)) {
    INFO(line);
    REQUIRE_FALSE(parser.Parse(line, &e, 0, &detail).has_value());
    ++n;
    CHECK(e.label == 1.0f);  // no impressions that were not clicked
    CHECK(e.task != learner::Task::kRating);
    REQUIRE(e.item_features.size() == 1);
    categories.insert(e.item_features[0]);
    purchases += e.task == learner::Task::kPurchase;
    new_item_events += per_item[e.item]++ == 0;
    ++per_user[e.user];
    CHECK(e.ts_ms >= last_ts);
    last_ts = e.ts_ms;
  }
  CHECK(n == 50000);
  const double purchase_share = double(purchases) / double(n);
  CHECK(purchase_share > 0.01);
  CHECK(purchase_share < 0.04);
  // Most events are on items never seen before, most items seen once or twice.
  CHECK(double(new_item_events) / double(n) > 0.6);
  int rare = 0;
  for (const auto& [item, c] : per_item) rare += c <= 2;
  CHECK(double(rare) / double(per_item.size()) > 0.8);
  // Short and long user histories.
  int once = 0, long_history = 0;
  for (const auto& [user, c] : per_user) {
    once += c <= 2;
    long_history += c >= 30;
  }
  CHECK(once > int(per_user.size()) / 3);
  CHECK(long_history > 5);
  CHECK(categories.size() >= 20);
}

TEST_CASE("Implicit generator options are checked", "[implicit]") {
  ImplicitGeneratorOptions o;
  o.new_item_share = 1.5;
  CHECK(ValidateImplicitOptions(o).IsInvalidArgument());
  o = ImplicitGeneratorOptions();
  o.days = 0;
  CHECK(ValidateImplicitOptions(o).IsInvalidArgument());
}

}  // namespace
}  // namespace recstream::eval
