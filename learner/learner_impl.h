// Private to recstream_learner: the state behind Learner, shared by
// learner.cc (options, training, stats), learner_scoring.cc (Score,
// ScoreMany, Recommend) and learner_snapshot.cc (snapshots, pretrained
// import). Not installed, not included outside learner/.
#pragma once

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/enumerable_thread_specific.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_scheduler_observer.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <queue>
#include <shared_mutex>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "learner/embedding_table.h"
#include "learner/feature_lists.h"
#include "learner/learner.h"
#include "learner/loss.h"
#include "learner/model_math.h"
#include "learner/optimizer.h"
#include "learner/pack.h"
#include "learner/task_weighting.h"

namespace recstream::learner {

namespace internal {

constexpr int kAucBins = 2048;
constexpr double kAucLogitRange = 16.0;

// Prefetches every cache line of [p, p + bytes) (for writing when
// `kWrite`): a row's values (and accumulators) before a step reads them.
template <bool kWrite = false>
inline void PrefetchBytes(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, kWrite);
  __builtin_prefetch(c + bytes - 1, kWrite);
}

inline int AucBin(float p) {
  double pc = std::clamp<double>(p, 1e-7, 1 - 1e-7);
  double logit = std::log(pc / (1 - pc));
  int b = int((logit + kAucLogitRange) / (2 * kAucLogitRange) * kAucBins);
  return std::clamp(b, 0, kAucBins - 1);
}

// Progressive metrics of one task, merged from chunks under a mutex.
struct TaskMetrics {
  double count = 0, loss_sum = 0, abs_sum = 0, sq_sum = 0;
  // Click and purchase, at the decision threshold: true positives, predicted
  // positives, actual positives.
  double true_pos = 0, predicted_pos = 0, actual_pos = 0;
  std::vector<double> pos = std::vector<double>(kAucBins), neg = std::vector<double>(kAucBins);

  double Auc() const {
    double p_total = 0, n_total = 0, area = 0, neg_below = 0;
    for (int b = 0; b < kAucBins; ++b) {
      area += pos[b] * (neg_below + 0.5 * neg[b]);
      neg_below += neg[b];
      p_total += pos[b];
      n_total += neg[b];
    }
    return p_total > 0 && n_total > 0 ? area / (p_total * n_total) : 0.0;
  }
};

// One progressive prediction's contribution to TaskMetrics, computed by the
// trainer and added by MergeMetrics at the end of its chunk.
struct Observation {
  Task task;
  bool positive;   // click and purchase: label > 0.5
  bool predicted;  // click and purchase: prediction >= the decision threshold
  int bin;         // click and purchase: AucBin(prediction)
  double value;    // click and purchase: log loss; rating: prediction - label

  static Observation Of(Task task, float pred, float label, float threshold) {
    if (task == Task::kRating) return {task, false, false, 0, double(pred) - label};
    const double p = std::clamp<double>(pred, 1e-7, 1 - 1e-7);
    return {task, label > 0.5f, pred >= threshold, AucBin(pred),
            -(label * std::log(p) + (1 - label) * std::log(1 - p))};
  }
};

}  // namespace internal

using internal::AucBin;
using internal::kAucBins;
using internal::Observation;
using internal::PrefetchBytes;
using internal::TaskMetrics;

// Training at a lower CPU priority (LearnerOptions::train_nice), Linux
// thread nice values. kNoNice: nothing to do or restore.
constexpr int kNoNice = INT_MIN;
// The nice value training threads get: the creating thread's + train_nice,
// at most 19; kNoNice when train_nice is 0.
int TrainNiceTarget(int train_nice);
// Sets the calling thread's nice value to `target` when it is below it;
// returns the previous value, kNoNice when it left it alone.
int LowerThreadPriority(int target);
void RestoreThreadPriority(int saved);

// Lowers the calling thread's priority for its lifetime (a Train call).
class ThreadNiceScope {
 public:
  explicit ThreadNiceScope(int target) : saved_(LowerThreadPriority(target)) {}
  ~ThreadNiceScope() { RestoreThreadPriority(saved_); }
  ThreadNiceScope(const ThreadNiceScope&) = delete;
  ThreadNiceScope& operator=(const ThreadNiceScope&) = delete;

 private:
  const int saved_;
};

// Lowers the priority of every TBB worker while it works in the training
// arena, and restores it (when permitted) when the worker leaves.
class TrainNiceObserver : public tbb::task_scheduler_observer {
 public:
  TrainNiceObserver(tbb::task_arena& arena, int target)
      : tbb::task_scheduler_observer(arena), target_(target) {
    observe(true);
  }
  ~TrainNiceObserver() override { observe(false); }
  void on_scheduler_entry(bool is_worker) override;
  void on_scheduler_exit(bool is_worker) override;

 private:
  const int target_;
};

// A trainer thread's private copies of the side-feature rows (one table's)
// that it updates during one parallel Train call. Side features are few and
// every event updates some (age=30, category=c7): written in place by both
// threads, each of their rows moved between the cores at almost every event
// (perf: Gather, AdagradAvx2 and UpdateRows took 0.2 us more per event than
// in a learner with the model to itself). A staged row is copied in at its
// first use in the call, trained in the copy, and its change (values and
// accumulators) added to the shared row once, when the call ends: every
// thread's updates land (in-place Hogwild could lose some), and the other
// threads see them from the next call on. Rows past kMaxRows in one call are
// trained in place as before.
struct StagedRows {
  static constexpr uint32_t kNoSlot = UINT32_MAX;
  static constexpr uint32_t kMaxRows = 4096;

  // Rows of `floats` floats (values, then accumulators).
  explicit StagedRows(size_t floats) : floats(floats) {}
  // The slot of `row` (copied in from `table` at its first use), or kNoSlot
  // when kMaxRows rows are staged already.
  uint32_t Stage(const EmbeddingTable& table, uint32_t row);
  // Adds each staged row's change to `table` (marking it dirty first), then
  // forgets every row.
  void Merge(EmbeddingTable& table);
  float* Row(uint32_t slot) { return now.data() + size_t(slot) * floats; }

  const size_t floats;
  std::vector<uint32_t> rows;     // by slot
  std::vector<float> base, now;   // by slot: the row as copied in, as trained
  // Open addressing, row + 1 (0: empty) -> slot; 2 * kMaxRows entries.
  std::vector<std::pair<uint32_t, uint32_t>> index;
  std::vector<uint32_t> used;  // the index entries in use
};

// Per-thread scratch state: buffers, dense gradient accumulators and the
// observations of the current Train call. Never shared between threads
// while Train runs.
struct TrainState {
  explicit TrainState(const ModelShape& shape)
      : fwd(shape),
        fwd2(shape),
        dense_grad(shape.dense_size(), 0.0f),
        pending(shape),
        staged_user(2 * size_t(shape.dim() + kNumTasks)),
        staged_item(2 * size_t(shape.dim() + kNumTasks)),
        du(shape.dim() + 1),
        dv(shape.dim() + 1),
        du2(shape.dim() + 1),
        dv2(shape.dim() + 1) {}
  Forward fwd, fwd2;  // fwd2: the click tower of an ESMM purchase event
  std::vector<float> dense_grad;
  ExpertGradients pending;  // part of dense_grad, added at the chunk's end
  bool dense_touched = false;
  TaskChunkStats chunk;
  std::vector<Observation> observations;  // merged by MergeMetrics
  // Row and feature rows of the example being learned.
  std::vector<uint32_t> user_rows, item_rows;
  // Rows of every event of the chunk (ResolveChunk): event i's user rows
  // are chunk_rows[chunk_begin[2i], chunk_begin[2i + 1]), its item rows
  // follow up to chunk_begin[2i + 2].
  std::vector<uint32_t> chunk_rows, chunk_begin;
  // ResolveChunk's first pass: event i's user row, then its item row.
  std::vector<uint32_t> chunk_main;
  // Parallel Train only: the staged slot of each chunk_rows entry (kNoSlot:
  // the shared row), and of user_rows and item_rows; empty slot vectors mean
  // shared rows throughout.
  StagedRows staged_user, staged_item;
  std::vector<uint32_t> chunk_slots, user_slots, item_slots;
  std::vector<float> du, dv, du2, dv2, dp;
  // The dense parameters the chunk's steps read (BeginChunk): the shared
  // block itself on one thread, this copy of it when chunks run in parallel.
  std::vector<float> dense_copy;
  const float* dense_now = nullptr;
  uint64_t refused = 0;
  uint64_t rng = 0x9e3779b97f4a7c15ULL;  // negative sampling
};

struct Learner::Impl {
  static constexpr bool kLineAligned = true;
  explicit Impl(const LearnerOptions& o)
      : options(o),
        shape(o),
        width(o.dim + kNumTasks),
        lr_bias(o.lr_bias > 0 ? o.lr_bias : o.lr_embedding),
        row_optimizer(o.embedding_optimizer, o.l2, o.grad_clip),
        dense_optimizer(o),
        losses(o),
        users("user", width, o.dim, o.init_scale, o.adagrad_init, o.seed),
        // Items and side features: rows every trainer thread updates, one
        // cache line each (EmbeddingTable's line_aligned).
        items("item", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 1, kLineAligned),
        user_features("user_feature", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 2,
                      kLineAligned),
        item_features("item_feature", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 3,
                      kLineAligned),
        pretrained(o.pretrained_dim > 0
                       ? std::make_unique<EmbeddingTable>("item_pretrained", o.pretrained_dim, 0,
                                                          o.init_scale, o.adagrad_init, o.seed + 4)
                       : nullptr),
        weighting(o),
        threads(o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency())),
        arena(threads),
        nice_target(TrainNiceTarget(o.train_nice)),
        nice_observer(nice_target != kNoNice
                          ? std::make_unique<TrainNiceObserver>(arena, nice_target)
                          : nullptr),
        recent(size_t(o.negatives > 0 ? o.negative_window : 1)),
        replay_pairs(size_t(o.replay > 0 ? o.replay_window : 1)),
        replay_labels(size_t(o.replay > 0 ? o.replay_window : 1)) {
    dense.resize(shape.dense_size());
    dense_accum.assign(shape.dense_size(), 0.0f);
    if (adam()) dense_m.assign(shape.dense_size(), 0.0f);
    shape.Init(dense.data(), o.seed);
    for (auto& m : metrics) m = TaskMetrics();
    for (auto& l : learned) l.store(0);
    for (auto& r : recent) r.store(EmbeddingTable::kNoRow, std::memory_order_relaxed);
    for (auto& r : replay_pairs) r.store(kNoPair, std::memory_order_relaxed);
  }

  bool adam() const { return dense_optimizer.needs_moments(); }

  EmbeddingTable* table(std::string_view name) {
    for (EmbeddingTable* t : {&users, &items, &user_features, &item_features})
      if (t->name() == name) return t;
    if (pretrained && pretrained->name() == name) return pretrained.get();
    return nullptr;
  }

  std::vector<EmbeddingTable*> all_tables() {
    std::vector<EmbeddingTable*> t = {&users, &items, &user_features, &item_features};
    if (pretrained) t.push_back(pretrained.get());
    return t;
  }

  // The pretrained row of an item row, kNoRow when it has none (or when
  // pretrained vectors are off).
  uint32_t PretrainedRow(uint32_t item_row) const {
    if (!pretrained || item_row == EmbeddingTable::kNoRow) return EmbeddingTable::kNoRow;
    return pretrained->Find(items.key(item_row));
  }

  // Appends to *rows row r of `main`, then its feature rows (the event's,
  // which become the row's list, or the row's list when the event has none).
  void Rows(uint32_t r, const std::vector<std::string>& features, EmbeddingTable& main,
            EmbeddingTable& side, FeatureLists& lists, std::vector<uint32_t>* rows);
  // Sums the row and its feature rows into vec (d floats) and the biases
  // into bias (kNumTasks floats).
  void Gather(const EmbeddingTable& main, const EmbeddingTable& side,
              const std::vector<uint32_t>& rows, float* vec, float* bias) const;
  // Training's Gather: feature row i is staged->Row(slots[i]) where a slot
  // is given (empty slots: every row shared, as above).
  void Gather(const EmbeddingTable& main, const EmbeddingTable& side,
              const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
              StagedRows* staged, float* vec, float* bias) const;
  // The row that training reads and writes for rows[i].
  float* TrainRow(const EmbeddingTable& main, const EmbeddingTable& side,
                  const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
                  StagedRows* staged, size_t i) const;
  // Rows() of every event's user and item into s->chunk_rows; with `stage`,
  // their feature rows' staged slots into s->chunk_slots.
  void ResolveChunk(std::span<const Event> events, bool stage, TrainState* s);
  // Prefetches the user and item rows of the chunk's event i.
  void PrefetchRows(const TrainState& s, size_t i) const;
  // Predicts, then learns, one example from s->user_rows and s->item_rows.
  // Returns the prediction made before learning.
  float Learn(Task task, float label, TrainState* s);
  // Learns event e from its rows in s->user_rows and s->item_rows.
  void TrainOne(const Event& e, TrainState* s, Prediction* before);
  // Sets s->dense_now for the chunk about to be trained (a copy of the
  // dense parameters when `parallel`).
  void BeginChunk(bool parallel, TrainState* s);
  // Dense update, task weighting, progressive metrics, per chunk.
  void FinishChunk(TrainState* s);
  // Adds the chunk's progressive metrics, learned and refused counts of `s`
  // to the learner's (under metrics_mu: a short lock per chunk, taken by the
  // trainers in parallel rather than by one of them after the call while
  // the others wait).
  void MergeMetrics(TrainState* s);
  void ApplyRow(float* row, const float* grad, int n, int offset, float lr);
  void UpdateRows(EmbeddingTable& main, EmbeddingTable& side, const std::vector<uint32_t>& rows,
                  const std::vector<uint32_t>& slots, StagedRows* staged, const float* grad,
                  int t);
  // After a parallel Train call: every thread's staged rows into the tables.
  void MergeStaged();
  void ScoreItems(std::string_view user, const std::vector<uint32_t>& item_rows,
                  std::vector<Prediction>* out) const;

  const LearnerOptions options;
  const ModelShape shape;
  const int width;
  const float lr_bias;
  const RowOptimizer row_optimizer;
  const DenseOptimizer dense_optimizer;
  const TaskLosses losses;
  EmbeddingTable users, items, user_features, item_features;
  // Pretrained item vectors keyed by item id; null when pretrained_dim = 0.
  std::unique_ptr<EmbeddingTable> pretrained;
  FeatureLists user_lists, item_lists;
  // Dense parameters and their optimizer state (Adagrad accumulators or
  // Adam's second moments; Adam's first moments). Written by trainers at
  // chunk ends without a lock (Hogwild), read by scorers.
  std::vector<float> dense, dense_accum, dense_m;
  std::atomic<uint64_t> dense_steps{0};  // Adam bias correction
  TaskWeighting weighting;
  const int threads;
  tbb::task_arena arena;
  // Nice value of training threads (kNoNice: train_nice = 0) and the
  // observer that applies it to TBB workers; after `arena`, which it watches.
  const int nice_target;
  std::unique_ptr<TrainNiceObserver> nice_observer;
  tbb::enumerable_thread_specific<TrainState> states{[this] { return TrainState(shape); }};

  // Negative sampling: a ring of recently seen item rows.
  std::vector<std::atomic<uint32_t>> recent;
  std::atomic<uint64_t> recent_next{0};
  // Experience replay: a ring of (user row << 32 | item row) and
  // (task << 32 | label bits) of recent events.
  static constexpr uint64_t kNoPair = ~uint64_t{0};
  std::vector<std::atomic<uint64_t>> replay_pairs, replay_labels;
  std::atomic<uint64_t> replay_next{0};

  std::array<std::atomic<uint64_t>, kNumTasks> learned;
  std::atomic<uint64_t> refused{0};

  mutable std::mutex metrics_mu;
  std::array<TaskMetrics, kNumTasks> metrics;  // guarded by metrics_mu, merged per Train call

  mutable std::shared_mutex purchases_mu;
  // user row -> item rows purchased; guarded by purchases_mu.
  std::unordered_map<uint32_t, std::unordered_set<uint32_t>> purchases;
  std::vector<std::pair<uint32_t, uint32_t>> new_purchases;  // since last snapshot

  // A snapshot between BeginSnapshot and FinishSnapshot (learner_snapshot.cc):
  // what BeginSnapshot listed, turned into ids and values by FinishSnapshot.
  struct PendingSnapshot {
    bool active = false;
    ModelSnapshot* out = nullptr;             // the one being filled
    std::vector<std::vector<uint32_t>> rows;  // per table of all_tables(), in order
    struct Lists {
      std::vector<uint32_t> rows;  // owner rows whose lists changed
    };
    std::array<Lists, 2> lists;  // users, items
    std::vector<std::pair<uint32_t, uint32_t>> purchases;
    std::vector<std::pair<std::string, std::string>> retired_purchases;  // freed by Finish
  };
  PendingSnapshot pending_snapshot;
  // Sets the feature lists of a checked block (see ApplyLists) in [begin,
  // end); safe from several threads for different owners.
  void SetLists(const FeatureListDelta& delta, size_t begin, size_t end);

  // ---- Scoring cache (learner_scoring.cc) ----
  // Recommend scores every item from a panel of gathered item vectors (item
  // row + feature rows + projection, and biases) in kScoreLanes blocks,
  // rebuilt when the model has changed: at once for small catalogues, by a
  // background thread otherwise (see RecommendCache). Declared last so that
  // it is destroyed first, stopping that thread before the tables go.
  struct ItemPanel;
  class RecommendCache;
  // The user's side of a request: UserContext and biases, computed once.
  struct UserSide {
    explicit UserSide(const ModelShape& s) : ctx(s) {}
    UserContext ctx;
    std::array<float, kNumTasks> bias{};
    uint32_t row = EmbeddingTable::kNoRow;
  };
  struct ScoredItem {
    float score;
    uint32_t row;
    Prediction prediction;
    // Best first; ties go to the older item (smaller row), so that the
    // result does not depend on how a scan was split.
    static bool Better(const ScoredItem& a, const ScoredItem& b) {
      return a.score > b.score || (a.score == b.score && a.row < b.row);
    }
  };
  void PrepareUserSide(std::string_view user, UserSide* side) const;
  // ScoreItems for a prepared user.
  void ScoreRows(const UserSide& side, const std::vector<uint32_t>& item_rows,
                 std::vector<Prediction>* out) const;
  // rows[i] = items.Find(keys[i]), overlapping the lookups' cache misses
  // (and starting to load each found row's feature list).
  void FindItems(std::span<const std::string> keys, std::vector<uint32_t>* rows) const;
  // A hint that item `row` (kNoRow: nothing) is gathered soon.
  void PrefetchItem(uint32_t row) const;
  // Gathers item `row` (kNoRow: zeros) into lane `lane` of `block`; `rows`
  // and `v` (width floats) are scratch.
  void GatherItem(uint32_t row, int lane, std::vector<uint32_t>* rows, float* v,
                  float* block) const;
  // The prediction of lane `lane` from ScoreBlock's y and the block's biases.
  Prediction FinishLane(const float* y, int lane, const UserSide& side, const float* block) const;
  // The best k of the items in blocks [begin, end) of `blocks` (item row of
  // lane i of block b: b * kScoreLanes + i + first_row, valid below
  // end_row), leaving out `excluded` (sorted rows); best first into *out.
  void TopKOfBlocks(const UserSide& side, const float* blocks, size_t begin, size_t end,
                    uint32_t first_row, uint32_t end_row, int k,
                    const std::vector<uint32_t>& excluded, const Blend& blend,
                    std::vector<ScoredItem>* out) const;
  struct RecommendCacheDeleter {
    void operator()(RecommendCache* cache) const;
  };
  static RecommendCache* NewRecommendCache(const Impl& impl);
  std::unique_ptr<RecommendCache, RecommendCacheDeleter> recommend_cache{NewRecommendCache(*this)};
};

}  // namespace recstream::learner
