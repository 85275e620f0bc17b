// Crash safety with real processes: `recstream broker` holds the events
// while `recstream serve` is killed with SIGKILL mid-stream and restarted on
// the same RocksDB directory. Every event must be learned exactly once, and
// a model restored from a checkpoint must score exactly as it did when the
// checkpoint was written.
#include <catch2/catch.hpp>
#include <random>
#include <set>

#include "ingest/kafka.h"
#include "ingest/parser.h"
#include "learner/learner.h"
#include "serve/test_http_client.h"
#include "store/checkpoint_store.h"
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
  // Default Kafka settings: fixed partition ownership needs no group session
  // to expire, so nothing here shortens one.
  Server(const std::string& brokers, const std::string& store, uint16_t port,
         const std::string& log, const std::vector<std::string>& extra = {})
      : port_(port), process_(Argv(brokers, store, port, extra), log) {}
  bool Up() {
    return WaitFor([&] { return HttpCall(port_, "GET", "/healthz").status == 200; }, 20s);
  }
  ChildProcess& process() { return process_; }

 private:
  static std::vector<std::string> Argv(const std::string& brokers, const std::string& store,
                                       uint16_t port, const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {RECSTREAM_BINARY, "serve",
                                     "--set",          "kafka.brokers=" + brokers,
                                     "--set",          "kafka.group_id=crash",
                                     "--set",          "kafka.max_batch=300",
                                     "--set",          "store.path=" + store,
                                     "--set",          "store.checkpoint_interval_ms=150",
                                     "--set",          "serve.listen=127.0.0.1:" + std::to_string(port),
                                     "--set",          "serve.admin_token=t0ken"};
    for (const std::string& e : extra) {
      argv.push_back("--set");
      argv.push_back(e);
    }
    return argv;
  }
  uint16_t port_;
  ChildProcess process_;
};

// `recstream broker` in its own process (it outlives the services), and a
// producer of random click, purchase and rating events that counts them.
class Cluster {
 public:
  Cluster(const testing::TempDir& dir, int partitions)
      : log_(dir.path() + "/log.txt"),
        bootstrap_file_(dir.path() + "/bootstrap"),
        broker_({RECSTREAM_BINARY, "broker", "--partitions", std::to_string(partitions),
                 "--bootstrap-file", bootstrap_file_},
                log_) {
    REQUIRE(broker_.started());
    REQUIRE(WaitFor([&] { return std::filesystem::exists(bootstrap_file_); }, 10s));
    brokers_ = testing::ReadFile(bootstrap_file_);
    brokers_.erase(brokers_.find_last_not_of("\n ") + 1);
    REQUIRE(ingest::EventProducer::Open(brokers_, ingest::TopicNames{}, &producer_).ok());
  }
  const std::string& brokers() const { return brokers_; }
  const std::string& log() const { return log_; }
  const Counts& produced() const { return produced_; }

  void Produce(int n) {
    for (int i = 0; i < n; ++i) {
      std::string u = std::to_string(rng_() % 300), it = "i" + std::to_string(rng_() % 100);
      int kind = rng_() % 10;
      std::string json;
      if (kind < 6) {
        json = R"({"type":"click","user":)" + u + R"(,"item":")" + it + R"(","label":)" +
               std::to_string(rng_() % 2) + "}";
        produced_.click += 1;
      } else if (kind < 7) {
        json = R"({"type":"purchase","user":)" + u + R"(,"item":")" + it + R"(","label":1})";
        produced_.purchase += 1;
      } else {
        json = R"({"type":"rating","user":)" + u + R"(,"item":")" + it + R"(","value":)" +
               std::to_string(1 + rng_() % 5) + "}";
        produced_.rating += 1;
      }
      REQUIRE(producer_->SendEvent(json, ingest::ParserOptions{}).ok());
      events_.push_back(json);
    }
    REQUIRE(producer_->Flush(10000).ok());
  }
  // Every event produced, in order.
  const std::vector<std::string>& events() const { return events_; }

 private:
  std::string log_, bootstrap_file_, brokers_;
  ChildProcess broker_;
  std::unique_ptr<ingest::EventProducer> producer_;
  std::mt19937 rng_{7};
  Counts produced_{0, 0, 0};
  std::vector<std::string> events_;
};

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

TEST_CASE("SIGKILL mid-stream loses no event and applies none twice", "[crash]") {
  testing::TempDir dir;
  Cluster cluster(dir, 3);
  const std::string& brokers = cluster.brokers();
  const std::string& log = cluster.log();
  auto produce = [&](int n) { cluster.Produce(n); };
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
  const Counts& produced = cluster.produced();
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

TEST_CASE("A restarted trainer is ready and learning within 5 s", "[restart]") {
  testing::TempDir dir;
  Cluster cluster(dir, 3);
  const std::string store = dir.path() + "/store";
  const uint16_t port = testing::FreePort();
  cluster.Produce(3000);
  auto server = std::make_unique<Server>(cluster.brokers(), store, port, cluster.log());
  REQUIRE(server->Up());
  REQUIRE(WaitFor([&] { return Learned(port).total() >= cluster.produced().total(); }, 60s));
  for (int sig : {SIGTERM, SIGKILL}) {
    INFO("signal " << sig);
    server->process().Signal(sig);
    CHECK(server->process().Wait() == (sig == SIGTERM ? 0 : 128 + SIGKILL));
    cluster.Produce(1000);  // arrives while the trainer is down
    const auto start = std::chrono::steady_clock::now();
    server = std::make_unique<Server>(cluster.brokers(), store, port, cluster.log());
    REQUIRE(WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));
    const double ready_s = Seconds(std::chrono::steady_clock::now() - start);
    REQUIRE(WaitFor([&] { return Learned(port).total() >= cluster.produced().total(); }, 30s));
    const double caught_up_s = Seconds(std::chrono::steady_clock::now() - start);
    // And what arrives now is learned at once.
    cluster.Produce(100);
    REQUIRE(WaitFor([&] { return Learned(port).total() >= cluster.produced().total(); }, 30s));
    const double fresh_s = Seconds(std::chrono::steady_clock::now() - start);
    WARN("after " << (sig == SIGTERM ? "SIGTERM" : "SIGKILL") << ": ready in " << ready_s
                  << " s, events produced while down learned in " << caught_up_s
                  << " s, a new event learned " << fresh_s << " s after the restart");
    CHECK(ready_s < 5.0);
    CHECK(fresh_s < 5.0);
    CHECK(Learned(port).total() == cluster.produced().total());  // none twice
  }
}

TEST_CASE("Two trainers split four partitions and learn every event once", "[trainers]") {
  testing::TempDir dir;
  Cluster cluster(dir, 4);
  const uint16_t ports[2] = {testing::FreePort(), testing::FreePort()};
  cluster.Produce(6000);
  std::vector<std::unique_ptr<Server>> trainers;
  for (int i = 0; i < 2; ++i) {
    trainers.push_back(std::make_unique<Server>(
        cluster.brokers(), dir.path() + "/store" + std::to_string(i), ports[i], cluster.log(),
        std::vector<std::string>{"trainer.count=2", "trainer.index=" + std::to_string(i)}));
    REQUIRE(trainers.back()->Up());
  }
  auto sum = [&] {
    Counts c{0, 0, 0};
    for (uint16_t port : ports) {
      Counts one = Learned(port);
      c.click += one.click;
      c.purchase += one.purchase;
      c.rating += one.rating;
    }
    return c;
  };
  REQUIRE(WaitFor([&] { return sum().total() >= cluster.produced().total(); }, 60s));
  cluster.Produce(2000);  // and while both run
  REQUIRE(WaitFor([&] { return sum().total() >= cluster.produced().total(); }, 60s));
  std::this_thread::sleep_for(1s);  // anything learned twice would show now
  Counts total = sum();
  CHECK(total.click == cluster.produced().click);
  CHECK(total.purchase == cluster.produced().purchase);
  CHECK(total.rating == cluster.produced().rating);

  std::set<std::string> seen;
  for (int i = 0; i < 2; ++i) {
    Json j;
    REQUIRE(j.Parse(HttpCall(ports[i], "GET", "/v1/stats").body));
    CHECK(j.Number("/trainer/index") == i);
    CHECK(j.Number("/trainer/count") == 2);
    CHECK(Learned(ports[i]).total() > 0);
    std::vector<std::string> parts = j.Strings("/trainer/partitions");
    CHECK(parts.size() == 6);  // partitions i and i + 2 of three topics
    for (const std::string& p : parts) {
      CHECK(std::stoi(p.substr(p.rfind('/') + 1)) % 2 == i);
      CHECK(seen.insert(p).second);  // no overlap
    }
    const std::string metrics = HttpCall(ports[i], "GET", "/metrics").body;
    CHECK(metrics.find("recstream_trainer_info{index=\"" + std::to_string(i) +
                       "\",count=\"2\"} 1") != std::string::npos);
  }
  CHECK(seen.size() == 12);
}

TEST_CASE("A store written with another trainer.count is refused at start", "[trainers]") {
  testing::TempDir dir;
  Cluster cluster(dir, 4);
  const std::string store = dir.path() + "/store";
  const uint16_t port = testing::FreePort();
  cluster.Produce(2000);
  {
    Server one(cluster.brokers(), store, port, cluster.log());
    REQUIRE(one.Up());
    REQUIRE(WaitFor([&] { return Learned(port).total() >= cluster.produced().total(); }, 60s));
    one.process().Signal(SIGTERM);
    REQUIRE(one.process().Wait() == 0);
  }
  const std::string refused_log = dir.path() + "/refused.txt";
  Server two(cluster.brokers(), store, port, refused_log,
             {"trainer.count=2", "trainer.index=0"});
  CHECK(two.process().Wait() == 2);
  const std::string message = testing::ReadFile(refused_log);
  INFO(message);
  CHECK(message.find("trainer.count") != std::string::npos);
  CHECK(message.find("recstream.click/1") != std::string::npos);
  CHECK(message.find("empty store.path") != std::string::npos);

  // Nothing was changed: the same store with its own trainer.count resumes.
  Server again(cluster.brokers(), store, port, cluster.log());
  REQUIRE(again.Up());
  CHECK(Learned(port).total() == cluster.produced().total());
}

}  // namespace recstream

namespace recstream {

TEST_CASE("SIGKILL while users leave memory loses no user's event and applies none twice",
          "[crash][memory]") {
  // 12,000 users, each with three clicks on items of its own, spread over
  // the whole stream; a 1 MiB limit keeps about 4,096 users in memory, so
  // users leave memory and come back all the time while the service is
  // killed. A user's stored history is its positive events in order: a
  // lost event leaves an item out, an event learned twice repeats one.
  testing::TempDir dir;
  Cluster cluster(dir, 3);
  const std::string store = dir.path() + "/store";
  const uint16_t port = testing::FreePort();
  constexpr int kUsers = 12000, kRounds = 4;
  std::unique_ptr<ingest::EventProducer> producer;
  REQUIRE(ingest::EventProducer::Open(cluster.brokers(), ingest::TopicNames{}, &producer).ok());
  auto item = [](int u, int r) { return "i" + std::to_string(u) + "-" + std::to_string(r); };
  auto produce_round = [&](int r) {
    for (int u = 0; u < kUsers; ++u) {
      const std::string json = R"({"type":"click","user":"u)" + std::to_string(u) +
                               R"(","item":")" + item(u, r) + R"(","label":1})";
      REQUIRE(producer->SendEvent(json, ingest::ParserOptions{}).ok());
    }
    REQUIRE(producer->Flush(10000).ok());
  };
  const std::vector<std::string> limit = {"model.memory_limit_mb=1", "model.history=10"};
  produce_round(0);
  // Users over the limit leave memory once the service is quiet and they
  // are stored.
  auto settled = [&](int learned) {
    testing::Json j;
    return WaitFor(
        [&] {
          return j.Parse(HttpCall(port, "GET", "/v1/stats").body) &&
                 j.Number("/tasks/click/learned") >= learned &&
                 j.Number("/model/users") <= j.Number("/model/memory/user_budget");
        },
        60s);
  };
  // Each service is killed while it reads users back for the next round
  // and lets others go.
  for (int r = 1; r < kRounds - 1; ++r) {
    Server server(cluster.brokers(), store, port, cluster.log(), limit);
    REQUIRE(server.Up());
    REQUIRE(settled(kUsers * r));
    const double start = Learned(port).total();
    std::thread feeder([&] { produce_round(r); });
    REQUIRE(WaitFor([&] { return Learned(port).total() > start + 5000; }, 60s));
    feeder.join();
    server.process().Signal(SIGKILL);
    CHECK(server.process().Wait() == 128 + SIGKILL);
  }
  {
    Server server(cluster.brokers(), store, port, cluster.log(), limit);
    REQUIRE(server.Up());
    INFO("log: " << testing::ReadFile(cluster.log()).substr(0, 4000));
    REQUIRE(settled(kUsers * (kRounds - 1)));
    produce_round(kRounds - 1);
    REQUIRE(WaitFor([&] { return Learned(port).total() >= kUsers * kRounds; }, 90s));
    testing::Json j;
    // Once quiet and stored, the users over the limit leave memory.
    REQUIRE(WaitFor(
        [&] {
          return j.Parse(HttpCall(port, "GET", "/v1/stats").body) &&
                 j.Number("/model/users") <= j.Number("/model/memory/user_budget");
        },
        30s));
    CHECK(Learned(port).total() == kUsers * kRounds);
    INFO("stats: " << HttpCall(port, "GET", "/v1/stats").body.substr(0, 3000));
    CHECK(j.Number("/model/memory/reloaded_users") > 0);
    CHECK(j.Number("/model/memory/evicted_users") > 0);
    CHECK(j.Number("/model/memory/store_read_errors") == 0);
    // The users a batch needs come back together: a read per batch (and
    // training thread), not one per user.
    CHECK(j.Number("/model/memory/store_reads") * 20 < j.Number("/model/memory/reloaded_users"));
    server.process().Signal(SIGTERM);
    CHECK(server.process().Wait() == 0);
  }
  // Every user's history, from the store the service left.
  std::unique_ptr<store::CheckpointStore> st;
  store::StoreOptions so;
  so.path = store;
  REQUIRE(store::CheckpointStore::Open(so, &st).ok());
  learner::ModelSnapshot model;
  OffsetMap offsets;
  store::CheckpointInfo info;
  REQUIRE(st->Load(&model, &offsets, &info).ok());
  std::map<std::string, std::vector<std::string>> histories;
  for (const auto& l : model.feature_lists)
    if (l.table == "user_history")
      for (size_t i = 0; i < l.keys.size(); ++i) histories[l.keys[i]] = l.features[i];
  int wrong = 0;
  std::string first;
  for (int u = 0; u < kUsers; ++u) {
    std::vector<std::string> want;
    for (int r = 0; r < kRounds; ++r) want.push_back(item(u, r));
    const auto it = histories.find("u" + std::to_string(u));
    const bool ok = it != histories.end() && it->second == want;
    if (!ok && wrong++ == 0) {
      first = "u" + std::to_string(u) + ":";
      if (it != histories.end())
        for (const auto& x : it->second) first += " " + x;
    }
  }
  INFO("first wrong history " << first);
  CHECK(wrong == 0);
}

TEST_CASE("Two trainers sharing one model: a SIGKILL of either loses no change and applies none twice",
          "[trainers][exchange]") {
  // Learning rates so small that no parameter moves: every event's
  // gradient then depends on the event alone, and each Adagrad accumulator
  // ends as its initial value plus the sum of the squared gradients of
  // every event that touched it, wherever it was learned. So the item
  // rows each owner stores must match one learner that learned every event
  // once: a change lost or applied twice moves an item's accumulators by
  // about one event's share in 60. (Dense accumulators add the square of
  // each chunk's summed gradient, so they depend on how events were
  // batched, and are not compared.)
  const std::vector<std::string> still = {
      "model.lr_embedding=1e-30", "model.lr_dense=1e-30", "model.lr_bias=0",
      "model.weighting=fixed",    "model.history=0",      "learner.threads=1",
      "model.feedback=explicit"};
  testing::TempDir dir;
  Cluster cluster(dir, 4);
  const uint16_t ports[2] = {testing::FreePort(), testing::FreePort()};
  const std::string stores[2] = {dir.path() + "/t0", dir.path() + "/t1"};
  auto start = [&](int i) {
    std::vector<std::string> extra = still;
    extra.push_back("trainer.count=2");
    extra.push_back("trainer.index=" + std::to_string(i));
    extra.push_back("replicate.interval_ms=50");
    auto s = std::make_unique<Server>(cluster.brokers(), stores[i], ports[i], cluster.log(), extra);
    REQUIRE(s->Up());
    return s;
  };
  auto learned = [&] { return Learned(ports[0]).total() + Learned(ports[1]).total(); };
  std::unique_ptr<Server> t[2] = {start(0), start(1)};
  for (int victim : {1, 0}) {
    // Kill while both learn and exchange.
    cluster.Produce(2500);
    REQUIRE(WaitFor([&] { return learned() >= cluster.produced().total() - 1500; }, 60s));
    t[victim]->process().Signal(SIGKILL);
    CHECK(t[victim]->process().Wait() == 128 + SIGKILL);
    cluster.Produce(500);  // while it is down
    t[victim] = start(victim);
  }
  cluster.Produce(1000);
  REQUIRE(WaitFor([&] { return learned() == cluster.produced().total(); }, 60s));
  std::this_thread::sleep_for(2s);  // changes reach the owners
  // Stop 1 (its last changes reach 0), then 0; then 1 once more to take
  // what 0 sent last.
  for (int i : {1, 0, 1}) {
    if (!t[i]) t[i] = start(i);
    std::this_thread::sleep_for(2s);
    t[i]->process().Signal(SIGTERM);
    CHECK(t[i]->process().Wait() == 0);
    t[i].reset();
  }
  CHECK(learned() < 0);  // both down

  // One learner that learned every event once.
  learner::LearnerOptions lo;
  lo.lr_embedding = 1e-30f;
  lo.lr_dense = 1e-30f;
  lo.lr_bias = 0;
  lo.weighting = learner::Weighting::kFixed;
  lo.history = 0;
  lo.threads = 1;
  lo.feedback = learner::Feedback::kExplicit;
  std::unique_ptr<learner::Learner> one;
  REQUIRE(learner::Learner::Create(lo, &one).ok());
  ingest::EventParser parser{ingest::ParserOptions{}};
  std::vector<learner::Event> events;
  for (const std::string& json : cluster.events()) {
    learner::Event e;
    REQUIRE_FALSE(parser.Parse(json, &e, 0));
    events.push_back(std::move(e));
  }
  for (const learner::Event& e : events) one->Train(std::span(&e, 1));
  learner::ModelSnapshot want;
  one->TakeSnapshot(true, &want);
  auto rows_of = [](const learner::ModelSnapshot& s, const std::string& table) {
    std::map<std::string, std::vector<float>> out;
    for (const auto& d : s.tables)
      if (d.table == table)
        for (size_t i = 0; i < d.keys.size(); ++i)
          out[d.keys[i]].assign(d.values.data() + i * size_t(d.width),
                                d.values.data() + (i + 1) * size_t(d.width));
    return out;
  };
  const auto want_items = rows_of(want, "item");
  REQUIRE(want_items.size() == 100);
  auto close = [](const std::vector<float>& a, const std::vector<float>& b, size_t from) {
    double worst = 0;
    for (size_t k = from; k < a.size(); ++k)
      worst = std::max(worst, std::abs(double(a[k]) - b[k]) / std::max(1e-6, std::abs(double(b[k]))));
    return worst;
  };
  size_t checked = 0;
  for (int i = 0; i < 2; ++i) {
    store::StoreOptions so;
    so.path = stores[i];
    std::unique_ptr<store::CheckpointStore> st;
    REQUIRE(store::CheckpointStore::Open(so, &st).ok());
    learner::ModelSnapshot got;
    OffsetMap offsets;
    store::CheckpointInfo info;
    REQUIRE(st->Load(&got, &offsets, &info).ok());
    const auto items = rows_of(got, "item");
    const size_t width = want_items.begin()->second.size();
    for (const auto& [item, w] : want_items) {
      if (learner::OwnerOf(item, 2) != i) continue;
      INFO("trainer " << i << " item " << item);
      REQUIRE(items.count(item));
      // The accumulators (the second half of a row): every event once.
      CHECK(close(items.at(item), w, width / 2) < 1e-3);
      ++checked;
    }
  }
  CHECK(checked == 100);
}

}  // namespace recstream
