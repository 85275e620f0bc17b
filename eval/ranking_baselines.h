// RankingBaselines: the simple rankers that `recstream eval --ranking K
// --baselines` runs beside the model (docs/interface.md section 4). Each
// ranks the same event's item among the same candidates, with the same
// knowledge of features (the event's own for its item, last seen or
// catalog features for the others), and learns from the event only after
// ranking it, as the model does.
//
//  random                  a uniform random score per candidate
//  popularity              the item's positive events so far
//  popularity_decayed      the same, each event's weight halving every
//                          kPopularityHalfLife events of the stream
//  user_features           the user's earlier positive events that share
//                          a feature with the candidate (its category:
//                          "how often did this user look at this
//                          category"), ties by popularity
//  user_features_decayed   the same, each of the user's events halving
//                          every kUserHalfLife later events of the user,
//                          ties by decayed popularity
//  user_items              the user's earlier positive events on the
//                          candidate itself (repeat views), ties by
//                          popularity
//  user_items_features     user_items, ties by user_features_decayed, then
//                          by decayed popularity
//  cooccurrence            how often the candidate followed any of the
//                          user's last kCoWindow items in other users'
//                          sequences, ties by popularity
//
// Positive click and purchase events are what the baselines learn; ratings
// and label-0 events are ignored. Ids are keyed by 64-bit hashes.
//
// Thread safety: Rank is const and may run concurrently with other Rank
// calls; Learn must not run concurrently with anything.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "learner/event.h"

namespace recstream::eval {

class RankingBaselines {
 public:
  static constexpr double kPopularityHalfLife = 10000;  // stream events
  static constexpr double kUserHalfLife = 5;            // the user's events
  static constexpr int kCoWindow = 5;                   // the user's latest items

  explicit RankingBaselines(uint64_t seed);
  ~RankingBaselines();
  RankingBaselines(const RankingBaselines&) = delete;
  RankingBaselines& operator=(const RankingBaselines&) = delete;

  // The baselines' names, in the order of Rank's output.
  static const std::vector<std::string_view>& Names();

  // For each baseline, the rank of items[0] (the event's item) among
  // items[1..]: the number of candidates scored higher plus half the ties,
  // into (*ranks)[b]. features[i]: what is known of item i's features (null:
  // none). `query` seeds the random baseline (the same query, the same
  // draw).
  void Rank(const learner::Event& e, std::span<const std::string> items,
            std::span<const std::vector<std::string>* const> features, uint64_t query,
            std::vector<double>* ranks) const;
  // Learns event e (after it was ranked).
  void Learn(const learner::Event& e);

 private:
  struct State;
  std::unique_ptr<State> state_;
  const uint64_t seed_;
};

}  // namespace recstream::eval
