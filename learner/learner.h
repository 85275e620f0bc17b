// Learner: the online multi-task recommender at the heart of recstream.
//
// Model. Each user and item id owns an embedding row (created on first sight,
// keyed by the id itself: no fixed capacity, no hash collisions). Side
// features own rows too, added to the user's or item's vector. The pair
// (u, v) goes through a shared bottom network (or MMoE experts with one gate
// per task) into one head per task: click and purchase are logistic, rating is
// a regression on top of global, user and item biases. Each event trains its
// own task's head and the shared parts; task losses are reweighted online
// (uncertainty weighting by default).
//
// Threading. Train(), TakeSnapshot() and ApplySnapshot() must be called from
// one thread at a time (the training thread). Train() parallelises internally
// with oneTBB. Score(), ScoreMany(), Recommend() and Stats() are const and may
// run on any number of threads concurrently with Train(): they read
// parameters that the trainer is writing (a benign, Hogwild-style race on
// aligned floats; a score may mix parameters from just before and just after
// one update, never a torn float on x86-64).
//
// Persistence. The learner knows nothing of storage. TakeSnapshot() returns
// the rows changed since the previous snapshot (row deltas) plus the dense
// parameters and counters; ApplySnapshot() loads such snapshots back. Storing
// a full snapshot followed by every delta snapshot and applying them in order
// reproduces the model bit for bit (feature lists, user histories, the
// ring negatives are drawn from, which tasks are implicit, and optimizer
// state included). The replay ring is not part of a snapshot.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "learner/event.h"
#include "learner/float_buffer.h"
#include "learner/options.h"

namespace recstream::learner {

// Predictions for one (user, item) pair. click and purchase are
// probabilities; rating is clipped to [rating_min, rating_max].
struct Prediction {
  float click = 0.0f;
  float purchase = 0.0f;
  float rating = 0.0f;
  float Get(Task t) const {
    return t == Task::kClick ? click : t == Task::kPurchase ? purchase : rating;
  }
};

// Weights of the blended `score` (docs/interface.md section 3; the scorer
// sets the weight of a task that has learned no event yet to 0):
//   score = click * p_click + purchase * p_purchase
//         + rating * (rating - rating_min) / (rating_max - rating_min)
struct Blend {
  float click = 0.5f;
  float purchase = 0.3f;
  float rating = 0.2f;
};

struct ScoreResult {
  Prediction prediction;
  float score = 0.0f;
  bool user_known = false;
  bool item_known = false;
};

struct Recommendation {
  std::string item;
  Prediction prediction;
  float score = 0.0f;
};

// Progressive (predict-then-learn) metrics over the events trained so far.
struct TaskStats {
  uint64_t learned = 0;
  // Learned as implicit feedback now (LearnerOptions::feedback).
  bool implicit = false;
  double loss_weight = 1.0;  // current weight of this task's loss
  double avg_loss = 0.0;     // exponential moving average of the task loss
  // click and purchase: AUC and logloss over all progressive predictions.
  double auc = 0.0;
  double logloss = 0.0;
  // click and purchase: precision, recall and F1 at
  // LearnerOptions::decision_threshold (0 when undefined).
  double precision = 0.0, recall = 0.0, f1 = 0.0;
  // rating: MAE and RMSE of clipped progressive predictions.
  double mae = 0.0;
  double rmse = 0.0;
};

struct LearnerStats {
  std::array<TaskStats, kNumTasks> tasks;
  uint64_t users = 0;
  uint64_t items = 0;
  uint64_t features = 0;
  uint64_t pretrained = 0;  // items with a pretrained vector
  uint64_t nonfinite_updates_refused = 0;
  // Events whose user or item id was not admitted yet (model.admit_after):
  // learned through the prior row and features.
  uint64_t not_admitted_users = 0;
  uint64_t not_admitted_items = 0;
  // Users removed by expiry (LearnerOptions::expire_user_s) since start.
  uint64_t expired_users = 0;
  uint64_t expired_items = 0;     // by model.expire.item_s
  uint64_t expired_features = 0;  // by model.expire.feature_s
  // Memory held for user rows, in rows: live ones, the prior row, and
  // removed ones waiting to be reused.
  uint64_t user_rows_allocated = 0;
  // The latest event time learned, seconds since the Unix epoch (0: none).
  int64_t event_time_s = 0;
  // The model's rows and structures in bytes, estimated from row counts
  // (with or without a memory limit).
  uint64_t model_bytes = 0;
  // Memory limit (LearnerOptions::memory_limit_mb; all 0 without one).
  // The limit; the users that fit
  // beside the rest; users in memory; users that left memory and came back
  // (to learn an event or answer a request) since start; reads of the
  // store for them, and reads that failed; early checkpoints asked for.
  uint64_t memory_limit_bytes = 0;
  uint64_t user_budget = 0;
  uint64_t users_resident = 0;
  uint64_t users_evicted = 0;
  uint64_t users_reloaded = 0;
  uint64_t store_reads = 0;
  uint64_t store_read_errors = 0;
  uint64_t checkpoints_wanted = 0;
  // Several trainers (LearnerOptions::trainer_count > 1; all 0 otherwise):
  // row changes taken for other owners (TakeChanges), other trainers' row
  // changes added as owner (AddChanges), owners' rows followed
  // (FollowOwners), and changes skipped because another trainer owns the row.
  uint64_t shared_rows_sent = 0;
  uint64_t shared_rows_added = 0;
  uint64_t shared_rows_followed = 0;
  uint64_t shared_not_owned = 0;
};

// Row deltas. A row's values are the table's layout (embedding, per-task
// biases and their optimizer state); `width` floats per row.
struct TableDelta {
  // "user", "item", "user_feature", "item_feature", and "item_pretrained"
  // (pretrained vectors and their accumulators, 2 * pretrained_dim floats).
  std::string table;
  int width = 0;
  std::vector<std::string> keys;
  FloatBuffer values;  // keys.size() * width floats, row after row
};

// The side features each user (table "user") or item (table "item") was last
// seen with: scoring adds their vectors, as training did. Two more kinds of
// lists travel the same way: "user_history" (each user's latest items,
// oldest first) and "negative_ring" (one list: the ring's next position,
// then its items, "" for an empty slot).
struct FeatureListDelta {
  std::string table;
  std::vector<std::string> keys;                   // user or item ids
  std::vector<std::vector<std::string>> features;  // parallel to keys
};

// The feature lists of users that left memory under a memory limit
// (LearnerOptions::memory_limit_mb): one entry per user, when it was last
// used, in decimal (s of event time with user expiry; "0": unknown;
// 4294967295: it came back into memory since). Kept by the store so that
// expiry reaches users that are not in memory and a restart loads the users
// that were in memory; a model that applies them ignores them, and they are
// never published.
inline constexpr std::string_view kUserLeftLists = "user_left";

// Keeps, in place and in order, the rows i of `t` (the lists i of `l`) for
// which keep(i) is true.
template <typename Keep>
void KeepRows(TableDelta* t, Keep&& keep) {
  const size_t w = size_t(t->width);
  size_t kept = 0;
  for (size_t i = 0; i < t->keys.size(); ++i) {
    if (!keep(i)) continue;
    if (kept != i) {
      t->keys[kept] = std::move(t->keys[i]);
      std::copy_n(t->values.data() + i * w, w, t->values.data() + kept * w);
    }
    ++kept;
  }
  t->keys.resize(kept);
  t->values.resize(kept * w);
}
template <typename Keep>
void KeepLists(FeatureListDelta* l, Keep&& keep) {
  size_t kept = 0;
  for (size_t i = 0; i < l->keys.size(); ++i) {
    if (!keep(i)) continue;
    if (kept != i) {
      l->keys[kept] = std::move(l->keys[i]);
      l->features[kept] = std::move(l->features[i]);
    }
    ++kept;
  }
  l->keys.resize(kept);
  l->features.resize(kept);
}

// Ids removed from a table (expiry).
struct TableDeletion {
  std::string table;  // "user", "item", "user_feature", "item_feature"
  std::vector<std::string> keys;
};

class RowSource;  // learner/row_source.h

// Changes to shared rows that a trainer sends to their owners (several
// trainers, LearnerOptions::trainer_count; learner/sharing.h).
struct ModelChanges {
  // Per shared table ("item", "user_feature", "item_feature",
  // "item_pretrained"): ids and, per row, the change of its `width` floats
  // (values, then optimizer state) since it was last taken.
  std::vector<TableDelta> tables;
  // Changes of the dense blocks (trainer 0 owns them), and "feedback": per
  // task, 1 when the sender learned a label 0.
  std::vector<std::pair<std::string, std::vector<float>>> dense;
  // The "item" feature lists of the items in `tables` (as the sender last
  // saw them; items seen without features have none here), so that the
  // owner, and everyone following it, scores an item with its features.
  std::vector<FeatureListDelta> feature_lists;
  uint64_t rows() const {
    uint64_t n = 0;
    for (const auto& t : tables) n += t.keys.size();
    return n;
  }
  bool empty() const { return rows() == 0 && dense.empty(); }
};

// ModelChanges::feature_lists of this name carry the items a trainer put
// into its negative ring (lists "ring0", "ring1", ... of at most 2,048
// items each, oldest first): they go to every other
// trainer (SplitByOwner), which puts them into its own ring.
inline constexpr std::string_view kRingAdds = "ring_adds";

// The trainer that owns id `key` of a shared table among `count`: a stable
// hash of the id, the same on every machine and across restarts.
int OwnerOf(std::string_view key, int count);
// Splits `changes` by owner: (*out)[i] holds the rows (and item lists)
// trainer i owns, and out[0] the dense blocks too. `out` gets `count`
// entries. The second form may move rows out of `changes` rather than copy
// them (a table whose rows all go to one owner).
void SplitByOwner(const ModelChanges& changes, int count, std::vector<ModelChanges>* out);
void SplitByOwner(ModelChanges&& changes, int count, std::vector<ModelChanges>* out);

struct ModelSnapshot {
  // Identifies the model's shape; ApplySnapshot refuses a snapshot whose
  // shape differs from the learner's options.
  std::string shape;
  std::vector<TableDelta> tables;
  // Feature lists changed since the previous snapshot (all when full).
  std::vector<FeatureListDelta> feature_lists;
  // Dense blocks (bottom, experts, gates, heads, weighting state, metric
  // accumulators) are always complete.
  std::vector<std::pair<std::string, std::vector<float>>> dense;
  std::array<uint64_t, kNumTasks> learned = {0, 0, 0};
  // (user, item) purchases recorded since the previous snapshot.
  std::vector<std::pair<std::string, std::string>> new_purchases;
  // Ids removed since the previous snapshot (LearnerOptions::expire_*_s),
  // with everything that was theirs: rows, feature lists, histories, and the
  // purchases listed in deleted_purchases. Whoever applies a snapshot
  // applies these first: an id removed and seen again since is in both,
  // and its new row wins.
  std::vector<TableDeletion> deleted;
  std::vector<std::pair<std::string, std::string>> deleted_purchases;
  uint64_t rows() const {
    uint64_t n = 0;
    for (const auto& t : tables) n += t.keys.size();
    return n;
  }
};

// What trainer `index` of `count` publishes (several trainers): its users'
// rows, lists and purchases, the shared rows and item lists whose id it
// owns, the negative ring and dense blocks only when trainer 0, every
// deletion; so that everyone takes each row from its owner. PublishesRow
// and PublishesList decide for one row or feature list of a table;
// KeepOwned keeps of `snapshot` what the trainer publishes.
bool PublishesRow(int index, int count, std::string_view table, std::string_view id);
bool PublishesList(int index, int count, std::string_view table, std::string_view id);
inline bool PublishesDense(int index) { return index == 0; }
void KeepOwned(int index, int count, ModelSnapshot* snapshot);

class Learner {
 public:
  // Fails with InvalidArgument when the options are out of range.
  static Status Create(const LearnerOptions& options, std::unique_ptr<Learner>* learner);
  ~Learner();
  Learner(const Learner&) = delete;
  Learner& operator=(const Learner&) = delete;

  // Learns from `events`. Events are split into chunks trained in parallel
  // (Hogwild between chunks, in order within a chunk; a chunk reads the
  // dense layers as they were when it began, the user and item rows live).
  // With more than one thread, each thread trains the side-feature rows in
  // its own copy, and every copy's change is added to the shared rows before
  // Train returns: a reader (Score) sees side-feature updates of a parallel
  // call when it ends, a snapshot taken between calls holds all of them. With `before`
  // non-null, it receives, for each event in order, the prediction of the
  // event's task made just before learning from it (progressive validation).
  // Never lets a NaN or infinity reach a parameter: such updates are refused
  // and counted.
  void Train(std::span<const Event> events, std::vector<Prediction>* before = nullptr);

  // Runs fn(begin, end) over pieces of [0, n) of about `grain` items each,
  // on Train's threads, and returns when every piece has run. For the
  // caller's own work between Train calls, such as parsing the next batch:
  // done here, it keeps Train's second thread awake, which otherwise joins
  // a call ~0.1 ms late after a pause (p50; milliseconds at p99). Call it
  // from the thread that calls Train, not during a Train call; fn must be
  // safe to run concurrently on different pieces.
  void ParallelFor(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);

  // Scores one pair. Unknown ids score from biases and priors alone. A known
  // user or item scores with the side features it was last seen with (an
  // event without features leaves them as they were).
  //
  // Request-time features (docs/interface.md section 3): a non-null
  // `user_features` or `item_features` is used for this score in place of
  // the stored list, so a never-seen item scores from its features'
  // embeddings (cold start). Features the model has never seen add nothing.
  // Nothing is learned from a request.
  ScoreResult Score(std::string_view user, std::string_view item, const Blend& blend,
                    const std::vector<std::string>* user_features = nullptr,
                    const std::vector<std::string>* item_features = nullptr) const;
  // Scores many items for one user, in order. `item_features` is empty, or
  // has one entry per item: null for the stored list, else the request's.
  void ScoreMany(std::string_view user, std::span<const std::string> items, const Blend& blend,
                 std::vector<ScoreResult>* out,
                 const std::vector<std::string>* user_features = nullptr,
                 std::span<const std::vector<std::string>* const> item_features = {}) const;
  // The k best items by blended score over every known item, best first
  // (ties: the older item first); items the user purchased are left out when
  // exclude_purchased. The user's side, the dense layers and purchases are
  // read live, and items created since are always included, but the item
  // vectors come from a cache that may lag the model by up to
  // max(2 s, 20 x its build time) when the catalogue has more than 4,096
  // items (smaller ones always match the model) (about 0.25 s + build time while
  // Recommend is in use; 100,000 items build in tens of ms). On a quiet model
  // the results carry exactly Score()'s predictions and scores.
  std::vector<Recommendation> Recommend(std::string_view user, int k, bool exclude_purchased,
                                        const Blend& blend) const;

  LearnerStats Stats() const;
  // The model's shape (ModelSnapshot::shape of every snapshot it takes).
  std::string Shape() const;
  const LearnerOptions& options() const;

  // Sets the pretrained vector of `item` (pretrained_dim floats), creating
  // the item's row when missing, so that a new item scores from its vector
  // before its first event. Importing again replaces the vector (and resets
  // its optimizer state). InvalidArgument when pretrained_dim is 0, the size
  // differs from pretrained_dim, the item id is empty or a value is not
  // finite. Must not run concurrently with Train, TakeSnapshot or
  // ApplySnapshot.
  Status ImportPretrained(std::string_view item, std::span<const float> vec);

  // Fills `out` with rows changed since the previous snapshot (all rows
  // when `full`), the dense parameters and counters, and clears the change
  // marks: BeginSnapshot then FinishSnapshot. Must not run concurrently
  // with Train.
  void TakeSnapshot(bool full, ModelSnapshot* out);
  // A snapshot in two steps, so that training waits only while the changed
  // rows are listed (copy-on-write):
  // BeginSnapshot fills `out` with the dense parameters and counters, lists
  // the changed rows and clears the change marks; it must not run
  // concurrently with Train. FinishSnapshot(out) then fills in the rows'
  // ids and values and the purchases as they were at BeginSnapshot, and
  // the changed feature lists as they are when it reads them (a list set
  // meanwhile is newer than the rest, and in the next snapshot again); it
  // may run on another thread, concurrently with Train,
  // Score, ScoreMany, Recommend and Stats (a trainer about to change a
  // listed row that is not copied yet copies it first). Between the two,
  // `out` must stay alive and in place, and no other snapshot,
  // ApplySnapshot, ApplyRows or ImportPretrained may run. A BeginSnapshot
  // while one is unfinished finishes that one first; FinishSnapshot of any
  // other `out` than the unfinished one does nothing.
  // The buffers of a snapshot passed in again are reused.
  void BeginSnapshot(bool full, ModelSnapshot* out);
  void FinishSnapshot(ModelSnapshot* out);
  // Housekeeping that Train does after learning, for a training thread
  // that has no events now: users over the memory limit leave memory
  // (once stored), and expiry goes over the users out of memory at its
  // idle pace (docs/interface.md, "Memory"). Same threading as Train.
  void Idle();

  // Memory limit (LearnerOptions::memory_limit_mb; docs/interface.md,
  // "Memory"). The store that users who left memory are read back from;
  // until one is set, no user leaves memory. Set it before restoring (a
  // restore then keeps in memory only the users that fit) and before the
  // first Train call; `source` must outlive the learner's use of it.
  void SetRowSource(const RowSource* source);
  // The number of the latest BeginSnapshot (1 for the first), and the
  // caller's word that the store holds the model as of snapshot `number`
  // (that one and every one before it, merged or written one by one; after
  // a failed write, a later full snapshot's number). Users leave memory only
  // once every change they had is stored.
  uint64_t snapshot_number() const;
  void SnapshotStored(uint64_t number);
  // True when users over the memory limit wait for a checkpoint that
  // stores them: a caller that checkpoints on a timer may want one early.
  bool WantsCheckpoint() const;
  // True when users over the memory limit are so many (a quarter over what
  // fits) that the caller should hold the next Train call until a
  // checkpoint has stored them and Idle has let them go: what bounds
  // memory when new users arrive faster than checkpoints store them.
  bool OverLimit() const;

  // Several trainers on one model (LearnerOptions::trainer_count > 1;
  // learner/sharing.h has the protocol). All three run on the training
  // thread between Train calls, as TakeSnapshot does; with one trainer
  // they do nothing (AddChanges and FollowOwners return OK).
  //
  // TakeChanges fills *changes with the change of every shared row this
  // trainer does not own (and of the dense blocks, unless it is trainer 0)
  // since it was last taken: from then on the change counts as sent, and
  // the caller must deliver it to the owners exactly once. With `owned`
  // non-null, it also fills `owned` with the values of the shared rows
  // this trainer owns that changed since (and, trainer 0, the dense
  // blocks): what the owner publishes for the others to follow; without
  // it, owned rows stay marked for the next call that has one. Whatever
  // *changes and *owned held is replaced; their tables' buffers are reused
  // (a caller that passes the same objects each time does not fault in an
  // exchange's megabytes afresh).
  void TakeChanges(ModelChanges* changes, ModelSnapshot* owned = nullptr);
  // Adds changes taken by other trainers to the rows this trainer owns,
  // creating missing rows. Rows it does not own are skipped and counted
  // (LearnerStats::shared_not_owned); a row change with a value that is
  // not finite, or that would make one, is refused and counted
  // (nonfinite_updates_refused). Corruption for an unknown table or a
  // wrong width (nothing of that table is added).
  Status AddChanges(const ModelChanges& changes);
  // Follows the owners' published values (a snapshot, or a version of the
  // model topic) of trainer `from` (-1: any): only the rows `from` owns
  // are taken, and its dense blocks when it is trainer 0 (a trainer's
  // version also holds its own users and, when it publishes them, its
  // follower copies, which are not the owners' values). Each shared row
  // this trainer does not own becomes the
  // owner's value plus this trainer's change not taken yet; trainer 0's
  // dense blocks likewise, and its task weighting as it is; the "item"
  // feature lists of items it does not own are set. Users and rows this
  // trainer owns are ignored.
  Status FollowOwners(const ModelSnapshot& published, int from = -1);

  // Loads a snapshot: rows are created or overwritten, dense parameters and
  // counters replaced. Apply a full snapshot first, then deltas in order.
  // Corruption when the snapshot's shape or row widths do not match.
  Status ApplySnapshot(const ModelSnapshot& snapshot);
  // Loads the rows of one table of a snapshot (creating or overwriting
  // them) and nothing else, for restoring a big model in blocks on several
  // threads: calls for different keys may run concurrently with each other
  // (never with Train, TakeSnapshot or ApplySnapshot). The rows stay marked
  // changed until the ApplySnapshot of the rest of the snapshot that must
  // follow. Corruption when the table is unknown or the width is wrong.
  Status ApplyRows(const TableDelta& rows);
  // Loads one block of feature lists of a snapshot (the "user" or "item"
  // lists), for restoring in blocks as ApplyRows does: calls for different
  // keys may run concurrently with each other and with ApplyRows (never
  // with Train, TakeSnapshot or ApplySnapshot), and the ApplySnapshot of
  // the rest must follow. Corruption when the table is unknown or the block
  // is malformed.
  Status ApplyLists(const FeatureListDelta& lists);

 private:
  struct Impl;
  explicit Learner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One exchange among trainers in one process (`recstream eval --trainers`,
// tests): trainers[i] is trainer i of trainers.size(), and none trains
// meanwhile. Each trainer's changes go to their owners, which add them;
// then each trainer's changed owned rows (TakeChanges' `owned`) are
// followed by every other trainer (with `follow`; without, owners' rows stay
// unpublished until an exchange that follows, as when owners publish less
// often than trainers send). With `taken` or `published` non-null,
// they receive, per trainer, what it took and what it published. The first
// non-OK status of AddChanges or FollowOwners; Internal when a trainer
// learned during the exchange.
Status ExchangeDirectly(std::span<Learner* const> trainers,
                        std::vector<ModelChanges>* taken = nullptr,
                        std::vector<ModelSnapshot>* published = nullptr, bool follow = true);

// The blended score of a prediction.
float BlendScore(const Prediction& p, const Blend& blend, float rating_min, float rating_max);

}  // namespace recstream::learner
