// ModelFollower: a replica's side of the model topic. It builds a learner
// with the trainer's settings, bootstraps it (from the topic, or from a
// trainer's snapshot over HTTP when the topic no longer holds everything),
// then follows the topic, applying each version whole once its commit has
// arrived (store/model_records.h).
//
// Bootstrap. At start it reads where every partition of the model topic
// begins and ends. A partition that still begins at offset 0 holds all the
// trainer ever published (or, compacted, the latest record of every key):
// it is read from the start. A partition whose beginning is gone (the
// embedded broker keeps ~5 MiB per partition; a topic with time retention)
// needs the trainer's stored model: its pages are fetched from the
// snapshot url (FollowerOptions::snapshot_url, else the one the trainer's
// commits announce), asking the trainer for a fresh checkpoint first, so
// the snapshot is at least as new as every commit on the topic; versions
// up to the snapshot's are then skipped.
//
// Ready once every partition has been read up to where it ended at start,
// and some model has been applied. While the trainer or the brokers are
// down the replica keeps serving what it has; it catches up when they are
// back.
//
// Falling behind. Each commit names the version delivered before it on
// its partition. If that is not the version this replica applied last, it
// missed one (the topic dropped records before they were read: retention
// shorter than the replica's outage, or the embedded broker's ~5 MiB), and
// so does a position librdkafka reports out of range (the follower's
// consumer sets auto.offset.reset=error). Either way Resync() fetches a
// fresh snapshot from the trainer and goes on from the topic's new start;
// without a snapshot url it logs, counts (FollowerStats::gaps) and goes on
// with what it has.
//
// Compaction. While a partition that starts at offset 0 is read up to
// where it ended at start, versions may have lost records and commits to
// compaction (only the latest record of each key is kept), so every record
// read there is applied, commit or not: together they are the latest
// value of every key. From then on versions are applied whole only.
//
// Bad input never stops it: a record it cannot read (unknown format, bad
// size) is counted, logged and skipped; a version whose records do not
// match its commit's count is dropped whole and counted.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "learner/learner.h"
#include "replicate/options.h"
#include "store/model_records.h"

namespace recstream::replicate {

struct FollowerPartition {
  int partition = 0;
  int64_t position = 0;  // next offset to read
  int64_t end_at_start = 0;
  int64_t high_watermark = 0;
  store::model_records::Version applied;  // newest version applied from it
};

struct FollowerStats {
  uint64_t versions_applied = 0;
  uint64_t heartbeats = 0;       // commits without records
  uint64_t records_applied = 0;  // rows, lists, purchases and dense chunks
  uint64_t bad_records = 0;      // unreadable records, skipped
  uint64_t incomplete_versions = 0;
  uint64_t apply_errors = 0;  // versions the learner refused (another shape)
  uint64_t tombstones = 0;
  uint64_t snapshot_pages = 0;
  uint64_t snapshot_records = 0;
  // Times a partition fell behind what the topic still holds (its records
  // were deleted before they were read) and the replica fetched a snapshot
  // again.
  uint64_t resyncs = 0;
  // Commits whose previous version was not the one applied last: versions
  // were missed (each leads to a resync when a snapshot url is known).
  uint64_t gaps = 0;
  double bootstrap_s = 0;  // start to ready; 0 until ready
  store::model_records::Version last;  // newest version applied
  int64_t last_time_ms = 0;            // its snapshot time on the trainer's clock
  std::vector<FollowerPartition> partitions;
};

class ModelFollower {
 public:
  // Builds a learner from a trainer's settings ("key=value" lines).
  using LearnerFactory =
      std::function<Status(const std::string& settings, std::unique_ptr<learner::Learner>*)>;
  // Called once, on the follower's thread, when the learner exists.
  using OnLearner = std::function<void(const learner::Learner*)>;

  // Starts the follower's thread. InvalidArgument for bad options.
  static Status Start(const FollowerOptions& options, LearnerFactory factory, OnLearner on_learner,
                      std::unique_ptr<ModelFollower>* out);
  // Stops and joins the thread.
  ~ModelFollower();
  ModelFollower(const ModelFollower&) = delete;
  ModelFollower& operator=(const ModelFollower&) = delete;

  // Null until the first commit's settings have built it.
  const learner::Learner* learner() const;
  bool Ready(std::string* why_not) const;
  FollowerStats stats() const;
  // Age of the newest version applied, ms (now minus its snapshot time);
  // -1 before any.
  double lag_ms() const;

  void Stop();

 private:
  struct Impl;
  explicit ModelFollower(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::replicate
