// scoring_bench: the read side of the learner without HTTP (issue #4,
// target 3): Score, ScoreMany(1,000) and Recommend(k=10) on a default model
// (dim 32) with 10^3, 10^5 and 10^6 items.
//
//   build/bench/scoring_bench [--items 1000,100000,1000000] [--reps 200]
//                             [--threads 2] [--train-during]
//
// Prints, per catalogue size, wall-clock p50/p99 and process CPU time per
// call (getrusage: every thread, so Recommend's second thread counts), the
// first Recommend (which builds the item panel) separately, and checks that
// Recommend's predictions equal Score's for the same pairs on the quiet
// model. --train-during keeps a thread training on new events meanwhile
// (Recommend then serves from a panel up to the documented staleness).
#include <CLI/CLI.hpp>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "learner/learner.h"

namespace {

using namespace recstream;
using namespace recstream::bench;
using learner::Task;

std::unique_ptr<learner::Learner> MakeModel(int items, int users, int threads) {
  learner::LearnerOptions lo;
  lo.threads = threads;
  std::unique_ptr<learner::Learner> model;
  if (!learner::Learner::Create(lo, &model).ok()) std::exit(2);
  std::vector<learner::Event> batch;
  for (int i = 0; i < items; ++i) {
    learner::Event e;
    e.task = i % 3 == 0 ? Task::kRating : Task::kClick;
    e.user = std::to_string(i % users);
    e.item = "i" + std::to_string(i);
    e.label = e.task == Task::kRating ? 4.0f : float(i % 2);
    batch.push_back(std::move(e));
    if (batch.size() == 1000 || i + 1 == items) {
      model->Train(batch);
      batch.clear();
    }
  }
  // A few purchases, so that Recommend has something to leave out.
  for (int u = 0; u < users; u += 7)
    batch.push_back(learner::Event{Task::kPurchase, std::to_string(u), "i" + std::to_string(u), 1});
  model->Train(batch);
  return model;
}

struct Timing {
  std::vector<double> wall_ms;
  double cpu_s = 0;
  void Add(double ms, double cpu) {
    wall_ms.push_back(ms);
    cpu_s += cpu;
  }
  std::string Format() {
    size_t n = wall_ms.size();
    if (n == 0) return "not timed";
    double p50 = Quantile(&wall_ms, 0.5), p99 = Quantile(&wall_ms, 0.99);
    double min = Quantile(&wall_ms, 0.0);
    char buf[160];
    std::snprintf(buf, sizeof buf, "min_ms=%.4f p50_ms=%.4f p99_ms=%.4f cpu_ms_per_call=%.4f", min,
                  p50, p99, cpu_s * 1e3 / double(n));
    return buf;
  }
};

template <typename Fn>
void Time(Timing* t, Fn&& fn) {
  double cpu = CpuSeconds();
  auto start = Clock::now();
  fn();
  t->Add(SecondsSince(start) * 1e3, CpuSeconds() - cpu);
}

int Run(int items, int reps, int threads, bool train_during, const std::string& calls) {
  const bool do_one = calls.find("score") != std::string::npos,
             do_many = calls.find("many") != std::string::npos,
             do_rec = calls.find("recommend") != std::string::npos;
  const int users = 1000;
  auto model = MakeModel(items, users, threads);
  learner::Blend blend;
  std::mt19937_64 rng(5);

  // Cold: the first Recommend builds the item panel.
  auto start = Clock::now();
  auto first = model->Recommend("1", 10, true, blend);
  double cold_ms = SecondsSince(start) * 1e3;

  // Quiet model: Recommend's predictions equal Score's exactly.
  int mismatches = 0;
  float max_diff = 0;
  for (int r = 0; r < 20; ++r) {
    std::string user = std::to_string(rng() % users);
    for (const auto& rec : model->Recommend(user, 10, true, blend)) {
      auto s = model->Score(user, rec.item, blend);
      float diff = std::abs(s.score - rec.score);
      max_diff = std::max(max_diff, diff);
      if (s.score != rec.score || s.prediction.click != rec.prediction.click) ++mismatches;
    }
  }

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> trained{0};
  std::thread trainer;
  if (train_during) {
    trainer = std::thread([&] {
      std::mt19937_64 trng(9);
      std::vector<learner::Event> batch(1000);
      while (!stop.load()) {
        for (auto& e : batch) {
          e.task = Task::kClick;
          e.user = std::to_string(trng() % users);
          e.item = "i" + std::to_string(trng() % uint64_t(items));
          e.label = float(trng() % 2);
        }
        model->Train(batch);
        trained += batch.size();
      }
    });
  }

  Timing one, many, rec;
  std::vector<std::string> ids(1000);
  std::vector<learner::ScoreResult> out;
  for (int r = 0; r < reps; ++r) {
    std::string user = std::to_string(rng() % users);
    std::string item = "i" + std::to_string(rng() % uint64_t(items));
    if (do_one) Time(&one, [&] { (void)model->Score(user, item, blend); });
    for (auto& id : ids) id = "i" + std::to_string(rng() % uint64_t(items));
    if (do_many) Time(&many, [&] { model->ScoreMany(user, ids, blend, &out); });
    if (!do_rec) continue;
    std::vector<learner::Recommendation> top;
    Time(&rec, [&] { top = model->Recommend(user, 10, true, blend); });
    if (top.size() != 10) std::exit(3);
  }
  stop = true;
  if (trainer.joinable()) trainer.join();
  std::printf(
      "items=%d threads=%d%s\n  Score            %s\n  ScoreMany(1000)  %s\n"
      "  Recommend(k=10)  %s\n  first Recommend (builds the panel) %.3f ms | quiet-model "
      "check: %d of 200 differ from Score, max |diff| %.3g | rss_mib=%.1f load=%s\n",
      items, threads,
      train_during
          ? (" (training meanwhile: " + std::to_string(trained.load()) + " events)").c_str()
          : "",
      one.Format().c_str(), many.Format().c_str(), rec.Format().c_str(), cold_ms, mismatches,
      double(max_diff), MiB(ResidentBytes()), LoadAverage().c_str());
  std::fflush(stdout);
  return mismatches == 0 && !first.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"scoring_bench: Score, ScoreMany and Recommend without HTTP"};
  std::vector<int> items = {1000, 100000, 1000000};
  int reps = 200, threads = 2;
  bool train_during = false;
  app.add_option("--items", items, "catalogue sizes")->delimiter(',');
  app.add_option("--reps", reps, "calls of each kind per size");
  app.add_option("--threads", threads, "learner threads (training)");
  app.add_flag("--train-during", train_during, "train on new events while timing");
  std::string calls = "score,many,recommend";
  app.add_option("--calls", calls, "which calls to time (score, many, recommend), comma-separated")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::printf("scoring_bench load=%s\n", LoadAverage().c_str());
  int rc = 0;
  for (int n : items) rc |= Run(n, reps, threads, train_during, calls);
  std::printf("load after: %s\n", LoadAverage().c_str());
  return rc;
}
