#include "learner/learner.h"

#include "learner/learner_impl.h"

namespace recstream::learner {

std::string_view TaskName(Task task) {
  switch (task) {
    case Task::kClick:
      return "click";
    case Task::kPurchase:
      return "purchase";
    case Task::kRating:
      return "rating";
  }
  return "unknown";
}

std::optional<Task> ParseTask(std::string_view name) {
  for (Task t : kAllTasks)
    if (TaskName(t) == name) return t;
  return std::nullopt;
}

std::string_view OptimizerName(Optimizer o) {
  switch (o) {
    case Optimizer::kAdagrad:
      return "adagrad";
    case Optimizer::kAdam:
      return "adam";
    case Optimizer::kAdamW:
      return "adamw";
    case Optimizer::kSgd:
      return "sgd";
  }
  return "unknown";
}

std::string_view RatingLossName(RatingLoss l) {
  return l == RatingLoss::kHuber ? "huber" : "squared";
}

std::string_view ArchName(Arch arch) { return arch == Arch::kMmoe ? "mmoe" : "shared_bottom"; }

std::string_view WeightingName(Weighting w) {
  switch (w) {
    case Weighting::kFixed:
      return "fixed";
    case Weighting::kUncertainty:
      return "uncertainty";
    case Weighting::kGradNorm:
      return "gradnorm";
    case Weighting::kDwa:
      return "dwa";
  }
  return "unknown";
}

Status ValidateOptions(const LearnerOptions& o) {
  auto bad = [](std::string what) { return Status::InvalidArgument(std::move(what)); };
  if (o.dim < 1 || o.dim > 1024) return bad("model.dim must be in [1, 1024]");
  if (o.hidden < 1 || o.hidden > 4096) return bad("model.hidden must be in [1, 4096]");
  if (o.experts < 1 || o.experts > 64) return bad("model.experts must be in [1, 64]");
  for (float w : o.fixed_weights)
    if (!(w >= 0.0f) || !std::isfinite(w))
      return bad("model.fixed_weights must be finite and >= 0");
  auto positive = [](float v) { return v > 0.0f && std::isfinite(v); };
  if (!positive(o.lr_embedding)) return bad("model.lr_embedding must be > 0");
  if (!positive(o.lr_dense)) return bad("model.lr_dense must be > 0");
  if (!(o.adagrad_init >= 0.0f) || !std::isfinite(o.adagrad_init))
    return bad("model.adagrad_init must be >= 0");
  if (!(o.lr_bias >= 0.0f) || !std::isfinite(o.lr_bias)) return bad("model.lr_bias must be >= 0");
  if (o.embedding_optimizer != Optimizer::kAdagrad && o.embedding_optimizer != Optimizer::kSgd)
    return bad("model.embedding_optimizer must be adagrad or sgd");
  if (!(o.decision_threshold > 0.0f && o.decision_threshold < 1.0f))
    return bad("metrics.threshold must be in (0, 1)");
  if (!(o.adam_beta1 >= 0.0f && o.adam_beta1 < 1.0f))
    return bad("model.adam_beta1 must be in [0, 1)");
  if (!(o.adam_beta2 >= 0.0f && o.adam_beta2 < 1.0f))
    return bad("model.adam_beta2 must be in [0, 1)");
  if (!(o.weight_decay >= 0.0f) || !std::isfinite(o.weight_decay))
    return bad("model.weight_decay must be >= 0");
  if (!positive(o.huber_delta)) return bad("model.huber_delta must be > 0");
  if (o.replay < 0 || o.replay > 100) return bad("model.replay must be in [0, 100]");
  if (o.replay_window < 1 || o.replay_window > 1 << 24)
    return bad("model.replay_window must be in [1, 16777216]");
  if (o.negatives < 0 || o.negatives > 100) return bad("model.negatives must be in [0, 100]");
  if (o.negative_window < 1 || o.negative_window > 1 << 24)
    return bad("model.negative_window must be in [1, 16777216]");
  if (!(o.lr_weighting >= 0.0f)) return bad("model.lr_weighting must be >= 0");
  if (!(o.l2 >= 0.0f) || !std::isfinite(o.l2)) return bad("model.l2 must be >= 0");
  if (!positive(o.init_scale)) return bad("model.init_scale must be > 0");
  if (!positive(o.grad_clip)) return bad("model.grad_clip must be > 0");
  if (!std::isfinite(o.rating_min) || !std::isfinite(o.rating_max) ||
      !(o.rating_min < o.rating_max))
    return bad("rating.min must be below rating.max");
  if (o.pretrained_dim < 0 || o.pretrained_dim > 8192)
    return bad("model.pretrained_dim must be in [0, 8192]");
  if (o.threads < 0 || o.threads > 256) return bad("learner.threads must be in [0, 256]");
  if (o.chunk < 1 || o.chunk > 1 << 20) return bad("learner.chunk must be in [1, 1048576]");
  if (o.train_nice < 0 || o.train_nice > 19) return bad("learner.train_nice must be in [0, 19]");
  return Status::OK();
}

float BlendScore(const Prediction& p, const Blend& blend, float rating_min, float rating_max) {
  float r = (p.rating - rating_min) / (rating_max - rating_min);
  return blend.click * p.click + blend.purchase * p.purchase + blend.rating * r;
}

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

void Learner::Impl::ApplyRow(float* row, const float* grad, int n, int offset, float lr) {
  row_optimizer.Update(row + offset, row + width + offset, grad, n, lr);
}

void Learner::Impl::Rows(uint32_t r, const std::vector<std::string>& features, EmbeddingTable& main,
                         EmbeddingTable& side, FeatureLists& lists, std::vector<uint32_t>* rows) {
  const size_t at = rows->size();
  rows->push_back(r);
  if (features.empty()) {
    lists.Get(r, rows);
    return;
  }
  for (const auto& f : features) rows->push_back(side.GetOrCreate(f));
  if (lists.Set(r, rows->data() + at + 1, rows->data() + rows->size())) main.MarkDirty(r);
}

void Learner::Impl::Gather(const EmbeddingTable& main, const EmbeddingTable& side,
                           const std::vector<uint32_t>& rows, float* vec, float* bias) const {
  static const std::vector<uint32_t> kShared;
  Gather(main, side, rows, kShared, nullptr, vec, bias);
}

float* Learner::Impl::TrainRow(const EmbeddingTable& main, const EmbeddingTable& side,
                               const std::vector<uint32_t>& rows,
                               const std::vector<uint32_t>& slots, StagedRows* staged,
                               size_t i) const {
  if (i == 0) return main.Row(rows[0]);
  if (i < slots.size() && slots[i] != StagedRows::kNoSlot) return staged->Row(slots[i]);
  return side.Row(rows[i]);
}

void Learner::Impl::Gather(const EmbeddingTable& main, const EmbeddingTable& side,
                           const std::vector<uint32_t>& rows, const std::vector<uint32_t>& slots,
                           StagedRows* staged, float* vec, float* bias) const {
  const int d = options.dim;
  const float* r0 = main.Row(rows[0]);
  for (int k = 0; k < d; ++k) vec[k] = r0[k];
  for (int t = 0; t < kNumTasks; ++t) bias[t] = r0[d + t];
  for (size_t i = 1; i < rows.size(); ++i) {
    const float* r = TrainRow(main, side, rows, slots, staged, i);
    for (int k = 0; k < d; ++k) vec[k] += r[k];
    for (int t = 0; t < kNumTasks; ++t) bias[t] += r[d + t];
  }
}

void Learner::Impl::UpdateRows(EmbeddingTable& main, EmbeddingTable& side,
                               const std::vector<uint32_t>& rows,
                               const std::vector<uint32_t>& slots, StagedRows* staged,
                               const float* grad, int t) {
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

void Learner::Impl::MergeStaged() {
  // After the parallel part of Train: no trainer touches the states now.
  for (TrainState& s : states) {
    s.staged_user.Merge(user_features);
    s.staged_item.Merge(item_features);
  }
}

float Learner::Impl::Learn(Task task, float label, TrainState* s) {
  const int d = options.dim;
  const int t = int(task);
  Forward& fw = s->fwd;
  std::array<float, kNumTasks> bu{}, bi{};
  Gather(users, user_features, s->user_rows, s->user_slots, &s->staged_user, fw.u.data(),
         bu.data());
  Gather(items, item_features, s->item_rows, s->item_slots, &s->staged_item, fw.v.data(),
         bi.data());
  const uint32_t pre_row = PretrainedRow(s->item_rows[0]);
  if (pre_row != EmbeddingTable::kNoRow)
    shape.Project(s->dense_now, pretrained->Row(pre_row), fw.v.data());

  const bool esmm = options.esmm && task == Task::kPurchase;
  float y = shape.ForwardTask(s->dense_now, t, bu[t] + bi[t], &fw);
  float yc = 0.0f, dyc = 0.0f;
  LossOutput out;
  if (esmm) {
    // The click tower's output joins the product.
    Forward& fc = s->fwd2;
    fc.u = fw.u;
    fc.v = fw.v;
    const int c = int(Task::kClick);
    yc = shape.ForwardTask(s->dense_now, c, bu[c] + bi[c], &fc);
    const EsmmProductLoss::Output product = EsmmProductLoss::Forward(y, yc, label);
    out = product.purchase;
    dyc = product.dy_click;
  } else {
    out = losses.Forward(task, y, label);
  }
  const float pred = out.prediction, loss = out.loss, dy = out.dy;
  if (!std::isfinite(y) || !std::isfinite(yc) || !std::isfinite(loss) || !std::isfinite(dy) ||
      !std::isfinite(dyc)) {
    ++s->refused;
    return pred;
  }
  const float w = weighting.weight(task);
  const float clip = options.grad_clip;
  float g = std::clamp(dy * w, -clip, clip);

  // BackwardTask writes du and dv (d + 1 floats each, sized by TrainState).
  float grad_h_norm = shape.BackwardTask(s->dense_now, t, g, &fw, s->dense_grad.data(),
                                         s->du.data(), s->dv.data(), &s->pending);
  // The bias gradient rides in slot d.
  s->du[d] = g;
  s->dv[d] = g;
  float gc = 0.0f;
  if (esmm) {
    gc = std::clamp(dyc * w, -clip, clip);
    grad_h_norm +=
        shape.BackwardTask(s->dense_now, int(Task::kClick), gc, &s->fwd2, s->dense_grad.data(),
                           s->du2.data(), s->dv2.data(), &s->pending);
    for (int k = 0; k < d; ++k) {
      s->du[k] += s->du2[k];
      s->dv[k] += s->dv2[k];
    }
  }
  if (!AllFinite(s->du.data(), d + 1) || !AllFinite(s->dv.data(), d + 1) ||
      !std::isfinite(grad_h_norm)) {
    ++s->refused;
    return pred;
  }
  s->dense_touched = true;
  s->chunk.loss_sum[t] += loss;
  s->chunk.grad_norm_sum[t] += w > 0 ? grad_h_norm / w : 0.0;
  s->chunk.count[t] += 1;

  if (pre_row != EmbeddingTable::kNoRow) {
    // v = E + W p: dL/dW = dv p^T (a dense gradient), dL/dp = W^T dv.
    const bool trainable = options.pretrained_trainable;
    const int P = options.pretrained_dim;
    float* p = pretrained->Row(pre_row);
    s->dp.resize(P);
    shape.ProjectBackward(s->dense_now, p, s->dv.data(), s->dense_grad.data(),
                          trainable ? s->dp.data() : nullptr);
    bool finite = true;
    if (trainable)
      for (float x : s->dp) finite &= std::isfinite(x);
    if (!finite) {
      ++s->refused;
    } else if (trainable) {
      pretrained->MarkDirty(pre_row);  // before the write, as in UpdateRows
      row_optimizer.Update(p, p + P, s->dp.data(), P, options.lr_embedding);
    }
  }
  UpdateRows(users, user_features, s->user_rows, s->user_slots, &s->staged_user, s->du.data(), t);
  UpdateRows(items, item_features, s->item_rows, s->item_slots, &s->staged_item, s->dv.data(), t);
  if (esmm) {
    // The click biases take the click tower's share of the gradient.
    const int c = int(Task::kClick);
    for (auto [main, side, rows, slots, staged] :
         {std::tuple<EmbeddingTable*, EmbeddingTable*, std::vector<uint32_t>*,
                     std::vector<uint32_t>*, StagedRows*>{&users, &user_features, &s->user_rows,
                                                         &s->user_slots, &s->staged_user},
          {&items, &item_features, &s->item_rows, &s->item_slots, &s->staged_item}})
      for (size_t i = 0; i < rows->size(); ++i)
        ApplyRow(TrainRow(*main, *side, *rows, *slots, staged, i), &gc, 1, d + c, lr_bias);
  }
  return pred;
}

void Learner::Impl::ResolveChunk(std::span<const Event> events, bool stage, TrainState* s) {
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
    users.Prefetch(events[i].user);
    items.Prefetch(events[i].item);
  };
  auto prefetch_rows = [&](size_t i) {
    users.PrefetchRow(events[i].user);
    items.PrefetchRow(events[i].item);
  };
  const size_t n = events.size();
  for (size_t i = 0; i < std::min(n, kSlotAhead); ++i) prefetch_slots(i);
  for (size_t i = 0; i < std::min(n, kRowAhead); ++i) prefetch_rows(i);
  s->chunk_main.resize(2 * n);
  for (size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    if (i + kSlotAhead < n) prefetch_slots(i + kSlotAhead);
    if (i + kRowAhead < n) prefetch_rows(i + kRowAhead);
    const uint32_t u = users.GetOrCreate(e.user), v = items.GetOrCreate(e.item);
    s->chunk_main[2 * i] = u;
    s->chunk_main[2 * i + 1] = v;
    user_lists.Prefetch(u);
    item_lists.Prefetch(v);
  }
  s->chunk_rows.clear();
  s->chunk_begin.clear();
  for (size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    s->chunk_begin.push_back(uint32_t(s->chunk_rows.size()));
    Rows(s->chunk_main[2 * i], e.user_features, users, user_features, user_lists, &s->chunk_rows);
    s->chunk_begin.push_back(uint32_t(s->chunk_rows.size()));
    Rows(s->chunk_main[2 * i + 1], e.item_features, items, item_features, item_lists,
         &s->chunk_rows);
  }
  s->chunk_begin.push_back(uint32_t(s->chunk_rows.size()));
  if (!stage) return;
  s->chunk_slots.assign(s->chunk_rows.size(), StagedRows::kNoSlot);
  for (size_t i = 0; i < n; ++i) {
    // Entry chunk_begin[2i] is the user row, chunk_begin[2i + 1] the item row.
    for (uint32_t at = s->chunk_begin[2 * i] + 1; at < s->chunk_begin[2 * i + 1]; ++at)
      s->chunk_slots[at] = s->staged_user.Stage(user_features, s->chunk_rows[at]);
    for (uint32_t at = s->chunk_begin[2 * i + 1] + 1; at < s->chunk_begin[2 * i + 2]; ++at)
      s->chunk_slots[at] = s->staged_item.Stage(item_features, s->chunk_rows[at]);
  }
}

void Learner::Impl::PrefetchRows(const TrainState& s, size_t i) const {
  // The user row is rarely in cache (there are many users), the item row
  // often not; both are read and written by the event's step.
  for (auto [table, at] :
       {std::pair{&users, s.chunk_begin[2 * i]}, std::pair{&items, s.chunk_begin[2 * i + 1]}}) {
    PrefetchBytes<true>(table->Row(s.chunk_rows[at]), 2 * size_t(width) * sizeof(float));
  }
}

void Learner::Impl::TrainOne(const Event& e, TrainState* s, Prediction* before) {
  const uint32_t user_row = s->user_rows[0], item_row = s->item_rows[0];
  const float pred = Learn(e.task, e.label, s);
  if (before) {
    *before = Prediction();
    if (e.task == Task::kClick) before->click = pred;
    if (e.task == Task::kPurchase) before->purchase = pred;
    if (e.task == Task::kRating) before->rating = pred;
  }
  // Counted into `learned` and the metrics by MergeMetrics at the end of
  // the chunk: no shared cache line or lock per event.
  s->observations.push_back(Observation::Of(e.task, pred, e.label, options.decision_threshold));
  if (e.task == Task::kPurchase && e.label > 0.5f) {
    std::unique_lock lock(purchases_mu);
    if (purchases[user_row].insert(item_row).second) new_purchases.emplace_back(user_row, item_row);
  }
  if (options.negatives > 0) {
    // Remember the item, then learn negatives for a positive.
    const size_t n = recent.size();
    recent[recent_next.fetch_add(1, std::memory_order_relaxed) % n].store(
        item_row, std::memory_order_relaxed);
    if (e.task != Task::kRating && e.label > 0.5f) {
      for (int k = 0; k < options.negatives; ++k) {
        s->rng = s->rng * 6364136223846793005ULL + 1442695040888963407ULL;
        const uint32_t neg = recent[(s->rng >> 33) % n].load(std::memory_order_relaxed);
        if (neg == EmbeddingTable::kNoRow || neg == item_row) continue;
        s->item_rows.clear();
        s->item_slots.clear();
        s->item_rows.push_back(neg);
        item_lists.Get(neg, &s->item_rows);
        Learn(e.task, 0.0f, s);
      }
    }
  }
  if (options.replay > 0) {
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
      float label;
      const uint32_t bits = uint32_t(tl);
      std::memcpy(&label, &bits, 4);
      s->user_rows.clear();
      s->user_slots.clear();
      s->item_slots.clear();
      s->user_rows.push_back(uint32_t(pair >> 32));
      user_lists.Get(s->user_rows[0], &s->user_rows);
      s->item_rows.clear();
      s->item_rows.push_back(uint32_t(pair));
      item_lists.Get(s->item_rows[0], &s->item_rows);
      Learn(Task(tl >> 32), label, s);
    }
  }
}

void Learner::Impl::BeginChunk(bool parallel, TrainState* s) {
  if (!parallel) {
    s->user_slots.clear();
    s->item_slots.clear();
    s->dense_now = dense.data();
    return;
  }
  // A chunk trained beside others reads the dense layers from a copy taken
  // now (one sequential read of the block): otherwise every other thread's
  // chunk-end update pulls the block back from that thread's core, cache
  // line by cache line, in the middle of this chunk's steps. Measured
  // against two learners that share nothing (`learner_bench --pair`), the
  // two-thread CPU per event fell from 1.24 / 1.20 to 1.11 / 1.15 times
  // theirs (docs/benchmarks-history.md, session 6). A chunk on one thread
  // sees no other update anyway; in parallel, the others' updates are now
  // seen from the next chunk on instead of as they land.
  s->dense_copy.assign(dense.begin(), dense.end());
  s->dense_now = s->dense_copy.data();
}

void Learner::Impl::FinishChunk(TrainState* s) {
  shape.FlushExpertGradients(&s->pending, s->dense_grad.data());
  if (s->dense_touched) {
    const size_t n = s->dense_grad.size();
    const float* grad = s->dense_grad.data();
    if (AllFinite(grad, n)) {
      const uint64_t step =
          dense_optimizer.needs_moments() ? dense_steps.fetch_add(1, std::memory_order_relaxed) + 1
                                          : 0;
      dense_optimizer.Step(dense.data(), dense_accum.data(), dense_m.data(), grad, n, step);
    } else {
      ++s->refused;
    }
    std::fill(s->dense_grad.begin(), s->dense_grad.end(), 0.0f);
    s->dense_touched = false;
  }
  weighting.Update(s->chunk);
  s->chunk = TaskChunkStats();
  MergeMetrics(s);
}

void Learner::Impl::MergeMetrics(TrainState* s) {
  std::array<uint64_t, kNumTasks> counts{};
  {
    std::lock_guard lock(metrics_mu);
    for (const Observation& o : s->observations) {
      TaskMetrics& m = metrics[int(o.task)];
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
    if (counts[t]) learned[t].fetch_add(counts[t], std::memory_order_relaxed);
  if (s->refused) refused.fetch_add(s->refused, std::memory_order_relaxed);
  s->refused = 0;
}

Learner::Learner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Learner::~Learner() = default;

Status Learner::Create(const LearnerOptions& options, std::unique_ptr<Learner>* learner) {
  RECSTREAM_RETURN_IF_ERROR(ValidateOptions(options));
  learner->reset(new Learner(std::make_unique<Impl>(options)));
  return Status::OK();
}

const LearnerOptions& Learner::options() const { return impl_->options; }

void Learner::Train(std::span<const Event> events, std::vector<Prediction>* before) {
  Impl& m = *impl_;
  // Every entry is written by TrainOne.
  if (before) before->resize(events.size());
  const ThreadNiceScope nice(m.nice_target);
  const size_t chunk = size_t(m.options.chunk);
  const bool parallel = m.threads > 1 && events.size() > chunk;
  auto run = [&](size_t begin, size_t end) {
    TrainState& s = m.states.local();
    m.BeginChunk(parallel, &s);
    m.ResolveChunk(events.subspan(begin, end - begin), parallel, &s);
    const size_t n = end - begin;
    constexpr size_t kAhead = 2;  // events; a step takes about a microsecond
    for (size_t i = 0; i < n && i < kAhead; ++i) m.PrefetchRows(s, i);
    for (size_t i = 0; i < n; ++i) {
      if (i + kAhead < n) m.PrefetchRows(s, i + kAhead);
      const uint32_t* rows = s.chunk_rows.data();
      const uint32_t* at = s.chunk_begin.data() + 2 * i;
      s.user_rows.assign(rows + at[0], rows + at[1]);
      s.item_rows.assign(rows + at[1], rows + at[2]);
      if (parallel) {
        const uint32_t* slots = s.chunk_slots.data();
        s.user_slots.assign(slots + at[0], slots + at[1]);
        s.item_slots.assign(slots + at[1], slots + at[2]);
      }
      m.TrainOne(events[begin + i], &s, before ? &(*before)[begin + i] : nullptr);
    }
    m.FinishChunk(&s);
  };
  if (!parallel) {
    for (size_t b = 0; b < events.size(); b += chunk) run(b, std::min(events.size(), b + chunk));
  } else {
    m.arena.execute([&] {
      tbb::parallel_for(
          tbb::blocked_range<size_t>(0, events.size(), chunk),
          [&](const tbb::blocked_range<size_t>& r) { run(r.begin(), r.end()); },
          tbb::simple_partitioner());
    });
    m.MergeStaged();
  }
}

void Learner::ParallelFor(size_t n, size_t grain,
                          const std::function<void(size_t, size_t)>& fn) {
  Impl& m = *impl_;
  grain = std::max<size_t>(1, grain);
  if (m.threads == 1 || n <= grain) {
    if (n > 0) fn(0, n);
    return;
  }
  m.arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, n, grain),
                      [&](const tbb::blocked_range<size_t>& r) { fn(r.begin(), r.end()); });
  });
}

LearnerStats Learner::Stats() const {
  const Impl& m = *impl_;
  LearnerStats s;
  auto avg = m.weighting.AverageLoss();
  {
    std::lock_guard lock(m.metrics_mu);
    for (int t = 0; t < kNumTasks; ++t) {
      const TaskMetrics& tm = m.metrics[t];
      TaskStats& ts = s.tasks[t];
      ts.learned = m.learned[t].load(std::memory_order_relaxed);
      ts.loss_weight = m.weighting.weight(Task(t));
      ts.avg_loss = avg[t];
      if (tm.count > 0) {
        if (t == int(Task::kRating)) {
          ts.mae = tm.abs_sum / tm.count;
          ts.rmse = std::sqrt(tm.sq_sum / tm.count);
        } else {
          ts.auc = tm.Auc();
          ts.logloss = tm.loss_sum / tm.count;
          ts.precision = tm.predicted_pos > 0 ? tm.true_pos / tm.predicted_pos : 0.0;
          ts.recall = tm.actual_pos > 0 ? tm.true_pos / tm.actual_pos : 0.0;
          ts.f1 = tm.predicted_pos + tm.actual_pos > 0
                      ? 2 * tm.true_pos / (tm.predicted_pos + tm.actual_pos)
                      : 0.0;
        }
      }
    }
  }
  s.users = m.users.size();
  s.items = m.items.size();
  s.features = m.user_features.size() + m.item_features.size();
  s.pretrained = m.pretrained ? m.pretrained->size() : 0;
  s.nonfinite_updates_refused = m.refused.load(std::memory_order_relaxed);
  return s;
}

}  // namespace recstream::learner
