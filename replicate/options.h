// Options of replicate/: the model topic's publisher (in the trainer) and
// follower (in a replica). Plain data, cheap to include.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace recstream::replicate {

// The configuration keys of replication (config/, docs/interface.md).
struct ReplicationOptions {
  // A trainer publishes what changed every interval_ms (replicate.interval_ms);
  // 0: it does not publish.
  int interval_ms = 100;
  // How long a version may take to be acknowledged (replicate.timeout_ms).
  int timeout_ms = 10000;
  // The address replicas fetch this trainer's snapshot from
  // (replicate.advertise_url); empty: http://<serve.listen>, with a
  // wildcard host replaced by this machine's host name.
  std::string advertise_url;
  // A replica's snapshot source (replica.snapshot_url); empty: the one the
  // trainer announces.
  std::string snapshot_url;
  // Several trainers on one model (trainer.exchange_interval_ms): with
  // trainer.count > 1, each trainer sends its changes to the rows' owners
  // and follows the others' rows every this many ms; 0: trainers do not
  // share (each learns a model of its own).
  int exchange_interval_ms = 10;
};

struct PublisherOptions {
  std::string brokers;
  std::string topic = "recstream.model";
  // The trainer's own partition of the topic (trainer.index): a trainer's
  // versions stay in order in one partition.
  int partition = 0;
  // Extra librdkafka properties (kafka.properties.*), over our defaults.
  std::map<std::string, std::string> properties;
  // How long a version may take to be acknowledged before the publish
  // counts as failed (the trainer then republishes everything later).
  int delivery_timeout_ms = 10000;
  // Announced in every commit: where this trainer serves its stored model
  // (GET <url>/v1/snapshot). Empty: nowhere.
  std::string snapshot_url;
  // Announced in every commit: the trainer's model settings ("key=value"
  // lines), from which a replica builds the same learner.
  std::string model_settings;
};

struct FollowerOptions {
  std::string brokers;
  std::string topic = "recstream.model";
  std::map<std::string, std::string> properties;
  // A trainer's snapshot address (replica.snapshot_url); empty: the one
  // its commits announce.
  std::string snapshot_url;
  // Bytes per snapshot page fetched over HTTP.
  size_t page_bytes = 8 << 20;
  // While bootstrapping (not ready yet), records are applied in blocks of
  // this many instead of whole versions, to bound memory.
  size_t bootstrap_block_records = 1 << 20;
};

}  // namespace recstream::replicate
