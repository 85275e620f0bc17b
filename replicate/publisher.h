// ModelPublisher: a trainer's side of the model topic (store/model_records.h
// has the record format). Each Publish() sends one version to the
// trainer's partition and waits until Kafka has acknowledged every record
// of it, so that a failure is known before the next version.
//
// Thread-compatible: one thread (the trainer's publish thread) calls it.
#pragma once

#include <cstdint>
#include <memory>

#include "common/status.h"
#include "learner/learner.h"
#include "replicate/options.h"
#include "store/model_records.h"

namespace recstream::replicate {

struct PublisherStats {
  uint64_t versions = 0;   // versions acknowledged
  uint64_t records = 0;    // records acknowledged (commits included)
  uint64_t bytes = 0;      // key and value bytes acknowledged
  uint64_t failures = 0;   // versions that failed
  uint64_t full = 0;       // versions that carried the whole model
  store::model_records::Version last;  // last version acknowledged
  int64_t last_time_ms = 0;            // its snapshot time
  double last_publish_ms = 0;          // how long its publish took
};

class ModelPublisher {
 public:
  // `generation` orders this run's versions after those of earlier runs
  // (the trainer's start time in ms). InvalidArgument for a bad property.
  static Status Open(const PublisherOptions& options, uint64_t generation,
                     std::unique_ptr<ModelPublisher>* out);
  ~ModelPublisher();
  ModelPublisher(const ModelPublisher&) = delete;
  ModelPublisher& operator=(const ModelPublisher&) = delete;

  // The version the next Publish() sends.
  store::model_records::Version next() const;

  // Sends `snapshot` as the next version (its records, then its commit)
  // and returns once Kafka has acknowledged all of them. A snapshot with no
  // rows, lists or purchases whose counters and dense blocks equal the
  // previous version's is sent as a commit alone (a heartbeat, so replicas
  // can tell their lag).
  // Unavailable/IOError when a record is refused or not acknowledged
  // within delivery_timeout_ms: the version is then incomplete on the topic
  // (replicas drop it) and the caller should send everything next (full).
  // `timeout_ms` >= 0 replaces delivery_timeout_ms for this call (a final
  // publish at shutdown has a budget).
  Status Publish(const learner::ModelSnapshot& snapshot, bool full, int64_t time_ms,
                 int timeout_ms = -1);
  // Uses up the next version number without sending it: for a snapshot
  // that is stored but not published (while publishing fails), so that
  // the store's version never equals one on the topic with less in it.
  void SkipVersion();

  // The latest commit on this trainer's partition, found by reading the
  // partition's tail (up to `timeout_ms`). NotFound when the partition has
  // none there.
  Status LastCommit(int timeout_ms, store::model_records::Commit* out);

  PublisherStats stats() const;

  // Makes a Publish() under way (and every later one) give up within a few
  // ms, failing: for a shutdown that cannot wait for Kafka. Any thread.
  void Abort();

 private:
  struct Impl;
  explicit ModelPublisher(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::replicate
