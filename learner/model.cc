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
      recent(size_t(o.negatives > 0 || o.feedback != Feedback::kExplicit ? o.negative_window : 1)),
      recent_count(o.feedback != Feedback::kExplicit ? size_t(1) << kCountBits : 0),
      weighting(o) {
  for (auto& n : saw_negative) n.store(false);
  for (auto& r : recent) r.store(kNoEntry, std::memory_order_relaxed);
  for (auto& c : recent_count) c.store(0, std::memory_order_relaxed);
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

void Model::AddHistory(uint32_t user, std::vector<uint32_t>* history, std::vector<uint32_t>* rows,
                       float* acc, float* vec) const {
  history->clear();
  histories.Get(user, history);
  if (history->empty()) return;
  const int d = options.dim;
  std::fill(acc, acc + d, 0.0f);
  for (uint32_t item : *history) {
    rows->clear();
    rows->push_back(item);
    item_lists.Get(item, rows);
    for (size_t i = 0; i < rows->size(); ++i) {
      const float* r = i == 0 ? items.Row(item) : item_features.Row((*rows)[i]);
      for (int k = 0; k < d; ++k) acc[k] += r[k];
    }
  }
  const float scale = 1.0f / float(history->size());
  for (int k = 0; k < d; ++k) vec[k] += acc[k] * scale;
}

void Model::Rows(uint32_t r, const std::vector<std::string>& features, EmbeddingTable& main,
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

}  // namespace recstream::learner
