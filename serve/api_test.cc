#include "serve/api.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "serve/http_server.h"
#include "serve/json_writer.h"
#include "serve/test_http_client.h"

namespace recstream::serve {
namespace {

using learner::Event;
using learner::Task;

// A test double of the application's hooks.
class FakeHooks : public ServiceHooks {
 public:
  ServiceStatus Status() const override {
    std::lock_guard lock(mu_);
    return status_;
  }
  bool Ready(std::string* why_not) const override {
    std::lock_guard lock(mu_);
    if (!ready_) *why_not = "consumer has no partitions yet";
    return ready_;
  }
  recstream::Status Checkpoint() override {
    std::lock_guard lock(mu_);
    ++checkpoint_calls_;
    if (!checkpoint_result_.ok()) return checkpoint_result_;
    status_.checkpoints++;
    status_.last_checkpoint_ms = 1700000000123;
    status_.last_checkpoint_rows = 42;
    return recstream::Status::OK();
  }

  mutable std::mutex mu_;
  ServiceStatus status_;
  bool ready_ = true;
  int checkpoint_calls_ = 0;
  recstream::Status checkpoint_result_;
};

std::vector<Event> TrainingEvents() {
  std::vector<Event> events;
  auto add = [&](Task t, std::string u, std::string i, float label) {
    Event e;
    e.task = t;
    e.user = std::move(u);
    e.item = std::move(i);
    e.label = label;
    // Side features of two items, for request-time features.
    if (e.item == "i1") e.item_features = {"cat=a"};
    if (e.item == "i3") e.item_features = {"cat=b"};
    events.push_back(std::move(e));
  };
  for (int round = 0; round < 20; ++round) {
    add(Task::kClick, "u1", "i1", 1);
    add(Task::kClick, "u1", "i3", 0);
    add(Task::kClick, "u2", "i2", 1);
    add(Task::kPurchase, "u1", "i2", 1);
    add(Task::kRating, "u2", "i1", 4.5f);
    add(Task::kRating, "u1", "i4", 2.0f);
    add(Task::kClick, "42", "7", 1);
  }
  return events;
}

struct Fixture {
  Fixture(ServeOptions o = {}, learner::LearnerOptions lo = {}) : options(std::move(o)) {
    lo.threads = 1;
    REQUIRE(learner::Learner::Create(lo, &model).ok());
    auto events = TrainingEvents();
    model->Train(events);
    hooks.status_.seen = {100, 20, 40};
    hooks.status_.learned = {99, 20, 40};
    hooks.status_.rejected = {{"malformed_json", 3}, {"bad_label", 0}};
    hooks.status_.dlq_sent = 3;
    hooks.status_.lag = {{"recstream.click", 0, 90, 100, 10}, {"recstream.rating", 2, 5, 5, 0}};
    hooks.status_.checkpoint_offsets = {{"recstream.click/0", 80}};
    hooks.status_.uptime_s = 12.5;
    api = std::make_unique<Api>(options, blend, model.get(), &hooks);
  }

  HttpResponse Get(const std::string& target) const {
    HttpRequest r;
    r.method = "GET";
    ParseTarget(target, &r.path, &r.query);
    return api->Handle(r);
  }
  HttpResponse Post(const std::string& target, std::string body, std::string auth = "") const {
    HttpRequest r;
    r.method = "POST";
    ParseTarget(target, &r.path, &r.query);
    r.body = std::move(body);
    r.authorization = std::move(auth);
    return api->Handle(r);
  }

  ServeOptions options;
  learner::Blend blend;
  std::unique_ptr<learner::Learner> model;
  FakeHooks hooks;
  std::unique_ptr<Api> api;
};

std::string ExpectedScore(const std::string& user_json, const std::string& item_json,
                          const learner::ScoreResult& r) {
  return fmt::format(
      R"({{"user":{},"item":{},"click":{},"purchase":{},"rating":{},"score":{},"known":{{"user":{},"item":{}}}}})",
      user_json, item_json, r.prediction.click, r.prediction.purchase, r.prediction.rating, r.score,
      r.user_known, r.item_known);
}

std::string ErrorOf(const HttpResponse& r) {
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  if (p.parse(r.body).get(doc)) return "<not json: " + r.body + ">";
  std::string_view e;
  if (doc["error"].get(e)) return "<no error field: " + r.body + ">";
  return std::string(e);
}

TEST_CASE("JsonWriter escapes strings and round-trips floats", "[api]") {
  struct Case {
    std::string in, out;
  };
  std::vector<Case> cases = {
      {"plain", R"("plain")"},
      {"a\"b\\c", R"("a\"b\\c")"},
      {"\n\t\r\b\f", R"("\n\t\r\b\f")"},
      {std::string("\x01\x1f\x7f", 3), R"("\u0001\u001f\u007f")"},
      {std::string("nul\0x", 5), R"("nul\u0000x")"},
      {"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80",
       "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\""},
      {"bad\xFF\xC3", "\"bad\xEF\xBF\xBD\xEF\xBF\xBD\""},
      {"\xED\xA0\x80", "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\""},  // a surrogate
  };
  for (const auto& c : cases) {
    std::string out;
    JsonWriter::AppendString(&out, c.in);
    CHECK(out == c.out);
    simdjson::dom::parser p;
    CHECK(p.parse(out).error() == simdjson::SUCCESS);
  }
  for (float f : {0.1f, 1.0f / 3.0f, 1e-8f, 3.4e38f, 0.0f, -2.5f, 0.12345678f}) {
    std::string out;
    JsonWriter(&out).Float(f);
    CHECK(std::stof(out) == f);
  }
  // Float() writes what fmt's "{}" writes (the shortest form that reads
  // back): every layout (fixed, 0.000ddd, ddd000, exponents of 1, 2 and 3
  // digits, subnormals, signed zeros) and a million random bit patterns.
  std::vector<float> floats = {0.0f,    -0.0f,    1.0f,   -1.0f,           10.0f,
                               100.0f,  1e15f,    1e16f,  1.5e16f,         123456789.0f,
                               0.0001f, 0.00012f, 1e-5f,  1.5e-5f,         1e-10f,
                               3.4e38f, -3.4e38f, 1e-45f, 1.17549435e-38f, 0.5f,
                               4.5f,    12.34f,   0.1f,   16777216.0f,     1e-38f};
  std::mt19937 rng(7);
  while (floats.size() < 1000000) {
    float f;
    uint32_t bits = rng();
    std::memcpy(&f, &bits, sizeof f);
    if (std::isfinite(f)) floats.push_back(f);
  }
  size_t differ = 0;
  std::string first_difference;
  for (float f : floats) {
    std::string out;
    JsonWriter::AppendFloat(&out, f);
    std::string expected = fmt::format("{}", f);
    if (out != expected && differ++ == 0) first_difference = out + " vs fmt's " + expected;
  }
  CHECK(differ == 0);
  CHECK(first_difference == "");
  std::string out;
  JsonWriter w(&out);
  w.BeginArray().Float(NAN).Double(INFINITY).Int(-3).Uint(7).Bool(true).EndArray();
  CHECK(out == "[null,null,-3,7,true]");
}

TEST_CASE(
    "GET /v1/score has the shape of docs/interface.md section 3 and the learner's exact values",
    "[api]") {
  Fixture f;
  HttpResponse r = f.Get("/v1/score?user=u1&item=i1");
  REQUIRE(r.status == 200);
  CHECK(r.content_type == "application/json");
  learner::ScoreResult s = f.model->Score("u1", "i1", f.blend);
  CHECK(s.user_known);
  CHECK(s.item_known);
  CHECK(r.body == ExpectedScore(R"("u1")", R"("i1")", s));

  // Unknown ids still get a score, flagged.
  r = f.Get("/v1/score?user=u1&item=never-seen");
  REQUIRE(r.status == 200);
  s = f.model->Score("u1", "never-seen", f.blend);
  CHECK_FALSE(s.item_known);
  CHECK(r.body == ExpectedScore(R"("u1")", R"("never-seen")", s));
  CHECK(r.body.find(R"("known":{"user":true,"item":false})") != std::string::npos);

  // Ids needing escapes come back escaped.
  r = f.Get("/v1/score?user=a%22b%5C%0A&item=%E2%82%AC");
  REQUIRE(r.status == 200);
  s = f.model->Score("a\"b\\\n", "\xE2\x82\xAC", f.blend);
  CHECK(r.body == ExpectedScore(R"("a\"b\\\n")", "\"\xE2\x82\xAC\"", s));
}

TEST_CASE("GET /v1/score rejects bad parameters", "[api]") {
  Fixture f;
  struct Case {
    std::string target;
    std::string error;
  };
  std::vector<Case> cases = {
      {"/v1/score?item=i1", "missing parameter: user"},
      {"/v1/score?user=u1", "missing parameter: item"},
      {"/v1/score?user=&item=i1", "bad parameter user: must be 1 to 256 bytes"},
      {"/v1/score?user=u1&item=" + std::string(257, 'x'),
       "bad parameter item: must be 1 to 256 bytes"},
      {"/v1/score?user=%FF&item=i1", "bad parameter user: not valid UTF-8"},
  };
  for (const auto& c : cases) {
    INFO(c.target);
    HttpResponse r = f.Get(c.target);
    CHECK(r.status == 400);
    CHECK(ErrorOf(r) == c.error);
  }
}

TEST_CASE("POST /v1/score scores items in request order", "[api]") {
  Fixture f;
  HttpResponse r = f.Post("/v1/score", R"({"user":42,"items":["i2",7,"i1","nope"]})");
  REQUIRE(r.status == 200);
  std::string expected = R"({"user":"42","scores":[)";
  const char* items[] = {"i2", "7", "i1", "nope"};
  for (int i = 0; i < 4; ++i) {
    learner::ScoreResult s = f.model->Score("42", items[i], f.blend);
    if (i > 0) expected += ",";
    expected +=
        fmt::format(R"({{"item":"{}","click":{},"purchase":{},"rating":{},"score":{}}})", items[i],
                    s.prediction.click, s.prediction.purchase, s.prediction.rating, s.score);
  }
  expected += "]}";
  CHECK(r.body == expected);

  r = f.Post("/v1/score", R"({"user":"u1","items":[]})");
  CHECK(r.status == 200);
  CHECK(r.body == R"({"user":"u1","scores":[]})");

  // Ids that need escaping come back escaped, in valid JSON.
  r = f.Post("/v1/score", R"({"user":"u1","items":["a\"b","tab\there","caf\u00e9","\u0001"]})");
  REQUIRE(r.status == 200);
  CHECK(r.body.find(R"({"item":"a\"b","click":)") != std::string::npos);
  CHECK(r.body.find(R"({"item":"tab\there","click":)") != std::string::npos);
  CHECK(r.body.find("{\"item\":\"caf\xC3\xA9\",\"click\":") != std::string::npos);
  CHECK(r.body.find(R"({"item":"\u0001","click":)") != std::string::npos);
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  REQUIRE(p.parse(r.body).get(doc) == simdjson::SUCCESS);
  simdjson::dom::array scores;
  REQUIRE(doc["scores"].get(scores) == simdjson::SUCCESS);
  CHECK(scores.size() == 4);
}

TEST_CASE("POST /v1/score answers a long list, scored in parts, in request order", "[api]") {
  Fixture f;
  // Long enough to be scored in parts (in parallel), of a count that does
  // not split evenly, with known, unknown and repeated ids.
  for (size_t n : {255u, 256u, 1001u, 5000u}) {
    std::vector<std::string> items;
    for (size_t i = 0; i < n; ++i)
      items.push_back(i % 7 == 3 ? fmt::format("unknown{}", i) : fmt::format("i{}", i % 40));
    std::string body = R"({"user":"42","items":[)";
    for (size_t i = 0; i < n; ++i) body += fmt::format("{}\"{}\"", i ? "," : "", items[i]);
    body += "]}";
    HttpResponse r = f.Post("/v1/score", body);
    REQUIRE(r.status == 200);
    std::string expected = R"({"user":"42","scores":[)";
    for (size_t i = 0; i < n; ++i) {
      learner::ScoreResult s = f.model->Score("42", items[i], f.blend);
      if (i > 0) expected += ",";
      expected += fmt::format(R"({{"item":"{}","click":{},"purchase":{},"rating":{},"score":{}}})",
                              items[i], s.prediction.click, s.prediction.purchase,
                              s.prediction.rating, s.score);
    }
    expected += "]}";
    INFO(n << " items");
    CHECK(r.body == expected);
  }
}

TEST_CASE("POST /v1/score rejects bad bodies", "[api]") {
  ServeOptions o;
  o.max_batch_items = 3;
  Fixture f(o);
  struct Case {
    std::string body;
    std::string error_prefix;
  };
  std::vector<Case> cases = {
      {"{not json", "malformed JSON body"},
      {"[1,2]", "body must be a JSON object"},
      {R"({"items":["a"]})", "missing field: user"},
      {R"({"user":"u"})", "missing field: items"},
      {R"({"user":-1,"items":["a"]})", "bad field user"},
      {R"({"user":"","items":["a"]})", "bad field user: must be 1 to 256 bytes"},
      {R"({"user":"u","items":"a"})", "bad field items: must be an array"},
      {R"({"user":"u","items":["a",1.5]})", "bad field items[1]"},
      {R"({"user":"u","items":["a",null]})", "bad field items[1]"},
      {R"({"user":"u","items":["a","b","c","d"]})", "bad field items: 4 items, at most 3"},
  };
  for (const auto& c : cases) {
    INFO(c.body);
    HttpResponse r = f.Post("/v1/score", c.body);
    CHECK(r.status == 400);
    CHECK(ErrorOf(r).rfind(c.error_prefix, 0) == 0);
  }
}

TEST_CASE("GET /v1/recommend ranks known items and leaves out purchases", "[api]") {
  Fixture f;
  auto items_of = [](const HttpResponse& r) {
    simdjson::dom::parser p;
    simdjson::dom::element doc = p.parse(r.body).value();
    std::vector<std::string> out;
    double prev = INFINITY;
    simdjson::dom::array arr;
    REQUIRE(doc["items"].get(arr) == simdjson::SUCCESS);
    for (simdjson::dom::element e : arr) {
      out.emplace_back(std::string_view(e["item"].get_string().value()));
      double score = e["score"].get_double().value();
      CHECK(score <= prev);  // best first
      prev = score;
      CHECK(e["click"].is_double());
      CHECK(e["purchase"].is_double());
      CHECK(e["rating"].is_double());
    }
    return out;
  };
  HttpResponse r = f.Get("/v1/recommend?user=u1&k=100");
  REQUIRE(r.status == 200);
  CHECK(r.body.rfind(R"({"user":"u1","items":[)", 0) == 0);
  std::vector<std::string> items = items_of(r);
  std::set<std::string> set(items.begin(), items.end());
  CHECK(set == std::set<std::string>{"i1", "i3", "i4", "7"});  // i2 was purchased

  r = f.Get("/v1/recommend?user=u1&k=100&exclude_purchased=false");
  REQUIRE(r.status == 200);
  CHECK(items_of(r).size() == 5);

  // Same ranking as the learner, default k = 10.
  r = f.Get("/v1/recommend?user=u2");
  REQUIRE(r.status == 200);
  auto recs = f.model->Recommend("u2", 10, true, f.blend);
  std::vector<std::string> expected;
  for (const auto& rec : recs) expected.push_back(rec.item);
  CHECK(items_of(r) == expected);

  r = f.Get("/v1/recommend?user=u1&k=2");
  CHECK(items_of(r).size() == 2);

  for (std::string bad : {"k=0", "k=-1", "k=abc", "k=1001", "k=5x", "k="}) {
    INFO(bad);
    r = f.Get("/v1/recommend?user=u1&" + bad);
    CHECK(r.status == 400);
    CHECK(ErrorOf(r).rfind("bad parameter k", 0) == 0);
  }
  r = f.Get("/v1/recommend?user=u1&exclude_purchased=maybe");
  CHECK(r.status == 400);
  CHECK(ErrorOf(r).rfind("bad parameter exclude_purchased", 0) == 0);
  r = f.Get("/v1/recommend?k=3");
  CHECK(ErrorOf(r) == "missing parameter: user");
}

TEST_CASE("Api routes: 404, 405, healthz, readyz", "[api]") {
  Fixture f;
  HttpResponse r = f.Get("/nope");
  CHECK(r.status == 404);
  CHECK(ErrorOf(r) == "no route for /nope");
  r = f.Post("/v1/recommend?user=u1", "");
  CHECK(r.status == 405);
  CHECK(ErrorOf(r).find("POST") != std::string::npos);
  r = f.Get("/v1/admin/checkpoint");
  CHECK(r.status == 405);

  r = f.Get("/healthz");
  CHECK(r.status == 200);
  CHECK(r.body == R"({"status":"ok"})");
  r = f.Get("/readyz");
  CHECK(r.status == 200);
  f.hooks.ready_ = false;
  r = f.Get("/readyz");
  CHECK(r.status == 503);
  CHECK(ErrorOf(r) == "consumer has no partitions yet");
}

TEST_CASE("POST /v1/admin/checkpoint needs the admin token", "[api]") {
  {
    Fixture f;  // no token configured
    HttpResponse r = f.Post("/v1/admin/checkpoint", "", "Bearer anything");
    CHECK(r.status == 404);
    CHECK(r.body == R"({"error":"admin endpoints are disabled"})");
    CHECK(f.hooks.checkpoint_calls_ == 0);
  }
  ServeOptions o;
  o.admin_token = "s3cret";
  Fixture f(o);
  for (std::string auth : {"", "s3cret", "Bearer", "Bearer ", "Bearer s3cre", "Bearer s3cret2",
                           "Basic s3cret", "Bearer S3CRET"}) {
    INFO(auth);
    HttpResponse r = f.Post("/v1/admin/checkpoint", "", auth);
    CHECK(r.status == 401);
    CHECK(ErrorOf(r).find("admin token") != std::string::npos);
  }
  CHECK(f.hooks.checkpoint_calls_ == 0);

  HttpResponse r = f.Post("/v1/admin/checkpoint", "", "Bearer s3cret");
  CHECK(r.status == 200);
  CHECK(f.hooks.checkpoint_calls_ == 1);
  CHECK(r.body.find(R"("rows":42)") != std::string::npos);
  r = f.Post("/v1/admin/checkpoint", "", "bearer s3cret");
  CHECK(r.status == 200);

  f.hooks.checkpoint_result_ = recstream::Status::IOError("disk full");
  r = f.Post("/v1/admin/checkpoint", "", "Bearer s3cret");
  CHECK(r.status == 500);
  CHECK(ErrorOf(r).find("disk full") != std::string::npos);
}

TEST_CASE("Request-time features score a never-seen item from its features", "[api]") {
  Fixture f;
  const std::vector<std::string> cat_a = {"cat=a"}, cat_b = {"cat=b"};
  HttpResponse r = f.Get("/v1/score?user=u1&item=new&item_features=cat%3Da");
  REQUIRE(r.status == 200);
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  REQUIRE(p.parse(r.body).get(doc) == simdjson::SUCCESS);
  const learner::ScoreResult with = f.model->Score("u1", "new", f.blend, nullptr, &cat_a);
  const learner::ScoreResult without = f.model->Score("u1", "new", f.blend);
  CHECK(float(doc["score"].get_double().value()) == Approx(with.score));
  CHECK(with.score != without.score);
  CHECK_FALSE(doc["known"]["item"].get_bool().value());
  // User features too, and an empty list means "none" (not the stored one).
  r = f.Get("/v1/score?user=u1&item=i1&user_features=seg%3Dx,seg%3Dy&item_features=");
  REQUIRE(r.status == 200);
  const std::vector<std::string> seg = {"seg=x", "seg=y"}, empty;
  REQUIRE(p.parse(r.body).get(doc) == simdjson::SUCCESS);
  CHECK(float(doc["score"].get_double().value()) ==
        Approx(f.model->Score("u1", "i1", f.blend, &seg, &empty).score));
  // Bad lists are refused, naming the parameter.
  std::string many = "/v1/score?user=u1&item=i1&item_features=f0";
  for (int i = 1; i < 65; ++i) many += ",f" + std::to_string(i);
  r = f.Get(many);
  CHECK(r.status == 400);
  CHECK(r.body.find("item_features") != std::string::npos);
  r = f.Get("/v1/score?user=u1&item=i1&user_features=a,,b");
  CHECK(r.status == 400);
  CHECK(r.body.find("user_features") != std::string::npos);

  // POST: items as objects with features, mixed with plain ids.
  r = f.Post(
      "/v1/score",
      R"({"user":"u1","user_features":["seg=x"],"items":[{"item":"new","features":["cat=b"]},"i1",{"item":"i3"}]})");
  REQUIRE(r.status == 200);
  REQUIRE(p.parse(r.body).get(doc) == simdjson::SUCCESS);
  const std::vector<std::string> seg_x = {"seg=x"};
  simdjson::dom::array scores = doc["scores"].get_array().value();
  REQUIRE(scores.size() == 3);
  CHECK(std::string(scores.at(0)["item"].get_string().value()) == "new");
  CHECK(float(scores.at(0)["score"].get_double().value()) ==
        Approx(f.model->Score("u1", "new", f.blend, &seg_x, &cat_b).score));
  CHECK(float(scores.at(1)["score"].get_double().value()) ==
        Approx(f.model->Score("u1", "i1", f.blend, &seg_x, nullptr).score));
  CHECK(float(scores.at(2)["score"].get_double().value()) ==
        Approx(f.model->Score("u1", "i3", f.blend, &seg_x, nullptr).score));
  // Scored in parts (1,001 items), features stay with their items.
  std::string body = R"({"user":"u2","items":[)";
  for (int i = 0; i < 1001; ++i) {
    if (i > 0) body += ",";
    body += i % 3 == 0 ? R"({"item":"n)" + std::to_string(i) + R"(","features":["cat=a"]})"
                       : "\"i" + std::to_string(i % 5) + "\"";
  }
  r = f.Post("/v1/score", body + "]}");
  REQUIRE(r.status == 200);
  REQUIRE(p.parse(r.body).get(doc) == simdjson::SUCCESS);
  scores = doc["scores"].get_array().value();
  REQUIRE(scores.size() == 1001);
  for (size_t i = 0; i < 1001; i += 50) {
    const std::string item = std::string(scores.at(i)["item"].get_string().value());
    const float want =
        f.model->Score("u2", item, f.blend, nullptr, i % 3 == 0 ? &cat_a : nullptr).score;
    CHECK(float(scores.at(i)["score"].get_double().value()) == Approx(want));
  }
  r = f.Post("/v1/score", R"({"user":"u1","items":[{"features":["a"]}]})");
  CHECK(r.status == 400);
  CHECK(r.body.find("items[0].item") != std::string::npos);
  r = f.Post("/v1/score", R"({"user":"u1","items":[{"item":"x","features":"a"}]})");
  CHECK(r.status == 400);
  CHECK(r.body.find("items[0].features") != std::string::npos);
  r = f.Post("/v1/score", R"({"user":"u1","user_features":[1],"items":["x"]})");
  CHECK(r.status == 400);
}

TEST_CASE("GET /v1/stats reports counters, weights, metrics, lag and checkpoint", "[api]") {
  Fixture f;
  REQUIRE(f.hooks.Checkpoint().ok());
  HttpResponse r = f.Get("/v1/stats");
  REQUIRE(r.status == 200);
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  REQUIRE(p.parse(r.body).get(doc) == simdjson::SUCCESS);
  learner::LearnerStats ls = f.model->Stats();
  for (Task t : learner::kAllTasks) {
    INFO(learner::TaskName(t));
    auto task = doc["tasks"][learner::TaskName(t)];
    CHECK(task["loss_weight"].get_double().value() ==
          Approx(ls.tasks[static_cast<int>(t)].loss_weight));
    CHECK(task["seen"].get_uint64().value() == f.hooks.status_.seen[static_cast<int>(t)]);
    CHECK(task["learned_by_model"].get_uint64().value() == ls.tasks[static_cast<int>(t)].learned);
    CHECK(std::string(task["feedback"].get_string().value()) ==
          (ls.tasks[static_cast<int>(t)].implicit ? "implicit" : "explicit"));
  }
  CHECK(doc["tasks"]["click"]["progressive"]["auc"].is_double());
  CHECK(doc["tasks"]["rating"]["progressive"]["rmse"].is_double());
  const learner::TaskStats& click = ls.tasks[int(Task::kClick)];
  CHECK(doc["tasks"]["click"]["progressive"]["precision"].get_double().value() ==
        Approx(click.precision));
  CHECK(doc["tasks"]["click"]["progressive"]["f1"].get_double().value() == Approx(click.f1));
  CHECK(click.recall > 0.0);  // the fixture's clicks include predicted positives
  CHECK(click.f1 <= 1.0);
  CHECK(doc["rejected"]["total"].get_uint64().value() == 3);
  CHECK(doc["rejected"]["by_reason"]["bad_label"].get_uint64().value() == 0);
  CHECK(doc["consumer"]["total_lag"].get_int64().value() == 10);
  CHECK(doc["consumer"]["partitions"].get_array().size() == 2);
  CHECK(doc["checkpoint"]["last"]["rows"].get_uint64().value() == 42);
  CHECK(std::string_view(doc["checkpoint"]["last"]["time"].get_string().value()) ==
        "2023-11-14T22:13:20.123Z");
  CHECK(doc["checkpoint"]["last"]["offsets"]["recstream.click/0"].get_int64().value() == 80);
  CHECK(doc["uptime_s"].get_double().value() == 12.5);
  CHECK(doc["model"]["users"].get_uint64().value() == ls.users);
}

TEST_CASE("Stats and metrics count the events that wait for admission", "[api]") {
  learner::LearnerOptions lo;
  lo.admit_after = 200;  // no id of the fixture's events is admitted
  Fixture f({}, lo);
  const learner::LearnerStats ls = f.model->Stats();
  REQUIRE(ls.not_admitted_users > 0);
  CHECK(ls.users == 0);
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  REQUIRE(p.parse(f.Get("/v1/stats").body).get(doc) == simdjson::SUCCESS);
  CHECK(doc["model"]["admission"]["admit_after"].get_int64().value() == 200);
  CHECK(doc["model"]["admission"]["refused_user_events"].get_uint64().value() ==
        ls.not_admitted_users);
  CHECK(doc["model"]["admission"]["refused_item_events"].get_uint64().value() ==
        ls.not_admitted_items);
  CHECK(doc["model"]["users"].get_uint64().value() == 0);
  const std::string metrics = f.Get("/metrics").body;
  CHECK(metrics.find("recstream_admission_refused_total{table=\"user\"} " +
                     std::to_string(ls.not_admitted_users) + "\n") != std::string::npos);
}

TEST_CASE("GET /metrics is valid Prometheus text", "[api]") {
  Fixture f;
  f.Get("/v1/score?user=u1&item=i1");
  f.Get("/v1/score?user=u1");
  HttpResponse r = f.Get("/metrics");
  REQUIRE(r.status == 200);
  CHECK(r.content_type.rfind("text/plain; version=0.0.4", 0) == 0);
  const std::regex sample(
      R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? (\S+)$)");
  std::istringstream in(r.body);
  std::string line;
  std::set<std::string> names;
  int samples = 0;
  while (std::getline(in, line)) {
    INFO(line);
    REQUIRE(!line.empty());
    if (line[0] == '#') {
      CHECK((line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0));
      continue;
    }
    std::smatch m;
    REQUIRE(std::regex_match(line, m, sample));
    std::string value = line.substr(line.rfind(' ') + 1);
    if (value != "+Inf" && value != "-Inf" && value != "NaN") {
      size_t used = 0;
      (void)std::stod(value, &used);
      CHECK(used == value.size());
    }
    names.insert(line.substr(0, line.find_first_of("{ ")));
    ++samples;
  }
  CHECK(samples > 50);
  for (const char* name :
       {"recstream_events_total", "recstream_rejected_total", "recstream_consumer_lag",
        "recstream_task_loss_weight", "recstream_progressive_auc", "recstream_progressive_logloss",
        "recstream_progressive_mae", "recstream_progressive_rmse", "recstream_progressive_f1",
        "recstream_progressive_precision", "recstream_progressive_recall",
        "recstream_checkpoint_last_timestamp_seconds", "recstream_http_requests_total",
        "recstream_http_request_duration_seconds_bucket", "recstream_uptime_seconds",
        "recstream_events_per_second", "recstream_model_rows"}) {
    CHECK(names.count(name) == 1);
  }
  CHECK(r.body.find(R"(recstream_events_total{task="click",outcome="seen"} 100)") !=
        std::string::npos);
  CHECK(r.body.find(R"(recstream_consumer_lag{topic="recstream.click",partition="0"} 10)") !=
        std::string::npos);
  CHECK(r.body.find(R"(recstream_http_requests_total{route="/v1/score",code="200"} 1)") !=
        std::string::npos);
  CHECK(r.body.find(R"(recstream_http_requests_total{route="/v1/score",code="400"} 1)") !=
        std::string::npos);
  CHECK(r.body.find(
            R"(recstream_http_request_duration_seconds_bucket{route="/v1/score",le="+Inf"} 2)") !=
        std::string::npos);
  CHECK(r.body.find(R"(recstream_http_request_duration_seconds_count{route="/v1/score"} 2)") !=
        std::string::npos);
}

TEST_CASE("Api works behind HttpServer over loopback", "[api]") {
  ServeOptions o;
  o.listen = "127.0.0.1:0";
  o.admin_token = "tok";
  Fixture f(o);
  std::unique_ptr<HttpServer> server;
  REQUIRE(HttpServer::Start(o, f.api->Handler(), &server).ok());
  testing::TestConnection c(server->port());
  auto r = c.Request("GET", "/v1/score?user=u1&item=i1");
  CHECK(r.status == 200);
  CHECK(r.body == ExpectedScore(R"("u1")", R"("i1")", f.model->Score("u1", "i1", f.blend)));
  r = c.Request("POST", "/v1/score", R"({"user":"u1","items":["i1","i2"]})");
  CHECK(r.status == 200);
  r = c.Request("POST", "/v1/admin/checkpoint", "", "Authorization: Bearer tok\r\n");
  CHECK(r.status == 200);
  r = c.Request("POST", "/v1/admin/checkpoint", "");
  CHECK(r.status == 401);
  r = c.Request("GET", "/metrics");
  CHECK(r.status == 200);
  CHECK(r.headers["content-type"].rfind("text/plain", 0) == 0);
  r = c.Request("GET", "/missing");
  CHECK(r.status == 404);
  CHECK(r.body == R"({"error":"no route for /missing"})");
}

}  // namespace
}  // namespace recstream::serve
