#include "learner/model.h"

#include <algorithm>
#include <cmath>

#include "learner/optimizer.h"

namespace recstream::learner {

namespace {

// The optimizer state of the rows of a table whose values learn at `lr`.
EmbeddingTable::RowState StateOf(const LearnerOptions& o, float lr) {
  const RowOptimizer optimizer(o.embedding_optimizer, o.l1, o.l2, o.grad_clip);
  return {optimizer.state_blocks(), optimizer.InitialZScale(lr, o.adagrad_init)};
}

// The negative ring's slots: kRingWindows windows with implicit tasks (as
// many as fit in 2^24 slots, at least one), one window for explicit tasks'
// negatives, else 1 (no ring).
size_t RingSize(const LearnerOptions& o) {
  const size_t w = size_t(o.negative_window);
  if (o.feedback != Feedback::kExplicit)
    return w * std::clamp<size_t>((size_t(1) << 24) / w, 1, Model::kRingWindows);
  return o.negatives > 0 ? w : 1;
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
      recent(RingSize(o)),
      window(o.negatives > 0 || o.feedback != Feedback::kExplicit ? o.negative_window : 1),
      recent_count(o.feedback != Feedback::kExplicit ? size_t(1) << kCountBits : 0),
      quarter_count(recent_count.empty() ? 0 : size_t(1) << QuarterBits(window)),
      long_count(recent_count.size()),
      quarter_bits(QuarterBits(window)),
      ring_dirty((recent.size() + kRingChunk - 1) / kRingChunk, 0),
      history_match(size_t(4) * kNumTasks * o.history, 0.0f),
      weighting(o) {
  for (auto& n : saw_negative) n.store(false);
  if (o.admit_after > 1) admission = std::make_unique<AdmissionSketch>();
  if (o.expire_user_s > 0) users.TrackTouches();
  if (o.expire_item_s > 0) items.TrackTouches();
  if (o.expire_feature_s > 0) {
    user_features.TrackTouches();
    item_features.TrackTouches();
  }
  if (o.memory_limit_mb > 0) residency = std::make_unique<Residency>(this);
  for (auto& r : recent) r.store(kNoEntry, std::memory_order_relaxed);
  InitMatchWeights();
  for (auto& c : recent_count) c.store(0, std::memory_order_relaxed);
  for (auto& c : quarter_count) c.store(0, std::memory_order_relaxed);
  for (auto& c : long_count) c.store(0, std::memory_order_relaxed);
  log_table.resize(kLogTable + 1);
  for (uint32_t n = 1; n <= kLogTable; ++n) log_table[n] = std::log(float(n));
  dense.resize(shape.dense_size());
  dense_accum.assign(shape.dense_size(), 0.0f);
  if (adam()) dense_m.assign(shape.dense_size(), 0.0f);
  shape.Init(dense.data(), o.seed);
  for (auto& m : metrics) m = TaskMetrics();
  for (auto& l : learned) l.store(0);
  if (o.trainer_count > 1) sharing = std::make_unique<Sharing>(this);
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

void Model::InitMatchWeights() {
  // A repeat of one of the user's items starts as likely as the event's
  // sampled items together (a margin of log(1 + implicit_negatives) in the
  // softmax): repeat views are common in real logs, and learned from 0 the
  // weights took tens of thousands of events to rank a user's own items
  // first. A stream without repeats learns them down. An item sharing a
  // feature with every item of a full history starts as likely as a
  // repeat (the positions' weights sum to log(1 + implicit_negatives)): from
  // 0, the first thousands of events of a log ranked a user's categories no
  // higher than others, which a short log (one user's days) never makes up.
  // Within that sum, the latest items start heavier, halving every
  // kFeatureHalfLife positions: what a user viewed last says most about
  // what they view next (as the decayed baselines of EVAL.md count), and
  // spread evenly the weights took a short log's first quarter to learn it.
  constexpr float kFeatureHalfLife = 5.0f;
  std::fill(history_match.begin(), history_match.end(), 0.0f);
  const float margin = std::log(1.0f + float(options.implicit_negatives));
  float sum = 0.0f;
  for (int p = 0; p < options.history; ++p) sum += std::exp2(-float(p) / kFeatureHalfLife);
  for (int t = 0; t < kNumTasks; ++t) {
    std::fill_n(MatchWeights(t), options.history, margin);
    for (int p = 0; p < options.history; ++p)
      MatchWeights(t)[options.history + p] = margin * std::exp2(-float(p) / kFeatureHalfLife) / sum;
  }
}

const std::vector<float>& Model::TowerWeightsInLayout(const std::vector<float>& v,
                                                      std::vector<float>* scratch) {
  if (v.size() != 2 * kTowerSet) return v;
  scratch->assign(2 * kTowerParams, 0.0f);
  for (size_t i = 0; i < kTowerSet; ++i) {
    (*scratch)[i] = (*scratch)[kTowerSet + i] = v[i];
    (*scratch)[kTowerParams + i] = (*scratch)[kTowerParams + kTowerSet + i] = v[kTowerSet + i];
  }
  return *scratch;
}

float Model::HistoryMatch(int t, const HistoryView& view, uint32_t row, const uint32_t* f,
                          size_t nf, float* hits, bool* own) const {
  const int h = options.history;
  if (hits) std::fill(hits, hits + 2 * h, 0.0f);
  if (own) *own = false;
  if (view.empty()) return 0.0f;
  const float* w = MatchWeights(t);
  float logit = 0.0f;
  const size_t n = view.items.size();
  for (size_t i = 0; i < n; ++i) {
    const size_t p = n - 1 - i;  // 0: the latest item
    if (row != EmbeddingTable::kNoRow && view.items[i] == row) {
      logit += w[p];
      if (hits) hits[p] = 1.0f;
      if (own) *own = true;
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

void Model::RemoveRow(EmbeddingTable& table, uint32_t row, bool record) {
  const std::string key(table.key(row));
  if (table.Remove(key) != row) return;
  int kind = 0;
  if (&table == &users) {
    user_lists.Clear(row);
    histories.Clear(row);
    std::unique_lock lock(purchases_mu);
    if (auto it = purchases.find(row); it != purchases.end()) {
      if (record)
        for (uint32_t item : it->second) deleted_purchases.emplace_back(key, items.key(item));
      purchases.erase(it);
    }
    // Purchases not exported yet refer to the row by number: they go when
    // it is reclaimed (ReclaimRetired), and a snapshot skips them meanwhile.
  } else if (&table == &items) {
    kind = 1;
    item_lists.Clear(row);
    // It leaves the negative ring at the end of the sweep (or deletions)
    // that removed it, so that snapshots (which export it as an empty
    // slot) and the counts agree from then on.
    if (recent.size() > 1) ring_removed.push_back(row);
  } else {
    kind = &table == &user_features ? 2 : 3;
  }
  if (record) {
    deleted_ids[table.name()].push_back(key);
    expired[kind].fetch_add(1, std::memory_order_relaxed);
  }
  retired.push_back({&table, row, user_sweep.cycles, item_sweep.cycles, !table.IsLive(row)});
  if (kind == 1) ++retired_items;
  if (kind >= 2) ++retired_features;
}

void Model::ReclaimRetired() {
  if (retired.empty() || exporting.load(std::memory_order_acquire)) return;
  // Rows removed while an export held them read as removed from now on
  // (before any export can list them again); their scrubbing cycles count
  // from here.
  for (Retired& r : retired)
    if (!r.marked && r.table->MarkRemoved(r.row)) {
      r.marked = true;
      r.user_cycle = user_sweep.cycles;
      r.item_cycle = item_sweep.cycles;
    }
  std::vector<uint32_t> items_freed, users_freed;
  size_t kept = 0;
  for (const Retired& r : retired) {
    if (!r.marked) {
      retired[kept++] = r;
      continue;
    }
    // Users: nothing else refers to them. Items: users' histories and
    // purchases, scrubbed by a whole user cycle after the removal. Features:
    // users' and items' lists, scrubbed by whole cycles of both.
    const bool users_done = user_sweep.cycles >= r.user_cycle + 2;
    const bool items_done = item_sweep.cycles >= r.item_cycle + 2;
    const bool free = r.table == &users || (r.table == &items && users_done) ||
                      (r.table != &items && users_done && items_done);
    if (!free) {
      retired[kept++] = r;
      continue;
    }
    if (r.table == &items) {
      items_freed.push_back(r.row);
      --retired_items;
    } else if (r.table == &users) {
      users_freed.push_back(r.row);
    } else {
      --retired_features;
      r.table->Reclaim(r.row);
    }
  }
  retired.resize(kept);
  std::sort(items_freed.begin(), items_freed.end());
  std::sort(users_freed.begin(), users_freed.end());
  auto freed = [](const std::vector<uint32_t>& rows, uint32_t r) {
    return std::binary_search(rows.begin(), rows.end(), r);
  };
  if (!items_freed.empty() || !users_freed.empty()) {
    // Purchases not exported yet refer to rows by number: one pass for the
    // whole batch, before the rows can be reused.
    std::unique_lock lock(purchases_mu);
    std::erase_if(new_purchases, [&](const auto& p) {
      return freed(users_freed, p.first) || freed(items_freed, p.second);
    });
  }
  for (uint32_t r : users_freed) users.Reclaim(r);
  for (uint32_t r : items_freed) items.Reclaim(r);
  DropFromRing(items_freed);
}

void Model::DropFromRing(const std::vector<uint32_t>& rows) {
  if (rows.empty() || recent.size() <= 1) return;
  const uint64_t next = recent_next.load(std::memory_order_relaxed);
  for (uint64_t i = 0; i < recent.size(); ++i) {
    const uint64_t v = recent[i].load(std::memory_order_relaxed);
    if (v == kNoEntry || !std::binary_search(rows.begin(), rows.end(), uint32_t(v >> 32))) continue;
    recent[i].store(kNoEntry, std::memory_order_relaxed);
    MarkRingChunk(i);
    if (recent_count.empty()) continue;
    CountEntry(v, SlotAge(next, i), -1);
  }
}

void Model::Recount() {
  if (recent_count.empty() || recent.size() <= 1) return;
  for (auto* table : {&recent_count, &quarter_count, &long_count})
    for (auto& c : *table) c.store(0, std::memory_order_relaxed);
  recent_distinct.store(0, std::memory_order_relaxed);
  for (auto& c : counted) c.store(0, std::memory_order_relaxed);
  const uint64_t next = recent_next.load(std::memory_order_relaxed), n = recent.size();
  for (uint64_t k = 0; k < std::min(next, n); ++k) {  // k: the entry's age
    const uint64_t v = recent[RecentSlot(next, k)].load(std::memory_order_relaxed);
    if (v != kNoEntry) CountEntry(v, k, +1);
  }
}

namespace {

// Keeps the rows of `list` that are live in `table`; true when any went.
bool DropDead(const EmbeddingTable& table, std::vector<uint32_t>* list) {
  const size_t before = list->size();
  std::erase_if(*list, [&](uint32_t r) { return !table.IsLive(r); });
  return list->size() != before;
}

}  // namespace

void Model::ScrubStep(size_t budget) { Sweeps(budget, false); }

void Model::ExpireStep(size_t budget) { Sweeps(budget, true); }

void Model::Sweeps(size_t budget, bool expire) {
  const int64_t now = event_time_s.load(std::memory_order_relaxed);
  ReclaimRetired();
  // Items removed since the last sweep (a replica's deletions) or by this
  // one leave the ring.
  struct DropRemoved {
    Model* m;
    ~DropRemoved() {
      if (m->ring_removed.empty()) return;
      std::sort(m->ring_removed.begin(), m->ring_removed.end());
      m->DropFromRing(m->ring_removed);
      m->ring_removed.clear();
    }
  } drop_removed{this};
  std::vector<uint32_t> list;
  // One table's slice: `visit(row)` for up to `budget` rows from its cursor.
  auto sweep = [&](EmbeddingTable& t, Sweep& s, auto&& visit) {
    const uint32_t n = t.size();
    for (size_t k = 0; k < std::min<size_t>(budget, n); ++k) {
      if (s.cursor >= n) {
        s.cursor = 0;
        ++s.cycles;
      }
      const uint32_t row = s.cursor++;
      if (t.IsLive(row)) visit(row);
    }
    if (s.cursor >= n) {
      s.cursor = 0;
      ++s.cycles;
    }
  };
  // Whether row `row` of `t` is past its time (restored rows, which have
  // none, count as touched now).
  auto expired_row = [&](EmbeddingTable& t, uint32_t row, int64_t expire_s) {
    if (!expire || expire_s <= 0 || now <= 0 || !t.tracks_touches()) return false;
    const uint32_t touched = t.touched(row);
    if (touched == 0) {
      t.Touch(row, uint32_t(now));
      return false;
    }
    return int64_t(touched) < now - expire_s;
  };
  const uint32_t prior_user = Prior(0), prior_item = Prior(1);
  const bool scrub_users = retired_items > 0 || retired_features > 0;
  if ((expire && options.expire_user_s > 0) || scrub_users) {
    sweep(users, user_sweep, [&](uint32_t row) {
      if (row == prior_user) return;
      if (expired_row(users, row, options.expire_user_s)) {
        RemoveRow(users, row, true);
        return;
      }
      if (!scrub_users) return;
      if (retired_items > 0) {
        list.clear();
        histories.Get(row, &list);
        if (DropDead(items, &list)) histories.Set(row, list.data(), list.data() + list.size());
        std::unique_lock lock(purchases_mu);
        if (auto it = purchases.find(row); it != purchases.end()) {
          for (auto p = it->second.begin(); p != it->second.end();) {
            if (items.IsLive(*p)) {
              ++p;
              continue;
            }
            // (a replica applying deletions records nothing: the trainer does)
            if (expire) deleted_purchases.emplace_back(users.key(row), items.key(*p));
            p = it->second.erase(p);
          }
        }
      }
      if (retired_features > 0) {
        list.clear();
        user_lists.Get(row, &list);
        if (DropDead(user_features, &list))
          user_lists.Set(row, list.data(), list.data() + list.size());
      }
    });
  }
  if ((expire && options.expire_item_s > 0) || retired_features > 0) {
    sweep(items, item_sweep, [&](uint32_t row) {
      if (row == prior_item) return;
      if (expired_row(items, row, options.expire_item_s)) {
        RemoveRow(items, row, true);
        return;
      }
      if (retired_features == 0) return;
      list.clear();
      item_lists.Get(row, &list);
      if (DropDead(item_features, &list))
        item_lists.Set(row, list.data(), list.data() + list.size());
    });
  }
  if (expire && options.expire_feature_s > 0) {
    sweep(user_features, user_feature_sweep, [&](uint32_t row) {
      if (expired_row(user_features, row, options.expire_feature_s))
        RemoveRow(user_features, row, true);
    });
    sweep(item_features, item_feature_sweep, [&](uint32_t row) {
      if (expired_row(item_features, row, options.expire_feature_s))
        RemoveRow(item_features, row, true);
    });
  }
}

}  // namespace recstream::learner
