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
// snapshot is then full too. Deletions (expiry) are kept across a full
// snapshot (the store still holds what they remove) unless the id comes
// back; a row, list or purchase merged before its deletion is dropped.
//
// Thread-compatible; memory holds each changed row once.
#pragma once

#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>

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
  void Delete(const std::string& table, const std::string& id);

  // Per table (and per list kind): id -> index in merged_.
  std::unordered_map<std::string, std::unordered_map<std::string, size_t>> rows_, lists_;
  // Entries of merged_ removed by a later deletion, by table (or list kind).
  std::unordered_map<std::string, std::unordered_set<size_t>> dead_rows_, dead_lists_;
  // Ids deleted and not seen again, by table.
  std::map<std::string, std::set<std::string>> deleted_;
  std::set<std::pair<std::string, std::string>> deleted_purchases_;
  bool full_ = false;
  bool empty_ = true;
};

}  // namespace recstream::store
