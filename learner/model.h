// Model: the learner's shared state, and the only place that holds it: the
// embedding tables (users, items, side features, pretrained vectors), the
// feature lists, the dense block with its optimizer state, the task
// weighting, the purchases, the counters and the progressive metrics.
//
// Ownership. Learner owns one Model; its Trainer writes it and its Scorer
// reads it, each through a reference. Snapshot export and apply
// (learner_snapshot.cc) work on it directly.
//
// Thread safety. Rows and dense values are written by trainer threads
// without locks and read by scorers meanwhile (Hogwild: a reader may mix
// values from just before and just after an update, never a torn float);
// the tables' own contract (embedding_table.h) covers lookups and creation.
// `metrics` is guarded by metrics_mu, `purchases` and `new_purchases` by
// purchases_mu; the atomics need no lock. pending_snapshot belongs to the
// training thread between BeginSnapshot and FinishSnapshot.
#pragma once

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "learner/admission.h"
#include "learner/embedding_table.h"
#include "learner/feature_lists.h"
#include "learner/history.h"
#include "learner/learner.h"
#include "learner/model_math.h"
#include "learner/residency.h"
#include "learner/sharing.h"
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

// Sums a user's or item's rows into vec (dim floats) and their per-task
// biases into bias (kNumTasks floats): row_of(0) is the main row, then its
// `count - 1` feature rows. Scoring and training both gather through this,
// so a pair's vector is the same sum in the same order everywhere.
template <typename RowOf>
inline void SumRows(int dim, size_t count, RowOf row_of, float* vec, float* bias) {
  const float* r0 = row_of(0);
  for (int k = 0; k < dim; ++k) vec[k] = r0[k];
  for (int t = 0; t < kNumTasks; ++t) bias[t] = r0[dim + t];
  for (size_t i = 1; i < count; ++i) {
    const float* r = row_of(i);
    for (int k = 0; k < dim; ++k) vec[k] += r[k];
    for (int t = 0; t < kNumTasks; ++t) bias[t] += r[dim + t];
  }
}

// A user's history as one training or scoring step reads it: the items,
// oldest first, and each item's feature rows.
struct HistoryView {
  std::vector<uint32_t> items;
  std::vector<uint32_t> feature_begin;  // items.size() + 1 offsets into features
  std::vector<uint32_t> features;
  bool empty() const { return items.empty(); }
};

struct Model {
  static constexpr bool kLineAligned = true;
  explicit Model(const LearnerOptions& o);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Adam keeps first moments (dense_m) and a step count.
  bool adam() const {
    return options.dense_optimizer == Optimizer::kAdam ||
           options.dense_optimizer == Optimizer::kAdamW;
  }
  // The table of that name (as in snapshots), null when there is none.
  EmbeddingTable* table(std::string_view name);
  std::vector<EmbeddingTable*> all_tables();
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
  // SumRows over rows[0] of `main` and the feature rows rows[1..] of `side`.
  void Gather(const EmbeddingTable& main, const EmbeddingTable& side,
              const std::vector<uint32_t>& rows, float* vec, float* bias) const {
    SumRows(
        options.dim, rows.size(),
        [&](size_t i) { return i == 0 ? main.Row(rows[0]) : side.Row(rows[i]); }, vec, bias);
  }
  // Sets the feature lists (or histories) of a checked block (see
  // Learner::ApplyLists) in [begin, end); safe from several threads for
  // different owners.
  void SetLists(const FeatureListDelta& delta, size_t begin, size_t end);
  // Sets the negative ring from a snapshot's "negative_ring" lists: "next"
  // (the ring's next position and its size), "chunk<c>" (the items of its
  // slots from c * kRingChunk on, "" for an empty slot; a snapshot holds the
  // chunks changed since the one before), or, from builds before
  // 2026-12-07, one list of the whole ring (its next position, then its
  // slots). Slots not in `delta` stay as they are. Then the counts are the
  // ring's, as Recount would make them: for a delta that follows the last
  // one (a replica's next version), by counting again only the slots it
  // brings and those whose entries aged out of the window or its quarter.
  void SetRing(const FeatureListDelta& delta);

  // True when task t is learned as implicit feedback now
  // (LearnerOptions::feedback): never for rating; with auto, until the
  // task's first label 0.
  bool implicit(int t) const {
    if (t == int(Task::kRating) || options.feedback == Feedback::kExplicit) return false;
    return options.feedback == Feedback::kImplicit ||
           !saw_negative[t].load(std::memory_order_relaxed);
  }
  bool any_implicit() const {
    return implicit(int(Task::kClick)) || implicit(int(Task::kPurchase));
  }
  // Reads the history of user row `user` into *view and adds to vec (dim
  // floats) the mean of its items' vectors (each gathered like any item:
  // its row and feature rows, summed oldest item first); nothing when it
  // has none. `acc` (dim floats) is scratch.
  void AddHistory(uint32_t user, HistoryView* view, float* acc, float* vec) const;
  // Implicit task t's history-match logit of a candidate (item row `row`,
  // kNoRow for an unknown item, with feature rows [f, f + nf)): for each
  // history position p (0: the user's latest item), the learned weight of
  // "the candidate is that item" and of "the candidate shares a feature
  // with it". With `hits` (2 * history floats), which weights apply: 1 at
  // p (same item) and at history + p (shared feature), else 0. With `own`,
  // whether the candidate is one of the history's items.
  float HistoryMatch(int t, const HistoryView& view, uint32_t row, const uint32_t* f, size_t nf,
                     float* hits = nullptr, bool* own = nullptr) const;

  const LearnerOptions options;
  const ModelShape shape;
  const int width;  // floats of a row's values: dim, then one bias per task
  EmbeddingTable users, items, user_features, item_features;
  // Pretrained item vectors keyed by item id; null when pretrained_dim = 0.
  std::unique_ptr<EmbeddingTable> pretrained;
  FeatureLists user_lists, item_lists;
  // Each user's latest items (LearnerOptions::history), by user row.
  Histories histories;
  // Negative sampling: a ring of recently seen item rows, and how often
  // each item (by a hash of its id) is in it, written after each Train call
  // in event order (trainer.cc). With options.negatives > 0
  // every event's item enters the ring, otherwise (implicit feedback) the
  // items of positive click and purchase events. Negatives are drawn from
  // the newest `window` entries (options.negative_window). With implicit
  // tasks the ring holds kRingWindows windows, whose count (LongCount) is
  // the popularity prior's longer horizon. Part of snapshots (as
  // "negative_ring" lists: the ring's next position and size, then its
  // chunks of kRingChunk slots, only those written since the last snapshot),
  // so that a restored model samples and scores as the original would have.
  // An entry is the item's row << 32 | IdHash(its id); kNoEntry: empty.
  // Counts are by the id's hash, not the row, so that they do not depend on
  // the order in which a restore creates rows.
  static constexpr int kCountBits = 20;
  static constexpr int kRingWindows = 8;
  static constexpr size_t kRingChunk = 1024;
  static constexpr uint64_t kNoEntry = ~uint64_t{0};
  static uint32_t IdHash(std::string_view id) {
    uint64_t h = 1469598103934665603ULL;  // FNV-1a, then a finaliser
    for (unsigned char c : id) h = (h ^ c) * 1099511628211ULL;
    h = (h ^ (h >> 33)) * 0xff51afd7ed558ccdULL;
    return uint32_t((h ^ (h >> 33)) >> 32);
  }
  // Occurrences among the newest `window` entries.
  std::atomic<uint32_t>& RecentCount(uint32_t hash) {
    return recent_count[hash >> (32 - kCountBits)];
  }
  const std::atomic<uint32_t>& RecentCount(uint32_t hash) const {
    return recent_count[hash >> (32 - kCountBits)];
  }
  // Occurrences among all of the ring's entries.
  std::atomic<uint32_t>& LongCount(uint32_t hash) { return long_count[hash >> (32 - kCountBits)]; }
  const std::atomic<uint32_t>& LongCount(uint32_t hash) const {
    return long_count[hash >> (32 - kCountBits)];
  }
  // The newest quarter of the window (its last window / 4 positions)
  // is counted again, by the top quarter_bits bits of the same hashes: a
  // table of at least 64 counters per entry of the quarter (few items share
  // one), at most 2^kCountBits.
  static int QuarterBits(size_t window) {
    int bits = 12;
    while (bits < kCountBits && (size_t(1) << bits) < window / 4 * 64) ++bits;
    return bits;
  }
  std::atomic<uint32_t>& QuarterCount(uint32_t hash) {
    return quarter_count[hash >> (32 - quarter_bits)];
  }
  const std::atomic<uint32_t>& QuarterCount(uint32_t hash) const {
    return quarter_count[hash >> (32 - quarter_bits)];
  }
  uint64_t quarter() const { return window / 4; }
  // An item's recent popularity, log(1 + c), 0 without a ring, with
  //   c = (1 - w) (n + n') + w * 1.25 N W / T:
  // n its occurrences among the newest W (the window) entries of the ring,
  // n' those among the window's newest quarter, N those among all T entries
  // of the ring (kRingWindows windows), scaled to the window, and w the
  // share of the window's entries that repeat an item already in it
  // (1 - distinct items / W), all by its id's hash. Implicit tasks add it to
  // their logit as a prior, so that the model learns what popularity does
  // not explain and follows a shop's drifting popularity as it changes
  // (item biases, learned from an item's few events, cannot). Counting the
  // newest views twice weighs them as a recency-decayed count would, and
  // ranks the items a shop shows now above those of a while ago that one
  // window's count ties with them. Where the window's items repeat (a
  // stable catalogue: categories, a fixed assortment) one window holds only
  // a few events of each, and the longer count estimates popularity with
  // less noise; where new items keep coming (w near 0) the window alone
  // follows them. Every count is an integer kept from the ring alone, so
  // that a restore (which rebuilds them from the ring) scores
  // bit-identically.
  float RecentPopularity(uint32_t hash) const {
    if (recent_count.empty()) return 0.0f;
    return Prior(hash, RecentCount(hash).load(std::memory_order_relaxed));
  }
  // The same for an item whose window count n (RecentCount) was read
  // already; only with a ring (recent_count not empty).
  float Prior(uint32_t hash, uint32_t n) const {
    const uint32_t recent = n + QuarterCount(hash).load(std::memory_order_relaxed);
    // Entries (not empty slots) counted in the window, its quarter, the ring.
    const uint32_t in_window = counted[0].load(std::memory_order_relaxed);
    const uint32_t distinct = recent_distinct.load(std::memory_order_relaxed);
    if (distinct >= in_window || long_count.empty()) return Log1p(recent);
    const float w = 1.0f - float(distinct) / float(in_window);
    const float scale = float(in_window + counted[1].load(std::memory_order_relaxed)) /
                        float(std::max<uint32_t>(1, counted[2].load(std::memory_order_relaxed)));
    const float c = (1.0f - w) * float(recent) +
                    w * scale * float(LongCount(hash).load(std::memory_order_relaxed));
    return std::log1p(c);
  }
  // log(1 + n) and log(max(n, 1)), from tables for the usual counts.
  static constexpr uint32_t kLogTable = 1u << 16;
  float Log1p(uint32_t n) const { return n < kLogTable ? log_table[n + 1] : std::log1p(float(n)); }
  float LogAtLeast1(uint32_t n) const {
    return n < kLogTable ? log_table[std::max<uint32_t>(n, 1)] : std::log(float(n));
  }
  std::vector<float> log_table;  // log_table[n] = log(n), n in [1, kLogTable]
  float RecentPopularityOfRow(uint32_t item_row) const {
    if (recent_count.empty() || item_row == EmbeddingTable::kNoRow) return 0.0f;
    return RecentPopularity(IdHash(items.key(item_row)));
  }
  // Implicit tasks: a moving average of the logits of their events' items
  // (before learning), subtracted before the sigmoid of a prediction, so
  // that a typical item of a user scores about 0.5 and the best ones stay
  // apart instead of all rounding to 1.0 (the logits themselves only order
  // items, their level is arbitrary). Written by trainers without a lock.
  std::array<float, kNumTasks> implicit_shift{};
  // Puts an item into the ring (and its counts), over the oldest entry.
  // One writer at a time (the training thread: Train's serial part, the
  // exchange, the freeing of rows): the window's and the quarter's counts
  // read the entries that age out of them, which a concurrent push could
  // not have written yet.
  void PushRecent(uint32_t item_row, uint32_t item_hash) {
    const size_t n = recent.size();
    const uint64_t at = recent_next.fetch_add(1, std::memory_order_relaxed);
    const uint64_t old =
        recent[at % n].exchange(uint64_t(item_row) << 32 | item_hash, std::memory_order_relaxed);
    if (recent_count.empty()) return;
    Count(item_hash, 0, +1);
    Count(item_hash, 2, +1);
    if (old != kNoEntry) Count(uint32_t(old), 2, -1);
    // The entry that leaves the window now (still in the ring, or `old`).
    if (at >= window) {
      const uint64_t left =
          window == n ? old : recent[(at - window) % n].load(std::memory_order_relaxed);
      if (left != kNoEntry) Count(uint32_t(left), 0, -1);
    }
    // The entry that leaves the newest quarter now (still in the ring).
    const uint64_t q = quarter();
    if (q == 0) return;
    Count(item_hash, 1, +1);
    if (at >= q) {
      const uint64_t aged = recent[(at - q) % n].load(std::memory_order_relaxed);
      if (aged != kNoEntry) Count(uint32_t(aged), 1, -1);
    }
  }
  // Adds d (+1 or -1) to an entry's count in the window (0), its quarter (1)
  // or the whole ring (2), and to what they count (recent_distinct,
  // counted).
  void Count(uint32_t hash, int which, int d) {
    auto& c = which == 0 ? RecentCount(hash) : which == 1 ? QuarterCount(hash) : LongCount(hash);
    const uint32_t was = c.fetch_add(uint32_t(d), std::memory_order_relaxed);
    counted[which].fetch_add(uint32_t(d), std::memory_order_relaxed);
    if (which == 0 && (d > 0 ? was == 0 : was == 1))
      recent_distinct.fetch_add(uint32_t(d), std::memory_order_relaxed);
  }
  // Adds d (+1 or -1) to the counts an entry of age `age` (0: the newest)
  // is in: the ring's, and the window's and its quarter's when that young.
  void CountEntry(uint64_t v, uint64_t age, int d) {
    Count(uint32_t(v), 2, d);
    if (age < window) Count(uint32_t(v), 0, d);
    if (age < quarter()) Count(uint32_t(v), 1, d);
  }
  // The age of the entry in `slot` (0: the newest) when the next position
  // is `next` (at least 1); at least `next` for a slot never written.
  uint64_t SlotAge(uint64_t next, uint64_t slot) const {
    return (next - 1 + recent.size() - slot) % recent.size();
  }
  // The ring's slot of the newest entries' k-th (0: the newest), k below
  // recent_next.
  size_t RecentSlot(uint64_t next, uint64_t k) const { return (next - 1 - k) % recent.size(); }
  // The ring's slot of what slot j (below min(window, next)) of a ring of
  // one window would hold: negatives are drawn by the window's slots, so
  // that they do not depend on how many windows the ring keeps.
  size_t WindowSlot(uint64_t next, uint64_t j) const {
    return (next - 1 - (next - 1 - j) % window) % recent.size();
  }
  // Counts the ring's entries again (every count above), from the ring and
  // recent_next; after a restore of the ring.
  void Recount();
  // Empties the ring's entries of the item rows `rows` (sorted), taking
  // them out of the counts; their chunks are exported again. For items
  // removed (expiry, a replica applying deletions) and rows freed.
  void DropFromRing(const std::vector<uint32_t>& rows);
  // Marks the ring's chunk that holds `slot` as changed since the last
  // snapshot (an entry that left without a push).
  void MarkRingChunk(size_t slot) { ring_dirty[slot / kRingChunk] = 1; }
  std::vector<std::atomic<uint64_t>> recent;
  const uint64_t window;  // options.negative_window (1 without a ring)
  std::vector<std::atomic<uint32_t>> recent_count, quarter_count, long_count;
  std::atomic<uint32_t> recent_distinct{0};        // hashes with RecentCount > 0
  std::array<std::atomic<uint32_t>, 3> counted{};  // entries in each count (Count)
  std::vector<uint32_t> ring_removed;              // items removed, to DropFromRing (sorted there)
  // A streaming restore's blocks of the ring (Learner::ApplyLists), set by
  // the ApplySnapshot that follows.
  std::mutex ring_blocks_mu;
  FeatureListDelta ring_blocks;
  const int quarter_bits;
  std::atomic<uint64_t> recent_next{0};
  uint64_t recent_exported = 0;     // recent_next at the last snapshot
  std::vector<uint8_t> ring_dirty;  // per chunk: changed otherwise than by a push
  bool ring_counted = true;         // the counts are the ring's at recent_next (SetRing)
  // Implicit tasks' history-match weights (HistoryMatch): per task, H
  // same-item weights (from log(1 + implicit_negatives)) then H
  // shared-feature weights (summing to log(1 + implicit_negatives), the
  // latest positions heavier: InitMatchWeights), H = options.history; then as many Adagrad
  // accumulators. Written by trainers without a lock.
  std::vector<float> history_match;
  // Sets history_match to its start: the weights above, accumulators 0.
  void InitMatchWeights();
  float* MatchWeights(int t) { return history_match.data() + size_t(t) * 2 * options.history; }
  const float* MatchWeights(int t) const {
    return history_match.data() + size_t(t) * 2 * options.history;
  }
  float* MatchAccumulators(int t) {
    return MatchWeights(t) + size_t(kNumTasks) * 2 * options.history;
  }
  // Explicit tasks: the weight of the pooled history in the user's vector
  // of the dense layers (learned from 0, so that a stream the history does
  // not help learns as without it), then its Adagrad accumulator. Implicit
  // tasks add the pooled history at weight 1.
  std::array<float, 2> history_gate{};
  // Implicit tasks: the weight of the two towers' u . v by how much history
  // the user has (TowerBucket of its length) and by whether the candidate is
  // one of the user's history items ("own"). A user vector learned from one
  // or two events is mostly noise, which a lower weight keeps from
  // outranking popularity; and what ranks the user's own items again (the
  // history match does most of that) need not be what ranks items new to
  // the user, as RepeatNet (Ren et al., AAAI 2019) tells a repeat mode from
  // an explore mode. Learned from 1 by the same softmax gradient as every
  // other part of the logit. Layout: two sets of kTowerSet weights (items
  // new to the user, own items; TowerIndex), then as many Adagrad
  // accumulators (from 1, so that the first steps are small). Written by
  // trainers without a lock.
  static constexpr int kTowerBuckets = 5;
  static constexpr size_t kTowerSet = size_t(kNumTasks) * kTowerBuckets;
  static constexpr size_t kTowerParams = 2 * kTowerSet;
  // Buckets of a history of n items: 0, 1, 2-3, 4-9, 10 or more.
  static int TowerBucket(size_t n) { return n == 0 ? 0 : n == 1 ? 1 : n <= 3 ? 2 : n <= 9 ? 3 : 4; }
  static size_t TowerIndex(int t, size_t history_items, bool own) {
    return (own ? kTowerSet : 0) + size_t(t) * kTowerBuckets + TowerBucket(history_items);
  }
  std::vector<float> tower_weight = std::vector<float>(2 * kTowerParams, 1.0f);
  float TowerWeight(int t, const HistoryView& view, bool own) const {
    return tower_weight[TowerIndex(t, view.items.size(), own)];
  }
  // A tower_weight block `v` in the present layout: a block of a build
  // before own items had weights of their own (2 * kTowerSet values: one
  // set of weights, then its accumulators) is widened into *scratch, both
  // sets from it; a block of any other size is returned as it is.
  static const std::vector<float>& TowerWeightsInLayout(const std::vector<float>& v,
                                                        std::vector<float>* scratch);
  // Per task: an event with label 0 was learned (or restored, from the
  // snapshot's "feedback" block): with feedback = auto, the task is
  // explicit from then on.
  std::array<std::atomic<bool>, kNumTasks> saw_negative;
  // Dense parameters and their optimizer state (Adagrad accumulators or
  // Adam's second moments; Adam's first moments). Written by trainers at
  // chunk ends without a lock (Hogwild), read by scorers.
  std::vector<float> dense, dense_accum, dense_m;
  std::atomic<uint64_t> dense_steps{0};  // Adam bias correction
  TaskWeighting weighting;

  // Admission (LearnerOptions::admit_after > 1; null otherwise): the
  // counts of ids without a row yet.
  std::unique_ptr<AdmissionSketch> admission;
  // The id of the prior rows in the user and item tables: invalid UTF-8, so
  // never an event's or a request's id.
  static constexpr std::string_view kPriorKey = "\xff" "recstream-prior";
  // The prior row of users (0) or items (1), kNoRow while it does not exist
  // (or without admission). Safe from any thread.
  uint32_t Prior(int which) const {
    if (!admission) return EmbeddingTable::kNoRow;
    uint32_t r = prior_rows[which].load(std::memory_order_acquire);
    if (r == EmbeddingTable::kNoRow) {
      r = (which == 0 ? users : items).Find(kPriorKey);
      if (r != EmbeddingTable::kNoRow) prior_rows[which].store(r, std::memory_order_release);
    }
    return r;
  }
  bool IsPrior(int which, uint32_t row) const {
    return admission && row != EmbeddingTable::kNoRow && row == Prior(which);
  }
  // The row an event's user (0) or item (1) id trains: its own, created
  // when admitted, else the prior row (created when missing).
  uint32_t Admit(int which, std::string_view id) {
    EmbeddingTable& t = which == 0 ? users : items;
    if (!admission) return t.GetOrCreate(id);
    const uint32_t r = t.Find(id);
    if (r != EmbeddingTable::kNoRow) return r;
    if (admission->Add(id, uint64_t(which)) >= uint32_t(options.admit_after))
      return t.GetOrCreate(id);
    not_admitted[which].fetch_add(1, std::memory_order_relaxed);
    const uint32_t p = Prior(which);
    return p != EmbeddingTable::kNoRow ? p : t.GetOrCreate(kPriorKey);
  }
  mutable std::array<std::atomic<uint32_t>, 2> prior_rows{EmbeddingTable::kNoRow,
                                                          EmbeddingTable::kNoRow};
  // Events whose user (0) or item (1) was not admitted yet.
  std::array<std::atomic<uint64_t>, 2> not_admitted{0, 0};

  // Expiry (LearnerOptions::expire_user_s, expire_item_s,
  // expire_feature_s). The latest event time learned (s); written by the
  // training thread after each Train call.
  std::atomic<int64_t> event_time_s{0};
  bool expiring() const {
    return options.expire_user_s > 0 || options.expire_item_s > 0 ||
           options.expire_feature_s > 0;
  }
  // One step of expiry, after a Train call (training thread): checks up to
  // `budget` rows of each expiring table (each from where the previous step
  // stopped) and removes those not touched within their expire_*_s of
  // event_time_s; while removed items or features wait, the visited users'
  // histories, purchases and lists and the visited items' lists drop them
  // (marked changed, so the store and replicas follow); rows nothing can
  // refer to any more are reclaimed.
  void ExpireStep(size_t budget);
  // Scrubbing and reclaiming without expiry checks, for a model that
  // applies another's deletions (a replica): ApplySnapshot calls it.
  void ScrubStep(size_t budget);
  void Sweeps(size_t budget, bool expire);
  // Removes row `row` of `table` (users, items, user_features or
  // item_features) with what is its own (a user's list, history and
  // purchases; an item's list). With `record`, the next snapshot carries the
  // deletion and the removal is counted.
  void RemoveRow(EmbeddingTable& table, uint32_t row, bool record);
  // Reclaims removed rows nothing refers to any more; not while an export
  // is under way (training thread).
  void ReclaimRetired();
  // A table's sweep: where the next step starts, and how many times it
  // went round the whole table.
  struct Sweep {
    uint32_t cursor = 0;
    uint64_t cycles = 0;
  };
  Sweep user_sweep, item_sweep, user_feature_sweep, item_feature_sweep;
  // Removed rows not reclaimed yet, with the sweeps' cycles at removal: an
  // item may be reclaimed once every user was scrubbed after it (two user
  // cycles later), a feature once every user and item was.
  struct Retired {
    EmbeddingTable* table;
    uint32_t row;
    uint64_t user_cycle, item_cycle;  // when it first read as removed
    bool marked;  // reads as removed (an export under way may hold it a while)
  };
  std::vector<Retired> retired;
  size_t retired_items = 0, retired_features = 0;  // of `retired`, waiting for scrubs
  std::map<std::string, std::vector<std::string>> deleted_ids;  // table -> ids, since the last snapshot
  std::vector<std::pair<std::string, std::string>> deleted_purchases;  // ditto
  // Rows removed by expiry since start: users, items, user features, item
  // features.
  std::array<std::atomic<uint64_t>, 4> expired{0, 0, 0, 0};
  // The memory limit (LearnerOptions::memory_limit_mb > 0; null
  // otherwise): which users are in memory, and reading back those that
  // left.
  std::unique_ptr<Residency> residency;
  // Several trainers (LearnerOptions::trainer_count > 1; null otherwise):
  // which shared rows this trainer owns, and the follower copies' bases.
  std::unique_ptr<Sharing> sharing;
  // The row of user `id`: Find, or with a memory limit, read back from the
  // store when it left memory. Any thread.
  uint32_t FindUser(std::string_view id) const {
    return residency ? residency->FindUser(id) : users.Find(id);
  }
  // Restoring with a memory limit: false for a user left in the store
  // (its list, history and purchases stay there too).
  bool Resident(std::string_view user) const { return !residency || users.Find(user) != EmbeddingTable::kNoRow; }

  // True from BeginSnapshot until its FinishSnapshot: the export's lists
  // refer to rows, which must not be reused meanwhile.
  std::atomic<bool> exporting{false};

  std::array<std::atomic<uint64_t>, kNumTasks> learned;
  std::atomic<uint64_t> refused{0};
  // Snapshots and row blocks applied (ApplySnapshot, ApplyRows, ApplyLists):
  // a replica's counters may return to earlier values (a trainer that
  // restarted from an older checkpoint), so readers that cache what the
  // model computes (Recommend's panel) also watch this.
  std::atomic<uint64_t> applied{0};

  mutable std::mutex metrics_mu;
  std::array<TaskMetrics, kNumTasks> metrics;  // guarded by metrics_mu, merged per chunk

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
    std::array<Lists, 2> lists;          // users, items
    std::vector<uint32_t> history_rows;  // user rows whose histories changed
    // The negative ring's chunks changed since the last snapshot (their
    // numbers, and their entries one after another), when any did.
    std::vector<uint32_t> ring_chunks;
    std::vector<uint64_t> ring;
    uint64_t ring_next = 0;
    std::vector<std::pair<uint32_t, uint32_t>> purchases;
    std::vector<std::pair<std::string, std::string>> retired_purchases;  // freed by Finish
  };
  PendingSnapshot pending_snapshot;
};

}  // namespace recstream::learner
