// Kafka edge of recstream: an embedded mock cluster, the event consumer, the
// dead-letter queue and an event producer. librdkafka stays in kafka.cc.
//
// Delivery semantics. The consumer never lets Kafka decide where to resume:
// the positions it reports (Positions()) are stored with the model by
// store/, and a restarted service seeds them back (SeedOffsets()) so the
// model and the offsets it has learned up to always match (effectively-once
// learning). Commits to Kafka (CommitAsync) exist only for monitoring and lag
// tooling; they are used to resume only for partitions without a seeded
// position (then `auto.offset.reset=earliest` applies if none is committed).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/offsets.h"
#include "common/status.h"
#include "ingest/options.h"
#include "ingest/ownership.h"
#include "ingest/parser.h"

// librdkafka's client and mock cluster handles (rdkafka.h, rdkafka_mock.h).
struct rd_kafka_s;
struct rd_kafka_mock_cluster_s;

namespace recstream::ingest {

struct MessageView;

struct RawMessage {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string key;
  std::string payload;
  // Message timestamp (producer create time or broker log-append time); -1 if none.
  int64_t timestamp_ms = -1;

  // A view of this message's bytes, valid while it lives.
  MessageView View() const;
};

// A message as EventConsumer::PollEach hands it over: views of librdkafka's
// own buffers, valid only during the visitor's call (no copy is made).
struct MessageView {
  std::string_view topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string_view key;
  std::string_view payload;
  // Message timestamp (producer create time or broker log-append time); -1 if none.
  int64_t timestamp_ms = -1;

  // A copy that owns its bytes.
  RawMessage ToRaw() const;
};

// An in-process Kafka cluster (librdkafka's mock cluster), listening on
// loopback. It serves real clients (consumer groups included) for as long as
// the object lives; the destructor shuts it down. Data is kept in memory.
class EmbeddedKafka {
 public:
  // Starts `num_brokers` brokers and creates the topics of `topics` (the
  // three event topics, the dead letters and the model topic) with
  // `partitions` partitions each.
  static Status Start(int num_brokers, int partitions, const TopicNames& topics,
                      std::unique_ptr<EmbeddedKafka>* out);
  ~EmbeddedKafka();
  EmbeddedKafka(const EmbeddedKafka&) = delete;
  EmbeddedKafka& operator=(const EmbeddedKafka&) = delete;

  // Comma-separated host:port list for `bootstrap.servers`.
  const std::string& bootstrap() const { return bootstrap_; }
  // Consumer properties for this cluster, to add to KafkaOptions::properties
  // (where a property is already set, the set value stays). The mock cluster
  // answers a fetch that finds no data only after fetch.wait.max.ms, even
  // when data arrives meanwhile (a real broker answers when it arrives): a
  // shorter wait than the consumer's default (10 ms) makes events reach the
  // learner sooner, at no cost in throughput (BENCHMARKS.md, freshness).
  static void AddConsumerProperties(std::map<std::string, std::string>* properties);
  // Creates one more topic. InvalidArgument if it cannot.
  Status CreateTopic(const std::string& topic, int partitions);
  // For fault-injection tests (rd_kafka_mock_* functions). Owned by this.
  rd_kafka_mock_cluster_s* mock_cluster() const { return mcluster_; }

 private:
  EmbeddedKafka() = default;
  ::rd_kafka_s* handle_ = nullptr;  // owner of the mock cluster
  ::rd_kafka_mock_cluster_s* mcluster_ = nullptr;
  std::string bootstrap_;
};

struct PartitionLag {
  std::string topic;
  int32_t partition = 0;
  // Next offset this consumer will deliver; -1 if not known yet.
  int64_t position = -1;
  // Last known end of the partition; -1 if not known yet.
  int64_t high_watermark = -1;
  // high_watermark - position, or -1 if either is unknown.
  int64_t lag = -1;
};

// This trainer's share of the event topics (see ingest/ownership.h).
struct AssignmentInfo {
  Ownership ownership;
  std::vector<TopicPartition> assigned;  // sorted
  // Partitions that were assigned or had a stored position but are no longer
  // in the topics' metadata (the topic was deleted or recreated smaller).
  std::vector<TopicPartition> missing;
  // While nothing is assigned: what the consumer waits for, for /readyz.
  std::string waiting_for;
};

// Consumes this trainer's partitions of the three event topics.
//
// Fixed ownership instead of a consumer group's rebalances: the consumer
// assigns itself (librdkafka assign) the partitions KafkaOptions::ownership
// gives it, read from the brokers' metadata at the first Poll and again every
// partition_refresh_ms, so partitions added later are picked up by their
// owner. Each starts at its seeded position, or where none is seeded at the
// group's committed offset, else at `auto.offset.reset` (earliest unless
// kafka.properties says otherwise). No group join, so a restart (or a crash)
// never waits for the previous member's session to time out. `group_id` is
// still the group that CommitAsync commits to, for lag tooling.
//
class EventConsumer {
 public:
  // Creates the consumer; its partitions are assigned during Poll().
  // InvalidArgument for a bad property (the message names it) or ownership.
  static Status Open(const KafkaOptions& options, std::unique_ptr<EventConsumer>* out);
  // Leaves the group (Close()) if not done yet.
  ~EventConsumer();
  EventConsumer(const EventConsumer&) = delete;
  EventConsumer& operator=(const EventConsumer&) = delete;

  // Positions restored from a checkpoint; call before the first Poll. A
  // partition assigned later starts at its seeded position. Seeded partitions
  // this trainer does not own are the caller's to refuse (ForeignPositions).
  void SeedOffsets(const OffsetMap& offsets);

  // Appends to *out up to `max_messages` messages: waits up to `timeout_ms`
  // for the first one, then takes whatever else is already fetched. Zero
  // messages is not an error. Transient errors (broker down, rebalance) are
  // counted and retried by librdkafka; only a fatal error is returned. Reads
  // the topics' metadata first when it is due (a blocking round trip to the
  // brokers, every partition_refresh_ms; every 500 ms while nothing is
  // assigned).
  // Every message returned counts as delivered in Positions().
  Status Poll(size_t max_messages, int timeout_ms, std::vector<RawMessage>* out);

  // Poll without copies: calls visit(message) for each message, in the
  // order Poll would append them, with views of librdkafka's buffers (valid
  // during the call only), and adds the number of messages to *count. Same
  // waiting, error handling and Positions() accounting as Poll; the
  // positions advance when PollEach returns. When `next` is given, it gets,
  // for each partition of this poll, the offset after its last message
  // (entries of other partitions stay). `visit` must not call back into
  // this consumer.
  template <typename Visit>
  Status PollEach(size_t max_messages, int timeout_ms, Visit&& visit, size_t* count,
                  OffsetMap* next = nullptr) {
    return PollVisit(max_messages, timeout_ms, &CallVisit<std::remove_reference_t<Visit>>, &visit,
                     count, next);
  }

  // Next offset per partition after the last delivered message (plus seeded
  // partitions not consumed since). The service learns each batch before
  // polling again, so this is also "learned up to".
  OffsetMap Positions() const;

  // Commits `offsets` to the group, asynchronously, for monitoring only.
  // Errors are counted, not returned.
  void CommitAsync(const OffsetMap& offsets);

  // True while this consumer owns at least one partition.
  bool HasAssignment() const;
  // The ownership, the partitions assigned and missing, and what is awaited.
  AssignmentInfo Assignment() const;

  // Per assigned partition, refreshed by Poll at most every ~500 ms.
  std::vector<PartitionLag> Lag() const;

  // Messages delivered by Poll since Open, and transient errors seen.
  uint64_t delivered() const;
  uint64_t errors() const;

  // Stops consuming and closes the client. Idempotent.
  Status Close();

 private:
  using VisitFn = void (*)(void* visit, const MessageView& message);
  template <typename Visit>
  static void CallVisit(void* visit, const MessageView& message) {
    (*static_cast<Visit*>(visit))(message);
  }
  Status PollVisit(size_t max_messages, int timeout_ms, VisitFn fn, void* visit, size_t* count,
                   OffsetMap* next);

  struct Impl;
  explicit EventConsumer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Produces rejected events to topics.dlq: the original bytes and key, with
// headers `reason`, `detail`, `source_topic`, `source_partition`,
// `source_offset`. Thread-compatible (one caller at a time).
class DeadLetterQueue {
 public:
  static Status Open(const KafkaOptions& options, std::unique_ptr<DeadLetterQueue>* out);
  // Flushes for up to 5 s.
  ~DeadLetterQueue();
  DeadLetterQueue(const DeadLetterQueue&) = delete;
  DeadLetterQueue& operator=(const DeadLetterQueue&) = delete;

  // Queues one dead letter. Never blocks for long: if the local queue stays
  // full the letter is dropped and counted as failed.
  void Send(const RawMessage& original, RejectReason reason, std::string_view detail);
  void Send(const MessageView& original, RejectReason reason, std::string_view detail);
  // Waits up to `timeout_ms` for queued letters; Unavailable if some remain.
  Status Flush(int timeout_ms);
  // Letters acknowledged by the broker / lost (produce or delivery failure).
  uint64_t sent() const;
  uint64_t failed() const;

 private:
  struct Impl;
  explicit DeadLetterQueue(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Sends events to the topic of their type, keyed by their user id, for the
// `produce` command and tests. Thread-compatible.
class EventProducer {
 public:
  // `properties` are extra librdkafka properties over the defaults (e.g. a
  // longer linger.ms for a bulk load); InvalidArgument for a bad one.
  static Status Open(const std::string& brokers, const TopicNames& topics,
                     std::unique_ptr<EventProducer>* out,
                     const std::map<std::string, std::string>& properties = {});
  // Flushes for up to 5 s.
  ~EventProducer();
  EventProducer(const EventProducer&) = delete;
  EventProducer& operator=(const EventProducer&) = delete;

  // Queues one message; waits (serving delivery reports) while the local
  // queue is full. IOError if librdkafka refuses it otherwise.
  Status SendRaw(const std::string& topic, std::string_view key, std::string_view payload);
  // Validates `json_line` with EventParser and sends the original bytes to the
  // topic of its type, keyed by the canonical user id. InvalidArgument
  // "<reason>: <detail>" if the event would be rejected (nothing is sent).
  Status SendEvent(std::string_view json_line, const ParserOptions& parser_options);
  // Waits up to `timeout_ms` for all queued messages; Unavailable if some remain.
  Status Flush(int timeout_ms);
  // Messages acknowledged by the broker / failed to deliver.
  uint64_t delivered() const;
  uint64_t failed() const;

 private:
  struct Impl;
  explicit EventProducer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::ingest
