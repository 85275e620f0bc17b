#include "learner/model.h"

#include <algorithm>

#include "learner/optimizer.h"

namespace recstream::learner {

namespace {

// The optimizer state of the rows of a table whose values learn at `lr`.
EmbeddingTable::RowState StateOf(const LearnerOptions& o, float lr) {
  const RowOptimizer optimizer(o.embedding_optimizer, o.l1, o.l2, o.grad_clip);
  return {optimizer.state_blocks(), optimizer.InitialZScale(lr, o.adagrad_init)};
}

}  // namespace

Model::Model(const LearnerOptions& o)
    : options(o),
      shape(o),
      width(o.dim + kNumTasks),
      users("user", width, o.dim, o.init_scale, o.adagrad_init, o.seed, false,
            StateOf(o, o.lr_embedding)),
      // Items and side features: rows every trainer thread updates, one
      // cache line each (EmbeddingTable's line_aligned).
      items("item", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 1, kLineAligned,
            StateOf(o, o.lr_embedding)),
      user_features("user_feature", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 2,
                    kLineAligned, StateOf(o, o.lr_embedding)),
      item_features("item_feature", width, o.dim, o.init_scale, o.adagrad_init, o.seed + 3,
                    kLineAligned, StateOf(o, o.lr_embedding)),
      pretrained(o.pretrained_dim > 0
                     ? std::make_unique<EmbeddingTable>("item_pretrained", o.pretrained_dim, 0,
                                                        o.init_scale, o.adagrad_init, o.seed + 4,
                                                        false, StateOf(o, o.lr_embedding))
                     : nullptr),
      histories(o.history),
      history_match(size_t(4) * kNumTasks * o.history, 0.0f),
      recent(size_t(o.negatives > 0 || o.feedback != Feedback::kExplicit ? o.negative_window : 1)),
      recent_count(o.feedback != Feedback::kExplicit ? size_t(1) << kCountBits : 0),
      weighting(o) {
  for (auto& n : saw_negative) n.store(false);
  if (o.admit_after > 1) admission = std::make_unique<AdmissionSketch>();
  if (o.expire_user_s > 0) users.TrackTouches();
  for (auto& r : recent) r.store(kNoEntry, std::memory_order_relaxed);
  for (auto& c : recent_count) c.store(0, std::memory_order_relaxed);
  log_table.resize(kLogTable + 1);
  for (uint32_t n = 1; n <= kLogTable; ++n) log_table[n] = std::log(float(n));
  dense.resize(shape.dense_size());
  dense_accum.assign(shape.dense_size(), 0.0f);
  if (adam()) dense_m.assign(shape.dense_size(), 0.0f);
  shape.Init(dense.data(), o.seed);
  for (auto& m : metrics) m = TaskMetrics();
  for (auto& l : learned) l.store(0);
}

EmbeddingTable* Model::table(std::string_view name) {
  for (EmbeddingTable* t : {&users, &items, &user_features, &item_features})
    if (t->name() == name) return t;
  if (pretrained && pretrained->name() == name) return pretrained.get();
  return nullptr;
}

std::vector<EmbeddingTable*> Model::all_tables() {
  std::vector<EmbeddingTable*> t = {&users, &items, &user_features, &item_features};
  if (pretrained) t.push_back(pretrained.get());
  return t;
}

void Model::AddHistory(uint32_t user, HistoryView* view, float* acc, float* vec) const {
  view->items.clear();
  view->features.clear();
  view->feature_begin.assign(1, 0);
  histories.Get(user, &view->items);
  if (view->items.empty()) return;
  // The items' rows and lists start loading together (one cache miss's
  // wait for them all, not one each).
  for (uint32_t item : view->items) {
    PrefetchBytes(items.Row(item), size_t(width) * sizeof(float));
    item_lists.Prefetch(item);
  }
  const int d = options.dim;
  std::fill(acc, acc + d, 0.0f);
  for (uint32_t item : view->items) {
    const float* r = items.Row(item);
    for (int k = 0; k < d; ++k) acc[k] += r[k];
    const size_t at = view->features.size();
    item_lists.Get(item, &view->features);
    for (size_t i = at; i < view->features.size(); ++i) {
      const float* f = item_features.Row(view->features[i]);
      for (int k = 0; k < d; ++k) acc[k] += f[k];
    }
    view->feature_begin.push_back(uint32_t(view->features.size()));
  }
  const float scale = 1.0f / float(view->items.size());
  for (int k = 0; k < d; ++k) vec[k] += acc[k] * scale;
}

float Model::HistoryMatch(int t, const HistoryView& view, uint32_t row, const uint32_t* f,
                          size_t nf, float* hits) const {
  const int h = options.history;
  if (hits) std::fill(hits, hits + 2 * h, 0.0f);
  if (view.empty()) return 0.0f;
  const float* w = MatchWeights(t);
  float logit = 0.0f;
  const size_t n = view.items.size();
  for (size_t i = 0; i < n; ++i) {
    const size_t p = n - 1 - i;  // 0: the latest item
    if (row != EmbeddingTable::kNoRow && view.items[i] == row) {
      logit += w[p];
      if (hits) hits[p] = 1.0f;
    }
    bool shared = false;
    for (uint32_t a = view.feature_begin[i]; a < view.feature_begin[i + 1] && !shared; ++a)
      for (size_t b = 0; b < nf; ++b) shared |= view.features[a] == f[b];
    if (shared) {
      logit += w[h + p];
      if (hits) hits[h + p] = 1.0f;
    }
  }
  return logit;
}

void Model::Rows(uint32_t r, const std::vector<std::string>& features, EmbeddingTable& main,
                 EmbeddingTable& side, FeatureLists& lists, std::vector<uint32_t>* rows) {
  const size_t at = rows->size();
  rows->push_back(r);
  if (IsPrior(&main == &users ? 0 : 1, r)) {
    // The prior row stands for many ids: it keeps no feature list.
    for (const auto& f : features) rows->push_back(side.GetOrCreate(f));
    return;
  }
  if (features.empty()) {
    lists.Get(r, rows);
    return;
  }
  for (const auto& f : features) rows->push_back(side.GetOrCreate(f));
  if (lists.Set(r, rows->data() + at + 1, rows->data() + rows->size())) main.MarkDirty(r);
}

void Model::RemoveUser(uint32_t row, bool record) {
  const std::string key(users.key(row));
  if (users.Remove(key) != row) return;
  user_lists.Clear(row);
  histories.Clear(row);
  {
    std::unique_lock lock(purchases_mu);
    if (auto it = purchases.find(row); it != purchases.end()) {
      if (record)
        for (uint32_t item : it->second) deleted_purchases.emplace_back(key, items.key(item));
      purchases.erase(it);
    }
    // Purchases not exported yet refer to the row by number.
    std::erase_if(new_purchases, [&](const auto& p) { return p.first == row; });
  }
  if (record) {
    deleted_users.push_back(key);
    retired_users.push_back(row);
    expired_users.fetch_add(1, std::memory_order_relaxed);
  } else {
    users.Reclaim(row);
  }
}

void Model::ReclaimRetired() {
  if (exporting.load(std::memory_order_acquire)) return;
  for (uint32_t row : retired_users) users.Reclaim(row);
  retired_users.clear();
}

void Model::ExpireStep(size_t budget) {
  const int64_t now = event_time_s.load(std::memory_order_relaxed);
  const int64_t horizon = now - options.expire_user_s;
  ReclaimRetired();
  const uint32_t n = users.size();
  if (n == 0 || now <= 0) return;
  const uint32_t prior = Prior(0);
  for (size_t k = 0; k < std::min<size_t>(budget, n); ++k) {
    if (expire_cursor >= n) expire_cursor = 0;
    const uint32_t row = expire_cursor++;
    if (row == prior || !users.IsLive(row)) continue;
    const uint32_t t = users.touched(row);
    if (t == 0) {
      // Restored (times are not stored): touched as of now.
      users.Touch(row, uint32_t(now));
    } else if (int64_t(t) < horizon) {
      RemoveUser(row, true);
    }
  }
}

}  // namespace recstream::learner
