// BatchParser: parses a batch of JSONL event lines on several threads, one
// ingest::EventParser each, as `recstream eval` does between Learner::Train
// calls (and bench/learner_bench, which mirrors eval).
//
// Why in parallel: parsing took about a fifth of `recstream eval`'s CPU time
// beside a two-thread learner (perf), on one thread between the Train calls
// while the other thread waited. (The parser's task arena is not the
// learner's, so TBB's worker still leaves one for the other between the
// calls: Train's second thread joins ~0.1 ms after the call starts, as
// before.)
//
// Thread safety: one BatchParser per thread; Parse() uses `threads` threads
// internally (in a task arena of its own).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ingest/options.h"
#include "ingest/parser.h"
#include "learner/event.h"

namespace recstream::eval {

class BatchParser {
 public:
  // threads <= 0: as many as the machine has cores.
  BatchParser(const ingest::ParserOptions& options, int threads);
  ~BatchParser();
  BatchParser(const BatchParser&) = delete;
  BatchParser& operator=(const BatchParser&) = delete;

  // Parses lines[i] into out[i] for every i < min(lines.size(), out.size())
  // (lines beyond `out` are left alone), then moves the accepted events to
  // the front of `out`, in line order, and returns how many there are. The reasons of the rejected
  // lines are appended to *rejected in line order. Events are swapped, not copied, so passing the
  // same `out` again reuses their capacity.
  size_t Parse(std::span<const std::string> lines, int64_t now_ms, std::span<learner::Event> out,
               std::vector<ingest::RejectReason>* rejected);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::eval
