// Replicas on the model topic: a trainer (`recstream serve` logic) publishes
// to librdkafka's mock cluster, replicas follow it and must score exactly as
// the trainer once it is quiet, whatever happens in between: replicas
// started before or after the events, a replica restarted, the trainer
// killed with SIGKILL and restarted, produce errors on the model topic,
// garbage on the model topic.
#include <librdkafka/rdkafkacpp.h>
// rdkafka_mock.h needs rdkafka.h first.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <catch2/catch.hpp>
#include <functional>
#include <random>
#include <set>

#include "app/replica.h"
#include "app/service.h"
#include "ingest/kafka.h"
#include "serve/test_http_client.h"
#include "store/model_records.h"
#include "tests/test_util.h"

#ifndef RECSTREAM_BINARY
#error "RECSTREAM_BINARY must name the recstream executable"
#endif

namespace recstream {
namespace {

using serve::testing::HttpCall;
using namespace std::chrono_literals;
using testing::Json;
using testing::WaitFor;

uint16_t PortOf(const std::string& address) {
  return uint16_t(std::stoi(address.substr(address.rfind(':') + 1)));
}

double Number(uint16_t port, const char* pointer) {
  auto r = HttpCall(port, "GET", "/v1/stats");
  Json j;
  if (r.status != 200 || !j.Parse(r.body)) return -1;
  return j.Number(pointer);
}

double Learned(uint16_t port) {
  return Number(port, "/tasks/click/learned") + Number(port, "/tasks/purchase/learned") +
         Number(port, "/tasks/rating/learned");
}

// Random click, purchase and rating events over 200 users and 80 items,
// some with features.
class Feed {
 public:
  Feed(const std::string& brokers, uint32_t seed) : brokers_(brokers), rng_(seed) {
    REQUIRE(ingest::EventProducer::Open(brokers, ingest::TopicNames{}, &producer_).ok());
  }
  void Send(int n) {
    for (int i = 0; i < n; ++i) {
      const std::string u = "u" + std::to_string(rng_() % 200);
      const std::string it = "i" + std::to_string(rng_() % 80);
      const std::string feat = R"(,"item_features":["c)" + std::to_string(rng_() % 7) + R"("])";
      const int kind = int(rng_() % 10);
      std::string json;
      if (kind < 6) {
        json = R"({"type":"click","user":")" + u + R"(","item":")" + it + R"(","label":)" +
               std::to_string(rng_() % 2) + feat + "}";
      } else if (kind < 7) {
        json = R"({"type":"purchase","user":")" + u + R"(","item":")" + it + R"(","label":1})";
      } else {
        json = R"({"type":"rating","user":")" + u + R"(","item":")" + it + R"(","value":)" +
               std::to_string(1 + rng_() % 5) + "}";
      }
      if (!producer_->SendEvent(json, ingest::ParserOptions{}).ok()) {
        // A producer that met an injected error may refuse more: start a
        // new one (what the old one delivered stays counted).
        (void)producer_->Flush(5000);
        delivered_before_ += producer_->delivered();
        producer_.reset();
        REQUIRE(ingest::EventProducer::Open(brokers_, ingest::TopicNames{}, &producer_).ok());
      }
    }
    (void)producer_->Flush(20000);
    // Events Kafka refused (injected errors) never reach a trainer.
    sent_ = double(delivered_before_ + producer_->delivered());
  }
  // Events delivered to Kafka so far.
  double sent() const { return sent_; }

 private:
  std::string brokers_;
  std::mt19937 rng_;
  std::unique_ptr<ingest::EventProducer> producer_;
  uint64_t delivered_before_ = 0;
  double sent_ = 0;
};

// What a client sees: the scores of 40 pairs (known and unknown ids) and
// the recommendations of 5 users, as the server's exact bytes.
std::string Answers(uint16_t port) {
  std::string out;
  for (int i = 0; i < 40; ++i) {
    const std::string path = "/v1/score?user=u" + std::to_string(i * 7 % 230) + "&item=i" +
                             std::to_string(i * 3 % 90);
    auto r = HttpCall(port, "GET", path);
    if (r.status != 200) return "HTTP " + std::to_string(r.status) + " for " + path;
    out += r.body + "\n";
  }
  for (int u = 0; u < 5; ++u) {
    auto r = HttpCall(port, "GET", "/v1/recommend?k=10&user=u" + std::to_string(u * 31));
    if (r.status != 200) return "HTTP " + std::to_string(r.status) + " for recommend";
    out += r.body + "\n";
  }
  return out;
}

// True once the replica answers exactly as the trainer (both quiet).
bool Matches(uint16_t trainer, uint16_t replica, std::chrono::milliseconds within = 15s) {
  return WaitFor([&] { return Answers(replica) == Answers(trainer); }, within);
}

config::AppConfig TrainerConfig(const std::string& brokers, const std::string& store) {
  config::AppConfig cfg;
  cfg.kafka.brokers = brokers;
  cfg.kafka.group_id = "replica-test";
  cfg.kafka.max_batch = 200;
  cfg.store.path = store;
  cfg.store.checkpoint_interval_ms = 400;
  cfg.serve.listen = "127.0.0.1:0";
  cfg.learner.threads = 2;
  cfg.replicate.interval_ms = 50;
  cfg.replicate.timeout_ms = 2000;
  return cfg;
}

// An embedded Kafka and a trainer (TrainerConfig, then `adjust`) on it.
struct TrainerOnKafka {
  explicit TrainerOnKafka(const std::function<void(config::AppConfig*)>& adjust = {}) {
    REQUIRE(ingest::EmbeddedKafka::Start(1, 3, ingest::TopicNames{}, &kafka).ok());
    config::AppConfig cfg = TrainerConfig(kafka->bootstrap(), dir.path() + "/store");
    if (adjust) adjust(&cfg);
    REQUIRE(app::Service::Start(cfg, &trainer).ok());
    port = PortOf(trainer->http_address());
  }
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  std::unique_ptr<app::Service> trainer;
  uint16_t port = 0;
};

// A replica in this process, configured as `recstream replica` does it.
std::unique_ptr<app::Replica> StartReplica(const std::string& brokers,
                                           const std::string& model_topic = "",
                                           size_t snapshot_page_bytes = 0) {
  config::AppConfig cfg;
  cfg.kafka.brokers = brokers;
  if (!model_topic.empty()) cfg.kafka.topics.model = model_topic;
  cfg.serve.listen = "127.0.0.1:0";
  auto configure = [](const std::string& settings, config::AppConfig* out) {
    return config::Load("", config::SettingsAsFlags(settings), {}, out);
  };
  std::unique_ptr<app::Replica> replica;
  REQUIRE(app::Replica::Start(cfg, configure, &replica, snapshot_page_bytes).ok());
  return replica;
}

bool Ready(uint16_t port) { return HttpCall(port, "GET", "/readyz").status == 200; }

struct TopicRecord {
  std::string key, value;
  int64_t offset = 0;
  store::model_records::Version version;  // from the value's header
};

// Every record of topic/partition from offset `from` to its current end.
std::vector<TopicRecord> ReadTopic(const std::string& brokers, const std::string& topic,
                                   int64_t from = 0, int64_t* low_out = nullptr,
                                   int partition = 0) {
  std::string err;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  REQUIRE(conf->set("bootstrap.servers", brokers, err) == RdKafka::Conf::CONF_OK);
  REQUIRE(conf->set("group.id", "replica-test-reader", err) == RdKafka::Conf::CONF_OK);
  REQUIRE(conf->set("enable.auto.commit", "false", err) == RdKafka::Conf::CONF_OK);
  std::unique_ptr<RdKafka::KafkaConsumer> c(RdKafka::KafkaConsumer::create(conf.get(), err));
  REQUIRE(c);
  int64_t low = 0, high = 0;
  REQUIRE(c->query_watermark_offsets(topic, partition, &low, &high, 5000) ==
          RdKafka::ERR_NO_ERROR);
  if (low_out != nullptr) *low_out = low;
  std::vector<TopicRecord> out;
  std::unique_ptr<RdKafka::TopicPartition> tp(
      RdKafka::TopicPartition::create(topic, partition, std::max(from, low)));
  std::vector<RdKafka::TopicPartition*> parts = {tp.get()};
  REQUIRE(c->assign(parts) == RdKafka::ERR_NO_ERROR);
  int64_t next = std::max(from, low);
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (next < high && std::chrono::steady_clock::now() < deadline) {
    std::unique_ptr<RdKafka::Message> m(c->consume(100));
    if (m->err() != RdKafka::ERR_NO_ERROR) continue;
    next = m->offset() + 1;
    TopicRecord r;
    if (m->key() != nullptr) r.key = *m->key();
    r.value.assign(static_cast<const char*>(m->payload()), m->len());
    r.offset = m->offset();
    store::model_records::Header h;
    std::string_view payload;
    if (store::model_records::DecodeHeader(r.value, &h, &payload).ok()) r.version = h.version;
    out.push_back(std::move(r));
  }
  c->close();
  REQUIRE(next >= high);
  return out;
}

// Appends records, in order, to a partition of `topic`.
void Append(const std::string& brokers, const std::string& topic,
            const std::vector<TopicRecord>& records, int partition = 0) {
  std::string err;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  REQUIRE(conf->set("bootstrap.servers", brokers, err) == RdKafka::Conf::CONF_OK);
  REQUIRE(conf->set("enable.idempotence", "true", err) == RdKafka::Conf::CONF_OK);
  std::unique_ptr<RdKafka::Producer> p(RdKafka::Producer::create(conf.get(), err));
  REQUIRE(p);
  for (const TopicRecord& r : records) {
    RdKafka::ErrorCode e;
    while ((e = p->produce(topic, partition, RdKafka::Producer::RK_MSG_COPY,
                           const_cast<char*>(r.value.data()), r.value.size(), r.key.data(),
                           r.key.size(), 0, nullptr)) == RdKafka::ERR__QUEUE_FULL)
      p->poll(10);
    REQUIRE(e == RdKafka::ERR_NO_ERROR);
  }
  REQUIRE(p->flush(20000) == RdKafka::ERR_NO_ERROR);
}

// Waits until the trainer has learned everything and published it: three
// more versions after that, so at least one was taken after the last event.
void WaitQuiet(uint16_t tport, double sent) {
  REQUIRE(WaitFor([&] { return Learned(tport) == sent; }, 30s));
  const double versions = Number(tport, "/publishing/versions");
  REQUIRE(WaitFor([&] { return Number(tport, "/publishing/versions") >= versions + 3; }, 30s));
}

}  // namespace

TEST_CASE("Replicas started before and after the events score exactly as the trainer",
          "[replica]") {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  REQUIRE(ingest::EmbeddedKafka::Start(1, 3, ingest::TopicNames{}, &kafka).ok());
  // A replica started before anything exists waits, not ready.
  auto early = StartReplica(kafka->bootstrap());
  const uint16_t early_port = PortOf(early->http_address());
  CHECK(HttpCall(early_port, "GET", "/healthz").status == 200);
  CHECK(!Ready(early_port));

  std::unique_ptr<app::Service> trainer;
  REQUIRE(app::Service::Start(TrainerConfig(kafka->bootstrap(), dir.path() + "/store"), &trainer)
              .ok());
  const uint16_t tport = PortOf(trainer->http_address());
  Feed feed(kafka->bootstrap(), 1);
  feed.Send(3000);
  REQUIRE(WaitFor([&] { return Learned(tport) == feed.sent(); }, 30s));

  REQUIRE(WaitFor([&] { return Ready(early_port); }, 15s));
  CHECK(Matches(tport, early_port));
  auto late = StartReplica(kafka->bootstrap());
  const uint16_t late_port = PortOf(late->http_address());
  REQUIRE(WaitFor([&] { return Ready(late_port); }, 15s));
  CHECK(Matches(tport, late_port));
  // The replica knows what the trainer learned, and how far behind it is.
  CHECK(Learned(late_port) == feed.sent());
  CHECK(Number(late_port, "/replica/lag_ms") >= 0);
  CHECK(HttpCall(late_port, "GET", "/metrics").body.find("recstream_replica_lag_ms ") !=
        std::string::npos);
  // No admin endpoints on a replica.
  CHECK(HttpCall(late_port, "POST", "/v1/admin/checkpoint").status == 404);

  SECTION("a new event reaches every replica") {
    const std::string before = HttpCall(late_port, "GET", "/v1/score?user=newcomer&item=i1").body;
    std::unique_ptr<ingest::EventProducer> p;
    REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), ingest::TopicNames{}, &p).ok());
    REQUIRE(p->SendEvent(R"({"type":"click","user":"newcomer","item":"i1","label":1})",
                         ingest::ParserOptions{})
                .ok());
    REQUIRE(p->Flush(5000).ok());
    REQUIRE(WaitFor([&] { return Learned(tport) == feed.sent() + 1; }, 10s));
    Json j;
    REQUIRE(WaitFor(
        [&] {
          return j.Parse(HttpCall(late_port, "GET", "/v1/score?user=newcomer&item=i1").body) &&
                 j.Bool("/known/user");
        },
        5s));
    CHECK(HttpCall(late_port, "GET", "/v1/score?user=newcomer&item=i1").body != before);
    CHECK(Matches(tport, late_port));
    CHECK(Matches(tport, early_port));
  }

  SECTION("a restarted replica comes back to the same model") {
    late.reset();
    feed.Send(500);  // learned while it is down
    REQUIRE(WaitFor([&] { return Learned(tport) == feed.sent(); }, 30s));
    auto again = StartReplica(kafka->bootstrap());
    const uint16_t port = PortOf(again->http_address());
    REQUIRE(WaitFor([&] { return Ready(port); }, 15s));
    CHECK(Matches(tport, port));
  }

  SECTION("garbage on the model topic is counted and skipped") {
    std::unique_ptr<ingest::EventProducer> p;
    REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), ingest::TopicNames{}, &p).ok());
    const std::string topic = ingest::TopicNames{}.model;
    REQUIRE(p->SendRaw(topic, "m/commit", "not a record").ok());
    REQUIRE(p->SendRaw(topic, std::string("r/user\0u1", 9), "RM\x01\x01short").ok());
    REQUIRE(p->SendRaw(topic, std::string("r/user\0u1", 9), std::string("RM\x09\x01", 4) +
                                                               std::string(40, 'x'))
                .ok());
    REQUIRE(p->Flush(5000).ok());
    feed.Send(300);
    REQUIRE(WaitFor([&] { return Learned(tport) == feed.sent(); }, 30s));
    REQUIRE(WaitFor([&] { return Number(late_port, "/replica/bad_records") >= 2; }, 10s));
    CHECK(Ready(late_port));
    CHECK(Matches(tport, late_port));
  }
}

TEST_CASE("Produce errors on the model topic: the trainer learns on and replicas catch up",
          "[replica]") {
  TrainerOnKafka t;
  auto& kafka = t.kafka;
  const uint16_t tport = t.port;
  auto replica = StartReplica(kafka->bootstrap());
  const uint16_t rport = PortOf(replica->http_address());
  Feed feed(kafka->bootstrap(), 2);
  feed.Send(1000);
  REQUIRE(WaitFor([&] { return Learned(tport) == feed.sent(); }, 30s));
  REQUIRE(WaitFor([&] { return Ready(rport); }, 15s));
  REQUIRE(Matches(tport, rport));

  // Every produce request fails with a non-retriable error for a while: the
  // model topic's versions fail (events reach the trainer from before).
  const double failures_before = Number(tport, "/publishing/failures");
  rd_kafka_mock_push_request_errors(kafka->mock_cluster(), /*Produce*/ 0, 60,
                                    RD_KAFKA_RESP_ERR_INVALID_RECORD);
  // Events learned meanwhile are published once Kafka takes records again.
  // (The errors hit the feed too: it sends until Kafka has taken 400 more.)
  for (int i = 0; i < 200 && feed.sent() < 1400; ++i) feed.Send(20);
  REQUIRE(feed.sent() >= 1400);
  REQUIRE(WaitFor([&] { return Number(tport, "/publishing/failures") > failures_before; }, 20s));
  // The trainer learns what Kafka took (an injected error may fail a
  // delivery report of a record that was written, so wait for quiet).
  double last = -1;
  REQUIRE(WaitFor(
      [&] {
        const double now = Learned(tport);
        const bool quiet = now == last && now >= 1000;
        last = now;
        std::this_thread::sleep_for(500ms);
        return quiet;
      },
      60s));
  // Publishing recovers with the whole model, and the replica matches.
  CHECK(WaitFor([&] { return Number(tport, "/publishing/full_versions") >= 2; }, 40s));
  CHECK(Matches(tport, rport, 40s));
}

TEST_CASE("A replica keeps serving through a trainer SIGKILL and catches up after its restart",
          "[replica]") {
  testing::TempDir dir;
  const std::string log = dir.path() + "/log.txt", bootstrap = dir.path() + "/bootstrap";
  testing::ChildProcess broker(
      {RECSTREAM_BINARY, "broker", "--partitions", "3", "--bootstrap-file", bootstrap}, log);
  REQUIRE(WaitFor([&] { return std::filesystem::exists(bootstrap); }, 10s));
  std::string brokers = testing::ReadFile(bootstrap);
  brokers.erase(brokers.find_last_not_of("\n ") + 1);
  const uint16_t tport = testing::FreePort();
  auto start_trainer = [&] {
    return std::make_unique<testing::ChildProcess>(
        std::vector<std::string>{RECSTREAM_BINARY, "serve", "--set", "kafka.brokers=" + brokers,
                                 "--set", "store.path=" + dir.path() + "/store", "--set",
                                 "store.checkpoint_interval_ms=2000", "--set",
                                 "replicate.interval_ms=50", "--set", "kafka.max_batch=100",
                                 "--set", "serve.listen=127.0.0.1:" + std::to_string(tport)},
        log);
  };
  auto trainer = start_trainer();
  REQUIRE(WaitFor([&] { return HttpCall(tport, "GET", "/healthz").status == 200; }, 20s));
  auto replica = StartReplica(brokers);
  const uint16_t rport = PortOf(replica->http_address());
  Feed feed(brokers, 3);
  feed.Send(2000);
  REQUIRE(WaitFor([&] { return Learned(tport) == feed.sent(); }, 30s));
  REQUIRE(WaitFor([&] { return Ready(rport); }, 15s));
  REQUIRE(Matches(tport, rport));

  // Killed between checkpoints: the replica has versions the store lacks.
  feed.Send(1500);
  REQUIRE(WaitFor([&] { return Learned(tport) >= feed.sent() - 1000; }, 30s));
  trainer->Signal(SIGKILL);
  CHECK(trainer->Wait() == 128 + SIGKILL);
  const std::string while_down = Answers(rport);
  CHECK(while_down.find("HTTP") == std::string::npos);
  CHECK(Ready(rport));

  // The restarted trainer learns again from its checkpoint; what it
  // publishes first is its whole model, so the replica ends up exactly at
  // the trainer's model, not at the dead trainer's.
  trainer = start_trainer();
  REQUIRE(WaitFor([&] { return HttpCall(tport, "GET", "/healthz").status == 200; }, 20s));
  REQUIRE(WaitFor([&] { return Learned(tport) == feed.sent(); }, 30s));
  CHECK(Matches(tport, rport, 30s));
  trainer->Signal(SIGTERM);
  CHECK(trainer->Wait() == 0);
}

TEST_CASE("A replica bootstraps from a compacted model topic", "[replica]") {
  // The mock cluster does not compact: the test compacts the trainer's
  // topic as Kafka's cleaner would (the latest record of every key, in
  // offset order) into a topic of its own, and starts a replica on that.
  TrainerOnKafka t;
  auto& kafka = t.kafka;
  const uint16_t tport = t.port;
  Feed feed(kafka->bootstrap(), 4);
  for (int i = 0; i < 6; ++i) {  // several versions, each changing some rows
    feed.Send(400);
    WaitQuiet(tport, feed.sent());
  }
  int64_t low = -1;
  const std::vector<TopicRecord> all =
      ReadTopic(kafka->bootstrap(), ingest::TopicNames{}.model, 0, &low);
  REQUIRE(low == 0);
  std::map<std::string, size_t> latest;
  for (size_t i = 0; i < all.size(); ++i) latest[all[i].key] = i;
  std::vector<TopicRecord> compacted;
  for (size_t i = 0; i < all.size(); ++i)
    if (latest[all[i].key] == i) compacted.push_back(all[i]);
  // Compaction removed records of older versions, commits included, and
  // left rows of older versions before the latest width records.
  REQUIRE(compacted.size() < all.size() / 2);
  REQUIRE(kafka->CreateTopic("compacted.model", 1).ok());
  Append(kafka->bootstrap(), "compacted.model", compacted);

  auto replica = StartReplica(kafka->bootstrap(), "compacted.model");
  const uint16_t rport = PortOf(replica->http_address());
  REQUIRE(WaitFor([&] { return Ready(rport); }, 15s));
  CHECK(Matches(tport, rport));
  CHECK(Learned(rport) == feed.sent());
  // From the topic alone: no snapshot fetched, nothing refused.
  CHECK(Number(rport, "/replica/snapshot_records") == 0);
  CHECK(Number(rport, "/replica/bad_records") == 0);
  CHECK(Number(rport, "/replica/apply_errors") == 0);
}

TEST_CASE("A replica that misses a version snapshots again", "[replica]") {
  // The replica follows a relay topic that the test fills from the
  // trainer's model topic, leaving one version out, as when Kafka deletes
  // records before a replica reads them.
  TrainerOnKafka t;
  auto& kafka = t.kafka;
  const uint16_t tport = t.port;
  const std::string model = ingest::TopicNames{}.model;
  Feed feed(kafka->bootstrap(), 5);
  feed.Send(1000);
  WaitQuiet(tport, feed.sent());
  REQUIRE(kafka->CreateTopic("relay.model", 1).ok());
  std::vector<TopicRecord> copied = ReadTopic(kafka->bootstrap(), model);
  Append(kafka->bootstrap(), "relay.model", copied);
  // Small snapshot pages: the model comes in many, most without its shape
  // record (pages are in key order).
  auto replica = StartReplica(kafka->bootstrap(), "relay.model", 2048);
  const uint16_t rport = PortOf(replica->http_address());
  REQUIRE(WaitFor([&] { return Ready(rport); }, 15s));
  REQUIRE(Matches(tport, rport));

  // Two events, learned and published apart: the first one's version is
  // the one the replica misses.
  std::unique_ptr<ingest::EventProducer> p;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), ingest::TopicNames{}, &p).ok());
  REQUIRE(p->SendEvent(R"({"type":"click","user":"missed","item":"i1","label":1})",
                       ingest::ParserOptions{})
              .ok());
  REQUIRE(p->Flush(5000).ok());
  WaitQuiet(tport, feed.sent() + 1);
  REQUIRE(p->SendEvent(R"({"type":"click","user":"seen","item":"i2","label":1})",
                       ingest::ParserOptions{})
              .ok());
  REQUIRE(p->Flush(5000).ok());
  WaitQuiet(tport, feed.sent() + 2);
  const std::vector<TopicRecord> more =
      ReadTopic(kafka->bootstrap(), model, copied.back().offset + 1);
  store::model_records::Version missed;
  for (const TopicRecord& r : more)
    if (r.key.find("missed") != std::string::npos) missed = r.version;
  REQUIRE(missed != store::model_records::Version());
  std::vector<TopicRecord> relay;
  for (const TopicRecord& r : more)
    if (r.version != missed) relay.push_back(r);
  REQUIRE(relay.size() < more.size());
  Append(kafka->bootstrap(), "relay.model", relay);

  // The replica notices the version it never saw, fetches the trainer's
  // snapshot, and knows the user of the missing version.
  REQUIRE(WaitFor([&] { return Number(rport, "/replica/gaps") >= 1; }, 15s));
  Json j;
  CHECK(WaitFor(
      [&] {
        return j.Parse(HttpCall(rport, "GET", "/v1/score?user=missed&item=i1").body) &&
               j.Bool("/known/user");
      },
      15s));
  CHECK(Number(rport, "/replica/resyncs") >= 1);
  CHECK(Matches(tport, rport));
}

TEST_CASE("Users and items expired on the trainer are removed from replicas", "[replica][expiry]") {
  TrainerOnKafka t([](config::AppConfig* cfg) {
    cfg->learner.expire_user_s = 3600;
    cfg->learner.expire_item_s = 3600;
  });
  auto& kafka = t.kafka;
  const uint16_t tport = t.port;
  auto replica = StartReplica(kafka->bootstrap());
  const uint16_t rport = PortOf(replica->http_address());
  Feed feed(kafka->bootstrap(), 6);  // events stamped now
  feed.Send(1000);
  WaitQuiet(tport, feed.sent());
  REQUIRE(WaitFor([&] { return Ready(rport); }, 15s));
  REQUIRE(Matches(tport, rport));
  Json j;
  REQUIRE(j.Parse(HttpCall(rport, "GET", "/v1/score?user=u7&item=i1").body));
  REQUIRE(j.Bool("/known/user"));
  const double users = Number(tport, "/model/users");
  const double items = Number(tport, "/model/items");

  // One event two hours later in event time: every other user expires.
  const int64_t later_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count() +
      2 * 3600 * 1000;
  std::unique_ptr<ingest::EventProducer> p;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), ingest::TopicNames{}, &p).ok());
  REQUIRE(p->SendEvent(R"({"type":"click","user":"traveller","item":"i1","label":1,"ts":)" +
                           std::to_string(later_ms) + "}",
                       ingest::ParserOptions{})
              .ok());
  REQUIRE(p->Flush(5000).ok());
  WaitQuiet(tport, feed.sent() + 1);
  REQUIRE(WaitFor([&] { return Number(tport, "/model/users") == 1; }, 15s));
  CHECK(Number(tport, "/model/expiry/expired_users") == users);
  REQUIRE(WaitFor([&] { return Number(tport, "/model/items") == 1; }, 15s));
  CHECK(Number(tport, "/model/expiry/expired_items") == items - 1);
  // The replica applies the tombstones: same users, same answers.
  REQUIRE(WaitFor([&] { return Number(rport, "/model/users") == 1; }, 15s));
  REQUIRE(WaitFor([&] { return Number(rport, "/model/items") == 1; }, 15s));
  CHECK(Number(rport, "/replica/tombstones") > 0);
  REQUIRE(j.Parse(HttpCall(rport, "GET", "/v1/score?user=u7&item=i1").body));
  CHECK_FALSE(j.Bool("/known/user"));
  CHECK(Matches(tport, rport));
}

// Two trainers of one model (trainer.count 2) on an embedded Kafka of four
// partitions, each publishing on its partition of the model topic.
struct TwoTrainers {
  TwoTrainers() {
    REQUIRE(ingest::EmbeddedKafka::Start(1, 4, ingest::TopicNames{}, &kafka).ok());
    for (int i = 0; i < 2; ++i) {
      config::AppConfig cfg =
          TrainerConfig(kafka->bootstrap(), dir.path() + "/t" + std::to_string(i));
      cfg.kafka.ownership.count = 2;
      cfg.kafka.ownership.index = i;
      cfg.learner.threads = 1;
      // Every task explicit: an implicit task's popularity prior comes from
      // each trainer's own ring, which replicas take from trainer 0.
      cfg.learner.feedback = learner::Feedback::kExplicit;
      REQUIRE(app::Service::Start(cfg, &trainer[i]).ok());
      port[i] = PortOf(trainer[i]->http_address());
    }
  }
  ~TwoTrainers() {
    for (auto& t : trainer)
      if (t) (void)t->Shutdown();
  }
  // Waits until both learned `sent` events in all and published it.
  void WaitQuiet(double sent) {
    REQUIRE(WaitFor([&] { return Learned(port[0]) + Learned(port[1]) == sent; }, 60s));
    for (int i = 0; i < 2; ++i) {
      const double versions = Number(port[i], "/publishing/versions");
      REQUIRE(
          WaitFor([&] { return Number(port[i], "/publishing/versions") >= versions + 3; }, 30s));
    }
  }
  // True once a replica scores every sampled user exactly as the trainer
  // that learns it, and a user nobody has seen as both trainers.
  bool ReplicaMatches(uint16_t rport, const std::vector<std::string>& more_users = {}) {
    auto body = [](uint16_t p, const std::string& path) { return HttpCall(p, "GET", path).body; };
    return WaitFor(
        [&] {
          users = 0;
          std::vector<std::string> all = more_users;
          for (int u = 0; u < 200; u += 9) all.push_back("u" + std::to_string(u));
          for (const std::string& user : all) {
            for (int it : {0, 13, 41, 77}) {
              const std::string path = "/v1/score?user=" + user + "&item=i" + std::to_string(it);
              Json j;
              if (!j.Parse(body(port[0], path))) return false;
              const int owner = j.Bool("/known/user") ? 0 : 1;
              const std::string want = body(port[owner], path), got = body(rport, path);
              if (got != want) {
                mismatch = path + ": trainer " + std::to_string(owner) + " " + want +
                           " replica " + got;
                return false;
              }
            }
            ++users;
          }
          for (int it : {0, 13, 41, 77}) {
            const std::string path = "/v1/score?user=nobody&item=i" + std::to_string(it);
            if (body(rport, path) != body(port[0], path) ||
                body(rport, path) != body(port[1], path))
              return false;
          }
          return true;
        },
        30s);
  }

  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  std::unique_ptr<app::Service> trainer[2];
  uint16_t port[2] = {0, 0};
  int users = 0;  // users compared by the last ReplicaMatches
  std::string mismatch;  // its first difference
};

TEST_CASE("Replicas follow two trainers that share one model and score as the owning trainer",
          "[replica][trainers]") {
  TwoTrainers t;
  std::unique_ptr<app::Replica> replica = StartReplica(t.kafka->bootstrap());
  const uint16_t rport = PortOf(replica->http_address());
  Feed feed(t.kafka->bootstrap(), 11);
  feed.Send(3000);
  t.WaitQuiet(feed.sent());
  REQUIRE(WaitFor([&] { return Ready(rport); }, 30s));
  CHECK(t.ReplicaMatches(rport));
  CHECK(t.users == 23);
}

std::string Hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

TEST_CASE("Each of two trainers serves its own rows as a snapshot, and a replica that misses a "
          "trainer's version snapshots that trainer again",
          "[replica][trainers]") {
  TwoTrainers t;
  Feed feed(t.kafka->bootstrap(), 12);
  feed.Send(1500);
  t.WaitQuiet(feed.sent());
  namespace mr = store::model_records;

  // GET /v1/snapshot of each trainer: what it publishes, nothing it
  // follows (items and features the other owns, and trainer 0's dense
  // blocks), in pages of 4 KiB.
  for (int i = 0; i < 2; ++i) {
    int rows = 0, users = 0, foreign = 0, dense = 0;
    std::string after;
    for (int page_no = 0;; ++page_no) {
      REQUIRE(page_no < 10000);
      // The first page checkpoints first (fresh): the last checkpoint may
      // be up to one interval behind what the trainer learned.
      auto r = HttpCall(
          t.port[i], "GET",
          "/v1/snapshot?max_bytes=4096" + (after.empty() ? "&fresh=1" : "&after=" + Hex(after)));
      REQUIRE(r.status == 200);
      mr::ModelPage page;
      REQUIRE(mr::DecodePage(r.body, &page).ok());
      REQUIRE(mr::ForEachPageRecord(page.records, [&](std::string_view key, std::string_view) {
                if (key.starts_with("d/")) ++dense;
                if (!key.starts_with("r/") && !key.starts_with("f/")) return Status::OK();
                const size_t nul = key.find('\0');
                const std::string_view table = key.substr(2, nul - 2), id = key.substr(nul + 1);
                if (table == "user") {
                  ++users;
                } else if (table != "user_left" && key.starts_with("r/")) {
                  ++rows;
                  if (learner::OwnerOf(id, 2) != i) ++foreign;
                } else if (table == "item" && learner::OwnerOf(id, 2) != i) {
                  ++foreign;
                }
                return Status::OK();
              }).ok());
      if (page.last_key.empty()) break;
      after = page.last_key;
    }
    INFO("trainer " << i);
    CHECK(users > 50);
    CHECK(rows > 20);  // about half of 80 items and 7 features
    CHECK(foreign == 0);
    CHECK((dense > 0) == (i == 0));
  }

  // A replica on a relay of the model topic that the test fills, partition
  // by partition, leaving out trainer 1's versions that brought some users.
  const std::string model = ingest::TopicNames{}.model;
  REQUIRE(t.kafka->CreateTopic("relay.model", 2).ok());
  int64_t next[2] = {0, 0};
  for (int p = 0; p < 2; ++p) {
    const std::vector<TopicRecord> copied =
        ReadTopic(t.kafka->bootstrap(), model, 0, nullptr, p);
    REQUIRE(!copied.empty());
    next[p] = copied.back().offset + 1;
    Append(t.kafka->bootstrap(), "relay.model", copied, p);
  }
  auto replica = StartReplica(t.kafka->bootstrap(), "relay.model", 4096);
  const uint16_t rport = PortOf(replica->http_address());
  REQUIRE(WaitFor([&] { return Ready(rport); }, 30s));
  REQUIRE(t.ReplicaMatches(rport));

  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(t.kafka->bootstrap(), ingest::TopicNames{}, &producer).ok());
  std::vector<std::string> missed;
  for (int k = 0; k < 12; ++k) {
    missed.push_back("missed" + std::to_string(k));
    REQUIRE(producer
                ->SendEvent(R"({"type":"click","user":")" + missed.back() +
                                R"(","item":"i1","label":1})",
                            ingest::ParserOptions{})
                .ok());
  }
  REQUIRE(producer->Flush(5000).ok());
  t.WaitQuiet(feed.sent() + 12);
  // Later versions of both trainers, which the replica does get.
  for (int k = 0; k < 12; ++k)
    REQUIRE(producer
                ->SendEvent(R"({"type":"click","user":"seen)" + std::to_string(k) +
                                R"(","item":"i2","label":1})",
                            ingest::ParserOptions{})
                .ok());
  REQUIRE(producer->Flush(5000).ok());
  t.WaitQuiet(feed.sent() + 24);
  size_t left_out = 0;
  for (int p = 0; p < 2; ++p) {
    const std::vector<TopicRecord> more = ReadTopic(t.kafka->bootstrap(), model, next[p], nullptr, p);
    std::set<mr::Version> drop;
    if (p == 1)
      for (const TopicRecord& r : more)
        if (r.key.find("missed") != std::string::npos) drop.insert(r.version);
    std::vector<TopicRecord> relay;
    for (const TopicRecord& r : more)
      if (!drop.count(r.version)) relay.push_back(r);
    left_out += more.size() - relay.size();
    Append(t.kafka->bootstrap(), "relay.model", relay, p);
  }
  REQUIRE(left_out > 0);  // trainer 1 learned some of the 12 users
  // The replica notices the gap on partition 1 and takes trainer 1's
  // snapshot: it knows trainer 1's users of the missing versions, with
  // trainer 1's rows for them.
  REQUIRE(WaitFor([&] { return Number(rport, "/replica/gaps") >= 1; }, 15s));
  CHECK(WaitFor([&] { return Number(rport, "/replica/resyncs") >= 1; }, 15s));
  int of_trainer1 = 0;
  for (const std::string& user : missed) {
    Json j;
    const std::string path = "/v1/score?user=" + user + "&item=i1";
    REQUIRE(j.Parse(HttpCall(t.port[1], "GET", path).body));
    if (!j.Bool("/known/user")) continue;
    ++of_trainer1;
    Json r;
    CHECK(WaitFor([&] { return r.Parse(HttpCall(rport, "GET", path).body) && r.Bool("/known/user"); },
                  15s));
  }
  CHECK(of_trainer1 > 0);
  // Every row the replica holds is its owner's: it scores every user as
  // the trainer that learns it (the missing users included).
  const bool matches = t.ReplicaMatches(rport, missed);
  INFO(t.mismatch);
  CHECK(matches);
  CHECK(t.users == 23 + 12);
}

}  // namespace recstream
