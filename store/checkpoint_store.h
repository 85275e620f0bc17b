// CheckpointStore: the learner's model and the Kafka offsets it covers, kept
// together in one RocksDB directory.
//
// Atomicity. Write() puts everything of one checkpoint (changed rows, dense
// blocks, counters, new purchases, the model's shape, the offsets and the
// checkpoint info) into ONE RocksDB WriteBatch, or, for a big checkpoint
// (StoreOptions::ingest_min_bytes), into sorted table files that RocksDB
// ingests in ONE step (files synced first; the MANIFEST records the ingestion
// atomically). After a crash either all of a checkpoint is visible or none of
// it, so the stored offsets always match the stored model: restarting from
// them neither skips nor double-learns events.
//
// Incremental checkpoints. The store accumulates: a delta snapshot
// (Learner::TakeSnapshot(false)) overwrites the rows it carries and leaves the
// others in place. Load() always returns the accumulated model as ONE full
// snapshot, to be applied to a fresh learner.
//
// Layout: every record and its encoding (endian-explicit) are described
// once, in store/codec.h, the only code that encodes or decodes them.
//
// Thread safety. Write(), Load() and LoadStreaming() must be called from one
// thread at a time (the checkpoint thread); last() and Health() may be called
// from any thread at any time, also while a Write() runs.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>

#include "common/offsets.h"
#include "common/status.h"
#include "learner/learner.h"
#include "learner/row_source.h"
#include "store/model_records.h"
#include "store/options.h"

namespace recstream::store {

struct CheckpointInfo {
  // 1 for the first checkpoint of a store, then +1 per Write(); 0: none yet.
  uint64_t sequence = 0;
  // Wall-clock time of the checkpoint, ms since the Unix epoch.
  int64_t time_ms = 0;
  // Rows written by this checkpoint (all rows for a full snapshot).
  uint64_t rows = 0;
  // Size of this checkpoint's WriteBatch.
  uint64_t bytes = 0;
  // Time the checkpoint took to encode (as stored) and, for the info returned
  // by Write() and last() after a Write(), to encode and write.
  double duration_ms = 0.0;
  // Every stored offset, as of this checkpoint.
  OffsetMap offsets;
  // Events learned per task (learner::Task order) by the stored model.
  std::array<uint64_t, 3> learned = {0, 0, 0};
  // The model-topic version the stored model is, for a trainer that
  // publishes (zero otherwise).
  model_records::Version published;
};


class CheckpointStore : public learner::RowSource {
 public:
  // Opens (creating if missing) the RocksDB directory options.path.
  // IOError carrying RocksDB's message when the directory cannot be created
  // or opened (a file in the way, no permission, locked by another process);
  // Corruption when RocksDB finds its own files or our metadata damaged.
  static Status Open(const StoreOptions& options, std::unique_ptr<CheckpointStore>* store);
  // Flushes RocksDB's memtable so that the next Open() is fast, then closes.
  ~CheckpointStore() override;
  CheckpointStore(const CheckpointStore&) = delete;
  CheckpointStore& operator=(const CheckpointStore&) = delete;

  // Stores one checkpoint atomically (see above); with options.sync, the
  // write is on disk when it returns OK. `offsets` are merged into the stored
  // ones: a partition absent from `offsets` keeps its stored offset.
  //
  // When `snapshot.shape` differs from the stored shape, the stored model is
  // replaced as a whole (in the same batch), so `snapshot` must then be full.
  //
  // InvalidArgument (nothing written) when the snapshot is malformed: no
  // shape, a row count that does not match `values`, a non-positive width, a
  // table whose width differs from the stored one under the same shape, a
  // table name that is empty or contains '\0'. IOError when RocksDB fails; nothing of
  // the checkpoint is then visible, and since the learner already cleared its
  // change marks, the caller must write a full snapshot next.
  // On success, fills `info` (when non-null) with the checkpoint's info.
  Status Write(const learner::ModelSnapshot& snapshot, const OffsetMap& offsets,
               CheckpointInfo* info);
  // Write() that also records the model-topic version the snapshot brings
  // the stored model to (CheckpointInfo::published).
  Status Write(const learner::ModelSnapshot& snapshot, const OffsetMap& offsets,
               const model_records::Version& published, CheckpointInfo* info);

  // The model's records (widths, dense blocks, feature lists, the shape,
  // purchases and rows, in key order; no offsets) after key `after` ("" for
  // the first page), about `max_bytes` of them, read from the latest
  // checkpoint. Pages of one walk may come from different checkpoints: a
  // reader that applies them in order, then the model topic from the
  // oldest page's version on, ends with the newest model. NotFound when the
  // store holds no checkpoint. May run on any thread, beside Write().
  Status ReadModelPage(std::string_view after, size_t max_bytes, model_records::ModelPage* page) const;

  // Reads the accumulated model back as one full snapshot (every row grouped
  // per table, every dense block, the counters, every purchase as
  // new_purchases, the shape), with its offsets and info, all from one
  // consistent point in time. NotFound when the store holds no checkpoint;
  // Corruption when a stored value is malformed; IOError when RocksDB fails.
  Status Load(learner::ModelSnapshot* full, OffsetMap* offsets, CheckpointInfo* info);

  // Receives the rows of a streaming Load, one table's block at a time.
  // Called on several threads at once (never twice with the same block); a
  // non-OK status ends the load with that status.
  using RowSink = std::function<Status(const learner::TableDelta& block)>;

  // Like Load(), for restoring big models fast: hands the rows to `rows` in
  // blocks while it reads on (on up to `threads` threads), instead of
  // collecting them in `rest`, whose tables are then all present but empty;
  // everything else is in `rest` as Load() gives it. Returns once every call
  // of `rows` has returned. Same errors as Load().
  Status LoadStreaming(const RowSink& rows, int threads, learner::ModelSnapshot* rest,
                       OffsetMap* offsets, CheckpointInfo* info);
  // Receives the feature lists of a streaming Load in blocks, like RowSink.
  using ListSink = std::function<Status(const learner::FeatureListDelta& block)>;
  // LoadStreaming that also hands the feature lists to `lists` in blocks (on
  // up to `threads` threads, after every call of `rows` has returned)
  // instead of collecting them in `rest`, whose feature_lists are then empty.
  Status LoadStreaming(const RowSink& rows, const ListSink& lists, int threads,
                       learner::ModelSnapshot* rest, OffsetMap* offsets, CheckpointInfo* info);

  // learner::RowSource, for a learner with a memory limit: the stored
  // rows, feature lists, histories and purchases of the users `ids`, all
  // from the latest checkpoint (one RocksDB snapshot), in one MultiGet plus
  // a seek per user found whose purchases are asked for. May run on any thread, beside
  // Write(). Unavailable when the store is not open; Corruption when a
  // record is malformed.
  Status ReadUsers(std::span<const std::string_view> ids, std::span<const uint8_t> purchases,
                   bool touch_times, learner::ModelSnapshot* out) const override;
  // learner::RowSource: only the purchases of the users `ids` (a seek
  // each, on one RocksDB snapshot).
  Status ReadPurchases(std::span<const std::string_view> ids,
                       std::vector<std::pair<std::string, std::string>>* out) const override;
  // learner::RowSource: the stored touch times of users that left memory.
  Status ScanLeft(std::string_view after, size_t max,
                  std::vector<LeftUser>* out) const override;

  // Several trainers on one model (docs/interface.md): the OUTBOX of
  // changes this trainer took for other trainers, kept from when they are
  // taken until they are sent and a checkpoint covers them, so that a crash
  // neither loses a taken change nor takes it again. A batch: its number,
  // its bytes (replicate/exchange.h's encoding), and the learned positions
  // when it was taken (events up to them are in it). Never in the model's
  // pages, Load or a replica's snapshot.
  struct OutboxBatch {
    uint64_t number = 0;
    std::string bytes;
    OffsetMap positions;
  };
  // Stores a batch and its number as the last one taken: in RocksDB's log,
  // so a crash of the process keeps it; a crash of the machine keeps it
  // once SyncOutbox (or a later checkpoint, with store.sync) has run.
  // IOError when RocksDB fails.
  Status PutOutbox(const OutboxBatch& batch);
  // Makes every outbox batch stored so far durable (fsync of the log), when
  // store.sync is on; nothing otherwise.
  Status SyncOutbox();
  // Every batch stored and not deleted, in number order, and the number of
  // the last one ever stored (0: none).
  Status ReadOutbox(std::vector<OutboxBatch>* batches, uint64_t* last) const;
  // Deletes the batches numbered up to `through` (the last number stays).
  Status DeleteOutbox(uint64_t through);

  // RocksDB's own memory, for benchmarks and diagnosis: the memtables
  // (active, immutable and pinned), the table readers' index and filter
  // blocks held outside the block cache, and the block cache's use. Any
  // thread.
  struct MemoryUsage {
    uint64_t memtables = 0;
    uint64_t table_readers = 0;
    uint64_t block_cache = 0;
  };
  MemoryUsage Memory() const;

  // The latest checkpoint (written by Write(), or found by Open()); sequence
  // 0 when there is none.
  CheckpointInfo last() const;

  // The error of the latest failed Write() (until a Write() succeeds), so
  // that readiness can report a failing disk; OK otherwise.
  Status Health() const;

 private:
  struct Impl;
  explicit CheckpointStore(std::unique_ptr<Impl> impl);
  // Load() without a sink, LoadStreaming() with one.
  Status LoadImpl(const RowSink* sink, const ListSink* list_sink, int threads,
                  learner::ModelSnapshot* full, OffsetMap* offsets, CheckpointInfo* info);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::store
