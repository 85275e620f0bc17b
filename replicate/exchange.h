// TrainerExchange: the Kafka side of several trainers sharing one model
// (docs/interface.md, "Several trainers on one model"; the learner's side is
// learner/sharing.h).
//
// Two topics carry it:
//   - the updates topic (kafka.topics.updates, at least trainer.count
//     partitions): a sender's changes for owner o go to partition o as one
//     BATCH: pages of records of the model topic's format
//     (store/model_records.h, ForEachUpdateRecord below) with the version
//     {generation: run << 12 | sender, sequence: the batch's number}, then
//     a commit that counts them. Trainer i reads the partitions p with
//     p % count == i;
//   - the model topic: each trainer publishes its own rows on its own
//     partition (replicate/publisher.h); the exchange follows the other
//     trainers' partitions from the positions a checkpoint stored, or from
//     their beginning (a compacted topic holds every row's latest value).
//
// Delivery. A batch is handed over only whole (its commit arrived and
// counts its records), and only once per sender and number: a batch whose
// number is not above the sender's last one handed over (a sender that
// sends its stored batches again after a crash) is dropped and counted, and
// so is a batch cut short (records of one version, then records of
// another: a sender that died while sending). Positions() gives, per
// partition, where to read again so that every batch not handed over is
// read whole, with each sender's last batch handed over: stored with the
// checkpoint of a model that has applied everything Take returned, they make
// a restart apply every batch exactly once.
//
// Bad input never stops it: an unreadable record is counted and skipped.
//
// Thread safety: Send on one thread (the one that takes changes); Take,
// Positions and stats from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "learner/learner.h"

namespace recstream::replicate {

struct ExchangeOptions {
  std::string brokers;
  std::string updates_topic = "recstream.model.updates";
  std::string model_topic = "recstream.model";
  int index = 0;  // trainer.index
  int count = 2;  // trainer.count
  // This run's number (the trainer's start time in ms): with the sender's
  // index, the generation of its batches' versions.
  uint64_t run = 0;
  std::map<std::string, std::string> properties;  // kafka.properties.*
  int delivery_timeout_ms = 10000;
};

struct ExchangeStats {
  uint64_t sent_batches = 0;  // batches acknowledged (one per owner and Send)
  uint64_t sent_records = 0;
  uint64_t sent_bytes = 0;
  uint64_t received_batches = 0;    // changes handed over by Take
  uint64_t duplicate_batches = 0;   // a batch already handed over, dropped
  uint64_t incomplete_batches = 0;  // a batch cut short, dropped
  uint64_t bad_records = 0;         // unreadable records, skipped
  uint64_t followed_versions = 0;   // other trainers' versions handed over
};

// A batch of changes as bytes (the records Send would produce, framed as
// key length u32, key, value length u32, value), for a trainer's outbox
// (store/checkpoint_store.h), and back. Corruption when malformed.
std::string EncodeChanges(const learner::ModelChanges& changes);
Status DecodeChanges(std::string_view bytes, learner::ModelChanges* out);

// The updates topic's records of one batch for one owner (`changes`: that
// owner's part, learner::SplitByOwner), in order: PAGES, each one record
// (key "m/page" and the page's number, u32 from 0) holding up to
// kUpdatePageBytes of rows, lists and dense chunks in the model topic's
// format, then the commit, which counts the pages; all with the version
// {generation, number}. A batch costs Kafka a few records rather than one
// per row. Stops at, and returns, the first non-OK status of `emit`.
inline constexpr size_t kUpdatePageBytes = 512 << 10;  // under Kafka's default 1 MB message
// `changes` is left as it was (its buffers are lent for the call).
Status ForEachUpdateRecord(learner::ModelChanges* changes, uint64_t generation, uint64_t number,
                           const std::function<Status(std::string_view, std::string_view)>& emit);
// Records of one whole batch (as ForEachUpdateRecord emits them, the commit
// last) back into changes, as an owner reads them. Corruption when a record
// is unreadable or the commit does not count what came before it.
Status DecodeUpdateRecords(std::span<const std::pair<std::string, std::string>> records,
                           learner::ModelChanges* out);

// TrainerExchange::Encode for trainer `index` of `count` in run `run`
// (ExchangeOptions), without Kafka.
std::string EncodeBatch(learner::ModelChanges* changes, int index, int count, uint64_t run,
                        uint64_t number);
// True when `bytes` are TrainerExchange::Encode's (an outbox batch stored
// by this build), false for EncodeChanges' (an older build's outbox).
bool IsEncodedBatch(std::string_view bytes);
// Calls fn(owner, key, value) for each updates-topic record of encoded
// batch `bytes` (TrainerExchange::Encode's), with the owner whose partition
// it goes to; stops at fn's first non-OK status. Corruption (naming
// trainer.index and trainer.count) when the bytes hold records for an owner
// that trainer `index` of `count` cannot send to (an outbox stored before
// either changed), or are not an encoded batch.
Status ForEachEncodedRecord(
    std::string_view bytes, int index, int count,
    const std::function<Status(int owner, std::string_view key, std::string_view value)>& fn);
// ForEachEncodedRecord's checks alone.
Status CheckEncodedBatch(std::string_view bytes, int index, int count);

class TrainerExchange {
 public:
  // `start`: per updates partition this trainer reads, the position to read
  // from (a checkpoint's); partitions without one are read from their
  // beginning. `applied`: per sender, the number of its last batch applied
  // (stored with those positions). InvalidArgument for bad options.
  // `follow`: per other trainer (its model partition), where to read its
  // versions from (a checkpoint's); without one, the partition's beginning.
  static Status Open(const ExchangeOptions& options, const std::map<int, int64_t>& start,
                     const std::map<int, uint64_t>& applied, const std::map<int, int64_t>& follow,
                     std::unique_ptr<TrainerExchange>* out);
  ~TrainerExchange();
  TrainerExchange(const TrainerExchange&) = delete;
  TrainerExchange& operator=(const TrainerExchange&) = delete;

  // Sends batch `number` of this trainer's changes (taken by
  // Learner::TakeChanges): each other owner's part to its partition, an
  // empty batch (a commit alone) where it has none. Returns once Kafka has
  // acknowledged all of it; IOError/Unavailable otherwise (the caller
  // sends the same batch, with the same number, again). Numbers increase.
  Status Send(const learner::ModelChanges& changes, uint64_t number);

  // The same in two steps, so that a batch is encoded once: Encode makes
  // the bytes an outbox stores (each other owner's records, as Send would
  // produce them; `changes` is emptied, its tables' buffers kept for the
  // next Learner::TakeChanges), and SendEncoded sends them (from any
  // thread, as Send). Corruption from SendEncoded when the bytes are not
  // Encode's for this trainer and count.
  std::string Encode(learner::ModelChanges* changes, uint64_t number) const;
  Status SendEncoded(std::string_view batch, uint64_t number);

  // What arrived since the previous call, in arrival order: other
  // trainers' changes for the rows this trainer owns (apply with
  // Learner::AddChanges), and other trainers' published versions (apply
  // with Learner::FollowOwners(version, version_from)).
  struct Received {
    std::vector<learner::ModelChanges> changes;
    std::vector<learner::ModelSnapshot> versions;
    std::vector<int> version_from;  // the trainer that published each version
    bool empty() const { return changes.empty() && versions.empty(); }
  };
  void Take(Received* out);
  // Where to read each updates partition again, each sender's last batch
  // handed over, and where to read each followed model partition again
  // (the first record of a version not yet whole), as of the last Take.
  void Positions(std::map<int, int64_t>* positions, std::map<int, uint64_t>* applied,
                 std::map<int, int64_t>* follow = nullptr) const;

  ExchangeStats stats() const;

 private:
  struct Impl;
  explicit TrainerExchange(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::replicate
