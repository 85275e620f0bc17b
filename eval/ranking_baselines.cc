#include "eval/ranking_baselines.h"

#include <array>
#include <cmath>
#include <deque>
#include <functional>
#include <unordered_map>

namespace recstream::eval {
namespace {

uint64_t Hash(std::string_view s) {
  // FNV-1a, then a finaliser: ids of one shape (i1, i2, ...) spread well.
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t h = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL);
  h ^= h >> 31;
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 29;
  return h;
}

// A count that decays by half every `half_life` steps of its clock, read
// and updated lazily.
struct Decayed {
  double value = 0;
  double at = 0;  // the clock when value was last brought up to date
  double Get(double now, double half_life) const {
    return value * std::exp2(-(now - at) / half_life);
  }
  void Add(double now, double half_life) {
    value = Get(now, half_life) + 1;
    at = now;
  }
};

struct ItemStat {
  double count = 0;
  Decayed decayed;
};

struct UserStat {
  double events = 0;                                                  // the user's clock
  std::unordered_map<uint64_t, double> items;                         // item -> events
  std::unordered_map<uint64_t, std::pair<double, Decayed>> features;  // plain, decayed
  std::deque<uint64_t> recent;                                        // latest items
};

using Score = std::array<double, 3>;  // compared lexicographically

}  // namespace

struct RankingBaselines::State {
  double events = 0;  // the stream's clock: positive events learned
  std::unordered_map<uint64_t, ItemStat> items;
  std::unordered_map<uint64_t, UserStat> users;
  std::unordered_map<uint64_t, double> cooccur;  // Mix(earlier, later) -> count
};

RankingBaselines::RankingBaselines(uint64_t seed)
    : state_(std::make_unique<State>()), seed_(seed) {}
RankingBaselines::~RankingBaselines() = default;

const std::vector<std::string_view>& RankingBaselines::Names() {
  static const std::vector<std::string_view> names = {"random",
                                                      "popularity",
                                                      "popularity_decayed",
                                                      "user_features",
                                                      "user_features_decayed",
                                                      "user_items",
                                                      "user_items_features",
                                                      "cooccurrence"};
  return names;
}

void RankingBaselines::Rank(const learner::Event& e, std::span<const std::string> items,
                            std::span<const std::vector<std::string>* const> features,
                            uint64_t query, std::vector<double>* ranks) const {
  const State& st = *state_;
  const size_t nb = Names().size();
  const auto user_it = st.users.find(Hash(e.user));
  const UserStat* user = user_it == st.users.end() ? nullptr : &user_it->second;
  std::vector<uint64_t> recent;
  if (user) recent.assign(user->recent.begin(), user->recent.end());
  std::vector<std::vector<Score>> scores(nb, std::vector<Score>(items.size()));
  for (size_t i = 0; i < items.size(); ++i) {
    const uint64_t item = Hash(items[i]);
    const auto it = st.items.find(item);
    const double pop = it == st.items.end() ? 0 : it->second.count;
    const double pop_decayed =
        it == st.items.end() ? 0 : it->second.decayed.Get(st.events, kPopularityHalfLife);
    double own = 0, feat = 0, feat_decayed = 0, co = 0;
    if (user) {
      if (auto o = user->items.find(item); o != user->items.end()) own = o->second;
      if (features[i] != nullptr) {
        for (const std::string& f : *features[i]) {
          auto fs = user->features.find(Hash(f));
          if (fs == user->features.end()) continue;
          feat += fs->second.first;
          feat_decayed += fs->second.second.Get(user->events, kUserHalfLife);
        }
      }
      for (uint64_t h : recent)
        if (auto c = st.cooccur.find(Mix(h, item)); c != st.cooccur.end()) co += c->second;
    }
    const double noise = double(Mix(Mix(seed_, query), item) >> 11) * 0x1.0p-53;
    scores[0][i] = {noise, 0, 0};
    scores[1][i] = {pop, 0, 0};
    scores[2][i] = {pop_decayed, 0, 0};
    scores[3][i] = {feat, pop, 0};
    scores[4][i] = {feat_decayed, pop_decayed, 0};
    scores[5][i] = {own, pop, 0};
    scores[6][i] = {own, feat_decayed, pop_decayed};
    scores[7][i] = {co, pop, 0};
  }
  ranks->assign(nb, 0.0);
  for (size_t b = 0; b < nb; ++b) {
    const Score& target = scores[b][0];
    double greater = 0, ties = 0;
    for (size_t i = 1; i < items.size(); ++i) {
      greater += scores[b][i] > target;
      ties += scores[b][i] == target;
    }
    (*ranks)[b] = greater + 0.5 * ties;
  }
}

void RankingBaselines::Learn(const learner::Event& e) {
  if (e.task == learner::Task::kRating || e.label <= 0.5f) return;
  State& st = *state_;
  const uint64_t item = Hash(e.item);
  st.events += 1;
  ItemStat& is = st.items[item];
  is.count += 1;
  is.decayed.Add(st.events, kPopularityHalfLife);
  UserStat& us = st.users[Hash(e.user)];
  us.events += 1;
  us.items[item] += 1;
  for (const std::string& f : e.item_features) {
    auto& [plain, decayed] = us.features[Hash(f)];
    plain += 1;
    decayed.Add(us.events, kUserHalfLife);
  }
  for (uint64_t h : us.recent)
    if (h != item) st.cooccur[Mix(h, item)] += 1;
  if (!us.recent.empty() && us.recent.back() == item) return;
  us.recent.push_back(item);
  if (us.recent.size() > size_t(kCoWindow)) us.recent.pop_front();
}

}  // namespace recstream::eval
