#include "learner/feature_lists.h"

#include <algorithm>
#include <new>

namespace recstream::learner {

FeatureLists::FeatureLists()
    : chunks_(new std::atomic<Chunk*>[kMaxChunks]()),
      blocks_(new std::atomic<std::atomic<uint32_t>*>[kMaxBlocks]()) {}

FeatureLists::~FeatureLists() {
  for (uint32_t i = 0; i < kMaxChunks; ++i) delete chunks_[i].load(std::memory_order_relaxed);
}

FeatureLists::Chunk* FeatureLists::EnsureChunk(uint32_t index) {
  Chunk* c = chunks_[index].load(std::memory_order_acquire);
  if (c) return c;
  c = new Chunk;
  chunks_[index].store(c, std::memory_order_release);
  if (index >= chunks_used_.load(std::memory_order_relaxed))
    chunks_used_.store(index + 1, std::memory_order_release);
  return c;
}

uint32_t FeatureLists::NewSlot(size_t capacity) {
  constexpr uint32_t kBlockWords = 1u << kBlockBits;
  const size_t words = 2 + capacity;
  uint32_t offset = pool_next_ & (kBlockWords - 1);
  uint32_t block = pool_next_ >> kBlockBits;
  if (offset != 0 && (words > kBlockWords || offset + words > kBlockWords)) {
    ++block;  // the rest of this block stays unused
    offset = 0;
  }
  if (block >= kMaxBlocks) throw std::bad_alloc();  // 8 GiB of lists
  if (offset == 0) {
    // A fresh block; a list longer than a block gets one of its own size.
    const size_t size = std::max<size_t>(words, kBlockWords);
    blocks_[block].store(block_storage_.emplace_back(new std::atomic<uint32_t>[size]()).get(),
                         std::memory_order_release);
  }
  const uint32_t index = (block << kBlockBits) | offset;
  pool_next_ = words >= kBlockWords ? (block + 1) << kBlockBits : index + uint32_t(words);
  std::atomic<uint32_t>* slot = const_cast<std::atomic<uint32_t>*>(PoolSlot(kPooled | index));
  slot[0].store(uint32_t(capacity), std::memory_order_relaxed);
  return index;
}

bool FeatureLists::SetSlow(uint32_t row, const uint32_t* begin, size_t n) {
  std::lock_guard lock(mu_);
  Chunk* c = EnsureChunk(row >> kChunkBits);
  std::atomic<uint32_t>& e = c->entries[row & kChunkMask];
  auto fill = [&](uint32_t entry) {
    // Elements first, then the length: a reader that sees the new length
    // sees the new elements.
    auto* slot = const_cast<std::atomic<uint32_t>*>(PoolSlot(entry));
    for (size_t i = 0; i < n; ++i) slot[2 + i].store(begin[i], std::memory_order_relaxed);
    slot[1].store(uint32_t(n), std::memory_order_release);
  };
  uint32_t spare = 0;  // a slot allocated in an earlier round of the loop
  for (;;) {
    uint32_t old = e.load(std::memory_order_acquire);
    if (Equal(old, begin, n)) return false;
    if (old & kPooled) {
      // Pooled entries change only under mu_, so `old` is stable here.
      const uint32_t capacity = PoolSlot(old)[0].load(std::memory_order_relaxed);
      if (n <= capacity) {
        fill(old);
      } else {
        const uint32_t index = kPooled | NewSlot(std::max<size_t>(n, 2 * size_t(capacity)));
        fill(index);
        e.store(index, std::memory_order_release);
      }
      MarkDirty(c, row);
      return true;
    }
    // `old` is no list or one feature, which a lock-free Set may swap
    // concurrently: publish with a compare-and-swap, retry when it moved.
    uint32_t desired;
    if (n == 0) {
      desired = 0;
    } else if (n == 1 && *begin < kPooled - 1) {
      desired = *begin + 1;
    } else {
      if (spare == 0 || PoolSlot(spare)[0].load(std::memory_order_relaxed) < n)
        spare = kPooled | NewSlot(std::max<size_t>(n, 2));
      fill(spare);
      desired = spare;
    }
    if (e.compare_exchange_strong(old, desired, std::memory_order_release,
                                  std::memory_order_relaxed)) {
      MarkDirty(c, row);
      return true;
    }
  }
}

}  // namespace recstream::learner
