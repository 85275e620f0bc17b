#include "learner/embedding_table.h"

#include <cstring>

namespace recstream::learner {
namespace {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// FNV-1a: stable across runs and platforms, unlike std::hash, so that a row's
// initial values depend only on its id and the seed.
uint64_t StableHash(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

}  // namespace

EmbeddingTable::EmbeddingTable(std::string name, int width, int random_prefix, float init_scale,
                               float accum_init, uint64_t seed)
    : name_(std::move(name)),
      width_(width),
      random_prefix_(random_prefix),
      init_scale_(init_scale),
      accum_init_(accum_init),
      seed_(seed),
      shards_(new Shard[kShards]),
      chunks_(new std::atomic<Chunk*>[kMaxChunks]) {
  for (uint32_t i = 0; i < kMaxChunks; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
}

EmbeddingTable::~EmbeddingTable() {
  for (uint32_t i = 0; i < kMaxChunks; ++i) delete chunks_[i].load(std::memory_order_relaxed);
}

EmbeddingTable::Shard& EmbeddingTable::shard(std::string_view key) const {
  return shards_[StableHash(key) % kShards];
}

uint32_t EmbeddingTable::Find(std::string_view key) const {
  Shard& s = shard(key);
  std::shared_lock lock(s.mu);
  auto it = s.index.find(key);
  return it == s.index.end() ? kNoRow : it->second;
}

uint32_t EmbeddingTable::GetOrCreate(std::string_view key, bool* created) {
  if (created) *created = false;
  Shard& s = shard(key);
  {
    std::shared_lock lock(s.mu);
    auto it = s.index.find(key);
    if (it != s.index.end()) return it->second;
  }
  std::unique_lock lock(s.mu);
  auto it = s.index.find(key);
  if (it != s.index.end()) return it->second;
  uint32_t row;
  {
    // Rows become ready in allocation order, so size() never exposes a row
    // whose key or values are still being written.
    std::lock_guard alloc(alloc_mu_);
    row = next_row_++;
    Chunk* c = EnsureChunk(row >> kChunkBits);
    c->keys[row & kChunkMask] = std::string(key);
    InitRow(row);
    ready_rows_.store(row + 1, std::memory_order_release);
  }
  s.index.emplace(std::string(key), row);
  MarkDirty(row);
  if (created) *created = true;
  return row;
}

EmbeddingTable::Chunk* EmbeddingTable::EnsureChunk(uint32_t index) {
  Chunk* c = chunks_[index].load(std::memory_order_acquire);
  if (c) return c;
  c = new Chunk;
  c->data.reset(new float[size_t(kChunkRows) * 2 * width_]);
  c->keys.reset(new std::string[kChunkRows]);
  c->dirty.reset(new std::atomic<uint8_t>[kChunkRows]);
  for (uint32_t i = 0; i < kChunkRows; ++i) c->dirty[i].store(0, std::memory_order_relaxed);
  chunks_[index].store(c, std::memory_order_release);
  return c;
}

void EmbeddingTable::InitRow(uint32_t row) {
  float* r = Row(row);
  uint64_t state = StableHash(key(row)) ^ seed_;
  for (int i = 0; i < width_; ++i) {
    if (i < random_prefix_) {
      double u = double(SplitMix64(&state) >> 11) * (1.0 / 9007199254740992.0);
      r[i] = float((2.0 * u - 1.0) * init_scale_);
    } else {
      r[i] = 0.0f;
    }
    r[width_ + i] = accum_init_;
  }
}

}  // namespace recstream::learner
