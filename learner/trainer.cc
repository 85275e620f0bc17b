#include "learner/trainer.h"

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <thread>
#include <tuple>

namespace recstream::learner {

int LowerThreadPriority(int target) {
  if (target == kNoNice) return kNoNice;
  const pid_t tid = ::gettid();
  errno = 0;
  const int current = ::getpriority(PRIO_PROCESS, tid);
  if (errno != 0 || current >= target) return kNoNice;
  if (::setpriority(PRIO_PROCESS, tid, target) != 0) return kNoNice;
  return current;
}

void RestoreThreadPriority(int saved) {
  // Raising the priority back needs CAP_SYS_NICE (or RLIMIT_NICE); without
  // it the thread keeps the lower one, which is harmless for a trainer.
  if (saved != kNoNice) (void)::setpriority(PRIO_PROCESS, ::gettid(), saved);
}

namespace {
// The nice value a TBB worker had before it entered a training arena.
thread_local int worker_saved_nice = kNoNice;
}  // namespace

void TrainNiceObserver::on_scheduler_entry(bool is_worker) {
  // The thread calling Train is handled by Train itself (ThreadNiceScope).
  if (is_worker) worker_saved_nice = LowerThreadPriority(target_);
}

void TrainNiceObserver::on_scheduler_exit(bool is_worker) {
  if (!is_worker) return;
  RestoreThreadPriority(worker_saved_nice);
  worker_saved_nice = kNoNice;
}

int TrainNiceTarget(int train_nice) {
  if (train_nice <= 0) return kNoNice;
  errno = 0;
  const int base = ::getpriority(PRIO_PROCESS, ::gettid());
  return std::min(19, (errno != 0 ? 0 : base) + train_nice);
}

Trainer::Trainer(Model* model)
    : m_(*model),
      options(model->options),
      width(model->width),
      lr_bias(options.lr_bias > 0 ? options.lr_bias : options.lr_embedding),
      row_optimizer(options.embedding_optimizer, options.l1, options.l2, options.grad_clip),
      dense_optimizer(options),
      losses(options),
      threads(options.threads > 0 ? options.threads
                                  : int(std::max(1u, std::thread::hardware_concurrency()))),
      arena(threads),
      nice_target(TrainNiceTarget(options.train_nice)),
      nice_observer(nice_target != kNoNice ? std::make_unique<TrainNiceObserver>(arena, nice_target)
                                           : nullptr),
      states([this] { return TrainState(m_.shape, m_.user_features.row_floats()); }),
      replay_pairs(size_t(options.replay > 0 ? options.replay_window : 1)),
      replay_labels(size_t(options.replay > 0 ? options.replay_window : 1)) {
  for (auto& r : replay_pairs) r.store(kNoPair, std::memory_order_relaxed);
}

void Trainer::ApplyRow(float* row, const float* grad, int n, int offset, float lr) {
  row_optimizer.Update(row + offset, row + width + offset, size_t(width), grad, n, lr);
}

float* Trainer::TrainRow(const EmbeddingTable& main, const EmbeddingTable& side,
                         const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
                         StagedRows* staged, size_t i) const {
  if (i == 0) return main.Row(rows[0]);
  if (i < slots.size() && slots[i] != StagedRows::kNoSlot) return staged->Row(slots[i]);
  return side.Row(rows[i]);
}

void Trainer::Gather(const EmbeddingTable& main, const EmbeddingTable& side,
                     const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
                     StagedRows* staged, float* vec, float* bias) const {
  SumRows(
      options.dim, rows.size(),
      [&](size_t i) -> const float* { return TrainRow(main, side, rows, slots, staged, i); }, vec,
      bias);
}

void Trainer::UpdateRows(EmbeddingTable& main, EmbeddingTable& side,
                         const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
                         StagedRows* staged, const float* grad, int t) {
  // Sparse updates, applied at once (Hogwild: another thread may update the
  // same row concurrently; lost updates are rare and harmless). A staged
  // feature row is updated in the thread's copy (MergeStaged marks it).
  const int d = options.dim;
  for (size_t i = 0; i < rows.size(); ++i) {
    const bool in_place = i == 0 || i >= slots.size() || slots[i] == StagedRows::kNoSlot;
    // Before the write: a snapshot may need the old values.
    if (in_place) (i == 0 ? main : side).MarkDirty(rows[i]);
    float* r = TrainRow(main, side, rows, slots, staged, i);
    ApplyRow(r, grad, d, 0, options.lr_embedding);
    ApplyRow(r, grad + d, 1, d + t, lr_bias);
  }
}

uint32_t StagedRows::Stage(const EmbeddingTable& table, uint32_t row) {
  if (index.empty()) index.assign(2 * kMaxRows, {0, 0});
  const size_t mask = index.size() - 1;
  for (size_t at = (row * 0x9E3779B1u) & mask;; at = (at + 1) & mask) {
    auto& [key, slot] = index[at];
    if (key == row + 1) return slot;
    if (key != 0) continue;
    if (rows.size() >= kMaxRows) return kNoSlot;
    key = row + 1;
    slot = uint32_t(rows.size());
    used.push_back(uint32_t(at));
    rows.push_back(row);
    const float* r = table.Row(row);
    base.insert(base.end(), r, r + floats);
    now.insert(now.end(), r, r + floats);
    return slot;
  }
}

void StagedRows::Merge(EmbeddingTable& table) {
  for (size_t slot = 0; slot < rows.size(); ++slot) {
    table.MarkDirty(rows[slot]);  // before the write, as in UpdateRows
    float* r = table.Row(rows[slot]);
    const float* b = base.data() + slot * floats;
    const float* n = now.data() + slot * floats;
    for (size_t j = 0; j < floats; ++j) r[j] += n[j] - b[j];
  }
  for (uint32_t at : used) index[at] = {0, 0};
  used.clear();
  rows.clear();
  base.clear();
  now.clear();
}

void Trainer::MergeStaged() {
  // After the parallel part of Train: no trainer touches the states now.
  for (TrainState& s : states) {
    s.staged_user.Merge(m_.user_features);
    s.staged_item.Merge(m_.item_features);
  }
}

float Trainer::Learn(Task task, float label, TrainState* s) {
  const int t = int(task);
  Forward& fw = s->fwd;
  std::array<float, kNumTasks> bu{}, bi{};
  Gather(m_.users, m_.user_features, s->user_rows, s->user_slots, &s->staged_user, fw.u.data(),
         bu.data());
  const float gate = m_.history_gate[0];
  if (s->has_history)
    for (int k = 0; k < options.dim; ++k) fw.u[k] += gate * s->history[k];
  Gather(m_.items, m_.item_features, s->item_rows, s->item_slots, &s->staged_item, fw.v.data(),
         bi.data());
  const uint32_t pre_row = m_.PretrainedRow(s->item_rows[0]);
  if (pre_row != EmbeddingTable::kNoRow)
    m_.shape.Project(s->dense_now, m_.pretrained->Row(pre_row), fw.v.data());

  const bool esmm = options.esmm && task == Task::kPurchase;
  const float y = m_.shape.ForwardTask(s->dense_now, t, bu[t] + bi[t], &fw);
  float yc = 0.0f, dyc = 0.0f;
  LossOutput out;
  if (esmm) {
    // The click tower's output joins the product.
    Forward& fc = s->fwd2;
    fc.u = fw.u;
    fc.v = fw.v;
    const int c = int(Task::kClick);
    yc = m_.shape.ForwardTask(s->dense_now, c, bu[c] + bi[c], &fc);
    const EsmmProductLoss::Output product = EsmmProductLoss::Forward(y, yc, label);
    out = product.purchase;
    dyc = product.dy_click;
  } else {
    out = losses.Forward(task, y, label);
  }
  if (!std::isfinite(y) || !std::isfinite(yc) || !std::isfinite(out.loss) ||
      !std::isfinite(out.dy) || !std::isfinite(dyc)) {
    ++s->refused;
    return out.prediction;
  }
  float gc = 0.0f;
  if (BackwardHeads(t, esmm, out, dyc, s, &gc)) {
    if (s->has_history) {
      // dL/dgate = du . history; Adagrad at the dense layers' rate.
      float g = 0.0f;
      for (int k = 0; k < options.dim; ++k) g += s->du[k] * s->history[k];
      g = std::clamp(g, -options.grad_clip, options.grad_clip);
      float& acc = m_.history_gate[1];
      acc += g * g;
      m_.history_gate[0] -= options.lr_dense * g / (std::sqrt(acc) + 1e-8f);
    }
    BackwardRows(t, esmm, gc, pre_row, s);
  }
  return out.prediction;
}

bool Trainer::BackwardHeads(int t, bool esmm, const LossOutput& out, float dyc, TrainState* s,
                            float* gc) {
  const int d = options.dim;
  const float w = m_.weighting.weight(Task(t));
  const float clip = options.grad_clip;
  const float g = std::clamp(out.dy * w, -clip, clip);
  // BackwardTask writes du and dv (d + 1 floats each, sized by TrainState).
  float grad_h_norm = m_.shape.BackwardTask(s->dense_now, t, g, &s->fwd, s->dense_grad.data(),
                                            s->du.data(), s->dv.data(), &s->pending);
  // The bias gradient rides in slot d.
  s->du[d] = g;
  s->dv[d] = g;
  if (esmm) {
    *gc = std::clamp(dyc * w, -clip, clip);
    grad_h_norm +=
        m_.shape.BackwardTask(s->dense_now, int(Task::kClick), *gc, &s->fwd2, s->dense_grad.data(),
                              s->du2.data(), s->dv2.data(), &s->pending);
    for (int k = 0; k < d; ++k) {
      s->du[k] += s->du2[k];
      s->dv[k] += s->dv2[k];
    }
  }
  if (!AllFinite(s->du.data(), d + 1) || !AllFinite(s->dv.data(), d + 1) ||
      !std::isfinite(grad_h_norm)) {
    ++s->refused;
    return false;
  }
  s->dense_touched = true;
  s->chunk.loss_sum[t] += out.loss;
  s->chunk.grad_norm_sum[t] += w > 0 ? grad_h_norm / w : 0.0;
  s->chunk.count[t] += 1;
  return true;
}

void Trainer::BackwardRows(int t, bool esmm, float gc, uint32_t pre_row, TrainState* s) {
  const int d = options.dim;
  if (pre_row != EmbeddingTable::kNoRow) {
    // v = E + W p: dL/dW = dv p^T (a dense gradient), dL/dp = W^T dv.
    const bool trainable = options.pretrained_trainable;
    const int P = options.pretrained_dim;
    float* p = m_.pretrained->Row(pre_row);
    s->dp.resize(P);
    m_.shape.ProjectBackward(s->dense_now, p, s->dv.data(), s->dense_grad.data(),
                             trainable ? s->dp.data() : nullptr);
    bool finite = true;
    if (trainable)
      for (float x : s->dp) finite &= std::isfinite(x);
    if (!finite) {
      ++s->refused;
    } else if (trainable) {
      m_.pretrained->MarkDirty(pre_row);  // before the write, as in UpdateRows
      row_optimizer.Update(p, p + P, size_t(P), s->dp.data(), P, options.lr_embedding);
    }
  }
  UpdateRows(m_.users, m_.user_features, s->user_rows, s->user_slots, &s->staged_user, s->du.data(),
             t);
  UpdateRows(m_.items, m_.item_features, s->item_rows, s->item_slots, &s->staged_item, s->dv.data(),
             t);
  if (!esmm) return;
  // The click biases take the click tower's share of the gradient.
  const int c = int(Task::kClick);
  for (auto [main, side, rows, slots, staged] :
       {std::tuple<EmbeddingTable*, EmbeddingTable*, std::vector<uint32_t>*, std::vector<uint32_t>*,
                   StagedRows*>{&m_.users, &m_.user_features, &s->user_rows, &s->user_slots,
                                &s->staged_user},
        {&m_.items, &m_.item_features, &s->item_rows, &s->item_slots, &s->staged_item}})
    for (size_t i = 0; i < rows->size(); ++i)
      ApplyRow(TrainRow(*main, *side, *rows, *slots, staged, i), &gc, 1, d + c, lr_bias);
}

void Trainer::ResolveChunk(std::span<const Event> events, bool stage, TrainState* s) {
  // All lookups of the chunk first, without the training work in between,
  // so that consecutive lookups are independent and the CPU overlaps their
  // cache misses. Two passes: the user and item rows of every event, then
  // their feature rows and lists in event order (each table still creates
  // its rows in event order, so rows and lists come out as if resolved one
  // event at a time). Between the passes the rows' list entries (one miss
  // per user otherwise) are on their way into the cache.
  // Prefetching in two steps: the index slots of the ids kSlotAhead events
  // ahead, then, once those slots are in the cache, the id headers of the
  // rows they point to kRowAhead events ahead (the header is what the lookup
  // compares, and the row's first cache line).
  constexpr size_t kSlotAhead = 16, kRowAhead = 8;
  auto prefetch_slots = [&](size_t i) {
    m_.users.Prefetch(events[i].user);
    m_.items.Prefetch(events[i].item);
  };
  auto prefetch_rows = [&](size_t i) {
    m_.users.PrefetchRow(events[i].user);
    m_.items.PrefetchRow(events[i].item);
  };
  const size_t n = events.size();
  for (size_t i = 0; i < std::min(n, kSlotAhead); ++i) prefetch_slots(i);
  for (size_t i = 0; i < std::min(n, kRowAhead); ++i) prefetch_rows(i);
  s->chunk_main.resize(2 * n);
  // With a memory limit and no user expiry, users are touched with the
  // limit's clock (Residency::Now); expiry touches them with event time.
  const uint32_t user_clock =
      m_.residency && m_.options.expire_user_s <= 0 ? m_.residency->clock() : 0;
  for (size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    if (i + kSlotAhead < n) prefetch_slots(i + kSlotAhead);
    if (i + kRowAhead < n) prefetch_rows(i + kRowAhead);
    const uint32_t u = m_.Admit(0, e.user), v = m_.Admit(1, e.item);
    if (user_clock != 0) {
      m_.users.Touch(u, user_clock);  // least recently used, for the memory limit
    } else if (e.ts_ms > 0 && m_.users.tracks_touches()) {
      m_.users.Touch(u, uint32_t(e.ts_ms / 1000));
    }
    if (e.ts_ms > 0 && m_.items.tracks_touches()) m_.items.Touch(v, uint32_t(e.ts_ms / 1000));
    s->chunk_main[2 * i] = u;
    s->chunk_main[2 * i + 1] = v;
    m_.user_lists.Prefetch(u);
    m_.item_lists.Prefetch(v);
  }
  s->chunk_rows.clear();
  s->chunk_begin.clear();
  for (size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    s->chunk_begin.push_back(uint32_t(s->chunk_rows.size()));
    m_.Rows(s->chunk_main[2 * i], e.user_features, m_.users, m_.user_features, m_.user_lists,
            &s->chunk_rows);
    s->chunk_begin.push_back(uint32_t(s->chunk_rows.size()));
    m_.Rows(s->chunk_main[2 * i + 1], e.item_features, m_.items, m_.item_features, m_.item_lists,
            &s->chunk_rows);
    if (m_.user_features.tracks_touches() && e.ts_ms > 0) {
      // The event's feature rows (row 0 of each side is the user or item).
      const uint32_t t = uint32_t(e.ts_ms / 1000);
      const size_t user_at = s->chunk_begin[2 * i], item_at = s->chunk_begin[2 * i + 1];
      for (size_t k = user_at + 1; k < item_at; ++k) m_.user_features.Touch(s->chunk_rows[k], t);
      for (size_t k = item_at + 1; k < s->chunk_rows.size(); ++k)
        m_.item_features.Touch(s->chunk_rows[k], t);
    }
  }
  s->chunk_begin.push_back(uint32_t(s->chunk_rows.size()));
  if (!stage) return;
  s->chunk_slots.assign(s->chunk_rows.size(), StagedRows::kNoSlot);
  for (size_t i = 0; i < n; ++i) {
    // Entry chunk_begin[2i] is the user row, chunk_begin[2i + 1] the item row.
    for (uint32_t at = s->chunk_begin[2 * i] + 1; at < s->chunk_begin[2 * i + 1]; ++at)
      s->chunk_slots[at] = s->staged_user.Stage(m_.user_features, s->chunk_rows[at]);
    for (uint32_t at = s->chunk_begin[2 * i + 1] + 1; at < s->chunk_begin[2 * i + 2]; ++at)
      s->chunk_slots[at] = s->staged_item.Stage(m_.item_features, s->chunk_rows[at]);
  }
}

void Trainer::PrefetchRows(const TrainState& s, size_t i) const {
  // The user row is rarely in cache (there are many users), the item row
  // often not; both are read and written by the event's step.
  for (auto [table, at] : {std::pair{&m_.users, s.chunk_begin[2 * i]},
                           std::pair{&m_.items, s.chunk_begin[2 * i + 1]}}) {
    PrefetchBytes<true>(table->Row(s.chunk_rows[at]), table->row_floats() * sizeof(float));
  }
}

void Trainer::PoolHistory(uint32_t user, TrainState* s) const {
  s->has_history = false;
  if (options.history == 0) return;
  std::fill(s->history.begin(), s->history.end(), 0.0f);
  m_.AddHistory(user, &s->history_view, s->history_acc.data(), s->history.data());
  s->has_history = !s->history_view.empty();
}

void Trainer::Remember(const Event& e, uint32_t item_row) {
  if (m_.recent.size() <= 1) return;
  // Only negatives and implicit tasks read the ring: without negatives it
  // holds implicit tasks' positives, and once every task is explicit
  // (feedback auto, a label 0 seen) it is no longer kept up (nor sent to
  // other trainers).
  if (options.negatives == 0 && (e.task == Task::kRating || e.label <= 0.5f || !m_.any_implicit()))
    return;
  m_.PushRecent(item_row, Model::IdHash(e.item));
}

void Trainer::DrawNegatives(TrainState* s) {
  // Drawn first and their rows prefetched, so that their cache misses
  // overlap instead of coming one after another; then gathered once for
  // every event of the chunk.
  SharedNegatives& sn = s->negatives;
  const int d = options.dim;
  sn.drawn = true;
  sn.count = 0;
  sn.rows.clear();
  sn.slots.clear();
  sn.begin.assign(1, 0);
  const uint64_t next = m_.recent_next.load(std::memory_order_relaxed);
  const uint64_t filled = std::min<uint64_t>(m_.window, next);
  s->neg_entries.clear();
  for (int k = 0; k < options.implicit_negatives && filled > 0; ++k) {
    s->rng = s->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    const uint64_t entry =
        m_.recent[m_.WindowSlot(next, (s->rng >> 33) % filled)].load(std::memory_order_relaxed);
    if (entry == Model::kNoEntry) continue;
    s->neg_entries.push_back(entry);
    const uint32_t neg = uint32_t(entry >> 32);
    PrefetchBytes<true>(m_.items.Row(neg), m_.items.row_floats() * sizeof(float));
    m_.item_lists.Prefetch(neg);
  }
  const size_t n = s->neg_entries.size();
  sn.v.resize(n * d);
  sn.bias.resize(n * kNumTasks);
  sn.logit_extra.resize(n);
  sn.grad.assign(n * (d + kNumTasks), 0.0f);
  sn.touched.assign(n, 0);
  for (uint64_t entry : s->neg_entries) {
    const uint32_t neg = uint32_t(entry >> 32);
    s->neg_rows.clear();
    s->neg_rows.push_back(neg);
    m_.item_lists.Get(neg, &s->neg_rows);
    // In a parallel call, the feature rows (a few hot categories) are
    // trained in the thread's staged copies, as the event's own are.
    s->neg_slots.clear();
    if (s->parallel) {
      s->neg_slots.push_back(StagedRows::kNoSlot);
      for (size_t i = 1; i < s->neg_rows.size(); ++i)
        s->neg_slots.push_back(s->staged_item.Stage(m_.item_features, s->neg_rows[i]));
    }
    float* v = sn.v.data() + sn.count * d;
    Gather(m_.items, m_.item_features, s->neg_rows, s->neg_slots, &s->staged_item, v,
           sn.bias.data() + sn.count * kNumTasks);
    const uint32_t pre_row = m_.PretrainedRow(neg);
    if (pre_row != EmbeddingTable::kNoRow)
      m_.shape.Project(s->dense_now, m_.pretrained->Row(pre_row), v);
    const uint32_t hash = uint32_t(entry);
    // The popularity prior less log Q (the probability of the draw; the
    // ring's size is the same for every candidate and cancels).
    const uint32_t count = m_.RecentCount(hash).load(std::memory_order_relaxed);
    sn.logit_extra[sn.count] = m_.Prior(hash, count) - m_.LogAtLeast1(count);
    sn.rows.insert(sn.rows.end(), s->neg_rows.begin(), s->neg_rows.end());
    if (s->parallel) {
      sn.slots.insert(sn.slots.end(), s->neg_slots.begin(), s->neg_slots.end());
    }
    sn.begin.push_back(uint32_t(sn.rows.size()));
    ++sn.count;
  }
}

void Trainer::ApplyNegatives(TrainState* s) {
  // Each negative's summed gradient of the chunk, in one step per row.
  SharedNegatives& sn = s->negatives;
  if (!sn.drawn) return;
  sn.drawn = false;
  const int d = options.dim;
  for (size_t k = 0; k < sn.count; ++k) {
    if (!sn.touched[k]) continue;
    const float* g = sn.grad.data() + k * (d + kNumTasks);
    if (!AllFinite(g, size_t(d + kNumTasks))) {
      ++s->refused;
      continue;
    }
    for (uint32_t at = sn.begin[k]; at < sn.begin[k + 1]; ++at) {
      const size_t i = at - sn.begin[k];
      const bool staged = s->parallel && i > 0 && sn.slots[at] != StagedRows::kNoSlot;
      EmbeddingTable& table = i == 0 ? m_.items : m_.item_features;
      if (!staged) table.MarkDirty(sn.rows[at]);  // before the write, as in UpdateRows
      float* r = staged ? s->staged_item.Row(sn.slots[at]) : table.Row(sn.rows[at]);
      ApplyRow(r, g, d, 0, options.lr_embedding);
      for (int t = 0; t < kNumTasks; ++t)
        if (g[d + t] != 0.0f) ApplyRow(r, g + d + t, 1, d + t, lr_bias);
    }
  }
}

void Trainer::UpdateMatchWeights(int t, const float* grad) {
  // Adagrad on the task's match weights, at the biases' rate (Hogwild).
  float* w = m_.MatchWeights(t);
  float* acc = m_.MatchAccumulators(t);
  for (size_t j = 0; j < 2 * size_t(options.history); ++j) {
    const float g = grad[j];
    if (g == 0.0f) continue;
    acc[j] += g * g;
    w[j] -= lr_bias * g / (std::sqrt(acc[j]) + 1e-8f);
  }
}

float Trainer::ImplicitLogit(int t, TrainState* s, uint32_t* count) {
  // u = the user's rows + pooled history (into s->fwd.u), v = the item's
  // rows (into s->item_v).
  const int d = options.dim;
  float* u = s->fwd.u.data();
  float* v = s->item_v.data();
  std::array<float, kNumTasks> bu{}, bi{};
  Gather(m_.users, m_.user_features, s->user_rows, s->user_slots, &s->staged_user, u, bu.data());
  if (s->has_history)
    for (int k = 0; k < d; ++k) u[k] += s->history[k];
  s->user_bias = bu[t];
  Gather(m_.items, m_.item_features, s->item_rows, s->item_slots, &s->staged_item, v, bi.data());
  const uint32_t pre_row = m_.PretrainedRow(s->item_rows[0]);
  if (pre_row != EmbeddingTable::kNoRow)
    m_.shape.Project(s->dense_now, m_.pretrained->Row(pre_row), v);
  s->cand_hits.resize((size_t(options.implicit_negatives) + 1) * 2 * options.history);
  const size_t history_items = s->has_history ? s->history_view.items.size() : 0;
  float match = 0.0f;
  bool own = false;
  if (s->has_history)
    match = m_.HistoryMatch(t, s->history_view, s->item_rows[0], s->item_rows.data() + 1,
                            s->item_rows.size() - 1, s->cand_hits.data(), &own);
  s->cand_tower.assign(1, Model::TowerIndex(t, history_items, own));
  s->cand_dot.clear();
  s->cand_dot.push_back(Dot(u, v, d));
  float z = m_.tower_weight[s->cand_tower[0]] * s->cand_dot[0] + bu[t] + bi[t];
  if (s->has_history) z += match;
  *count = m_.RecentCount(s->item_hash).load(std::memory_order_relaxed);
  return z + m_.Prior(s->item_hash, *count);
}

float Trainer::LearnImplicit(int t, bool learn, TrainState* s) {
  // Two towers: u = the user's rows + pooled history, v_c = candidate c's
  // rows; logit s_c = u . v_c + b_u + b_c + history match + popularity
  // prior. Sampled softmax over the event's item (c = 0) and the chunk's
  // sampled items (SharedNegatives), each logit less log Q_c, the
  // probability of drawing c (Yi et al. 2019): then the softmax estimates
  // the full one over all items.
  const int d = options.dim;
  const float* u = s->fwd.u.data();
  const float* v0 = s->item_v.data();
  const size_t hw = 2 * size_t(options.history);
  uint32_t count0 = 0;
  const float z0 = ImplicitLogit(t, s, &count0);
  const float prediction = 1.0f / (1.0f + std::exp(-(z0 - m_.implicit_shift[t])));
  if (!learn) return prediction;
  if (std::isfinite(z0)) m_.implicit_shift[t] += 0.001f * (z0 - m_.implicit_shift[t]);
  SharedNegatives& sn = s->negatives;
  if (!sn.drawn) DrawNegatives(s);
  // Logits: the event's item, then each negative other than it.
  const uint32_t pos_row = s->item_rows[0];
  s->cand_z.clear();
  s->cand_index.clear();
  s->cand_z.push_back(z0 - m_.LogAtLeast1(count0));
  s->cand_index.push_back(SIZE_MAX);
  float zmax = s->cand_z[0];
  const size_t history_items = s->has_history ? s->history_view.items.size() : 0;
  for (size_t k = 0; k < sn.count; ++k) {
    const uint32_t row = sn.rows[sn.begin[k]];
    if (row == pos_row) continue;
    float match = 0.0f;
    bool own = false;
    if (s->has_history)
      match = m_.HistoryMatch(t, s->history_view, row, sn.rows.data() + sn.begin[k] + 1,
                              sn.begin[k + 1] - sn.begin[k] - 1,
                              s->cand_hits.data() + s->cand_z.size() * hw, &own);
    const size_t tower = Model::TowerIndex(t, history_items, own);
    s->cand_dot.push_back(Dot(u, sn.v.data() + k * d, d));
    float z = m_.tower_weight[tower] * s->cand_dot.back() + s->user_bias +
              sn.bias[k * kNumTasks + t] + sn.logit_extra[k];
    if (s->has_history) z += match;
    s->cand_z.push_back(z);
    s->cand_index.push_back(k);
    s->cand_tower.push_back(tower);
    zmax = std::max(zmax, z);
  }
  const size_t n = s->cand_z.size();
  if (n < 2) return prediction;
  float sum = 0.0f;
  for (size_t c = 0; c < n; ++c) sum += (s->cand_z[c] = std::exp(s->cand_z[c] - zmax));
  if (!std::isfinite(sum) || !(sum > 0.0f)) {
    ++s->refused;
    return prediction;
  }
  // dL/ds_c = p_c - [c = 0]; du = sum_c alpha_c g_c v_c, dv_c = alpha_c g_c u,
  // dalpha = sum_c g_c u . v_c over the candidates c of that weight.
  std::fill(s->du.begin(), s->du.end(), 0.0f);
  s->match_grad.assign(hw, 0.0f);
  float* __restrict du = s->du.data();
  float* __restrict match_grad = s->match_grad.data();
  std::array<float, 2> dtower{};  // weight of items new to the user, of own items
  for (size_t c = 0; c < n; ++c) {
    const float g = s->cand_z[c] / sum - (c == 0 ? 1.0f : 0.0f);
    s->cand_z[c] = g;
    const bool own = s->cand_tower[c] >= Model::kTowerSet;
    dtower[own] += g * s->cand_dot[c];
    if (s->has_history) {
      const float* __restrict hits = s->cand_hits.data() + c * hw;
      for (size_t j = 0; j < hw; ++j) match_grad[j] += g * hits[j];
    }
    const float* __restrict v = c == 0 ? v0 : sn.v.data() + s->cand_index[c] * d;
    const float alpha = m_.tower_weight[s->cand_tower[c]];
    for (int k = 0; k < d; ++k) du[k] += alpha * g * v[k];
  }
  if (!AllFinite(du, size_t(d))) {
    ++s->refused;
    return prediction;
  }
  // The event's item now; the negatives' gradients summed for the chunk's
  // end (ApplyNegatives).
  float* __restrict dv = s->dv.data();
  const float g0 = s->cand_z[0];
  const float alpha0 = m_.tower_weight[s->cand_tower[0]];
  for (int k = 0; k < d; ++k) dv[k] = alpha0 * g0 * u[k];
  dv[d] = g0;
  UpdateRows(m_.items, m_.item_features, s->item_rows, s->item_slots, &s->staged_item, dv, t);
  for (size_t c = 1; c < n; ++c) {
    const size_t k = s->cand_index[c];
    const float g = s->cand_z[c];
    const float alpha = m_.tower_weight[s->cand_tower[c]];
    float* __restrict acc = sn.grad.data() + k * (d + kNumTasks);
    for (int j = 0; j < d; ++j) acc[j] += alpha * g * u[j];
    acc[d + t] += g;
    sn.touched[k] = 1;
  }
  if (s->has_history) UpdateMatchWeights(t, s->match_grad.data());
  for (int own = 0; own < 2; ++own) {
    // Adagrad, at the biases' rate (Hogwild); a weight no candidate used
    // stays as it is.
    const float g = dtower[own];
    if (g == 0.0f || !std::isfinite(g)) continue;
    const size_t i = Model::TowerIndex(t, history_items, own == 1);
    float& acc = m_.tower_weight[Model::kTowerParams + i];
    acc += g * g;
    m_.tower_weight[i] -= lr_bias * g / std::sqrt(acc);
  }
  s->du[d] = 0.0f;  // the user's bias cancels in the softmax
  UpdateRows(m_.users, m_.user_features, s->user_rows, s->user_slots, &s->staged_user, du, t);
  return prediction;
}

void Trainer::TrainOne(const Event& e, TrainState* s, Prediction* before) {
  const uint32_t user_row = s->user_rows[0], item_row = s->item_rows[0];
  const int t = int(e.task);
  if (e.task != Task::kRating && e.label <= 0.5f &&
      !m_.saw_negative[t].load(std::memory_order_relaxed))
    m_.saw_negative[t].store(true, std::memory_order_relaxed);
  PoolHistory(user_row, s);
  const bool implicit = m_.implicit(t);
  if (implicit || options.negatives > 0 || options.replay > 0) {
    s->item_hash = Model::IdHash(e.item);
    // The draws of this event's negatives and replays depend on the
    // model's state and the event's place in the Train call alone (not on
    // which thread runs it), so that a restored model given the same calls
    // learns on exactly as the original would (one thread).
    uint64_t seed = options.seed ^ (uint64_t(Model::IdHash(e.user)) << 32 | s->item_hash);
    seed ^= m_.recent_next.load(std::memory_order_relaxed) * 0xD1B54A32D192ED03ULL;
    seed ^= replay_next.load(std::memory_order_relaxed) * 0x8CB92BA72F3D8DD7ULL;
    seed ^= uint64_t(s->event_index) * 0x9E3779B97F4A7C15ULL;
    seed = (seed ^ (seed >> 30)) * 0xBF58476D1CE4E5B9ULL;
    seed = (seed ^ (seed >> 27)) * 0x94D049BB133111EBULL;
    s->rng = seed ^ (seed >> 31);
  }
  const float pred = implicit ? LearnImplicit(t, e.label > 0.5f, s) : Learn(e.task, e.label, s);
  if (before) {
    *before = Prediction();
    if (e.task == Task::kClick) before->click = pred;
    if (e.task == Task::kPurchase) before->purchase = pred;
    if (e.task == Task::kRating) before->rating = pred;
  }
  // Counted into `learned` and the metrics by MergeMetrics at the end of
  // the chunk: no shared cache line or lock per event.
  s->observations.push_back(Observation::Of(e.task, pred, e.label, options.decision_threshold));
  if (e.task == Task::kPurchase && e.label > 0.5f && !m_.IsPrior(0, user_row) &&
      !m_.IsPrior(1, item_row)) {
    std::unique_lock lock(m_.purchases_mu);
    if (m_.purchases[user_row].insert(item_row).second)
      m_.new_purchases.emplace_back(user_row, item_row);
  }
  if (options.negatives > 0) LearnNegatives(e, item_row, s);
  if (options.replay > 0) Replay(e, user_row, item_row, s);
}

void Trainer::LearnNegatives(const Event& e, uint32_t item_row, TrainState* s) {
  // For a positive of an explicit task: sampled items as its negatives.
  const uint64_t window = m_.window, next = m_.recent_next.load(std::memory_order_relaxed);
  if (e.task != Task::kRating && e.label > 0.5f && !m_.implicit(int(e.task))) {
    for (int k = 0; k < options.negatives; ++k) {
      s->rng = s->rng * 6364136223846793005ULL + 1442695040888963407ULL;
      // A slot of the window not written yet is empty.
      const uint64_t j = (s->rng >> 33) % window;
      const uint64_t entry = j < next
                                 ? m_.recent[m_.WindowSlot(next, j)].load(std::memory_order_relaxed)
                                 : Model::kNoEntry;
      const uint32_t neg = uint32_t(entry >> 32);
      if (entry == Model::kNoEntry || neg == item_row) continue;
      s->item_rows.clear();
      s->item_slots.clear();
      s->item_rows.push_back(neg);
      m_.item_lists.Get(neg, &s->item_rows);
      Learn(e.task, 0.0f, s);
    }
  }
}

void Trainer::Replay(const Event& e, uint32_t user_row, uint32_t item_row, TrainState* s) {
  const size_t n = replay_pairs.size();
  const size_t slot = replay_next.fetch_add(1, std::memory_order_relaxed) % n;
  uint32_t label_bits;
  std::memcpy(&label_bits, &e.label, 4);
  replay_labels[slot].store(uint64_t(e.task) << 32 | label_bits, std::memory_order_relaxed);
  replay_pairs[slot].store(uint64_t(user_row) << 32 | item_row, std::memory_order_relaxed);
  for (int k = 0; k < options.replay; ++k) {
    s->rng = s->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    const size_t at = (s->rng >> 33) % n;
    const uint64_t pair = replay_pairs[at].load(std::memory_order_relaxed);
    const uint64_t tl = replay_labels[at].load(std::memory_order_relaxed);
    if (pair == kNoPair || (tl >> 32) >= uint64_t(kNumTasks)) continue;
    if (!m_.users.IsLive(uint32_t(pair >> 32)) || !m_.items.IsLive(uint32_t(pair)))
      continue;  // expired since
    float label;
    const uint32_t bits = uint32_t(tl);
    std::memcpy(&label, &bits, 4);
    s->user_rows.clear();
    s->user_slots.clear();
    s->item_slots.clear();
    s->user_rows.push_back(uint32_t(pair >> 32));
    m_.user_lists.Get(s->user_rows[0], &s->user_rows);
    s->item_rows.clear();
    s->item_rows.push_back(uint32_t(pair));
    m_.item_lists.Get(s->item_rows[0], &s->item_rows);
    PoolHistory(s->user_rows[0], s);
    const int t = int(tl >> 32);
    s->item_hash = Model::IdHash(m_.items.key(s->item_rows[0]));
    if (m_.implicit(t))
      LearnImplicit(t, label > 0.5f, s);
    else
      Learn(Task(t), label, s);
  }
}

void Trainer::BeginChunk(bool parallel, TrainState* s) {
  s->parallel = parallel;
  s->negatives.drawn = false;
  if (!parallel) {
    s->user_slots.clear();
    s->item_slots.clear();
    s->dense_now = m_.dense.data();
    return;
  }
  // A chunk trained beside others reads the dense layers from a copy taken
  // now (one sequential read of the block): otherwise every other thread's
  // chunk-end update pulls the block back from that thread's core, cache
  // line by cache line, in the middle of this chunk's steps. A chunk on one
  // thread sees no other update anyway; in parallel, the others' updates
  // are seen from the next chunk on instead of as they land.
  s->dense_copy.assign(m_.dense.begin(), m_.dense.end());
  s->dense_now = s->dense_copy.data();
}

void Trainer::FinishChunk(TrainState* s) {
  ApplyNegatives(s);
  m_.shape.FlushExpertGradients(&s->pending, s->dense_grad.data());
  if (s->dense_touched) {
    const size_t n = s->dense_grad.size();
    const float* grad = s->dense_grad.data();
    if (AllFinite(grad, n)) {
      const uint64_t step = dense_optimizer.needs_moments()
                                ? m_.dense_steps.fetch_add(1, std::memory_order_relaxed) + 1
                                : 0;
      dense_optimizer.Step(m_.dense.data(), m_.dense_accum.data(), m_.dense_m.data(), grad, n,
                           step);
    } else {
      ++s->refused;
    }
    std::fill(s->dense_grad.begin(), s->dense_grad.end(), 0.0f);
    s->dense_touched = false;
  }
  m_.weighting.Update(s->chunk);
  s->chunk = TaskChunkStats();
  MergeMetrics(s);
}

void Trainer::MergeMetrics(TrainState* s) {
  std::array<uint64_t, kNumTasks> counts{};
  {
    std::lock_guard lock(m_.metrics_mu);
    for (const Observation& o : s->observations) {
      TaskMetrics& m = m_.metrics[int(o.task)];
      ++counts[int(o.task)];
      m.count += 1;
      if (o.task == Task::kRating) {
        m.abs_sum += std::abs(o.value);
        m.sq_sum += o.value * o.value;
      } else {
        m.loss_sum += o.value;
        (o.positive ? m.pos : m.neg)[o.bin] += 1;
        m.true_pos += o.positive && o.predicted;
        m.predicted_pos += o.predicted;
        m.actual_pos += o.positive;
      }
    }
  }
  s->observations.clear();
  for (int t = 0; t < kNumTasks; ++t)
    if (counts[t]) m_.learned[t].fetch_add(counts[t], std::memory_order_relaxed);
  if (s->refused) m_.refused.fetch_add(s->refused, std::memory_order_relaxed);
  s->refused = 0;
}

void Trainer::Train(std::span<const Event> events, std::vector<Prediction>* before) {
  // Every entry is written by TrainOne.
  if (before) before->resize(events.size());
  const ThreadNiceScope nice(nice_target);
  const size_t chunk = size_t(options.chunk);
  const bool parallel = threads > 1 && events.size() > chunk;
  event_rows.resize(events.size());
  auto run = [&](size_t begin, size_t end) {
    TrainState& s = states.local();
    BeginChunk(parallel, &s);
    ResolveChunk(events.subspan(begin, end - begin), parallel, &s);
    const size_t n = end - begin;
    constexpr size_t kAhead = 2;  // events; a step takes about a microsecond
    for (size_t i = 0; i < n && i < kAhead; ++i) PrefetchRows(s, i);
    for (size_t i = 0; i < n; ++i) {
      if (i + kAhead < n) PrefetchRows(s, i + kAhead);
      const uint32_t* rows = s.chunk_rows.data();
      const uint32_t* at = s.chunk_begin.data() + 2 * i;
      s.user_rows.assign(rows + at[0], rows + at[1]);
      s.item_rows.assign(rows + at[1], rows + at[2]);
      if (parallel) {
        const uint32_t* slots = s.chunk_slots.data();
        s.user_slots.assign(slots + at[0], slots + at[1]);
        s.item_slots.assign(slots + at[1], slots + at[2]);
      }
      event_rows[begin + i] = uint64_t(s.user_rows[0]) << 32 | s.item_rows[0];
      s.event_index = begin + i;
      TrainOne(events[begin + i], &s, before ? &(*before)[begin + i] : nullptr);
    }
    FinishChunk(&s);
  };
  if (!parallel) {
    for (size_t b = 0; b < events.size(); b += chunk) run(b, std::min(events.size(), b + chunk));
  } else {
    arena.execute([&] {
      tbb::parallel_for(
          tbb::blocked_range<size_t>(0, events.size(), chunk),
          [&](const tbb::blocked_range<size_t>& r) { run(r.begin(), r.end()); },
          tbb::simple_partitioner());
    });
    MergeStaged();
  }
  int64_t latest_ms = 0;
  // The negative ring and the histories, in event order, on this thread:
  // the same for any number of threads, and no cache line of the ring
  // moves between cores during the call (the call's events learned from
  // both as they were when it began).
  for (size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    const uint32_t user_row = uint32_t(event_rows[i] >> 32), item_row = uint32_t(event_rows[i]);
    if (e.ts_ms > 0) latest_ms = std::max(latest_ms, e.ts_ms);
    // A prior row stands for ids not admitted yet: it is no item to draw
    // as a negative, and keeps no history.
    if (m_.IsPrior(1, item_row)) continue;
    Remember(e, item_row);
    if (options.history > 0 && e.task != Task::kRating && e.label > 0.5f &&
        !m_.IsPrior(0, user_row))
      m_.histories.Push(user_row, item_row);
  }
  // Expiry: event time moves forward only; a slice of the users is checked
  // after each call (Model::ExpireStep).
  if (latest_ms / 1000 > m_.event_time_s.load(std::memory_order_relaxed))
    m_.event_time_s.store(latest_ms / 1000, std::memory_order_relaxed);
  if (m_.expiring()) m_.ExpireStep(std::max<size_t>(4096, 4 * events.size()));
  if (m_.residency) m_.residency->Evict();
}

void Trainer::ParallelFor(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  grain = std::max<size_t>(1, grain);
  if (threads == 1 || n <= grain) {
    if (n > 0) fn(0, n);
    return;
  }
  arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, n, grain),
                      [&](const tbb::blocked_range<size_t>& r) { fn(r.begin(), r.end()); });
  });
}

}  // namespace recstream::learner
