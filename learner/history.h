// Histories: each user's latest items (LearnerOptions::history of them, as
// rows of the item table), oldest first. The user's vector in every task
// adds the mean of these items' vectors (item row plus its feature rows, as
// the item is gathered anywhere), so a user's recent items and categories
// lift similar items. Private to learner/.
//
// Ownership and order. The trainer pushes after each Train call, one event
// after another in the call's order, from one thread (Trainer::Train's last
// step); learning inside a call reads the histories as they were when the
// call began, like the dense layers of a parallel chunk. So a history is
// always its user's positive events in event order, whatever the threads.
//
// Thread safety. Get may run on any thread concurrently with Push and Set
// (a reader racing a push may see a mix of the old and new ring, every
// element a valid item row: a benign race like the rows' Hogwild updates).
// Push, Set and ForEachDirtyRow are called by one thread at a time, except
// that Set of a user may run beside Push and Set of other users (a memory
// limit reads users back on request threads while the trainer pushes).
//
// Memory: (1 + capacity) 32-bit words and a dirty byte per user, in chunks
// of 4,096 users allocated when one of them first has a history.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace recstream::learner {

class Histories {
 public:
  // capacity 0: every call does nothing, Get returns nothing.
  explicit Histories(int capacity);
  ~Histories();
  Histories(const Histories&) = delete;
  Histories& operator=(const Histories&) = delete;

  int capacity() const { return capacity_; }

  // Appends `item` to the history of `user` (the oldest item drops out when
  // full), unless it is the user's latest item already (a repeat view or
  // the purchase after a click adds nothing). Marks the user dirty when it
  // changed.
  void Push(uint32_t user, uint32_t item);
  // Appends the items of `user`, oldest first, to *out.
  void Get(uint32_t user, std::vector<uint32_t>* out) const;
  // Replaces the history of `user` by [begin, end) (its last `capacity`
  // items when longer), oldest first; marks the user dirty.
  void Set(uint32_t user, const uint32_t* begin, const uint32_t* end);
  // Empties the history of `user` without marking it changed (the user was
  // removed, and so is the stored history).
  void Clear(uint32_t user);
  // True when the history of `user` changed since ForEachDirtyRow last saw
  // it; MarkClean clears that (it is stored as it is).
  bool IsDirty(uint32_t user) const;
  void MarkClean(uint32_t user);
  // Calls fn(user) for each user whose history changed since the previous
  // call (every user with a history when `all`), in row order, and clears
  // the marks.
  template <typename Fn>
  void ForEachDirtyRow(bool all, Fn&& fn) {
    const uint32_t chunks = chunks_used_.load(std::memory_order_acquire);
    for (uint32_t ci = 0; ci < chunks; ++ci) {
      Chunk* c = chunks_[ci].load(std::memory_order_acquire);
      if (!c) continue;
      for (uint32_t i = 0; i < kChunkRows; ++i) {
        const bool dirty = c->dirty[i] != 0;
        c->dirty[i] = 0;
        if (all ? Header(c, i) != 0 : dirty) fn((ci << kChunkBits) + i);
      }
    }
  }

 private:
  static constexpr int kChunkBits = 12;
  static constexpr uint32_t kChunkRows = 1u << kChunkBits;
  static constexpr uint32_t kMaxChunks = 1u << (30 - kChunkBits);  // rows < 2^30

  // Per user: a header word (size << 16 | head: the slot the next item
  // goes to), then `capacity` slots.
  struct Chunk {
    explicit Chunk(size_t words) : words(new std::atomic<uint32_t>[words]()) {}
    std::unique_ptr<std::atomic<uint32_t>[]> words;
    uint8_t dirty[kChunkRows] = {};
  };
  std::atomic<uint32_t>* Ring(Chunk* c, uint32_t i) const {
    return c->words.get() + size_t(i) * (1 + capacity_);
  }
  uint32_t Header(Chunk* c, uint32_t i) const {
    return Ring(c, i)[0].load(std::memory_order_acquire);
  }
  Chunk* EnsureChunk(uint32_t index);

  const int capacity_;
  std::unique_ptr<std::atomic<Chunk*>[]> chunks_;
  std::atomic<uint32_t> chunks_used_{0};
};

}  // namespace recstream::learner
