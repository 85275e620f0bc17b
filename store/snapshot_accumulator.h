// SnapshotAccumulator: delta snapshots merged into one, for a trainer that
// snapshots more often than it checkpoints (it publishes every version to
// the model topic, and stores every few seconds what changed since the
// last checkpoint).
//
// Merging is exact: writing the merged snapshot to a store that holds the
// state before the first delta gives the state after the last, as writing
// every delta in order would (a row or feature list keeps its latest
// values, dense blocks and counters are the latest, purchases accumulate).
// A full snapshot replaces everything merged before it, and the merged
// snapshot is then full too.
//
// Thread-compatible; memory holds each changed row once.
#pragma once

#include <string>
#include <unordered_map>

#include "learner/learner.h"

namespace recstream::store {

class SnapshotAccumulator {
 public:
  // Merges `delta` (taken after every snapshot merged so far). A delta of
  // another shape than the ones before replaces them: it must then be full.
  void Merge(const learner::ModelSnapshot& delta, bool full);
  // Moves the merged snapshot into *out and starts afresh; *full tells
  // whether it holds the whole model (a full snapshot was merged).
  void Take(learner::ModelSnapshot* out, bool* full);
  bool empty() const { return empty_; }
  uint64_t rows() const { return merged_.rows(); }

 private:
  learner::ModelSnapshot merged_;
  // Per table (and per list kind): id -> index in merged_.
  std::unordered_map<std::string, std::unordered_map<std::string, size_t>> rows_, lists_;
  bool full_ = false;
  bool empty_ = true;
};

}  // namespace recstream::store
