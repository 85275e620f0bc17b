#include "store/snapshot_accumulator.h"

#include <algorithm>
#include <cstring>

namespace recstream::store {

void SnapshotAccumulator::Merge(const learner::ModelSnapshot& delta, bool full) {
  if (full || (!empty_ && delta.shape != merged_.shape)) {
    merged_ = learner::ModelSnapshot();
    rows_.clear();
    lists_.clear();
    full_ = full;
  }
  empty_ = false;
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
    for (size_t i = 0; i < t.keys.size(); ++i) {
      auto [it, inserted] = index.emplace(t.keys[i], m.keys.size());
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
    for (size_t i = 0; i < l.keys.size(); ++i) {
      auto [it, inserted] = index.emplace(l.keys[i], li->keys.size());
      if (inserted) {
        li->keys.push_back(l.keys[i]);
        li->features.push_back(l.features[i]);
      } else {
        li->features[it->second] = l.features[i];
      }
    }
  }
  merged_.new_purchases.insert(merged_.new_purchases.end(), delta.new_purchases.begin(),
                               delta.new_purchases.end());
}

void SnapshotAccumulator::Take(learner::ModelSnapshot* out, bool* full) {
  *out = std::move(merged_);
  *full = full_;
  merged_ = learner::ModelSnapshot();
  rows_.clear();
  lists_.clear();
  full_ = false;
  empty_ = true;
}

}  // namespace recstream::store
