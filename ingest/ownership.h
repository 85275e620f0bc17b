// Fixed partition ownership: which partitions of the event topics a trainer
// reads (interface: docs/interface.md, keys trainer.count and trainer.index).
//
// Trainer `index` of `count` owns partition p of every event topic when
// p % count == index. Ownership never changes while the partition count and
// trainer.count stay the same, so a restarted trainer needs no consumer-group
// rebalance: it assigns itself its partitions at once and resumes from the
// positions stored with its model. Producers key events by user, so each
// user's events, and the rows and history they build, stay with one trainer.
//
// Pure functions, no Kafka: EventConsumer applies them to the brokers'
// metadata.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/offsets.h"
#include "ingest/options.h"

namespace recstream::ingest {

// What to change in an assignment after a look at the topics' metadata.
struct AssignmentPlan {
  std::vector<TopicPartition> add;   // owned and present, not assigned yet
  std::vector<TopicPartition> gone;  // assigned or expected, but no longer present
};

// `partitions`: partition count per topic, only for topics whose metadata was
// read (a topic the brokers reported as unknown counts 0 partitions; a topic
// whose metadata could not be read is left out, and nothing of it changes).
// `assigned`: the partitions assigned now. `expected`: partitions with a
// stored position (they must exist unless they were removed). Both sorted.
AssignmentPlan PlanAssignment(const std::map<std::string, int>& partitions,
                              const std::vector<TopicPartition>& assigned,
                              const std::vector<TopicPartition>& expected, Ownership ownership);

// The partitions of `positions` this trainer does not own: a store written
// with another trainer.count or trainer.index. Empty when all are owned.
std::vector<TopicPartition> ForeignPositions(const OffsetMap& positions, Ownership ownership);

// "topic/partition, topic/partition, ..." (at most `max` names, then "...").
std::string PartitionNames(const std::vector<TopicPartition>& partitions, size_t max = 8);

}  // namespace recstream::ingest
