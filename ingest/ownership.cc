#include "ingest/ownership.h"

#include <algorithm>

namespace recstream::ingest {

AssignmentPlan PlanAssignment(const std::map<std::string, int>& partitions,
                              const std::vector<TopicPartition>& assigned,
                              const std::vector<TopicPartition>& expected, Ownership ownership) {
  AssignmentPlan plan;
  for (const auto& [topic, count] : partitions) {
    for (int32_t p = ownership.index; p < count; p += ownership.count) {
      TopicPartition tp{topic, p};
      if (!std::binary_search(assigned.begin(), assigned.end(), tp)) plan.add.push_back(tp);
    }
  }
  auto missing = [&](const TopicPartition& tp) {
    auto it = partitions.find(tp.topic);
    return it != partitions.end() && tp.partition >= it->second;
  };
  for (const std::vector<TopicPartition>* list : {&assigned, &expected}) {
    for (const TopicPartition& tp : *list) {
      if (missing(tp)) plan.gone.push_back(tp);
    }
  }
  std::sort(plan.gone.begin(), plan.gone.end());
  plan.gone.erase(std::unique(plan.gone.begin(), plan.gone.end()), plan.gone.end());
  return plan;
}

std::vector<TopicPartition> ForeignPositions(const OffsetMap& positions, Ownership ownership) {
  std::vector<TopicPartition> foreign;
  for (const auto& [tp, offset] : positions) {
    if (!ownership.Owns(tp.partition)) foreign.push_back(tp);
  }
  return foreign;
}

std::string PartitionNames(const std::vector<TopicPartition>& partitions, size_t max) {
  std::string out;
  for (size_t i = 0; i < partitions.size(); ++i) {
    if (i == max) return out + ", ...";
    if (i > 0) out += ", ";
    out += partitions[i].topic + "/" + std::to_string(partitions[i].partition);
  }
  return out;
}

}  // namespace recstream::ingest
