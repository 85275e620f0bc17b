// Crash safety with real processes: `recstream broker` holds the events
// while `recstream serve` is killed with SIGKILL mid-stream and restarted on
// the same RocksDB directory. Every event must be learned exactly once, and
// a model restored from a checkpoint must score exactly as it did when the
// checkpoint was written.
#include <catch2/catch.hpp>
#include <random>

#include "ingest/kafka.h"
#include "serve/test_http_client.h"
#include "tests/test_util.h"

#ifndef RECSTREAM_BINARY
#error "RECSTREAM_BINARY must name the recstream executable"
#endif

namespace recstream {
namespace {

using serve::testing::HttpCall;
using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::Json;
using testing::WaitFor;

struct Counts {
  double click = -1, purchase = -1, rating = -1;
  double total() const { return click + purchase + rating; }
};

Counts Learned(uint16_t port) {
  Counts c;
  auto r = HttpCall(port, "GET", "/v1/stats");
  Json j;
  if (r.status != 200 || !j.Parse(r.body)) return c;
  c.click = j.Number("/tasks/click/learned");
  c.purchase = j.Number("/tasks/purchase/learned");
  c.rating = j.Number("/tasks/rating/learned");
  return c;
}

class Server {
 public:
  Server(const std::string& brokers, const std::string& store, uint16_t port,
         const std::string& log)
      : port_(port),
        process_({RECSTREAM_BINARY, "serve",
                  "--set",          "kafka.brokers=" + brokers,
                  "--set",          "kafka.group_id=crash",
                  "--set",          "kafka.max_batch=300",
                  "--set",          "store.path=" + store,
                  "--set",          "store.checkpoint_interval_ms=150",
                  "--set",          "serve.listen=127.0.0.1:" + std::to_string(port),
                  "--set",          "serve.admin_token=t0ken",
                  "--set",          "kafka.properties.session.timeout.ms=6000",
                  "--set",          "kafka.properties.heartbeat.interval.ms=500"},
                 log) {}
  bool Up() {
    return WaitFor([&] { return HttpCall(port_, "GET", "/healthz").status == 200; }, 20s);
  }
  ChildProcess& process() { return process_; }

 private:
  uint16_t port_;
  ChildProcess process_;
};

}  // namespace

TEST_CASE("SIGKILL mid-stream loses no event and applies none twice", "[crash]") {
  testing::TempDir dir;
  const std::string log = dir.path() + "/log.txt";
  const std::string bootstrap_file = dir.path() + "/bootstrap";
  ChildProcess broker(
      {RECSTREAM_BINARY, "broker", "--partitions", "3", "--bootstrap-file", bootstrap_file}, log);
  REQUIRE(broker.started());
  REQUIRE(WaitFor([&] { return std::filesystem::exists(bootstrap_file); }, 10s));
  std::string brokers = testing::ReadFile(bootstrap_file);
  brokers.erase(brokers.find_last_not_of("\n ") + 1);

  std::unique_ptr<ingest::EventProducer> producer;
  ingest::TopicNames topics;
  REQUIRE(ingest::EventProducer::Open(brokers, topics, &producer).ok());
  ingest::ParserOptions parser;
  std::mt19937 rng(7);
  Counts produced{0, 0, 0};
  auto produce = [&](int n) {
    for (int i = 0; i < n; ++i) {
      std::string u = std::to_string(rng() % 300), it = "i" + std::to_string(rng() % 100);
      int kind = rng() % 10;
      std::string json;
      if (kind < 6) {
        json = R"({"type":"click","user":)" + u + R"(,"item":")" + it + R"(","label":)" +
               std::to_string(rng() % 2) + "}";
        produced.click += 1;
      } else if (kind < 7) {
        json = R"({"type":"purchase","user":)" + u + R"(,"item":")" + it + R"(","label":1})";
        produced.purchase += 1;
      } else {
        json = R"({"type":"rating","user":)" + u + R"(,"item":")" + it + R"(","value":)" +
               std::to_string(1 + rng() % 5) + "}";
        produced.rating += 1;
      }
      REQUIRE(producer->SendEvent(json, parser).ok());
    }
    REQUIRE(producer->Flush(10000).ok());
  };

  const std::string store = dir.path() + "/store";
  const uint16_t port = testing::FreePort();
  produce(20000);
  // Three kills at different points of the stream: each time the service is
  // consuming when it dies, and more events arrive while it is down.
  for (int round = 0; round < 3; ++round) {
    Server server(brokers, store, port, log);
    REQUIRE(server.Up());
    const double start = Learned(port).total();
    // Let it learn part of what is pending, then kill it without warning.
    std::thread feeder([&] { produce(4000); });
    REQUIRE(WaitFor([&] { return Learned(port).total() > start + 2000; }, 60s));
    feeder.join();
    server.process().Signal(SIGKILL);
    CHECK(server.process().Wait() == 128 + SIGKILL);
  }

  // After the last restart every event is learned exactly once.
  Server server(brokers, store, port, log);
  REQUIRE(server.Up());
  INFO("log: " << testing::ReadFile(log).substr(0, 4000));
  REQUIRE(WaitFor([&] { return Learned(port).total() >= produced.total(); }, 90s));
  std::this_thread::sleep_for(1500ms);  // anything applied twice would show now
  Counts learned = Learned(port);
  CHECK(learned.click == produced.click);
  CHECK(learned.purchase == produced.purchase);
  CHECK(learned.rating == produced.rating);

  // Exact restore: checkpoint, record scores, kill, restart, compare.
  REQUIRE(HttpCall(port, "POST", "/v1/admin/checkpoint", "", "Authorization: Bearer t0ken\r\n")
              .status == 200);
  std::vector<std::string> before;
  for (int u = 0; u < 20; ++u)
    before.push_back(
        HttpCall(port, "GET", "/v1/score?user=" + std::to_string(u) + "&item=i" + std::to_string(u))
            .body);
  server.process().Signal(SIGKILL);
  server.process().Wait();

  Server restarted(brokers, store, port, log);
  REQUIRE(restarted.Up());
  for (int u = 0; u < 20; ++u)
    CHECK(
        HttpCall(port, "GET", "/v1/score?user=" + std::to_string(u) + "&item=i" + std::to_string(u))
            .body == before[u]);
  Counts after = Learned(port);
  CHECK(after.total() == produced.total());

  // SIGTERM: a final checkpoint and exit code 0.
  restarted.process().Signal(SIGTERM);
  CHECK(restarted.process().Wait() == 0);
}

}  // namespace recstream
