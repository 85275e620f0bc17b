#include "ingest/parser.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace recstream::ingest {
namespace {

using learner::Event;
using learner::Task;

constexpr int64_t kNow = 1700000000000;

std::string Repeat(char c, size_t n) { return std::string(n, c); }

std::string FeatureArray(size_t n) {
  std::string s = "[";
  for (size_t i = 0; i < n; ++i) {
    if (i) s += ",";
    s += "\"f" + std::to_string(i) + "\"";
  }
  return s + "]";
}

TEST_CASE("RejectReason names are unique, snake_case and round-trip", "[parser]") {
  std::set<std::string_view> seen;
  for (RejectReason r : kAllRejectReasons) {
    std::string_view name = RejectReasonName(r);
    CHECK(seen.insert(name).second);
    for (char c : name) CHECK(((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'));
    REQUIRE(ParseRejectReason(name).has_value());
    CHECK(*ParseRejectReason(name) == r);
  }
  CHECK(seen.size() == static_cast<size_t>(kNumRejectReasons));
  CHECK(RejectReasonName(RejectReason::kMalformedJson) == "malformed_json");
  CHECK(RejectReasonName(RejectReason::kRatingOutOfRange) == "rating_out_of_range");
  CHECK_FALSE(ParseRejectReason("nope").has_value());
}

struct Valid {
  const char* name;
  std::string json;
  Task task;
  std::string user;
  std::string item;
  float label;
  int64_t ts;
  std::vector<std::string> user_features;
  std::vector<std::string> item_features;
  bool has_truth;
  double truth;
};

TEST_CASE("EventParser accepts valid events", "[parser]") {
  const std::vector<Valid> cases = {
      {"minimal click",
       R"({"type":"click","user":"u1","item":"i1"})",
       Task::kClick,
       "u1",
       "i1",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"click label 0",
       R"({"type":"click","user":"u1","item":"i1","label":0})",
       Task::kClick,
       "u1",
       "i1",
       0.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"label 1.0 is 1",
       R"({"type":"click","user":"u","item":"i","label":1.0})",
       Task::kClick,
       "u",
       "i",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"purchase with ts",
       R"({"type":"purchase","user":"u","item":"i","ts":1234})",
       Task::kPurchase,
       "u",
       "i",
       1.0f,
       1234,
       {},
       {},
       false,
       0},
      {"integer ids canonicalised",
       R"({"type":"click","user":42,"item":0})",
       Task::kClick,
       "42",
       "0",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"uint64 id",
       R"({"type":"click","user":18446744073709551615,"item":"x"})",
       Task::kClick,
       "18446744073709551615",
       "x",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"rating",
       R"({"type":"rating","user":"u","item":"i","value":4.5})",
       Task::kRating,
       "u",
       "i",
       4.5f,
       kNow,
       {},
       {},
       false,
       0},
      {"rating at bounds",
       R"({"type":"rating","user":"u","item":"i","value":1})",
       Task::kRating,
       "u",
       "i",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"rating ignores label",
       R"({"type":"rating","user":"u","item":"i","value":5,"label":7})",
       Task::kRating,
       "u",
       "i",
       5.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"features",
       R"({"type":"click","user":"u","item":"i","user_features":["a=1","b"],)"
       R"("item_features":["category=c12"]})",
       Task::kClick,
       "u",
       "i",
       1.0f,
       kNow,
       {"a=1", "b"},
       {"category=c12"},
       false,
       0},
      {"64 features",
       R"({"type":"click","user":"u","item":"i","user_features":)" + FeatureArray(64) + "}",
       Task::kClick,
       "u",
       "i",
       1.0f,
       kNow,
       [] {
         std::vector<std::string> v;
         for (int i = 0; i < 64; ++i) v.push_back(std::string("f").append(std::to_string(i)));
         return v;
       }(),
       {},
       false,
       0},
      {"truth p",
       R"({"type":"click","user":"u","item":"i","truth":{"p":0.25}})",
       Task::kClick,
       "u",
       "i",
       1.0f,
       kNow,
       {},
       {},
       true,
       0.25},
      {"truth mean",
       R"({"type":"rating","user":"u","item":"i","value":3,"truth":{"mean":3.7}})",
       Task::kRating,
       "u",
       "i",
       3.0f,
       kNow,
       {},
       {},
       true,
       3.7},
      {"unknown fields ignored",
       R"({"type":"click","user":"u","item":"i","extra":{"deep":[1,2,{"x":null}]},"z":true})",
       Task::kClick,
       "u",
       "i",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"null optionals",
       R"({"type":"click","user":"u","item":"i","ts":null,"truth":null,)"
       R"("label":null,"user_features":null})",
       Task::kClick,
       "u",
       "i",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"duplicate key: last wins",
       R"({"type":"click","user":"a","user":"b","item":"i"})",
       Task::kClick,
       "b",
       "i",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"256-byte id",
       R"({"type":"click","user":")" + Repeat('u', 256) + R"(","item":"i"})",
       Task::kClick,
       Repeat('u', 256),
       "i",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"unicode id",
       R"({"type":"click","user":"Jos\u00e9 ü","item":"i"})",
       Task::kClick,
       "Jos\xc3\xa9 \xc3\xbc",
       "i",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
      {"whitespace around",
       " \n{ \"type\" : \"click\", \"user\" : 1, \"item\" : 2 }\r\n",
       Task::kClick,
       "1",
       "2",
       1.0f,
       kNow,
       {},
       {},
       false,
       0},
  };
  EventParser parser(ParserOptions{});
  Event ev;
  for (const Valid& c : cases) {
    INFO(c.name << ": " << c.json);
    std::string detail;
    auto r = parser.Parse(c.json, &ev, kNow, &detail);
    INFO("rejected: " << (r ? RejectReasonName(*r) : "") << " " << detail);
    REQUIRE_FALSE(r.has_value());
    CHECK(ev.task == c.task);
    CHECK(ev.user == c.user);
    CHECK(ev.item == c.item);
    CHECK(ev.label == c.label);
    CHECK(ev.ts_ms == c.ts);
    CHECK(ev.user_features == c.user_features);
    CHECK(ev.item_features == c.item_features);
    CHECK(ev.has_truth == c.has_truth);
    CHECK(ev.truth == Approx(c.truth));
  }
}

TEST_CASE("EventParser: 42 and \"42\" are the same user", "[parser]") {
  EventParser parser(ParserOptions{});
  Event a, b;
  REQUIRE_FALSE(parser.Parse(R"({"type":"click","user":42,"item":7})", &a, kNow));
  REQUIRE_FALSE(parser.Parse(R"({"type":"click","user":"42","item":"7"})", &b, kNow));
  CHECK(a.user == b.user);
  CHECK(a.item == b.item);
}

struct Invalid {
  const char* name;
  std::string json;
  RejectReason reason;
};

TEST_CASE("EventParser rejects invalid events with the right reason", "[parser]") {
  using R = RejectReason;
  const std::vector<Invalid> cases = {
      {"empty", "", R::kMalformedJson},
      {"whitespace only", "   \n", R::kMalformedJson},
      {"truncated", R"({"type":"click","user":"u","item":)", R::kMalformedJson},
      {"trailing garbage", R"({"type":"click","user":"u","item":"i"} x)", R::kMalformedJson},
      {"bad literal", R"({"type":"click","user":"u","item":"i","x":tru})", R::kMalformedJson},
      {"binary garbage", std::string("\x00\x01\x02\xff\xfe{\"", 8), R::kInvalidUtf8},
      {"invalid utf8 in string", "{\"type\":\"click\",\"user\":\"\xc3\x28\",\"item\":\"i\"}",
       R::kInvalidUtf8},
      {"array", R"([1,2,3])", R::kNotObject},
      {"string", R"("click")", R::kNotObject},
      {"number", "42", R::kNotObject},
      {"missing type", R"({"user":"u","item":"i"})", R::kMissingType},
      {"unknown type", R"({"type":"view","user":"u","item":"i"})", R::kBadType},
      {"type not string", R"({"type":1,"user":"u","item":"i"})", R::kBadType},
      {"type null", R"({"type":null,"user":"u","item":"i"})", R::kBadType},
      {"missing user", R"({"type":"click","item":"i"})", R::kMissingUser},
      {"negative user", R"({"type":"click","user":-1,"item":"i"})", R::kBadUser},
      {"float user", R"({"type":"click","user":1.5,"item":"i"})", R::kBadUser},
      {"empty user", R"({"type":"click","user":"","item":"i"})", R::kBadUser},
      {"bool user", R"({"type":"click","user":true,"item":"i"})", R::kBadUser},
      {"array user", R"({"type":"click","user":["u"],"item":"i"})", R::kBadUser},
      {"missing item", R"({"type":"click","user":"u"})", R::kMissingItem},
      {"object item", R"({"type":"click","user":"u","item":{}})", R::kBadItem},
      {"257-byte user", R"({"type":"click","user":")" + Repeat('u', 257) + R"(","item":"i"})",
       R::kIdTooLong},
      {"257-byte item", R"({"type":"click","user":"u","item":")" + Repeat('i', 257) + R"("})",
       R::kIdTooLong},
      {"label 2", R"({"type":"click","user":"u","item":"i","label":2})", R::kBadLabel},
      {"label 0.5", R"({"type":"click","user":"u","item":"i","label":0.5})", R::kBadLabel},
      {"label string", R"({"type":"click","user":"u","item":"i","label":"1"})", R::kBadLabel},
      {"label bool", R"({"type":"purchase","user":"u","item":"i","label":true})", R::kBadLabel},
      {"rating without value", R"({"type":"rating","user":"u","item":"i"})", R::kMissingValue},
      {"rating value string", R"({"type":"rating","user":"u","item":"i","value":"4"})",
       R::kBadValue},
      {"rating value null", R"({"type":"rating","user":"u","item":"i","value":null})",
       R::kBadValue},
      {"rating too high", R"({"type":"rating","user":"u","item":"i","value":5.01})",
       R::kRatingOutOfRange},
      {"rating too low", R"({"type":"rating","user":"u","item":"i","value":0})",
       R::kRatingOutOfRange},
      {"NaN", R"({"type":"rating","user":"u","item":"i","value":NaN})", R::kNonFinite},
      {"Infinity", R"({"type":"rating","user":"u","item":"i","value":Infinity})", R::kNonFinite},
      {"-Infinity", R"({"type":"rating","user":"u","item":"i","value":-Infinity})", R::kNonFinite},
      {"overflowing number", R"({"type":"rating","user":"u","item":"i","value":1e999})",
       R::kNonFinite},
      {"ts float", R"({"type":"click","user":"u","item":"i","ts":1.5})", R::kBadTs},
      {"ts string", R"({"type":"click","user":"u","item":"i","ts":"2024-01-01"})", R::kBadTs},
      {"ts negative", R"({"type":"click","user":"u","item":"i","ts":-5})", R::kBadTs},
      {"features not array", R"({"type":"click","user":"u","item":"i","user_features":"a"})",
       R::kBadFeatures},
      {"feature not string", R"({"type":"click","user":"u","item":"i","item_features":[1]})",
       R::kBadFeatures},
      {"empty feature", R"({"type":"click","user":"u","item":"i","item_features":[""]})",
       R::kBadFeatures},
      {"65 features",
       R"({"type":"click","user":"u","item":"i","item_features":)" + FeatureArray(65) + "}",
       R::kTooManyFeatures},
      {"truth not object", R"({"type":"click","user":"u","item":"i","truth":0.5})", R::kBadTruth},
      {"truth wrong key", R"({"type":"click","user":"u","item":"i","truth":{"mean":0.5}})",
       R::kBadTruth},
      {"truth p out of range", R"({"type":"click","user":"u","item":"i","truth":{"p":1.5}})",
       R::kBadTruth},
      {"rating truth wrong key",
       R"({"type":"rating","user":"u","item":"i","value":3,"truth":{"p":0.5}})", R::kBadTruth},
  };
  EventParser parser(ParserOptions{});
  Event ev;
  for (const Invalid& c : cases) {
    INFO(c.name << ": " << c.json);
    std::string detail;
    auto r = parser.Parse(c.json, &ev, kNow, &detail);
    REQUIRE(r.has_value());
    INFO("detail: " << detail);
    CHECK(RejectReasonName(*r) == RejectReasonName(c.reason));
    CHECK_FALSE(detail.empty());
  }
}

TEST_CASE("EventParser honours its options", "[parser]") {
  ParserOptions o;
  o.rating_min = 0.0f;
  o.rating_max = 10.0f;
  o.max_id_bytes = 4;
  o.max_features = 2;
  o.max_event_bytes = 100;
  EventParser parser(o);
  Event ev;
  CHECK_FALSE(parser.Parse(R"({"type":"rating","user":"u","item":"i","value":0})", &ev, kNow));
  CHECK_FALSE(parser.Parse(R"({"type":"rating","user":"u","item":"i","value":9.5})", &ev, kNow));
  CHECK(parser.Parse(R"({"type":"click","user":"uuuuu","item":"i"})", &ev, kNow) ==
        RejectReason::kIdTooLong);
  CHECK(parser.Parse(R"({"type":"click","user":"u","item":"i","user_features":["a","b","c"]})", &ev,
                     kNow) == RejectReason::kTooManyFeatures);
  std::string big = R"({"type":"click","user":"u","item":"i","pad":")" + Repeat('x', 100) + "\"}";
  CHECK(parser.Parse(big, &ev, kNow) == RejectReason::kTooLarge);
}

// Parse() takes an ordinary event through simdjson's On-Demand API and
// anything else through the DOM: the two must agree on every input.
TEST_CASE("EventParser: the fast path and the DOM path agree", "[parser]") {
  ParserOptions options;
  options.max_id_bytes = 8;
  options.max_features = 3;
  EventParser parser(options);
  std::unique_ptr<EventParser> dom = NewDomOnlyEventParserForTesting(options);
  const std::vector<std::string> seeds = {
      R"({"type":"click","user":462,"item":"i1574","ts":1704067200002,"label":0,"user_features":["age=0"],"item_features":["c19"],"truth":{"p":0.248242}})",
      R"({"type":"rating","user":"u","item":7,"value":4.5,"label":"ignored","truth":{"mean":3.5,"p":2}})",
      R"({"type":"purchase","user":"u","item":"i","label":null,"ts":null,"user_features":null,"truth":null})",
      R"(  {"item":"i","user":18446744073709551615,"type":"click","label":1.0}  )",
      R"({"type":"click","user":"u","item":"i","extra":{"nested":[1,2,{"a":null}]}})",
      R"({"type":"click","user":"u","item":"i","user":"v"})",
      R"({"ty\u0070e":"click","user":"u\u00e9","item":"i","item_features":["a\"b","c"]})",
      R"({"type":"click","user":"u","item":"i"} {"x":1})",
      R"({"type":"click","user":"u","item":"i","truth":{"p":0.5,"q":[1]}})",
      R"({"type":"click","user":"u","item":"i","truth":{"p":0.5,"p":0.7}})",
      R"({"type":"rating","user":"u","item":"i","value":5,"ts":-1})",
      R"({"type":"click","user":-3,"item":1e3,"ts":1.5})",
      R"({"type":"click","user":"u","item":"i","user_features":["a","b","c","d"]})",
      R"({"type":"rating","user":"u","item":"i","value":NaN})",
      R"([{"type":"click","user":"u","item":"i"}])",
  };
  auto same = [&](const std::string& json) {
    Event a, b;
    std::string da, db;
    const auto ra = parser.Parse(json, &a, kNow, &da);
    const auto rb = dom->Parse(json, &b, kNow, &db);
    INFO(json);
    REQUIRE(ra == rb);
    if (ra) {
      CHECK(da == db);
      return;
    }
    CHECK(a == b);
  };
  size_t accepted = 0;
  for (const std::string& seed : seeds) {
    same(seed);
    Event e;
    accepted += !parser.Parse(seed, &e, kNow).has_value();
  }
  CHECK(accepted >= 6);  // the seeds exercise both paths
  // Random edits of the seeds: replace, insert or delete one byte, from an
  // alphabet that makes JSON tokens.
  const std::string alphabet = "{}[],:\"\\ 0123456789.-+eEtrufalsn\xc3\xa9pmyiv_";
  uint64_t x = 0x9E3779B97F4A7C15ull;
  auto next = [&x] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return x;
  };
  for (int round = 0; round < 30000; ++round) {
    std::string s = seeds[next() % seeds.size()];
    for (int edits = 1 + int(next() % 3); edits > 0 && !s.empty(); --edits) {
      const size_t at = next() % s.size();
      const char c = alphabet[next() % alphabet.size()];
      switch (next() % 3) {
        case 0:
          s[at] = c;
          break;
        case 1:
          s.insert(s.begin() + long(at), c);
          break;
        default:
          s.erase(at, 1);
          break;
      }
    }
    same(s);
  }
}

TEST_CASE("EventParser reuses its Event and survives random bytes", "[parser]") {
  EventParser parser(ParserOptions{});
  Event ev;
  REQUIRE_FALSE(parser.Parse(
      R"({"type":"click","user":"u","item":"i","user_features":["a"],"truth":{"p":0.5}})", &ev,
      kNow));
  REQUIRE_FALSE(parser.Parse(R"({"type":"purchase","user":"v","item":"j","label":0})", &ev, 7));
  CHECK(ev.user_features.empty());
  CHECK_FALSE(ev.has_truth);
  CHECK(ev.ts_ms == 7);
  CHECK(ev.label == 0.0f);

  // Fuzz-ish: prefixes of a valid event and random bytes never crash.
  const std::string valid =
      R"({"type":"rating","user":123,"item":"i","value":3,"user_features":["a"],"truth":{"mean":3}})";
  for (size_t n = 0; n < valid.size(); ++n) {
    CHECK(parser.Parse(std::string_view(valid).substr(0, n), &ev, kNow).has_value());
  }
  uint64_t x = 88172645463325252ull;
  for (int round = 0; round < 2000; ++round) {
    std::string s(1 + round % 97, '\0');
    for (char& c : s) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      c = static_cast<char>(x);
    }
    (void)parser.Parse(s, &ev, kNow);
  }
}

}  // namespace
}  // namespace recstream::ingest
