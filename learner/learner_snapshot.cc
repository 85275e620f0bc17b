// TakeSnapshot, ApplySnapshot and ImportPretrained: row deltas in and out.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "learner/learner_impl.h"
#include "learner/pack.h"

namespace recstream::learner {
namespace {

// The delta of `table` among the `old` ones of a snapshot passed in again,
// taken out of `old` so that its buffers are reused; an empty one if none.
template <typename Delta>
Delta TakeReusable(std::vector<Delta>& old, const std::string& table) {
  for (Delta& d : old) {
    if (d.table == table) {
      Delta reused = std::move(d);
      d.table.clear();
      return reused;
    }
  }
  return Delta();
}

// Corruption unless `delta` is a well-formed block of "user" or "item"
// feature lists, of "user_history" (each user's items, oldest first) or of
// the "negative_ring" (Model::SetRing).
Status CheckLists(const FeatureListDelta& delta) {
  if (delta.table == "negative_ring") {
    if (delta.features.size() != delta.keys.size())
      return Status::Corruption("the negative ring of a snapshot is malformed");
    for (size_t i = 0; i < delta.keys.size(); ++i) {
      const std::string& key = delta.keys[i];
      const size_t n = delta.features[i].size();
      const bool ok = key == "next"              ? n == 2
                      : key.starts_with("chunk") ? n <= Model::kRingChunk
                                                 : n >= 1;
      if (!ok) return Status::Corruption("the negative ring of a snapshot is malformed");
    }
    return Status::OK();
  }
  if (delta.table != "user" && delta.table != "item" && delta.table != "user_history" &&
      delta.table != kUserLeftLists)
    return Status::Corruption("snapshot has feature lists of unknown table '" + delta.table + "'");
  if (delta.features.size() != delta.keys.size())
    return Status::Corruption("feature lists of '" + delta.table + "' are malformed");
  return Status::OK();
}

}  // namespace

void Learner::TakeSnapshot(bool full, ModelSnapshot* out) {
  BeginSnapshot(full, out);
  FinishSnapshot(out);
}

void Learner::BeginSnapshot(bool full, ModelSnapshot* out) {
  Model& m = impl_->model;
  // This runs while training waits (see Learner::BeginSnapshot), so it only
  // lists: the changed rows (their marks become "due", see
  // EmbeddingTable::BeginExport), the changed feature lists as row numbers,
  // and the purchases as row pairs. The dense blocks and counters are
  // small and copied here. Ids and row values are FinishSnapshot's work.
  // The buffers of a snapshot passed in again are reused (their memory is
  // already mapped); everything is overwritten.
  Model::PendingSnapshot& p = m.pending_snapshot;
  if (p.active) FinishSnapshot(p.out);  // the previous one was not finished
  // Rows removed since the previous export can be reused now; this one
  // must not see them reused until it is finished.
  m.ReclaimRetired();
  m.exporting.store(true, std::memory_order_release);
  p.active = true;
  p.out = out;
  std::vector<TableDelta> old_tables = std::move(out->tables);
  std::vector<FeatureListDelta> old_lists = std::move(out->feature_lists);
  // Freed by FinishSnapshot, off the training thread.
  p.retired_purchases = std::move(out->new_purchases);
  *out = ModelSnapshot();
  out->shape = m.shape.Describe();
  for (auto& [table, ids] : m.deleted_ids)
    if (!ids.empty()) out->deleted.push_back({table, std::move(ids)});
  m.deleted_ids.clear();
  out->deleted_purchases = std::move(m.deleted_purchases);
  m.deleted_purchases.clear();
  const std::vector<EmbeddingTable*> tables = m.all_tables();
  p.rows.resize(tables.size());
  out->tables.reserve(tables.size());
  for (size_t ti = 0; ti < tables.size(); ++ti) {
    EmbeddingTable* t = tables[ti];
    TableDelta delta = TakeReusable(old_tables, t->name());
    delta.table = t->name();
    delta.width = int(t->row_floats());
    out->tables.push_back(std::move(delta));
    // After the push: the destination must not move again.
    t->BeginExport(full, &p.rows[ti], &out->tables.back().values);
  }
  // Users changed from here on are in the next snapshot (the memory
  // limit's epochs, see Residency).
  if (m.residency) m.users.SetEpoch(uint32_t(m.residency->Begun() + 1));
  int li = 0;
  for (auto [table, lists] : {std::pair<EmbeddingTable*, FeatureLists*>{&m.users, &m.user_lists},
                              {&m.items, &m.item_lists}}) {
    // Only the rows: their lists are read by FinishSnapshot (a million
    // lists took 88 ms here, in training's pause). A list set in between is
    // taken as it is then, newer than the rest of the snapshot; its row is
    // marked changed again, so the next snapshot has it too.
    Model::PendingSnapshot::Lists& pl = p.lists[li++];
    pl.rows.clear();
    lists->ForEachDirtyRow(full, [&](uint32_t r) { pl.rows.push_back(r); });
    if (pl.rows.empty()) continue;
    FeatureListDelta delta = TakeReusable(old_lists, table->name());
    delta.table = table->name();
    out->feature_lists.push_back(std::move(delta));
  }
  p.history_rows.clear();
  m.histories.ForEachDirtyRow(full, [&](uint32_t r) { p.history_rows.push_back(r); });
  if (!p.history_rows.empty()) {
    FeatureListDelta delta = TakeReusable(old_lists, "user_history");
    delta.table = "user_history";
    out->feature_lists.push_back(std::move(delta));
  }
  // The ring's chunks written since the last snapshot (all of them in a
  // full one), and those an entry left (ReclaimRetired).
  const uint64_t ring_next = m.recent_next.load();
  p.ring.clear();
  p.ring_chunks.clear();
  if (m.recent.size() > 1) {
    const uint64_t n = m.recent.size(), chunks = m.ring_dirty.size();
    const uint64_t from = full ? 0 : m.recent_exported;
    if (full || ring_next - from >= n) {
      if (ring_next > 0) std::fill(m.ring_dirty.begin(), m.ring_dirty.end(), 1);
    } else {
      for (uint64_t at = from; at < ring_next;) {
        const uint64_t slot = at % n;
        m.ring_dirty[slot / Model::kRingChunk] = 1;
        at += std::min<uint64_t>(Model::kRingChunk - slot % Model::kRingChunk, n - slot);
      }
    }
    for (uint64_t c = 0; c < chunks; ++c) {
      if (!m.ring_dirty[c]) continue;
      m.ring_dirty[c] = 0;
      p.ring_chunks.push_back(uint32_t(c));
      for (uint64_t i = c * Model::kRingChunk; i < std::min(n, (c + 1) * Model::kRingChunk); ++i)
        p.ring.push_back(m.recent[i].load(std::memory_order_relaxed));
    }
    m.recent_exported = ring_next;
    p.ring_next = ring_next;
    if (!p.ring_chunks.empty()) {
      FeatureListDelta delta = TakeReusable(old_lists, "negative_ring");
      delta.table = "negative_ring";
      out->feature_lists.push_back(std::move(delta));
    }
  }
  // Last of the lists: FinishSnapshot fills the ones above by position.
  if (m.residency) m.residency->ExportLeft(out);
  out->dense.emplace_back("dense", m.dense);
  out->dense.emplace_back("dense_accum", m.dense_accum);
  out->dense.emplace_back("history_match", m.history_match);
  out->dense.emplace_back("implicit_shift",
                          std::vector<float>(m.implicit_shift.begin(), m.implicit_shift.end()));
  out->dense.emplace_back("history_gate",
                          std::vector<float>(m.history_gate.begin(), m.history_gate.end()));
  out->dense.emplace_back("tower_weight", m.tower_weight);
  {
    // Which tasks have learned a label 0 (LearnerOptions::feedback).
    std::vector<float> feedback;
    for (const auto& n : m.saw_negative) feedback.push_back(n.load() ? 1.0f : 0.0f);
    out->dense.emplace_back("feedback", std::move(feedback));
  }
  if (m.adam()) {
    std::vector<float> moments = m.dense_m;
    PackDouble(double(m.dense_steps.load()), &moments);
    out->dense.emplace_back("dense_m", std::move(moments));
  }
  out->dense.emplace_back("weighting", m.weighting.Save());
  // The admission counts (model.admit_after): stored, not published
  // (store/model_records.h), since replicas do not train.
  if (m.admission) out->dense.emplace_back("admission", m.admission->Export());
  {
    std::vector<float> metrics;
    std::lock_guard lock(m.metrics_mu);
    for (const TaskMetrics& tm : m.metrics) {
      for (double v : {tm.count, tm.loss_sum, tm.abs_sum, tm.sq_sum}) PackDouble(v, &metrics);
      for (double v : tm.pos) PackDouble(v, &metrics);
      for (double v : tm.neg) PackDouble(v, &metrics);
    }
    out->dense.emplace_back("metrics", std::move(metrics));
    // A block of its own, so that stores written before it still load.
    std::vector<float> decisions;
    for (const TaskMetrics& tm : m.metrics)
      for (double v : {tm.true_pos, tm.predicted_pos, tm.actual_pos}) PackDouble(v, &decisions);
    out->dense.emplace_back("metrics_decisions", std::move(decisions));
  }
  for (int t = 0; t < kNumTasks; ++t) out->learned[t] = m.learned[t].load();
  {
    std::unique_lock lock(m.purchases_mu);
    p.purchases.clear();
    if (full) {
      for (const auto& [u, set] : m.purchases)
        for (uint32_t i : set) p.purchases.emplace_back(u, i);
    } else {
      p.purchases.swap(m.new_purchases);
    }
    m.new_purchases.clear();
  }
}

void Learner::FinishSnapshot(ModelSnapshot* out) {
  Model& m = impl_->model;
  Model::PendingSnapshot& p = m.pending_snapshot;
  if (!p.active || out != p.out) return;
  // Runs beside training: the values of rows a trainer has not claimed,
  // then the ids (fixed for a row's lifetime), one table at a time. The
  // copy is left to this one thread; the training threads are busy.
  const std::vector<EmbeddingTable*> tables = m.all_tables();
  for (size_t ti = 0; ti < tables.size(); ++ti) {
    EmbeddingTable* t = tables[ti];
    t->FinishExport();
    TableDelta& delta = out->tables[ti];
    const std::vector<uint32_t>& rows = p.rows[ti];
    delta.keys.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) delta.keys[i] = t->key(rows[i]);
  }
  size_t at = 0;
  int li = 0;
  std::vector<uint32_t> list;
  for (auto [table, side, lists] : {std::tuple<EmbeddingTable*, EmbeddingTable*, FeatureLists*>{
                                        &m.users, &m.user_features, &m.user_lists},
                                    {&m.items, &m.item_features, &m.item_lists}}) {
    const Model::PendingSnapshot::Lists& pl = p.lists[li++];
    if (pl.rows.empty()) continue;
    FeatureListDelta& delta = out->feature_lists[at++];
    delta.keys.resize(pl.rows.size());
    delta.features.resize(pl.rows.size());
    for (size_t i = 0; i < pl.rows.size(); ++i) {
      delta.keys[i] = table->key(pl.rows[i]);
      list.clear();
      lists->Get(pl.rows[i], &list);  // concurrent Sets: see BeginSnapshot
      auto& names = delta.features[i];
      names.clear();
      names.reserve(list.size());
      // A removed feature (expiry) is gone from the list already for
      // whoever applies this snapshot; the sweep drops it here later.
      for (uint32_t f : list)
        if (side->IsLive(f)) names.push_back(side->key(f));
    }
  }
  if (!p.history_rows.empty()) {
    // Histories change only between Train calls (history.h), so these are
    // as they were at BeginSnapshot unless a call has run since.
    FeatureListDelta& delta = out->feature_lists[at++];
    delta.keys.resize(p.history_rows.size());
    delta.features.resize(p.history_rows.size());
    for (size_t i = 0; i < p.history_rows.size(); ++i) {
      delta.keys[i] = m.users.key(p.history_rows[i]);
      list.clear();
      m.histories.Get(p.history_rows[i], &list);
      auto& names = delta.features[i];
      names.clear();
      for (uint32_t item : list)
        if (m.items.IsLive(item)) names.push_back(m.items.key(item));  // (as lists above)
    }
  }
  if (!p.ring_chunks.empty()) {
    // "next": the ring's next position and its size; "chunk<c>": the items
    // of its slots [c, c + 1) * kRingChunk ("" for an empty slot).
    FeatureListDelta& delta = out->feature_lists[at++];
    delta.keys.resize(p.ring_chunks.size() + 1);
    delta.features.resize(p.ring_chunks.size() + 1);
    delta.keys[0] = "next";
    delta.features[0] = {std::to_string(p.ring_next), std::to_string(m.recent.size())};
    size_t from = 0;
    for (size_t k = 0; k < p.ring_chunks.size(); ++k) {
      const uint64_t c = p.ring_chunks[k];
      delta.keys[k + 1] = "chunk" + std::to_string(c);
      auto& names = delta.features[k + 1];
      names.clear();
      const size_t count =
          std::min<uint64_t>(Model::kRingChunk, m.recent.size() - c * Model::kRingChunk);
      for (size_t i = from; i < from + count; ++i) {
        const uint64_t entry = p.ring[i];
        names.push_back(entry == Model::kNoEntry || !m.items.IsLive(uint32_t(entry >> 32))
                            ? std::string()
                            : std::string(m.items.key(uint32_t(entry >> 32))));
      }
      from += count;
    }
  }
  p.retired_purchases = {};
  out->new_purchases.clear();
  out->new_purchases.reserve(p.purchases.size());
  for (auto [u, i] : p.purchases)
    if (m.users.IsLive(u) && m.items.IsLive(i))  // not removed since (expiry)
      out->new_purchases.emplace_back(m.users.key(u), m.items.key(i));
  p.active = false;
  m.exporting.store(false, std::memory_order_release);
}

Status Learner::ImportPretrained(std::string_view item, std::span<const float> vec) {
  Model& m = impl_->model;
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
  m.pretrained->MarkDirty(r);  // before the write (see EmbeddingTable::MarkDirty)
  float* row = m.pretrained->Row(r);
  std::copy(vec.begin(), vec.end(), row);
  m.pretrained->InitState(row);  // the optimizer state of a new row
  return Status::OK();
}

Status Learner::ApplyRows(const TableDelta& delta) {
  Model& m = impl_->model;
  EmbeddingTable* t = m.table(delta.table);
  if (!t) return Status::Corruption("snapshot has unknown table '" + delta.table + "'");
  const int w2 = int(t->row_floats());
  if (delta.width != w2 || delta.values.size() != delta.keys.size() * size_t(w2))
    return Status::Corruption("table '" + delta.table + "' has rows of the wrong width");
  // PutMany writes a new row's values once, without computing initial
  // values that would be overwritten right away, and takes each index
  // shard's lock once per block.
  if (t == &m.users && m.residency && m.residency->has_source()) {
    // A memory limit: the users that fit now, the rest stay in the store.
    std::vector<std::string> keys;
    FloatBuffer values;
    std::vector<size_t> kept;
    for (size_t i = 0; i < delta.keys.size(); ++i)
      if (m.users.Find(delta.keys[i]) != EmbeddingTable::kNoRow ||
          m.residency->KeepRestored(delta.keys[i]))
        kept.push_back(i);
    if (kept.size() < delta.keys.size()) {
      values.resize(kept.size() * size_t(w2));
      for (size_t k = 0; k < kept.size(); ++k) {
        keys.push_back(delta.keys[kept[k]]);
        std::copy_n(delta.values.data() + kept[k] * size_t(w2), w2, values.data() + k * size_t(w2));
      }
      t->PutMany(keys, values.data());
      m.applied.fetch_add(1, std::memory_order_relaxed);
      return Status::OK();
    }
  }
  t->PutMany(delta.keys, delta.values.data());
  m.applied.fetch_add(1, std::memory_order_relaxed);
  return Status::OK();
}

void Model::SetRing(const FeatureListDelta& delta) {
  if (recent.size() <= 1) return;
  const uint64_t n = recent.size();
  uint64_t next = recent_next.load(std::memory_order_relaxed), size = n;
  const std::vector<std::string>* whole = nullptr;
  bool has_next = false;
  // Each chunk's first slot, and its items.
  std::vector<std::pair<uint64_t, const std::vector<std::string>*>> chunks;
  for (size_t i = 0; i < delta.keys.size(); ++i) {
    if (delta.keys[i] == "next" && delta.features[i].size() == 2) {
      has_next = true;
      next = std::strtoull(delta.features[i][0].c_str(), nullptr, 10);
      size = std::strtoull(delta.features[i][1].c_str(), nullptr, 10);
    } else if (delta.keys[i].starts_with("chunk")) {
      chunks.emplace_back(std::strtoull(delta.keys[i].c_str() + 5, nullptr, 10) * kRingChunk,
                          &delta.features[i]);
    } else if (!delta.features[i].empty()) {
      whole = &delta.features[i];
    }
  }
  // Slot j of a ring of `src` slots whose next position was `src_next`: to
  // the same slot in a ring of the same size (a replica may get "next" and
  // the chunks in different parts of a snapshot); from a ring of another
  // size, to this ring's slot of the position p it holds, if p is among
  // this ring's positions (it keeps what fits).
  auto place = [&](uint64_t src, uint64_t src_next, uint64_t j, const std::string& name) {
    if (j >= src) return;
    uint64_t slot = j;
    if (src != n) {
      if (j >= src_next) return;
      const uint64_t p = src_next - 1 - (src_next - 1 - j) % src;
      if (p >= next || p + n < next) return;
      slot = p % n;
    }
    recent[slot].store(
        name.empty() ? kNoEntry : uint64_t(items.GetOrCreate(name)) << 32 | IdHash(name),
        std::memory_order_relaxed);
  };
  // A replica follows the trainer's versions, each with the chunks written
  // since the one before: only the slots they bring, and those whose
  // entries left the window or its quarter since, change their counts.
  // Those are taken out of the counts as they were and counted again as
  // they are (Recount's result, without a pass over the whole ring).
  const uint64_t was_next = recent_next.load(std::memory_order_relaxed);
  const bool incremental = ring_counted && has_next && whole == nullptr && size == n &&
                           !recent_count.empty() && next >= was_next && next - was_next < n;
  std::vector<uint32_t> affected;
  auto count_slot = [&](uint64_t slot, uint64_t at_next, int d) {
    const uint64_t v = recent[slot].load(std::memory_order_relaxed);
    if (v == kNoEntry || at_next == 0) return;
    const uint64_t age = SlotAge(at_next, slot);
    if (age < at_next) CountEntry(v, age, d);  // (not a slot never written)
  };
  if (incremental) {
    std::vector<uint8_t> marked(n, 0);
    auto add = [&](uint64_t slot) {
      if (marked[slot]) return;
      marked[slot] = 1;
      affected.push_back(uint32_t(slot));
    };
    for (const auto& [first, names] : chunks)
      for (uint64_t j = first; j < std::min(n, first + kRingChunk); ++j) add(j);
    for (const uint64_t span : {window, quarter()}) {  // entries that left either since
      const uint64_t from = was_next > span ? was_next - span : 0;
      for (uint64_t p = from; p + span < next; ++p) add(p % n);
    }
    // The slots of the positions written since: the newest now, whether or
    // not this delta brings their chunks (a part of a version may not).
    for (uint64_t p = was_next; p < next; ++p) add(p % n);
    for (uint32_t slot : affected) count_slot(slot, was_next, -1);
  }
  if (whole != nullptr) {
    // The whole ring as one list (builds before 2026-12-07): its next
    // position, then its slots.
    const uint64_t whole_next = std::strtoull((*whole)[0].c_str(), nullptr, 10);
    if (!has_next) next = whole_next;
    for (size_t j = 0; j + 1 < whole->size(); ++j)
      place(whole->size() - 1, whole_next, j, (*whole)[j + 1]);
  }
  for (const auto& [first, names] : chunks)
    for (size_t k = 0; k < names->size(); ++k) place(size, next, first + k, (*names)[k]);
  recent_next.store(next, std::memory_order_relaxed);
  recent_exported = next;
  // Placed from a ring of another size (or stored whole): every chunk is
  // exported again, so that no stored chunk keeps the other layout.
  if (whole != nullptr || size != n) std::fill(ring_dirty.begin(), ring_dirty.end(), 1);
  // Without its next position (in another part of the snapshot) the ring
  // is counted as it stands, and again in full once that part comes.
  ring_counted = has_next;
  if (!incremental) {
    Recount();
    return;
  }
  for (uint32_t slot : affected) count_slot(slot, next, +1);
}

void Model::SetLists(const FeatureListDelta& delta, size_t begin, size_t end) {
  // Each owner's list (a row of `main`) becomes the rows of its features
  // in `side`, created when missing. Owners' index slots are fetched a few
  // keys ahead.
  if (delta.table == "negative_ring") {
    if (begin == 0 && end == delta.keys.size()) SetRing(delta);
    return;
  }
  // Touch times of users that left memory: the store's, read by the memory
  // limit's expiry (Residency), nothing a model holds.
  if (delta.table == kUserLeftLists) return;
  if (delta.table == "user_history") {
    std::vector<uint32_t> items;
    for (size_t i = begin; i < end; ++i) {
      items.clear();
      for (const std::string& item : delta.features[i])
        items.push_back(this->items.GetOrCreate(item));
      if (!Resident(delta.keys[i])) continue;  // left in the store (memory limit)
      histories.Set(users.GetOrCreate(delta.keys[i]), items.data(), items.data() + items.size());
    }
    return;
  }
  const bool user = delta.table == "user";
  EmbeddingTable& main = user ? users : items;
  EmbeddingTable& side = user ? user_features : item_features;
  FeatureLists& lists = user ? user_lists : item_lists;
  constexpr size_t kAhead = 8;
  std::vector<uint32_t> rows;
  for (size_t i = begin; i < std::min(end, begin + kAhead); ++i) main.Prefetch(delta.keys[i]);
  for (size_t i = begin; i < end; ++i) {
    if (i + kAhead < end) main.Prefetch(delta.keys[i + kAhead]);
    if (user && !Resident(delta.keys[i])) continue;  // left in the store (memory limit)
    rows.clear();
    for (const std::string& f : delta.features[i]) rows.push_back(side.GetOrCreate(f));
    lists.Set(main.GetOrCreate(delta.keys[i]), rows.data(), rows.data() + rows.size());
  }
}

Status Learner::ApplyLists(const FeatureListDelta& delta) {
  RECSTREAM_RETURN_IF_ERROR(CheckLists(delta));
  Model& m = impl_->model;
  if (delta.table == "negative_ring") {
    // Its blocks may come in any order, on several threads: set whole by
    // the ApplySnapshot that follows.
    std::lock_guard lock(m.ring_blocks_mu);
    m.ring_blocks.keys.insert(m.ring_blocks.keys.end(), delta.keys.begin(), delta.keys.end());
    m.ring_blocks.features.insert(m.ring_blocks.features.end(), delta.features.begin(),
                                  delta.features.end());
    return Status::OK();
  }
  impl_->model.SetLists(delta, 0, delta.keys.size());
  impl_->model.applied.fetch_add(1, std::memory_order_relaxed);
  return Status::OK();
}

namespace {
bool has_dense_blocks(const ModelSnapshot& snap) {
  return std::any_of(snap.dense.begin(), snap.dense.end(),
                     [](const auto& d) { return d.first == "dense"; });
}
}  // namespace

Status Learner::ApplySnapshot(const ModelSnapshot& snap) {
  Model& m = impl_->model;
  // The ring's blocks a streaming restore handed over (ApplyLists), set
  // below; dropped if this fails.
  FeatureListDelta streamed_ring;
  {
    std::lock_guard lock(m.ring_blocks_mu);
    std::swap(streamed_ring, m.ring_blocks);
  }
  if (snap.shape != m.shape.Describe())
    return Status::Corruption("snapshot is of model shape '" + snap.shape +
                              "' but the options give '" + m.shape.Describe() + "'");
  // Deletions first: an id removed and seen again since is in both.
  for (const TableDeletion& d : snap.deleted) {
    EmbeddingTable* t = m.table(d.table);
    if (t == nullptr || t == m.pretrained.get())
      return Status::Corruption("deletion of unknown table '" + d.table + "'");
    for (const std::string& key : d.keys) {
      const uint32_t row = t->Find(key);
      if (row != EmbeddingTable::kNoRow) m.RemoveRow(*t, row, false);
    }
  }
  // References to removed items and features go as the sweeps come by
  // (the trainer's scrubbed lists arrive too); rows are reused after.
  if (!snap.deleted.empty() || !m.retired.empty()) m.ScrubStep(65536);
  for (const TableDelta& delta : snap.tables) RECSTREAM_RETURN_IF_ERROR(ApplyRows(delta));
  for (const FeatureListDelta& delta : snap.feature_lists) {
    RECSTREAM_RETURN_IF_ERROR(CheckLists(delta));
    // A restore brings millions of lists: they are set on the learner's
    // threads (GetOrCreate and Set are safe from any thread).
    if (delta.table == "negative_ring") {
      m.SetRing(delta);
      continue;
    }
    ParallelFor(delta.keys.size(), 16384,
                [&](size_t begin, size_t end) { m.SetLists(delta, begin, end); });
  }
  if (!streamed_ring.keys.empty()) {
    streamed_ring.table = "negative_ring";
    m.SetRing(streamed_ring);
  }
  bool has_feedback = false;
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
    } else if (name == "history_gate") {
      if (values.size() != m.history_gate.size())
        return Status::Corruption("history_gate block has the wrong size");
      std::copy(values.begin(), values.end(), m.history_gate.begin());
    } else if (name == "tower_weight") {
      // Absent from models written before it: those keep the initial 1s.
      // A block of a build before own items had weights of their own is
      // widened (Model::TowerWeightsInLayout). Copied into the vector in
      // place: scorers read it meanwhile (a replica applies versions as it
      // serves).
      std::vector<float> scratch;
      const std::vector<float>& w = Model::TowerWeightsInLayout(values, &scratch);
      if (w.size() != m.tower_weight.size())
        return Status::Corruption("tower_weight block has the wrong size");
      std::copy(w.begin(), w.end(), m.tower_weight.begin());
    } else if (name == "implicit_shift") {
      if (values.size() != m.implicit_shift.size())
        return Status::Corruption("implicit_shift block has the wrong size");
      std::copy(values.begin(), values.end(), m.implicit_shift.begin());
    } else if (name == "history_match") {
      // Written with model.history = H' (4 * kNumTasks * H' values): the
      // positions both lengths have are kept, so that the history's length
      // may change across a restart; positions beyond H' start as a new
      // model's do.
      if (values.size() % (4 * kNumTasks) != 0)
        return Status::Corruption("history_match block has the wrong size");
      const size_t was = values.size() / (4 * kNumTasks), now = size_t(m.options.history);
      if (was < now) m.InitMatchWeights();
      for (size_t block = 0; block < 2 * kNumTasks * 2; ++block)  // weights, accumulators
        for (size_t p = 0; p < std::min(was, now); ++p)
          m.history_match[block * now + p] = values[block * was + p];
    } else if (name == "feedback") {
      if (values.size() != size_t(kNumTasks))
        return Status::Corruption("feedback block has the wrong size");
      for (int t = 0; t < kNumTasks; ++t) m.saw_negative[t].store(values[t] != 0.0f);
      has_feedback = true;
    } else if (name == "admission") {
      // Kept only by a learner that admits (a store written with another
      // model.admit_after loads either way).
      if (m.admission && !m.admission->Import(values))
        return Status::Corruption("admission block has the wrong size or values");
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
    } else if (name == "metrics_decisions") {
      if (values.size() != 2 * 3 * kNumTasks)
        return Status::Corruption("metrics_decisions block has the wrong size");
      std::lock_guard lock(m.metrics_mu);
      size_t i = 0;
      for (TaskMetrics& tm : m.metrics)
        for (double* v : {&tm.true_pos, &tm.predicted_pos, &tm.actual_pos})
          *v = UnpackDouble(values, i++);
    } else {
      return Status::Corruption("snapshot has unknown dense block '" + name + "'");
    }
  }
  for (int t = 0; t < kNumTasks; ++t) m.learned[t].store(snap.learned[t]);
  {
    std::unique_lock lock(m.purchases_mu);
    for (const auto& [u, i] : snap.new_purchases) {
      if (m.Resident(u)) {
        m.purchases[m.users.GetOrCreate(u)].insert(m.items.GetOrCreate(i));
      } else {
        m.residency->NoteBuyer(u);  // left in the store with its purchases
      }
    }
  }
  // What was just loaded is already stored: nothing is dirty (nor changed
  // for other trainers, see ApplyRows).
  for (EmbeddingTable* t : m.all_tables()) {
    t->ForEachDirty(false, [](uint32_t) {});
    t->ForEachChanged([](uint32_t, uint8_t) -> uint8_t { return 0; });
  }
  if (m.sharing) m.sharing->ForgetOwners();
  if (m.sharing && has_dense_blocks(snap)) m.sharing->RestoredDense();
  for (FeatureLists* l : {&m.user_lists, &m.item_lists})
    l->ForEachDirty(false, [](uint32_t, const std::vector<uint32_t>&) {});
  m.histories.ForEachDirtyRow(false, [](uint32_t) {});
  // A model stored before implicit feedback existed learned every task
  // from its labels: it stays explicit. Only a snapshot with the dense
  // parameters says so: a part of a model (a page of a stored model, a
  // block of a replica's bootstrap) may come without its dense blocks.
  const bool has_dense = std::any_of(snap.dense.begin(), snap.dense.end(),
                                     [](const auto& d) { return d.first == "dense"; });
  if (!has_feedback && has_dense)
    for (auto& n : m.saw_negative) n.store(true);
  m.applied.fetch_add(1, std::memory_order_relaxed);
  return Status::OK();
}

}  // namespace recstream::learner
