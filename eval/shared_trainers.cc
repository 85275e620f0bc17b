#include "eval/shared_trainers.h"

#include <vector>

namespace recstream::eval {
namespace {

template <typename Tables, typename Lists, typename Dense>
uint64_t Bytes(const Tables& tables, const Lists& lists, const Dense& dense) {
  uint64_t b = 0;
  for (const auto& t : tables) {
    for (const auto& k : t.keys) b += k.size() + 4;
    b += t.values.size() * sizeof(float);
  }
  for (const auto& l : lists)
    for (size_t i = 0; i < l.keys.size(); ++i) {
      b += l.keys[i].size() + 4;
      for (const auto& f : l.features[i]) b += f.size() + 4;
    }
  for (const auto& [name, values] : dense) b += name.size() + values.size() * sizeof(float);
  return b;
}

}  // namespace

uint64_t WireBytes(const learner::ModelChanges& c) {
  return Bytes(c.tables, c.feature_lists, c.dense);
}

uint64_t WireBytes(const learner::ModelSnapshot& s) {
  return Bytes(s.tables, s.feature_lists, s.dense);
}

Status ExchangeInProcess(std::span<learner::Learner* const> trainers, ExchangeBytes* bytes) {
  const int n = int(trainers.size());
  std::vector<std::vector<learner::ModelChanges>> to{size_t(n)};
  for (int i = 0; i < n; ++i) {
    learner::ModelChanges c;
    trainers[size_t(i)]->TakeChanges(&c);
    if (bytes) {
      bytes->rows += c.rows();
      bytes->sent += WireBytes(c);
    }
    learner::SplitByOwner(c, n, &to[size_t(i)]);
  }
  for (int owner = 0; owner < n; ++owner)
    for (int from = 0; from < n; ++from)
      if (from != owner)
        RECSTREAM_RETURN_IF_ERROR(trainers[size_t(owner)]->AddChanges(to[size_t(from)][size_t(owner)]));
  std::vector<learner::ModelSnapshot> published{size_t(n)};
  for (int i = 0; i < n; ++i) {
    learner::ModelChanges none;  // nothing was learned since the take above
    trainers[size_t(i)]->TakeChanges(&none, &published[size_t(i)]);
    if (bytes) bytes->followed += WireBytes(published[size_t(i)]) * uint64_t(n - 1);
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (i != j) RECSTREAM_RETURN_IF_ERROR(trainers[size_t(i)]->FollowOwners(published[size_t(j)], j));
  return Status::OK();
}

}  // namespace recstream::eval
