// RowSource: the lower tier of a model with a memory limit
// (LearnerOptions::memory_limit_mb): where the learner reads back users
// whose rows left memory. The service's store implements it
// (store::CheckpointStore); the learner knows nothing of how.
#pragma once

#include <span>
#include <string_view>

#include "common/status.h"
#include "learner/learner.h"

namespace recstream::learner {

class RowSource {
 public:
  virtual ~RowSource() = default;

  // Reads what is stored of the users `ids` into *out, as a snapshot of
  // the stored model would carry it: their rows (one TableDelta "user";
  // values then optimizer state, as TakeSnapshot gives them), their "user"
  // feature lists and "user_history" lists, and their purchases in
  // new_purchases. Users not stored are left out. Every part comes from one
  // checkpoint, so what it holds is consistent. May run on any thread,
  // concurrently with other calls and with the store's writes. IOError or
  // Corruption when the store fails (the learner then treats the users as
  // unknown for this call).
  virtual Status ReadUsers(std::span<const std::string_view> ids, ModelSnapshot* out) const = 0;
};

}  // namespace recstream::learner
