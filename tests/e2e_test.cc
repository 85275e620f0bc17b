// End to end, in one process: an embedded Kafka (librdkafka's mock cluster),
// the real service (consumer group, learner, RocksDB store, HTTP server), and
// a client over loopback.
#include <librdkafka/rdkafkacpp.h>

#include <catch2/catch.hpp>
#include <random>

#include "app/service.h"
#include "ingest/kafka.h"
#include "learner/learner.h"
#include "serve/test_http_client.h"
#include "tests/kafka_test_util.h"
#include "tests/test_util.h"

namespace recstream {
namespace {

using serve::testing::HttpCall;
using namespace std::chrono_literals;
using testing::Json;
using testing::WaitFor;

std::string Event(const char* type, const std::string& user, const std::string& item,
                  double label) {
  std::string value = std::string(type) == "rating" ? ",\"value\":" + std::to_string(label)
                                                    : ",\"label\":" + std::to_string(int(label));
  return std::string("{\"type\":\"") + type + "\",\"user\":\"" + user + "\",\"item\":\"" + item +
         "\"" + value + "}";
}

uint16_t PortOf(const std::string& address) {
  return uint16_t(std::stoi(address.substr(address.rfind(':') + 1)));
}

double Learned(uint16_t port) {
  auto r = HttpCall(port, "GET", "/v1/stats");
  Json j;
  if (r.status != 200 || !j.Parse(r.body)) return -1;
  return j.Number("/tasks/click/learned") + j.Number("/tasks/purchase/learned") +
         j.Number("/tasks/rating/learned");
}

}  // namespace

TEST_CASE("Events flow from Kafka through the learner to live HTTP scores and survive a restart",
          "[e2e]") {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  REQUIRE(ingest::EmbeddedKafka::Start(1, 3, topics, &kafka).ok());

  config::AppConfig cfg;
  cfg.kafka.brokers = kafka->bootstrap();
  cfg.kafka.group_id = "e2e";
  cfg.store.path = dir.path() + "/store";
  cfg.store.checkpoint_interval_ms = 300;
  cfg.serve.listen = "127.0.0.1:0";
  cfg.serve.admin_token = "let-me-in";
  cfg.learner.threads = 2;
  // The mock cluster holds a group's next join for about the session timeout,
  // even after a clean leave; keep it short for the restart below.
  cfg.kafka.properties["session.timeout.ms"] = "6000";
  cfg.kafka.properties["heartbeat.interval.ms"] = "500";

  std::unique_ptr<app::Service> service;
  REQUIRE(app::Service::Start(cfg, &service).ok());
  uint16_t port = PortOf(service->http_address());
  CHECK(HttpCall(port, "GET", "/healthz").status == 200);

  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), topics, &producer).ok());
  ingest::ParserOptions parser;
  std::mt19937 rng(1);
  int produced = 0;
  auto send = [&](const std::string& json) {
    REQUIRE(producer->SendEvent(json, parser).ok());
    ++produced;
  };
  // Background traffic of all three types, then alice's repeated clicks.
  for (int i = 0; i < 600; ++i) {
    std::string u = "user" + std::to_string(rng() % 50), it = "item" + std::to_string(rng() % 40);
    send(Event("click", u, it, rng() % 2));
    if (i % 3 == 0) send(Event("rating", u, it, 1 + rng() % 5));
    if (i % 10 == 0) send(Event("purchase", u, it, rng() % 2));
  }
  for (int i = 0; i < 80; ++i) {
    send(Event("click", "alice", "liked", 1));
    send(Event("click", "alice", "control", 0));
  }
  send(Event("purchase", "alice", "bought", 1));
  // Bad events go to the dead-letter topic, never to the learner.
  const std::vector<std::string> bad = {
      "{not json", R"({"type":"click","user":"u","item":"i","label":2})",
      R"({"type":"rating","user":"u","item":"i","value":9})", R"({"type":"click","item":"i"})"};
  for (const auto& b : bad) REQUIRE(producer->SendRaw(topics.click, "u", b).ok());
  REQUIRE(producer->Flush(10000).ok());

  // The consumer joins its group (the mock cluster delays the first join by
  // about 3 s), then learns everything.
  REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));
  REQUIRE(WaitFor([&] { return Learned(port) == produced; }, 30s));

  auto liked = HttpCall(port, "GET", "/v1/score?user=alice&item=liked");
  auto control = HttpCall(port, "GET", "/v1/score?user=alice&item=control");
  REQUIRE(liked.status == 200);
  Json jl, jc;
  REQUIRE(jl.Parse(liked.body));
  REQUIRE(jc.Parse(control.body));
  CHECK(jl.Number("/click") > jc.Number("/click") + 0.2);
  CHECK(jl.Bool("/known/user"));
  CHECK(jl.Bool("/known/item"));
  for (const char* f : {"/purchase", "/rating", "/score"}) CHECK(std::isfinite(jl.Number(f)));

  // Recommendations leave out what alice bought.
  auto rec = HttpCall(port, "GET", "/v1/recommend?user=alice&k=50");
  REQUIRE(rec.status == 200);
  CHECK(rec.body.find("\"liked\"") != std::string::npos);
  CHECK(rec.body.find("\"bought\"") == std::string::npos);

  // Rejections are counted by reason and produced to the dead-letter topic.
  auto stats = HttpCall(port, "GET", "/v1/stats");
  CHECK(stats.body.find("malformed_json") != std::string::npos);
  auto dead = testing::ReadTopic(kafka->bootstrap(), topics.dlq, bad.size());
  CHECK(dead.size() == bad.size());
  for (const auto& letter : dead) CHECK_FALSE(letter.reason.empty());

  // A new event's effect shows in /v1/score quickly (the benchmark measures
  // how quickly; here we only check that it does).
  send(Event("click", "newcomer", "liked", 1));
  REQUIRE(producer->Flush(5000).ok());
  CHECK(WaitFor(
      [&] {
        Json j;
        return j.Parse(HttpCall(port, "GET", "/v1/score?user=newcomer&item=liked").body) &&
               j.Bool("/known/user");
      },
      10s));

  // Admin checkpoint needs the token.
  CHECK(HttpCall(port, "POST", "/v1/admin/checkpoint").status == 401);
  CHECK(HttpCall(port, "POST", "/v1/admin/checkpoint", "", "Authorization: Bearer wrong\r\n")
            .status == 401);
  CHECK(HttpCall(port, "POST", "/v1/admin/checkpoint", "", "Authorization: Bearer let-me-in\r\n")
            .status == 200);

  std::string before = HttpCall(port, "GET", "/v1/score?user=alice&item=liked").body;
  REQUIRE(service->Shutdown().ok());
  service.reset();

  // A restart restores the model from RocksDB: same scores, same counters,
  // and no event is learned again.
  REQUIRE(app::Service::Start(cfg, &service).ok());
  port = PortOf(service->http_address());
  CHECK(HttpCall(port, "GET", "/v1/score?user=alice&item=liked").body == before);
  CHECK(Learned(port) == produced);
  bool ready = WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s);
  INFO("readyz: " << HttpCall(port, "GET", "/readyz").body);
  REQUIRE(ready);
  std::this_thread::sleep_for(1s);
  CHECK(Learned(port) == produced);
  CHECK(HttpCall(port, "GET", "/v1/score?user=alice&item=liked").body == before);
  REQUIRE(service->Shutdown().ok());
}

TEST_CASE("Admission counts survive a restart of the service", "[e2e][admission]") {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  REQUIRE(ingest::EmbeddedKafka::Start(1, 1, topics, &kafka).ok());
  config::AppConfig cfg;
  cfg.kafka.brokers = kafka->bootstrap();
  cfg.kafka.group_id = "e2e-admission";
  cfg.store.path = dir.path() + "/store";
  cfg.serve.listen = "127.0.0.1:0";
  cfg.learner.threads = 1;
  cfg.learner.admit_after = 3;
  cfg.kafka.properties["session.timeout.ms"] = "6000";
  cfg.kafka.properties["heartbeat.interval.ms"] = "500";
  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), topics, &producer).ok());
  int produced = 0;
  auto send = [&](const std::string& user, const std::string& item) {
    REQUIRE(producer->SendEvent(Event("click", user, item, 1), ingest::ParserOptions{}).ok());
    REQUIRE(producer->Flush(5000).ok());
    ++produced;
  };
  auto known = [&](uint16_t port, const std::string& user) {
    Json j;
    REQUIRE(j.Parse(HttpCall(port, "GET", "/v1/score?user=" + user + "&item=x").body));
    return j.Bool("/known/user");
  };

  std::unique_ptr<app::Service> service;
  REQUIRE(app::Service::Start(cfg, &service).ok());
  uint16_t port = PortOf(service->http_address());
  send("visitor", "a");
  send("visitor", "b");
  REQUIRE(WaitFor([&] { return Learned(port) == produced; }, 30s));
  CHECK_FALSE(known(port, "visitor"));  // seen twice: not admitted yet
  REQUIRE(service->Shutdown().ok());
  service.reset();

  // The restarted service remembers the two occurrences: the third admits.
  REQUIRE(app::Service::Start(cfg, &service).ok());
  port = PortOf(service->http_address());
  CHECK_FALSE(known(port, "visitor"));
  send("visitor", "c");
  REQUIRE(WaitFor([&] { return Learned(port) == produced; }, 30s));
  CHECK(known(port, "visitor"));
  REQUIRE(service->Shutdown().ok());
}


TEST_CASE("Two trainers share one model through Kafka: each learns its users, both score alike",
          "[e2e][trainers]") {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  // Four partitions of every topic, the updates topic included.
  REQUIRE(ingest::EmbeddedKafka::Start(1, 4, topics, &kafka).ok());
  std::unique_ptr<app::Service> trainer[2];
  uint16_t port[2];
  for (int i = 0; i < 2; ++i) {
    config::AppConfig cfg;
    cfg.kafka.brokers = kafka->bootstrap();
    cfg.kafka.ownership.count = 2;
    cfg.kafka.ownership.index = i;
    ingest::EmbeddedKafka::AddConsumerProperties(&cfg.kafka.properties);
    cfg.store.path = dir.path() + "/t" + std::to_string(i);
    cfg.store.checkpoint_interval_ms = 300;
    cfg.serve.listen = "127.0.0.1:0";
    cfg.learner.threads = 1;
    REQUIRE(app::Service::Start(cfg, &trainer[i]).ok());
    port[i] = PortOf(trainer[i]->http_address());
  }
  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), topics, &producer).ok());
  ingest::ParserOptions parser;
  std::mt19937 rng(2);
  int produced = 0;
  auto send = [&](const std::string& json) {
    REQUIRE(producer->SendEvent(json, parser).ok());
    ++produced;
  };
  for (int i = 0; i < 3000; ++i) {
    const int u = int(rng() % 60), it = int(rng() % 30);
    send(Event("click", "user" + std::to_string(u), "item" + std::to_string(it),
               (u % 3) == (it % 3) ? 1 : 0));
    if (i % 4 == 0)
      send(Event("rating", "user" + std::to_string(u), "item" + std::to_string(it),
                 (u % 3) == (it % 3) ? 5 : 1));
  }
  // Garbage on the updates topic is counted and skipped.
  REQUIRE(producer->SendRaw(topics.updates, "r/item", "not a change").ok());
  // One item only alice ever sees: the other trainer knows it only from
  // alice's trainer.
  for (int i = 0; i < 20; ++i) send(Event("click", "alice", "solo", 1));
  REQUIRE(producer->Flush(10000).ok());

  REQUIRE(WaitFor([&] { return Learned(port[0]) + Learned(port[1]) == produced; }, 60s));
  CHECK(Learned(port[0]) > 0);
  CHECK(Learned(port[1]) > 0);
  // Each user is learned by one trainer only.
  auto known_user = [&](int t, const std::string& user) {
    Json j;
    auto r = HttpCall(port[t], "GET", "/v1/score?user=" + user + "&item=item1");
    return r.status == 200 && j.Parse(r.body) && j.Bool("/known/user");
  };
  for (const char* user : {"user1", "user2", "user3", "alice"})
    CHECK(known_user(0, user) != known_user(1, user));

  // Once the trainers are quiet, they hold the same item rows and dense
  // layers: a user neither has seen scores alike on both, bit for bit.
  auto score = [&](int t, const std::string& item) {
    return HttpCall(port[t], "GET", "/v1/score?user=nobody&item=" + item).body;
  };
  // Items each trainer owns (and "solo", which only alice's trainer saw).
  std::vector<std::string> probe = {"solo"};
  int owned[2] = {0, 0};
  for (int it = 0; it < 30 && (owned[0] < 3 || owned[1] < 3); ++it) {
    const std::string item = "item" + std::to_string(it);
    const int owner = learner::OwnerOf(item, 2);
    if (owned[owner]++ < 3) probe.push_back(item);
  }
  REQUIRE(probe.size() == 7);
  REQUIRE(WaitFor(
      [&] {
        for (const std::string& item : probe)
          if (score(0, item) != score(1, item)) return false;
        return true;
      },
      30s));
  for (int t = 0; t < 2; ++t) {
    Json j;
    REQUIRE(j.Parse(score(t, "solo")));
    CHECK(j.Bool("/known/item"));
  }
  // The exchange is visible.
  double bad = 0;
  for (int t = 0; t < 2; ++t) {
    Json j;
    const std::string stats = HttpCall(port[t], "GET", "/v1/stats").body;
    INFO("trainer " << t << ": " << stats.substr(stats.find("\"trainer\"")));
    REQUIRE(j.Parse(stats));
    CHECK(j.Number("/trainer/exchange/sent_batches") > 0);
    CHECK(j.Number("/trainer/exchange/received_batches") > 0);
    CHECK(j.Number("/trainer/exchange/followed_versions") > 0);  // (the wait above needs it)
    CHECK(j.Number("/trainer/exchange/duplicate_batches") == 0);
    CHECK(j.Number("/trainer/exchange/errors") == 0);
    // The garbage lands on one partition of the updates topic: trainer
    // p % 2 counts it.
    bad += j.Number("/trainer/exchange/bad_records");
    const std::string metrics = HttpCall(port[t], "GET", "/metrics").body;
    CHECK(metrics.find("recstream_exchange_batches_total{kind=\"received\"}") !=
          std::string::npos);
  }
  CHECK(bad == 1);
  // Learned, not initial: items of a group score apart for a user of it.
  Json a, b;
  const int t3 = known_user(0, "user3") ? 0 : 1;
  REQUIRE(a.Parse(HttpCall(port[t3], "GET", "/v1/score?user=user3&item=item0").body));
  REQUIRE(b.Parse(HttpCall(port[t3], "GET", "/v1/score?user=user3&item=item1").body));
  CHECK(a.Number("/click") > b.Number("/click") + 0.2);
  for (int t = 0; t < 2; ++t) REQUIRE(trainer[t]->Shutdown().ok());
}

}  // namespace recstream
