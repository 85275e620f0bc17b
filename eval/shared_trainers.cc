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

Status ExchangeInProcess(std::span<learner::Learner* const> trainers, ExchangeBytes* bytes,
                         bool follow) {
  std::vector<learner::ModelChanges> taken;
  std::vector<learner::ModelSnapshot> published;
  RECSTREAM_RETURN_IF_ERROR(learner::ExchangeDirectly(trainers, &taken, &published, follow));
  if (bytes) {
    const uint64_t readers = trainers.size() - 1;
    for (const learner::ModelChanges& c : taken) {
      bytes->rows += c.rows();
      bytes->sent += WireBytes(c);
    }
    for (const learner::ModelSnapshot& p : published) bytes->followed += WireBytes(p) * readers;
  }
  return Status::OK();
}

}  // namespace recstream::eval
