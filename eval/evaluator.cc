#include "eval/evaluator.h"

#include <fmt/format.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "eval/baselines.h"
#include "eval/batch_parser.h"
#include "eval/metrics.h"
#include "eval/ranking_baselines.h"
#include "eval/shared_trainers.h"
#include "ingest/parser.h"

namespace recstream::eval {

namespace {

// Earlier events per item id (the cold-start metrics), by open addressing
// on a 64-bit hash of the id: ids are told apart by the hash alone (two of
// a million ids share one with odds of about 3e-8). On a positive-only
// stream most events bring a new item, and a map node per id cost the
// evaluation a tenth of its time.
class ItemCounts {
 public:
  // The count of `id`, 0 for an id not seen; stays valid until the next
  // call.
  uint32_t& operator[](std::string_view id) {
    if ((used_ + 1) * 2 > keys_.size()) Grow();
    const uint64_t h = Hash(id);
    size_t i = h & (keys_.size() - 1);
    while (keys_[i] != 0 && keys_[i] != h) i = (i + 1) & (keys_.size() - 1);
    if (keys_[i] == 0) {
      keys_[i] = h;
      ++used_;
    }
    return counts_[i];
  }

 private:
  static uint64_t Hash(std::string_view id) {
    const uint64_t h = std::hash<std::string_view>()(id) * 0x9E3779B97F4A7C15ULL;
    return h == 0 ? 1 : h;  // 0 marks an empty slot
  }
  void Grow() {
    std::vector<uint64_t> keys(std::max<size_t>(1024, keys_.size() * 2), 0);
    std::vector<uint32_t> counts(keys.size(), 0);
    for (size_t j = 0; j < keys_.size(); ++j) {
      if (keys_[j] == 0) continue;
      size_t i = keys_[j] & (keys.size() - 1);
      while (keys[i] != 0) i = (i + 1) & (keys.size() - 1);
      keys[i] = keys_[j];
      counts[i] = counts_[j];
    }
    keys_.swap(keys);
    counts_.swap(counts);
  }
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> counts_;
  size_t used_ = 0;
};

using learner::Event;
using learner::Prediction;
using learner::Task;

// Predictions, labels and truths of one task, in stream order.
struct TaskSeries {
  std::vector<float> pred, label, truth;
  bool all_truth = true;
};

// The ranking protocol (docs/interface.md section 4): each positive click or
// purchase event is ranked, before learning from it, among candidates of its
// stratum drawn uniformly: a warm event (its item seen earlier in the file)
// among the items seen so far, a cold one (its item never seen) among the
// catalog's items not seen so far. The event's item is scored with the
// event's own features, a warm candidate with its features as last seen
// (the model's stored list), a cold candidate with its catalog features.
// Rank = candidates scored higher + half the ties.
class Ranker {
 public:
  // With `baselines`, RankingBaselines rank the same candidates.
  Ranker(const learner::Learner* learner, int k, int candidates, int threads, uint64_t seed,
         std::vector<CatalogItem> catalog, bool baselines)
      : learner_(learner),
        baselines_(baselines ? std::make_unique<RankingBaselines>(seed) : nullptr),
        baseline_hits_(baselines ? RankingBaselines::Names().size() : 0),
        k_(k),
        candidates_(candidates),
        arena_(threads > 0 ? threads : tbb::task_arena::automatic),
        rng_(seed),
        catalog_(std::move(catalog)) {
    unseen_.reserve(catalog_.size());
    for (uint32_t c = 0; c < catalog_.size(); ++c) {
      catalog_index_.emplace(catalog_[c].item, c);
      unseen_pos_.push_back(unseen_.size());
      unseen_.push_back(c);
    }
  }

  // Ranks the positive click/purchase events of `events` with the model as
  // it is now, noting each event's item as seen after ranking it. With
  // `lines`, each ranked event's "rank" JSON goes to (*lines)[i].
  void RankBatch(std::span<const Event> events, std::vector<std::string>* lines) {
    jobs_.clear();
    candidates_of_.clear();
    if (lines) lines->assign(events.size(), std::string());
    for (size_t i = 0; i < events.size(); ++i) {
      const Event& e = events[i];
      const bool positive = e.task != Task::kRating && e.label > 0.5f;
      auto seen = index_.find(e.item);
      auto in_catalog = catalog_index_.find(e.item);
      const bool warm = seen != index_.end();
      if (positive) {
        if (warm && items_.size() - 1 >= size_t(candidates_)) {
          jobs_.push_back({i, true});
          DrawWarm(seen->second);
        } else if (!warm) {
          const int64_t self =
              in_catalog != catalog_index_.end() ? int64_t(unseen_pos_[in_catalog->second]) : -1;
          if (unseen_.size() - (self >= 0 ? 1 : 0) >= size_t(candidates_)) {
            jobs_.push_back({i, false});
            DrawCold(self);
          }
        }
      }
      if (!warm) {
        index_.emplace(e.item, items_.size());
        items_.push_back(e.item);
        last_features_.emplace_back();
        if (in_catalog != catalog_index_.end()) RemoveUnseen(in_catalog->second);
      }
    }
    hits_.resize(jobs_.size());
    baseline_ranks_.resize(jobs_.size());
    arena_.execute([&] {
      tbb::parallel_for(tbb::blocked_range<size_t>(0, jobs_.size(), 16),
                        [&](const tbb::blocked_range<size_t>& r) {
                          Scratch scratch;
                          for (size_t j = r.begin(); j < r.end(); ++j) {
                            const size_t i = jobs_[j].event;
                            hits_[j] = RankOne(events[i], j, &scratch,
                                               lines ? &(*lines)[i] : nullptr, &baseline_ranks_[j]);
                          }
                        });
    });
    for (size_t j = 0; j < jobs_.size(); ++j) {
      all_.Add(hits_[j]);
      (jobs_[j].warm ? warm_ : cold_).Add(hits_[j]);
      for (size_t b = 0; b < baseline_hits_.size(); ++b) {
        const RankHit hit = RankAt(baseline_ranks_[j][b], k_);
        baseline_hits_[b][0].Add(hit);
        baseline_hits_[b][jobs_[j].warm ? 1 : 2].Add(hit);
      }
    }
    queries_ += jobs_.size();
    // What the events taught: their items' features as last seen, and the
    // baselines' counts.
    for (const Event& e : events) {
      if (!e.item_features.empty()) last_features_[index_.at(e.item)] = e.item_features;
      if (baselines_) baselines_->Learn(e);
    }
  }

  // Per baseline (RankingBaselines::Names order): overall, warm, cold.
  const std::vector<std::array<RankingAccumulator, 3>>& baseline_hits() const {
    return baseline_hits_;
  }

  const RankingAccumulator& all() const { return all_; }
  const RankingAccumulator& warm() const { return warm_; }
  const RankingAccumulator& cold() const { return cold_; }
  // The learner that ranks from the next RankBatch on (several trainers:
  // the one that owns the event's user).
  void set_learner(const learner::Learner* learner) { learner_ = learner; }

 private:
  struct Job {
    size_t event;
    bool warm;
  };
  struct Scratch {
    std::vector<std::string> items;
    std::vector<const std::vector<std::string>*> features;
    // What a baseline knows of each item's features (warm candidates: as
    // last seen, where the model reads its own stored list).
    std::vector<const std::vector<std::string>*> known;
    std::vector<learner::ScoreResult> scores;
  };

  // Appends `candidates_` distinct positions in [0, pool + 1) other than
  // `self` (or in [0, pool) when self < 0), uniformly, with Floyd's
  // algorithm: pool index p maps to p, or p + 1 past self.
  void Draw(uint64_t pool, int64_t self, const std::function<uint32_t(uint64_t)>& at) {
    chosen_.clear();
    for (uint64_t j = pool - uint64_t(candidates_); j < pool; ++j) {
      uint64_t t = std::uniform_int_distribution<uint64_t>(0, j)(rng_);
      if (!chosen_.insert(t).second) chosen_.insert(j);
    }
    for (uint64_t p : chosen_)
      candidates_of_.push_back(at((self >= 0 && p >= uint64_t(self)) ? p + 1 : p));
  }
  // Warm: indices into items_; cold: catalog indices (from unseen_).
  void DrawWarm(size_t self) {
    Draw(items_.size() - 1, int64_t(self), [](uint64_t p) { return uint32_t(p); });
  }
  void DrawCold(int64_t self_pos) {
    Draw(unseen_.size() - (self_pos >= 0 ? 1 : 0), self_pos,
         [this](uint64_t p) { return unseen_[p]; });
  }
  void RemoveUnseen(uint32_t c) {
    const size_t pos = unseen_pos_[c];
    const uint32_t last = unseen_.back();
    unseen_[pos] = last;
    unseen_pos_[last] = pos;
    unseen_.pop_back();
  }

  // Thread safe: reads state that does not change during the batch's scoring.
  // With baselines, their ranks of the event's item into *baseline_ranks.
  RankHit RankOne(const Event& e, size_t job, Scratch* s, std::string* line,
                  std::vector<double>* baseline_ranks) const {
    const bool warm = jobs_[job].warm;
    s->items.clear();
    s->features.clear();
    s->known.clear();
    s->items.push_back(e.item);
    s->features.push_back(e.item_features.empty() ? nullptr : &e.item_features);
    if (e.item_features.empty()) {
      auto seen = index_.find(e.item);
      s->known.push_back(seen != index_.end() ? &last_features_[seen->second] : nullptr);
    } else {
      s->known.push_back(&e.item_features);
    }
    const uint32_t* cand = &candidates_of_[job * size_t(candidates_)];
    for (int c = 0; c < candidates_; ++c) {
      if (warm) {
        s->items.push_back(items_[cand[c]]);
        s->features.push_back(nullptr);  // as last seen: the model's list
        s->known.push_back(&last_features_[cand[c]]);
      } else {
        s->items.push_back(catalog_[cand[c]].item);
        s->features.push_back(&catalog_[cand[c]].features);
        s->known.push_back(&catalog_[cand[c]].features);
      }
    }
    if (baselines_) baselines_->Rank(e, s->items, s->known, queries_ + job, baseline_ranks);
    learner_->ScoreMany(e.user, s->items, learner::Blend(), &s->scores,
                        e.user_features.empty() ? nullptr : &e.user_features, s->features);
    const float target = s->scores[0].prediction.Get(e.task);
    int64_t greater = 0, ties = 0;
    for (size_t i = 1; i < s->scores.size(); ++i) {
      const float v = s->scores[i].prediction.Get(e.task);
      greater += v > target;
      ties += v == target;
    }
    if (line != nullptr) {
      auto out = std::back_inserter(*line);
      fmt::format_to(out, ",\"rank\":{{\"score\":{},\"candidates\":[", target);
      for (size_t i = 1; i < s->scores.size(); ++i) {
        fmt::format_to(out, "{}[", i > 1 ? "," : "");
        AppendJsonString(s->items[i], line);
        fmt::format_to(std::back_inserter(*line), ",{}]", s->scores[i].prediction.Get(e.task));
      }
      line->append("]}");
    }
    return RankAt(double(greater) + 0.5 * double(ties), k_);
  }

  // A JSON string literal of `s` (ids are UTF-8; quotes, backslashes and
  // control characters escaped).
  static void AppendJsonString(std::string_view s, std::string* out) {
    out->push_back('"');
    for (char ch : s) {
      if (ch == '"' || ch == '\\') {
        out->push_back('\\');
        out->push_back(ch);
      } else if (static_cast<unsigned char>(ch) < 0x20) {
        fmt::format_to(std::back_inserter(*out), "\\u{:04x}", int(ch));
      } else {
        out->push_back(ch);
      }
    }
    out->push_back('"');
  }

  const learner::Learner* learner_;  // set_learner
  const std::unique_ptr<RankingBaselines> baselines_;
  std::vector<std::array<RankingAccumulator, 3>> baseline_hits_;
  std::vector<std::vector<double>> baseline_ranks_;  // per job of the batch
  uint64_t queries_ = 0;                             // events ranked before this batch
  const int k_;
  const int candidates_;
  tbb::task_arena arena_;
  std::mt19937_64 rng_;
  const std::vector<CatalogItem> catalog_;
  std::unordered_map<std::string, uint32_t> catalog_index_;
  std::vector<uint32_t> unseen_;                         // catalog indices not seen yet (any order)
  std::vector<size_t> unseen_pos_;                       // catalog index -> its position in unseen_
  std::vector<std::string> items_;                       // every item seen, in order of first sight
  std::vector<std::vector<std::string>> last_features_;  // parallel to items_
  std::unordered_map<std::string, size_t> index_;        // item -> index in items_
  std::unordered_set<uint64_t> chosen_;
  // Per batch: the events to rank, candidates_ indices each, and their hits.
  std::vector<Job> jobs_;
  std::vector<uint32_t> candidates_of_;
  std::vector<RankHit> hits_;
  RankingAccumulator all_, warm_, cold_;
};

// The catalog of a ranking: every item of the stream, in order of first
// appearance, with the item features of its first event. Reads the stream
// once and rewinds it; a stream that cannot rewind (a pipe) gives an empty
// catalog, and then no cold event can be ranked.
std::vector<CatalogItem> ReadCatalog(const ingest::ParserOptions& parser_options, int64_t now_ms,
                                     std::istream& events) {
  std::vector<CatalogItem> catalog;
  const std::streampos start = events.tellg();
  if (start == std::streampos(-1)) return catalog;
  ingest::EventParser parser(parser_options);
  std::unordered_set<std::string> known;
  std::string line, detail;
  Event e;
  while (std::getline(events, line)) {
    if (line.empty() || parser.Parse(line, &e, now_ms, &detail)) continue;
    if (known.insert(e.item).second) catalog.push_back({e.item, e.item_features});
  }
  events.clear();
  events.seekg(start);
  return catalog;
}

void FillTask(Task task, const TaskSeries& s, float threshold, TaskReport* r) {
  r->count = s.pred.size();
  if (r->count == 0) return;
  const size_t n = s.pred.size();
  const size_t tail = (n + 9) / 10;
  std::span<const float> pred(s.pred), label(s.label), truth(s.truth);
  std::span<const float> pred10 = pred.last(tail), label10 = label.last(tail);
  r->has_bayes = s.all_truth;
  if (task == Task::kRating) {
    r->mae = Mae(pred, label);
    r->rmse = Rmse(pred, label);
    r->last10_mae = Mae(pred10, label10);
    r->last10_rmse = Rmse(pred10, label10);
    if (r->has_bayes) {
      r->bayes_mae = Mae(truth, label);
      r->bayes_rmse = Rmse(truth, label);
    }
  } else {
    r->auc = Auc(pred, label);
    r->logloss = LogLoss(pred, label);
    r->last10_auc = Auc(pred10, label10);
    r->last10_logloss = LogLoss(pred10, label10);
    const Decisions d = DecisionsAt(pred, label, threshold);
    r->precision = d.precision;
    r->recall = d.recall;
    r->f1 = d.f1;
    if (r->has_bayes) {
      r->bayes_auc = Auc(truth, label);
      r->bayes_logloss = LogLoss(truth, label);
    }
  }
}

// A metric as JSON: null when undefined.
std::string Num(double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : "null"; }

class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled && isatty(STDERR_FILENO)) {}
  // `fraction`: share of the input read, in (0, 1], or 0 when unknown.
  void Update(uint64_t events, double seconds, double fraction) {
    if (!enabled_ || seconds < next_) return;
    next_ = seconds + 1.0;
    std::string left;
    if (fraction > 0 && fraction <= 1)
      left = fmt::format(", {:.0f}%, {:.0f}s left", 100 * fraction,
                         seconds * (1 - fraction) / fraction);
    fmt::print(stderr, "\r{} events, {:.0f} events/s{}\x1b[K", events,
               seconds > 0 ? double(events) / seconds : 0.0, left);
    std::fflush(stderr);
    shown_ = true;
  }
  void Finish() {
    if (shown_) {
      fmt::print(stderr, "\r\x1b[K");
      std::fflush(stderr);
    }
  }

 private:
  bool enabled_;
  bool shown_ = false;
  double next_ = 1.0;
};

}  // namespace

Status RunEval(const EvalOptions& options, std::istream& events, EvalReport* report) {
  if (options.batch == 0) return Status::InvalidArgument("batch must be at least 1");
  if (options.ranking_k < 0) return Status::InvalidArgument("ranking must not be negative");
  if (options.ranking_k > 0 && options.candidates < 1)
    return Status::InvalidArgument("candidates must be at least 1");
  if (options.trainers < 1 || options.trainers > 64)
    return Status::InvalidArgument("trainers must be in [1, 64]");
  if (options.trainers > 1 && options.exchange_events == 0)
    return Status::InvalidArgument("exchange events must be at least 1");
  if (options.trainers > 1 && (options.attach || options.after_train))
    return Status::InvalidArgument("several trainers do not run with a memory limit in eval");
  // Trainer i of N: learner options with the trainer's place.
  std::vector<std::unique_ptr<learner::Learner>> trainers{size_t(options.trainers)};
  for (int i = 0; i < options.trainers; ++i) {
    learner::LearnerOptions lo = options.learner;
    lo.trainer_count = options.trainers;
    lo.trainer_index = i;
    RECSTREAM_RETURN_IF_ERROR(learner::Learner::Create(lo, &trainers[size_t(i)]));
  }
  std::vector<learner::Learner*> trainer_ptrs;
  for (auto& t : trainers) trainer_ptrs.push_back(t.get());
  std::unique_ptr<learner::Learner>& learner = trainers[0];
  if (options.attach) RECSTREAM_RETURN_IF_ERROR(options.attach(learner.get()));
  for (const auto& [item, vec] : options.pretrained) {
    // Every trainer imports them (as each would from the same file).
    for (auto& t : trainers) {
      Status s = t->ImportPretrained(item, vec);
      if (!s.ok())
        return Status::InvalidArgument("pretrained vector of " + item + ": " + s.message());
    }
  }
  // Several trainers: which one learns an event (its user's), and the
  // exchange every exchange_events events per trainer.
  const int n_trainers = options.trainers;
  auto trainer_of = [n_trainers](const Event& e) {
    return n_trainers == 1 ? 0 : learner::OwnerOf(e.user, n_trainers);
  };
  uint64_t since_exchange = 0, since_follow = 0;
  ExchangeBytes exchanged;
  auto maybe_exchange = [&](size_t learned) -> Status {
    if (n_trainers == 1) return Status::OK();
    since_exchange += learned;
    since_follow += learned;
    if (since_exchange < options.exchange_events * uint64_t(n_trainers)) return Status::OK();
    since_exchange = 0;
    const bool follow = since_follow >= options.follow_events * uint64_t(n_trainers);
    if (follow) since_follow = 0;
    ++report->exchanges;
    return ExchangeInProcess(trainer_ptrs, &exchanged, follow);
  };
  std::vector<std::vector<Event>> sub{size_t(n_trainers)};
  std::vector<std::vector<size_t>> sub_at{size_t(n_trainers)};
  std::vector<Prediction> sub_before;

  std::ofstream predictions;
  if (!options.predictions_path.empty()) {
    predictions.open(options.predictions_path, std::ios::binary | std::ios::trunc);
    if (!predictions) return Status::IOError("cannot write " + options.predictions_path);
  }

  *report = EvalReport();
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  const float rating_min = options.learner.rating_min, rating_max = options.learner.rating_max;

  // Lines are parsed a batch at a time on the learner's threads
  // (eval/batch_parser.h).
  BatchParser parser(options.parser, [&learner](size_t n, size_t grain,
                                                const std::function<void(size_t, size_t)>& fn) {
    learner->ParallelFor(n, grain, fn);
  });
  // Several trainers exchange between batches: a batch holds no more than
  // one exchange interval.
  const size_t batch_size =
      options.trainers > 1
          ? size_t(std::clamp<uint64_t>(options.exchange_events * uint64_t(options.trainers), 1,
                                        options.batch))
          : options.batch;
  std::vector<std::string> lines(batch_size);
  std::vector<ingest::RejectReason> rejected;
  std::vector<Event> batch(batch_size);
  size_t n = 0;
  std::vector<Prediction> before;
  std::array<TaskSeries, learner::kNumTasks> series, cold_series;
  // Earlier accepted events per item (cold start), saturating at the limit.
  ItemCounts item_events;
  std::unique_ptr<Ranker> ranker;
  if (options.ranking_k > 0)
    ranker = std::make_unique<Ranker>(
        learner.get(), options.ranking_k, options.candidates, options.learner.threads, options.seed,
        ReadCatalog(options.parser, now_ms, events), options.baselines);
  std::vector<std::string> rank_lines;
  std::vector<std::unique_ptr<Baseline>> baselines;
  if (options.baselines) {
    baselines.push_back(NewPopularityBaseline(options.learner));
    baselines.push_back(NewBiasedMfBaseline(options.learner, options.biased_mf));
    if (options.single_task_baseline) baselines.push_back(NewSingleTaskBaseline(options.learner));
  }
  std::vector<std::array<TaskSeries, learner::kNumTasks>> baseline_series(baselines.size());
  std::vector<float> baseline_pred;
  ProgressLine progress(options.progress);
  uint64_t bytes_read = 0;
  fmt::memory_buffer pred_buf;
  uint64_t next_weight_sample = options.weight_every;

  auto flush_batch = [&]() -> Status {
    std::span<const Event> chunk(batch.data(), n);
    if (ranker) {
      // Ranked exactly in stream order: each event is ranked and predicted
      // by the model that has learned every event before it (its user's
      // latest items included), as the baselines are.
      before.resize(n);
      if (predictions.is_open()) rank_lines.assign(n, std::string());
      std::vector<Prediction> one;
      std::vector<std::string> one_line;
      for (size_t i = 0; i < n; ++i) {
        learner::Learner* t = trainers[size_t(trainer_of(chunk[i]))].get();
        ranker->set_learner(t);
        ranker->RankBatch(chunk.subspan(i, 1), predictions.is_open() ? &one_line : nullptr);
        if (predictions.is_open()) rank_lines[i] = std::move(one_line[0]);
        t->Train(chunk.subspan(i, 1), &one);
        before[i] = one[0];
        RECSTREAM_RETURN_IF_ERROR(maybe_exchange(1));
      }
    } else if (n_trainers == 1) {
      learner->Train(chunk, &before);
    } else {
      // Each trainer learns its users' events of the batch, in order.
      for (int t = 0; t < n_trainers; ++t) {
        sub[size_t(t)].clear();
        sub_at[size_t(t)].clear();
      }
      for (size_t i = 0; i < n; ++i) {
        const size_t t = size_t(trainer_of(chunk[i]));
        sub[t].push_back(chunk[i]);
        sub_at[t].push_back(i);
      }
      before.resize(n);
      for (int t = 0; t < n_trainers; ++t) {
        if (sub[size_t(t)].empty()) continue;
        trainers[size_t(t)]->Train(sub[size_t(t)], &sub_before);
        for (size_t k = 0; k < sub_at[size_t(t)].size(); ++k)
          before[sub_at[size_t(t)][k]] = sub_before[k];
      }
      RECSTREAM_RETURN_IF_ERROR(maybe_exchange(n));
    }
    if (options.after_train) options.after_train(learner.get());
    for (size_t b = 0; b < baselines.size(); ++b) {
      baselines[b]->Train(chunk, &baseline_pred);
      for (size_t i = 0; i < n; ++i) {
        TaskSeries& s = baseline_series[b][int(chunk[i].task)];
        s.pred.push_back(baseline_pred[i]);
        s.label.push_back(chunk[i].label);
        s.all_truth = false;
      }
    }
    pred_buf.clear();
    for (size_t i = 0; i < n; ++i) {
      const Event& e = chunk[i];
      float pred = before[i].Get(e.task);
      if (e.task == Task::kRating) pred = std::clamp(pred, rating_min, rating_max);
      TaskSeries& s = series[int(e.task)];
      s.pred.push_back(pred);
      s.label.push_back(e.label);
      s.truth.push_back(e.has_truth ? float(e.truth) : 0.0f);
      s.all_truth &= e.has_truth;
      if (options.cold_item_events > 0) {
        uint32_t& seen = item_events[e.item];
        if (seen < options.cold_item_events) {
          ++seen;
          TaskSeries& cs = cold_series[int(e.task)];
          cs.pred.push_back(pred);
          cs.label.push_back(e.label);
          cs.all_truth = false;
        }
      }
      if (predictions.is_open())
        fmt::format_to(fmt::appender(pred_buf), "{{\"type\":\"{}\",\"pred\":{}{}}}\n",
                       learner::TaskName(e.task), pred,
                       ranker ? std::string_view(rank_lines[i]) : std::string_view());
    }
    report->events += n;
    n = 0;
    if (options.weight_every > 0 && report->events >= next_weight_sample) {
      const learner::LearnerStats st = learner->Stats();
      WeightSample& ws = report->weight_history.emplace_back();
      ws.events = report->events;
      for (Task t : learner::kAllTasks) ws.weights[int(t)] = st.tasks[int(t)].loss_weight;
      next_weight_sample = (report->events / options.weight_every + 1) * options.weight_every;
    }
    if (predictions.is_open()) {
      predictions.write(pred_buf.data(), std::streamsize(pred_buf.size()));
      if (!predictions) return Status::IOError("writing " + options.predictions_path + " failed");
    }
    progress.Update(
        report->events, elapsed(),
        options.total_bytes > 0 ? double(bytes_read) / double(options.total_bytes) : 0.0);
    return Status::OK();
  };

  for (bool eof = false; !eof;) {
    // Up to the lines that fill the batch if all are accepted.
    size_t m = 0;
    while (n + m < batch.size()) {
      std::string& line = lines[m];
      if (!std::getline(events, line)) {
        eof = true;
        break;
      }
      bytes_read += line.size() + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) ++m;
    }
    rejected.clear();
    n += parser.Parse(std::span<const std::string>(lines.data(), m), now_ms,
                      std::span<Event>(batch.data() + n, m), &rejected);
    report->rejected += rejected.size();
    for (ingest::RejectReason r : rejected) ++report->rejected_by_reason[size_t(r)];
    if (n == batch.size()) RECSTREAM_RETURN_IF_ERROR(flush_batch());
  }
  if (events.bad()) return Status::IOError("reading the events failed");
  if (n > 0) RECSTREAM_RETURN_IF_ERROR(flush_batch());
  if (predictions.is_open()) {
    predictions.close();
    if (!predictions) return Status::IOError("writing " + options.predictions_path + " failed");
  }
  progress.Finish();

  const float threshold = options.learner.decision_threshold;
  for (Task t : learner::kAllTasks) FillTask(t, series[int(t)], threshold, &report->tasks[int(t)]);
  report->cold_item_events = options.cold_item_events;
  report->pretrained_items = options.pretrained.size();
  for (Task t : learner::kAllTasks)
    FillTask(t, cold_series[int(t)], threshold, &report->cold[int(t)]);
  for (size_t b = 0; b < baselines.size(); ++b) {
    BaselineReport& br = report->baselines.emplace_back();
    br.name = std::string(baselines[b]->name());
    for (Task t : learner::kAllTasks)
      FillTask(t, baseline_series[b][int(t)], threshold, &br.tasks[int(t)]);
  }
  if (ranker) {
    report->has_ranking = true;
    report->ranking.k = options.ranking_k;
    report->ranking.candidates = options.candidates;
    report->ranking.ranked = ranker->all().count();
    report->ranking.hr = ranker->all().hr();
    report->ranking.ndcg = ranker->all().ndcg();
    auto fill = [](const RankingAccumulator& from, RankingReport::Stratum* to) {
      to->count = from.count();
      to->hr = from.hr();
      to->ndcg = from.ndcg();
    };
    fill(ranker->warm(), &report->ranking.warm);
    fill(ranker->cold(), &report->ranking.cold);
    for (size_t b = 0; b < ranker->baseline_hits().size(); ++b) {
      RankingReport::Baseline& rb = report->ranking.baselines.emplace_back();
      rb.name = std::string(RankingBaselines::Names()[b]);
      fill(ranker->baseline_hits()[b][0], &rb.all);
      fill(ranker->baseline_hits()[b][1], &rb.warm);
      fill(ranker->baseline_hits()[b][2], &rb.cold);
    }
  }
  const learner::LearnerStats stats = learner->Stats();
  report->model = stats;
  report->trainers = n_trainers;
  if (n_trainers > 1) {
    report->exchange_events = options.exchange_events;
    report->follow_events = std::max(options.follow_events, options.exchange_events);
    report->exchanged_rows = exchanged.rows;
    if (report->events > 0) {
      report->sent_bytes_per_event = double(exchanged.sent) / double(report->events);
      report->followed_bytes_per_event = double(exchanged.followed) / double(report->events);
    }
  }
  for (Task t : learner::kAllTasks) report->task_weights[int(t)] = stats.tasks[int(t)].loss_weight;
  if (options.weight_every > 0 && report->events > 0 &&
      (report->weight_history.empty() || report->weight_history.back().events != report->events))
    report->weight_history.push_back({report->events, report->task_weights});
  report->seconds = elapsed();
  report->events_per_second = report->seconds > 0 ? double(report->events) / report->seconds : 0;
  return Status::OK();
}

std::string ReportJson(const EvalReport& r) {
  fmt::memory_buffer out;
  auto app = fmt::appender(out);
  fmt::format_to(app,
                 "{{\n  \"events\": {}, \"rejected\": {}, \"seconds\": {:.3f}, "
                 "\"events_per_second\": {},\n  \"tasks\": {{",
                 r.events, r.rejected, r.seconds, std::llround(r.events_per_second));
  bool first = true;
  for (Task t : learner::kAllTasks) {
    const TaskReport& tr = r.tasks[int(t)];
    if (tr.count == 0) continue;
    fmt::format_to(app, "{}\n    \"{}\": {{\"count\": {}", first ? "" : ",", learner::TaskName(t),
                   tr.count);
    first = false;
    if (t == Task::kRating) {
      fmt::format_to(app, ", \"mae\": {}, \"rmse\": {}", Num(tr.mae), Num(tr.rmse));
      if (tr.has_bayes)
        fmt::format_to(app, ", \"bayes_mae\": {}, \"bayes_rmse\": {}", Num(tr.bayes_mae),
                       Num(tr.bayes_rmse));
      fmt::format_to(app, ", \"last10\": {{\"mae\": {}, \"rmse\": {}}}}}", Num(tr.last10_mae),
                     Num(tr.last10_rmse));
    } else {
      fmt::format_to(app, ", \"auc\": {}, \"logloss\": {}", Num(tr.auc), Num(tr.logloss));
      fmt::format_to(app, ", \"precision\": {}, \"recall\": {}, \"f1\": {}", Num(tr.precision),
                     Num(tr.recall), Num(tr.f1));
      if (tr.has_bayes)
        fmt::format_to(app, ", \"bayes_auc\": {}, \"bayes_logloss\": {}", Num(tr.bayes_auc),
                       Num(tr.bayes_logloss));
      fmt::format_to(app, ", \"last10\": {{\"auc\": {}, \"logloss\": {}}}}}", Num(tr.last10_auc),
                     Num(tr.last10_logloss));
    }
  }
  fmt::format_to(app, "{}}},\n", first ? "" : "\n  ");
  if (r.has_ranking) {
    fmt::format_to(app,
                   "  \"ranking\": {{\"k\": {}, \"candidates\": {}, \"count\": {}, \"hr\": {}, "
                   "\"ndcg\": {}",
                   r.ranking.k, r.ranking.candidates, r.ranking.ranked, Num(r.ranking.hr),
                   Num(r.ranking.ndcg));
    for (auto [name, st] : {std::pair{"warm", &r.ranking.warm}, {"cold", &r.ranking.cold}})
      fmt::format_to(app, ", \"{}\": {{\"count\": {}, \"hr\": {}, \"ndcg\": {}}}", name, st->count,
                     Num(st->hr), Num(st->ndcg));
    if (!r.ranking.baselines.empty()) {
      fmt::format_to(app, ",\n    \"baselines\": {{");
      for (size_t b = 0; b < r.ranking.baselines.size(); ++b) {
        const RankingReport::Baseline& rb = r.ranking.baselines[b];
        fmt::format_to(app, "{}\n      \"{}\": {{\"hr\": {}, \"ndcg\": {}", b ? "," : "", rb.name,
                       Num(rb.all.hr), Num(rb.all.ndcg));
        for (auto [name, st] : {std::pair{"warm", &rb.warm}, {"cold", &rb.cold}})
          fmt::format_to(app, ", \"{}\": {{\"count\": {}, \"hr\": {}, \"ndcg\": {}}}", name,
                         st->count, Num(st->hr), Num(st->ndcg));
        fmt::format_to(app, "}}");
      }
      fmt::format_to(app, "}}");
    }
    fmt::format_to(app, "}},\n");
  }
  if (!r.baselines.empty()) {
    fmt::format_to(app, "  \"baselines\": {{");
    for (size_t b = 0; b < r.baselines.size(); ++b) {
      fmt::format_to(app, "{}\n    \"{}\": {{", b ? "," : "", r.baselines[b].name);
      bool first_task = true;
      for (Task t : learner::kAllTasks) {
        const TaskReport& tr = r.baselines[b].tasks[int(t)];
        if (tr.count == 0) continue;
        fmt::format_to(app, "{}\"{}\": ", first_task ? "" : ", ", learner::TaskName(t));
        first_task = false;
        if (t == Task::kRating)
          fmt::format_to(app,
                         "{{\"mae\": {}, \"rmse\": {}, \"last10\": {{\"mae\": {}, \"rmse\": {}}}}}",
                         Num(tr.mae), Num(tr.rmse), Num(tr.last10_mae), Num(tr.last10_rmse));
        else
          fmt::format_to(
              app, "{{\"auc\": {}, \"logloss\": {}, \"last10\": {{\"auc\": {}, \"logloss\": {}}}}}",
              Num(tr.auc), Num(tr.logloss), Num(tr.last10_auc), Num(tr.last10_logloss));
      }
      fmt::format_to(app, "}}");
    }
    fmt::format_to(app, "\n  }},\n");
  }
  fmt::format_to(app, "  \"task_weights\": {{\"click\": {}, \"purchase\": {}, \"rating\": {}}}",
                 Num(r.task_weights[0]), Num(r.task_weights[1]), Num(r.task_weights[2]));
  if (!r.weight_history.empty()) {
    fmt::format_to(app, ",\n  \"task_weights_history\": [");
    for (size_t i = 0; i < r.weight_history.size(); ++i) {
      const WeightSample& s = r.weight_history[i];
      fmt::format_to(
          app, "{}\n    {{\"events\": {}, \"click\": {}, \"purchase\": {}, \"rating\": {}}}",
          i ? "," : "", s.events, Num(s.weights[0]), Num(s.weights[1]), Num(s.weights[2]));
    }
    fmt::format_to(app, "\n  ]");
  }
  bool any_cold = false;
  for (const TaskReport& tr : r.cold) any_cold |= tr.count > 0;
  if (any_cold) {
    fmt::format_to(app, ",\n  \"cold_start\": {{\"item_events_below\": {}", r.cold_item_events);
    for (Task t : learner::kAllTasks) {
      const TaskReport& tr = r.cold[int(t)];
      if (tr.count == 0) continue;
      if (t == Task::kRating)
        fmt::format_to(app, ", \"{}\": {{\"count\": {}, \"mae\": {}, \"rmse\": {}}}",
                       learner::TaskName(t), tr.count, Num(tr.mae), Num(tr.rmse));
      else
        fmt::format_to(app, ", \"{}\": {{\"count\": {}, \"auc\": {}, \"logloss\": {}}}",
                       learner::TaskName(t), tr.count, Num(tr.auc), Num(tr.logloss));
    }
    fmt::format_to(app, "}}");
  }
  // Extension: the model's size at the end (memory: expiry, admission).
  fmt::format_to(app,
                 ",\n  \"model\": {{\"users\": {}, \"items\": {}, \"features\": {}, "
                 "\"user_rows_allocated\": {}, \"expired_users\": {}, \"expired_items\": {}, "
                 "\"expired_features\": {}, \"refused_user_events\": {}, "
                 "\"refused_item_events\": {}, \"model_bytes\": {}, \"memory_limit_bytes\": {}, "
                 "\"evicted_users\": {}, \"reloaded_users\": {}}}",
                 r.model.users, r.model.items, r.model.features, r.model.user_rows_allocated,
                 r.model.expired_users, r.model.expired_items, r.model.expired_features,
                 r.model.not_admitted_users, r.model.not_admitted_items, r.model.model_bytes,
                 r.model.memory_limit_bytes, r.model.users_evicted, r.model.users_reloaded);
  // Extension: several trainers (`--trainers N`, issue #31).
  if (r.trainers > 1)
    fmt::format_to(app,
                   ",\n  \"trainers\": {{\"count\": {}, \"exchange_events\": {}, "
                   "\"follow_events\": {}, "
                   "\"exchanges\": {}, \"exchanged_rows\": {}, \"sent_bytes_per_event\": {:.1f}, "
                   "\"followed_bytes_per_event\": {:.1f}}}",
                   r.trainers, r.exchange_events, r.follow_events, r.exchanges, r.exchanged_rows,
                   r.sent_bytes_per_event, r.followed_bytes_per_event);
  fmt::format_to(app, "\n}}");
  return fmt::to_string(out);
}

std::string ReportSummary(const EvalReport& r) {
  fmt::memory_buffer out;
  auto app = fmt::appender(out);
  auto f4 = [](double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : "n/a"; };
  fmt::format_to(app, "events    {} in {:.2f} s ({:.0f} events/s), rejected {}", r.events,
                 r.seconds, r.events_per_second, r.rejected);
  if (r.rejected > 0) {
    std::string reasons;
    for (ingest::RejectReason reason : ingest::kAllRejectReasons) {
      uint64_t c = r.rejected_by_reason[size_t(reason)];
      if (c == 0) continue;
      reasons +=
          fmt::format("{}{} {}", reasons.empty() ? "" : ", ", ingest::RejectReasonName(reason), c);
    }
    fmt::format_to(app, " ({})", reasons);
  }
  fmt::format_to(app, "\n");
  if (r.trainers > 1)
    fmt::format_to(app,
                   "trainers  {} sharing one model, exchanging every {} events each ({} exchanges, "
                   "{:.1f} bytes/event sent to owners, {:.1f} followed)\n",
                   r.trainers, r.exchange_events, r.exchanges, r.sent_bytes_per_event,
                   r.followed_bytes_per_event);
  for (Task t : learner::kAllTasks) {
    const TaskReport& tr = r.tasks[int(t)];
    if (tr.count == 0) continue;
    const bool rating = t == Task::kRating;
    const char* m1 = rating ? "mae" : "auc";
    const char* m2 = rating ? "rmse" : "logloss";
    const double v1 = rating ? tr.mae : tr.auc, v2 = rating ? tr.rmse : tr.logloss;
    const double l1 = rating ? tr.last10_mae : tr.last10_auc;
    const double l2 = rating ? tr.last10_rmse : tr.last10_logloss;
    const double b1 = rating ? tr.bayes_mae : tr.bayes_auc;
    const double b2 = rating ? tr.bayes_rmse : tr.bayes_logloss;
    std::string bayes1 = tr.has_bayes ? ", bayes " + f4(b1) : "";
    std::string bayes2 = tr.has_bayes ? ", bayes " + f4(b2) : "";
    fmt::format_to(app, "{:<9} {:>9} events  {} {} (last10 {}{})  {} {} (last10 {}{})",
                   learner::TaskName(t), tr.count, m1, f4(v1), f4(l1), bayes1, m2, f4(v2), f4(l2),
                   bayes2);
    if (!rating)
      fmt::format_to(app, "  precision {} recall {} f1 {}", f4(tr.precision), f4(tr.recall),
                     f4(tr.f1));
    fmt::format_to(app, "\n");
  }
  if (r.has_ranking)
    fmt::format_to(app,
                   "ranking   HR@{} {}  NDCG@{} {}  ({} events ranked among {} candidates; warm "
                   "{} events HR {}, cold {} events HR {})\n",
                   r.ranking.k, f4(r.ranking.hr), r.ranking.k, f4(r.ranking.ndcg), r.ranking.ranked,
                   r.ranking.candidates, r.ranking.warm.count, f4(r.ranking.warm.hr),
                   r.ranking.cold.count, f4(r.ranking.cold.hr));
  if (r.has_ranking && r.ranking.ranked == 0)
    fmt::format_to(
        app,
        "ranking   no event ranked: an event is ranked only when its stratum (items seen "
        "so far, or not seen yet) holds {} other items; try a smaller --candidates\n",
        r.ranking.candidates);
  for (const RankingReport::Baseline& b : r.ranking.baselines)
    fmt::format_to(app, "ranking   {:<22} HR@{} {}  NDCG@{} {}  (warm HR {}, cold HR {})\n", b.name,
                   r.ranking.k, f4(b.all.hr), r.ranking.k, f4(b.all.ndcg), f4(b.warm.hr),
                   f4(b.cold.hr));
  for (const BaselineReport& b : r.baselines) {
    fmt::format_to(app, "baseline  {:<12}", b.name);
    for (Task t : learner::kAllTasks) {
      const TaskReport& tr = b.tasks[int(t)];
      if (tr.count == 0) continue;
      if (t == Task::kRating)
        fmt::format_to(app, "  {} mae {} (last10 {})", learner::TaskName(t), f4(tr.mae),
                       f4(tr.last10_mae));
      else
        fmt::format_to(app, "  {} auc {} (last10 {})", learner::TaskName(t), f4(tr.auc),
                       f4(tr.last10_auc));
    }
    fmt::format_to(app, "\n");
  }
  if (r.cold[0].count + r.cold[2].count > 0)
    fmt::format_to(app,
                   "cold      events of items with < {} earlier events: click auc {} ({} events), "
                   "rating mae {} ({} events){}\n",
                   r.cold_item_events, f4(r.cold[0].auc), r.cold[0].count, f4(r.cold[2].mae),
                   r.cold[2].count,
                   r.pretrained_items > 0
                       ? fmt::format("; {} items with pretrained vectors", r.pretrained_items)
                       : "");
  fmt::format_to(app, "weights   click {:.3f}  purchase {:.3f}  rating {:.3f}\n", r.task_weights[0],
                 r.task_weights[1], r.task_weights[2]);
  return fmt::to_string(out);
}

}  // namespace recstream::eval
