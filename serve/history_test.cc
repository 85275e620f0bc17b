// MetricsHistory and the dashboard routes of Api (GET / and /v1/history),
// with a real Learner and hand-made service status.
#include "serve/history.h"

#include <simdjson.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <mutex>
#include <regex>
#include <thread>

#include "serve/api.h"
#include "serve/dashboard.h"

namespace recstream::serve {
namespace {

using namespace std::chrono_literals;

bool WaitForCondition(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

class StatusHooks : public ServiceHooks {
 public:
  ServiceStatus Status() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  bool Ready(std::string*) const override { return true; }
  recstream::Status Checkpoint() override { return recstream::Status::OK(); }
  void Set(const ServiceStatus& s) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = s;
  }

 private:
  mutable std::mutex mu_;
  ServiceStatus status_;
};

std::unique_ptr<learner::Learner> TrainedLearner() {
  learner::LearnerOptions o;
  o.threads = 1;
  std::unique_ptr<learner::Learner> l;
  REQUIRE(learner::Learner::Create(o, &l).ok());
  std::vector<learner::Event> events;
  for (int i = 0; i < 400; ++i) {
    learner::Event e;
    e.task = learner::Task(i % 3);
    e.user = "u" + std::to_string(i % 7);
    e.item = "i" + std::to_string(i % 5);
    e.label = e.task == learner::Task::kRating ? 1.0f + float(i % 5) : float(i % 2);
    events.push_back(e);
  }
  l->Train(events);
  return l;
}

ServiceStatus SomeStatus(double eps) {
  ServiceStatus st;
  st.events_per_second = eps;
  st.learned = {10, 2, 5};
  st.rejected = {{"malformed_json", 3}, {"bad_label", 1}};
  st.lag = {{"recstream.click", 0, 5, 9, 4},
            {"recstream.click", 1, 1, 2, 1},
            {"recstream.rating", 0, 0, 7, 7}};
  return st;
}

TEST_CASE("MetricsHistory samples the hooks and the learner at its interval", "[history]") {
  auto learner = TrainedLearner();
  StatusHooks hooks;
  hooks.Set(SomeStatus(123.5));
  HistoryOptions options;
  options.interval = 20ms;
  options.capacity = 5;
  MetricsHistory history(options, learner.get(), &hooks);
  // The first sample is taken at once; the ring keeps only `capacity`.
  REQUIRE(WaitForCondition([&] { return history.Since(0).size() >= 5; }));
  std::this_thread::sleep_for(100ms);
  // Stopped before reading, so no sample can land between the reads below
  // (one did on a loaded machine, 20 ms apart); Since() still answers.
  history.Stop();
  std::vector<HistorySample> all = history.Since(0);
  CHECK(all.size() == 5);
  for (size_t i = 1; i < all.size(); ++i) CHECK(all[i].time_ms >= all[i - 1].time_ms);
  const HistorySample& s = all.back();
  CHECK(s.events_per_second == 123.5);
  CHECK(s.learned[0] == 10);
  CHECK(s.rejected == 4);
  CHECK(s.total_lag == 12);
  REQUIRE(s.lag_by_topic.size() == 2);
  CHECK(s.lag_by_topic[0] == std::make_pair(std::string("recstream.click"), int64_t(5)));
  CHECK(s.lag_by_topic[1] == std::make_pair(std::string("recstream.rating"), int64_t(7)));
  CHECK(std::isfinite(s.auc[0]));
  CHECK(std::isnan(s.auc[2]));
  CHECK(std::isfinite(s.rmse[2]));
  CHECK(s.loss_weight[1] > 0);
  // Since() is strictly after.
  CHECK(history.Since(all.back().time_ms).empty());
  CHECK(history.Since(0).size() == 5);
}

TEST_CASE("MetricsHistory::ToJson writes columns, null for undefined values", "[history]") {
  HistorySample a = MetricsHistory::Take(nullptr, nullptr);
  a.time_ms = 1000;
  a.lag_by_topic = {{"t1", 3}};
  HistorySample b = a;
  b.time_ms = 2000;
  b.auc[0] = 0.75;
  b.lag_by_topic = {{"t2", 4}};
  std::string json = MetricsHistory::ToJson({a, b}, 1000);
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  REQUIRE(parser.parse(json).get(root) == simdjson::SUCCESS);
  CHECK(root["interval_ms"].get_int64().value() == 1000);
  CHECK(root["t"].get_array().size() == 2);
  CHECK(root["auc"]["click"].at(0).is_null());
  CHECK(root["auc"]["click"].at(1).get_double().value() == 0.75);
  CHECK(root["auc"]["rating"].error() == simdjson::NO_SUCH_FIELD);
  CHECK(root["rmse"]["rating"].get_array().size() == 2);
  CHECK(root["lag"]["t1"].at(0).get_int64().value() == 3);
  CHECK(root["lag"]["t1"].at(1).is_null());
  CHECK(root["lag"]["t2"].at(1).get_int64().value() == 4);
  CHECK(root["loss_weight"]["purchase"].get_array().size() == 2);
}

TEST_CASE("Api serves the dashboard page and its history", "[history][api]") {
  auto learner = TrainedLearner();
  StatusHooks hooks;
  hooks.Set(SomeStatus(50));
  ServeOptions options;
  Api api(options, learner::Blend(), learner.get(), &hooks);

  HttpRequest req;
  req.method = "GET";
  req.path = "/";
  HttpResponse page = api.Handle(req);
  CHECK(page.status == 200);
  CHECK(page.content_type.rfind("text/html", 0) == 0);
  CHECK(page.body == DashboardHtml());
  // Self-contained: the machine may be offline, so nothing is loaded from elsewhere.
  std::regex external(R"((src|href)\s*=\s*["']?(https?:)?//)", std::regex::icase);
  CHECK_FALSE(std::regex_search(page.body, external));
  CHECK_FALSE(std::regex_search(page.body, std::regex(R"(@import|url\(\s*["']?https?:)")));
  for (const char* id : {"chart-eps", "chart-lag", "chart-weights", "chart-auc", "chart-logloss",
                         "chart-rating", "score-form", "rec-form"}) {
    CHECK(page.body.find(std::string("id=\"") + id + "\"") != std::string::npos);
  }

  req.path = "/v1/history";
  REQUIRE(
      WaitForCondition([&] { return api.Handle(req).body.find("\"t\":[]") == std::string::npos; }));
  HttpResponse h = api.Handle(req);
  CHECK(h.status == 200);
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  REQUIRE(parser.parse(h.body).get(root) == simdjson::SUCCESS);
  CHECK(root["events_per_second"].at(0).get_double().value() == 50);
  int64_t t0 = root["t"].at(0).get_int64().value();
  req.query["since"] = std::to_string(t0);
  h = api.Handle(req);
  CHECK(h.status == 200);
  CHECK(h.body.find(std::to_string(t0)) == std::string::npos);
  req.query["since"] = "yesterday";
  h = api.Handle(req);
  CHECK(h.status == 400);
  CHECK(h.body.find("bad parameter since") != std::string::npos);

  req.method = "POST";
  req.path = "/";
  CHECK(api.Handle(req).status == 405);
}

}  // namespace
}  // namespace recstream::serve
