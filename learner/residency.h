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
// false positives cost a read that finds nothing. With user expiry the
// filter is built again by every pass of expiry over the store (a second
// filter, swapped in at the pass's end): it holds the users the store
// holds out of memory, not every user that ever left, so that it does not
// fill up with visitors who never come back, and a visitor past its time
// costs no read once the pass that recorded its deletion has ended (a pass
// takes about half the expiry time in event time, see ExpireLeft).
//
// Thread safety. Prepare, Evict and Stored run on the training thread
// (Prepare before a Train call's learning, Evict after it); FindUser on any
// thread, concurrently with everything else; KeepRestored on the
// restore's threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "learner/event.h"

namespace recstream::learner {

struct Model;
class RowSource;
struct ModelSnapshot;

// Bytes of memory the model's rows and structures take now, estimated from
// row counts (each table's bytes_per_row with its list, history and state
// bytes; the dense blocks, the negative ring, the admission sketch, the
// memory limit's filter); with or without a limit. Allocated user rows count
// (the high-water mark of users in memory). Any thread.
uint64_t ModelBytes(const Model& m);
// A user's share of it, and the rest's.
uint64_t BytesPerUser(const Model& m);
uint64_t SharedBytes(const Model& m);

class Residency {
 public:
  // `model` outlives this; its options' memory_limit_mb is > 0.
  explicit Residency(Model* model);
  ~Residency();
  Residency(const Residency&) = delete;
  Residency& operator=(const Residency&) = delete;

  // The store that users who left memory are read back from. Without one,
  // nothing leaves memory.
  // Reads the store's record of which users are out of memory (into the
  // filter), so that a restore that follows loads the users that were in
  // memory at the last checkpoint.
  void SetSource(const RowSource* source);
  bool has_source() const { return source_.load(std::memory_order_acquire) != nullptr; }

  // Training thread, before learning `events`: reads back every user of
  // theirs that left memory, in one call of the source per piece of
  // `parallel_for` (Learner::ParallelFor's contract: fn(begin, end) over
  // pieces of [0, n), on the training threads).
  using ParallelFor = std::function<void(size_t n, size_t grain,
                                         const std::function<void(size_t, size_t)>& fn)>;
  void Prepare(std::span<const Event> events, const ParallelFor& parallel_for);
  // Training thread, after a Train call (`idle` false) or while no events
  // come (true): while more users are in memory than the limit allows, lets
  // those used least recently go (up to a slice of the table per call);
  // with user expiry, a slice of expiry over the users out of memory
  // (ExpireLeft).
  void Evict(bool idle = false);
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
  // True when more users are in memory than a quarter over the budget:
  // training should wait for a checkpoint to store them (and Evict to let
  // them go) before it creates more.
  bool OverLimit() const;

  // Restore into an empty model: true when the user `id` (a row the store
  // holds) fits in memory; false puts it in the filter and leaves it in the store.
  // Its list, history and purchases then stay there too (the model's
  // SetLists and ApplySnapshot skip users without a row). Any thread.
  bool KeepRestored(std::string_view id);
  // Expiry of users not in memory (LearnerOptions::expire_user_s): a user
  // that leaves memory leaves its touch time in the store (a kUserLeftLists
  // entry of the next snapshot: ExportLeft, at BeginSnapshot); Evict reads
  // a slice of those entries now and then and records the deletion of the
  // users past their time (with their purchases), as expiry does in memory.
  // Until the snapshot with the deletion is stored, such a user counts as
  // never seen.
  void ExportLeft(ModelSnapshot* out);
  // Restore: user `id`, left in the store, has purchases there.
  void NoteBuyer(std::string_view id) { Note(buyers_, buyer_bits_, id); }
  // The time a user used now is touched with: with user expiry, event
  // time (s, as expiry reads it); otherwise a clock that counts Train
  // calls.
  uint32_t Now() const;
  uint32_t clock() const { return clock_.load(std::memory_order_relaxed); }

  // Figures for Learner::Stats.
  uint64_t limit_bytes() const { return limit_bytes_; }
  // Users kept in memory: four fifths of those that fit beside the rest of
  // the model (at least kMinUsers), so that a quarter more, waiting for a
  // checkpoint, still fit.
  uint64_t user_budget() const;
  uint64_t filter_bytes() const {
    return (filters_[1] ? 2 : 1) * (uint64_t(1) << filter_bits_) / 8 +
           (uint64_t(1) << buyer_bits_) / 8;
  }
  uint64_t evicted() const { return evicted_.load(std::memory_order_relaxed); }
  uint64_t reloaded() const { return reloaded_.load(std::memory_order_relaxed); }
  uint64_t store_reads() const { return store_reads_.load(std::memory_order_relaxed); }
  uint64_t read_errors() const { return read_errors_.load(std::memory_order_relaxed); }
  uint64_t checkpoints_wanted() const { return checkpoints_wanted_.load(std::memory_order_relaxed); }

  // The fewest users the limit keeps, whatever the rest takes (a few batches' worth).
  static constexpr uint64_t kMinUsers = 4096;

 private:
  // Reads back the users `ids` (none of them in memory), the purchases of
  // those that may have some; returns how many came back.
  size_t ReadBack(std::span<const std::string_view> ids);
  // One slice of expiry over the users not in memory (training thread),
  // paced by event time; while `idle`, at least a fixed slice.
  void ExpireLeft(bool idle);
  // False for a user whose deletion waits to be stored; under mu_.
  bool Returnable(std::string_view id) const {
    return expiring_.empty() || expiring_.find(std::string(id)) == expiring_.end();
  }
  // Puts what the source read into memory, unchanged-marked: under mu_.
  size_t Apply(const ModelSnapshot& part);
  // Bloom filters: `bits` bits, six probes per id (residency.cc).
  static bool MayHold(const std::unique_ptr<std::atomic<uint64_t>[]>& filter, int bits,
                      std::string_view id);
  static void Note(const std::unique_ptr<std::atomic<uint64_t>[]>& filter, int bits,
                   std::string_view id);
  bool MayHaveLeft(std::string_view id) const;
  // Into the filter in use, and the one being built (during a pass).
  void NoteLeft(std::string_view id);
  // Into the filter being built.
  void NoteNext(std::string_view id) { Note(filters_[1 - (epoch_.load() & 1)], filter_bits_, id); }

  Model& m_;
  const uint64_t limit_bytes_;
  std::atomic<const RowSource*> source_{nullptr};
  // Orders reading back against evicting: a user is never put back while
  // its memory is being given up.
  std::mutex mu_;
  // The Bloom filters of users that left: 2^filter_bits_ bits each; the
  // one in use is filters_[epoch_ & 1]. filters_[1] exists with user
  // expiry only: ExpireLeft builds it again each pass (rebuilding_) from
  // what the pass finds in the store and what leaves memory meanwhile,
  // then swaps (epoch_ + 1). Readers take a filter's answer only if
  // epoch_ did not change while they read it.
  int filter_bits_ = 0;
  std::unique_ptr<std::atomic<uint64_t>[]> filters_[2];
  std::atomic<uint64_t> epoch_{0};
  std::atomic<bool> rebuilding_{false};
  // Ids of users that left, exported to snapshot number -> not stored yet:
  // a pass that begins notes them, since it cannot find them in the store
  // yet. Guarded by left_mu_.
  std::unordered_map<uint64_t, std::vector<std::string>> exported_;
  // With expiry, from SetSource until training begins: the hashes of the
  // users the store holds out of memory, sorted (KeepRestored).
  std::vector<uint64_t> restore_left_;
  // Users that left with purchases (a quarter of the filter's size): only
  // theirs are read back.
  int buyer_bits_ = 0;
  std::unique_ptr<std::atomic<uint64_t>[]> buyers_;
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
  // Users that left memory since the last snapshot, with their touch times
  // (only with user expiry); guarded by left_mu_.
  std::mutex left_mu_;
  std::vector<std::pair<std::string, uint32_t>> left_;
  // Expired while out of memory: id -> the snapshot number that carries the
  // deletion; guarded by mu_.
  std::unordered_map<std::string, uint64_t> expiring_;
  std::string left_cursor_;  // where the next expiry slice starts
  // ExpireLeft's pace: the last whole pass's estimated length (0: none
  // yet), the entries this one found so far, users let go since the last
  // pass ended and by the last Evict, the event time this pass began at
  // and that of the last slice, and the entries owed since.
  uint64_t pass_length_ = 0, pass_seen_ = 0, left_since_pass_ = 0, last_let_go_ = 0;
  int64_t pass_began_at_ = 0, scanned_at_ = 0;
  double scan_credit_ = 0;
  // Users read back past their time (Apply), to expire: under mu_.
  std::vector<std::string> returned_expired_;
  std::vector<std::pair<std::string, std::string>> returned_expired_purchases_;
};

}  // namespace recstream::learner
