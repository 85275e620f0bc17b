// Sharing: one trainer's part in a model that several trainers learn
// (LearnerOptions::trainer_count > 1; docs/interface.md, "Several
// trainers").
//
// Users are not shared: a user's events all reach the one trainer that
// reads its partition. Every other row is: the rows of items, side
// features and pretrained vectors each have one owner, the trainer that
// OwnerOf(id) names, and trainer 0 owns the dense blocks. Every trainer
// learns every row it needs in place; for a row it does not own, that row
// is a follower copy whose own changes are sent to the owner:
//
//   TakeChanges    for each shared row changed since the previous call, a
//                  row this trainer does not own gives its change (value
//                  minus base, values and optimizer state alike) and its
//                  base becomes its value; an owned row gives its value
//                  (what the owner publishes). Trainer 0 gives its dense
//                  blocks; the others their change.
//   AddChanges     the owner adds other trainers' changes to its rows.
//   FollowOwners   a follower takes the owner's published value: its row
//                  becomes that value plus its own change not yet taken,
//                  and the base the owner's value.
//
// So each trainer's effect reaches the owner exactly once as long as every
// taken change is delivered once (the caller's part: an outbox stored with
// the trainer's positions, see docs/interface.md), and every copy
// converges on the owner's value once trainers are quiet. The "base" of a
// follower copy is kept by row in an array beside the table's own
// (EmbeddingTable::Base: shared tables take twice the floats per row); it
// starts as the row's initial
// values, which every trainer computes alike from the id, or the values a
// restore put there.
//
// The negative ring (recent items, which sampled negatives and the
// popularity prior of implicit tasks come from) is every trainer's own,
// but each one's new entries go to every other trainer's ring too
// (kRingAdds), so that each ring follows the whole stream's popularity.
//
// Dense blocks exchanged: dense, dense_accum, history_match, history_gate,
// implicit_shift, tower_weight (changes added, as for rows). A task that learned a label
// 0 anywhere (feedback) becomes explicit everywhere. Task weighting state
// is trainer 0's: followers take it as published.
//
// Thread safety: every method runs on the training thread between Train
// calls (like BeginSnapshot); scorers may read meanwhile.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/status.h"
#include "learner/embedding_table.h"
#include "learner/learner.h"

namespace recstream::learner {

struct Model;

class Sharing {
 public:
  // Call at the end of the model's construction (dense blocks initialised).
  explicit Sharing(Model* model);
  Sharing(const Sharing&) = delete;
  Sharing& operator=(const Sharing&) = delete;

  bool Owns(std::string_view key) const;

  void TakeChanges(ModelChanges* changes, ModelSnapshot* owned);
  Status AddChanges(const ModelChanges& changes);
  Status FollowOwners(const ModelSnapshot& published, int from);

  // After a restore: the dense blocks are the base from which their
  // changes are counted (everything before them was taken, and stored with
  // them, see docs/interface.md); restored rows are their own base
  // (EmbeddingTable::PutMany).
  void RestoredDense();
  // After rows were removed or made without ForEachChanged seeing it (a
  // snapshot applied): the owners noted per row are forgotten.
  void ForgetOwners();

  struct Counters {
    std::atomic<uint64_t> rows_sent{0};     // row changes taken (TakeChanges)
    std::atomic<uint64_t> rows_added{0};    // row changes added as owner
    std::atomic<uint64_t> rows_followed{0}; // owners' rows followed
    std::atomic<uint64_t> not_owned{0};     // changes of rows owned by another, skipped
    std::atomic<uint64_t> refused{0};       // changes refused (non-finite values)
  };
  const Counters& counters() const { return counters_; }

 private:
  // The shared table of that name; null when there is none.
  EmbeddingTable* Find(std::string_view table);
  // Corruption ("`what` of table ... have the wrong width") unless `d`'s
  // rows are `t`'s.
  static Status CheckWidth(const EmbeddingTable& t, const TableDelta& d, const char* what);
  // Tasks that learned a label 0 elsewhere (a "feedback" block) are
  // explicit here too.
  void TakeFeedback(const std::vector<float>& flags);
  // Sets the "item" lists of `lists` for the items this trainer owns (or,
  // `owned` false, does not own; and, `from` >= 0, trainer `from` owns)
  // that have features.
  void SetItemLists(const std::vector<FeatureListDelta>& lists, bool owned, int from);
  std::vector<float> ReadDense(std::string_view name) const;
  void WriteDense(std::string_view name, const std::vector<float>& values);

  Model& m_;
  const int index_, count_;
  // The negative ring's position at the last take, and the positions since
  // taken by other trainers' items (not sent back).
  uint64_t ring_taken_ = 0;
  std::vector<uint32_t> mine_rows_, theirs_rows_;  // TakeChanges' scratch
  // Per shared table and row: its owner, once known (kMine or kTheirs; 0:
  // not known), and kPending when it is in pending_: rows this trainer
  // owns that changed since the last take with `owned`, taken out of the
  // table's change marks so that takes in between do not go over them
  // again. An owner noted stays right until the row is made again for
  // another id (EmbeddingTable::kMadeMark) or ForgetOwners. A row is in
  // pending_ at most once, so a caller that never asks for `owned` (the
  // service publishes through snapshots) holds at most a word per row.
  static constexpr uint8_t kMine = 1, kTheirs = 2, kPending = 4;
  std::vector<std::vector<uint8_t>> owner_;
  std::vector<std::vector<uint32_t>> pending_;
  std::vector<uint32_t> rows_;  // AddChanges' and FollowOwners' scratch
  // Per item row, a hash of the list (and id) last sent with its changes
  // (0) and last published with its owned row (1); 0: none.
  std::vector<uint32_t> list_sent_[2];
  std::unordered_set<uint64_t> received_;
  std::vector<EmbeddingTable*> shared_;  // items, side features, pretrained
  // The dense blocks' bases (followers), by name.
  std::vector<std::pair<std::string, std::vector<float>>> dense_base_;
  Counters counters_;
};

}  // namespace recstream::learner
