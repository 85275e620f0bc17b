// BatchParser: parses a batch of JSONL event lines on several threads, one
// ingest::EventParser each, as `recstream eval` does between Learner::Train
// calls (and bench/learner_bench, which mirrors eval).
//
// Why in parallel: parsing is a large share of `recstream eval`'s CPU time,
// and on one thread between the Train calls the other thread would wait.
// Given the learner's threads (Learner::ParallelFor), parsing also keeps
// Train's second thread awake between the calls, so that it joins each
// Train call at once.
//
// Thread safety: one BatchParser per thread; Parse() uses several threads
// internally.
#pragma once

#include <cstdint>
#include <functional>
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
  // Runs fn(begin, end) over pieces of [0, n) of about `grain` lines, on
  // several threads, and returns when all have run (Learner::ParallelFor).
  using ParallelFor =
      std::function<void(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn)>;

  // Parses on `threads` threads of its own; <= 0: as many as the machine
  // has cores.
  BatchParser(const ingest::ParserOptions& options, int threads);
  // Parses on the threads of `parallel_for`.
  BatchParser(const ingest::ParserOptions& options, ParallelFor parallel_for);
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
