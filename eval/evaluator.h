// Progressive validation without Kafka (`recstream eval`, docs/interface.md
// sections 4 and 5): every event of a JSONL stream is first predicted, then
// learned, by the same Learner code and settings as `serve`, and the
// predictions made before learning are scored against the labels.
//
// Events are handed to Learner::Train in batches of `batch` accepted events,
// as the service does with the messages of one poll; Train reports the
// prediction it made for each event just before learning from it, so each
// prediction sees the model updated by every earlier event of the stream
// (within a batch, up to the learner's own Hogwild parallelism).
//
// Ranking (`ranking_k > 0`): for each positive click or purchase event, its
// item is ranked among `candidates` distinct items drawn uniformly from the
// items of the events before it in the file, the item itself excluded, by the
// event's own task probability (Learner::ScoreMany). Events seen before that
// many other items exist are not ranked. Ties are broken uniformly at random
// in expectation (see RankHitAt). With ranking, events are learned one at a
// time, so each ranking and prediction sees the model that has learned
// every earlier event (a user's latest items included); the ranking itself
// then runs on one thread.
//
// Baselines (`baselines`): popularity, online biased MF and single-task
// learners see the same accepted events in the same batches, predicting each
// before learning it, and are reported per task beside the learner (see
// eval/baselines.h).
//
// Empty lines are skipped and not counted; a trailing '\r' is ignored.
// Lines the parser rejects are counted by reason and skipped: they neither
// reach the learner nor count as events.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "eval/baselines.h"
#include "ingest/options.h"
#include "ingest/parser.h"
#include "learner/learner.h"

namespace recstream::eval {

struct EvalOptions {
  learner::LearnerOptions learner;
  // Validation rules; rating_min/rating_max should match the learner's.
  ingest::ParserOptions parser;
  // HR@K and NDCG@K with K = ranking_k; 0 turns ranking off.
  int ranking_k = 0;
  // Items each ranked event is ranked among (besides its own).
  int candidates = 100;
  // When non-empty, one line per accepted event: {"type":"click","pred":0.137}.
  std::string predictions_path;
  // Accepted events per Learner::Train call.
  size_t batch = 4096;
  // A progress line on stderr about every second, when stderr is a terminal.
  bool progress = true;
  // Called with the learner once it is created (before the first event),
  // and after each Train call: how `recstream eval` gives a learner with
  // a memory limit its store (a temporary one) and its checkpoints. A
  // non-OK status from `attach` ends the run with it. Empty: nothing.
  std::function<Status(learner::Learner*)> attach;
  std::function<void(learner::Learner*)> after_train;
  // Size of the input in bytes, when known (a file): the progress line then
  // also shows the share done and the time left. 0: unknown.
  uint64_t total_bytes = 0;
  // Seed of the candidate sampling.
  uint64_t seed = 1;
  // Also run the baselines of eval/baselines.h (popularity, biased_mf) on
  // the same events and report their metrics beside the learner's.
  bool baselines = false;
  // With baselines: also run single_task (one learner per task with these
  // learner options), which costs about as much as the learner itself.
  bool single_task_baseline = true;
  // Settings of the biased_mf baseline.
  BiasedMfOptions biased_mf;
  // The task loss weights are sampled into EvalReport::weight_history after
  // the batch in which every this many more events were learned; 0: never.
  uint64_t weight_every = 10000;
  // Pretrained item vectors (learner.pretrained_dim values each) imported
  // into the learner before the first event, as `recstream
  // import-embeddings` would (warm start). Empty: none.
  std::vector<std::pair<std::string, std::vector<float>>> pretrained;
  // Cold start: EvalReport::cold holds the metrics of the events whose item
  // had fewer than this many earlier accepted events in the stream; 0: off.
  uint32_t cold_item_events = 10;
  // Several trainers on one model (issue #31; learner/sharing.h): with
  // trainers = N > 1, N learners (trainer i of N) each learn the events of
  // their users (by a stable hash of the user id, as partitions keyed by
  // user give them out) and predict them, and exchange their changes every
  // exchange_events events per trainer: each sends its changes to the
  // rows' owners, the owners add them and publish their rows, every
  // trainer follows the others' rows. That interval is the delay of the
  // service's exchange in events. Not with a memory limit (attach).
  int trainers = 1;
  uint64_t exchange_events = 5000;
  // With trainers > 1: owners publish their rows, and trainers follow them,
  // only every follow_events events per trainer (rounded up to a multiple
  // of exchange_events), as a service whose owners publish
  // (replicate.interval_ms) less often than trainers send
  // (trainer.exchange_interval_ms). 0: at every exchange.
  uint64_t follow_events = 0;
};

// The task loss weights after `events` accepted events.
struct WeightSample {
  uint64_t events = 0;
  std::array<double, learner::kNumTasks> weights{};  // in Task order
};

// Metrics of one task. NaN marks a value that is undefined (e.g. AUC with a
// single class present); ReportJson writes it as null.
struct TaskReport {
  uint64_t count = 0;  // accepted events of this task; 0: the task is absent
  // click and purchase.
  double auc = 0, logloss = 0;
  double last10_auc = 0, last10_logloss = 0;
  double bayes_auc = 0, bayes_logloss = 0;
  // At the decision threshold (metrics.threshold, LearnerOptions::decision_threshold).
  double precision = 0, recall = 0, f1 = 0;
  // rating (predictions clipped to the rating range).
  double mae = 0, rmse = 0;
  double last10_mae = 0, last10_rmse = 0;
  double bayes_mae = 0, bayes_rmse = 0;
  // Every event of the task carried `truth`: the bayes_* fields are set.
  bool has_bayes = false;
};

// One item of the catalog a ranking draws cold candidates from: the file's
// items, each with the item features of its first event.
struct CatalogItem {
  std::string item;
  std::vector<std::string> features;
};

struct RankingReport {
  int k = 0;
  int candidates = 0;
  uint64_t ranked = 0;  // events ranked
  double hr = 0, ndcg = 0;
  // Per stratum: events whose item was seen before (warm) or not (cold).
  struct Stratum {
    uint64_t count = 0;
    double hr = 0, ndcg = 0;
  };
  Stratum warm, cold;
  // With baselines: each ranking baseline (eval/ranking_baselines.h) on the
  // same events and candidates; `all` is overall.
  struct Baseline {
    std::string name;
    Stratum all, warm, cold;
  };
  std::vector<Baseline> baselines;
};

// The metrics of one baseline over the same events (bayes_* unset).
struct BaselineReport {
  std::string name;  // "popularity", "biased_mf", "single_task"
  std::array<TaskReport, learner::kNumTasks> tasks;
};

struct EvalReport {
  uint64_t events = 0;    // accepted events, predicted then learned
  uint64_t rejected = 0;  // lines rejected by the parser
  std::array<uint64_t, ingest::kNumRejectReasons> rejected_by_reason{};
  double seconds = 0;  // wall time of the whole run
  double events_per_second = 0;
  std::array<TaskReport, learner::kNumTasks> tasks;  // in Task order
  bool has_ranking = false;
  RankingReport ranking;
  // With EvalOptions::baselines, one report per baseline.
  std::vector<BaselineReport> baselines;
  // Loss weights of the tasks at the end of the run, in Task order.
  std::array<double, learner::kNumTasks> task_weights{};
  // The weights over the run (EvalOptions::weight_every), oldest first; the
  // last sample is the end of the run.
  std::vector<WeightSample> weight_history;
  // Cold start (EvalOptions::cold_item_events > 0): the metrics over the
  // events of items with fewer than cold_item_events earlier events (no
  // last10 or bayes values). Items with a pretrained vector imported:
  // pretrained_items.
  std::array<TaskReport, learner::kNumTasks> cold;
  uint32_t cold_item_events = 0;
  uint64_t pretrained_items = 0;
  // The model at the end of the run (rows, expiry, admission); with several
  // trainers, trainer 0's.
  learner::LearnerStats model;
  // Several trainers (EvalOptions::trainers > 1): how many, the exchanges,
  // and the bytes exchanged per event learned: changes sent to owners (ids,
  // row floats, dense blocks, item lists), and owners' published rows as
  // the other trainers read them (each published byte counted once per
  // reader).
  int trainers = 1;
  uint64_t exchange_events = 0;
  uint64_t follow_events = 0;
  uint64_t exchanges = 0;
  uint64_t exchanged_rows = 0;
  double sent_bytes_per_event = 0;
  double followed_bytes_per_event = 0;
};

// Runs the evaluation over `events` (JSONL). InvalidArgument for bad options
// (learner options, ranking_k < 0, candidates < 1 with ranking, batch 0);
// IOError when the input cannot be read or the predictions file written.
Status RunEval(const EvalOptions& options, std::istream& events, EvalReport* report);

// The report as JSON, in the shape of docs/interface.md section 5 (absent tasks left out,
// `ranking` only with ranking, undefined values as null), extended with
// "task_weights_history": [{"events": N, "click": w, "purchase": w,
// "rating": w}, ...] when the history is not empty, and "cold_start":
// {"item_events_below": N, "click": {"count": c, "auc": a, "logloss": l},
// "purchase": {...}, "rating": {"count": c, "mae": m, "rmse": r}} when any
// event was cold.
std::string ReportJson(const EvalReport& report);

// A few human-readable lines, each ending in '\n'.
std::string ReportSummary(const EvalReport& report);

}  // namespace recstream::eval
