// Trainer: learns events into a Model. It owns everything that exists only
// for training: the oneTBB arena and its threads' priority, per-thread
// scratch state (TrainState) with the staged side-feature rows, the
// negative-sampling and replay rings, the task losses and the optimizers.
//
// One Train call: the events are cut into chunks of LearnerOptions::chunk;
// each chunk resolves its rows, then for each event predicts, computes the
// task loss and backpropagates it (Learn), updating rows at once (Hogwild)
// and summing the dense gradient, which the chunk's end applies with the
// task weighting's update and the progressive metrics.
//
// Thread safety. Train and ParallelFor are called from one thread at a time
// (the learner's training thread); they run work on the arena's threads.
// Scorers may read the model meanwhile (see model.h).
#pragma once

#include <oneapi/tbb/enumerable_thread_specific.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_scheduler_observer.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "learner/loss.h"
#include "learner/model.h"
#include "learner/optimizer.h"

namespace recstream::learner {

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
// threads, each of their rows would move between the cores at almost every
// event. A staged row is copied in at its
// first use in the call, trained in the copy, and its change (values and
// accumulators) added to the shared row once, when the call ends: every
// thread's updates land (in-place Hogwild could lose some), and the other
// threads see them from the next call on. Rows past kMaxRows in one call are
// trained in place.
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
  std::vector<uint32_t> rows;    // by slot
  std::vector<float> base, now;  // by slot: the row as copied in, as trained
  // Open addressing, row + 1 (0: empty) -> slot; 2 * kMaxRows entries.
  std::vector<std::pair<uint32_t, uint32_t>> index;
  std::vector<uint32_t> used;  // the index entries in use
};

// Implicit feedback's negatives, shared by the events of one chunk: drawn
// from the ring at the chunk's first implicit event, gathered once, and
// updated once at its end with the gradients its events summed (as the
// dense layers are): negative k's rows are rows[begin[k], begin[k + 1])
// (slots parallel to them in a parallel call), its vector v[k * dim, ...),
// its biases bias[k * kNumTasks, ...), its popularity prior less log Q
// logit_extra[k], its summed gradient grad[k * (dim + kNumTasks), ...).
struct SharedNegatives {
  bool drawn = false;
  size_t count = 0;
  std::vector<uint32_t> rows, slots, begin;
  std::vector<float> v, bias, logit_extra, grad;
  std::vector<uint8_t> touched;
};

// Per-thread scratch state: buffers, dense gradient accumulators and the
// observations of the current Train call. Never shared between threads
// while Train runs.
struct TrainState {
  // `row_floats`: floats of a side-feature row (EmbeddingTable::row_floats).
  TrainState(const ModelShape& shape, size_t row_floats)
      : fwd(shape),
        fwd2(shape),
        dense_grad(shape.dense_size(), 0.0f),
        pending(shape),
        staged_user(row_floats),
        staged_item(row_floats),
        du(shape.dim() + 1),
        dv(shape.dim() + 1),
        du2(shape.dim() + 1),
        dv2(shape.dim() + 1),
        history(shape.dim()),
        history_acc(shape.dim()),
        item_v(shape.dim()) {}
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
  // The pooled history of the event's user (has_history: not empty), the
  // history itself, and AddHistory's scratch.
  std::vector<float> history, history_acc;
  bool has_history = false;
  HistoryView history_view;
  // LearnImplicit: Model::HistoryMatch's hits of each candidate, and the
  // gradient of the match weights.
  std::vector<float> cand_hits, match_grad;
  // Implicit feedback (LearnImplicit): candidate c's logit (then its
  // gradient) cand_z[c] (c = 0: the event's item, c > 0: the chunk's
  // negative cand_index[c]); the event's item's vector item_v.
  std::vector<float> cand_z, item_v;
  // LearnImplicit: each candidate's u . v (as cand_z), and the index of its
  // Model::tower_weight (Model::TowerIndex).
  std::vector<float> cand_dot;
  std::vector<size_t> cand_tower;
  float user_bias = 0.0f;  // the event's task's user bias (ImplicitLogit)
  std::vector<size_t> cand_index;
  SharedNegatives negatives;
  // DrawNegatives' scratch: the ring entries drawn, one negative's rows
  // and (parallel calls) staged slots.
  std::vector<uint64_t> neg_entries;
  std::vector<uint32_t> neg_rows, neg_slots;
  bool parallel = false;   // the chunk runs beside others (BeginChunk)
  uint32_t item_hash = 0;  // Model::IdHash of the event's item
  size_t event_index = 0;  // the event's place in the Train call
  // The dense parameters the chunk's steps read (BeginChunk): the shared
  // block itself on one thread, this copy of it when chunks run in parallel.
  std::vector<float> dense_copy;
  const float* dense_now = nullptr;
  uint64_t refused = 0;
  uint64_t rng = 0x9e3779b97f4a7c15ULL;  // negative sampling
};

class Trainer {
 public:
  // `model` is borrowed and must outlive the trainer.
  explicit Trainer(Model* model);
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Learner::Train: learns `events` in order per chunk; with `before`, the
  // prediction made for each event before learning it.
  void Train(std::span<const Event> events, std::vector<Prediction>* before);
  // fn(begin, end) over [0, n) in ranges of about `grain`, on the arena's
  // threads (restoring a model uses the cores training would).
  void ParallelFor(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);

 private:
  // The row that training reads and writes for rows[i].
  float* TrainRow(const EmbeddingTable& main, const EmbeddingTable& side,
                  const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
                  StagedRows* staged, size_t i) const;
  // Model::Gather, where feature row i is staged->Row(slots[i]) when a slot
  // is given (empty slots: every row shared).
  void Gather(const EmbeddingTable& main, const EmbeddingTable& side,
              const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
              StagedRows* staged, float* vec, float* bias) const;
  // Rows() of every event's user and item into s->chunk_rows; with `stage`,
  // their feature rows' staged slots into s->chunk_slots.
  void ResolveChunk(std::span<const Event> events, bool stage, TrainState* s);
  // Prefetches the user and item rows of the chunk's event i.
  void PrefetchRows(const TrainState& s, size_t i) const;
  // Predicts, then learns, one example from s->user_rows and s->item_rows.
  // Returns the prediction made before learning.
  float Learn(Task task, float label, TrainState* s);
  // Learn's backward pass through the heads and the dense layers (summed
  // into s->dense_grad) down to the user and item vectors (s->du, s->dv);
  // *gc is the click head's gradient with ESMM. False (the update refused,
  // nothing counted) when a gradient is not finite.
  bool BackwardHeads(int t, bool esmm, const LossOutput& out, float dyc, TrainState* s, float* gc);
  // The rest of the backward pass: the pretrained projection (and vector,
  // when trainable), the user, item and feature rows, and with ESMM the
  // click biases (gradient gc).
  void BackwardRows(int t, bool esmm, float gc, uint32_t pre_row, TrainState* s);
  // Learns event e from its rows in s->user_rows and s->item_rows, then
  // its negatives and replayed events.
  void TrainOne(const Event& e, TrainState* s, Prediction* before);
  // Learns options.negatives sampled items as negatives of e's task.
  void LearnNegatives(const Event& e, uint32_t item_row, TrainState* s);
  // Implicit feedback (LearnerOptions::feedback): the prediction of task t
  // for the event's item in s->item_rows, before learning; with `learn`,
  // learns the item against the chunk's sampled items (SharedNegatives) by
  // the logQ-corrected sampled softmax.
  float LearnImplicit(int t, bool learn, TrainState* s);
  // The implicit logit of task t for the event's user and item (before the
  // logQ correction), leaving u in s->fwd.u, the item's vector in
  // s->item_v, the user's bias in s->user_bias, the item's history-match
  // hits in s->cand_hits and its ring count in *count.
  float ImplicitLogit(int t, TrainState* s, uint32_t* count);
  // Adagrad step of task t's history-match weights (Model::history_match).
  void UpdateMatchWeights(int t, const float* grad);
  // Draws and gathers the chunk's negatives (options.implicit_negatives).
  void DrawNegatives(TrainState* s);
  // Applies the negatives' summed gradients of the chunk, then forgets them.
  void ApplyNegatives(TrainState* s);
  // Notes the event's item in the ring negatives are drawn from (and its
  // count, for the sampling probability), while anything reads the ring.
  void Remember(const Event& e, uint32_t item_row);
  // s->history and s->has_history for user row `user`.
  void PoolHistory(uint32_t user, TrainState* s) const;
  // Remembers e and learns options.replay earlier events again.
  void Replay(const Event& e, uint32_t user_row, uint32_t item_row, TrainState* s);
  // Sets s->dense_now for the chunk about to be trained (a copy of the
  // dense parameters when `parallel`).
  void BeginChunk(bool parallel, TrainState* s);
  // Dense update, task weighting, progressive metrics, per chunk.
  void FinishChunk(TrainState* s);
  // Adds the chunk's progressive metrics, learned and refused counts of `s`
  // to the model's (under metrics_mu: a short lock per chunk, taken by the
  // trainers in parallel rather than by one of them after the call while
  // the others wait).
  void MergeMetrics(TrainState* s);
  void ApplyRow(float* row, const float* grad, int n, int offset, float lr);
  void UpdateRows(EmbeddingTable& main, EmbeddingTable& side, const std::vector<uint32_t>& rows,
                  const std::vector<uint32_t>& slots, StagedRows* staged, const float* grad, int t);
  // After a parallel Train call: every thread's staged rows into the tables.
  void MergeStaged();

  Model& m_;
  const LearnerOptions& options;
  const int width;
  const float lr_bias;
  const RowOptimizer row_optimizer;
  const DenseOptimizer dense_optimizer;
  const TaskLosses losses;
  const int threads;
  tbb::task_arena arena;
  // Nice value of training threads (kNoNice: train_nice = 0) and the
  // observer that applies it to TBB workers; after `arena`, which it watches.
  const int nice_target;
  std::unique_ptr<TrainNiceObserver> nice_observer;
  tbb::enumerable_thread_specific<TrainState> states;

  // Train's event rows (user row << 32 | item row), for the negative ring
  // and history pushes that end the call.
  std::vector<uint64_t> event_rows;
  // Experience replay: a ring of (user row << 32 | item row) and
  // (task << 32 | label bits) of recent events.
  static constexpr uint64_t kNoPair = ~uint64_t{0};
  std::vector<std::atomic<uint64_t>> replay_pairs, replay_labels;
  std::atomic<uint64_t> replay_next{0};
};

}  // namespace recstream::learner
