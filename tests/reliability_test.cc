// Reliability of the whole service (issue #5), in one process: librdkafka's
// mock cluster with fault injection, the real service, RocksDB in a temporary
// directory (with an injected failing file system for disk faults) and HTTP
// over loopback.
//
//  - hostile events: every case of tests/hostile/ goes to the dead-letter
//    topic with its reason, the service stays up and the model stays finite;
//  - broker faults: brokers down and up, request errors, leader changes;
//  - two trainers with fixed partition ownership, one stopping and restarting;
//  - disk faults: /readyz reports them, serving continues, offsets that were
//    not stored are not treated as done, everything recovers;
//  - shutdown: final checkpoint, offsets stored and committed.
#include <librdkafka/rdkafka.h>
// rdkafka_mock.h needs rdkafka.h first.
#include <librdkafka/rdkafka_mock.h>
#include <librdkafka/rdkafkacpp.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <random>
#include <sstream>

#include "app/service.h"
#include "ingest/kafka.h"
#include "ingest/parser.h"
#include "serve/test_http_client.h"
#include "store/checkpoint_store.h"
#include "tests/kafka_test_util.h"
#include "tests/test_util.h"

#ifndef RECSTREAM_HOSTILE_DIR
#error "RECSTREAM_HOSTILE_DIR must name tests/hostile"
#endif

namespace recstream {
namespace {

using serve::testing::HttpCall;
using namespace std::chrono_literals;
using testing::Json;
using testing::ReadTopic;
using testing::WaitFor;

// Kafka protocol API keys (rdkafka_protocol.h is not installed).
constexpr int16_t kApiFetch = 1;
constexpr int16_t kApiOffsetCommit = 8;

struct HostileCase {
  std::string file;
  std::string reason;
  std::string bytes;
};

std::vector<HostileCase> LoadCorpus() {
  std::vector<HostileCase> cases;
  std::istringstream expected(testing::ReadFile(std::string(RECSTREAM_HOSTILE_DIR) + "/EXPECTED"));
  std::string line;
  while (std::getline(expected, line)) {
    if (line.empty() || line[0] == '#') continue;
    HostileCase c;
    std::istringstream fields(line);
    fields >> c.file >> c.reason;
    std::ifstream in(std::string(RECSTREAM_HOSTILE_DIR) + "/" + c.file, std::ios::binary);
    c.bytes.assign(std::istreambuf_iterator<char>(in), {});
    cases.push_back(std::move(c));
  }
  return cases;
}

uint16_t PortOf(const std::string& address) {
  return uint16_t(std::stoi(address.substr(address.rfind(':') + 1)));
}

std::array<double, 3> LearnedByTask(uint16_t port) {
  auto r = HttpCall(port, "GET", "/v1/stats");
  Json j;
  if (r.status != 200 || !j.Parse(r.body)) return {-1, -1, -1};
  return {j.Number("/tasks/click/learned"), j.Number("/tasks/purchase/learned"),
          j.Number("/tasks/rating/learned")};
}

double Learned(uint16_t port) {
  auto l = LearnedByTask(port);
  return l[0] + l[1] + l[2];
}

config::AppConfig BaseConfig(const std::string& brokers, const std::string& store,
                             const std::string& group) {
  config::AppConfig cfg;
  cfg.kafka.brokers = brokers;
  cfg.kafka.group_id = group;
  cfg.kafka.max_batch = 256;
  cfg.store.path = store;
  cfg.store.checkpoint_interval_ms = 200;
  cfg.serve.listen = "127.0.0.1:0";
  cfg.serve.admin_token = "adm1n";
  cfg.learner.threads = 2;
  return cfg;
}

// A plain librdkafka producer that accepts messages of a few MB.
class RawProducer {
 public:
  explicit RawProducer(const std::string& brokers) {
    std::string err;
    std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
    conf->set("bootstrap.servers", brokers, err);
    conf->set("message.max.bytes", "4000000", err);
    conf->set("linger.ms", "2", err);
    producer_.reset(RdKafka::Producer::create(conf.get(), err));
    REQUIRE(producer_);
  }
  ~RawProducer() { Flush(); }
  void Send(const std::string& topic, const std::string& key, const std::string& payload) {
    for (;;) {
      auto err = producer_->produce(
          topic, RdKafka::Topic::PARTITION_UA, RdKafka::Producer::RK_MSG_COPY,
          const_cast<char*>(payload.data()), payload.size(), key.data(), key.size(), 0, nullptr);
      if (err == RdKafka::ERR__QUEUE_FULL) {
        producer_->poll(50);
        continue;
      }
      REQUIRE(err == RdKafka::ERR_NO_ERROR);
      producer_->poll(0);
      return;
    }
  }
  void Flush() { REQUIRE(producer_->flush(30000) == RdKafka::ERR_NO_ERROR); }

 private:
  std::unique_ptr<RdKafka::Producer> producer_;
};

// Sum of the offsets group `group` has committed for the three event topics
// (partitions 0..2); -1 for a partition without a commit counts as 0.
int64_t CommittedTotal(const std::string& brokers, const std::string& group) {
  std::string err;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  conf->set("bootstrap.servers", brokers, err);
  conf->set("group.id", group, err);
  std::unique_ptr<RdKafka::KafkaConsumer> c(RdKafka::KafkaConsumer::create(conf.get(), err));
  REQUIRE(c);
  ingest::TopicNames t;
  std::vector<RdKafka::TopicPartition*> parts;
  for (const std::string* topic : {&t.click, &t.purchase, &t.rating})
    for (int p = 0; p < 3; ++p) parts.push_back(RdKafka::TopicPartition::create(*topic, p));
  int64_t total = -1;
  if (c->committed(parts, 10000) == RdKafka::ERR_NO_ERROR) {
    total = 0;
    for (auto* tp : parts)
      if (tp->offset() >= 0) total += tp->offset();
  }
  RdKafka::TopicPartition::destroy(parts);
  c->close();
  return total;
}

// Valid events of all three types, n in all.
struct Stream {
  std::mt19937 rng{11};
  std::array<int, 3> produced{0, 0, 0};
  std::string Next() {
    std::string u = "u" + std::to_string(rng() % 200), it = "i" + std::to_string(rng() % 80);
    int kind = int(rng() % 10);
    if (kind < 6) {
      ++produced[0];
      return R"({"type":"click","user":")" + u + R"(","item":")" + it + R"(","label":)" +
             std::to_string(rng() % 2) + "}";
    }
    if (kind < 7) {
      ++produced[1];
      return R"({"type":"purchase","user":")" + u + R"(","item":")" + it + R"(","label":1})";
    }
    ++produced[2];
    return R"({"type":"rating","user":")" + u + R"(","item":")" + it + R"(","value":)" +
           std::to_string(1 + rng() % 5) + "}";
  }
  int total() const { return produced[0] + produced[1] + produced[2]; }
  void Send(ingest::EventProducer* p, int n) {
    ingest::ParserOptions po;
    for (int i = 0; i < n; ++i) REQUIRE(p->SendEvent(Next(), po).ok());
  }
  // Send, then wait until the broker has every message.
  void SendAll(ingest::EventProducer* p, int n) {
    Send(p, n);
    REQUIRE(p->Flush(10000).ok());
  }
};

// Opens a stopped service's store and checks the model it holds.
struct StoredModel {
  bool finite = true;
  uint64_t rows = 0;
  std::array<uint64_t, 3> learned{0, 0, 0};
  int64_t offsets_total = 0;
};

StoredModel ReadStore(const std::string& path) {
  StoredModel m;
  std::unique_ptr<store::CheckpointStore> st;
  store::StoreOptions so;
  so.path = path;
  REQUIRE(store::CheckpointStore::Open(so, &st).ok());
  learner::ModelSnapshot snap;
  OffsetMap offsets;
  store::CheckpointInfo info;
  REQUIRE(st->Load(&snap, &offsets, &info).ok());
  for (const auto& t : snap.tables)
    for (float v : t.values) m.finite = m.finite && std::isfinite(v);
  // Parameters and optimizer state only: the "weighting", "metrics" and
  // "dense_m" blocks carry 64-bit values as raw bits (learner/pack.h), which
  // are not floats and may look like NaN when read as floats.
  for (const auto& [name, values] : snap.dense)
    if (name == "dense" || name == "dense_accum")
      for (float v : values) m.finite = m.finite && std::isfinite(v);
  m.rows = snap.rows();
  m.learned = info.learned;
  for (const auto& [tp, off] : offsets) m.offsets_total += off;
  return m;
}

// Calls /v1/score and /healthz in a loop on another thread, counting failures.
class Prober {
 public:
  explicit Prober(uint16_t port) : port_(port) {
    thread_ = std::thread([this] {
      while (!stop_) {
        ++calls_;
        if (HttpCall(port_, "GET", "/v1/score?user=u1&item=i1").status != 200) ++failures_;
        if (HttpCall(port_, "GET", "/healthz").status != 200) ++failures_;
        std::this_thread::sleep_for(20ms);
      }
    });
  }
  ~Prober() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int calls() const { return calls_; }
  int failures() const { return failures_; }

 private:
  uint16_t port_;
  std::atomic<bool> stop_{false};
  std::atomic<int> calls_{0}, failures_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("The hostile corpus is rejected by the parser with the expected reasons",
          "[reliability][hostile]") {
  auto corpus = LoadCorpus();
  REQUIRE(corpus.size() >= 50);
  ingest::ParserOptions options;
  ingest::EventParser parser(options);
  for (const auto& c : corpus) {
    learner::Event e;
    std::string detail;
    auto reason = parser.Parse(c.bytes, &e, 0, &detail);
    INFO(c.file << ": " << detail);
    REQUIRE(reason.has_value());
    CHECK(ingest::RejectReasonName(*reason) == c.reason);
  }
}

TEST_CASE("Hostile events go to the dead-letter topic with their reason; the model stays finite",
          "[reliability][hostile]") {
  testing::TempDir dir;
  auto corpus = LoadCorpus();
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  REQUIRE(ingest::EmbeddedKafka::Start(1, 3, topics, &kafka).ok());
  config::AppConfig cfg = BaseConfig(kafka->bootstrap(), dir.path() + "/store", "hostile");
  // Dead letters carry the original bytes, over 1 MiB for one case.
  cfg.kafka.properties["message.max.bytes"] = "4000000";
  std::unique_ptr<app::Service> service;
  REQUIRE(app::Service::Start(cfg, &service).ok());
  const uint16_t port = PortOf(service->http_address());

  // Hostile messages interleaved with valid events, on every event topic.
  Stream stream;
  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), topics, &producer).ok());
  RawProducer raw(kafka->bootstrap());
  const std::string* event_topics[] = {&topics.click, &topics.purchase, &topics.rating};
  for (size_t i = 0; i < corpus.size(); ++i) {
    stream.Send(producer.get(), 10);
    raw.Send(*event_topics[i % 3], "k" + std::to_string(i), corpus[i].bytes);
  }
  stream.SendAll(producer.get(), 10);
  raw.Flush();

  // The hostile messages come from another producer, so they may still be
  // on their way when the last good event is learned: wait for both.
  auto rejected = [&] {
    Json j;
    return j.Parse(HttpCall(port, "GET", "/v1/stats").body) ? j.Number("/rejected/total") : -1.0;
  };
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 40s));
  WaitFor([&] { return rejected() >= double(corpus.size()); }, 20s);
  CHECK(HttpCall(port, "GET", "/healthz").status == 200);
  Json stats;
  REQUIRE(stats.Parse(HttpCall(port, "GET", "/v1/stats").body));
  CHECK(stats.Number("/rejected/total") == double(corpus.size()));

  // Every hostile message is in the dead-letter topic, byte for byte, with
  // the expected reason.
  auto letters = ReadTopic(kafka->bootstrap(), topics.dlq, corpus.size());
  REQUIRE(letters.size() == corpus.size());
  std::map<std::string, std::string> reason_of;
  for (const auto& l : letters) reason_of[l.payload] = l.reason;
  for (const auto& c : corpus) {
    INFO(c.file);
    auto it = reason_of.find(c.bytes);
    REQUIRE(it != reason_of.end());
    CHECK(it->second == c.reason);
  }

  // Scores stay finite; then the stored parameters, every one of them.
  for (int u = 0; u < 20; ++u) {
    Json j;
    REQUIRE(j.Parse(HttpCall(port, "GET",
                             "/v1/score?user=u" + std::to_string(u) + "&item=i" + std::to_string(u))
                        .body));
    for (const char* f : {"/click", "/purchase", "/rating", "/score"})
      CHECK(std::isfinite(j.Number(f)));
  }
  CHECK(stats.Number("/model/nonfinite_updates_refused") >= 0);
  REQUIRE(service->Shutdown().ok());
  service.reset();
  StoredModel m = ReadStore(cfg.store.path);
  CHECK(m.finite);
  CHECK(m.rows > 0);
  CHECK(m.learned[0] + m.learned[1] + m.learned[2] == uint64_t(stream.total()));
}

TEST_CASE("Broker faults: serving keeps answering, consumption resumes, nothing lost or doubled",
          "[reliability][broker]") {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  REQUIRE(ingest::EmbeddedKafka::Start(3, 3, topics, &kafka).ok());
  rd_kafka_mock_cluster_t* mock = kafka->mock_cluster();
  config::AppConfig cfg = BaseConfig(kafka->bootstrap(), dir.path() + "/store", "faults");
  std::unique_ptr<app::Service> service;
  REQUIRE(app::Service::Start(cfg, &service).ok());
  const uint16_t port = PortOf(service->http_address());
  REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));
  Prober prober(port);

  Stream stream;
  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), topics, &producer).ok());
  stream.SendAll(producer.get(), 2000);
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));

  // 1. Fetch and commit requests fail for a while.
  rd_kafka_mock_push_request_errors(
      mock, kApiFetch, 6, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
      RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
      RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
      RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION);
  rd_kafka_mock_push_request_errors(mock, kApiOffsetCommit, 3, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                    RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                                    RD_KAFKA_RESP_ERR_NOT_COORDINATOR);
  stream.SendAll(producer.get(), 2000);
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));

  // 2. Leaders move between brokers while events arrive.
  for (int round = 0; round < 3; ++round) {
    for (const std::string* t : {&topics.click, &topics.purchase, &topics.rating})
      for (int p = 0; p < 3; ++p)
        rd_kafka_mock_partition_set_leader(mock, t->c_str(), p, 1 + (p + round + 1) % 3);
    stream.Send(producer.get(), 1000);
    std::this_thread::sleep_for(300ms);
  }
  REQUIRE(producer->Flush(15000).ok());
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));

  // 3. A broker goes down (leaders move away from it), then comes back.
  rd_kafka_mock_broker_set_down(mock, 2);
  for (const std::string* t : {&topics.click, &topics.purchase, &topics.rating})
    for (int p = 0; p < 3; ++p)
      rd_kafka_mock_partition_set_leader(mock, t->c_str(), p, 1 + (p % 2) * 2);
  std::this_thread::sleep_for(1s);
  stream.Send(producer.get(), 1000);
  REQUIRE(producer->Flush(15000).ok());
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));
  rd_kafka_mock_broker_set_up(mock, 2);

  // 4. Every broker down: nothing can be consumed, serving goes on; then up.
  for (int b = 1; b <= 3; ++b) rd_kafka_mock_broker_set_down(mock, b);
  std::this_thread::sleep_for(2s);
  CHECK(HttpCall(port, "GET", "/v1/score?user=u1&item=i1").status == 200);
  for (int b = 1; b <= 3; ++b) rd_kafka_mock_broker_set_up(mock, b);
  stream.Send(producer.get(), 1000);
  REQUIRE(producer->Flush(20000).ok());
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 40s));

  std::this_thread::sleep_for(1s);  // anything applied twice would show now
  auto learned = LearnedByTask(port);
  CHECK(learned[0] == stream.produced[0]);
  CHECK(learned[1] == stream.produced[1]);
  CHECK(learned[2] == stream.produced[2]);
  prober.Stop();
  INFO("probe calls " << prober.calls());
  CHECK(prober.failures() == 0);
  CHECK(prober.calls() > 50);
  REQUIRE(service->Shutdown().ok());
}

TEST_CASE("One of two trainers stops and restarts: the other goes on, every event once",
          "[reliability][trainers]") {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  REQUIRE(ingest::EmbeddedKafka::Start(1, 4, topics, &kafka).ok());
  config::AppConfig a_cfg = BaseConfig(kafka->bootstrap(), dir.path() + "/a", "shared");
  config::AppConfig b_cfg = BaseConfig(kafka->bootstrap(), dir.path() + "/b", "shared");
  a_cfg.kafka.ownership = {2, 0};
  b_cfg.kafka.ownership = {2, 1};
  std::unique_ptr<app::Service> a, b;
  REQUIRE(app::Service::Start(a_cfg, &a).ok());
  REQUIRE(app::Service::Start(b_cfg, &b).ok());
  const uint16_t port = PortOf(a->http_address());
  uint16_t b_port = PortOf(b->http_address());
  REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));
  REQUIRE(WaitFor([&] { return HttpCall(b_port, "GET", "/readyz").status == 200; }, 30s));
  Prober prober(port);

  Stream stream;
  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), topics, &producer).ok());
  stream.SendAll(producer.get(), 2000);
  REQUIRE(WaitFor([&] { return Learned(port) + Learned(b_port) == stream.total(); }, 30s));
  CHECK(Learned(port) > 0);
  CHECK(Learned(b_port) > 0);

  // B stops: A keeps its own partitions and learns on, untouched (no
  // rebalance hands it B's partitions, whose events wait for B).
  REQUIRE(b->Shutdown().ok());
  b.reset();
  const double a_before = Learned(port);
  stream.SendAll(producer.get(), 2000);
  REQUIRE(WaitFor([&] { return Learned(port) > a_before + 500; }, 30s));
  std::this_thread::sleep_for(1s);
  CHECK(Learned(port) < stream.total() - 500);

  // B comes back on its own store and resumes its partitions where it left
  // them: together they hold every event exactly once.
  REQUIRE(app::Service::Start(b_cfg, &b).ok());
  b_port = PortOf(b->http_address());
  REQUIRE(WaitFor([&] { return Learned(port) + Learned(b_port) == stream.total(); }, 60s));
  std::this_thread::sleep_for(1s);
  auto la = LearnedByTask(port), lb = LearnedByTask(b_port);
  CHECK(la[0] + lb[0] == stream.produced[0]);
  CHECK(la[1] + lb[1] == stream.produced[1]);
  CHECK(la[2] + lb[2] == stream.produced[2]);
  prober.Stop();
  CHECK(prober.failures() == 0);
  REQUIRE(b->Shutdown().ok());
  REQUIRE(a->Shutdown().ok());
}

TEST_CASE("Disk faults: readiness reports them, serving goes on, nothing unstored counts as done",
          "[reliability][disk]") {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  REQUIRE(ingest::EmbeddedKafka::Start(1, 3, topics, &kafka).ok());
  auto disk_full = std::make_shared<std::atomic<bool>>(false);
  config::AppConfig cfg = BaseConfig(kafka->bootstrap(), dir.path() + "/store", "disk");
  cfg.store.fail_writes = [disk_full] { return disk_full->load(); };
  std::unique_ptr<app::Service> service;
  REQUIRE(app::Service::Start(cfg, &service).ok());
  uint16_t port = PortOf(service->http_address());
  REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));

  Stream stream;
  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(kafka->bootstrap(), topics, &producer).ok());
  stream.SendAll(producer.get(), 2000);
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));
  const std::string admin = "Authorization: Bearer adm1n\r\n";
  REQUIRE(HttpCall(port, "POST", "/v1/admin/checkpoint", "", admin).status == 200);
  const int stored_before_fault = stream.total();
  REQUIRE(WaitFor([&] { return CommittedTotal(kafka->bootstrap(), "disk") == stored_before_fault; },
                  10s));

  // The disk fills up: checkpoints fail, readiness says why, learning and
  // serving continue from memory.
  disk_full->store(true);
  stream.SendAll(producer.get(), 2000);
  REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 503; }, 10s));
  auto ready = HttpCall(port, "GET", "/readyz");
  CHECK(ready.body.find("store") != std::string::npos);
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));
  CHECK(HttpCall(port, "GET", "/v1/score?user=u1&item=i1").status == 200);
  CHECK(HttpCall(port, "POST", "/v1/admin/checkpoint", "", admin).status >= 500);
  Json stats;
  REQUIRE(stats.Parse(HttpCall(port, "GET", "/v1/stats").body));
  CHECK_FALSE(stats.Bool("/checkpoint/ok"));
  // Offsets of events whose checkpoint failed are not committed as done.
  std::this_thread::sleep_for(600ms);
  CHECK(CommittedTotal(kafka->bootstrap(), "disk") == stored_before_fault);

  // The disk comes back: the next checkpoint stores everything.
  disk_full->store(false);
  REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 15s));
  REQUIRE(HttpCall(port, "POST", "/v1/admin/checkpoint", "", admin).status == 200);
  REQUIRE(
      WaitFor([&] { return CommittedTotal(kafka->bootstrap(), "disk") == stream.total(); }, 10s));

  // The disk fails again and the service stops before it recovers: the
  // final checkpoint fails and the store keeps the last complete one.
  const int stored_before_second_fault = stream.total();
  disk_full->store(true);
  stream.SendAll(producer.get(), 1500);
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));
  CHECK_FALSE(service->Shutdown().ok());
  service.reset();
  disk_full->store(false);
  StoredModel m = ReadStore(cfg.store.path);
  CHECK(m.finite);
  CHECK(m.learned[0] + m.learned[1] + m.learned[2] == uint64_t(stored_before_second_fault));
  CHECK(m.offsets_total == stored_before_second_fault);

  // Restarted on the healthy disk, it replays exactly the unstored events.
  REQUIRE(app::Service::Start(cfg, &service).ok());
  port = PortOf(service->http_address());
  CHECK(Learned(port) == stored_before_second_fault);
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 40s));
  std::this_thread::sleep_for(1s);
  auto learned = LearnedByTask(port);
  CHECK(learned[0] == stream.produced[0]);
  CHECK(learned[1] == stream.produced[1]);
  CHECK(learned[2] == stream.produced[2]);
  REQUIRE(service->Shutdown().ok());
}

}  // namespace recstream

namespace recstream {

TEST_CASE("SIGTERM: final checkpoint, offsets stored and committed, exit 0 quickly",
          "[reliability][shutdown]") {
  testing::TempDir dir;
  const std::string log = dir.path() + "/log.txt";
  const std::string bootstrap_file = dir.path() + "/bootstrap";
  testing::ChildProcess broker(
      {RECSTREAM_BINARY, "broker", "--partitions", "3", "--bootstrap-file", bootstrap_file}, log);
  REQUIRE(broker.started());
  REQUIRE(WaitFor([&] { return std::filesystem::exists(bootstrap_file); }, 10s));
  std::string brokers = testing::ReadFile(bootstrap_file);
  brokers.erase(brokers.find_last_not_of("\n ") + 1);

  const std::string store = dir.path() + "/store";
  const uint16_t port = testing::FreePort();
  // A long checkpoint interval: only the final checkpoint can store the tail.
  testing::ChildProcess server({RECSTREAM_BINARY, "serve", "--set", "kafka.brokers=" + brokers,
                                "--set", "kafka.group_id=term", "--set", "store.path=" + store,
                                "--set", "store.checkpoint_interval_ms=600000", "--set",
                                "serve.listen=127.0.0.1:" + std::to_string(port)},
                               log);
  REQUIRE(server.started());
  REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));

  Stream stream;
  std::unique_ptr<ingest::EventProducer> producer;
  ingest::TopicNames topics;
  REQUIRE(ingest::EventProducer::Open(brokers, topics, &producer).ok());
  stream.SendAll(producer.get(), 5000);
  REQUIRE(WaitFor([&] { return Learned(port) == stream.total(); }, 30s));

  auto t0 = std::chrono::steady_clock::now();
  server.Signal(SIGTERM);
  const int code = server.Wait();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("log: " << testing::ReadFile(log).substr(0, 4000));
  CHECK(code == 0);
  // The contract is 5 s; the test allows for a loaded machine and prints it.
  WARN("SIGTERM to exit: " << seconds << " s");
  CHECK(seconds < 10.0);
  CHECK(testing::ReadFile(log).find("closing the Kafka consumer:") == std::string::npos);

  StoredModel m = ReadStore(store);
  CHECK(m.learned[0] + m.learned[1] + m.learned[2] == uint64_t(stream.total()));
  CHECK(m.offsets_total == stream.total());
  CHECK(CommittedTotal(brokers, "term") == stream.total());

  // With the broker gone, closing the consumer cannot complete: SIGTERM still
  // stores the final checkpoint and exits 0 within the budget.
  {
    testing::ChildProcess again({RECSTREAM_BINARY, "serve", "--set", "kafka.brokers=" + brokers,
                                 "--set", "kafka.group_id=term", "--set", "store.path=" + store,
                                 "--set", "serve.listen=127.0.0.1:" + std::to_string(port)},
                                log);
    REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));
    broker.Signal(SIGKILL);
    broker.Wait();
    std::this_thread::sleep_for(500ms);
    auto t1 = std::chrono::steady_clock::now();
    again.Signal(SIGTERM);
    CHECK(again.Wait() == 0);
    const double s2 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    WARN("SIGTERM to exit with the broker down: " << s2 << " s");
    CHECK(s2 < 10.0);
    StoredModel m2 = ReadStore(store);
    CHECK(m2.learned[0] + m2.learned[1] + m2.learned[2] == uint64_t(stream.total()));
  }
}

}  // namespace recstream
