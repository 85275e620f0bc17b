// Options of ingest/: event validation and Kafka. Plain data, cheap to include.
#pragma once

#include <cstddef>
#include <map>
#include <string>

namespace recstream::ingest {

struct ParserOptions {
  // Ratings outside [rating_min, rating_max] are rejected.
  float rating_min = 1.0f;
  float rating_max = 5.0f;
  // Longest user or item id, in bytes.
  size_t max_id_bytes = 256;
  // Most user_features (and, separately, item_features) per event.
  size_t max_features = 64;
  // Longest accepted message; longer ones are rejected unparsed.
  size_t max_event_bytes = 1 << 20;

  bool operator==(const ParserOptions&) const = default;
};

struct TopicNames {
  std::string click = "recstream.click";
  std::string purchase = "recstream.purchase";
  std::string rating = "recstream.rating";
  std::string dlq = "recstream.dlq";
  // Where trainers publish the model for replicas (replicate/), keyed by
  // row; meant to be compacted.
  std::string model = "recstream.model";
  // Several trainers on one model: each trainer's changes to rows another
  // trainer owns, sent to that owner's partition (replicate/exchange.h);
  // at least trainer.count partitions.
  std::string updates = "recstream.model.updates";
};

// Fixed partition ownership (ingest/ownership.h): trainer `index` of `count`
// reads the partitions p with p % count == index of every event topic.
struct Ownership {
  int count = 1;  // trainers in all, >= 1 (trainer.count)
  int index = 0;  // this trainer, in [0, count) (trainer.index)
  bool Owns(int partition) const { return partition >= 0 && partition % count == index; }
};

struct KafkaOptions {
  // Bootstrap servers, comma separated. Empty: the service starts an
  // embedded mock cluster and fills this in.
  std::string brokers;
  std::string group_id = "recstream";
  TopicNames topics;
  // Partitions per topic of the embedded cluster.
  int embedded_partitions = 3;
  // Most messages handed to the learner per poll.
  int max_batch = 4096;
  // Longest wait for the first message of a batch.
  int poll_timeout_ms = 20;
  // Which partitions this trainer reads; no consumer-group rebalancing.
  Ownership ownership;
  // How often the event topics' partition counts are read again, so that
  // partitions added while running are picked up by their owner (ms).
  int partition_refresh_ms = 5000;
  // Extra librdkafka properties, passed through verbatim (kafka.properties.*).
  std::map<std::string, std::string> properties;
};

}  // namespace recstream::ingest
