// EmbeddingTable: rows of floats keyed by id, created on first sight.
//
// Keys are the ids themselves (no hashing into a fixed space, so distinct ids
// never collide) and the table has no fixed capacity: rows live in chunks
// that are allocated as the table grows and never move, so a row pointer
// stays valid for the table's lifetime.
//
// Each row holds `width` values followed by the optimizer's state: one block
// of `width` accumulators (Adagrad, SGD), or two (FTRL-Proximal's z, then its
// accumulators n); see RowState.
//
// Thread safety: Find, GetOrCreate, Row, size and key are safe from any
// thread. Find (and GetOrCreate of an existing id) takes no lock and writes
// no shared memory. Row contents are written by trainers without locks
// (Hogwild); readers may see a mix of old and new values, never a torn float.
// ForEachDirty and BeginExport must not run concurrently with writers
// (GetOrCreate, MarkDirty); FinishExport may.
//
// Memory per row: row_floats() floats (2 * width unless FTRL: 3 * width), an 8-byte header that
// holds the id (ids of up to 7 bytes inline, longer ones in an append-only arena that the header
// points to), a dirty byte and 11-21 bytes of index (8-byte slots at a load factor of 3/8 to 3/4;
// see embedding_table.cc). The headers are kept apart from the floats, in an array per chunk: a
// lookup compares the header, and next to the floats it shared a cache line with values that
// trainers write, so on two threads every lookup of a row another thread
// had just updated missed the cache. Line-aligned tables (see the
// constructor) pad each row's floats to a multiple of 64 bytes.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "learner/float_buffer.h"

namespace recstream::learner {

// The optimizer state after a row's values: `blocks` blocks of width
// floats, the last one the accumulators (set to accum_init). With two, the
// first is FTRL-Proximal's z, set to -value * z_scale so that the closed
// form gives the initial values back.
struct EmbeddingRowState {
  int blocks = 1;
  float z_scale = 0.0f;
};

class EmbeddingTable {
 public:
  using RowState = EmbeddingRowState;
  static constexpr uint32_t kNoRow = UINT32_MAX;

  // The id of a row: a view of the table's own copy, valid for the table's
  // lifetime (not NUL-terminated). Converts to std::string where one is
  // needed, so code written when key() returned `const std::string&` still
  // compiles.
  class KeyRef : public std::string_view {
   public:
    explicit KeyRef(std::string_view s) : std::string_view(s) {}
    operator std::string() const { return std::string(data(), size()); }
  };

  // `width` values per row; new rows get embeddings uniform in
  // [-init_scale, init_scale] for the first `random_prefix` values, zeros
  // after, and accumulators set to `accum_init`.
  // With `line_aligned`, every row starts on a 64-byte cache line (its
  // floats padded up to a multiple of 16): for tables of rows that several
  // trainer threads update at once (items, side features), so that two
  // threads writing neighbouring rows do not share a line. Costs up to 60
  // bytes per row.
  EmbeddingTable(std::string name, int width, int random_prefix, float init_scale, float accum_init,
                 uint64_t seed, bool line_aligned = false, RowState state = {});
  ~EmbeddingTable();
  EmbeddingTable(const EmbeddingTable&) = delete;
  EmbeddingTable& operator=(const EmbeddingTable&) = delete;

  const std::string& name() const { return name_; }
  int width() const { return width_; }
  // Floats of a row: its values, then its optimizer state.
  size_t row_floats() const { return row_floats_; }
  // Sets the optimizer state of a row whose values are set (row_floats()
  // floats), as a new row gets it.
  void InitState(float* row) const;
  // Rows created so far; every row below size() has its key and initial
  // values set. Removed rows stay below size() (their index is reused by
  // later ids, see Reclaim): iterate with IsLive, count with live_size.
  uint32_t size() const { return ready_rows_.load(std::memory_order_acquire); }
  // Rows that hold an id (size() less removed rows not yet reused).
  uint32_t live_size() const { return size() - removed_.load(std::memory_order_relaxed); }
  // False for a removed row (until a new id reuses it).
  bool IsLive(uint32_t row) const {
    return std::atomic_ref<uint8_t>(chunk(row)->dirty[row & kChunkMask])
               .load(std::memory_order_relaxed) != kFree;
  }

  // Expiry. The table remembers, per row, the latest time it was touched
  // (any unit the caller chooses, 0 = never), once TrackTouches has been
  // called on the empty table.
  void TrackTouches() { touched_ = true; }
  bool tracks_touches() const { return touched_; }
  // Sets the row's time to t when t is later. Safe from any thread (a race
  // may keep the earlier of two concurrent times).
  void Touch(uint32_t row, uint32_t t) {
    std::atomic<uint32_t>& a = chunk(row)->touched[row & kChunkMask];
    if (a.load(std::memory_order_relaxed) < t) a.store(t, std::memory_order_relaxed);
  }
  uint32_t touched(uint32_t row) const {
    return chunk(row)->touched[row & kChunkMask].load(std::memory_order_relaxed);
  }
  // Snapshot epochs (for a memory limit), once TrackEpochs has been called
  // on the empty table: each row remembers the epoch (SetEpoch) at which it
  // last became changed, so that a caller that knows which snapshots are
  // stored knows which unchanged rows the store holds as they are. Rows
  // never changed in memory since they were read back (Restore) have
  // epoch 0.
  void TrackEpochs() { epochs_ = true; }
  // Sharing rows between trainers (learner/sharing.h), once TrackChanges
  // has been called on the empty table: a change mark, independent of the
  // snapshots' one, set on a row's creation and by MarkDirty, taken by
  // ForEachChanged; and a BASE per row (row_floats() floats, in an array
  // beside the rows' own, so that learning touches no more memory than
  // without), which a row's creation, Put and PutMany set to the row's
  // values and only the caller changes afterwards.
  void TrackChanges() { changes_ = true; }
  bool tracks_changes() const { return changes_; }
  void SetEpoch(uint32_t epoch) { epoch_.store(epoch, std::memory_order_relaxed); }
  uint32_t dirtied(uint32_t row) const {
    return chunk(row)->epochs[row & kChunkMask].load(std::memory_order_relaxed);
  }
  // Removes `key`: Find no longer returns its row, which is not exported
  // again (a change of it not yet exported is dropped; an export under way
  // still copies it as it was). Returns the row, kNoRow when the key has
  // none. Same thread safety as GetOrCreate. The row keeps its id and values
  // (readers that found it a moment ago read it safely) until Reclaim.
  uint32_t Remove(std::string_view key);
  // Lets a later new id take the removed `row` (and a long id's memory).
  // The caller guarantees that nothing refers to the row any more (lists,
  // histories, snapshots under way) and that no export is under way.
  void Reclaim(uint32_t row);
  // After an export that listed a removed row has finished: makes the row
  // read as removed (IsLive false) and returns true; false while an export
  // still holds it. No export may start meanwhile.
  bool MarkRemoved(uint32_t row) {
    std::atomic_ref<uint8_t> d(chunk(row)->dirty[row & kChunkMask]);
    const uint8_t state = d.load(std::memory_order_acquire);
    if (state == kDue || state == kCopying) return false;
    d.store(kFree, std::memory_order_relaxed);
    return true;
  }

  // kNoRow when the id has no row. Any id is valid, including "". In a
  // table whose ids are removed (Remove), a Find that stalls while the
  // index is rebuilt twice may miss an id that has a row (rebuilt index
  // arrays are reused): callers treat a miss as "not in memory now", and
  // GetOrCreate never creates a second row for an id.
  uint32_t Find(std::string_view key) const;
  // The row of `key`, created when missing. `created` tells which.
  uint32_t GetOrCreate(std::string_view key, bool* created = nullptr);
  // A hint that `key` is looked up soon: starts loading its index slot into
  // the cache. Safe from any thread; changes nothing.
  void Prefetch(std::string_view key) const;
  // Prefetch's second step, a few lookups later (once the index slot is in
  // the cache): starts loading the id header of the row the slot points to,
  // which the lookup compares. Safe from any thread; changes nothing.
  void PrefetchRow(std::string_view key) const;
  // For restoring rows: sets the row of `key` to values[0..row_floats()) (values
  // then optimizer state), creating it when missing without computing initial
  // values. Same thread safety as GetOrCreate; the row is readable with its
  // new values once Put returns. Concurrent Puts of one key leave one of the
  // given rows (floats of the other may mix in, as with trainers' writes).
  uint32_t Put(std::string_view key, const float* values);
  // Put of many rows: keys[i] gets values[i * row_floats(), (i + 1) * row_floats()).
  // The same effect and thread safety as keys.size() calls of Put in order
  // (of a key given twice, the later values stay), in fewer steps: the keys
  // are grouped by index shard, each shard's lock is taken once per group
  // and the group's new rows are allocated together, their values written
  // outside the allocation lock. For restoring big tables.
  void PutMany(std::span<const std::string> keys, const float* values);
  // For reading back a row that left memory (a memory limit): the row of
  // `key`, created with values[0..row_floats()) and marked unchanged (the
  // store holds it) when missing; an existing row keeps its values.
  // `created` tells which. Same thread safety as GetOrCreate.
  uint32_t Restore(std::string_view key, const float* values, bool* created);
  // True when the row has no change a snapshot has not taken yet (and no
  // export is copying it).
  bool IsClean(uint32_t row) const {
    return std::atomic_ref<uint8_t>(chunk(row)->dirty[row & kChunkMask])
               .load(std::memory_order_acquire) == kClean;
  }
  // Bytes the id index holds (every slot array of every shard, current or
  // kept for readers). Takes each shard's mutex.
  size_t index_bytes() const;
  // Bytes of memory a row takes: its floats (padded), id header, state
  // bytes and index share (ids of up to 7 bytes; longer ones add their
  // length).
  size_t bytes_per_row() const {
    return (stride_ + (changes_ ? row_floats_ : 0)) * sizeof(float) + 8 + 1 + (touched_ ? 4 : 0) +
           16;
  }

  // values[0..width) then accumulators[0..width).
  float* Row(uint32_t row) const { return chunk(row)->data + offset(row); }
  // The row's base (TrackChanges only): row_floats() floats.
  float* Base(uint32_t row) const {
    return chunk(row)->base + size_t(row & kChunkMask) * row_floats_;
  }
  // The id of a row; only for rows below size() (or returned by Find or
  // GetOrCreate).
  KeyRef key(uint32_t row) const;

  // Marks a row changed. Must be called before a row's values are written
  // (not after): while an export is under way (BeginExport), the first
  // MarkDirty of a listed row copies its values out first.
  void MarkDirty(uint32_t row) {
    // Load first: a row updated by every event (a popular item or feature)
    // is usually dirty already, and a store would bounce its cache line
    // between trainer threads.
    if (changes_) MarkChanged(row);
    std::atomic_ref<uint8_t> d(chunk(row)->dirty[row & kChunkMask]);
    const uint8_t state = d.load(std::memory_order_relaxed);
    if (state == kDirty) return;
    if (epochs_) Stamp(row);
    if (state == kClean) {
      d.store(kDirty, std::memory_order_relaxed);
      return;
    }
    CopyOutBeforeWrite(row);
  }
  // Calls fn(row) for each dirty row (every row when `all`) in row order and
  // clears the marks. Not during an export.
  template <typename Fn>
  void ForEachDirty(bool all, Fn&& fn) {
    ForEachMarked(all, kClean, fn);
  }

  // Change marks: kMadeMark when the row was made (for a new id: the row
  // may have held another id before) since its mark was last cleared,
  // kChangedMark when it only changed. A marked row keeps its mark until
  // ForEachChanged clears it, except that making a row always sets
  // kMadeMark.
  static constexpr uint8_t kMadeMark = 1, kChangedMark = 2;
  // Calls fn(row, mark) for each live row marked changed (TrackChanges) in
  // row order; fn returns 0 to clear the mark, or the mark to leave. No
  // writer may run meanwhile.
  template <typename Fn>
  void ForEachChanged(Fn&& fn) {
    if (!changes_) return;
    const uint32_t n = size();
    for (uint32_t base = 0; base < n; base += kChunkRows) {
      Chunk* c = chunk(base);
      uint8_t* changed = c->changed.get();
      const uint32_t end = std::min(kChunkRows, n - base);
      for (uint32_t i = NextDirty(changed, 0, end); i < end; i = NextDirty(changed, i + 1, end))
        changed[i] = c->dirty[i] == kFree ? 0 : fn(base + i, changed[i]);
    }
  }

  // Copy-on-write export: the rows of a snapshot copied out while writers
  // go on. BeginExport (no writer running) lists the changed rows (every
  // row when `all`) in `rows`, in row order, clears their change marks,
  // sizes `dest` to rows->size() * row_floats() floats and marks the rows due:
  // row rows[i] belongs at dest[i * row_floats()]. Until FinishExport returns,
  // the first MarkDirty of a due row copies it to its place before the
  // caller writes it; `rows` and `dest` must stay alive and unchanged.
  // FinishExport (any one thread, concurrently with writers and readers)
  // copies the due rows no writer has copied and returns when `dest` holds
  // every listed row as it was at BeginExport. BeginExport of an export not
  // finished, ForEachDirty and Put must not run meanwhile.
  void BeginExport(bool all, std::vector<uint32_t>* rows, FloatBuffer* dest);
  void FinishExport();

 private:
  static constexpr int kChunkBits = 14;
  static constexpr uint32_t kChunkRows = 1u << kChunkBits;
  static constexpr uint32_t kChunkMask = kChunkRows - 1;
  static constexpr uint32_t kMaxChunks = 1u << (30 - kChunkBits);  // 2^30 rows

  // Row states in Chunk::dirty. kDue and kCopying exist only during an
  // export: a due row is copied out by whoever claims it first (kCopying
  // while it is copied), then becomes kClean (copied by FinishExport) or
  // kDirty (by a writer about to change it).
  static constexpr uint8_t kClean = 0, kDirty = 1, kDue = 2, kCopying = 3;
  // A removed row (Remove), skipped by exports until a new id reuses it.
  static constexpr uint8_t kFree = 4;
  struct Export {
    const uint32_t* rows = nullptr;
    size_t count = 0;
    float* dest = nullptr;
    std::atomic<size_t> copied{0};
    FloatBuffer retired;  // the destination's old buffer, freed by FinishExport
  };
  struct Chunk {
    ~Chunk();
    float* data = nullptr;  // kChunkRows * stride_ floats, mapped
    size_t bytes = 0;
    float* base = nullptr;  // with TrackChanges: kChunkRows * row_floats_, mapped
    size_t base_bytes = 0;
    std::unique_ptr<uint64_t[]> headers;  // kChunkRows id headers (embedding_table.cc)
    std::unique_ptr<uint8_t[]> dirty;     // written through atomic_ref
    std::unique_ptr<std::atomic<uint32_t>[]> touched;  // with TrackTouches only
    std::unique_ptr<std::atomic<uint32_t>[]> epochs;   // with TrackEpochs only
    std::unique_ptr<uint8_t[]> changed;  // with TrackChanges only; through atomic_ref
  };
  struct IndexShard;
  struct KeyArena;

  Chunk* chunk(uint32_t row) const {
    return chunks_[row >> kChunkBits].load(std::memory_order_acquire);
  }
  size_t offset(uint32_t row) const { return size_t(row & kChunkMask) * stride_; }
  const char* header(uint32_t row) const {
    return reinterpret_cast<const char*>(chunk(row)->headers.get() + (row & kChunkMask));
  }
  // The first dirty index in [i, end), or end.
  static uint32_t NextDirty(const uint8_t* dirty, uint32_t i, uint32_t end);
  // Calls fn(row) for each row marked (every row when `all`) in row order,
  // after setting its mark to `state`. No writer may run meanwhile.
  template <typename Fn>
  void ForEachMarked(bool all, uint8_t state, Fn&& fn) {
    const uint32_t n = size();
    for (uint32_t base = 0; base < n; base += kChunkRows) {
      uint8_t* dirty = chunk(base)->dirty.get();
      const uint32_t end = std::min(kChunkRows, n - base);
      uint32_t i = all ? 0 : NextDirty(dirty, 0, end);
      for (; i < end; i = all ? i + 1 : NextDirty(dirty, i + 1, end)) {
        if (dirty[i] == kFree) continue;
        dirty[i] = state;
        fn(base + i);
      }
    }
  }
  // The slot array of `key`'s shard (t[0] the mask, t[1 + i] slot i), with
  // the key's tag and the array's mask: its probe starts at slot tag & mask.
  const uint64_t* SlotsOf(std::string_view key, uint64_t* tag, uint64_t* mask) const;
  // Copies `values` into the row's base when there are bases.
  void SetBase(uint32_t row, const float* values) {
    if (changes_) std::memcpy(Base(row), values, row_floats_ * sizeof(float));
  }
  void MarkChanged(uint32_t row) {
    std::atomic_ref<uint8_t> c(chunk(row)->changed[row & kChunkMask]);
    if (!c.load(std::memory_order_relaxed)) c.store(kChangedMark, std::memory_order_relaxed);
  }
  void Stamp(uint32_t row) {
    chunk(row)->epochs[row & kChunkMask].store(epoch_.load(std::memory_order_relaxed),
                                               std::memory_order_relaxed);
  }
  // MarkDirty of a row that is due or being copied (see BeginExport).
  void CopyOutBeforeWrite(uint32_t row);
  // Export steps: Claim turns a due row into kCopying (true when this
  // caller got it); CopyOut copies claimed row rows[i] and leaves it in
  // `final_state`.
  bool Claim(uint32_t row);
  void CopyOut(size_t i, uint32_t row, uint8_t final_state);
  uint32_t Probe(const IndexShard& shard, uint64_t hash, std::string_view key) const;
  bool RowHasKey(uint32_t row, uint64_t short_header, std::string_view key) const;
  uint32_t Insert(std::string_view key, const float* values, bool* created);
  // values: row_floats_ floats, or nullptr for the initial values. Caller
  // holds the key's shard mutex and inserts the index slot afterwards.
  uint32_t NewRow(std::string_view key, const float* values);
  // Row allocation in three steps, so that rows are written outside
  // alloc_mu_ (first touches of a chunk's pages fault there, in parallel):
  // Reserve allocates `count` consecutive rows with the given ids in their
  // headers and returns the first; the caller writes their values, then
  // Publish makes them ready (size()) once every earlier row is, in
  // allocation order. Between the two the caller may hold one shard mutex
  // but must not wait for anything else.
  uint32_t Reserve(const std::string_view* keys, uint32_t count);
  uint32_t ReserveLocked(const std::string_view* keys, uint32_t count);  // alloc_mu_ held
  void Publish(uint32_t first, uint32_t count);
  // Inserts the slot of a new row; the caller holds the shard's mutex and
  // the row is published.
  void InsertSlot(IndexShard& shard, uint64_t hash, uint32_t row);
  Chunk* EnsureChunk(uint32_t index);
  void InitValues(std::string_view key, float* values) const;  // row_floats_ floats

  const std::string name_;
  const int width_;
  const RowState state_;
  const size_t row_floats_;  // width_ * (1 + state_.blocks)
  const bool line_aligned_;
  // Floats per row: row_floats_, padded when line_aligned.
  const size_t stride_;
  const int random_prefix_;
  const float init_scale_;
  const float accum_init_;
  const uint64_t seed_;
  std::unique_ptr<IndexShard[]> shards_;
  std::unique_ptr<std::atomic<Chunk*>[]> chunks_;
  std::mutex alloc_mu_;                  // guards row allocation, chunk creation and keys_
  std::unique_ptr<KeyArena> keys_;       // guarded by alloc_mu_ (appends only)
  uint32_t next_row_ = 0;                // guarded by alloc_mu_
  std::vector<uint32_t> free_rows_;      // reclaimed rows; guarded by alloc_mu_
  std::atomic<uint32_t> removed_{0};     // removed rows not reused yet
  bool touched_ = false;
  bool epochs_ = false;
  bool changes_ = false;
  std::atomic<uint32_t> epoch_{0};
  std::atomic<uint32_t> ready_rows_{0};  // rows whose key and values are set
  Export export_;                        // set by BeginExport (no writer running)
};

}  // namespace recstream::learner
