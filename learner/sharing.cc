#include "learner/sharing.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "learner/model.h"

namespace recstream::learner {
namespace {

// The dense blocks whose changes are exchanged (learner/sharing.h).
constexpr std::string_view kExchanged[] = {"dense",        "dense_accum",    "history_match",
                                           "history_gate", "implicit_shift", "tower_weight"};

// out = v - base, then base = v (n floats, in one vector loop: the
// pointers do not overlap); false when v and base were the same bits.
bool TakeDifference(const float* __restrict v, float* __restrict base, float* __restrict out,
                    size_t n) {
  uint32_t differ = 0;
  for (size_t i = 0; i < n; ++i) {
    out[i] = v[i] - base[i];
    differ |= std::bit_cast<uint32_t>(v[i]) ^ std::bit_cast<uint32_t>(base[i]);
    base[i] = v[i];
  }
  return differ != 0;
}

// A row's values and its base (EmbeddingTable::Base), for writing. The
// rows an exchange reads and writes are scattered over megabytes of
// tables; resolving them first and fetching a few rows ahead keeps the
// loops off memory's latency.
void PrefetchRow(const EmbeddingTable& t, uint32_t row) {
  internal::PrefetchBytes<true>(t.Row(row), t.row_floats() * sizeof(float));
  internal::PrefetchBytes<true>(t.Base(row), t.row_floats() * sizeof(float));
}

constexpr size_t kAhead = 4;  // rows prefetched ahead
constexpr uint32_t kSkip = ~0u;

}  // namespace

int OwnerOf(std::string_view key, int count) {
  if (count <= 1) return 0;
  const uint32_t h = Model::IdHash(key), n = uint32_t(count);
  // The same as h % n; a mask when n is a power of two (no division on
  // the exchange's per-row path).
  return int((n & (n - 1)) == 0 ? h & (n - 1) : h % n);
}

namespace {

// SplitByOwner; with `movable` (`changes` itself), a table whose rows all
// have one owner (every table of two trainers' changes) is moved rather
// than copied.
void Split(const ModelChanges& changes, ModelChanges* movable, int count,
           std::vector<ModelChanges>* out) {
  out->assign(size_t(std::max(count, 1)), ModelChanges());
  std::vector<size_t> per_owner(out->size()), filled(out->size());
  std::vector<int> owner;
  for (size_t k = 0; k < changes.tables.size(); ++k) {
    const TableDelta& t = changes.tables[k];
    owner.resize(t.keys.size());
    std::fill(per_owner.begin(), per_owner.end(), 0);
    for (size_t i = 0; i < t.keys.size(); ++i)
      ++per_owner[size_t(owner[i] = OwnerOf(t.keys[i], count))];
    if (movable && !t.keys.empty() && per_owner[size_t(owner[0])] == t.keys.size()) {
      (*out)[size_t(owner[0])].tables.push_back(std::move(movable->tables[k]));
      continue;
    }
    std::vector<TableDelta*> parts(out->size(), nullptr);
    for (size_t o = 0; o < out->size(); ++o) {
      if (per_owner[o] == 0) continue;
      TableDelta& d = (*out)[o].tables.emplace_back();
      d.table = t.table;
      d.width = t.width;
      d.keys.reserve(per_owner[o]);
      d.values.resize(per_owner[o] * size_t(t.width));
      parts[o] = &d;
      filled[o] = 0;
    }
    for (size_t i = 0; i < t.keys.size(); ++i) {
      const size_t o = size_t(owner[i]);
      TableDelta& d = *parts[o];
      d.keys.push_back(t.keys[i]);
      std::copy_n(t.values.data() + i * size_t(t.width), t.width,
                  d.values.data() + filled[o]++ * size_t(t.width));
    }
  }
  for (const FeatureListDelta& l : changes.feature_lists) {
    if (l.table == kRingAdds) {  // for every trainer
      for (ModelChanges& c : *out) c.feature_lists.push_back(l);
      continue;
    }
    std::vector<FeatureListDelta*> parts(out->size(), nullptr);
    for (size_t i = 0; i < l.keys.size(); ++i) {
      const size_t o = size_t(OwnerOf(l.keys[i], count));
      if (!parts[o]) {
        FeatureListDelta& d = (*out)[o].feature_lists.emplace_back();
        d.table = l.table;
        parts[o] = &d;
      }
      parts[o]->keys.push_back(l.keys[i]);
      parts[o]->features.push_back(l.features[i]);
    }
  }
  if (movable) {
    (*out)[0].dense = std::move(movable->dense);
  } else {
    (*out)[0].dense = changes.dense;
  }
}

// A dense block `v` of another trainer in this build's layout: an older
// build's tower_weight widened into *scratch
// (Model::TowerWeightsInLayout); any other block as it is.
const std::vector<float>& InLayout(std::string_view name, const std::vector<float>& v,
                                   std::vector<float>* scratch) {
  return name == "tower_weight" ? Model::TowerWeightsInLayout(v, scratch) : v;
}

}  // namespace

void SplitByOwner(const ModelChanges& changes, int count, std::vector<ModelChanges>* out) {
  Split(changes, nullptr, count, out);
}

void SplitByOwner(ModelChanges&& changes, int count, std::vector<ModelChanges>* out) {
  Split(changes, &changes, count, out);
}

bool PublishesRow(int index, int count, std::string_view table, std::string_view id) {
  // Users are all this trainer's; shared rows, their owner's.
  return table == "user" || OwnerOf(id, count) == index;
}

bool PublishesList(int index, int count, std::string_view table, std::string_view id) {
  // Item lists: the owner's (each item's list as its owner has it); the
  // negative ring is trainer 0's (replicas score implicit tasks with it);
  // users' lists and histories are this trainer's.
  if (table == "item") return OwnerOf(id, count) == index;
  if (table == "negative_ring") return index == 0;
  return true;
}

void KeepOwned(int index, int count, ModelSnapshot* snapshot) {
  // Moved to the front in place.
  for (TableDelta& t : snapshot->tables)
    if (t.table != "user")
      KeepRows(&t, [&](size_t i) { return PublishesRow(index, count, t.table, t.keys[i]); });
  std::erase_if(snapshot->feature_lists, [&](const FeatureListDelta& l) {
    return l.table == "negative_ring" && !PublishesList(index, count, l.table, "");
  });
  for (FeatureListDelta& l : snapshot->feature_lists)
    if (l.table == "item")
      KeepLists(&l, [&](size_t i) { return PublishesList(index, count, l.table, l.keys[i]); });
  if (!PublishesDense(index)) snapshot->dense.clear();
}

Status ExchangeDirectly(std::span<Learner* const> trainers, std::vector<ModelChanges>* taken,
                        std::vector<ModelSnapshot>* published, bool follow) {
  const size_t n = trainers.size();
  std::vector<ModelChanges> own_taken;
  std::vector<ModelSnapshot> own_published;
  if (!taken) taken = &own_taken;
  if (!published) published = &own_published;
  taken->assign(n, ModelChanges());
  published->assign(n, ModelSnapshot());
  std::vector<std::vector<ModelChanges>> to(n);
  for (size_t i = 0; i < n; ++i) {
    trainers[i]->TakeChanges(&(*taken)[i]);
    SplitByOwner((*taken)[i], int(n), &to[i]);
  }
  for (size_t owner = 0; owner < n; ++owner)
    for (size_t from = 0; from < n; ++from)
      if (from != owner) RECSTREAM_RETURN_IF_ERROR(trainers[owner]->AddChanges(to[from][owner]));
  if (!follow) return Status::OK();
  for (size_t i = 0; i < n; ++i) {
    ModelChanges none;
    trainers[i]->TakeChanges(&none, &(*published)[i]);
    if (none.rows() > 0) return Status::Internal("a trainer learned during the exchange");
  }
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      if (i != j) RECSTREAM_RETURN_IF_ERROR(trainers[i]->FollowOwners((*published)[j], int(j)));
  return Status::OK();
}

Sharing::Sharing(Model* model)
    : m_(*model), index_(model->options.trainer_index), count_(model->options.trainer_count) {
  std::vector<EmbeddingTable*> tables = {&m_.items, &m_.user_features, &m_.item_features};
  if (m_.pretrained) tables.push_back(m_.pretrained.get());
  for (EmbeddingTable* t : tables) {
    t->TrackChanges();
    shared_.push_back(t);
  }
  owner_.resize(shared_.size());
  pending_.resize(shared_.size());
  RestoredDense();
}

bool Sharing::Owns(std::string_view key) const { return OwnerOf(key, count_) == index_; }

EmbeddingTable* Sharing::Find(std::string_view table) {
  for (EmbeddingTable* t : shared_)
    if (t->name() == table) return t;
  return nullptr;
}

Status Sharing::CheckWidth(const EmbeddingTable& t, const TableDelta& d, const char* what) {
  const size_t w = t.row_floats();
  if (size_t(d.width) != w || d.values.size() != d.keys.size() * w)
    return Status::Corruption(std::string(what) + " of table '" + d.table +
                              "' have the wrong width");
  return Status::OK();
}

void Sharing::TakeFeedback(const std::vector<float>& flags) {
  for (size_t t = 0; t < flags.size() && t < size_t(kNumTasks); ++t)
    if (flags[t] != 0.0f) m_.saw_negative[t].store(true);
}

std::vector<float> Sharing::ReadDense(std::string_view name) const {
  if (name == "dense") return m_.dense;
  if (name == "dense_accum") return m_.dense_accum;
  if (name == "history_match") return m_.history_match;
  if (name == "history_gate") return {m_.history_gate.begin(), m_.history_gate.end()};
  if (name == "tower_weight") return m_.tower_weight;
  return {m_.implicit_shift.begin(), m_.implicit_shift.end()};
}

void Sharing::WriteDense(std::string_view name, const std::vector<float>& v) {
  if (name == "dense") {
    std::copy(v.begin(), v.end(), m_.dense.begin());
  } else if (name == "dense_accum") {
    std::copy(v.begin(), v.end(), m_.dense_accum.begin());
  } else if (name == "history_match") {
    std::copy(v.begin(), v.end(), m_.history_match.begin());
  } else if (name == "history_gate") {
    std::copy(v.begin(), v.end(), m_.history_gate.begin());
  } else if (name == "tower_weight") {
    std::copy(v.begin(), v.end(), m_.tower_weight.begin());
  } else {
    std::copy(v.begin(), v.end(), m_.implicit_shift.begin());
  }
}

void Sharing::ForgetOwners() {
  // Pending rows stay pending; their owners are looked up again.
  for (std::vector<uint8_t>& owner : owner_)
    for (uint8_t& o : owner) o &= kPending;
}

void Sharing::RestoredDense() {
  dense_base_.clear();
  for (std::string_view name : kExchanged) dense_base_.emplace_back(name, ReadDense(name));
}

void Sharing::TakeChanges(ModelChanges* changes, ModelSnapshot* owned) {
  // The tables' buffers of the last take, reused (emptied, their capacity
  // kept).
  std::vector<TableDelta> spare = std::move(changes->tables);
  *changes = ModelChanges();
  if (owned) {
    for (TableDelta& t : owned->tables) spare.push_back(std::move(t));
    *owned = ModelSnapshot();
    owned->shape = m_.shape.Describe();
    for (int t = 0; t < kNumTasks; ++t) owned->learned[t] = m_.learned[t].load();
  }
  auto reuse = [&spare](TableDelta* d) {
    if (spare.empty()) return;
    *d = std::move(spare.back());
    spare.pop_back();
    d->keys.clear();
    // values keep their size: resizing them to a take's rows then
    // zero-fills only what they grow by (every float kept is written).
  };
  FeatureListDelta sent_lists, mine_lists;
  sent_lists.table = mine_lists.table = "item";
  std::vector<uint32_t> list;
  // An item's list goes with its row when it differs from the one last
  // sent that way (a hash per item row and way): most items keep their
  // features, and building the names is most of a take's allocations.
  auto add_list = [&](uint32_t row, std::string_view key, FeatureListDelta* to) {
    list.clear();
    m_.item_lists.Get(row, &list);
    if (list.empty()) return;
    std::vector<uint32_t>& sent = list_sent_[to == &mine_lists ? 1 : 0];
    uint32_t h = Model::IdHash(key) | 1;  // 0: nothing sent
    for (uint32_t f : list) h = (h ^ f) * 16777619u | 1;
    if (sent.size() <= row) sent.resize(size_t(row) + 1 + row / 2, 0);
    if (sent[row] == h) return;
    sent[row] = h;
    to->keys.emplace_back(key);
    auto& names = to->features.emplace_back();
    for (uint32_t f : list)
      if (m_.item_features.IsLive(f)) names.emplace_back(m_.item_features.key(f));
  };
  for (size_t ti = 0; ti < shared_.size(); ++ti) {
    EmbeddingTable& t = *shared_[ti];
    const bool items = &t == &m_.items;
    const size_t w = t.row_floats();
    TableDelta sent, mine;
    reuse(&sent);
    if (owned) reuse(&mine);
    sent.table = mine.table = t.name();
    sent.width = mine.width = int(w);
    // Rows first, then buffers of their final size (growing them row by
    // row copied and faulted in every exchange's megabytes again).
    mine_rows_.clear();
    theirs_rows_.clear();
    std::vector<uint8_t>& owner = owner_[ti];
    std::vector<uint32_t>& pending = pending_[ti];
    if (owner.size() < t.size()) owner.resize(t.size() + t.size() / 2, 0);
    t.ForEachChanged([&](uint32_t row, uint8_t mark) -> uint8_t {
      uint8_t& o = owner[row];
      if (mark == EmbeddingTable::kMadeMark || !(o & (kMine | kTheirs)))
        o = uint8_t((o & kPending) | (Owns(t.key(row)) ? kMine : kTheirs));
      if (o & kTheirs) {
        theirs_rows_.push_back(row);
      } else if (!(o & kPending)) {
        if (owned) {
          mine_rows_.push_back(row);
        } else {
          o |= kPending;
          pending.push_back(row);
        }
      }
      return 0;
    });
    if (owned) {
      // Rows changed before, still live and still this trainer's.
      for (uint32_t row : pending) {
        uint8_t& o = owner[row];
        o &= uint8_t(~kPending);
        if (!t.IsLive(row)) continue;
        if (!(o & (kMine | kTheirs))) o = Owns(t.key(row)) ? kMine : kTheirs;
        if (o & kMine) mine_rows_.push_back(row);
      }
      pending.clear();
      std::sort(mine_rows_.begin(), mine_rows_.end());  // in row order, as the table's scan
    }
    mine.keys.reserve(mine_rows_.size());
    mine.values.resize(mine_rows_.size() * w);
    for (size_t i = 0; i < mine_rows_.size(); ++i) {
      if (i + kAhead < mine_rows_.size())
        internal::PrefetchBytes(t.Row(mine_rows_[i + kAhead]), w * sizeof(float));
      const uint32_t row = mine_rows_[i];
      const std::string_view key = t.key(row);
      mine.keys.emplace_back(key);
      std::copy_n(t.Row(row), w, mine.values.data() + i * w);
      if (items) add_list(row, key, &mine_lists);
    }
    sent.keys.reserve(theirs_rows_.size());
    sent.values.resize(theirs_rows_.size() * w);
    size_t kept = 0;
    for (size_t i = 0; i < theirs_rows_.size(); ++i) {
      if (i + kAhead < theirs_rows_.size()) PrefetchRow(t, theirs_rows_[i + kAhead]);
      const uint32_t row = theirs_rows_[i];
      const std::string_view key = t.key(row);
      const float* v = t.Row(row);
      float* base = t.Base(row);
      // Unchanged (learned back to its base, or a zero gradient): nothing
      // to send. One pass: difference, new base, any bit changed.
      if (!TakeDifference(v, base, sent.values.data() + kept * w, w)) continue;
      sent.keys.emplace_back(key);
      ++kept;
      if (items) add_list(row, key, &sent_lists);
    }
    sent.values.resize(kept * w);
    counters_.rows_sent.fetch_add(sent.keys.size(), std::memory_order_relaxed);
    if (!sent.keys.empty()) changes->tables.push_back(std::move(sent));
    if (owned && !mine.keys.empty()) owned->tables.push_back(std::move(mine));
  }
  if (!sent_lists.keys.empty()) changes->feature_lists.push_back(std::move(sent_lists));
  // The items this trainer put into its negative ring since the last take,
  // oldest first, for every other trainer's ring (kRingAdds).
  if (m_.recent.size() > 1) {
    const uint64_t next = m_.recent_next.load(std::memory_order_relaxed);
    const uint64_t n = m_.recent.size();
    // In lists of at most kRingAddsPerList items (keys "ring0", "ring1",
    // ... in order), so that no record of them outgrows a Kafka message.
    constexpr size_t kRingAddsPerList = 2048;
    FeatureListDelta adds;
    adds.table = std::string(kRingAdds);
    for (uint64_t i = std::max(ring_taken_, next > n ? next - n : 0); i < next; ++i) {
      const uint64_t entry = m_.recent[i % n].load(std::memory_order_relaxed);
      if (entry == Model::kNoEntry || !m_.items.IsLive(uint32_t(entry >> 32))) continue;
      if (received_.count(i)) continue;  // another trainer's, added here
      if (adds.features.empty() || adds.features.back().size() == kRingAddsPerList) {
        adds.keys.push_back("ring" + std::to_string(adds.keys.size()));
        adds.features.emplace_back();
      }
      adds.features.back().emplace_back(m_.items.key(uint32_t(entry >> 32)));
    }
    received_.clear();
    ring_taken_ = next;
    if (!adds.keys.empty()) changes->feature_lists.push_back(std::move(adds));
  }
  if (owned && !mine_lists.keys.empty()) owned->feature_lists.push_back(std::move(mine_lists));
  std::vector<float> feedback;
  for (const auto& n : m_.saw_negative) feedback.push_back(n.load() ? 1.0f : 0.0f);
  if (index_ == 0) {
    if (owned) {
      for (std::string_view name : kExchanged) owned->dense.emplace_back(name, ReadDense(name));
      owned->dense.emplace_back("feedback", feedback);
      owned->dense.emplace_back("weighting", m_.weighting.Save());
    }
  } else {
    for (auto& [name, base] : dense_base_) {
      std::vector<float> now = ReadDense(name);
      std::vector<float> diff(now.size());
      for (size_t i = 0; i < now.size(); ++i) diff[i] = now[i] - base[i];
      base = std::move(now);
      changes->dense.emplace_back(name, std::move(diff));
    }
    changes->dense.emplace_back("feedback", feedback);
  }
}

void Sharing::SetItemLists(const std::vector<FeatureListDelta>& lists, bool owned, int from) {
  std::vector<uint32_t> rows;
  for (const FeatureListDelta& l : lists) {
    if (l.table == kRingAdds && owned && m_.recent.size() > 1) {
      for (const std::vector<std::string>& part : l.features)
        for (const std::string& item : part) {
          received_.insert(m_.recent_next.load(std::memory_order_relaxed));
          m_.PushRecent(m_.items.GetOrCreate(item), Model::IdHash(item));
        }
      continue;
    }
    if (l.table != "item" || l.features.size() != l.keys.size()) continue;
    for (size_t i = 0; i < l.keys.size(); ++i) {
      if (Owns(l.keys[i]) != owned || l.features[i].empty()) continue;
      if (from >= 0 && OwnerOf(l.keys[i], count_) != from) continue;  // not the owner's list
      rows.clear();
      for (const std::string& f : l.features[i]) rows.push_back(m_.item_features.GetOrCreate(f));
      m_.item_lists.Set(m_.items.GetOrCreate(l.keys[i]), rows.data(), rows.data() + rows.size());
    }
  }
}

Status Sharing::AddChanges(const ModelChanges& changes) {
  for (const TableDelta& d : changes.tables) {
    EmbeddingTable* shared = Find(d.table);
    if (!shared)
      return Status::Corruption("changes of unknown or unshared table '" + d.table + "'");
    RECSTREAM_RETURN_IF_ERROR(CheckWidth(*shared, d, "changes"));
    EmbeddingTable& t = *shared;
    const size_t w = t.row_floats();
    std::vector<float> sum(w);
    rows_.resize(d.keys.size());
    for (size_t i = 0; i < d.keys.size(); ++i) {
      if (!Owns(d.keys[i])) {
        counters_.not_owned.fetch_add(1, std::memory_order_relaxed);
        rows_[i] = kSkip;
        continue;
      }
      rows_[i] = t.GetOrCreate(d.keys[i]);
      if (i < kAhead) internal::PrefetchBytes<true>(t.Row(rows_[i]), w * sizeof(float));
    }
    for (size_t i = 0; i < d.keys.size(); ++i) {
      if (i + kAhead < rows_.size() && rows_[i + kAhead] != kSkip)
        internal::PrefetchBytes<true>(t.Row(rows_[i + kAhead]), w * sizeof(float));
      const uint32_t row = rows_[i];
      if (row == kSkip) continue;
      const float* delta = d.values.data() + i * w;
      float* v = t.Row(row);
      for (size_t k = 0; k < w; ++k) sum[k] = v[k] + delta[k];
      if (!AllFinite(sum.data(), w)) {
        counters_.refused.fetch_add(1, std::memory_order_relaxed);
        m_.refused.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      t.MarkDirty(row);  // before the write (EmbeddingTable::MarkDirty)
      std::copy_n(sum.data(), w, v);
      counters_.rows_added.fetch_add(1, std::memory_order_relaxed);
    }
  }
  for (const auto& [name, delta] : changes.dense) {
    if (name == "feedback") {
      TakeFeedback(delta);
      continue;
    }
    if (std::find(std::begin(kExchanged), std::end(kExchanged), name) == std::end(kExchanged))
      return Status::Corruption("changes of unknown dense block '" + name + "'");
    if (index_ != 0) {
      counters_.not_owned.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    std::vector<float> now = ReadDense(name);
    std::vector<float> wide;
    const std::vector<float>& delta_now = InLayout(name, delta, &wide);
    if (delta_now.size() != now.size())
      return Status::Corruption("changes of dense block '" + name + "' have the wrong size");
    for (size_t i = 0; i < now.size(); ++i) now[i] += delta_now[i];
    if (!AllFinite(now.data(), now.size())) {
      counters_.refused.fetch_add(1, std::memory_order_relaxed);
      m_.refused.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    WriteDense(name, now);
  }
  SetItemLists(changes.feature_lists, true, -1);
  return Status::OK();
}

Status Sharing::FollowOwners(const ModelSnapshot& published, int from) {
  for (const TableDelta& d : published.tables) {
    EmbeddingTable* shared = Find(d.table);
    if (!shared) continue;  // users (another trainer's own), or not shared
    RECSTREAM_RETURN_IF_ERROR(CheckWidth(*shared, d, "published rows"));
    EmbeddingTable& t = *shared;
    const size_t w = t.row_floats();
    std::vector<float> next(w);
    // Rows first (not Put: a snapshot's export may be under way, and
    // MarkDirty copies a row it lists before the write), then the values,
    // a few rows ahead of the loop in cache.
    rows_.resize(d.keys.size());
    for (size_t i = 0; i < d.keys.size(); ++i) {
      const int owner = OwnerOf(d.keys[i], count_);
      bool take = owner != index_ && (from < 0 || owner == from);
      if (take && !AllFinite(d.values.data() + i * w, w)) {  // refused: no row made for it
        counters_.refused.fetch_add(1, std::memory_order_relaxed);
        take = false;
      }
      rows_[i] = take ? t.GetOrCreate(d.keys[i]) : kSkip;
      if (take && i < kAhead) PrefetchRow(t, rows_[i]);
    }
    for (size_t i = 0; i < d.keys.size(); ++i) {
      if (i + kAhead < rows_.size() && rows_[i + kAhead] != kSkip)
        PrefetchRow(t, rows_[i + kAhead]);
      const uint32_t row = rows_[i];
      if (row == kSkip) continue;
      const float* pub = d.values.data() + i * w;
      float* base = t.Base(row);  // a row just created: its initial values
      float* v = t.Row(row);
      for (size_t k = 0; k < w; ++k) next[k] = pub[k] + (v[k] - base[k]);
      if (!AllFinite(next.data(), w)) {
        counters_.refused.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      t.MarkDirty(row);
      std::copy_n(next.data(), w, v);
      std::copy_n(pub, w, base);
      counters_.rows_followed.fetch_add(1, std::memory_order_relaxed);
    }
  }
  SetItemLists(published.feature_lists, false, from);
  if (index_ == 0 || (from > 0)) return Status::OK();
  for (const auto& [name, pub] : published.dense) {
    if (name == "feedback") {
      TakeFeedback(pub);
      continue;
    }
    if (name == "weighting") {
      if (!m_.weighting.Load(pub))
        return Status::Corruption("published weighting has the wrong size");
      continue;
    }
    auto it = std::find_if(dense_base_.begin(), dense_base_.end(),
                           [&](const auto& b) { return b.first == name; });
    if (it == dense_base_.end()) continue;  // not exchanged (metrics, ...)
    std::vector<float> now = ReadDense(name);
    std::vector<float> wide;
    const std::vector<float>& pub_now = InLayout(name, pub, &wide);
    if (pub_now.size() != now.size())
      return Status::Corruption("published dense block '" + name + "' has the wrong size");
    if (!AllFinite(pub_now.data(), pub_now.size())) {
      counters_.refused.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    for (size_t i = 0; i < now.size(); ++i) now[i] = pub_now[i] + (now[i] - it->second[i]);
    WriteDense(name, now);
    it->second = pub_now;
  }
  return Status::OK();
}

}  // namespace recstream::learner
