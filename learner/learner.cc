#include "learner/learner.h"

#include "learner/learner_impl.h"
#include "learner/residency.h"

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
    case Optimizer::kFtrl:
      return "ftrl";
    case Optimizer::kSgd:
      return "sgd";
  }
  return "unknown";
}

std::string_view RatingLossName(RatingLoss l) {
  return l == RatingLoss::kHuber ? "huber" : "squared";
}

std::string_view FeedbackName(Feedback f) {
  return f == Feedback::kExplicit ? "explicit" : f == Feedback::kImplicit ? "implicit" : "auto";
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
  if (o.embedding_optimizer != Optimizer::kAdagrad && o.embedding_optimizer != Optimizer::kSgd &&
      o.embedding_optimizer != Optimizer::kFtrl)
    return bad("model.embedding_optimizer must be adagrad, sgd or ftrl");
  if (o.dense_optimizer == Optimizer::kFtrl)
    return bad("model.dense_optimizer must be adagrad, adam, adamw or sgd");
  if (!(o.l1 >= 0.0f && std::isfinite(o.l1))) return bad("model.l1 must be >= 0");
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
  if (o.history < 0 || o.history > 1000) return bad("model.history must be in [0, 1000]");
  if (o.admit_after < 1 || o.admit_after > 255) return bad("model.admit_after must be in [1, 255]");
  if (o.expire_user_s < 0) return bad("model.expire.user_s must be >= 0");
  if (o.expire_item_s < 0) return bad("model.expire.item_s must be >= 0");
  if (o.expire_feature_s < 0) return bad("model.expire.feature_s must be >= 0");
  if (o.memory_limit_mb < 0 || o.memory_limit_mb > (int64_t(1) << 30))
    return bad("model.memory_limit_mb must be in [0, 2^30]");
  if (o.trainer_count < 1 || o.trainer_count > 4096)
    return bad("trainer.count must be in [1, 4096]");
  if (o.trainer_index < 0 || o.trainer_index >= o.trainer_count)
    return bad("trainer.index must be in [0, trainer.count)");
  if (o.implicit_negatives < 1 || o.implicit_negatives > 1000)
    return bad("model.implicit_negatives must be in [1, 1000]");
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

Learner::Learner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Learner::~Learner() = default;

Status Learner::Create(const LearnerOptions& options, std::unique_ptr<Learner>* learner) {
  RECSTREAM_RETURN_IF_ERROR(ValidateOptions(options));
  learner->reset(new Learner(std::make_unique<Impl>(options)));
  return Status::OK();
}

const LearnerOptions& Learner::options() const { return impl_->model.options; }

void Learner::Train(std::span<const Event> events, std::vector<Prediction>* before) {
  if (impl_->model.residency)
    impl_->model.residency->Prepare(
        events, [this](size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
          impl_->trainer.ParallelFor(n, grain, fn);
        });
  impl_->trainer.Train(events, before);
}

void Learner::ParallelFor(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  impl_->trainer.ParallelFor(n, grain, fn);
}

ScoreResult Learner::Score(std::string_view user, std::string_view item, const Blend& blend,
                           const std::vector<std::string>* user_features,
                           const std::vector<std::string>* item_features) const {
  return impl_->scorer.Score(user, item, blend, user_features, item_features);
}

void Learner::ScoreMany(std::string_view user, std::span<const std::string> items,
                        const Blend& blend, std::vector<ScoreResult>* out,
                        const std::vector<std::string>* user_features,
                        std::span<const std::vector<std::string>* const> item_features) const {
  impl_->scorer.ScoreMany(user, items, blend, out, user_features, item_features);
}

std::vector<Recommendation> Learner::Recommend(std::string_view user, int k, bool exclude_purchased,
                                               const Blend& blend) const {
  return impl_->scorer.Recommend(user, k, exclude_purchased, blend);
}

std::string Learner::Shape() const { return impl_->model.shape.Describe(); }

LearnerStats Learner::Stats() const {
  const Model& m = impl_->model;
  LearnerStats s;
  auto avg = m.weighting.AverageLoss();
  {
    std::lock_guard lock(m.metrics_mu);
    for (int t = 0; t < kNumTasks; ++t) {
      const TaskMetrics& tm = m.metrics[t];
      TaskStats& ts = s.tasks[t];
      ts.learned = m.learned[t].load(std::memory_order_relaxed);
      ts.loss_weight = m.weighting.weight(Task(t));
      ts.implicit = m.implicit(t);
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
  // The prior rows (admission) are no users or items.
  s.users = m.users.live_size() - (m.Prior(0) != EmbeddingTable::kNoRow ? 1 : 0);
  s.items = m.items.live_size() - (m.Prior(1) != EmbeddingTable::kNoRow ? 1 : 0);
  s.not_admitted_users = m.not_admitted[0].load(std::memory_order_relaxed);
  s.not_admitted_items = m.not_admitted[1].load(std::memory_order_relaxed);
  s.expired_users = m.expired[0].load(std::memory_order_relaxed);
  s.expired_items = m.expired[1].load(std::memory_order_relaxed);
  s.expired_features =
      m.expired[2].load(std::memory_order_relaxed) + m.expired[3].load(std::memory_order_relaxed);
  s.user_rows_allocated = m.users.size();
  s.event_time_s = m.event_time_s.load(std::memory_order_relaxed);
  s.features = m.user_features.live_size() + m.item_features.live_size();
  s.pretrained = m.pretrained ? m.pretrained->size() : 0;
  s.nonfinite_updates_refused = m.refused.load(std::memory_order_relaxed);
  if (m.sharing) {
    const Sharing::Counters& c = m.sharing->counters();
    s.shared_rows_sent = c.rows_sent.load(std::memory_order_relaxed);
    s.shared_rows_added = c.rows_added.load(std::memory_order_relaxed);
    s.shared_rows_followed = c.rows_followed.load(std::memory_order_relaxed);
    s.shared_not_owned = c.not_owned.load(std::memory_order_relaxed);
  }
  s.model_bytes = ModelBytes(m);
  if (const Residency* r = m.residency.get()) {
    s.memory_limit_bytes = r->limit_bytes();
    s.user_budget = r->user_budget();
    s.users_resident = s.users;
    s.users_evicted = r->evicted();
    s.users_reloaded = r->reloaded();
    s.store_reads = r->store_reads();
    s.store_read_errors = r->read_errors();
    s.checkpoints_wanted = r->checkpoints_wanted();
  }
  return s;
}

void Learner::Idle() {
  if (impl_->model.residency) impl_->model.residency->Evict(/*idle=*/true);
}

void Learner::SetRowSource(const RowSource* source) {
  if (impl_->model.residency) impl_->model.residency->SetSource(source);
}

uint64_t Learner::snapshot_number() const {
  const Residency* r = impl_->model.residency.get();
  return r ? r->begun() : 0;
}

void Learner::SnapshotStored(uint64_t number) {
  if (impl_->model.residency) impl_->model.residency->Stored(number);
}

bool Learner::OverLimit() const {
  const Residency* r = impl_->model.residency.get();
  return r && r->OverLimit();
}

bool Learner::WantsCheckpoint() const {
  const Residency* r = impl_->model.residency.get();
  return r && r->WantsCheckpoint();
}

void Learner::TakeChanges(ModelChanges* changes, ModelSnapshot* owned) {
  Model& m = impl_->model;
  if (!m.sharing) {
    *changes = ModelChanges();
    if (owned) *owned = ModelSnapshot();
    return;
  }
  m.sharing->TakeChanges(changes, owned);
}

Status Learner::AddChanges(const ModelChanges& changes) {
  Model& m = impl_->model;
  return m.sharing ? m.sharing->AddChanges(changes) : Status::OK();
}

Status Learner::FollowOwners(const ModelSnapshot& published, int from) {
  Model& m = impl_->model;
  if (!m.sharing) return Status::OK();
  if (published.shape != m.shape.Describe())
    return Status::Corruption("published rows are of model shape '" + published.shape +
                              "' but the options give '" + m.shape.Describe() + "'");
  return m.sharing->FollowOwners(published, from);
}

}  // namespace recstream::learner
