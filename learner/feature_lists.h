// FeatureLists: for each user (or item) row, the side-feature rows it was
// last seen with, so that scoring adds the same feature vectors that training
// did. Private to learner/.
//
// Thread safety: Get and Set may run on any thread concurrently.
// Get, and Set when the list is unchanged, take no lock and write nothing
// shared; Set of a one-feature list over a row with none or one feature is a
// single compare-and-swap; other changes take a mutex. A Get (or an
// unchanged-test in Set) concurrent with a change of the same row's list of
// two or more features may see a mix of the old and new lists (every element
// a valid feature row): a benign race like the Hogwild updates of the rows
// themselves. ForEachDirty must not run concurrently with Set.
//
// Memory: 5 bytes per row (a 32-bit entry and a dirty byte; most rows have
// no feature or one, held in the entry itself) plus, for rows with two or
// more features, a slot of 2 + n 32-bit words in a pool. A row keeps its slot
// once it has one and reuses it for any later list that fits, so changing
// lists does not leak.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

namespace recstream::learner {

class FeatureLists {
 public:
  FeatureLists();
  ~FeatureLists();
  FeatureLists(const FeatureLists&) = delete;
  FeatureLists& operator=(const FeatureLists&) = delete;

  // Appends the feature rows of `row` to *out (nothing when it has none).
  void Get(uint32_t row, std::vector<uint32_t>* out) const {
    const uint32_t e = entry(row);
    if (e == 0) return;
    if (!(e & kPooled)) {
      out->push_back(e - 1);
      return;
    }
    const std::atomic<uint32_t>* slot = PoolSlot(e);
    const uint32_t n = slot[1].load(std::memory_order_acquire);
    for (uint32_t i = 0; i < n; ++i) out->push_back(slot[2 + i].load(std::memory_order_relaxed));
  }

  // A hint that the list of `row` is read or set soon: starts loading its
  // entry into the cache. Changes nothing.
  void Prefetch(uint32_t row) const {
    if (const Chunk* c = chunk(row)) __builtin_prefetch(&c->entries[row & kChunkMask]);
  }

  // Replaces the list of `row` by [begin, end) when it differs; marks the row
  // dirty then. Returns true when the list changed. An empty list and no list
  // are the same.
  bool Set(uint32_t row, const uint32_t* begin, const uint32_t* end) {
    const size_t n = size_t(end - begin);
    if (Chunk* c = chunk(row)) {
      std::atomic<uint32_t>& e = c->entries[row & kChunkMask];
      uint32_t old = e.load(std::memory_order_acquire);
      if (Equal(old, begin, n)) return false;
      if (n == 1 && !(old & kPooled) && *begin < kPooled - 1 &&
          e.compare_exchange_strong(old, *begin + 1, std::memory_order_release,
                                    std::memory_order_relaxed)) {
        MarkDirty(c, row);
        return true;
      }
    }
    return SetSlow(row, begin, n);
  }

  // Empties the list of `row` without marking it changed (its owner was
  // removed, and so is the stored list); a pooled slot stays with the row
  // for its next owner.
  void Clear(uint32_t row) {
    Set(row, nullptr, nullptr);
    if (Chunk* c = chunk(row))
      std::atomic_ref<uint8_t>(c->dirty[row & kChunkMask]).store(0, std::memory_order_relaxed);
  }

  // True when the list of `row` changed since ForEachDirty last saw it.
  bool IsDirty(uint32_t row) const {
    const Chunk* c = chunk(row);
    return c && std::atomic_ref<uint8_t>(const_cast<uint8_t&>(c->dirty[row & kChunkMask]))
                        .load(std::memory_order_relaxed) != 0;
  }
  // Clears the change mark of `row` (its list is stored as it is).
  void MarkClean(uint32_t row) {
    if (Chunk* c = chunk(row))
      std::atomic_ref<uint8_t>(c->dirty[row & kChunkMask]).store(0, std::memory_order_relaxed);
  }

  // Calls fn(row, list) for each row whose list changed since the previous
  // call (every row with a non-empty list when `all`), in row order, and
  // clears the marks. `list` is a const std::vector<uint32_t>&.
  template <typename Fn>
  void ForEachDirty(bool all, Fn&& fn) {
    std::vector<uint32_t> list;
    ForEachDirtyRow(all, [&](uint32_t row) {
      list.clear();
      Get(row, &list);
      if (all && list.empty()) return;
      fn(row, static_cast<const std::vector<uint32_t>&>(list));
    });
  }
  // ForEachDirty without reading the lists: fn(row) only, for listing the
  // rows quickly (a snapshot's pause) and reading their lists later with Get.
  // With `all`, rows that never had a list are skipped.
  template <typename Fn>
  void ForEachDirtyRow(bool all, Fn&& fn) {
    const uint32_t chunks = chunks_used_.load(std::memory_order_acquire);
    for (uint32_t ci = 0; ci < chunks; ++ci) {
      Chunk* c = chunks_[ci].load(std::memory_order_acquire);
      if (!c) continue;
      const uint32_t base = ci << kChunkBits;
      for (uint32_t i = 0; i < kChunkRows; ++i) {
        if (!all && (i & 7) == 0) {
          uint64_t marks;  // eight at a time: most rows are clean
          std::memcpy(&marks, c->dirty + i, 8);
          if (marks == 0) {
            i += 7;
            continue;
          }
        }
        if (!all && !c->dirty[i]) continue;
        c->dirty[i] = 0;
        if (all && c->entries[i].load(std::memory_order_relaxed) == 0) continue;
        fn(base + i);
      }
    }
  }

 private:
  static constexpr int kChunkBits = 16;
  static constexpr uint32_t kChunkRows = 1u << kChunkBits;
  static constexpr uint32_t kChunkMask = kChunkRows - 1;
  static constexpr uint32_t kMaxChunks = 1u << (30 - kChunkBits);  // rows < 2^30
  // An entry is 0 (no list), feature row + 1 (one feature), or kPooled | the
  // index of a pool slot: [capacity, length, features...].
  static constexpr uint32_t kPooled = 1u << 31;
  static constexpr int kBlockBits = 16;  // pool blocks of 2^16 words
  static constexpr uint32_t kMaxBlocks = 1u << (31 - kBlockBits);

  struct Chunk {
    std::atomic<uint32_t> entries[kChunkRows] = {};
    uint8_t dirty[kChunkRows] = {};  // written through atomic_ref
  };

  Chunk* chunk(uint32_t row) const {
    return chunks_[row >> kChunkBits].load(std::memory_order_acquire);
  }
  uint32_t entry(uint32_t row) const {
    const Chunk* c = chunk(row);
    return c ? c->entries[row & kChunkMask].load(std::memory_order_acquire) : 0;
  }
  const std::atomic<uint32_t>* PoolSlot(uint32_t e) const {
    const uint32_t index = e & ~kPooled;
    return blocks_[index >> kBlockBits].load(std::memory_order_acquire) +
           (index & ((1u << kBlockBits) - 1));
  }
  bool Equal(uint32_t e, const uint32_t* begin, size_t n) const {
    if (e == 0) return n == 0;
    if (!(e & kPooled)) return n == 1 && *begin == e - 1;
    const std::atomic<uint32_t>* slot = PoolSlot(e);
    if (slot[1].load(std::memory_order_acquire) != n) return false;
    for (size_t i = 0; i < n; ++i)
      if (slot[2 + i].load(std::memory_order_relaxed) != begin[i]) return false;
    return true;
  }
  static void MarkDirty(Chunk* c, uint32_t row) {
    std::atomic_ref<uint8_t>(c->dirty[row & kChunkMask]).store(1, std::memory_order_relaxed);
  }
  bool SetSlow(uint32_t row, const uint32_t* begin, size_t n);
  Chunk* EnsureChunk(uint32_t index);  // guarded by mu_
  // A new pool slot for `capacity` features; guarded by mu_.
  uint32_t NewSlot(size_t capacity);

  std::mutex mu_;  // guards changes other than one-feature swaps, and the pool's growth
  std::unique_ptr<std::atomic<Chunk*>[]> chunks_;
  std::atomic<uint32_t> chunks_used_{0};  // 1 + the highest chunk index created
  std::unique_ptr<std::atomic<std::atomic<uint32_t>*>[]> blocks_;
  std::vector<std::unique_ptr<std::atomic<uint32_t>[]>> block_storage_;  // guarded by mu_
  uint32_t pool_next_ = 0;                                               // guarded by mu_
};

}  // namespace recstream::learner
