// Several trainers on one model in one process (issue #31): the exchange
// that the service runs through Kafka between machines (learner/sharing.h,
// docs/interface.md "Several trainers"), done directly between learners.
// For `recstream eval --trainers N` and the benchmarks.
#pragma once

#include <cstdint>
#include <span>

#include "common/status.h"
#include "learner/learner.h"

namespace recstream::eval {

// What one or more exchanges moved.
struct ExchangeBytes {
  uint64_t rows = 0;      // row changes sent to owners
  uint64_t sent = 0;      // bytes of changes sent (ids, floats, item lists)
  uint64_t followed = 0;  // bytes of owners' rows read by the other trainers
};

// trainers[i] must be trainer i of trainers.size(). Each trainer's changes
// go to their owners, which add them; then each owner's changed rows (and
// trainer 0's dense blocks) are followed by every other trainer. Training
// thread of every learner; none may be training meanwhile.
// Without `follow`, the changes only (learner::ExchangeDirectly).
Status ExchangeInProcess(std::span<learner::Learner* const> trainers, ExchangeBytes* bytes,
                         bool follow = true);

// Bytes a snapshot or changes take on the wire, about: ids, 4 per float,
// list entries.
uint64_t WireBytes(const learner::ModelChanges& changes);
uint64_t WireBytes(const learner::ModelSnapshot& rows);

}  // namespace recstream::eval
