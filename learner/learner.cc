#include "learner/learner.h"

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/enumerable_thread_specific.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
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
#include "learner/model_math.h"
#include "learner/pack.h"
#include "learner/task_weighting.h"

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
  return Status::OK();
}

float BlendScore(const Prediction& p, const Blend& blend, float rating_min, float rating_max) {
  float r = (p.rating - rating_min) / (rating_max - rating_min);
  return blend.click * p.click + blend.purchase * p.purchase + blend.rating * r;
}

namespace {

constexpr int kAucBins = 2048;
constexpr double kAucLogitRange = 16.0;

int AucBin(float p) {
  double pc = std::clamp<double>(p, 1e-7, 1 - 1e-7);
  double logit = std::log(pc / (1 - pc));
  int b = int((logit + kAucLogitRange) / (2 * kAucLogitRange) * kAucBins);
  return std::clamp(b, 0, kAucBins - 1);
}

// Progressive metrics of one task, merged from chunks under a mutex.
struct TaskMetrics {
  double count = 0, loss_sum = 0, abs_sum = 0, sq_sum = 0;
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

struct Observation {
  Task task;
  float pred;  // probability, or clipped rating
  float label;
};

}  // namespace

// Per-thread scratch state: buffers, dense gradient accumulators and the
// chunk's observations. Never shared between threads.
struct TrainState {
  explicit TrainState(const ModelShape& shape)
      : fwd(shape), fwd2(shape), dense_grad(shape.dense_size(), 0.0f) {}
  Forward fwd, fwd2;  // fwd2: the click tower of an ESMM purchase event
  std::vector<float> dense_grad;
  bool dense_touched = false;
  TaskChunkStats chunk;
  std::vector<Observation> observations;
  std::vector<uint32_t> user_rows, item_rows;  // row and feature rows
  std::vector<float> du, dv, du2, dv2, dp;
  uint64_t refused = 0;
  uint64_t rng = 0x9e3779b97f4a7c15ULL;  // negative sampling
};

struct Learner::Impl {
  explicit Impl(const LearnerOptions& o)
      : options(o),
        shape(o),
        width(o.dim + kNumTasks),
        lr_bias(o.lr_bias > 0 ? o.lr_bias : o.lr_embedding),
        users("user", width, o.dim, o.init_scale, o.adagrad_init, o.seed),
        items("item", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 1),
        user_features("user_feature", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 2),
        item_features("item_feature", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 3),
        pretrained(o.pretrained_dim > 0
                       ? std::make_unique<EmbeddingTable>("item_pretrained", o.pretrained_dim, 0,
                                                          o.init_scale, o.adagrad_init, o.seed + 4)
                       : nullptr),
        weighting(o),
        threads(o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency())),
        arena(threads),
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

  bool adam() const {
    return options.dense_optimizer == Optimizer::kAdam ||
           options.dense_optimizer == Optimizer::kAdamW;
  }

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

  // Fills s->user_rows / s->item_rows: the row, then its feature rows (the
  // event's, which become the row's list, or the row's list when the event
  // has none).
  void Rows(std::string_view id, const std::vector<std::string>& features, EmbeddingTable& main,
            EmbeddingTable& side, FeatureLists& lists, std::vector<uint32_t>* rows);
  // Sums the row and its feature rows into vec (d floats) and the biases
  // into bias (kNumTasks floats).
  void Gather(const EmbeddingTable& main, const EmbeddingTable& side,
              const std::vector<uint32_t>& rows, float* vec, float* bias) const;
  // Predicts, then learns, one example from s->user_rows and s->item_rows.
  // Returns the prediction made before learning.
  float Learn(Task task, float label, TrainState* s);
  void TrainOne(const Event& e, TrainState* s, Prediction* before);
  void FinishChunk(TrainState* s);
  void ApplyRow(float* row, const float* grad, int n, int offset, float lr);
  void UpdateRows(EmbeddingTable& main, EmbeddingTable& side, const std::vector<uint32_t>& rows,
                  const float* grad, int t);
  void ScoreItems(std::string_view user, const std::vector<uint32_t>& item_rows,
                  std::vector<Prediction>* out) const;

  const LearnerOptions options;
  const ModelShape shape;
  const int width;
  const float lr_bias;
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
  std::array<TaskMetrics, kNumTasks> metrics;  // guarded by metrics_mu

  mutable std::shared_mutex purchases_mu;
  // user row -> item rows purchased; guarded by purchases_mu.
  std::unordered_map<uint32_t, std::unordered_set<uint32_t>> purchases;
  std::vector<std::pair<uint32_t, uint32_t>> new_purchases;  // since last snapshot
};

void Learner::Impl::ApplyRow(float* row, const float* grad, int n, int offset, float lr) {
  // Adagrad (or SGD) with L2 on the row's values [offset, offset + n).
  const float l2 = options.l2, clip = options.grad_clip;
  float* acc = row + width;
  if (options.embedding_optimizer == Optimizer::kSgd) {
    for (int i = 0; i < n; ++i)
      row[offset + i] -= lr * std::clamp(grad[i] + l2 * row[offset + i], -clip, clip);
    return;
  }
  for (int i = 0; i < n; ++i) {
    float g = std::clamp(grad[i] + l2 * row[offset + i], -clip, clip);
    acc[offset + i] += g * g;
    row[offset + i] -= lr * g / (std::sqrt(acc[offset + i]) + 1e-8f);
  }
}

void Learner::Impl::Rows(std::string_view id, const std::vector<std::string>& features,
                         EmbeddingTable& main, EmbeddingTable& side, FeatureLists& lists,
                         std::vector<uint32_t>* rows) {
  rows->clear();
  const uint32_t r = main.GetOrCreate(id);
  rows->push_back(r);
  if (features.empty()) {
    lists.Get(r, rows);
    return;
  }
  for (const auto& f : features) rows->push_back(side.GetOrCreate(f));
  if (lists.Set(r, rows->data() + 1, rows->data() + rows->size())) main.MarkDirty(r);
}

void Learner::Impl::Gather(const EmbeddingTable& main, const EmbeddingTable& side,
                           const std::vector<uint32_t>& rows, float* vec, float* bias) const {
  const int d = options.dim;
  const float* r0 = main.Row(rows[0]);
  std::copy(r0, r0 + d, vec);
  std::copy(r0 + d, r0 + d + kNumTasks, bias);
  for (size_t i = 1; i < rows.size(); ++i) {
    const float* r = side.Row(rows[i]);
    for (int k = 0; k < d; ++k) vec[k] += r[k];
    for (int t = 0; t < kNumTasks; ++t) bias[t] += r[d + t];
  }
}

void Learner::Impl::UpdateRows(EmbeddingTable& main, EmbeddingTable& side,
                               const std::vector<uint32_t>& rows, const float* grad, int t) {
  // Sparse updates, applied at once (Hogwild: another thread may update the
  // same row concurrently; lost updates are rare and harmless).
  const int d = options.dim;
  for (size_t i = 0; i < rows.size(); ++i) {
    EmbeddingTable& table = i == 0 ? main : side;
    float* r = table.Row(rows[i]);
    ApplyRow(r, grad, d, 0, options.lr_embedding);
    ApplyRow(r, grad + d, 1, d + t, lr_bias);
    table.MarkDirty(rows[i]);
  }
}

float Learner::Impl::Learn(Task task, float label, TrainState* s) {
  const int d = options.dim;
  const int t = int(task);
  Forward& fw = s->fwd;
  std::array<float, kNumTasks> bu{}, bi{};
  Gather(users, user_features, s->user_rows, fw.u.data(), bu.data());
  Gather(items, item_features, s->item_rows, fw.v.data(), bi.data());
  const uint32_t pre_row = PretrainedRow(s->item_rows[0]);
  if (pre_row != EmbeddingTable::kNoRow)
    shape.Project(dense.data(), pretrained->Row(pre_row), fw.v.data());

  const bool esmm = options.esmm && task == Task::kPurchase;
  float y = shape.ForwardTask(dense.data(), t, bu[t] + bi[t], &fw);
  float yc = 0.0f, dyc = 0.0f;
  float pred, loss, dy;
  if (task == Task::kRating) {
    pred = std::clamp(y, options.rating_min, options.rating_max);
    float err = y - label;
    if (options.rating_loss == RatingLoss::kHuber && std::abs(err) > options.huber_delta) {
      const float delta = options.huber_delta;
      loss = delta * (std::abs(err) - 0.5f * delta);
      dy = err > 0 ? delta : -delta;
    } else {
      loss = 0.5f * err * err;
      dy = err;
    }
  } else if (esmm) {
    // p = p_click * p_cvr; dL/dy_x = (p - label) / (1 - p) * (1 - p_x).
    Forward& fc = s->fwd2;
    fc.u = fw.u;
    fc.v = fw.v;
    const int c = int(Task::kClick);
    yc = shape.ForwardTask(dense.data(), c, bu[c] + bi[c], &fc);
    const float pc = 1.0f / (1.0f + std::exp(-yc)), pv = 1.0f / (1.0f + std::exp(-y));
    const float p = std::clamp(pc * pv, 1e-7f, 1.0f - 1e-6f);
    pred = pc * pv;
    loss = -(label * std::log(p) + (1 - label) * std::log(1 - p));
    const float k = (p - label) / (1.0f - p);
    dy = k * (1.0f - pv);
    dyc = k * (1.0f - pc);
  } else {
    float p = 1.0f / (1.0f + std::exp(-y));
    pred = p;
    float pc = std::clamp(p, 1e-7f, 1.0f - 1e-7f);
    loss = -(label * std::log(pc) + (1 - label) * std::log(1 - pc));
    dy = p - label;
  }
  if (!std::isfinite(y) || !std::isfinite(yc) || !std::isfinite(loss) || !std::isfinite(dy) ||
      !std::isfinite(dyc)) {
    ++s->refused;
    return pred;
  }
  const float w = weighting.weight(task);
  const float clip = options.grad_clip;
  float g = std::clamp(dy * w, -clip, clip);

  s->du.assign(d + 1, 0.0f);
  s->dv.assign(d + 1, 0.0f);
  float grad_h_norm =
      shape.BackwardTask(dense.data(), t, g, &fw, s->dense_grad.data(), s->du.data(), s->dv.data());
  // The bias gradient rides in slot d.
  s->du[d] = g;
  s->dv[d] = g;
  float gc = 0.0f;
  if (esmm) {
    gc = std::clamp(dyc * w, -clip, clip);
    s->du2.assign(d + 1, 0.0f);
    s->dv2.assign(d + 1, 0.0f);
    grad_h_norm += shape.BackwardTask(dense.data(), int(Task::kClick), gc, &s->fwd2,
                                      s->dense_grad.data(), s->du2.data(), s->dv2.data());
    for (int k = 0; k < d; ++k) {
      s->du[k] += s->du2[k];
      s->dv[k] += s->dv2[k];
    }
  }
  float check = 0;
  for (int k = 0; k <= d; ++k) check += s->du[k] + s->dv[k];
  if (!std::isfinite(check) || !std::isfinite(grad_h_norm)) {
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
    shape.ProjectBackward(dense.data(), p, s->dv.data(), s->dense_grad.data(),
                          trainable ? s->dp.data() : nullptr);
    bool finite = true;
    if (trainable)
      for (float x : s->dp) finite &= std::isfinite(x);
    if (!finite) {
      ++s->refused;
    } else if (trainable) {
      // Adagrad (or SGD) with L2, as ApplyRow; accumulators follow the P values.
      const float l2 = options.l2, clip = options.grad_clip, lr = options.lr_embedding;
      float* acc = p + P;
      const bool sgd = options.embedding_optimizer == Optimizer::kSgd;
      for (int j = 0; j < P; ++j) {
        float gj = std::clamp(s->dp[j] + l2 * p[j], -clip, clip);
        if (sgd) {
          p[j] -= lr * gj;
        } else {
          acc[j] += gj * gj;
          p[j] -= lr * gj / (std::sqrt(acc[j]) + 1e-8f);
        }
      }
      pretrained->MarkDirty(pre_row);
    }
  }
  UpdateRows(users, user_features, s->user_rows, s->du.data(), t);
  UpdateRows(items, item_features, s->item_rows, s->dv.data(), t);
  if (esmm) {
    // The click biases take the click tower's share of the gradient.
    const int c = int(Task::kClick);
    for (auto [main, side, rows] :
         {std::tuple<EmbeddingTable*, EmbeddingTable*, std::vector<uint32_t>*>{
              &users, &user_features, &s->user_rows},
          {&items, &item_features, &s->item_rows}})
      for (size_t i = 0; i < rows->size(); ++i)
        ApplyRow((i == 0 ? main : side)->Row((*rows)[i]), &gc, 1, d + c, lr_bias);
  }
  return pred;
}

void Learner::Impl::TrainOne(const Event& e, TrainState* s, Prediction* before) {
  Rows(e.user, e.user_features, users, user_features, user_lists, &s->user_rows);
  Rows(e.item, e.item_features, items, item_features, item_lists, &s->item_rows);
  const uint32_t user_row = s->user_rows[0], item_row = s->item_rows[0];
  const float pred = Learn(e.task, e.label, s);
  if (before) {
    *before = Prediction();
    if (e.task == Task::kClick) before->click = pred;
    if (e.task == Task::kPurchase) before->purchase = pred;
    if (e.task == Task::kRating) before->rating = pred;
  }
  // Counted into `learned` at the chunk's end: one atomic add per task and
  // chunk instead of one per event on a cache line every trainer writes.
  s->observations.push_back({e.task, pred, e.label});
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
      s->user_rows.push_back(uint32_t(pair >> 32));
      user_lists.Get(s->user_rows[0], &s->user_rows);
      s->item_rows.clear();
      s->item_rows.push_back(uint32_t(pair));
      item_lists.Get(s->item_rows[0], &s->item_rows);
      Learn(Task(tl >> 32), label, s);
    }
  }
}

void Learner::Impl::FinishChunk(TrainState* s) {
  if (s->dense_touched) {
    bool finite = true;
    for (float g : s->dense_grad) finite &= std::isfinite(g);
    if (finite) {
      const float lr = options.lr_dense, clip = options.grad_clip;
      float* w = dense.data();
      float* acc = dense_accum.data();
      const size_t n = s->dense_grad.size();
      switch (options.dense_optimizer) {
        case Optimizer::kAdagrad:
          for (size_t i = 0; i < n; ++i) {
            float g = s->dense_grad[i];
            if (g == 0.0f) continue;
            g = std::clamp(g, -clip, clip);
            acc[i] += g * g;
            w[i] -= lr * g / (std::sqrt(acc[i]) + 1e-8f);
          }
          break;
        case Optimizer::kSgd:
          for (size_t i = 0; i < n; ++i) w[i] -= lr * std::clamp(s->dense_grad[i], -clip, clip);
          break;
        case Optimizer::kAdam:
        case Optimizer::kAdamW: {
          const float b1 = options.adam_beta1, b2 = options.adam_beta2;
          const double step = double(dense_steps.fetch_add(1, std::memory_order_relaxed) + 1);
          const float c1 = float(1.0 - std::pow(double(b1), step));
          const float c2 = float(1.0 - std::pow(double(b2), step));
          const float decay =
              options.dense_optimizer == Optimizer::kAdamW ? lr * options.weight_decay : 0.0f;
          float* m = dense_m.data();
          for (size_t i = 0; i < n; ++i) {
            const float g = std::clamp(s->dense_grad[i], -clip, clip);
            m[i] = b1 * m[i] + (1 - b1) * g;
            acc[i] = b2 * acc[i] + (1 - b2) * g * g;
            w[i] -= lr * (m[i] / c1) / (std::sqrt(acc[i] / c2) + 1e-8f) + decay * w[i];
          }
          break;
        }
      }
    } else {
      ++s->refused;
    }
    std::fill(s->dense_grad.begin(), s->dense_grad.end(), 0.0f);
    s->dense_touched = false;
  }
  weighting.Update(s->chunk);
  s->chunk = TaskChunkStats();
  {
    std::lock_guard lock(metrics_mu);
    for (const Observation& o : s->observations) {
      TaskMetrics& m = metrics[int(o.task)];
      m.count += 1;
      if (o.task == Task::kRating) {
        double err = double(o.pred) - o.label;
        m.abs_sum += std::abs(err);
        m.sq_sum += err * err;
      } else {
        double p = std::clamp<double>(o.pred, 1e-7, 1 - 1e-7);
        m.loss_sum += -(o.label * std::log(p) + (1 - o.label) * std::log(1 - p));
        (o.label > 0.5f ? m.pos : m.neg)[AucBin(o.pred)] += 1;
      }
    }
  }
  std::array<uint64_t, kNumTasks> counts{};
  for (const Observation& o : s->observations) ++counts[int(o.task)];
  for (int t = 0; t < kNumTasks; ++t)
    if (counts[t]) learned[t].fetch_add(counts[t], std::memory_order_relaxed);
  s->observations.clear();
  if (s->refused) {
    refused.fetch_add(s->refused, std::memory_order_relaxed);
    s->refused = 0;
  }
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
  if (before) before->assign(events.size(), Prediction());
  const size_t chunk = size_t(m.options.chunk);
  auto run = [&](size_t begin, size_t end) {
    TrainState& s = m.states.local();
    for (size_t i = begin; i < end; ++i)
      m.TrainOne(events[i], &s, before ? &(*before)[i] : nullptr);
    m.FinishChunk(&s);
  };
  if (m.threads == 1 || events.size() <= chunk) {
    for (size_t b = 0; b < events.size(); b += chunk) run(b, std::min(events.size(), b + chunk));
    return;
  }
  m.arena.execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<size_t>(0, events.size(), chunk),
        [&](const tbb::blocked_range<size_t>& r) { run(r.begin(), r.end()); },
        tbb::simple_partitioner());
  });
}

void Learner::Impl::ScoreItems(std::string_view user, const std::vector<uint32_t>& item_rows,
                               std::vector<Prediction>* out) const {
  const int d = options.dim;
  UserContext ctx(shape);
  std::vector<float> u(d, 0.0f), ubias(kNumTasks, 0.0f);
  std::vector<uint32_t> rows;
  uint32_t ur = users.Find(user);
  if (ur != EmbeddingTable::kNoRow) {
    rows.push_back(ur);
    user_lists.Get(ur, &rows);
    Gather(users, user_features, rows, u.data(), ubias.data());
  }
  shape.PrepareUser(dense.data(), u.data(), &ctx);
  out->resize(item_rows.size());
  std::vector<float> v(width, 0.0f);
  std::array<float, kNumTasks> y;
  auto sigmoid = [](float x) { return 1.0f / (1.0f + std::exp(-x)); };
  for (size_t i = 0; i < item_rows.size(); ++i) {
    std::fill(v.begin(), v.end(), 0.0f);
    if (item_rows[i] != EmbeddingTable::kNoRow) {
      rows.clear();
      rows.push_back(item_rows[i]);
      item_lists.Get(item_rows[i], &rows);
      Gather(items, item_features, rows, v.data(), v.data() + d);
      const uint32_t pre_row = PretrainedRow(item_rows[i]);
      if (pre_row != EmbeddingTable::kNoRow)
        shape.Project(dense.data(), pretrained->Row(pre_row), v.data());
    }
    shape.ScoreItem(dense.data(), ctx, v.data(), &y);
    Prediction& p = (*out)[i];
    p.click = sigmoid(y[0] + ubias[0] + v[d + 0]);
    p.purchase = sigmoid(y[1] + ubias[1] + v[d + 1]);
    if (options.esmm) p.purchase *= p.click;
    float r = y[2] + ubias[2] + v[d + 2];
    p.rating = std::isfinite(r) ? std::clamp(r, options.rating_min, options.rating_max)
                                : 0.5f * (options.rating_min + options.rating_max);
  }
}

ScoreResult Learner::Score(std::string_view user, std::string_view item, const Blend& blend) const {
  const Impl& m = *impl_;
  ScoreResult r;
  uint32_t ir = m.items.Find(item);
  r.user_known = m.users.Find(user) != EmbeddingTable::kNoRow;
  r.item_known = ir != EmbeddingTable::kNoRow;
  std::vector<Prediction> p;
  m.ScoreItems(user, {ir}, &p);
  r.prediction = p[0];
  r.score = BlendScore(p[0], blend, m.options.rating_min, m.options.rating_max);
  return r;
}

void Learner::ScoreMany(std::string_view user, std::span<const std::string> items,
                        const Blend& blend, std::vector<ScoreResult>* out) const {
  const Impl& m = *impl_;
  std::vector<uint32_t> rows(items.size());
  for (size_t i = 0; i < items.size(); ++i) rows[i] = m.items.Find(items[i]);
  bool user_known = m.users.Find(user) != EmbeddingTable::kNoRow;
  std::vector<Prediction> p;
  m.ScoreItems(user, rows, &p);
  out->resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    ScoreResult& r = (*out)[i];
    r.prediction = p[i];
    r.score = BlendScore(p[i], blend, m.options.rating_min, m.options.rating_max);
    r.user_known = user_known;
    r.item_known = rows[i] != EmbeddingTable::kNoRow;
  }
}

std::vector<Recommendation> Learner::Recommend(std::string_view user, int k, bool exclude_purchased,
                                               const Blend& blend) const {
  const Impl& m = *impl_;
  std::vector<Recommendation> result;
  if (k <= 0) return result;
  uint32_t n = m.items.size();
  std::vector<uint32_t> rows(n);
  for (uint32_t i = 0; i < n; ++i) rows[i] = i;
  if (exclude_purchased) {
    uint32_t ur = m.users.Find(user);
    std::shared_lock lock(m.purchases_mu);
    auto it = ur == EmbeddingTable::kNoRow ? m.purchases.end() : m.purchases.find(ur);
    if (it != m.purchases.end())
      std::erase_if(rows, [&](uint32_t r) { return it->second.count(r) > 0; });
  }
  std::vector<Prediction> preds;
  m.ScoreItems(user, rows, &preds);
  // Min-heap of the best k.
  using Entry = std::pair<float, size_t>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  for (size_t i = 0; i < rows.size(); ++i) {
    float s = BlendScore(preds[i], blend, m.options.rating_min, m.options.rating_max);
    if (int(heap.size()) < k) {
      heap.emplace(s, i);
    } else if (s > heap.top().first) {
      heap.pop();
      heap.emplace(s, i);
    }
  }
  result.resize(heap.size());
  for (size_t j = heap.size(); j-- > 0;) {
    auto [s, i] = heap.top();
    heap.pop();
    result[j] = Recommendation{m.items.key(rows[i]), preds[i], s};
  }
  return result;
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

void Learner::TakeSnapshot(bool full, ModelSnapshot* out) {
  Impl& m = *impl_;
  *out = ModelSnapshot();
  out->shape = m.shape.Describe();
  for (EmbeddingTable* t : m.all_tables()) {
    const int w2 = 2 * t->width();
    TableDelta delta;
    delta.table = t->name();
    delta.width = w2;
    t->ForEachDirty(full, [&](uint32_t r) {
      delta.keys.push_back(t->key(r));
      const float* row = t->Row(r);
      delta.values.insert(delta.values.end(), row, row + w2);
    });
    out->tables.push_back(std::move(delta));
  }
  for (auto [table, side, lists] : {std::tuple<EmbeddingTable*, EmbeddingTable*, FeatureLists*>{
                                        &m.users, &m.user_features, &m.user_lists},
                                    {&m.items, &m.item_features, &m.item_lists}}) {
    FeatureListDelta delta;
    delta.table = table->name();
    // Lambdas cannot capture structured bindings before C++20's P1091 (clang 14).
    EmbeddingTable* owner = table;
    EmbeddingTable* features = side;
    lists->ForEachDirty(full, [&](uint32_t r, const std::vector<uint32_t>& list) {
      delta.keys.push_back(owner->key(r));
      auto& names = delta.features.emplace_back();
      for (uint32_t f : list) names.push_back(features->key(f));
    });
    if (!delta.keys.empty()) out->feature_lists.push_back(std::move(delta));
  }
  out->dense.emplace_back("dense", m.dense);
  out->dense.emplace_back("dense_accum", m.dense_accum);
  if (m.adam()) {
    std::vector<float> moments = m.dense_m;
    PackDouble(double(m.dense_steps.load()), &moments);
    out->dense.emplace_back("dense_m", std::move(moments));
  }
  out->dense.emplace_back("weighting", m.weighting.Save());
  {
    std::vector<float> metrics;
    std::lock_guard lock(m.metrics_mu);
    for (const TaskMetrics& tm : m.metrics) {
      for (double v : {tm.count, tm.loss_sum, tm.abs_sum, tm.sq_sum}) PackDouble(v, &metrics);
      for (double v : tm.pos) PackDouble(v, &metrics);
      for (double v : tm.neg) PackDouble(v, &metrics);
    }
    out->dense.emplace_back("metrics", std::move(metrics));
  }
  for (int t = 0; t < kNumTasks; ++t) out->learned[t] = m.learned[t].load();
  {
    std::unique_lock lock(m.purchases_mu);
    if (full) {
      for (const auto& [u, set] : m.purchases)
        for (uint32_t i : set) out->new_purchases.emplace_back(m.users.key(u), m.items.key(i));
    } else {
      for (auto [u, i] : m.new_purchases)
        out->new_purchases.emplace_back(m.users.key(u), m.items.key(i));
    }
    m.new_purchases.clear();
  }
}

Status Learner::ImportPretrained(std::string_view item, std::span<const float> vec) {
  Impl& m = *impl_;
  if (!m.pretrained)
    return Status::InvalidArgument("pretrained vectors are off (model.pretrained_dim = 0)");
  if (item.empty()) return Status::InvalidArgument("empty item id");
  if (vec.size() != size_t(m.options.pretrained_dim))
    return Status::InvalidArgument("vector of item '" + std::string(item) + "' has " +
                                   std::to_string(vec.size()) + " values, expected " +
                                   std::to_string(m.options.pretrained_dim));
  for (float x : vec)
    if (!std::isfinite(x))
      return Status::InvalidArgument("vector of item '" + std::string(item) +
                                     "' has a non-finite value");
  m.items.GetOrCreate(item);  // a new row is created dirty
  const uint32_t r = m.pretrained->GetOrCreate(item);
  float* row = m.pretrained->Row(r);
  std::copy(vec.begin(), vec.end(), row);
  std::fill(row + vec.size(), row + 2 * vec.size(), m.options.adagrad_init);
  m.pretrained->MarkDirty(r);
  return Status::OK();
}

Status Learner::ApplySnapshot(const ModelSnapshot& snap) {
  Impl& m = *impl_;
  if (snap.shape != m.shape.Describe())
    return Status::Corruption("snapshot is of model shape '" + snap.shape +
                              "' but the options give '" + m.shape.Describe() + "'");
  for (const TableDelta& delta : snap.tables) {
    EmbeddingTable* t = m.table(delta.table);
    if (!t) return Status::Corruption("snapshot has unknown table '" + delta.table + "'");
    const int w2 = 2 * t->width();
    if (delta.width != w2 || delta.values.size() != delta.keys.size() * size_t(w2))
      return Status::Corruption("table '" + delta.table + "' has rows of the wrong width");
    for (size_t i = 0; i < delta.keys.size(); ++i) {
      uint32_t r = t->GetOrCreate(delta.keys[i]);
      std::copy_n(delta.values.data() + i * w2, w2, t->Row(r));
    }
  }
  for (const FeatureListDelta& delta : snap.feature_lists) {
    const bool user = delta.table == "user";
    if (!user && delta.table != "item")
      return Status::Corruption("snapshot has feature lists of unknown table '" + delta.table +
                                "'");
    if (delta.features.size() != delta.keys.size())
      return Status::Corruption("feature lists of '" + delta.table + "' are malformed");
    EmbeddingTable& main = user ? m.users : m.items;
    EmbeddingTable& side = user ? m.user_features : m.item_features;
    FeatureLists& lists = user ? m.user_lists : m.item_lists;
    std::vector<uint32_t> rows;
    for (size_t i = 0; i < delta.keys.size(); ++i) {
      rows.clear();
      for (const std::string& f : delta.features[i]) rows.push_back(side.GetOrCreate(f));
      lists.Set(main.GetOrCreate(delta.keys[i]), rows.data(), rows.data() + rows.size());
    }
  }
  for (const auto& [name, values] : snap.dense) {
    if (name == "dense_m") {
      if (!m.adam() || values.size() != m.dense_m.size() + 2)
        return Status::Corruption("dense block 'dense_m' does not fit the optimizer");
      std::copy_n(values.begin(), m.dense_m.size(), m.dense_m.begin());
      const std::vector<float> steps(values.end() - 2, values.end());
      m.dense_steps.store(uint64_t(UnpackDouble(steps, 0)));
    } else if (name == "dense" || name == "dense_accum") {
      auto& dst = name == "dense" ? m.dense : m.dense_accum;
      if (values.size() != dst.size())
        return Status::Corruption("dense block '" + name + "' has the wrong size");
      dst = values;
    } else if (name == "weighting") {
      if (!m.weighting.Load(values))
        return Status::Corruption("weighting state has the wrong size");
    } else if (name == "metrics") {
      const size_t per_task = 4 + 2 * kAucBins;
      if (values.size() != 2 * per_task * kNumTasks)
        return Status::Corruption("metrics block has the wrong size");
      std::lock_guard lock(m.metrics_mu);
      size_t i = 0;
      for (TaskMetrics& tm : m.metrics) {
        for (double* v : {&tm.count, &tm.loss_sum, &tm.abs_sum, &tm.sq_sum})
          *v = UnpackDouble(values, i++);
        for (double& v : tm.pos) v = UnpackDouble(values, i++);
        for (double& v : tm.neg) v = UnpackDouble(values, i++);
      }
    } else {
      return Status::Corruption("snapshot has unknown dense block '" + name + "'");
    }
  }
  for (int t = 0; t < kNumTasks; ++t) m.learned[t].store(snap.learned[t]);
  {
    std::unique_lock lock(m.purchases_mu);
    for (const auto& [u, i] : snap.new_purchases)
      m.purchases[m.users.GetOrCreate(u)].insert(m.items.GetOrCreate(i));
  }
  // What was just loaded is already stored: nothing is dirty.
  for (EmbeddingTable* t : m.all_tables()) t->ForEachDirty(false, [](uint32_t) {});
  for (FeatureLists* l : {&m.user_lists, &m.item_lists})
    l->ForEachDirty(false, [](uint32_t, const std::vector<uint32_t>&) {});
  return Status::OK();
}

}  // namespace recstream::learner
