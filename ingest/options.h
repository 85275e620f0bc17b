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
  // Extra librdkafka properties, passed through verbatim (kafka.properties.*).
  std::map<std::string, std::string> properties;
};

}  // namespace recstream::ingest
