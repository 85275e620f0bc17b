#include "store/snapshot_accumulator.h"

#include <algorithm>
#include <cstring>

namespace recstream::store {

void SnapshotAccumulator::Delete(const std::string& table, const std::string& id) {
  deleted_[table].insert(id);
  auto mark = [&](auto& index, auto& dead, const std::string& kind) {
    auto t = index.find(kind);
    if (t == index.end()) return;
    if (auto it = t->second.find(id); it != t->second.end()) dead[kind].insert(it->second);
  };
  mark(rows_, dead_rows_, table);
  mark(lists_, dead_lists_, table);
  if (table == "user") {
    mark(lists_, dead_lists_, "user_history");
    mark(lists_, dead_lists_, "user_left");
  }
}

void SnapshotAccumulator::Merge(const learner::ModelSnapshot& delta, bool full) {
  if (full || (!empty_ && delta.shape != merged_.shape)) {
    merged_ = learner::ModelSnapshot();
    rows_.clear();
    lists_.clear();
    dead_rows_.clear();
    dead_lists_.clear();
    full_ = full;
  }
  empty_ = false;
  // Deletions first (learner::ModelSnapshot::deleted).
  for (const learner::TableDeletion& d : delta.deleted)
    for (const std::string& id : d.keys) Delete(d.table, id);
  if (!delta.deleted_purchases.empty()) {
    std::set<std::pair<std::string, std::string>> gone(delta.deleted_purchases.begin(),
                                                       delta.deleted_purchases.end());
    std::erase_if(merged_.new_purchases, [&](const auto& p) { return gone.count(p) > 0; });
    deleted_purchases_.insert(gone.begin(), gone.end());
  }
  merged_.shape = delta.shape;
  merged_.learned = delta.learned;
  merged_.dense = delta.dense;
  for (const learner::TableDelta& t : delta.tables) {
    auto ti = std::find_if(merged_.tables.begin(), merged_.tables.end(),
                           [&](const learner::TableDelta& m) { return m.table == t.table; });
    if (ti == merged_.tables.end()) {
      ti = merged_.tables.insert(merged_.tables.end(), learner::TableDelta());
      ti->table = t.table;
      ti->width = t.width;
    }
    learner::TableDelta& m = *ti;
    auto& index = rows_[t.table];
    const size_t w = size_t(t.width);
    auto deleted = deleted_.find(t.table);
    auto& dead = dead_rows_[t.table];
    for (size_t i = 0; i < t.keys.size(); ++i) {
      if (deleted != deleted_.end()) deleted->second.erase(t.keys[i]);  // back again
      auto [it, inserted] = index.emplace(t.keys[i], m.keys.size());
      if (!inserted) dead.erase(it->second);
      if (inserted) {
        m.keys.push_back(t.keys[i]);
        const size_t at = m.values.size();
        m.values.resize(at + w);
        std::memcpy(m.values.data() + at, t.values.data() + i * w, w * sizeof(float));
      } else {
        std::memcpy(m.values.data() + it->second * w, t.values.data() + i * w, w * sizeof(float));
      }
    }
  }
  for (const learner::FeatureListDelta& l : delta.feature_lists) {
    auto li = std::find_if(merged_.feature_lists.begin(), merged_.feature_lists.end(),
                           [&](const learner::FeatureListDelta& m) { return m.table == l.table; });
    if (li == merged_.feature_lists.end()) {
      li = merged_.feature_lists.insert(merged_.feature_lists.end(), learner::FeatureListDelta());
      li->table = l.table;
    }
    auto& index = lists_[l.table];
    auto& dead = dead_lists_[l.table];
    for (size_t i = 0; i < l.keys.size(); ++i) {
      auto [it, inserted] = index.emplace(l.keys[i], li->keys.size());
      if (!inserted) dead.erase(it->second);
      if (inserted) {
        li->keys.push_back(l.keys[i]);
        li->features.push_back(l.features[i]);
      } else {
        li->features[it->second] = l.features[i];
      }
    }
  }
  for (const auto& p : delta.new_purchases) deleted_purchases_.erase(p);
  merged_.new_purchases.insert(merged_.new_purchases.end(), delta.new_purchases.begin(),
                               delta.new_purchases.end());
}

void SnapshotAccumulator::Take(learner::ModelSnapshot* out, bool* full) {
  // Entries deleted after they were merged go; the deletions come along.
  for (learner::TableDelta& t : merged_.tables) {
    auto dead = dead_rows_.find(t.table);
    if (dead == dead_rows_.end() || dead->second.empty()) continue;
    learner::KeepRows(&t, [&](size_t i) { return !dead->second.count(i); });
  }
  for (learner::FeatureListDelta& l : merged_.feature_lists) {
    auto dead = dead_lists_.find(l.table);
    if (dead == dead_lists_.end() || dead->second.empty()) continue;
    learner::KeepLists(&l, [&](size_t i) { return !dead->second.count(i); });
  }
  for (auto& [table, ids] : deleted_)
    if (!ids.empty()) merged_.deleted.push_back({table, std::vector<std::string>(ids.begin(), ids.end())});
  merged_.deleted_purchases.assign(deleted_purchases_.begin(), deleted_purchases_.end());
  deleted_.clear();
  deleted_purchases_.clear();
  dead_rows_.clear();
  dead_lists_.clear();
  *out = std::move(merged_);
  *full = full_;
  merged_ = learner::ModelSnapshot();
  rows_.clear();
  lists_.clear();
  full_ = false;
  empty_ = true;
}

}  // namespace recstream::store
