#include "learner/history.h"

#include <algorithm>
#include <atomic>

namespace recstream::learner {

Histories::Histories(int capacity)
    : capacity_(std::max(0, capacity)),
      chunks_(capacity_ > 0 ? new std::atomic<Chunk*>[kMaxChunks]() : nullptr) {}

Histories::~Histories() {
  if (!chunks_) return;
  for (uint32_t i = 0; i < kMaxChunks; ++i) delete chunks_[i].load(std::memory_order_relaxed);
}

Histories::Chunk* Histories::EnsureChunk(uint32_t index) {
  Chunk* c = chunks_[index].load(std::memory_order_acquire);
  if (c) return c;
  // Two threads may create a chunk at once (Set of users read back from
  // the store beside the trainer's Push): the first one in stays.
  auto fresh = std::make_unique<Chunk>(size_t(kChunkRows) * (1 + capacity_));
  if (!chunks_[index].compare_exchange_strong(c, fresh.get(), std::memory_order_acq_rel))
    return c;
  c = fresh.release();
  uint32_t used = chunks_used_.load(std::memory_order_relaxed);
  while (index >= used &&
         !chunks_used_.compare_exchange_weak(used, index + 1, std::memory_order_acq_rel)) {
  }
  return c;
}

void Histories::Push(uint32_t user, uint32_t item) {
  if (capacity_ == 0 || (user >> kChunkBits) >= kMaxChunks) return;
  Chunk* c = EnsureChunk(user >> kChunkBits);
  const uint32_t i = user & (kChunkRows - 1);
  std::atomic<uint32_t>* ring = Ring(c, i);
  const uint32_t header = ring[0].load(std::memory_order_relaxed);
  const uint32_t size = header >> 16, head = header & 0xffff;
  const uint32_t cap = uint32_t(capacity_);
  if (size > 0 && ring[1 + (head + cap - 1) % cap].load(std::memory_order_relaxed) == item) return;
  ring[1 + head].store(item, std::memory_order_relaxed);
  ring[0].store(std::min(size + 1, cap) << 16 | (head + 1) % cap, std::memory_order_release);
  c->dirty[i] = 1;
}

void Histories::Get(uint32_t user, std::vector<uint32_t>* out) const {
  if (capacity_ == 0 || (user >> kChunkBits) >= kMaxChunks) return;
  Chunk* c = chunks_[user >> kChunkBits].load(std::memory_order_acquire);
  if (!c) return;
  const std::atomic<uint32_t>* ring = Ring(c, user & (kChunkRows - 1));
  const uint32_t header = ring[0].load(std::memory_order_acquire);
  const uint32_t cap = uint32_t(capacity_);
  const uint32_t size = std::min(header >> 16, cap), head = (header & 0xffff) % cap;
  for (uint32_t k = 0; k < size; ++k)
    out->push_back(ring[1 + (head + cap - size + k) % cap].load(std::memory_order_relaxed));
}

void Histories::Clear(uint32_t user) {
  if (capacity_ == 0 || (user >> kChunkBits) >= kMaxChunks) return;
  Chunk* c = chunks_[user >> kChunkBits].load(std::memory_order_acquire);
  if (!c) return;
  const uint32_t i = user & (kChunkRows - 1);
  Ring(c, i)[0].store(0, std::memory_order_release);
  c->dirty[i] = 0;
}

bool Histories::IsDirty(uint32_t user) const {
  if (capacity_ == 0 || (user >> kChunkBits) >= kMaxChunks) return false;
  Chunk* c = chunks_[user >> kChunkBits].load(std::memory_order_acquire);
  return c && std::atomic_ref<uint8_t>(c->dirty[user & (kChunkRows - 1)])
                      .load(std::memory_order_relaxed) != 0;
}

void Histories::MarkClean(uint32_t user) {
  if (capacity_ == 0 || (user >> kChunkBits) >= kMaxChunks) return;
  Chunk* c = chunks_[user >> kChunkBits].load(std::memory_order_acquire);
  if (c) std::atomic_ref<uint8_t>(c->dirty[user & (kChunkRows - 1)]).store(0, std::memory_order_relaxed);
}

void Histories::Set(uint32_t user, const uint32_t* begin, const uint32_t* end) {
  if (capacity_ == 0 || (user >> kChunkBits) >= kMaxChunks) return;
  const uint32_t cap = uint32_t(capacity_);
  if (size_t(end - begin) > cap) begin = end - cap;
  Chunk* c = EnsureChunk(user >> kChunkBits);
  const uint32_t i = user & (kChunkRows - 1);
  std::atomic<uint32_t>* ring = Ring(c, i);
  const uint32_t size = uint32_t(end - begin);
  for (uint32_t k = 0; k < size; ++k) ring[1 + k].store(begin[k], std::memory_order_relaxed);
  ring[0].store(size << 16 | size % cap, std::memory_order_release);
  c->dirty[i] = 1;
}

}  // namespace recstream::learner
