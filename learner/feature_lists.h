// FeatureLists: for each user (or item) row, the side-feature rows it was
// last seen with, so that scoring adds the same feature vectors that training
// did. Private to learner/.
//
// Thread safety: Get, Set and Matches may run on any thread concurrently
// (sharded reader/writer locks). ForEachDirty must not run concurrently with
// Set.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

namespace recstream::learner {

class FeatureLists {
 public:
  // Appends the feature rows of `row` to *out (nothing when it has none).
  void Get(uint32_t row, std::vector<uint32_t>* out) const {
    const Shard& s = shard(row);
    std::shared_lock lock(s.mu);
    auto it = s.lists.find(row);
    if (it != s.lists.end()) out->insert(out->end(), it->second.begin(), it->second.end());
  }

  // Replaces the list of `row` by [begin, end) when it differs; marks the row
  // dirty then. Returns true when the list changed.
  bool Set(uint32_t row, const uint32_t* begin, const uint32_t* end) {
    Shard& s = shard(row);
    {
      std::shared_lock lock(s.mu);
      auto it = s.lists.find(row);
      if (it != s.lists.end() && std::equal(begin, end, it->second.begin(), it->second.end()))
        return false;
    }
    std::unique_lock lock(s.mu);
    std::vector<uint32_t>& list = s.lists[row];
    if (std::equal(begin, end, list.begin(), list.end())) return false;
    list.assign(begin, end);
    s.dirty.push_back(row);
    return true;
  }

  // Calls fn(row, list) for each row whose list changed since the previous
  // call (every row with a list when `all`) and clears the marks.
  template <typename Fn>
  void ForEachDirty(bool all, Fn&& fn) {
    for (Shard& s : shards_) {
      std::unique_lock lock(s.mu);
      if (all) {
        for (const auto& [row, list] : s.lists) fn(row, list);
      } else {
        std::sort(s.dirty.begin(), s.dirty.end());
        s.dirty.erase(std::unique(s.dirty.begin(), s.dirty.end()), s.dirty.end());
        for (uint32_t row : s.dirty) fn(row, s.lists[row]);
      }
      s.dirty.clear();
    }
  }

 private:
  struct Shard {
    mutable std::shared_mutex mu;
    std::unordered_map<uint32_t, std::vector<uint32_t>> lists;  // guarded by mu
    std::vector<uint32_t> dirty;                                // guarded by mu
  };
  static constexpr int kShards = 64;
  Shard& shard(uint32_t row) { return shards_[row % kShards]; }
  const Shard& shard(uint32_t row) const { return shards_[row % kShards]; }
  std::array<Shard, kShards> shards_;
};

}  // namespace recstream::learner
