// trainers_bench: several trainers on one model (issue #31), events per
// second as a ratio to what this machine allows, measured in one run:
//
//   one          one 1-thread trainer over the whole stream;
//   independent  two 1-thread trainers at once, each over its half of the
//                stream (the events of its users), sharing nothing: the
//                machine's ceiling for two trainers;
//   shared       the same two halves at once, but trainers 0 and 1 of one
//                model: every --exchange-events events each takes its
//                changes, encodes them for its outbox, sends the other its
//                part (as the updates topic's records, pages of rows) and
//                adds what the other sent (decoded from those records);
//                every --follow-events events each also publishes the rows
//                it owns that changed (as the model topic's records, one per
//                row) and follows the other's. The encoding and decoding are
//                the service's own (replicate/exchange.h,
//                store/model_records.h), on the trainer's thread. No
//                barrier: each trainer exchanges on its own thread, between
//                its own Train calls, as the service does (it sends every
//                trainers.exchange_interval_ms = 10 ms and publishes every
//                replicate.interval_ms = 100 ms: at 250,000 events/s per
//                trainer, E = 2,500 and F = 25,000, the defaults here and the
//                schedule EVAL.md measures the quality of).
//
// The rounds alternate (independent then shared, shared then independent,
// ...) so that both see the machine of the same minutes, each going first
// as often. Kafka's own cost (produce, fetch, the network) and the outbox's
// write to RocksDB are not in it: records and bytes exchanged per event are
// printed so that they can be put beside the broker's figures.
//
//   trainers_bench [--events N] [--users U] [--items I] [--exchange-events E]
//                  [--follow-events F] [--rounds R] [--batch B] [--shared-only |
//                  --independent-only]
//
// --shared-only and --independent-only run that pair once, in a process of
// its own (for profiling, and to compare the pairs without either running
// on memory the other gave back).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "app/service.h"
#include "bench/bench_util.h"
#include "eval/batch_parser.h"
#include "eval/generator.h"
#include "ingest/parser.h"
#include "learner/learner.h"
#include "replicate/exchange.h"
#include "store/model_records.h"

namespace recstream::bench {
namespace {

struct Config {
  uint64_t events = 4'000'000;
  int users = 100'000;
  int items = 10'000;
  uint64_t exchange_events = 2500;
  uint64_t follow_events = 25000;
  bool untuned_malloc = false;
  int rounds = 2;
  size_t batch = 4096;
  uint64_t seed = 7;
  // Time the exchange's steps apart (each reading of a thread's CPU clock
  // is a system call, 1.4 us here: a dozen per exchange).
  bool breakdown = false;
};

std::vector<learner::Event> Generate(const Config& cfg) {
  eval::GeneratorOptions go;
  go.events = cfg.events;
  go.users = cfg.users;
  go.items = cfg.items;
  go.seed = cfg.seed;
  eval::Generator gen(go);
  eval::BatchParser parser(ingest::ParserOptions(), 0);
  std::vector<std::string> lines(cfg.batch);
  std::vector<learner::Event> out, batch(cfg.batch);
  std::vector<ingest::RejectReason> rejected;
  for (;;) {
    size_t m = 0;
    while (m < lines.size() && gen.Next(&lines[m])) ++m;
    if (m == 0) break;
    const size_t k = parser.Parse(std::span<const std::string>(lines.data(), m), 0,
                                  std::span<learner::Event>(batch.data(), m), &rejected);
    for (size_t i = 0; i < k; ++i) out.push_back(std::move(batch[i]));
  }
  return out;
}

std::unique_ptr<learner::Learner> Make(int index, int count) {
  learner::LearnerOptions o;
  o.threads = 1;
  o.trainer_count = count;
  o.trainer_index = index;
  std::unique_ptr<learner::Learner> l;
  Status s = learner::Learner::Create(o, &l);
  if (!s.ok()) {
    std::fprintf(stderr, "learner: %s\n", s.ToString().c_str());
    std::exit(2);
  }
  return l;
}

// Records as Kafka would carry them (key, value), reused from one exchange
// to the next: the first n are this message's.
struct Records {
  std::vector<std::pair<std::string, std::string>> r;
  size_t n = 0;
  void Add(std::string_view key, std::string_view value) {
    if (n == r.size()) r.emplace_back();
    r[n].first.assign(key);
    r[n].second.assign(value);
    ++n;
  }
  size_t bytes() const {
    size_t b = 0;
    for (size_t i = 0; i < n; ++i) b += r[i].first.size() + r[i].second.size();
    return b;
  }
  std::span<const std::pair<std::string, std::string>> view() const { return {r.data(), n}; }
};

// A published version's records (the model topic's) back into a snapshot,
// as a following trainer's exchange reads them.
void DecodeVersion(const Records& in, store::model_records::SnapshotBuilder* builder,
                   learner::ModelSnapshot* out) {
  namespace mr = store::model_records;
  for (size_t i = 0; i < in.n; ++i) {
    mr::Header h;
    std::string_view payload;
    if (!mr::DecodeHeader(in.r[i].second, &h, &payload).ok()) std::abort();
    if (h.kind == mr::Kind::kCommit) break;
    if (!builder->AddTopicRecord(in.r[i].first, h, payload).ok()) std::abort();
  }
  if (!builder->Take(out)) *out = learner::ModelSnapshot();
}

// What one trainer of the shared pair receives from the other.
struct Inbox {
  std::mutex mu;
  std::vector<Records> changes;    // a batch of changes for this trainer
  std::vector<Records> published;  // the other's published version
  // Given back by the other once read, to be encoded into again: [0]
  // changes, [1] published rows (apart, as their sizes differ tenfold).
  std::vector<Records> spare[2];
};

struct PairRun {
  double wall = 0;
  uint64_t events = 0;
  uint64_t bytes = 0;         // sent and published, both trainers
  uint64_t records = 0;       // Kafka records of those
  uint64_t outbox_bytes = 0;  // encoded for the outboxes
  uint64_t exchanges = 0;
  double cpu = 0;           // CPU seconds of both trainers' threads
  double exchange_cpu = 0;  // of which in the exchange
  double steps[3] = {};     // of which decoding and adding, following, taking
  double coding[2] = {};    // of which decoding; splitting and encoding
  uint64_t rows[3] = {};    // row changes sent, added as owner, owners' rows followed
};

// The exchange's steps of a shared pair's run (--breakdown), per event.
void PrintBreakdown(const PairRun& b) {
  const double per = 1e6 / double(b.events);
  std::printf(
      "  exchange CPU per event: decode+add %.3f us, decode+follow %.3f us, take %.3f us "
      "(decoding %.3f us; splitting and encoding %.3f us)\n",
      b.steps[0] * per, b.steps[1] * per, b.steps[2] * per, b.coding[0] * per, b.coding[1] * per);
  const double ex = double(std::max<uint64_t>(b.exchanges, 1));
  std::printf(
      "  rows per exchange: %.1f changes sent, %.1f added as owner, %.1f followed; Kafka records "
      "per event %.4f; outbox bytes per event %.1f\n",
      double(b.rows[0]) / ex, double(b.rows[1]) / ex, double(b.rows[2]) / ex,
      double(b.records) / double(b.events), double(b.outbox_bytes) / double(b.events));
}

// Two trainers over their halves at once; with `shared`, trainers 0 and 1
// of one model exchanging every cfg.exchange_events events.
PairRun RunPair(const Config& cfg, const std::vector<learner::Event> (&halves)[2], bool shared) {
  std::unique_ptr<learner::Learner> t[2] = {shared ? Make(0, 2) : Make(0, 1),
                                            shared ? Make(1, 2) : Make(0, 1)};
  Inbox inbox[2];
  std::atomic<uint64_t> bytes{0}, records{0}, outbox_bytes{0}, exchanges{0};
  double cpu[2] = {0, 0}, exchange_cpu[2] = {0, 0};
  double step_cpu[2][3] = {};    // add, follow, take
  double coding_cpu[2][2] = {};  // decode; split and encode
  std::atomic<int> ready{0};
  std::atomic<bool> done[2] = {false, false};
  auto work = [&](int k) {
    learner::Learner& l = *t[k];
    Inbox& mine = inbox[k];
    Inbox& other = inbox[1 - k];
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    const auto& events = halves[k];
    const double cpu_start = ThreadCpuSeconds();
    auto inner_clock = [&cfg] { return cfg.breakdown ? ThreadCpuSeconds() : 0.0; };
    uint64_t since = 0, since_follow = 0;
    std::vector<Records> got_changes, got_published, spare[2];
    learner::ModelChanges c, in_changes;
    learner::ModelSnapshot owned, in_published;
    store::model_records::SnapshotBuilder builder;
    uint64_t batch = 0, version = 0;
    // Train calls end at each exchange, so that the pair exchanges after
    // exactly E events.
    const size_t step = std::min<size_t>(cfg.batch, cfg.exchange_events);
    for (size_t at = 0, n = 0; at < events.size(); at += n) {
      n = std::min(step, events.size() - at);
      if (shared) n = std::min<size_t>(n, cfg.exchange_events - since);
      l.Train(std::span<const learner::Event>(events.data() + at, n));
      since += n;
      since_follow += n;
      if (!shared || since < cfg.exchange_events) continue;
      since = 0;
      const bool publish = since_follow >= cfg.follow_events;
      if (publish) since_follow = 0;
      exchanges.fetch_add(1);
      const double exchange_start = ThreadCpuSeconds();
      {
        std::lock_guard lock(mine.mu);
        got_changes.swap(mine.changes);
        got_published.swap(mine.published);
        for (int j = 0; j < 2; ++j) {
          for (Records& b : mine.spare[j]) spare[j].push_back(std::move(b));
          mine.spare[j].clear();
        }
      }
      double t0 = inner_clock();
      for (const Records& b : got_changes) {
        const double d0 = inner_clock();
        if (!replicate::DecodeUpdateRecords(b.view(), &in_changes).ok()) std::abort();
        coding_cpu[k][0] += inner_clock() - d0;
        if (!l.AddChanges(in_changes).ok()) std::abort();
      }
      double t1 = inner_clock();
      step_cpu[k][0] += t1 - t0;
      for (const Records& b : got_published) {
        const double d0 = inner_clock();
        DecodeVersion(b, &builder, &in_published);
        coding_cpu[k][0] += inner_clock() - d0;
        if (!l.FollowOwners(in_published, 1 - k).ok()) std::abort();
      }
      t0 = inner_clock();
      step_cpu[k][1] += t0 - t1;
      {
        std::lock_guard lock(other.mu);  // back to the sender, to encode into again
        for (Records& b : got_changes) other.spare[0].push_back(std::move(b));
        for (Records& b : got_published) other.spare[1].push_back(std::move(b));
      }
      got_changes.clear();
      got_published.clear();
      l.TakeChanges(&c, publish ? &owned : nullptr);
      t1 = inner_clock();
      step_cpu[k][2] += t1 - t0;
      const double e0 = inner_clock();
      // The service's path: the batch encoded once, for the outbox (its
      // write to the store is not timed) and as the updates topic's
      // records, which the send thread copies into Kafka's producer.
      const std::string outbox = replicate::EncodeBatch(&c, k, 2, uint64_t(1000 + k), ++batch);
      outbox_bytes.fetch_add(outbox.size());
      auto buffer = [&](std::vector<Records>& kind) {
        if (kind.empty()) return Records();
        Records b = std::move(kind.back());
        kind.pop_back();
        b.n = 0;
        return b;
      };
      Records send = buffer(spare[0]), pub;
      if (!replicate::ForEachEncodedRecord(outbox, k, 2,
                                           [&](int, std::string_view key, std::string_view value) {
                                             send.Add(key, value);
                                             return Status::OK();
                                           })
               .ok())
        std::abort();
      if (publish) {
        pub = buffer(spare[1]);
        store::model_records::Commit commit;
        commit.version = {uint64_t(5000 + k), ++version};
        if (!store::model_records::ForEachModelRecord(
                 owned, commit, false,
                 [&](std::string_view key, std::string_view value) {
                   pub.Add(key, value);
                   return Status::OK();
                 })
                 .ok())
          std::abort();
      }
      coding_cpu[k][1] += inner_clock() - e0;
      bytes.fetch_add(send.bytes() + pub.bytes());
      records.fetch_add(send.n + pub.n);
      if (done[1 - k].load()) {
        // The other has finished: nothing reads these any more, so they
        // are kept to encode into again (the bytes were made and counted).
        spare[0].push_back(std::move(send));
        if (publish) spare[1].push_back(std::move(pub));
      } else {
        std::lock_guard lock(other.mu);
        other.changes.push_back(std::move(send));
        if (publish) other.published.push_back(std::move(pub));
      }
      exchange_cpu[k] += ThreadCpuSeconds() - exchange_start;
    }
    cpu[k] = ThreadCpuSeconds() - cpu_start;
    done[k].store(true);
  };
  const auto start = Clock::now();
  // Both on threads of their own, as in the service (the main thread's
  // heap is malloc's main arena, which gives memory back differently).
  std::thread first(work, 0), second(work, 1);
  first.join();
  second.join();
  PairRun r;
  r.wall = SecondsSince(start);
  r.events = halves[0].size() + halves[1].size();
  r.bytes = bytes.load();
  r.records = records.load();
  r.outbox_bytes = outbox_bytes.load();
  r.exchanges = exchanges.load();
  r.cpu = cpu[0] + cpu[1];
  r.exchange_cpu = exchange_cpu[0] + exchange_cpu[1];
  for (int i = 0; i < 3; ++i) r.steps[i] = step_cpu[0][i] + step_cpu[1][i];
  for (int i = 0; i < 2; ++i) r.coding[i] = coding_cpu[0][i] + coding_cpu[1][i];
  for (const auto& l : t) {
    const learner::LearnerStats s = l->Stats();
    r.rows[0] += s.shared_rows_sent;
    r.rows[1] += s.shared_rows_added;
    r.rows[2] += s.shared_rows_followed;
  }
  return r;
}

}  // namespace
}  // namespace recstream::bench

int main(int argc, char** argv) {
  using namespace recstream;
  using namespace recstream::bench;
  Config cfg;
  CLI::App app{"Two trainers sharing one model against two that share nothing (issue #31)"};
  app.add_option("--events", cfg.events, "events in the stream");
  app.add_option("--users", cfg.users, "distinct users of the generator");
  app.add_option("--items", cfg.items, "distinct items of the generator");
  app.add_option("--exchange-events", cfg.exchange_events,
                 "events each shared trainer learns between exchanges");
  app.add_option("--follow-events", cfg.follow_events,
                 "events each shared trainer learns between publishing its rows (and following)");
  app.add_option("--rounds", cfg.rounds, "rounds of (independent, shared)");
  app.add_flag("--untuned-malloc", cfg.untuned_malloc,
               "glibc's malloc as it comes, not as `recstream serve` tunes it (app::TuneMalloc)");
  app.add_option("--batch", cfg.batch, "events per Train call");
  app.add_flag("--breakdown", cfg.breakdown,
               "time the exchange's steps apart (adds a dozen clock system calls per exchange)");
  bool shared_only = false, independent_only = false;
  app.add_flag("--shared-only", shared_only, "only the shared pair, once (for profiling)");
  app.add_flag("--independent-only", independent_only,
               "only the independent pair, once (for profiling)");
  CLI11_PARSE(app, argc, argv);
  // Malloc as `recstream serve` tunes it: the exchange's buffers come from
  // the heaps instead of mappings faulted in afresh each time.
  if (!cfg.untuned_malloc) app::TuneMalloc();

  std::printf(
      "trainers_bench events=%llu users=%d items=%d exchange_events=%llu follow_events=%llu "
      "load=%s\n",
      (unsigned long long)cfg.events, cfg.users, cfg.items, (unsigned long long)cfg.exchange_events,
      (unsigned long long)cfg.follow_events, LoadAverage().c_str());
  const std::vector<learner::Event> all = Generate(cfg);
  std::vector<learner::Event> halves[2];
  for (const learner::Event& e : all) halves[learner::OwnerOf(e.user, 2)].push_back(e);
  std::printf("halves: %zu and %zu events\n", halves[0].size(), halves[1].size());

  if (shared_only || independent_only) {
    const PairRun b = RunPair(cfg, halves, shared_only);
    std::printf("%s %.0f events/s, %.3f us CPU/event, %.3f exchanging\n",
                shared_only ? "shared" : "independent", double(b.events) / b.wall,
                b.cpu / double(b.events) * 1e6, b.exchange_cpu / double(b.events) * 1e6);
    if (cfg.breakdown) PrintBreakdown(b);
    return 0;
  }
  {
    auto one = Make(0, 1);
    const auto start = Clock::now();
    for (size_t at = 0; at < all.size(); at += cfg.batch)
      one->Train(
          std::span<const learner::Event>(all.data() + at, std::min(cfg.batch, all.size() - at)));
    const double s = SecondsSince(start);
    std::printf("one trainer, 1 thread: %.0f events/s (%.2f s)\n", double(all.size()) / s, s);
  }
  double ind = 0, sh = 0, ind_cpu = 0, sh_cpu = 0;
  for (int r = 0; r < cfg.rounds; ++r) {
    // Each pair goes first in every other round: the one that runs second
    // meets the memory the first gave back (page faults, huge pages).
    PairRun a, b;
    if (r % 2 == 0) {
      a = RunPair(cfg, halves, false);
      b = RunPair(cfg, halves, true);
    } else {
      b = RunPair(cfg, halves, true);
      a = RunPair(cfg, halves, false);
    }
    const double ra = double(a.events) / a.wall, rb = double(b.events) / b.wall;
    ind += ra;
    sh += rb;
    ind_cpu += a.cpu;
    sh_cpu += b.cpu;
    std::printf(
        "round %d: independent %.0f events/s (%.2f s; %.3f us CPU/event) | shared %.0f events/s "
        "(%.2f s; %.3f us CPU/event, %.3f of it exchanging; %llu exchanges, %.1f bytes/event "
        "exchanged) | shared/independent %.3f, by CPU per event %.3f\n",
        r + 1, ra, a.wall, a.cpu / double(a.events) * 1e6, rb, b.wall,
        b.cpu / double(b.events) * 1e6, b.exchange_cpu / double(b.events) * 1e6,
        (unsigned long long)b.exchanges, double(b.bytes) / double(b.events), rb / ra,
        a.cpu / b.cpu);
    if (cfg.breakdown) PrintBreakdown(b);
    std::fflush(stdout);
  }
  std::printf("all rounds: shared/independent %.3f events/s, %.3f by CPU per event\n", sh / ind,
              ind_cpu / sh_cpu);
  return 0;
}
