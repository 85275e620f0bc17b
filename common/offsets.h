// Kafka positions shared by ingest/ (which consumes), store/ (which persists
// them with the model) and app/ (which wires the two).
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <string>

namespace recstream {

struct TopicPartition {
  std::string topic;
  int32_t partition = 0;
  auto operator<=>(const TopicPartition&) const = default;
};

// Next offset to consume per partition: every message before it has been
// learned (and, once stored in a checkpoint, is covered by the stored model).
using OffsetMap = std::map<TopicPartition, int64_t>;

}  // namespace recstream
