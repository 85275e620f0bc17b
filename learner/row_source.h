// RowSource: the lower tier of a model with a memory limit
// (LearnerOptions::memory_limit_mb): where the learner reads back users
// whose rows left memory. The service's store implements it
// (store::CheckpointStore); the learner knows nothing of how.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "learner/learner.h"

namespace recstream::learner {

class RowSource {
 public:
  virtual ~RowSource() = default;

  // Reads what is stored of the users `ids` into *out, as a snapshot of
  // the stored model would carry it: their rows (one TableDelta "user";
  // values then optimizer state, as TakeSnapshot gives them), their "user"
  // feature lists, "user_history" lists and kUserLeftLists entries (when
  // they left memory), and their purchases in
  // new_purchases: of every user when `purchases` is empty, else of user i
  // only when purchases[i] is non-zero (a caller that knows who never
  // bought spares the store a seek each). Users not stored are left out.
  // Every part comes from one
  // checkpoint, so what it holds is consistent. May run on any thread,
  // concurrently with other calls and with the store's writes. IOError or
  // Corruption when the store fails (the learner then treats the users as
  // unknown for this call).
  // With `touch_times` false, the kUserLeftLists entries are not read
  // (a learner without user expiry has no use for them).
  virtual Status ReadUsers(std::span<const std::string_view> ids,
                           std::span<const uint8_t> purchases, bool touch_times,
                           ModelSnapshot* out) const = 0;

  // Appends the stored purchases of the users `ids` to *out as (user,
  // item) pairs, and nothing else of theirs: what expiry needs to delete
  // them with the user. Same threading and errors as ReadUsers.
  virtual Status ReadPurchases(std::span<const std::string_view> ids,
                               std::vector<std::pair<std::string, std::string>>* out) const = 0;

  // A user that left memory, as kept for expiry and restarts
  // (kUserLeftLists).
  struct LeftUser {
    // touched when the user came back into memory (it was in memory at the
    // checkpoint that stored this).
    static constexpr uint32_t kBackInMemory = UINT32_MAX;
    std::string id;
    uint32_t touched = 0;  // when it was last used (s of event time with user expiry); 0: unknown
  };
  // Reads up to `max` of the stored kUserLeftLists entries, in id order,
  // from the first id after `after` ("": from the start), into *out
  // (replacing its contents); fewer than `max` means the end was reached.
  // Same threading and errors as ReadUsers.
  virtual Status ScanLeft(std::string_view after, size_t max, std::vector<LeftUser>* out) const = 0;
};

}  // namespace recstream::learner
