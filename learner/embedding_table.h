// EmbeddingTable: rows of floats keyed by id, created on first sight.
//
// Keys are the ids themselves (no hashing into a fixed space, so distinct ids
// never collide) and the table has no fixed capacity: rows live in chunks
// that are allocated as the table grows and never move, so a row pointer
// stays valid for the table's lifetime.
//
// Each row holds `width` values followed by `width` optimizer accumulators.
//
// Thread safety: Find, GetOrCreate, Row, size and key are safe from any
// thread. Row contents are written by trainers without locks (Hogwild);
// readers may see a mix of old and new values, never a torn float.
// ForEachDirty/MarkAllDirty must not run concurrently with writers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace recstream::learner {

class EmbeddingTable {
 public:
  static constexpr uint32_t kNoRow = UINT32_MAX;

  // `width` values per row; new rows get embeddings uniform in
  // [-init_scale, init_scale] for the first `random_prefix` values, zeros
  // after, and accumulators set to `accum_init`.
  EmbeddingTable(std::string name, int width, int random_prefix, float init_scale, float accum_init,
                 uint64_t seed);
  ~EmbeddingTable();
  EmbeddingTable(const EmbeddingTable&) = delete;
  EmbeddingTable& operator=(const EmbeddingTable&) = delete;

  const std::string& name() const { return name_; }
  int width() const { return width_; }
  // Rows ever created (ready or being created).
  uint32_t size() const { return ready_rows_.load(std::memory_order_acquire); }

  // kNoRow when the id has no row.
  uint32_t Find(std::string_view key) const;
  // The row of `key`, created when missing. `created` tells which.
  uint32_t GetOrCreate(std::string_view key, bool* created = nullptr);

  // values[0..width) then accumulators[0..width).
  float* Row(uint32_t row) const { return chunk(row)->data.get() + offset(row); }
  // The id of a row; only for rows below size().
  const std::string& key(uint32_t row) const { return chunk(row)->keys[row & kChunkMask]; }

  void MarkDirty(uint32_t row) {
    chunk(row)->dirty[row & kChunkMask].store(1, std::memory_order_relaxed);
  }
  // Calls fn(row) for each dirty row (every row when `all`) and clears marks.
  template <typename Fn>
  void ForEachDirty(bool all, Fn&& fn) {
    uint32_t n = size();
    for (uint32_t r = 0; r < n; ++r) {
      auto& d = chunk(r)->dirty[r & kChunkMask];
      if (all || d.load(std::memory_order_relaxed)) {
        d.store(0, std::memory_order_relaxed);
        fn(r);
      }
    }
  }

 private:
  static constexpr int kChunkBits = 12;
  static constexpr uint32_t kChunkRows = 1u << kChunkBits;
  static constexpr uint32_t kChunkMask = kChunkRows - 1;
  static constexpr uint32_t kMaxChunks = 1u << 18;  // 2^30 rows

  struct Chunk {
    std::unique_ptr<float[]> data;
    std::unique_ptr<std::string[]> keys;
    std::unique_ptr<std::atomic<uint8_t>[]> dirty;
  };
  struct Shard {
    mutable std::shared_mutex mu;
    struct Hash {
      using is_transparent = void;
      size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    std::unordered_map<std::string, uint32_t, Hash, std::equal_to<>> index;  // guarded by mu
  };
  static constexpr int kShards = 64;

  Chunk* chunk(uint32_t row) const {
    return chunks_[row >> kChunkBits].load(std::memory_order_acquire);
  }
  size_t offset(uint32_t row) const { return size_t(row & kChunkMask) * 2 * width_; }
  Shard& shard(std::string_view key) const;
  Chunk* EnsureChunk(uint32_t index);
  void InitRow(uint32_t row);

  const std::string name_;
  const int width_;
  const int random_prefix_;
  const float init_scale_;
  const float accum_init_;
  const uint64_t seed_;
  std::unique_ptr<Shard[]> shards_;
  std::unique_ptr<std::atomic<Chunk*>[]> chunks_;
  std::mutex alloc_mu_;                  // guards row allocation and chunk creation
  uint32_t next_row_ = 0;                // guarded by alloc_mu_
  std::atomic<uint32_t> ready_rows_{0};  // rows whose key and values are set
};

}  // namespace recstream::learner
