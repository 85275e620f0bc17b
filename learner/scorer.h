// Scorer: the read side of the learner. Score, ScoreMany and Recommend
// predict from the Model as it is at the time of the call; Recommend ranks
// every item from a cached panel of gathered item vectors (RecommendCache,
// scorer.cc), rebuilt when the model has changed.
//
// All three score items in blocks of kScoreLanes with ModelShape::ScoreBlock
// (one vectorised product per block), so a pair scores bit-identically
// whichever call asks.
//
// Thread safety. Every public method is const and may run on any number of
// threads at once, concurrently with a Trainer writing the model (see
// model.h). The cache's refresher thread lives as long as the scorer.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "learner/model.h"

namespace recstream::learner {

class Scorer {
 public:
  // `model` is borrowed and must outlive the scorer.
  explicit Scorer(const Model* model);
  ~Scorer();
  Scorer(const Scorer&) = delete;
  Scorer& operator=(const Scorer&) = delete;

  // Learner::Score, ScoreMany and Recommend.
  ScoreResult Score(std::string_view user, std::string_view item, const Blend& blend,
                    const std::vector<std::string>* user_features = nullptr,
                    const std::vector<std::string>* item_features = nullptr) const;
  void ScoreMany(std::string_view user, std::span<const std::string> items, const Blend& blend,
                 std::vector<ScoreResult>* out,
                 const std::vector<std::string>* user_features = nullptr,
                 std::span<const std::vector<std::string>* const> item_features = {}) const;
  std::vector<Recommendation> Recommend(std::string_view user, int k, bool exclude_purchased,
                                        const Blend& blend) const;

 private:
  // The user's side of a request: UserContext and biases, computed once.
  struct UserSide {
    explicit UserSide(const ModelShape& s) : ctx(s) {}
    UserContext ctx;
    std::array<float, kNumTasks> bias{};
    uint32_t row = EmbeddingTable::kNoRow;
    std::array<bool, kNumTasks> implicit{};  // Model::implicit, at preparation
    HistoryView history;                     // the user's history
    std::vector<float> u;                    // implicit tasks' user vector
  };
  struct ScoredItem {
    float score;
    uint32_t row;
    Prediction prediction;
  };
  // Best first; ties go to the smaller item id, so that the result depends
  // neither on how a scan was split nor on the order in which rows were
  // created (a restored model's rows come in another order).
  bool Better(const ScoredItem& a, const ScoredItem& b) const;
  struct ItemPanel;
  class RecommendCache;

  // `features`: the request's user features, null for the stored list.
  void PrepareUserSide(std::string_view user, UserSide* side,
                       const std::vector<std::string>* features = nullptr) const;
  // Predictions of the prepared user for item rows (kNoRow: an unknown
  // item); `features` empty, or per item the request's features (null: the
  // stored list).
  void ScoreRows(const UserSide& side, const std::vector<uint32_t>& item_rows,
                 std::vector<Prediction>* out,
                 std::span<const std::vector<std::string>* const> features = {}) const;
  // SumRows over `main_row` of `main` (unless kNoRow) and the rows of
  // `features` found in `side` (in their order), into vec and bias; zeros
  // when there is none. With `found`, the feature rows found are appended.
  void GatherRequest(const EmbeddingTable& main, const EmbeddingTable& side, uint32_t main_row,
                     const std::vector<std::string>& features, float* vec, float* bias,
                     std::vector<uint32_t>* found = nullptr) const;
  // rows[i] = items.Find(keys[i]), overlapping the lookups' cache misses
  // (and starting to load each found row's feature list).
  void FindItems(std::span<const std::string> keys, std::vector<uint32_t>* rows) const;
  // A hint that item `row` (kNoRow: nothing) is gathered soon.
  void PrefetchItem(uint32_t row) const;
  // Gathers item `row` (kNoRow: zeros) into lane `lane` of `block`, and
  // leaves in *rows `row` followed by the feature rows it added (for the
  // history match); `v` (width floats) is scratch.
  // `features`: the request's item features, null for the stored list.
  void GatherItem(uint32_t row, int lane, std::vector<uint32_t>* rows, float* v, float* block,
                  const std::vector<std::string>* features = nullptr) const;
  // Replaces ScoreBlock's y of each implicit task by the two towers' dot
  // product (see LearnerOptions::feedback).
  // match: null, or per task and lane (match[t * kScoreLanes + i]) the
  // item's Model::HistoryMatch logit, added to implicit tasks' y; own
  // (with match): per lane, whether the item is one of the user's history
  // items (which of Model::tower_weight's weights applies).
  void ImplicitScores(const UserSide& side, const float* block, const float* match, const bool* own,
                      float* y) const;
  // True when some task is implicit: its logit has the history match and
  // the recent popularity.
  bool NeedsMatch(const UserSide& side) const;
  // For every implicit task, the history match and the recent
  // popularity (`popularity`: Model::RecentPopularity) of an item (row,
  // feature rows) into match[t * kScoreLanes + lane], and into own[lane]
  // whether the item is one of the user's history items.
  void LaneMatch(const UserSide& side, uint32_t row, const uint32_t* f, size_t nf, float popularity,
                 int lane, float* match, bool* own) const;

  // `blend` with the weight of every task that has learned no event yet
  // set to 0 (all of them kept while no task has learned anything).
  Blend Effective(const Blend& blend) const;
  // The prediction of lane `lane` from ScoreBlock's y and the block's biases.
  Prediction FinishLane(const float* y, int lane, const UserSide& side, const float* block) const;
  // The best k of the items in blocks [begin, end) of `blocks` (item row of
  // lane i of block b: b * kScoreLanes + i + first_row, valid below
  // end_row), leaving out `excluded` (sorted rows); best first into *out.
  // feat_begin and feat_rows: the items' feature rows (those of row r at
  // feat_rows[feat_begin[r - first_row] ...]), for the history match;
  // popularity[r - first_row]: the item's Model::RecentPopularity.
  void TopKOfBlocks(const UserSide& side, const float* blocks, size_t begin, size_t end,
                    uint32_t first_row, uint32_t end_row, const uint32_t* feat_begin,
                    const uint32_t* feat_rows, const float* popularity, int k,
                    const std::vector<uint32_t>& excluded, const Blend& blend,
                    std::vector<ScoredItem>* out) const;

  const Model& m_;
  // Declared last: destroyed first, stopping its thread before anything it reads.
  std::unique_ptr<RecommendCache> recommend_cache_;
};

}  // namespace recstream::learner
