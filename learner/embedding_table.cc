#include "learner/embedding_table.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <new>
#include <thread>
#include <unordered_map>

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
// every id inserted before the growth. The old array is never unmapped while
// the table lives, so no reader can fault on it, but a large one has its pages
// returned to the OS (madvise MADV_DONTNEED) right after the new one is
// published: a late reader then reads zeros, i.e. empty slots (or a zero
// mask), and every "empty" answer re-checks the shard's current array and
// probes again when it changed. That re-check is ordered after the new
// array's publication because the kernel must shoot down the old pages'
// TLB entries on every CPU (IPIs, locked instructions) before any reader can
// see a zero page: the same effect folly's asymmetric memory barrier gets
// from mprotect. So readers need no epochs, hazard pointers or registration,
// and a table's index costs its live arrays (8 bytes per slot at a load
// factor of 3/8 to 3/4) plus the replaced arrays under kMapBytes, kept as
// they are (at most 64 KiB per shard).

namespace recstream::learner {
namespace {

// Anonymous memory for big arrays read at random (rows, index slots),
// aligned to 2 MiB and advised as transparent huge pages (the usual kernel
// setting, "madvise", gives them only where asked): one TLB entry then
// covers 2 MiB instead of 4 KiB, and random row accesses miss the TLB far
// less. Zero-filled; pages are populated on first touch. Where huge pages
// are off, this is plain mmap.
constexpr size_t kHugePage = size_t{2} << 20;

size_t PageRound(size_t bytes) { return (bytes + 4095) & ~size_t{4095}; }

void* MapHuge(size_t bytes) {
  bytes = PageRound(bytes);
  const size_t len = bytes + kHugePage;
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  char* p = static_cast<char*>(m);
  char* a = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + kHugePage - 1) &
                                    ~uintptr_t{kHugePage - 1});
  if (a > p) ::munmap(p, size_t(a - p));
  if (p + len > a + bytes) ::munmap(a + bytes, size_t(p + len - (a + bytes)));
  ::madvise(a, bytes, MADV_HUGEPAGE);  // advice: failure changes nothing
  return a;
}

void UnmapHuge(void* p, size_t bytes) { ::munmap(p, PageRound(bytes)); }

// One step of a short spin-wait: the CPU's pause hint where there is one.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

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
// Slot arrays of at least this size are mapped on their own, so that their
// pages can be returned to the OS when they are replaced.
constexpr size_t kMapBytes = 64 << 10;

// Row header (8 bytes, little-endian): an id of up to 7 bytes is stored in
// bytes 0..6 with its length in byte 7; a longer id is stored in the arena
// and the header is the address of [varint length][bytes] with byte 7 = 0xff.
constexpr size_t kHeaderBytes = 8;
constexpr size_t kInlineKey = kHeaderBytes - 1;
constexpr uint64_t kLongKey = uint64_t{0xff} << 56;
// A removed id's slot: probes go on past it (rows are below 2^30, so no
// live slot has this value). Inserts reuse it; growth drops it.
constexpr uint64_t kTombstone = ~uint64_t{0};
static_assert(std::endian::native == std::endian::little);

// The header of a short id (an id of more than kInlineKey bytes gives
// kLongKey, which no short id's header equals).
inline uint64_t ShortHeader(std::string_view id) {
  if (id.size() > kInlineKey) return kLongKey;
  uint64_t h = uint64_t(id.size()) << 56;
  if (!id.empty()) std::memcpy(&h, id.data(), id.size());
  return h;
}
inline uint64_t LoadHeader(const char* p) {
  uint64_t h;
  std::memcpy(&h, p, 8);
  return h;
}

}  // namespace

struct EmbeddingTable::IndexShard {
  // slots[0] is the probe mask (capacity - 1), slots[1 + i] the slots; all
  // accessed through atomic_ref.
  std::atomic<uint64_t*> slots{nullptr};
  alignas(64) std::mutex mu;  // guards inserts, growth and the members below
  uint64_t used = 0;
  struct Array {
    uint64_t* slots;
    size_t bytes;
    bool mapped;
  };
  // Every slot array this shard has had; the last is the current one.
  std::vector<Array> arrays;

  ~IndexShard() {
    for (const Array& a : arrays) {
      if (a.mapped)
        UnmapHuge(a.slots, a.bytes);
      else
        delete[] a.slots;
    }
  }

  uint64_t* NewArray(uint64_t capacity) {
    // A table whose ids come and go (expiry, a memory limit) rebuilds its
    // arrays at the same capacity again and again, to drop removed ids'
    // slots. Arrays are never freed (a lock-free reader may still be
    // probing one), so an array of the same capacity from two rebuilds ago
    // or earlier is cleared and used again: a reader still in it stays in
    // bounds (same mask) and, seeing emptied or new slots, at worst misses
    // its id (Find's contract under removal; inserts probe again under the
    // mutex). Without this, every rebuild kept a new array and memory grew
    // with the number of ids removed.
    for (size_t i = 0; i + 2 < arrays.size(); ++i) {
      if (arrays[i].bytes != size_t(capacity + 1) * sizeof(uint64_t)) continue;
      Array a = arrays[i];
      arrays.erase(arrays.begin() + ptrdiff_t(i));
      for (uint64_t k = 1; k <= capacity; ++k)
        std::atomic_ref<uint64_t>(a.slots[k]).store(0, std::memory_order_relaxed);
      arrays.push_back(a);
      return a.slots;
    }
    Array a{nullptr, size_t(capacity + 1) * sizeof(uint64_t), false};
    arrays.reserve(arrays.size() + 1);
    if (a.bytes >= kMapBytes) {
      a.slots = static_cast<uint64_t*>(MapHuge(a.bytes));  // zero-filled
      a.mapped = true;
    } else {
      a.slots = new uint64_t[capacity + 1]();
    }
    a.slots[0] = capacity - 1;
    arrays.push_back(a);
    return a.slots;
  }

  // Returns the pages of the array before the current one to the OS.
  void ReleaseOld() {
    const Array& old = arrays[arrays.size() - 2];
    if (old.mapped) ::madvise(old.slots, old.bytes, MADV_DONTNEED);
  }
};

// Append-only storage of ids longer than kInlineKey; never moves an entry.
struct EmbeddingTable::KeyArena {
  static constexpr size_t kBlock = 64 << 10;
  std::vector<std::unique_ptr<char[]>> blocks;
  char* pos = nullptr;
  size_t left = 0;

  // Entries of removed ids, by length: a new id of the same length takes one
  // (ids of a kind usually share a length), so ids that come and go do not
  // grow the arena.
  std::unordered_map<size_t, std::vector<char*>> free_by_length;

  void Free(char* p) { free_by_length[Get(p).size()].push_back(p); }

  const char* Add(std::string_view key) {
    if (auto it = free_by_length.find(key.size());
        it != free_by_length.end() && !it->second.empty()) {
      char* p = it->second.back();
      it->second.pop_back();
      // Same length, same length prefix: only the bytes change.
      char* bytes = const_cast<char*>(Get(p).data());
      std::memcpy(bytes, key.data(), key.size());
      return p;
    }
    char prefix[10];
    size_t np = 0;
    for (uint64_t n = key.size();; n >>= 7) {
      prefix[np++] = char((n & 0x7f) | (n >= 0x80 ? 0x80 : 0));
      if (n < 0x80) break;
    }
    const size_t need = np + key.size();
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
                               float accum_init, uint64_t seed, bool line_aligned, RowState state)
    : name_(std::move(name)),
      width_(width),
      state_(state),
      row_floats_(size_t(width) * (1 + size_t(state.blocks))),
      line_aligned_(line_aligned),
      stride_(line_aligned ? (row_floats_ + 15) & ~size_t{15} : row_floats_),
      random_prefix_(random_prefix),
      init_scale_(init_scale),
      accum_init_(accum_init),
      seed_(seed),
      shards_(new IndexShard[kShards]),
      chunks_(new std::atomic<Chunk*>[kMaxChunks]()),
      keys_(new KeyArena) {
  for (uint32_t i = 0; i < kShards; ++i)
    shards_[i].slots.store(shards_[i].NewArray(kInitialSlots), std::memory_order_release);
}

EmbeddingTable::Chunk::~Chunk() {
  if (data) UnmapHuge(data, bytes);
  if (base) UnmapHuge(base, base_bytes);
}

EmbeddingTable::~EmbeddingTable() {
  for (uint32_t i = 0; i < kMaxChunks; ++i) delete chunks_[i].load(std::memory_order_relaxed);
}

EmbeddingTable::KeyRef EmbeddingTable::key(uint32_t row) const {
  const char* h = header(row);
  const uint64_t v = LoadHeader(h);
  if ((v & kLongKey) != kLongKey) return KeyRef(std::string_view(h, size_t(v >> 56)));
  return KeyRef(KeyArena::Get(reinterpret_cast<const char*>(v & ~kLongKey)));
}

bool EmbeddingTable::RowHasKey(uint32_t row, uint64_t short_header, std::string_view id) const {
  const uint64_t v = LoadHeader(header(row));
  if (short_header != kLongKey) return v == short_header;
  if ((v & kLongKey) != kLongKey) return false;
  return KeyArena::Get(reinterpret_cast<const char*>(v & ~kLongKey)) == id;
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

void EmbeddingTable::BeginExport(bool all, std::vector<uint32_t>* rows, FloatBuffer* dest) {
  // Runs while writers wait: one pass over the marks (eight at a time where
  // rows are clean), nothing copied.
  rows->clear();
  ForEachMarked(all, kDue, [&](uint32_t row) { rows->push_back(row); });
  // A buffer too small is set aside and freed by FinishExport (unmapping a
  // big one page by page would cost this pause milliseconds); the new one
  // is sized from empty, so nothing is copied into it and its pages are
  // first touched by the copy, not here.
  const size_t floats = rows->size() * row_floats_;
  if (dest->capacity() < floats) export_.retired.swap(*dest);
  dest->clear();
  dest->resize(floats);
  export_.rows = rows->data();
  export_.count = rows->size();
  export_.dest = dest->data();
  export_.copied.store(0, std::memory_order_relaxed);
}

bool EmbeddingTable::Claim(uint32_t row) {
  std::atomic_ref<uint8_t> d(chunk(row)->dirty[row & kChunkMask]);
  uint8_t due = kDue;
  return d.compare_exchange_strong(due, kCopying, std::memory_order_acquire,
                                   std::memory_order_relaxed);
}

void EmbeddingTable::CopyOut(size_t i, uint32_t row, uint8_t final_state) {
  const size_t w2 = row_floats_;
  std::memcpy(export_.dest + i * w2, Row(row), w2 * sizeof(float));
  std::atomic_ref<uint8_t>(chunk(row)->dirty[row & kChunkMask])
      .store(final_state, std::memory_order_release);
  export_.copied.fetch_add(1, std::memory_order_release);
}

void EmbeddingTable::CopyOutBeforeWrite(uint32_t row) {
  std::atomic_ref<uint8_t> d(chunk(row)->dirty[row & kChunkMask]);
  for (;;) {
    const uint8_t state = d.load(std::memory_order_acquire);
    if (state == kDue) {
      // Claimed first: FinishExport cannot return (and `rows` cannot go)
      // before this copy is counted. Rows are listed in order.
      if (!Claim(row)) continue;
      const uint32_t* at = std::lower_bound(export_.rows, export_.rows + export_.count, row);
      CopyOut(size_t(at - export_.rows), row, kDirty);
      return;
    }
    if (state == kCopying) {
      // FinishExport or another writer is copying it: a few hundred bytes.
      CpuRelax();
      continue;
    }
    if (state == kClean) d.store(kDirty, std::memory_order_relaxed);
    return;
  }
}

void EmbeddingTable::FinishExport() {
  for (size_t i = 0; i < export_.count; ++i) {
    if (i + 4 < export_.count) __builtin_prefetch(Row(export_.rows[i + 4]));
    const uint32_t row = export_.rows[i];
    if (Claim(row)) CopyOut(i, row, kClean);
  }
  // Rows claimed by writers may still be on their way.
  while (export_.copied.load(std::memory_order_acquire) < export_.count) std::this_thread::yield();
  export_.count = 0;
  FloatBuffer().swap(export_.retired);
}

uint32_t EmbeddingTable::Probe(const IndexShard& shard, uint64_t hash, std::string_view id) const {
  const uint64_t want = ShortHeader(id);
  const uint64_t tag = hash >> 32;
  uint64_t* t = shard.slots.load(std::memory_order_acquire);
  for (;;) {
    const uint64_t mask = std::atomic_ref<uint64_t>(t[0]).load(std::memory_order_relaxed);
    uint64_t i = tag & mask;
    // A zero mask means the array was released under us (see the top).
    for (uint64_t v; mask != 0; i = (i + 1) & mask) {
      v = std::atomic_ref<uint64_t>(t[1 + i]).load(std::memory_order_acquire);
      if (v == 0) break;
      if (v == kTombstone) continue;
      if ((v >> 32) == tag && RowHasKey(uint32_t(v) - 1, want, id)) return uint32_t(v) - 1;
    }
    uint64_t* now = shard.slots.load(std::memory_order_acquire);
    if (now == t) return kNoRow;
    t = now;
  }
}

uint32_t EmbeddingTable::Find(std::string_view key) const {
  const uint64_t h = IndexHash(key);
  return Probe(shards_[h & (kShards - 1)], h, key);
}

const uint64_t* EmbeddingTable::SlotsOf(std::string_view key, uint64_t* tag, uint64_t* mask) const {
  const uint64_t h = IndexHash(key);
  const uint64_t* t = shards_[h & (kShards - 1)].slots.load(std::memory_order_acquire);
  *mask = std::atomic_ref<const uint64_t>(t[0]).load(std::memory_order_relaxed);
  *tag = h >> 32;
  return t;
}

void EmbeddingTable::Prefetch(std::string_view key) const {
  uint64_t tag, mask;
  const uint64_t* t = SlotsOf(key, &tag, &mask);
  __builtin_prefetch(t + 1 + (tag & mask));
}

void EmbeddingTable::PrefetchRow(std::string_view key) const {
  uint64_t tag, mask;
  const uint64_t* t = SlotsOf(key, &tag, &mask);
  // The first slots of the probe sequence only (they share a cache line).
  uint64_t i = tag & mask;
  for (int n = 0; mask != 0 && n < 4; ++n, i = (i + 1) & mask) {
    const uint64_t v = std::atomic_ref<const uint64_t>(t[1 + i]).load(std::memory_order_acquire);
    if (v == 0) return;
    if (v != kTombstone && (v >> 32) == tag) {
      __builtin_prefetch(header(uint32_t(v) - 1));
      return;
    }
  }
}

uint32_t EmbeddingTable::GetOrCreate(std::string_view key, bool* created) {
  return Insert(key, nullptr, created);
}

uint32_t EmbeddingTable::Put(std::string_view key, const float* values) {
  bool created = false;
  const uint32_t row = Insert(key, values, &created);
  if (!created) {
    std::memcpy(Row(row), values, row_floats_ * sizeof(float));
    SetBase(row, values);
  }
  return row;
}

size_t EmbeddingTable::index_bytes() const {
  size_t bytes = 0;
  for (size_t i = 0; i < kShards; ++i) {
    std::lock_guard lock(shards_[i].mu);
    for (const IndexShard::Array& a : shards_[i].arrays) bytes += a.bytes;
  }
  return bytes;
}

uint32_t EmbeddingTable::Restore(std::string_view key, const float* values, bool* created) {
  const uint32_t row = Insert(key, values, created);
  if (*created) {
    uint8_t state = kDirty;
    if (epochs_) chunk(row)->epochs[row & kChunkMask].store(0, std::memory_order_relaxed);
    std::atomic_ref<uint8_t>(chunk(row)->dirty[row & kChunkMask])
        .compare_exchange_strong(state, kClean, std::memory_order_release);
  }
  return row;
}

uint32_t EmbeddingTable::Insert(std::string_view key, const float* values, bool* created) {
  if (created) *created = false;
  const uint64_t h = IndexHash(key);
  IndexShard& s = shards_[h & (kShards - 1)];
  uint32_t row = Probe(s, h, key);
  if (row != kNoRow) return row;

  std::lock_guard lock(s.mu);
  row = Probe(s, h, key);  // the array is stable while we hold the mutex
  if (row != kNoRow) return row;
  row = NewRow(key, values);
  InsertSlot(s, h, row);
  if (created) *created = true;
  return row;
}

void EmbeddingTable::InsertSlot(IndexShard& s, uint64_t h, uint32_t row) {
  uint64_t* t = s.slots.load(std::memory_order_relaxed);
  uint64_t mask = t[0];
  if ((s.used + 1) * 4 > (mask + 1) * 3) {
    // Removed ids' slots count as used until here: a table whose ids come
    // and go grows only as far as its live ids need.
    uint64_t live = 0;
    for (uint64_t i = 0; i <= mask; ++i) live += t[1 + i] != 0 && t[1 + i] != kTombstone;
    const uint64_t capacity = (live + 1) * 2 > (mask + 1) ? 2 * (mask + 1) : mask + 1;
    uint64_t* bigger = s.NewArray(capacity);
    const uint64_t new_mask = capacity - 1;
    s.used = live;
    for (uint64_t i = 0; i <= mask; ++i) {
      const uint64_t v = t[1 + i];
      if (v == 0 || v == kTombstone) continue;
      uint64_t j = (v >> 32) & new_mask;
      while (bigger[1 + j] != 0) j = (j + 1) & new_mask;
      // (atomic: a reused array may have a stale reader, see NewArray)
      std::atomic_ref<uint64_t>(bigger[1 + j]).store(v, std::memory_order_relaxed);
    }
    // Publishes the copied slots (they point to rows published earlier); the
    // store must be visible before the old pages go (see the top).
    s.slots.store(bigger, std::memory_order_seq_cst);
    s.ReleaseOld();
    t = bigger;
    mask = new_mask;
  }
  const uint64_t tag = h >> 32;
  uint64_t j = tag & mask;
  while (t[1 + j] != 0 && t[1 + j] != kTombstone) j = (j + 1) & mask;
  const bool reused = t[1 + j] == kTombstone;
  std::atomic_ref<uint64_t>(t[1 + j]).store((tag << 32) | (uint64_t(row) + 1),
                                            std::memory_order_release);
  if (!reused) ++s.used;
}

uint32_t EmbeddingTable::Remove(std::string_view key) {
  const uint64_t h = IndexHash(key);
  IndexShard& s = shards_[h & (kShards - 1)];
  std::lock_guard lock(s.mu);
  uint64_t* t = s.slots.load(std::memory_order_relaxed);
  const uint64_t mask = t[0], tag = h >> 32, want = ShortHeader(key);
  for (uint64_t i = tag & mask;; i = (i + 1) & mask) {
    const uint64_t v = t[1 + i];
    if (v == 0) return kNoRow;
    if (v == kTombstone || (v >> 32) != tag || !RowHasKey(uint32_t(v) - 1, want, key)) continue;
    const uint32_t row = uint32_t(v) - 1;
    std::atomic_ref<uint64_t>(t[1 + i]).store(kTombstone, std::memory_order_release);
    // Its pending change is not exported (the removal is); a row listed by
    // an export under way is copied out as it was.
    std::atomic_ref<uint8_t> d(chunk(row)->dirty[row & kChunkMask]);
    uint8_t state = kDirty;
    d.compare_exchange_strong(state, kFree, std::memory_order_relaxed);
    state = kClean;
    d.compare_exchange_strong(state, kFree, std::memory_order_relaxed);
    removed_.fetch_add(1, std::memory_order_relaxed);
    return row;
  }
}

void EmbeddingTable::Reclaim(uint32_t row) {
  std::lock_guard alloc(alloc_mu_);
  std::atomic_ref<uint8_t>(chunk(row)->dirty[row & kChunkMask])
      .store(kFree, std::memory_order_relaxed);
  const uint64_t v = LoadHeader(header(row));
  if ((v & kLongKey) == kLongKey) keys_->Free(reinterpret_cast<char*>(v & ~kLongKey));
  free_rows_.push_back(row);
}

uint32_t EmbeddingTable::NewRow(std::string_view key, const float* values) {
  const size_t n = row_floats_;
  if (values == nullptr) {
    thread_local std::vector<float> init;
    init.resize(n);
    InitValues(key, init.data());
    values = init.data();
  }
  uint32_t row = kNoRow;
  bool reserved = false;
  {
    std::lock_guard alloc(alloc_mu_);
    if (free_rows_.empty()) {
      row = ReserveLocked(&key, 1);
      reserved = true;
    } else {
      // A reclaimed row: readers that found its old id a moment ago may
      // still read it (Hogwild); nothing else refers to it.
      row = free_rows_.back();
      free_rows_.pop_back();
      uint64_t v = ShortHeader(key);
      if (v == kLongKey) v = reinterpret_cast<uintptr_t>(keys_->Add(key)) | kLongKey;
      std::atomic_ref<uint64_t>(chunk(row)->headers[row & kChunkMask])
          .store(v, std::memory_order_relaxed);
      std::memcpy(Row(row), values, n * sizeof(float));
      SetBase(row, values);
      std::atomic_ref<uint8_t>(chunk(row)->dirty[row & kChunkMask])
          .store(kDirty, std::memory_order_release);
      if (touched_) chunk(row)->touched[row & kChunkMask].store(0, std::memory_order_relaxed);
      if (epochs_) Stamp(row);
      if (changes_)  // another id now (a reader of the old one may still mark it)
        std::atomic_ref<uint8_t>(chunk(row)->changed[row & kChunkMask])
            .store(kMadeMark, std::memory_order_relaxed);
      removed_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  if (!reserved) return row;
  std::memcpy(Row(row), values, n * sizeof(float));
  SetBase(row, values);
  Publish(row, 1);
  return row;
}

uint32_t EmbeddingTable::Reserve(const std::string_view* keys, uint32_t count) {
  std::lock_guard alloc(alloc_mu_);
  return ReserveLocked(keys, count);
}

uint32_t EmbeddingTable::ReserveLocked(const std::string_view* keys, uint32_t count) {
  const uint32_t first = next_row_;
  // Everything that can throw (a chunk's or a long id's memory) happens
  // before the rows are taken: a reservation is always published.
  for (uint32_t c = first >> kChunkBits; c <= (first + count - 1) >> kChunkBits; ++c)
    EnsureChunk(c);
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t row = first + i;
    Chunk* c = chunk(row);
    uint64_t v = ShortHeader(keys[i]);
    if (v == kLongKey) {
      const uintptr_t p = reinterpret_cast<uintptr_t>(keys_->Add(keys[i]));
      if (p & kLongKey) throw std::bad_alloc();  // no user-space address is that high
      v = p | kLongKey;
    }
    std::memcpy(c->headers.get() + (row & kChunkMask), &v, kHeaderBytes);
    c->dirty[row & kChunkMask] = kDirty;
    if (epochs_) Stamp(row);
    if (changes_) c->changed[row & kChunkMask] = kMadeMark;
  }
  next_row_ = first + count;
  return first;
}

void EmbeddingTable::Publish(uint32_t first, uint32_t count) {
  // Rows become ready in allocation order, so size() never exposes a row
  // whose key or values are still being written. An earlier reservation's
  // owner is only writing values (see Reserve), so this wait is short.
  for (int spins = 0; ready_rows_.load(std::memory_order_acquire) != first; ++spins) {
    if (spins < 64)
      CpuRelax();
    else
      std::this_thread::yield();
  }
  ready_rows_.store(first + count, std::memory_order_release);
}

void EmbeddingTable::PutMany(std::span<const std::string> keys, const float* values) {
  const size_t n = keys.size();
  const size_t w2 = row_floats_;
  // Scratch kept per thread: the keys' hashes and their order by shard.
  struct Scratch {
    std::vector<uint64_t> hashes;
    std::vector<uint32_t> order, fresh;
    std::vector<std::string_view> fresh_keys;
  };
  thread_local Scratch sc;
  sc.hashes.resize(n);
  sc.order.resize(n);
  uint32_t starts[kShards + 1] = {};
  for (size_t i = 0; i < n; ++i) {
    sc.hashes[i] = IndexHash(keys[i]);
    ++starts[(sc.hashes[i] & (kShards - 1)) + 1];
  }
  for (uint32_t s = 0; s < kShards; ++s) starts[s + 1] += starts[s];
  {
    uint32_t at[kShards];
    std::copy(starts, starts + kShards, at);
    for (size_t i = 0; i < n; ++i) sc.order[at[sc.hashes[i] & (kShards - 1)]++] = uint32_t(i);
  }
  constexpr uint32_t kAhead = 8;
  for (uint32_t s = 0; s < kShards; ++s) {
    const uint32_t begin = starts[s], end = starts[s + 1];
    if (begin == end) continue;
    IndexShard& shard = shards_[s];
    std::lock_guard lock(shard.mu);
    // The array is stable while the mutex is held.
    const uint64_t* t = shard.slots.load(std::memory_order_relaxed);
    const uint64_t mask = t[0];
    for (uint32_t k = begin; k < std::min(end, begin + kAhead); ++k)
      __builtin_prefetch(t + 1 + ((sc.hashes[sc.order[k]] >> 32) & mask));
    sc.fresh.clear();
    for (uint32_t k = begin; k < end; ++k) {
      if (k + kAhead < end)
        __builtin_prefetch(t + 1 + ((sc.hashes[sc.order[k + kAhead]] >> 32) & mask));
      const uint32_t i = sc.order[k];
      const uint32_t row = Probe(shard, sc.hashes[i], keys[i]);
      if (row != kNoRow) {
        std::memcpy(Row(row), values + i * w2, w2 * sizeof(float));
        SetBase(row, values + i * w2);
      } else {
        sc.fresh.push_back(i);
      }
    }
    if (sc.fresh.empty()) continue;
    // A key given twice gets one row, with its later values: among keys of
    // equal hash (in order, the sort is stable), a repeat takes the earlier
    // entry's place.
    std::stable_sort(sc.fresh.begin(), sc.fresh.end(),
                     [&](uint32_t a, uint32_t b) { return sc.hashes[a] < sc.hashes[b]; });
    size_t kept = 0;
    for (size_t f = 0; f < sc.fresh.size(); ++f) {
      const uint32_t i = sc.fresh[f];
      size_t same = kept;
      while (same > 0 && sc.hashes[sc.fresh[same - 1]] == sc.hashes[i] &&
             keys[sc.fresh[same - 1]] != keys[i])
        --same;
      if (same > 0 && sc.hashes[sc.fresh[same - 1]] == sc.hashes[i])
        sc.fresh[same - 1] = i;  // the same key: the later values win
      else
        sc.fresh[kept++] = i;
    }
    sc.fresh.resize(kept);
    sc.fresh_keys.resize(kept);
    for (size_t f = 0; f < kept; ++f) sc.fresh_keys[f] = keys[sc.fresh[f]];
    const uint32_t first = Reserve(sc.fresh_keys.data(), uint32_t(kept));
    for (size_t f = 0; f < kept; ++f) {
      std::memcpy(Row(first + uint32_t(f)), values + sc.fresh[f] * w2, w2 * sizeof(float));
      SetBase(first + uint32_t(f), values + sc.fresh[f] * w2);
    }
    Publish(first, uint32_t(kept));
    for (size_t f = 0; f < kept; ++f)
      InsertSlot(shard, sc.hashes[sc.fresh[f]], first + uint32_t(f));
  }
}

EmbeddingTable::Chunk* EmbeddingTable::EnsureChunk(uint32_t index) {
  Chunk* c = chunks_[index].load(std::memory_order_acquire);
  if (c) return c;
  c = new Chunk;
  // Pages are touched when their first row is created.
  c->bytes = size_t(kChunkRows) * stride_ * sizeof(float);
  c->data = static_cast<float*>(MapHuge(c->bytes));
  c->dirty.reset(new uint8_t[kChunkRows]());
  c->headers.reset(new uint64_t[kChunkRows]());
  if (touched_) {
    c->touched.reset(new std::atomic<uint32_t>[kChunkRows]);
    for (uint32_t i = 0; i < kChunkRows; ++i) c->touched[i].store(0, std::memory_order_relaxed);
  }
  if (changes_) {
    c->changed.reset(new uint8_t[kChunkRows]());
    c->base_bytes = size_t(kChunkRows) * row_floats_ * sizeof(float);
    c->base = static_cast<float*>(MapHuge(c->base_bytes));
  }
  if (epochs_) {
    c->epochs.reset(new std::atomic<uint32_t>[kChunkRows]);
    for (uint32_t i = 0; i < kChunkRows; ++i) c->epochs[i].store(0, std::memory_order_relaxed);
  }
  chunks_[index].store(c, std::memory_order_release);
  return c;
}

void EmbeddingTable::InitValues(std::string_view key, float* r) const {
  uint64_t state = StableHash(key) ^ seed_;
  for (int i = 0; i < width_; ++i) {
    if (i < random_prefix_) {
      double u = double(SplitMix64(&state) >> 11) * (1.0 / 9007199254740992.0);
      r[i] = float((2.0 * u - 1.0) * init_scale_);
    } else {
      r[i] = 0.0f;
    }
  }
  InitState(r);
}

void EmbeddingTable::InitState(float* r) const {
  float* last = r + size_t(width_) * size_t(state_.blocks);
  for (int i = 0; i < width_; ++i) last[i] = accum_init_;
  if (state_.blocks == 2) {
    float* z = r + width_;
    for (int i = 0; i < width_; ++i) z[i] = -r[i] * state_.z_scale;
  }
}

}  // namespace recstream::learner
