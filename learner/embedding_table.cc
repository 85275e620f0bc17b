#include "learner/embedding_table.h"

#include <cstring>

// The id index is 64 shards, each an open-addressing table of 64-bit slots
// with linear probing. A slot holds (tag << 32) | (row + 1), 0 when empty;
// the tag is the high half of the id's 64-bit hash and its low bits are also
// the slot's home position, so growing never needs the ids again.
//
// Readers take no lock: they load the shard's current slot array (acquire),
// probe it, and compare the id of a candidate row, which sits in the row's
// header (so a hit touches the cache line that the caller reads next anyway).
// Writers insert under the shard's mutex and publish a slot with a release
// store after the row's header and values are written, so a reader that sees
// the slot sees a complete row.
//
// Growth (at 3/4 full) builds a doubled array under the mutex and publishes
// it atomically. Readers still probing the old array finish there and find
// every id inserted before the growth; the old arrays are kept until the
// table dies, so no reader ever touches freed memory. They cost at most as
// much again as the live array (a halving series), i.e. 8-16 bytes per row,
// in exchange for needing no epochs, hazard pointers or reader registration.

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

// The index's hash: wyhash's structure (a 64x64->128 multiply folding), a few
// cycles for short ids where FNV-1a costs one multiply per byte.
constexpr uint64_t kK0 = 0xa0761d6478bd642fULL, kK1 = 0xe7037ed1a0b428dbULL;
inline uint64_t Mum(uint64_t a, uint64_t b) {
  unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return uint64_t(r) ^ uint64_t(r >> 64);
}
inline uint64_t Read64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint64_t Read32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t IndexHash(std::string_view s) {
  const char* p = s.data();
  const size_t n = s.size();
  uint64_t seed = kK0, a = 0, b = 0;
  if (n <= 16) {
    if (n >= 4) {
      const size_t mid = (n >> 3) << 2;
      a = (Read32(p) << 32) | Read32(p + mid);
      b = (Read32(p + n - 4) << 32) | Read32(p + n - 4 - mid);
    } else if (n > 0) {
      a = (uint64_t(uint8_t(p[0])) << 16) | (uint64_t(uint8_t(p[n >> 1])) << 8) | uint8_t(p[n - 1]);
    }
  } else {
    size_t i = n;
    for (; i > 16; i -= 16, p += 16) seed = Mum(Read64(p) ^ kK1, Read64(p + 8) ^ seed);
    a = Read64(p + i - 16);
    b = Read64(p + i - 8);
  }
  return Mum(kK1 ^ n, Mum(a ^ kK1, b ^ seed));
}

constexpr int kShardBits = 6;
constexpr uint32_t kShards = 1u << kShardBits;
constexpr uint64_t kInitialSlots = 16;

// Row header: ids of up to kInlineKey bytes are stored in place, NUL-terminated,
// with their length in the last byte; longer ids are stored in the arena and
// the header holds a pointer to [varint length][bytes][NUL] and kLongKey.
constexpr size_t kHeaderBytes = 16;
constexpr size_t kInlineKey = kHeaderBytes - 2;
constexpr uint8_t kLongKey = 0xff;

}  // namespace

struct EmbeddingTable::IndexShard {
  // slots[0] is the probe mask (capacity - 1), slots[1 + i] the slots.
  std::atomic<std::atomic<uint64_t>*> slots{nullptr};
  alignas(64) std::mutex mu;  // guards inserts, growth and the members below
  uint64_t used = 0;
  // Every slot array this shard has had; the last is the current one.
  std::vector<std::unique_ptr<std::atomic<uint64_t>[]>> arrays;

  std::atomic<uint64_t>* NewArray(uint64_t capacity) {
    auto* a = new std::atomic<uint64_t>[capacity + 1]();
    a[0].store(capacity - 1, std::memory_order_relaxed);
    arrays.emplace_back(a);
    return a;
  }
};

// Append-only storage of ids longer than kInlineKey; never moves an entry.
struct EmbeddingTable::KeyArena {
  static constexpr size_t kBlock = 64 << 10;
  std::vector<std::unique_ptr<char[]>> blocks;
  char* pos = nullptr;
  size_t left = 0;

  const char* Add(std::string_view key) {
    char prefix[10];
    size_t np = 0;
    for (uint64_t n = key.size();; n >>= 7) {
      prefix[np++] = char((n & 0x7f) | (n >= 0x80 ? 0x80 : 0));
      if (n < 0x80) break;
    }
    const size_t need = np + key.size() + 1;
    char* out;
    if (need > kBlock / 4) {
      out = blocks.emplace_back(new char[need]).get();
    } else {
      if (need > left) {
        pos = blocks.emplace_back(new char[kBlock]).get();
        left = kBlock;
      }
      out = pos;
      pos += need;
      left -= need;
    }
    std::memcpy(out, prefix, np);
    std::memcpy(out + np, key.data(), key.size());
    out[np + key.size()] = '\0';
    return out;
  }

  static std::string_view Get(const char* p) {
    uint64_t n = 0;
    for (int shift = 0;; shift += 7) {
      const uint8_t c = uint8_t(*p++);
      n |= uint64_t(c & 0x7f) << shift;
      if (!(c & 0x80)) break;
    }
    return std::string_view(p, n);
  }
};

EmbeddingTable::EmbeddingTable(std::string name, int width, int random_prefix, float init_scale,
                               float accum_init, uint64_t seed)
    : name_(std::move(name)),
      width_(width),
      stride_(kHeaderFloats + 2 * size_t(width)),
      random_prefix_(random_prefix),
      init_scale_(init_scale),
      accum_init_(accum_init),
      seed_(seed),
      shards_(new IndexShard[kShards]),
      chunks_(new std::atomic<Chunk*>[kMaxChunks]()),
      keys_(new KeyArena) {
  static_assert(kHeaderFloats * sizeof(float) == kHeaderBytes);
  for (uint32_t i = 0; i < kShards; ++i)
    shards_[i].slots.store(shards_[i].NewArray(kInitialSlots), std::memory_order_release);
}

EmbeddingTable::~EmbeddingTable() {
  for (uint32_t i = 0; i < kMaxChunks; ++i) delete chunks_[i].load(std::memory_order_relaxed);
}

EmbeddingTable::KeyRef EmbeddingTable::key(uint32_t row) const {
  const char* h = header(row);
  const uint8_t len = uint8_t(h[kHeaderBytes - 1]);
  if (len != kLongKey) return KeyRef(std::string_view(h, len));
  const char* p;
  std::memcpy(&p, h, sizeof p);
  return KeyRef(KeyArena::Get(p));
}

uint32_t EmbeddingTable::NextDirty(const uint8_t* dirty, uint32_t i, uint32_t end) {
  // Eight marks at a time: after a checkpoint most rows are clean. Plain
  // reads are fine here: no writer runs concurrently (see ForEachDirty).
  while (i < end && (i & 7)) {
    if (dirty[i]) return i;
    ++i;
  }
  while (i + 8 <= end) {
    uint64_t w;
    std::memcpy(&w, dirty + i, 8);
    if (w) return i + uint32_t(__builtin_ctzll(w) >> 3);
    i += 8;
  }
  while (i < end && !dirty[i]) ++i;
  return i;
}

uint32_t EmbeddingTable::Probe(const IndexShard& shard, uint64_t hash, std::string_view id) const {
  const std::atomic<uint64_t>* t = shard.slots.load(std::memory_order_acquire);
  const uint64_t mask = t[0].load(std::memory_order_relaxed);
  const uint64_t tag = hash >> 32;
  for (uint64_t i = tag & mask;; i = (i + 1) & mask) {
    const uint64_t v = t[1 + i].load(std::memory_order_acquire);
    if (v == 0) return kNoRow;
    if ((v >> 32) == tag) {
      const uint32_t row = uint32_t(v) - 1;
      if (key(row) == id) return row;
    }
  }
}

uint32_t EmbeddingTable::Find(std::string_view key) const {
  const uint64_t h = IndexHash(key);
  return Probe(shards_[h & (kShards - 1)], h, key);
}

uint32_t EmbeddingTable::GetOrCreate(std::string_view key, bool* created) {
  if (created) *created = false;
  const uint64_t h = IndexHash(key);
  IndexShard& s = shards_[h & (kShards - 1)];
  uint32_t row = Probe(s, h, key);
  if (row != kNoRow) return row;

  std::lock_guard lock(s.mu);
  row = Probe(s, h, key);  // the array is stable while we hold the mutex
  if (row != kNoRow) return row;
  row = NewRow(key);

  std::atomic<uint64_t>* t = s.slots.load(std::memory_order_relaxed);
  uint64_t mask = t[0].load(std::memory_order_relaxed);
  if ((s.used + 1) * 4 > (mask + 1) * 3) {
    std::atomic<uint64_t>* bigger = s.NewArray(2 * (mask + 1));
    const uint64_t new_mask = 2 * mask + 1;
    for (uint64_t i = 0; i <= mask; ++i) {
      const uint64_t v = t[1 + i].load(std::memory_order_relaxed);
      if (v == 0) continue;
      uint64_t j = (v >> 32) & new_mask;
      while (bigger[1 + j].load(std::memory_order_relaxed) != 0) j = (j + 1) & new_mask;
      bigger[1 + j].store(v, std::memory_order_relaxed);
    }
    // Publishes the copied slots; they point to rows published earlier.
    s.slots.store(bigger, std::memory_order_release);
    t = bigger;
    mask = new_mask;
  }
  const uint64_t tag = h >> 32;
  uint64_t j = tag & mask;
  while (t[1 + j].load(std::memory_order_relaxed) != 0) j = (j + 1) & mask;
  t[1 + j].store((tag << 32) | (uint64_t(row) + 1), std::memory_order_release);
  ++s.used;
  if (created) *created = true;
  return row;
}

uint32_t EmbeddingTable::NewRow(std::string_view key) {
  // Rows become ready in allocation order, so size() never exposes a row
  // whose key or values are still being written.
  std::lock_guard alloc(alloc_mu_);
  const uint32_t row = next_row_++;
  Chunk* c = EnsureChunk(row >> kChunkBits);
  char* h = reinterpret_cast<char*>(c->data.get() + size_t(row & kChunkMask) * stride_);
  std::memset(h, 0, kHeaderBytes);
  if (key.size() <= kInlineKey) {
    std::memcpy(h, key.data(), key.size());
    h[kHeaderBytes - 1] = char(key.size());
  } else {
    const char* p = keys_->Add(key);
    std::memcpy(h, &p, sizeof p);
    h[kHeaderBytes - 1] = char(kLongKey);
  }
  InitRow(row, key);
  c->dirty[row & kChunkMask] = 1;
  ready_rows_.store(row + 1, std::memory_order_release);
  return row;
}

EmbeddingTable::Chunk* EmbeddingTable::EnsureChunk(uint32_t index) {
  Chunk* c = chunks_[index].load(std::memory_order_acquire);
  if (c) return c;
  c = new Chunk;
  // Left uninitialised: a page is touched when its first row is created.
  c->data.reset(new float[size_t(kChunkRows) * stride_]);
  c->dirty.reset(new uint8_t[kChunkRows]());
  chunks_[index].store(c, std::memory_order_release);
  return c;
}

void EmbeddingTable::InitRow(uint32_t row, std::string_view key) {
  float* r = Row(row);
  uint64_t state = StableHash(key) ^ seed_;
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
