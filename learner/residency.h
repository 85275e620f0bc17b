// Residency: keeps a model's rows within LearnerOptions::memory_limit_mb
// (docs/interface.md, "Memory"), with the store as the lower tier. Private
// to learner/.
//
// What leaves memory. Users, the rows that grow with every visitor: each
// with its feature list, history and purchases. Item and feature rows, the
// dense layers and this class's own structures count against the limit but
// stay (expiry bounds them: model.expire.item_s, .feature_s). The users
// that leave are those used least recently (an event, or a request that
// read them back), chosen from a sample of the table's touch times, as
// Redis approximates LRU.
//
// Nothing is lost. A user leaves only when the store holds it as it is in
// memory: its row, list and history unchanged since a snapshot took them,
// no purchase waiting, and every snapshot taken so far stored (Stored). So
// a crash at any moment finds every user in the store or in memory as the
// stored offsets describe it, and an eviction writes nothing. When the
// users over the limit are all changed since the last checkpoint, the
// learner asks for one (WantsCheckpoint).
//
// Coming back. Before a Train call, every user of the call that is not in
// memory but may be in the store is read back in one RowSource call (one
// store read for the batch, not one per event); a score reads its user the
// same way. A user comes back exactly as it left: bit-identical scores. A
// Bloom filter of the users that left (and, after a restart, of those the
// restore left in the store) spares ids never seen a store read each; its
// false positives cost a read that finds nothing.
//
// Thread safety. Prepare, Evict and Stored run on the training thread
// (Prepare before a Train call's learning, Evict after it); FindUser on any
// thread, concurrently with everything else; KeepRestored on the
// restore's threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "learner/event.h"

namespace recstream::learner {

struct Model;
class RowSource;
struct ModelSnapshot;

class Residency {
 public:
  // `model` outlives this; its options' memory_limit_mb is > 0.
  explicit Residency(Model* model);
  ~Residency();
  Residency(const Residency&) = delete;
  Residency& operator=(const Residency&) = delete;

  // The store that users who left memory are read back from. Without one,
  // nothing leaves memory.
  void SetSource(const RowSource* source) { source_.store(source, std::memory_order_release); }
  bool has_source() const { return source_.load(std::memory_order_acquire) != nullptr; }

  // Training thread, before learning `events`: reads back every user of
  // theirs that left memory, in one call of the source.
  void Prepare(std::span<const Event> events);
  // Training thread, after a Train call: while more users are in memory
  // than the limit allows, lets those used least recently go (up to a
  // slice of the table per call).
  void Evict();
  // The user's row, read back from the store when it left memory; kNoRow
  // when the id has none. Any thread.
  uint32_t FindUser(std::string_view id);

  // Snapshots: BeginSnapshot calls Begun (training thread) and returns its
  // number; the caller reports each one stored, in order or not, with
  // Stored(number). Users leave memory only while every begun snapshot is
  // stored.
  uint64_t Begun() { return begun_.fetch_add(1, std::memory_order_acq_rel) + 1; }
  void Stored(uint64_t number);
  uint64_t begun() const { return begun_.load(std::memory_order_acquire); }
  // True when users over the limit wait for a checkpoint to store them.
  bool WantsCheckpoint() const { return wants_checkpoint_.load(std::memory_order_relaxed); }

  // Restore into an empty model: true when the user `id` (a row the store
  // holds) fits in memory; false puts it in the filter and leaves it in the store.
  // Its list, history and purchases then stay there too (the model's
  // SetLists and ApplySnapshot skip users without a row). Any thread.
  bool KeepRestored(std::string_view id);
  // The time a user used now is touched with: with user expiry, event
  // time (s, as expiry reads it); otherwise a clock that counts Train
  // calls.
  uint32_t Now() const;
  uint32_t clock() const { return clock_.load(std::memory_order_relaxed); }

  // Figures for Learner::Stats.
  uint64_t limit_bytes() const { return limit_bytes_; }
  // Users that fit beside the rest of the model (at least kMinUsers).
  uint64_t user_budget() const;
  // Bytes the model's rows and structures take now, estimated from row
  // counts (bytes_per_row of each table; the filter; the dense block).
  uint64_t model_bytes() const;
  uint64_t evicted() const { return evicted_.load(std::memory_order_relaxed); }
  uint64_t reloaded() const { return reloaded_.load(std::memory_order_relaxed); }
  uint64_t store_reads() const { return store_reads_.load(std::memory_order_relaxed); }
  uint64_t read_errors() const { return read_errors_.load(std::memory_order_relaxed); }
  uint64_t checkpoints_wanted() const { return checkpoints_wanted_.load(std::memory_order_relaxed); }

  // The fewest users the limit keeps, whatever the rest takes (a few batches' worth).
  static constexpr uint64_t kMinUsers = 4096;

 private:
  // Bytes per user: its row, list entry and history.
  uint64_t BytesPerUser() const;
  // Bytes of everything but the users.
  uint64_t SharedBytes() const;
  // Reads back the users `ids` (none of them in memory); returns how many
  // came back.
  size_t ReadBack(std::span<const std::string_view> ids);
  // Puts what the source read into memory, unchanged-marked: under mu_.
  size_t Apply(const ModelSnapshot& part);
  bool MayHaveLeft(std::string_view id) const;
  void NoteLeft(std::string_view id);

  Model& m_;
  const uint64_t limit_bytes_;
  std::atomic<const RowSource*> source_{nullptr};
  // Orders reading back against evicting: a user is never put back while
  // its memory is being given up.
  std::mutex mu_;
  // The Bloom filter: 2^filter_bits_ bits, kProbes probes per id.
  static constexpr int kProbes = 6;
  int filter_bits_ = 0;
  std::unique_ptr<std::atomic<uint64_t>[]> filter_;
  std::atomic<uint64_t> begun_{0};
  std::atomic<uint64_t> stored_{0};
  std::atomic<uint32_t> clock_{1};
  std::atomic<uint64_t> restored_{0};  // users KeepRestored kept
  std::atomic<bool> wants_checkpoint_{false};
  uint32_t cursor_ = 0;     // where the next eviction slice starts
  uint64_t rng_ = 0x9e3779b97f4a7c15ULL;
  std::atomic<uint64_t> evicted_{0}, reloaded_{0}, store_reads_{0}, read_errors_{0},
      checkpoints_wanted_{0};
  std::vector<std::string_view> ids_;  // Prepare's scratch
};

}  // namespace recstream::learner
