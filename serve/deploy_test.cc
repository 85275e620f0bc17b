// The monitoring files of docker-compose (deploy/) against the real /metrics:
// every metric the provisioned Grafana dashboard queries must be one that
// recstream exposes, so a renamed metric cannot silently empty a panel.
#include <simdjson.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "serve/api.h"

namespace recstream::serve {
namespace {

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class LagHooks : public ServiceHooks {
 public:
  ServiceStatus Status() const override {
    ServiceStatus st;
    st.rejected = {{"malformed_json", 1}};
    st.lag = {{"recstream.click", 0, 1, 2, 1}};
    // The dashboard plots a publishing trainer's and a replica's series
    // (each process exposes its own; both here, to check every name).
    st.publishing = true;
    st.replica = true;
    st.replica_lag_ms = 12;
    return st;
  }
  bool Ready(std::string*) const override { return true; }
  recstream::Status Checkpoint() override { return recstream::Status::OK(); }
};

// Names of the metric families in a Prometheus text exposition, histogram
// series (_bucket, _sum, _count) included.
std::set<std::string> ExposedNames(const std::string& text) {
  std::set<std::string> names;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    names.insert(line.substr(0, line.find_first_of("{ ")));
  }
  return names;
}

TEST_CASE("The Grafana dashboard queries only metrics that /metrics exposes", "[deploy]") {
  learner::LearnerOptions lo;
  lo.threads = 1;
  std::unique_ptr<learner::Learner> learner;
  REQUIRE(learner::Learner::Create(lo, &learner).ok());
  std::vector<learner::Event> events(30);
  for (size_t i = 0; i < events.size(); ++i) {
    events[i].task = learner::Task(i % 3);
    events[i].user = "u" + std::to_string(i % 4);
    events[i].item = "i" + std::to_string(i % 5);
    events[i].label = events[i].task == learner::Task::kRating ? 4.0f : float(i % 2);
  }
  learner->Train(events);
  LagHooks hooks;
  Api api(ServeOptions(), learner::Blend(), learner.get(), &hooks);
  HttpRequest req;
  req.method = "GET";
  req.path = "/metrics";
  api.Handle(req);  // so that the HTTP series have a sample
  std::set<std::string> exposed = ExposedNames(api.Handle(req).body);

  std::string dashboard =
      ReadText(std::string(RECSTREAM_SOURCE_DIR) + "/deploy/grafana/dashboards/recstream.json");
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  REQUIRE(parser.parse(dashboard).get(root) == simdjson::SUCCESS);
  CHECK(std::string(root["uid"].get_string().value()) == "recstream");
  int queries = 0;
  std::set<std::string> used;
  const std::regex metric(R"(recstream_[a-z_]+)");
  for (simdjson::dom::element panel : root["panels"].get_array()) {
    for (simdjson::dom::element target : panel["targets"].get_array()) {
      std::string expr(target["expr"].get_string().value());
      ++queries;
      for (std::sregex_iterator it(expr.begin(), expr.end(), metric), end; it != end; ++it) {
        used.insert(it->str());
      }
      CHECK(std::string(target["datasource"]["uid"].get_string().value()) == "prometheus");
    }
  }
  CHECK(queries >= 10);
  CHECK(used.size() >= 10);
  for (const std::string& name : used) {
    INFO(name);
    CHECK(exposed.count(name) == 1);
  }

  // The datasource uid the panels use is the provisioned one, and Prometheus
  // scrapes recstream's port.
  std::string datasource = ReadText(std::string(RECSTREAM_SOURCE_DIR) +
                                    "/deploy/grafana/provisioning/datasources/prometheus.yml");
  CHECK(datasource.find("uid: prometheus") != std::string::npos);
  std::string prometheus =
      ReadText(std::string(RECSTREAM_SOURCE_DIR) + "/deploy/prometheus/prometheus.yml");
  CHECK(prometheus.find("recstream:8080") != std::string::npos);
  CHECK(prometheus.find("metrics_path: /metrics") != std::string::npos);
}

TEST_CASE("/metrics exposes readiness and the model's configuration", "[deploy]") {
  learner::LearnerOptions lo;
  lo.threads = 1;
  std::unique_ptr<learner::Learner> learner;
  REQUIRE(learner::Learner::Create(lo, &learner).ok());
  LagHooks hooks;
  Api api(ServeOptions(), learner::Blend(), learner.get(), &hooks);
  HttpRequest req;
  req.method = "GET";
  req.path = "/metrics";
  std::string body = api.Handle(req).body;
  CHECK(body.find("\nrecstream_ready 1\n") != std::string::npos);
  CHECK(
      body.find(
          "recstream_model_info{arch=\"shared_bottom\",weighting=\"uncertainty\",dim=\"32\"} 1") !=
      std::string::npos);
  Api no_model(ServeOptions(), learner::Blend(), nullptr, nullptr);
  body = no_model.Handle(req).body;
  CHECK(body.find("\nrecstream_ready 0\n") != std::string::npos);
}

}  // namespace
}  // namespace recstream::serve
