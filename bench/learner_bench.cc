// learner_bench: events per second of Learner::Train with 1 and 2 threads
// over one generated stream, and how far the progressive metrics of the runs
// are apart (issue #4, targets 1 and 6).
//
// The stream comes from eval::Generator (the `recstream gen` world) and is
// parsed in batches of --batch events on the run's threads by
// eval::BatchParser, exactly as `recstream eval` hands it to the learner.
// Only the Train calls are timed: generating and parsing a batch happens
// between them, untimed, so the figure is the learner's alone. Every run
// sees the same stream (same seed).
//
//   learner_bench [--events N] [--users U] [--items I] [--threads 1,2]
//                 [--batch B] [--chunk C] [--dim D] [--train-nice N] [--cyclic-users]
//                 [--preparsed] [--pair]
//
// --preparsed parses the whole stream before timing and calls Train back to
// back (no generating and parsing between the calls, so TBB's worker never
// goes idle between them). --pair (implies --preparsed) then also runs two
// independent one-thread learners at the same time, one per thread, each
// over the whole stream: no model state is shared, so their combined rate
// over the one-thread rate is what two cores of this machine give two
// learners that share nothing, the reference for the two-thread speedup.
// With --interleave the pair takes its turn on every slice like the other
// learners (and the stream is not parsed whole beforehand).
//
// --cyclic-users replaces event i's user by user i mod U, so that exactly
// min(N, U) distinct users exist (for memory scaling); labels keep the
// generator's user, so the metrics are then meaningless.
#include <CLI/CLI.hpp>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "eval/batch_parser.h"
#include "eval/generator.h"
#include "eval/metrics.h"
#include "ingest/parser.h"
#include "learner/learner.h"

namespace recstream::bench {
namespace {

using learner::Task;

struct RunResult {
  int threads = 0;
  uint64_t events = 0;
  double train_seconds = 0;
  double train_cpu_seconds = 0;  // CPU time of the process (all threads) inside Train
  double wall_seconds = 0;
  std::array<double, learner::kNumTasks> auc{}, logloss{}, mae{}, rmse{};
  std::array<uint64_t, learner::kNumTasks> count{};
  learner::LearnerStats stats;
  uint64_t rss_before = 0, rss_after = 0;
  HostTicks host;  // the machine's ticks during the Train calls
};

struct Config {
  uint64_t events = 10'000'000;
  int users = 100'000;
  int items = 10'000;
  std::vector<int> threads = {1, 2};
  size_t batch = 4096;
  int chunk = 64;
  int dim = 32;
  int train_nice = 0;
  bool cyclic_users = false;
  bool no_side_features = false;
  bool predictions = true;
  bool preparsed = false;
  bool pair = false;
  size_t interleave = 0;
  uint64_t seed = 7;
};

// The generator's stream as events, a batch at a time, parsed on the
// learner's threads the way `recstream eval` parses (eval::BatchParser), or
// on every core without a learner (--preparsed); --cyclic-users applied.
class EventSource {
 public:
  EventSource(const Config& cfg, learner::Learner* model)
      : cfg_(cfg), gen_(GenOptions(cfg)), parser_(NewParser(model)), lines_(cfg.batch) {}

  // Fills out[0, k) with the next k <= min(out.size(), batch) events and
  // returns k; 0 at the end of the stream.
  size_t NextBatch(std::span<learner::Event> out) {
    out = out.first(std::min(out.size(), lines_.size()));
    for (;;) {
      size_t m = 0;
      while (m < out.size() && gen_.Next(&lines_[m])) ++m;
      if (m == 0) return 0;
      rejected_.clear();  // the generator writes valid events
      const size_t k = parser_->Parse(std::span<const std::string>(lines_.data(), m), 0,
                                     out.first(m), &rejected_);
      if (k == 0) continue;
      for (size_t i = 0; i < k; ++i, ++index_) {
        if (cfg_.cyclic_users) out[i].user = std::to_string(index_ % uint64_t(cfg_.users));
      }
      return k;
    }
  }

 private:
  static std::unique_ptr<eval::BatchParser> NewParser(learner::Learner* model) {
    if (model == nullptr) return std::make_unique<eval::BatchParser>(ingest::ParserOptions(), 0);
    return std::make_unique<eval::BatchParser>(
        ingest::ParserOptions(),
        [model](size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
          model->ParallelFor(n, grain, fn);
        });
  }

  static eval::GeneratorOptions GenOptions(const Config& cfg) {
    eval::GeneratorOptions go;
    go.events = cfg.events;
    go.users = cfg.users;
    go.items = cfg.items;
    go.seed = cfg.seed;
    go.side_features = !cfg.no_side_features;
    return go;
  }

  const Config& cfg_;
  eval::Generator gen_;
  std::unique_ptr<eval::BatchParser> parser_;
  std::vector<std::string> lines_;
  std::vector<ingest::RejectReason> rejected_;
  uint64_t index_ = 0;
};

std::unique_ptr<learner::Learner> MakeLearner(const Config& cfg, int threads) {
  learner::LearnerOptions lo;
  lo.dim = cfg.dim;
  lo.threads = threads;
  lo.chunk = cfg.chunk;
  lo.train_nice = cfg.train_nice;
  std::unique_ptr<learner::Learner> model;
  Status s = learner::Learner::Create(lo, &model);
  if (!s.ok()) {
    std::fprintf(stderr, "learner: %s\n", s.ToString().c_str());
    std::exit(2);
  }
  return model;
}

// One learner's run over the stream: times its Train calls and keeps the
// progressive predictions they return.
class Run {
 public:
  Run(const Config& cfg, int threads) : cfg_(cfg) {
    r_.threads = threads;
    r_.rss_before = ResidentBytes();
    model_ = MakeLearner(cfg, threads);
  }

  learner::Learner* model() { return model_.get(); }

  void Train(std::span<const learner::Event> events) {
    const size_t n = events.size();
    const HostTicks host_start = HostTicks::Now();
    const auto start = Clock::now();
    const double cpu_start = CpuSeconds();
    model_->Train(events, cfg_.predictions ? &before_ : nullptr);
    r_.train_seconds += SecondsSince(start);
    r_.train_cpu_seconds += CpuSeconds() - cpu_start;
    r_.host += HostTicks::Now() - host_start;
    r_.events += n;
    if (!cfg_.predictions) return;
    for (size_t i = 0; i < n; ++i) {
      const int t = int(events[i].task);
      pred_[t].push_back(before_[i].Get(events[i].task));
      label_[t].push_back(events[i].label);
    }
  }

  RunResult Finish(double wall_seconds) {
    r_.wall_seconds = wall_seconds;
    r_.rss_after = ResidentBytes();
    r_.stats = model_->Stats();
    for (int t = 0; t < learner::kNumTasks; ++t) {
      r_.count[t] = pred_[t].size();
      if (!cfg_.predictions) continue;
      if (Task(t) == Task::kRating) {
        r_.mae[t] = eval::Mae(pred_[t], label_[t]);
        r_.rmse[t] = eval::Rmse(pred_[t], label_[t]);
      } else {
        r_.auc[t] = eval::Auc(pred_[t], label_[t]);
        r_.logloss[t] = eval::LogLoss(pred_[t], label_[t]);
      }
    }
    return r_;
  }

 private:
  const Config& cfg_;
  RunResult r_;
  std::unique_ptr<learner::Learner> model_;
  std::vector<learner::Prediction> before_;
  std::array<std::vector<float>, learner::kNumTasks> pred_, label_;
};

// One run over the stream with `threads` threads: from `all` when given
// (--preparsed), else generated and parsed batch by batch between the
// (timed) Train calls.
RunResult RunOnce(const Config& cfg, int threads, const std::vector<learner::Event>* all) {
  Run run(cfg, threads);
  std::optional<EventSource> source;
  if (!all) source.emplace(cfg, run.model());
  std::vector<learner::Event> batch(all ? 0 : cfg.batch);
  const auto wall_start = Clock::now();
  for (size_t offset = 0;;) {
    std::span<const learner::Event> events;
    if (all) {
      const size_t n = std::min(cfg.batch, all->size() - offset);
      events = std::span<const learner::Event>(all->data() + offset, n);
      offset += n;
    } else {
      events = std::span<const learner::Event>(batch.data(), source->NextBatch(batch));
    }
    if (events.empty()) break;
    run.Train(events);
  }
  return run.Finish(SecondsSince(wall_start));
}

// --pair: two one-thread learners, one per thread, started together over
// the same events; both stop when the first has trained all of them, so
// that every timed call ran while the other learner was training too.
struct PairResult {
  uint64_t events[2] = {0, 0};
  double seconds[2] = {0, 0};  // in Train
  double cpu_seconds[2] = {0, 0};
  double wall_seconds = 0;  // from each start to the first one's end, summed
  HostTicks host;           // the machine's ticks during the runs
};

using LearnerPair = std::array<std::unique_ptr<learner::Learner>, 2>;

LearnerPair MakePair(const Config& cfg) { return {MakeLearner(cfg, 1), MakeLearner(cfg, 1)}; }

// Adds one such run over `events` to *r.
void TrainPair(const Config& cfg, LearnerPair& models, std::span<const learner::Event> events,
               PairResult* r) {
  std::atomic<int> ready{0};
  std::atomic<bool> done{false};
  auto work = [&](int k) {
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    const auto start = Clock::now();
    for (size_t offset = 0; offset < events.size() && !done.load(std::memory_order_relaxed);
         offset += cfg.batch) {
      const size_t n = std::min(cfg.batch, events.size() - offset);
      const auto call_start = Clock::now();
      const double cpu_start = ThreadCpuSeconds();
      models[k]->Train(events.subspan(offset, n));
      r->seconds[k] += SecondsSince(call_start);
      r->cpu_seconds[k] += ThreadCpuSeconds() - cpu_start;
      r->events[k] += n;
    }
    if (!done.exchange(true)) r->wall_seconds += SecondsSince(start);
  };
  const HostTicks host_start = HostTicks::Now();
  std::thread other(work, 1);
  work(0);
  other.join();
  r->host += HostTicks::Now() - host_start;
}

// --interleave: one learner per thread count over the same stream, taking
// turns a slice of `cfg.interleave` events at a time (the slice parsed once,
// beforehand; the order of the turns alternates from slice to slice). Every
// learner sees the machine of the same seconds, so their rates compare even
// when the machine's speed drifts during the run. With `pair`, a pair of
// one-thread learners (TrainPair) takes a turn too, last and then first.
std::vector<RunResult> RunInterleaved(const Config& cfg, PairResult* pair) {
  std::vector<std::unique_ptr<Run>> runs;
  for (int t : cfg.threads) runs.push_back(std::make_unique<Run>(cfg, t));
  std::optional<LearnerPair> pair_models;
  if (pair) pair_models = MakePair(cfg);
  EventSource source(cfg, nullptr);
  std::vector<learner::Event> slice(cfg.interleave);
  for (size_t turn = 0;; ++turn) {
    size_t n = 0;
    for (size_t k; n < slice.size() &&
                   (k = source.NextBatch(std::span(slice).subspan(
                        n, std::min(cfg.batch, slice.size() - n)))) > 0;)
      n += k;
    if (n == 0) break;
    const std::span<const learner::Event> events(slice.data(), n);
    if (pair && turn % 2 == 1) TrainPair(cfg, *pair_models, events, pair);
    for (size_t j = 0; j < runs.size(); ++j) {
      Run& run = *runs[turn % 2 == 0 ? j : runs.size() - 1 - j];
      for (size_t b = 0; b < n; b += cfg.batch)
        run.Train(events.subspan(b, std::min(cfg.batch, n - b)));
    }
    if (pair && turn % 2 == 0) TrainPair(cfg, *pair_models, events, pair);
  }
  std::vector<RunResult> results;
  for (auto& run : runs) {
    RunResult r = run->Finish(0);
    r.wall_seconds = r.train_seconds;
    results.push_back(r);
  }
  return results;
}

void Print(const Config& cfg, const RunResult& r) {
  const auto& st = r.stats;
  std::printf(
      "threads=%d events=%llu train_s=%.3f events_per_s=%.0f train_cpu_s=%.3f "
      "events_per_cpu_s=%.0f wall_s=%.2f users=%llu items=%llu features=%llu rss_mib=%.1f "
      "learner_rss_mib=%.1f %s\n",
      r.threads, (unsigned long long)r.events, r.train_seconds, double(r.events) / r.train_seconds,
      r.train_cpu_seconds, double(r.events) / r.train_cpu_seconds, r.wall_seconds,
      (unsigned long long)st.users, (unsigned long long)st.items, (unsigned long long)st.features,
      MiB(r.rss_after), MiB(r.rss_after - r.rss_before), r.host.SummaryText().c_str());
  if (cfg.predictions) {
    std::printf(
        "  progressive (exact, from Train's predictions): click auc=%.5f logloss=%.5f (n=%llu) | "
        "purchase auc=%.5f logloss=%.5f (n=%llu) | rating mae=%.5f rmse=%.5f (n=%llu)\n",
        r.auc[0], r.logloss[0], (unsigned long long)r.count[0], r.auc[1], r.logloss[1],
        (unsigned long long)r.count[1], r.mae[2], r.rmse[2], (unsigned long long)r.count[2]);
  }
  std::printf("  learner stats: click auc=%.5f purchase auc=%.5f rating mae=%.5f refused=%llu\n",
              st.tasks[0].auc, st.tasks[1].auc, st.tasks[2].mae,
              (unsigned long long)st.nonfinite_updates_refused);
  std::fflush(stdout);
}

}  // namespace
}  // namespace recstream::bench

int main(int argc, char** argv) {
  using namespace recstream::bench;
  Config cfg;
  CLI::App app{"Learner::Train throughput, 1 vs 2 threads, and the metrics' difference"};
  app.add_option("--events", cfg.events, "events in the stream");
  app.add_option("--users", cfg.users, "distinct users of the generator");
  app.add_option("--items", cfg.items, "distinct items of the generator");
  app.add_option("--threads", cfg.threads, "thread counts to run, e.g. 1,2")->delimiter(',');
  app.add_option("--batch", cfg.batch, "events per Train call");
  app.add_option("--chunk", cfg.chunk, "learner.chunk");
  app.add_option("--dim", cfg.dim, "model.dim");
  app.add_option("--train-nice", cfg.train_nice, "learner.train_nice (0..19)");
  app.add_option("--seed", cfg.seed, "generator seed");
  app.add_flag("--cyclic-users", cfg.cyclic_users, "user of event i is i mod users");
  app.add_flag("--no-side-features", cfg.no_side_features,
               "events without user or item features (no feature rows shared by every event)");
  bool no_predictions = false;
  app.add_flag("--no-predictions", no_predictions, "do not collect progressive predictions");
  app.add_flag("--preparsed", cfg.preparsed,
               "parse the whole stream before timing; Train calls back to back");
  app.add_flag("--pair", cfg.pair,
               "also run two independent one-thread learners at once (implies --preparsed): "
               "what two cores give two learners that share nothing (with --interleave: a "
               "turn on every slice)");
  app.add_option("--interleave", cfg.interleave,
                 "one learner per thread count over the same stream, taking turns this many "
                 "events at a time (parsed beforehand): their rates compare on a machine whose "
                 "speed drifts (rss figures then cover all learners)");
  CLI11_PARSE(app, argc, argv);
  cfg.predictions = !no_predictions;
  if (cfg.pair && cfg.interleave == 0) cfg.preparsed = true;

  std::printf(
      "learner_bench events=%llu users=%d items=%d batch=%zu chunk=%d dim=%d train_nice=%d%s%s "
      "interleave=%zu load=%s\n",
      (unsigned long long)cfg.events, cfg.users, cfg.items, cfg.batch, cfg.chunk, cfg.dim,
      cfg.train_nice, cfg.cyclic_users ? " cyclic-users" : "", cfg.preparsed ? " preparsed" : "",
      cfg.interleave, LoadAverage().c_str());
  std::vector<recstream::learner::Event> all;
  if (cfg.preparsed) {
    EventSource source(cfg, nullptr);
    std::vector<recstream::learner::Event> batch(cfg.batch);
    for (size_t k; (k = source.NextBatch(batch)) > 0;) {
      for (size_t i = 0; i < k; ++i) all.push_back(std::move(batch[i]));
    }
    std::printf("preparsed %zu events, rss_mib=%.1f\n", all.size(), MiB(ResidentBytes()));
  }
  std::vector<RunResult> results;
  PairResult pair;
  if (cfg.interleave > 0) {
    results = RunInterleaved(cfg, cfg.pair ? &pair : nullptr);
    for (const RunResult& r : results) Print(cfg, r);
  } else {
    for (int t : cfg.threads) {
      results.push_back(RunOnce(cfg, t, cfg.preparsed ? &all : nullptr));
      Print(cfg, results.back());
    }
  }
  if (results.size() >= 2) {
    const RunResult& a = results[0];
    for (size_t i = 1; i < results.size(); ++i) {
      const RunResult& b = results[i];
      double ra = double(a.events) / a.train_seconds, rb = double(b.events) / b.train_seconds;
      // On a machine shared with other work the wall-clock speedup is capped
      // by the cores actually free; CPU time per event is not. With every
      // thread busy all the time, n threads would run n * cpu_a / cpu_b
      // times faster than one on n idle cores (an upper bound: idle spinning
      // counts as CPU time and lowers it).
      double cpu_a = a.train_cpu_seconds / double(a.events),
             cpu_b = b.train_cpu_seconds / double(b.events);
      std::printf(
          "CPU per event %d thread(s): %.3f us, %d threads: %.3f us -> speedup on %d idle cores "
          "at full occupancy: %.2fx\n",
          a.threads, cpu_a * 1e6, b.threads, cpu_b * 1e6, b.threads,
          double(b.threads) * cpu_a / cpu_b / double(a.threads));
      std::printf(
          "speedup %d->%d threads: %.3fx | click auc diff=%+.5f purchase auc diff=%+.5f rating mae "
          "diff=%+.5f\n",
          a.threads, b.threads, rb / ra, b.auc[0] - a.auc[0], b.auc[1] - a.auc[1],
          b.mae[2] - a.mae[2]);
    }
  }
  if (cfg.pair) {
    if (cfg.interleave == 0) {
      LearnerPair models = MakePair(cfg);
      TrainPair(cfg, models, all, &pair);
    }
    const double rate = double(pair.events[0] + pair.events[1]) / pair.wall_seconds;
    std::printf(
        "pair (two independent 1-thread learners at once, no shared model): events_per_s=%.0f "
        "(%llu + %llu events in %.3f s) cpu_per_event_us=%.3f/%.3f %s\n",
        rate, (unsigned long long)pair.events[0], (unsigned long long)pair.events[1],
        pair.wall_seconds, pair.cpu_seconds[0] / double(pair.events[0]) * 1e6,
        pair.cpu_seconds[1] / double(pair.events[1]) * 1e6, pair.host.SummaryText().c_str());
    for (const RunResult& r : results) {
      const double r_rate = double(r.events) / r.train_seconds;
      if (r.threads == 1)
        std::printf(
            "pair over the 1-thread run: %.3fx (what two cores give now without shared state)\n",
            rate / r_rate);
      if (r.threads == 2)
        std::printf(
            "2-thread run over the pair: %.3f (the cost of sharing one model; 1 = none)\n",
            r_rate / rate);
    }
  }
  std::printf("load after: %s\n", LoadAverage().c_str());
  return 0;
}
