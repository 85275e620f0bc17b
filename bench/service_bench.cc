// service_bench: the whole service in one process (issue #4, targets 2, 3
// and 4): an embedded Kafka (librdkafka's mock cluster), app::Service
// (consumer group, parser, learner, RocksDB checkpoints, HTTP server) and a
// client over loopback, as tests/e2e_test.cc wires them.
//
//   service_bench throughput [--events N] [--users U] [--items I] [--latency]
//                            [--hold S] [--restart] [--produce-linger-ms L]
//                            [--visitor-events V [--return-share R] [--return-recent N]]
//                            [--expire-user-s S] [--memory-limit-mb M]
//     Produces N generated JSON events first (in large producer batches,
//     linger.ms L, default 1000), then starts the service and
//     measures how fast they are consumed, parsed and learned, then how long
//     a checkpoint of everything takes (POST /v1/admin/checkpoint). With
//     --latency, then times GET /v1/score, POST /v1/score (1,000 items) and
//     GET /v1/recommend (k=10) one request at a time on a keep-alive
//     connection. Prints `http=HOST:PORT` once serving, `consuming` when the
//     first event is learned and `idle` once all are; --hold keeps the
//     service up S seconds after that (for wrk, see serve_wrk.sh). --restart
//     then stops the service and times a restart from its store. With V,
//     the events' users and times are longtail's long tail of visitors
//     instead of the generator's users; S and M set model.expire.user_s and
//     model.memory_limit_mb (issue #30: the limit's cost on the whole
//     service, Kafka and parsing included).
//
//   service_bench store [--rows N] [--delta-rows M] [--user-features F]
//     The persistence path alone (no Kafka, no HTTP): a learner of the
//     service's default shape holding N user rows (synthetic values; with
//     F > 0 each user also has a list of F features, as users of the
//     generator's events have) snapshots them (BeginSnapshot: the training thread's pause; then
//     FinishSnapshot: the copy beside training), stores them as one full
//     checkpoint, then stores M changed rows as a delta checkpoint, closes the
//     store and restarts from it (Load + ApplySnapshot into a new learner).
//
//   service_bench freshness [--samples N] [--background-rate R] [--poll-us U]
//     For each sample, produces one click on a never-seen item and polls
//     GET /v1/score until the item is known, pausing U microseconds (500)
//     between polls: the time from the produce call to the event's effect
//     being served. R > 0 produces R generated events per second in the
//     background meanwhile. With --replica, polls a replica (app::Replica,
//     in this process) that follows the service's model topic instead: the
//     time from the produce call to the event's effect in a replica.
//
//   service_bench longtail [--events N] [--expire-user-s S] [--admit-after A]
//                          [--checkpoint-every M] [--memory-limit-mb L] [--return-share R]
//                          [--visitor-events V] [--return-recent N]
//     Memory under an endless long tail of new users (issue #30), without
//     Kafka: a learner and its store (RocksDB in a temp dir) as the service
//     holds them. Events come from the generator (items, labels, features),
//     each visitor id seen in V (default 3) consecutive events, then never again,
//     events 2 ms apart in event time. Every M events (default 1,000,000) a
//     delta snapshot is stored, as a checkpoint; prints the events, the
//     rate, live and expired users, the process's resident memory, the
//     store's size on disk and RocksDB's memory (memtables / table readers /
//     block cache, MiB). With L, the memory limit (users leave for the
//     store and come back; a checkpoint also when the learner asks for one);
//     with R, that share of events comes from an earlier visitor, drawn
//     uniformly (with N, from about N visitors back: exponential recency),
//     so that users come back from the store.
//
//   service_bench replica-bootstrap [--rows N]
//     A store holding N synthetic user rows; the service restores it and
//     publishes it (its first version carries the whole model), then a
//     replica starts and is timed until ready. The mock cluster keeps only
//     ~5 MiB per partition, so the replica bootstraps from the trainer's
//     snapshot over HTTP, then follows the topic.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <malloc.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "app/service.h"
#include "bench/bench_util.h"
#include "common/thread_slice.h"
#include "config/config.h"
#include "eval/generator.h"
#include "ingest/kafka.h"
#include "ingest/parser.h"
#include "learner/learner.h"
#include "serve/test_http_client.h"
#include "app/replica.h"
#include "store/checkpoint_store.h"
#include "tests/test_util.h"

namespace recstream::bench {
namespace {

using serve::testing::TestConnection;

constexpr char kAdminToken[] = "bench";
// --kafka-property: extra consumer/producer properties of the service.
std::map<std::string, std::string> g_kafka_properties;  // NOLINT: set once by main
int g_train_nice = -1;           // NOLINT: set once by main; -1: the configuration's default
int g_poll_us = 500;             // NOLINT: set once by main; freshness: pause between polls (us)
int g_produce_linger_ms = 1000;  // NOLINT: set once by main; the backlog producer's linger.ms
std::string g_io_priority;       // NOLINT: set once by main; serve.io_priority
int g_io_slice_us = -1;          // NOLINT: set once by main; -1: serve.io_slice_us' default
int g_background_slice_us = -1;  // NOLINT: set once by main; -1: the configuration's default
int g_serve_threads = 0;         // NOLINT: set once by main; 0: serve.threads' default
int g_learner_threads = -1;      // NOLINT: set once by main; -1: learner.threads' default
int g_ingest_min_kib = -1;       // NOLINT: set once by main; -1: store ingest_min_bytes' default

// The long tail of visitors (longtail, and throughput with --visitor-events):
// each new visitor's V consecutive events, a share R of all events from an
// earlier visitor (drawn uniformly, or about N visitors back with
// exponential recency), events 2 ms apart in event time.
struct Visitors {
  uint64_t visitor_events = 3;
  double return_share = 0;
  uint64_t return_recent = 0;
  std::mt19937_64 rng{99};
  static constexpr int64_t kT0Ms = 1'704'067'200'000;
  // The visitor of the event numbered `done` (0, 1, ...).
  uint64_t Next(uint64_t done) {
    uint64_t visitor = done / visitor_events;
    if (return_share > 0 && visitor > 0 && double(rng() >> 11) * 0x1p-53 < return_share) {
      if (return_recent == 0) {
        visitor = rng() % visitor;
      } else {
        const double u = (double(rng() >> 11) + 1.0) * 0x1p-53;  // (0, 1]
        // Early in the stream, a draw further back than the first visitor
        // wraps around (rather than piling onto visitor 0).
        visitor -= 1 + uint64_t(-std::log(u) * double(return_recent)) % visitor;
      }
    }
    return visitor;
  }
  static int64_t TimeMs(uint64_t done) { return kT0Ms + int64_t(done) * 2; }
};

// A generated JSON line with its "user" and "ts" values replaced (the
// generator writes both as plain numbers).
void SetUserAndTime(std::string* line, uint64_t visitor, int64_t ts_ms) {
  auto replace = [&](std::string_view field, const std::string& value) {
    const size_t at = line->find(field);
    if (at == std::string::npos) return;
    const size_t begin = at + field.size(), end = line->find_first_of(",}", begin);
    if (end == std::string::npos) return;
    line->replace(begin, end - begin, value);
  };
  replace("\"user\":", "\"visitor" + std::to_string(visitor) + "\"");
  replace("\"ts\":", std::to_string(ts_ms));
}

struct Stack {
  testing::TempDir dir;
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  std::unique_ptr<app::Service> service;
  config::AppConfig cfg;
  uint16_t port = 0;
};

bool StartKafka(int partitions, Stack* stack) {
  // The broker stands in for the embedded one `recstream serve` starts inside
  // Service::Start: its threads get the service's background slice.
  if (g_background_slice_us >= 0) stack->cfg.background_slice_us = g_background_slice_us;
  const ThreadSliceScope background(stack->cfg.background_slice_us);
  Status s = ingest::EmbeddedKafka::Start(1, partitions, stack->cfg.kafka.topics, &stack->kafka);
  if (!s.ok()) std::fprintf(stderr, "kafka: %s\n", s.ToString().c_str());
  return s.ok();
}

bool StartService(int checkpoint_ms, Stack* stack) {
  config::AppConfig& cfg = stack->cfg;
  cfg.kafka.brokers = stack->kafka->bootstrap();
  cfg.kafka.group_id = "bench";
  cfg.kafka.properties = g_kafka_properties;
  // As Service::Start does for the embedded cluster this one stands in for.
  ingest::EmbeddedKafka::AddConsumerProperties(&cfg.kafka.properties);
  if (g_train_nice >= 0) cfg.learner.train_nice = g_train_nice;
  if (g_learner_threads >= 0) cfg.learner.threads = g_learner_threads;
  if (g_ingest_min_kib >= 0) cfg.store.ingest_min_bytes = size_t(g_ingest_min_kib) << 10;
  cfg.store.path = stack->dir.path() + "/store";
  cfg.store.checkpoint_interval_ms = checkpoint_ms;
  cfg.serve.listen = "127.0.0.1:0";
  cfg.serve.admin_token = kAdminToken;
  cfg.serve.io_priority = g_io_priority;
  if (g_io_slice_us >= 0) cfg.serve.io_slice_us = g_io_slice_us;
  // cfg.background_slice_us: set by StartKafka, which every mode runs first.
  if (g_serve_threads > 0) cfg.serve.threads = g_serve_threads;
  Status s = app::Service::Start(cfg, &stack->service);
  if (!s.ok()) {
    std::fprintf(stderr, "service: %s\n", s.ToString().c_str());
    return false;
  }
  std::string address = stack->service->http_address();
  stack->port = uint16_t(std::stoi(address.substr(address.rfind(':') + 1)));
  std::printf("http=%s\n", address.c_str());
  std::fflush(stdout);
  return true;
}

// Sum of tasks.*.learned in /v1/stats; -1 on error.
double Learned(TestConnection* c) {
  auto r = c->Request("GET", "/v1/stats");
  testing::Json j;
  if (r.status != 200 || !j.Parse(r.body)) return -1;
  return j.Number("/tasks/click/learned") + j.Number("/tasks/purchase/learned") +
         j.Number("/tasks/rating/learned");
}

bool WaitReady(uint16_t port) {
  return testing::WaitFor(
      [&] { return serve::testing::HttpCall(port, "GET", "/readyz").status == 200; },
      std::chrono::seconds(60));
}

// Times of one kind of request, and the machine's ticks from the first
// request (construction) to Print.
struct Latencies {
  std::vector<double> ms;
  int errors = 0;
  HostTicks host_start = HostTicks::Now();
  void Print(const char* what) {
    size_t n = ms.size();
    double p50 = Quantile(&ms, 0.50), p90 = Quantile(&ms, 0.90), p99 = Quantile(&ms, 0.99),
           max = Quantile(&ms, 1.0);
    std::printf(
        "%s: n=%zu errors=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f load=%s %s\n", what,
        n, errors, p50, p90, p99, max, LoadAverage().c_str(),
        (HostTicks::Now() - host_start).SummaryText().c_str());
  }
};

// Requests for users "<prefix>N", N below `users` (the generator's users
// are plain numbers; longtail's visitors "visitorN").
void MeasureLatency(uint16_t port, int users, int items, int requests,
                    const std::string& prefix = "") {
  TestConnection c(port);
  std::mt19937_64 rng(3);
  auto timed = [&](Latencies* l, const std::string& method, const std::string& target,
                   const std::string& body) {
    auto start = Clock::now();
    auto r = c.Request(method, target, body);
    l->ms.push_back(SecondsSince(start) * 1e3);
    if (r.status != 200) ++l->errors;
  };
  Latencies get;
  for (int i = 0; i < requests; ++i)
    timed(&get, "GET",
          "/v1/score?user=" + prefix + std::to_string(rng() % users) + "&item=i" +
              std::to_string(rng() % items),
          "");
  get.Print("GET /v1/score (sequential, keep-alive)");
  Latencies post;
  for (int i = 0; i < std::max(1, requests / 50); ++i) {
    std::string body = "{\"user\":\"" + prefix + std::to_string(rng() % users) + "\",\"items\":[";
    for (int k = 0; k < 1000; ++k)
      body += (k ? ",\"i" : "\"i") + std::to_string(rng() % items) + "\"";
    body += "]}";
    timed(&post, "POST", "/v1/score", body);
  }
  post.Print("POST /v1/score 1000 items");
  Latencies rec;
  for (int i = 0; i < std::max(1, requests / 50); ++i)
    timed(&rec, "GET", "/v1/recommend?user=" + prefix + std::to_string(rng() % users) + "&k=10",
          "");
  rec.Print("GET /v1/recommend k=10");
}

// Throughput's memory settings (issue #30): with visitor_events > 0 the
// events come from a long tail of visitors (Visitors), and the service runs
// with these model.expire.user_s and model.memory_limit_mb.
struct TailSettings {
  Visitors visitors{0};
  int64_t expire_user_s = 0;
  int64_t memory_limit_mb = 0;
};

int Throughput(uint64_t events, int users, int items, int partitions, int checkpoint_ms,
               bool latency, int hold_s, bool restart, TailSettings tail) {
  Stack stack;
  stack.cfg.learner.expire_user_s = tail.expire_user_s;
  stack.cfg.learner.memory_limit_mb = tail.memory_limit_mb;
  if (partitions <= 0) {
    // librdkafka's mock cluster keeps only the newest 5 MiB (or 100,000
    // message sets) of each partition and silently drops older ones, so a
    // backlog produced beforehand must be spread over enough partitions:
    // about 72% of the events are clicks of ~230 bytes in the log; aim at
    // 3 MiB of clicks per partition.
    partitions = int(std::max<uint64_t>(3, events * 230 * 72 / 100 / (3 << 20) + 1));
    std::printf("partitions=%d per topic (mock cluster keeps 5 MiB per partition)\n", partitions);
  }
  if (!StartKafka(partitions, &stack)) return 1;
  // The backlog is produced before timing starts, so it may linger: the
  // mock cluster stores each producer batch as one message set and finds a
  // fetch's offset by walking a partition's sets from the first
  // (rd_kafka_mock_msgset_find), so a log of many small sets costs the
  // in-process broker CPU on every fetch, CPU the service then lacks (with
  // linger.ms 5 and ~300 partitions most sets held 1-2 messages and the
  // broker thread took about a third of the process's CPU while learning).
  // A bulk producer batches; --produce-linger-ms 5 restores the old way.
  std::unique_ptr<ingest::EventProducer> producer;
  if (!ingest::EventProducer::Open(stack.kafka->bootstrap(), stack.cfg.kafka.topics, &producer,
                                   {{"linger.ms", std::to_string(g_produce_linger_ms)},
                                    {"batch.num.messages", "1000000"},
                                    {"batch.size", "1000000"}})
           .ok())
    return 1;
  eval::GeneratorOptions go;
  go.events = events;
  go.users = users;
  go.items = items;
  eval::Generator gen(go);
  std::string line;
  auto produce_start = Clock::now();
  for (uint64_t done = 0; gen.Next(&line); ++done) {
    if (tail.visitors.visitor_events > 0)
      SetUserAndTime(&line, tail.visitors.Next(done), Visitors::TimeMs(done));
    Status s = producer->SendEvent(line, stack.cfg.parser);
    if (!s.ok()) {
      std::fprintf(stderr, "produce: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  if (!producer->Flush(120000).ok()) return 1;
  std::printf("produced %llu events in %.2f s (%llu delivered)\n", (unsigned long long)events,
              SecondsSince(produce_start), (unsigned long long)producer->delivered());
  producer.reset();

  auto start = Clock::now();
  if (!StartService(checkpoint_ms, &stack)) return 1;
  TestConnection c(stack.port);
  double learned = 0;
  while ((learned = Learned(&c)) <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto first = Clock::now();
  const double learn_cpu0 = CpuSeconds();
  const std::map<long, ThreadCpu> threads_cpu0 = CpuByThread();
  const HostTicks host0 = HostTicks::Now();
  double learned_first = learned;
  std::printf("consuming (%.2f s after start, %.0f events learned at first sight)\n",
              std::chrono::duration<double>(first - start).count(), learned_first);
  std::fflush(stdout);
  uint64_t peak_rss = 0;
  auto last_print = Clock::now(), last_progress = Clock::now();
  double last_learned = learned;
  // The longest time /v1/stats showed no progress while events were left
  // (polled every ~10 ms): a checkpoint's pause of learning shows up here.
  double longest_stall_ms = 0, longest_stall_end_s = 0, longest_stall_learned = 0;
  // The slowest /v1/stats answer: tells a stall of learning from one of
  // answering.
  double slowest_stats_ms = 0, slowest_stats_end_s = 0;
  auto timed_learned = [&] {
    const auto asked = Clock::now();
    const double n = Learned(&c);
    if (const double ms = SecondsSince(asked) * 1e3; ms > slowest_stats_ms) {
      slowest_stats_ms = ms;
      slowest_stats_end_s = SecondsSince(first);
    }
    return n;
  };
  while ((learned = timed_learned()) < double(events)) {
    peak_rss = std::max(peak_rss, ResidentBytes());
    if (learned != last_learned) {
      if (const double gap_ms = SecondsSince(last_progress) * 1e3; gap_ms > longest_stall_ms) {
        longest_stall_ms = gap_ms;
        longest_stall_end_s = SecondsSince(first);
        longest_stall_learned = last_learned;
      }
      last_learned = learned, last_progress = Clock::now();
    }
    if (SecondsSince(last_progress) > 20.0) {
      std::printf("stalled at %.0f of %llu learned for 20 s; /v1/stats:\n%s\n", learned,
                  (unsigned long long)events, c.Request("GET", "/v1/stats").body.c_str());
      return 1;
    }
    if (SecondsSince(last_print) >= 5.0) {
      std::printf("  %.1f s: %.0f learned\n", SecondsSince(first), learned);
      std::fflush(stdout);
      last_print = Clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  double learn_s = SecondsSince(first);
  longest_stall_ms = std::max(longest_stall_ms, SecondsSince(last_progress) * 1e3);
  const double learn_cpu_s = CpuSeconds() - learn_cpu0;
  std::map<std::string, double> threads_cpu = CpuByNameSince(threads_cpu0, CpuByThread());
  const HostTicks learn_host = HostTicks::Now() - host0;
  auto ck_start = Clock::now();
  TestConnection admin(stack.port, 300000);  // a big checkpoint takes longer than 5 s
  auto ck = admin.Request("POST", "/v1/admin/checkpoint", "",
                          std::string("Authorization: Bearer ") + kAdminToken + "\r\n");
  double ck_s = SecondsSince(ck_start);
  std::printf(
      "throughput: events=%llu learn_s=%.3f events_per_s=%.0f (from first learned event to "
      "all learned) | final checkpoint status=%d %.3f s %s | with checkpoint: %.0f events/s | "
      "rss_mib=%.1f peak_rss_mib=%.1f load=%s\n",
      (unsigned long long)events, learn_s, (double(events) - learned_first) / learn_s, ck.status,
      ck_s, ck.body.c_str(), (double(events) - learned_first) / (learn_s + ck_s),
      MiB(ResidentBytes()), MiB(peak_rss), LoadAverage().c_str());
  auto stats = c.Request("GET", "/v1/stats");
  testing::Json j;
  if (j.Parse(stats.body))
    std::printf("stats: checkpoints=%.0f users=%.0f items=%.0f click_auc=%.4f\n",
                j.Number("/checkpoint/count"), j.Number("/model/users"), j.Number("/model/items"),
                j.Number("/tasks/click/progressive/auc"));
  std::printf(
      "learning: cpu_s=%.3f (whole process) cpu_us_per_event=%.3f longest_stall_ms=%.1f (ended "
      "%.2f s after the first event learned, at %.0f learned) slowest_stats_ms=%.1f (answered "
      "%.2f s after the first event learned) %s\n",
      learn_cpu_s, learn_cpu_s * 1e6 / (double(events) - learned_first), longest_stall_ms,
      longest_stall_end_s, longest_stall_learned, slowest_stats_ms, slowest_stats_end_s,
      learn_host.SummaryText().c_str());
  {
    // Where the learning's CPU went, by thread name. "rdk:mock" is the
    // in-process mock broker, which a service beside a real Kafka does not
    // carry; "rdk:broker1" the threads of the service's Kafka clients (the
    // consumer, the dead-letter producer, the model topic's publisher);
    // "rest" is what threads that ended took, and rounding.
    const double per_event = 1e6 / (double(events) - learned_first);
    double named = 0;
    std::printf("learning cpu_us_per_event by thread:");
    for (const auto& [name, cpu] : threads_cpu) {
      named += cpu;
      if (cpu * per_event >= 0.005) std::printf(" %s=%.3f", name.c_str(), cpu * per_event);
    }
    const double mock = threads_cpu.count("rdk:mock") ? threads_cpu["rdk:mock"] : 0.0;
    std::printf(" rest=%.3f | without the mock broker %.3f\n", (learn_cpu_s - named) * per_event,
                (learn_cpu_s - mock) * per_event);
  }
  std::printf("idle\n");
  std::fflush(stdout);
  const bool visiting = tail.visitors.visitor_events > 0;
  if (latency) {
    if (visiting) {
      MeasureLatency(stack.port, int(std::max<uint64_t>(1, events / tail.visitors.visitor_events)),
                     items, 20000, "visitor");
    } else {
      MeasureLatency(stack.port, users, items, 20000);
    }
  }
  std::fflush(stdout);
  if (hold_s > 0) std::this_thread::sleep_for(std::chrono::seconds(hold_s));
  Status s = stack.service->Shutdown();
  std::printf("shutdown: %s\n", s.ToString().c_str());
  if (restart) {
    // Restart on the same store: Start() restores every stored row before it
    // returns; /v1/score answers from then on (readyz also waits for the
    // consumer group, whose join the mock cluster delays by ~3 s).
    stack.service.reset();
    auto restart_start = Clock::now();
    if (!StartService(checkpoint_ms, &stack)) return 1;
    double start_s = SecondsSince(restart_start);
    TestConnection rc(stack.port);
    auto r = rc.Request("GET",
                        visiting ? "/v1/score?user=visitor1&item=i1" : "/v1/score?user=1&item=i1");
    double score_s = SecondsSince(restart_start);
    std::printf(
        "restart: Start() returned in %.3f s (model restored), first /v1/score %d at %.3f s, "
        "rss_mib=%.1f load=%s\n",
        start_s, r.status, score_s, MiB(ResidentBytes()), LoadAverage().c_str());
    std::fflush(stdout);
    s = stack.service->Shutdown();
  }
  return 0;
}

// Pulls the "item" flag out of `"known":{"user":..,"item":..}`.
bool ItemKnown(const std::string& body) {
  size_t k = body.find("\"known\"");
  return k != std::string::npos && body.find("\"item\":true", k) != std::string::npos;
}

// A replica in this process following the stack's model topic, as
// `recstream replica --set kafka.brokers=...` runs it.
std::unique_ptr<app::Replica> StartReplica(const Stack& stack, uint16_t* port) {
  config::AppConfig cfg;
  cfg.kafka.brokers = stack.kafka->bootstrap();
  cfg.kafka.properties = g_kafka_properties;
  cfg.serve.listen = "127.0.0.1:0";
  if (g_serve_threads > 0) cfg.serve.threads = g_serve_threads;
  auto configure = [](const std::string& settings, config::AppConfig* out) {
    return config::Load("", config::SettingsAsFlags(settings), {}, out);
  };
  std::unique_ptr<app::Replica> replica;
  Status s = app::Replica::Start(cfg, configure, &replica);
  if (!s.ok()) {
    std::fprintf(stderr, "replica: %s\n", s.ToString().c_str());
    return nullptr;
  }
  const std::string address = replica->http_address();
  *port = uint16_t(std::stoi(address.substr(address.rfind(':') + 1)));
  std::printf("replica http=%s\n", address.c_str());
  return replica;
}

int Freshness(int samples, double background_rate, int partitions, int checkpoint_ms,
              bool via_replica) {
  Stack stack;
  if (!StartKafka(partitions, &stack)) return 1;
  if (!StartService(checkpoint_ms, &stack)) return 1;
  if (!WaitReady(stack.port)) {
    std::fprintf(stderr, "service not ready in 60 s\n");
    return 1;
  }
  std::unique_ptr<app::Replica> replica;
  uint16_t poll_port = stack.port;
  if (via_replica) {
    replica = StartReplica(stack, &poll_port);
    if (!replica || !WaitReady(poll_port)) {
      std::fprintf(stderr, "replica not ready in 60 s\n");
      return 1;
    }
  }
  std::unique_ptr<ingest::EventProducer> producer, background;
  if (!ingest::EventProducer::Open(stack.kafka->bootstrap(), stack.cfg.kafka.topics, &producer)
           .ok() ||
      !ingest::EventProducer::Open(stack.kafka->bootstrap(), stack.cfg.kafka.topics, &background)
           .ok())
    return 1;
  // Warm-up: the first event also proves partitions are being consumed.
  TestConnection c(poll_port);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> background_sent{0};
  std::thread feeder;
  if (background_rate > 0) {
    feeder = std::thread([&] {
      eval::GeneratorOptions go;
      go.events = UINT64_MAX / 2;
      go.users = 100000;
      go.items = 10000;
      eval::Generator gen(go);
      std::string line;
      auto start = Clock::now();
      uint64_t sent = 0;
      while (!stop.load()) {
        double due = SecondsSince(start) * background_rate;
        while (double(sent) < due && gen.Next(&line)) {
          (void)background->SendEvent(line, stack.cfg.parser);
          ++sent;
        }
        background_sent.store(sent);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  std::mt19937 rng(11);
  Latencies fresh;
  int timeouts = 0;
  for (int i = -5; i < samples; ++i) {  // 5 warm-up samples, not counted
    std::string item = "fresh" + std::to_string(i + 5);
    std::string target = "/v1/score?user=probe&item=" + item;
    std::string event =
        "{\"type\":\"click\",\"user\":\"probe\",\"item\":\"" + item + "\",\"label\":1}";
    auto t0 = Clock::now();
    if (!producer->SendEvent(event, stack.cfg.parser).ok()) return 1;
    bool seen = false;
    while (SecondsSince(t0) < 10.0) {
      auto r = c.Request("GET", target);
      if (r.status == 200 && ItemKnown(r.body)) {
        seen = true;
        break;
      }
      if (g_poll_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(g_poll_us));
    }
    double ms = SecondsSince(t0) * 1e3;
    if (i >= 0) {
      if (seen)
        fresh.ms.push_back(ms);
      else
        ++timeouts;
    }
    // Decorrelate from the poll and linger cycles.
    std::this_thread::sleep_for(std::chrono::microseconds(20000 + rng() % 30000));
  }
  stop = true;
  if (feeder.joinable()) feeder.join();
  fresh.errors = timeouts;
  char what[160];
  std::snprintf(what, sizeof what,
                "freshness produce->served%s (background %.0f events/s, %llu sent, errors=timeouts)",
                via_replica ? " by a replica" : "", background_rate,
                (unsigned long long)background_sent.load());
  fresh.Print(what);
  if (replica) (void)replica->Shutdown();
  Status s = stack.service->Shutdown();
  std::printf("shutdown: %s\n", s.ToString().c_str());
  return 0;
}

// A snapshot of `rows` user rows, values derived from `salt`, of the shape of
// `base` (a snapshot of a learner with the options to bench). With
// `user_features` > 0, each user also has a feature list of that many
// features drawn from a few hundred (as the generator's "age=..." ones).
learner::ModelSnapshot SyntheticSnapshot(const learner::ModelSnapshot& base, uint64_t rows,
                                         uint32_t salt, int user_features) {
  learner::ModelSnapshot snap = base;
  if (user_features > 0) {
    learner::FeatureListDelta& lists = snap.feature_lists.emplace_back();
    lists.table = "user";
    lists.keys.reserve(rows);
    lists.features.reserve(rows);
    for (uint64_t r = 0; r < rows; ++r) {
      lists.keys.push_back(std::to_string(r));
      std::vector<std::string>& f = lists.features.emplace_back();
      for (int k = 0; k < user_features; ++k)
        f.push_back("f" + std::to_string(k) + "=" +
                    std::to_string((r * 2654435761u >> (8 * k)) % 100));
    }
  }
  for (learner::TableDelta& t : snap.tables) {
    if (t.table != "user") continue;
    t.keys.reserve(rows);
    t.values.resize(rows * size_t(t.width));
    uint32_t x = 2463534242u ^ salt;
    for (uint64_t r = 0; r < rows; ++r) {
      t.keys.push_back(std::to_string(r));
      float* v = t.values.data() + r * t.width;
      for (int k = 0; k < t.width; ++k) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        v[k] = float(int32_t(x)) * 1e-10f;
      }
    }
  }
  return snap;
}

int ReplicaBootstrap(uint64_t rows) {
  Stack stack;
  if (!StartKafka(3, &stack)) return 1;
  // The store the service restores: N synthetic user rows.
  {
    learner::ModelSnapshot base;
    std::unique_ptr<learner::Learner> l;
    if (!learner::Learner::Create(stack.cfg.learner, &l).ok()) return 1;
    l->TakeSnapshot(true, &base);
    store::StoreOptions so;
    so.path = stack.dir.path() + "/store";
    std::unique_ptr<store::CheckpointStore> st;
    if (!store::CheckpointStore::Open(so, &st).ok()) return 1;
    Status s = st->Write(SyntheticSnapshot(base, rows, 1, 0), OffsetMap(), nullptr);
    if (!s.ok()) return std::fprintf(stderr, "store: %s\n", s.ToString().c_str()), 1;
  }
  auto t0 = Clock::now();
  if (!StartService(60000, &stack)) return 1;
  std::printf("service restored %llu rows in %.2f s\n", (unsigned long long)rows, SecondsSince(t0));
  TestConnection tc(stack.port);
  // Its first version (the whole model) is published, or failed.
  while (SecondsSince(t0) < 600) {
    auto r = tc.Request("GET", "/v1/stats");
    testing::Json j;
    if (r.status == 200 && j.Parse(r.body) &&
        (j.Number("/publishing/full_versions") >= 1 || j.Number("/publishing/failures") >= 1))
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::printf("first (full) version published after %.2f s; rss_mib=%.1f\n", SecondsSince(t0),
              MiB(ResidentBytes()));
  std::fflush(stdout);
  const double rss_before = MiB(ResidentBytes());
  t0 = Clock::now();
  uint16_t port = 0;
  auto replica = StartReplica(stack, &port);
  if (!replica) return 1;
  TestConnection rc(port);
  bool ready = false;
  while (SecondsSince(t0) < 600) {
    if (rc.Request("GET", "/readyz").status == 200) {
      ready = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double took = SecondsSince(t0);
  auto r = rc.Request("GET", "/v1/stats");
  testing::Json j;
  double snapshot_records = -1;
  if (r.status == 200 && j.Parse(r.body)) snapshot_records = j.Number("/replica/snapshot_records");
  std::printf("replica bootstrap: rows=%llu ready=%d wall_s=%.3f snapshot_records=%.0f "
              "rss_mib_added=%.1f load=%s\n",
              (unsigned long long)rows, ready ? 1 : 0, took, snapshot_records,
              MiB(ResidentBytes()) - rss_before, LoadAverage().c_str());
  (void)replica->Shutdown();
  (void)stack.service->Shutdown();
  return ready ? 0 : 1;
}

int LongTail(uint64_t events, int64_t expire_s, int admit_after, uint64_t checkpoint_every,
             int64_t limit_mb, double return_share, uint64_t visitor_events,
             uint64_t return_recent) {
  testing::TempDir dir;
  config::AppConfig cfg;
  cfg.store.path = dir.path() + "/store";
  cfg.learner.expire_user_s = expire_s;
  cfg.learner.admit_after = admit_after;
  cfg.learner.memory_limit_mb = limit_mb;
  cfg.store.point_reads = limit_mb > 0;  // as the service sets it
  std::unique_ptr<learner::Learner> l;
  Status s = learner::Learner::Create(cfg.learner, &l);
  if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 2;
  std::unique_ptr<store::CheckpointStore> st;
  if (!store::CheckpointStore::Open(cfg.store, &st).ok()) return 1;
  l->SetRowSource(st.get());
  Visitors visitors{visitor_events, return_share, return_recent};
  eval::GeneratorOptions go;
  go.events = events;
  go.users = 10000;  // only the generator's world; every event gets a visitor id of its own
  go.items = 20000;
  eval::Generator gen(go);
  ingest::EventParser parser(ingest::ParserOptions{});
  std::vector<learner::Event> batch(4096);
  size_t n = 0;
  std::string line;
  uint64_t done = 0;
  const auto start = Clock::now();
  auto last = start;
  uint64_t last_done = 0;
  learner::ModelSnapshot snap;
  OffsetMap offsets;
  std::printf("%10s %8s %10s %10s %12s %9s %10s %9s %9s %10s %10s %8s %14s\n", "events", "s",
              "events/s", "users", "expired", "rows_alloc", "rss_mib", "store_mib", "model_mib",
              "evicted", "reloaded", "auc", "rocks_mem heap_mib");
  double train_s = 0, checkpoint_s = 0, wait_s = 0;
  uint64_t checkpoints = 0;
  // Rows and bytes the checkpoints wrote, by table (written by the writer
  // thread, read once it has been joined).
  std::map<std::string, uint64_t> rows_written;
  uint64_t bytes_written = 0;
  double write_s = 0;
  // Checkpoints as the service takes them: the training thread lists the
  // changed rows (BeginSnapshot), a writer thread copies and stores them
  // (FinishSnapshot, Write) while training goes on, one at a time.
  std::thread writer;
  std::atomic<bool> writing{false};
  auto checkpoint = [&](bool wait) {
    if (writer.joinable()) {
      if (!wait && writing.load()) return;  // one at a time: the next batch asks again
      writer.join();
    }
    const auto c0 = Clock::now();
    ++checkpoints;
    l->BeginSnapshot(false, &snap);
    checkpoint_s += SecondsSince(c0);
    const uint64_t number = l->snapshot_number();
    offsets[TopicPartition{"recstream.click", 0}] = int64_t(done);
    writing = true;
    writer = std::thread([&, number, offs = offsets] {
      l->FinishSnapshot(&snap);
      for (const auto& t : snap.tables) rows_written[t.table] += t.keys.size();
      store::CheckpointInfo info;
      const auto w0 = Clock::now();
      Status w = st->Write(snap, offs, &info);
      write_s += SecondsSince(w0);
      bytes_written += info.bytes;
      if (!w.ok()) {
        std::fprintf(stderr, "write: %s\n", w.ToString().c_str());
      } else {
        l->SnapshotStored(number);
      }
      writing = false;
    });
    if (wait) writer.join();
  };
  auto report = [&] {
    checkpoint(true);
    uint64_t bytes = 0;
    for (const auto& f : std::filesystem::recursive_directory_iterator(cfg.store.path))
      if (f.is_regular_file()) bytes += f.file_size();
    const learner::LearnerStats ls = l->Stats();
    const double s_now = SecondsSince(start);
    const store::CheckpointStore::MemoryUsage rm = st->Memory();
    // RocksDB's accounted memory, then malloc's bytes in use (small blocks
    // and mmapped ones): against RSS, what is data and what is kept free.
    const struct mallinfo2 mi = mallinfo2();
    char rocks[96];
    std::snprintf(rocks, sizeof(rocks), "%.0f/%.0f/%.0f %.0f", MiB(rm.memtables),
                  MiB(rm.table_readers), MiB(rm.block_cache), MiB(mi.uordblks + mi.hblkhd));
    std::printf("%10llu %8.1f %10.0f %10llu %12llu %9llu %10.1f %9.1f %9.1f %10llu %10llu %8.6f %14s\n",
                (unsigned long long)done, s_now, double(done - last_done) / SecondsSince(last),
                (unsigned long long)ls.users, (unsigned long long)ls.expired_users,
                (unsigned long long)ls.user_rows_allocated, MiB(ResidentBytes()), MiB(bytes),
                MiB(ls.model_bytes), (unsigned long long)ls.users_evicted,
                (unsigned long long)ls.users_reloaded, ls.tasks[0].auc, rocks);
    std::fflush(stdout);
    last = Clock::now();
    last_done = done;
  };
  while (gen.Next(&line)) {
    learner::Event& e = batch[n];
    if (parser.Parse(line, &e, 0).has_value()) continue;
    e.user = "visitor" + std::to_string(visitors.Next(done));
    e.ts_ms = Visitors::TimeMs(done);
    ++done;
    if (++n == batch.size()) {
      // As the service does: more users than the limit allows by a quarter
      // wait for a checkpoint to store them and for Idle to let them go.
      const auto w0 = Clock::now();
      for (int tries = 0; tries < 100 && l->OverLimit(); ++tries) {
        checkpoint(true);
        l->Idle();
      }
      wait_s += SecondsSince(w0);
      const auto t0 = Clock::now();
      l->Train(std::span(batch.data(), n));
      train_s += SecondsSince(t0);
      n = 0;
      // The memory limit waits for users to be stored: a checkpoint when
      // it asks, as the service does.
      if (l->WantsCheckpoint()) checkpoint(false);
    }
    if (done % checkpoint_every == 0) report();
  }
  if (n > 0) l->Train(std::span(batch.data(), n));
  report();
  const learner::LearnerStats fin = l->Stats();
  std::printf("time: %.2f s in Train, %.2f s in %llu checkpoints' pauses (%llu asked for by the "
              "memory limit), %llu store reads; events/s in Train %.0f\n",
              train_s, checkpoint_s, (unsigned long long)checkpoints,
              (unsigned long long)fin.checkpoints_wanted, (unsigned long long)fin.store_reads,
              double(done) / train_s);
  std::printf(
      "training waited %.2f s for checkpoints the limit needed; events/s in Train and "
      "those waits %.0f\n",
      wait_s, double(done) / (train_s + wait_s));
  std::printf("checkpoints wrote %.1f MiB in %.2f s (writer thread), rows:", MiB(bytes_written),
              write_s);
  for (const auto& [table, rows] : rows_written)
    std::printf(" %s %llu", table.c_str(), (unsigned long long)rows);
  std::printf("\n");
  // What the store holds now: rows per table (deleted ones must be gone).
  learner::ModelSnapshot stored;
  if (Status ld = st->Load(&stored, nullptr, nullptr); !ld.ok())
    return std::fprintf(stderr, "load: %s\n", ld.ToString().c_str()), 1;
  for (const auto& t : stored.tables)
    std::printf("stored %s rows: %zu\n", t.table.c_str(), t.keys.size());
  for (const auto& f : stored.feature_lists)
    std::printf("stored %s lists: %zu\n", f.table.c_str(), f.keys.size());
  std::printf("stored purchases: %zu\n", stored.new_purchases.size());
  return 0;
}

int StoreBench(uint64_t rows, uint64_t delta_rows, int user_features) {
  testing::TempDir dir;
  config::AppConfig cfg;
  cfg.store.path = dir.path() + "/store";
  auto timed = [](const char* what, auto&& fn) {
    double cpu0 = CpuSeconds();
    auto t0 = Clock::now();
    fn();
    double s = SecondsSince(t0);
    std::printf("%-44s wall_s=%.3f cpu_s=%.3f load=%s\n", what, s, CpuSeconds() - cpu0,
                LoadAverage().c_str());
    std::fflush(stdout);
    return s;
  };
  learner::ModelSnapshot base;
  {
    std::unique_ptr<learner::Learner> l;
    if (!learner::Learner::Create(cfg.learner, &l).ok()) return 1;
    l->TakeSnapshot(true, &base);
  }
  std::unique_ptr<learner::Learner> trained;
  if (!learner::Learner::Create(cfg.learner, &trained).ok()) return 1;
  {
    learner::ModelSnapshot synthetic = SyntheticSnapshot(base, rows, 1, user_features);
    Status s = trained->ApplySnapshot(synthetic);
    if (!s.ok()) return std::fprintf(stderr, "apply: %s\n", s.ToString().c_str()), 1;
  }
  std::printf("learner holds %llu rows, rss_mib=%.1f\n", (unsigned long long)rows,
              MiB(ResidentBytes()));
  learner::ModelSnapshot full;
  // The training thread waits only for BeginSnapshot (the listing); the
  // service's writer thread runs FinishSnapshot (the copy) beside training.
  timed("BeginSnapshot(full) [training-thread pause]",
        [&] { trained->BeginSnapshot(true, &full); });
  timed("FinishSnapshot [writer thread, beside training]", [&] { trained->FinishSnapshot(&full); });
  // The service passes the previous checkpoint's snapshot back in.
  timed("BeginSnapshot(full), buffers reused [pause]",
        [&] { trained->BeginSnapshot(true, &full); });
  timed("FinishSnapshot, buffers reused", [&] { trained->FinishSnapshot(&full); });
  std::unique_ptr<store::CheckpointStore> st;
  if (!store::CheckpointStore::Open(cfg.store, &st).ok()) return 1;
  OffsetMap offsets;
  offsets[TopicPartition{"recstream.click", 0}] = 1;
  store::CheckpointInfo info;
  Status s;
  double full_s = timed("Write(full)", [&] { s = st->Write(full, offsets, &info); });
  if (!s.ok()) return std::fprintf(stderr, "write: %s\n", s.ToString().c_str()), 1;
  std::printf("  full checkpoint: rows=%llu bytes=%llu duration_ms=%.1f rows_per_s=%.0f\n",
              (unsigned long long)info.rows, (unsigned long long)info.bytes, info.duration_ms,
              double(info.rows) / full_s);
  full = learner::ModelSnapshot();
  if (delta_rows > 0) {
    learner::ModelSnapshot delta =
        SyntheticSnapshot(base, std::min(delta_rows, rows), 2, user_features);
    offsets[TopicPartition{"recstream.click", 0}] = 2;
    double delta_s = timed("Write(delta)", [&] { s = st->Write(delta, offsets, &info); });
    if (!s.ok()) return std::fprintf(stderr, "write: %s\n", s.ToString().c_str()), 1;
    std::printf("  delta checkpoint: rows=%llu bytes=%llu duration_ms=%.1f rows_per_s=%.0f\n",
                (unsigned long long)info.rows, (unsigned long long)info.bytes, info.duration_ms,
                double(info.rows) / delta_s);
  }
  trained.reset();
  timed("close store (memtable flush)", [&] { st.reset(); });
  // The restart's own peak, not the snapshot phase's (the trained learner
  // and a full copy of its rows, both resident).
  const bool peak_reset = ResetPeakResidentBytes();
  std::printf("rss_mib before restart=%.1f%s\n", MiB(ResidentBytes()),
              peak_reset ? "" : " (peak not reset: it includes the phases above)");
  double restart_s = timed("restart: Open+Load+Apply", [&] {
    std::unique_ptr<learner::Learner> l;
    (void)learner::Learner::Create(cfg.learner, &l);
    learner::ModelSnapshot loaded;
    OffsetMap o;
    store::CheckpointInfo i;
    timed("  Open", [&] { s = store::CheckpointStore::Open(cfg.store, &st); });
    if (!s.ok()) return;
    // As the service restores: rows streamed into the learner on every core.
    std::atomic<uint64_t> restored{0};
    timed("  LoadStreaming+ApplyRows", [&] {
      s = st->LoadStreaming(
          [&](const learner::TableDelta& block) {
            restored.fetch_add(block.keys.size());
            return l->ApplyRows(block);
          },
          [&](const learner::FeatureListDelta& block) { return l->ApplyLists(block); },
          int(std::max(1u, std::thread::hardware_concurrency())), &loaded, &o, &i);
    });
    if (!s.ok()) return;
    timed("  ApplySnapshot(rest)", [&] { s = l->ApplySnapshot(loaded); });
    std::printf("  restored rows=%llu peak_rss_mib=%.1f (since the restart began)\n", (unsigned long long)restored.load(),
                MiB(PeakResidentBytes()));
    trained = std::move(l);
  });
  if (!s.ok()) return std::fprintf(stderr, "restart: %s\n", s.ToString().c_str()), 1;
  std::printf("restart: rows=%llu restart_s=%.3f rows_per_s=%.0f\n", (unsigned long long)rows,
              restart_s, double(rows) / restart_s);
  return 0;
}

}  // namespace
}  // namespace recstream::bench

int main(int argc, char** argv) {
  using namespace recstream::bench;
  recstream::app::TuneMalloc();  // as `recstream serve` does
  CLI::App app{"recstream end-to-end benchmarks (embedded Kafka + service in process)"};
  app.require_subcommand(1);
  int partitions = 0, checkpoint_ms = 5000;
  std::string log_level = "warn";
  std::vector<std::string> kafka_props;
  app.add_option("--partitions", partitions,
                 "partitions per topic; 0: 3 for freshness, enough for the backlog for throughput");
  app.add_option("--checkpoint-ms", checkpoint_ms, "store.checkpoint_interval_ms");
  app.add_option("--log-level", log_level, "spdlog level");
  app.add_option("--train-nice", g_train_nice,
                 "learner.train_nice of the service (default: the configuration's, 10)")
      ->check(CLI::Range(0, 19));
  app.add_option("--io-priority", g_io_priority,
                 "serve.io_priority of the service: nice:N or fifo:P (default: inherit)");
  app.add_option("--io-slice-us", g_io_slice_us,
                 "serve.io_slice_us of the service (default 100; 0: inherited)")
      ->check(CLI::Range(0, 100000));
  app.add_option("--background-slice-us", g_background_slice_us,
                 "serve.background_slice_us of the service and of the benchmark's broker "
                 "(default 3000; 0: inherited)")
      ->check(CLI::Range(0, 100000));
  app.add_option("--serve-threads", g_serve_threads, "serve.threads of the service (default 2)")
      ->check(CLI::Range(1, 256));
  app.add_option("--learner-threads", g_learner_threads,
                 "learner.threads of the service (default 0: one per core)")
      ->check(CLI::Range(0, 256));
  app.add_option("--ingest-min-kib", g_ingest_min_kib,
                 "checkpoints of at least this many KiB are written as table files and ingested "
                 "(store ingest_min_bytes, not a configuration key; default 4096; with a memory "
                 "limit at most 64)");
  app.add_option("--kafka-property", kafka_props,
                 "KEY=VALUE librdkafka property of the service (kafka.properties.*)");

  uint64_t events = 2'000'000;
  int users = 100'000, items = 10'000, hold = 0;
  bool latency = false, restart = false;
  auto* tp = app.add_subcommand("throughput", "produce first, then consume+learn+checkpoint");
  tp->add_option("--events", events);
  tp->add_option("--users", users);
  tp->add_option("--items", items);
  tp->add_flag("--latency", latency, "then time HTTP requests one at a time");
  tp->add_option("--hold", hold, "seconds to keep serving afterwards");
  tp->add_flag("--restart", restart, "then stop and time a restart from the store");
  tp->add_option("--produce-linger-ms", g_produce_linger_ms,
                 "linger.ms of the producer of the backlog (bigger batches: fewer, larger "
                 "message sets in the mock cluster)");
  TailSettings tail;
  tp->add_option("--visitor-events", tail.visitors.visitor_events,
                 "a long tail of visitors as longtail's, each new one's consecutive events "
                 "(0, the default: the generator's users)");
  tp->add_option("--return-share", tail.visitors.return_share,
                 "with --visitor-events: as longtail's");
  tp->add_option("--return-recent", tail.visitors.return_recent,
                 "with --visitor-events: as longtail's");
  tp->add_option("--expire-user-s", tail.expire_user_s, "model.expire.user_s (0: off)");
  tp->add_option("--memory-limit-mb", tail.memory_limit_mb, "model.memory_limit_mb (0: none)");

  uint64_t rows = 1'000'000, delta_rows = 1'000'000;
  auto* sb = app.add_subcommand("store", "snapshot, checkpoint and restore N rows (no Kafka)");
  sb->add_option("--rows", rows);
  sb->add_option("--delta-rows", delta_rows);
  int user_features = 0;
  sb->add_option("--user-features", user_features,
                 "features in each user's feature list (0: no feature lists)");

  int samples = 200;
  double background = 0;
  auto* fr = app.add_subcommand("freshness", "produce call -> effect in /v1/score");
  fr->add_option("--samples", samples);
  fr->add_option("--background-rate", background, "background events per second");
  fr->add_option("--poll-us", g_poll_us,
                 "pause between the probe's polls of /v1/score, in microseconds (default 500; 0: "
                 "none, as before session 15: the probe and an I/O thread then keep a CPU busy "
                 "and the service's nice-10 ingest and training wait behind them)");
  bool via_replica = false;
  fr->add_flag("--replica", via_replica,
               "poll a replica that follows the model topic, not the trainer");
  uint64_t bootstrap_rows = 1'000'000;
  uint64_t lt_events = 10'000'000, lt_every = 1'000'000;
  int64_t lt_expire = 60;
  int lt_admit = 1;
  auto* lt = app.add_subcommand("longtail", "memory and store size under a long tail of new users");
  lt->add_option("--events", lt_events);
  lt->add_option("--expire-user-s", lt_expire, "model.expire.user_s (0: off)");
  lt->add_option("--admit-after", lt_admit, "model.admit_after");
  lt->add_option("--checkpoint-every", lt_every, "events between stored snapshots")
      ->check(CLI::PositiveNumber);
  int64_t lt_limit = 0;
  double lt_return = 0;
  lt->add_option("--memory-limit-mb", lt_limit, "model.memory_limit_mb (0: none)");
  lt->add_option("--return-share", lt_return,
                 "share of events from an earlier visitor, drawn uniformly (0: none)");
  uint64_t lt_recent = 0;
  lt->add_option("--return-recent", lt_recent,
                 "returning visitors are drawn with an exponential recency: N visitors back on "
                 "average (0: uniformly from every visitor seen)");
  uint64_t lt_visitor = 3;
  lt->add_option("--visitor-events", lt_visitor,
                 "consecutive events of each new visitor (default 3: a new user every third "
                 "event)")
      ->check(CLI::PositiveNumber);
  auto* rb = app.add_subcommand("replica-bootstrap", "time a replica's bootstrap of N rows");
  rb->add_option("--rows", bootstrap_rows);
  CLI11_PARSE(app, argc, argv);
  for (const std::string& kv : kafka_props) {
    auto eq = kv.find('=');
    if (eq == std::string::npos)
      return std::fprintf(stderr, "bad --kafka-property %s\n", kv.c_str()), 2;
    g_kafka_properties[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  spdlog::set_level(spdlog::level::from_str(log_level));
  std::printf("service_bench load=%s\n", LoadAverage().c_str());
  if (sb->parsed()) return StoreBench(rows, delta_rows, user_features);
  if (lt->parsed())
    return LongTail(lt_events, lt_expire, lt_admit, lt_every, lt_limit, lt_return, lt_visitor,
                    lt_recent);
  if (tp->parsed() && tail.visitors.visitor_events == 0 &&
      (tail.visitors.return_share > 0 || tail.visitors.return_recent > 0))
    return std::fprintf(stderr, "--return-share and --return-recent need --visitor-events\n"), 2;
  if (tp->parsed())
    return Throughput(events, users, items, partitions, checkpoint_ms, latency, hold, restart,
                      tail);
  if (rb->parsed()) return ReplicaBootstrap(bootstrap_rows);
  return Freshness(samples, background, partitions > 0 ? partitions : 3, checkpoint_ms,
                   via_replica);
}
