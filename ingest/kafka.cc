#include "ingest/kafka.h"

#include <librdkafka/rdkafka.h>
// rdkafka_mock.h needs rdkafka.h first.
#include <librdkafka/rdkafka_mock.h>
#include <librdkafka/rdkafkacpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

namespace recstream::ingest {

namespace {

using Clock = std::chrono::steady_clock;

// Forwards librdkafka's log lines to spdlog.
void LogLibrdkafka(int level, const std::string& fac, const std::string& msg) {
  if (level <= 3) {
    spdlog::error("kafka {}: {}", fac, msg);
  } else if (level <= 4) {
    spdlog::warn("kafka {}: {}", fac, msg);
  } else if (level <= 6) {
    spdlog::info("kafka {}: {}", fac, msg);
  } else {
    spdlog::debug("kafka {}: {}", fac, msg);
  }
}

// The mock cluster's own client has no bootstrap.servers and says so at
// NOTICE level; only its warnings and errors are worth showing.
void MockLogCb(const rd_kafka_t*, int level, const char* fac, const char* buf) {
  LogLibrdkafka(level <= 4 ? level : 7, fac, buf);
}

Status SetConf(RdKafka::Conf* conf, const std::string& key, const std::string& value) {
  std::string err;
  if (conf->set(key, value, err) != RdKafka::Conf::CONF_OK) {
    return Status::InvalidArgument("kafka property " + key + "=" + value + ": " + err);
  }
  return Status::OK();
}

template <typename Callback>
Status SetCallback(RdKafka::Conf* conf, const std::string& key, Callback* cb) {
  std::string err;
  if (conf->set(key, cb, err) != RdKafka::Conf::CONF_OK) {
    return Status::Internal("kafka " + key + ": " + err);
  }
  return Status::OK();
}

// Our defaults first, then the user's properties, which win.
Status ApplyConf(RdKafka::Conf* conf,
                 const std::vector<std::pair<std::string, std::string>>& defaults,
                 const std::map<std::string, std::string>& properties) {
  for (const auto& [k, v] : defaults) RECSTREAM_RETURN_IF_ERROR(SetConf(conf, k, v));
  for (const auto& [k, v] : properties) RECSTREAM_RETURN_IF_ERROR(SetConf(conf, k, v));
  return Status::OK();
}

// Logs librdkafka events; counts errors; remembers a fatal one.
class EventLogger : public RdKafka::EventCb {
 public:
  void event_cb(RdKafka::Event& event) override {
    switch (event.type()) {
      case RdKafka::Event::EVENT_ERROR:
        if (event.fatal()) {
          fatal_.store(true);
          spdlog::error("kafka fatal error: {}", event.str());
        } else {
          errors_.fetch_add(1, std::memory_order_relaxed);
          // Transient (broker down, transport): librdkafka retries by itself.
          spdlog::warn("kafka error: {} ({})", event.str(), RdKafka::err2str(event.err()));
        }
        break;
      case RdKafka::Event::EVENT_LOG:
        // FAIL lines repeat what the EVENT_ERROR above already reported.
        // CONFWARN only says that a kafka.properties entry (given to every
        // client) does not apply to this kind of client.
        LogLibrdkafka(event.fac() == "FAIL" || event.fac() == "CONFWARN" ? 7 : event.severity(),
                      event.fac(), event.str());
        break;
      default:
        break;
    }
  }
  uint64_t errors() const { return errors_.load(std::memory_order_relaxed); }
  void CountError() { errors_.fetch_add(1, std::memory_order_relaxed); }
  bool fatal() const { return fatal_.load(); }

 private:
  std::atomic<uint64_t> errors_{0};
  std::atomic<bool> fatal_{false};
};

// A producer with delivery counting, shared by DeadLetterQueue and
// EventProducer.
class ProducerCore : public RdKafka::DeliveryReportCb {
 public:
  ~ProducerCore() {
    if (producer_ != nullptr) {
      producer_->flush(5000);
      if (producer_->outq_len() > 0) {
        spdlog::warn("kafka producer closing with {} messages undelivered", producer_->outq_len());
      }
    }
  }

  Status Open(const std::string& brokers, const std::map<std::string, std::string>& properties) {
    if (brokers.empty()) return Status::InvalidArgument("kafka.brokers is empty");
    std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
    RECSTREAM_RETURN_IF_ERROR(ApplyConf(conf.get(),
                                        {
                                            {"bootstrap.servers", brokers},
                                            {"client.id", "recstream"},
                                            // Batch for throughput, but ship within 5 ms.
                                            {"linger.ms", "5"},
                                            {"batch.num.messages", "10000"},
                                            {"queue.buffering.max.messages", "500000"},
                                            {"queue.buffering.max.kbytes", "524288"},
                                            {"message.timeout.ms", "60000"},
                                        },
                                        properties));
    RECSTREAM_RETURN_IF_ERROR(
        SetCallback(conf.get(), "dr_cb", static_cast<RdKafka::DeliveryReportCb*>(this)));
    RECSTREAM_RETURN_IF_ERROR(
        SetCallback(conf.get(), "event_cb", static_cast<RdKafka::EventCb*>(&logger_)));
    std::string err;
    producer_.reset(RdKafka::Producer::create(conf.get(), err));
    if (producer_ == nullptr) return Status::InvalidArgument("kafka producer: " + err);
    return Status::OK();
  }

  // Produces a copy of key and payload; on success librdkafka owns `headers`
  // (may be null), on failure it is deleted here. Waits up to `max_wait_ms`
  // while the local queue is full.
  Status Produce(const std::string& topic, std::string_view key, std::string_view payload,
                 RdKafka::Headers* headers, int max_wait_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(max_wait_ms);
    while (true) {
      RdKafka::ErrorCode err =
          producer_->produce(topic, RdKafka::Topic::PARTITION_UA, RdKafka::Producer::RK_MSG_COPY,
                             const_cast<char*>(payload.data()), payload.size(),
                             key.empty() ? nullptr : key.data(), key.size(), 0, headers, nullptr);
      if (err == RdKafka::ERR_NO_ERROR) {
        producer_->poll(0);  // serve delivery reports
        return Status::OK();
      }
      if (err == RdKafka::ERR__QUEUE_FULL && Clock::now() < deadline) {
        producer_->poll(20);
        continue;
      }
      delete headers;
      failed_.fetch_add(1, std::memory_order_relaxed);
      if (err == RdKafka::ERR__QUEUE_FULL) {
        return Status::Unavailable("kafka producer queue full for " + topic);
      }
      return Status::IOError("kafka produce to " + topic + ": " + RdKafka::err2str(err));
    }
  }

  Status Flush(int timeout_ms) {
    producer_->flush(timeout_ms);
    int left = producer_->outq_len();
    if (left > 0) {
      return Status::Unavailable(std::to_string(left) + " kafka messages not yet delivered");
    }
    return Status::OK();
  }

  void dr_cb(RdKafka::Message& message) override {
    if (message.err() == RdKafka::ERR_NO_ERROR) {
      delivered_.fetch_add(1, std::memory_order_relaxed);
    } else {
      failed_.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn("kafka delivery to {} failed: {}", message.topic_name(), message.errstr());
    }
  }

  uint64_t delivered() const { return delivered_.load(std::memory_order_relaxed); }
  uint64_t failed() const { return failed_.load(std::memory_order_relaxed); }

 private:
  EventLogger logger_;
  std::unique_ptr<RdKafka::Producer> producer_;
  std::atomic<uint64_t> delivered_{0};
  std::atomic<uint64_t> failed_{0};
};

}  // namespace

// ---------------------------------------------------------------- EmbeddedKafka

void EmbeddedKafka::AddConsumerProperties(std::map<std::string, std::string>* properties) {
  properties->emplace("fetch.wait.max.ms", "2");
}

Status EmbeddedKafka::Start(int num_brokers, int partitions, const TopicNames& topics,
                            std::unique_ptr<EmbeddedKafka>* out) {
  if (num_brokers < 1) return Status::InvalidArgument("embedded kafka needs at least 1 broker");
  if (partitions < 1) return Status::InvalidArgument("embedded kafka needs at least 1 partition");
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, MockLogCb);
  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Status::Internal(std::string("embedded kafka: ") + errstr);
  }
  std::unique_ptr<EmbeddedKafka> kafka(new EmbeddedKafka());
  kafka->handle_ = rk;
  kafka->mcluster_ = rd_kafka_mock_cluster_new(rk, num_brokers);
  if (kafka->mcluster_ == nullptr) return Status::IOError("embedded kafka: cannot start brokers");
  kafka->bootstrap_ = rd_kafka_mock_cluster_bootstraps(kafka->mcluster_);
  for (const std::string* t :
       {&topics.click, &topics.purchase, &topics.rating, &topics.dlq, &topics.model,
        &topics.updates}) {
    RECSTREAM_RETURN_IF_ERROR(kafka->CreateTopic(*t, partitions));
  }
  *out = std::move(kafka);
  return Status::OK();
}

Status EmbeddedKafka::CreateTopic(const std::string& topic, int partitions) {
  // Replicas only matter for follower fetching, which we don't use.
  const int replication = 1;
  rd_kafka_resp_err_t err =
      rd_kafka_mock_topic_create(mcluster_, topic.c_str(), partitions, replication);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::InvalidArgument("embedded kafka: create topic " + topic + ": " +
                                   rd_kafka_err2str(err));
  }
  return Status::OK();
}

EmbeddedKafka::~EmbeddedKafka() {
  if (mcluster_ != nullptr) rd_kafka_mock_cluster_destroy(mcluster_);
  if (handle_ != nullptr) rd_kafka_destroy(handle_);
}

// ---------------------------------------------------------------- EventConsumer

struct EventConsumer::Impl : public RdKafka::OffsetCommitCb {
  KafkaOptions options;
  EventLogger logger;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer;
  bool closed = false;  // only touched by the ingest thread
  Clock::time_point next_lag_refresh{};
  Clock::time_point next_metadata{};  // ingest thread only
  std::atomic<bool> has_assignment{false};
  std::atomic<uint64_t> delivered{0};

  mutable std::mutex mu;
  OffsetMap positions;                  // guarded by mu
  std::vector<PartitionLag> lag;        // guarded by mu
  std::vector<TopicPartition> assigned;  // sorted; guarded by mu
  std::vector<TopicPartition> missing;   // sorted; guarded by mu
  std::string waiting_for = "the event topics' metadata (no poll yet)";  // guarded by mu

  // Reads the event topics' partition counts: 0 for a topic the brokers do
  // not know; a topic whose metadata could not be read is left out.
  std::map<std::string, int> ReadPartitionCounts(int timeout_ms, std::string* error) {
    std::map<std::string, int> counts;
    const rd_kafka_metadata_t* md = nullptr;
    // All topics: a request that names no topic never makes a broker with
    // auto.create.topics.enable create one (the mock cluster would).
    rd_kafka_resp_err_t err = rd_kafka_metadata(consumer->c_ptr(), 1, nullptr, &md, timeout_ms);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      *error = std::string("no metadata from ") + options.brokers + ": " + rd_kafka_err2str(err);
      return counts;
    }
    for (const std::string* topic :
         {&options.topics.click, &options.topics.purchase, &options.topics.rating}) {
      const std::string& name = *topic;
      counts[name] = 0;  // absent from the list of all topics: unknown
      for (int i = 0; i < md->topic_cnt; ++i) {
        const rd_kafka_metadata_topic_t& mt = md->topics[i];
        if (name != mt.topic) continue;
        if (mt.err == RD_KAFKA_RESP_ERR_NO_ERROR) {
          counts[name] = mt.partition_cnt;
        } else if (mt.err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
          counts.erase(name);  // not readable now: change nothing of it
          *error = "topic " + name + ": " + rd_kafka_err2str(mt.err);
        }
      }
    }
    rd_kafka_metadata_destroy(md);
    return counts;
  }

  // Assigns the owned partitions not assigned yet and drops the ones gone.
  // Ingest thread only.
  void RefreshAssignment() {
    std::string error;
    std::map<std::string, int> counts = ReadPartitionCounts(1000, &error);
    std::vector<TopicPartition> now, expected;
    {
      std::lock_guard<std::mutex> lock(mu);
      now = assigned;
      for (const auto& [tp, offset] : positions) expected.push_back(tp);
    }
    AssignmentPlan plan = PlanAssignment(counts, now, expected, options.ownership);
    std::vector<TopicPartition> dropped;
    for (const TopicPartition& tp : plan.gone) {
      if (std::binary_search(now.begin(), now.end(), tp)) dropped.push_back(tp);
    }
    if (!plan.add.empty()) Assign(plan.add, /*add=*/true);
    if (!dropped.empty()) Assign(dropped, /*add=*/false);
    std::lock_guard<std::mutex> lock(mu);
    for (const TopicPartition& tp : plan.add) assigned.push_back(tp);
    for (const TopicPartition& tp : dropped) std::erase(assigned, tp);
    std::sort(assigned.begin(), assigned.end());
    std::vector<TopicPartition> newly_missing;
    for (const TopicPartition& tp : plan.gone) {
      if (!std::binary_search(missing.begin(), missing.end(), tp)) newly_missing.push_back(tp);
    }
    if (!newly_missing.empty()) {
      spdlog::warn(
          "kafka: partitions no longer in the topics' metadata (deleted or recreated with fewer "
          "partitions): {}; their stored positions are kept",
          PartitionNames(newly_missing));
      missing.insert(missing.end(), newly_missing.begin(), newly_missing.end());
      std::sort(missing.begin(), missing.end());
    }
    if (!plan.add.empty()) {
      spdlog::info("kafka: trainer {} of {} assigned itself {}", options.ownership.index,
                   options.ownership.count, PartitionNames(plan.add, 64));
      next_lag_refresh = Clock::now();
    }
    has_assignment.store(!assigned.empty());
    if (!assigned.empty()) {
      waiting_for.clear();
    } else if (!error.empty()) {
      waiting_for = "the event topics' partitions: " + error;
    } else {
      std::string sizes;
      for (const auto& [topic, n] : counts) {
        sizes += (sizes.empty() ? "" : ", ") + topic + " has " + std::to_string(n);
      }
      waiting_for = "a partition owned by trainer.index " +
                    std::to_string(options.ownership.index) + " of trainer.count " +
                    std::to_string(options.ownership.count) + " (" + sizes + ")";
    }
  }

  // librdkafka incremental (un)assignment, outside any rebalance.
  void Assign(const std::vector<TopicPartition>& parts, bool add) {
    rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(int(parts.size()));
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const TopicPartition& tp : parts) {
        rd_kafka_topic_partition_t* p =
            rd_kafka_topic_partition_list_add(list, tp.topic.c_str(), tp.partition);
        // A position we know (seeded from the checkpoint or consumed before)
        // wins over the group's committed offset.
        auto it = positions.find(tp);
        p->offset = it != positions.end() ? it->second : RD_KAFKA_OFFSET_STORED;
      }
    }
    rd_kafka_error_t* error = add ? rd_kafka_incremental_assign(consumer->c_ptr(), list)
                                  : rd_kafka_incremental_unassign(consumer->c_ptr(), list);
    rd_kafka_topic_partition_list_destroy(list);
    if (error != nullptr) {
      logger.CountError();
      spdlog::error("kafka {} failed: {}", add ? "assign" : "unassign", rd_kafka_error_string(error));
      rd_kafka_error_destroy(error);
    }
  }

  void offset_commit_cb(RdKafka::ErrorCode err,
                        std::vector<RdKafka::TopicPartition*>& offsets) override {
    if (err != RdKafka::ERR_NO_ERROR && err != RdKafka::ERR__NO_OFFSET) {
      logger.CountError();
      spdlog::debug("kafka offset commit failed: {}", RdKafka::err2str(err));
    }
  }

  void RefreshLag() {
    std::vector<RdKafka::TopicPartition*> parts;
    if (consumer->assignment(parts) != RdKafka::ERR_NO_ERROR) return;
    std::vector<PartitionLag> fresh;
    fresh.reserve(parts.size());
    for (RdKafka::TopicPartition* p : parts) {
      PartitionLag l;
      l.topic = p->topic();
      l.partition = p->partition();
      int64_t low = -1, high = -1;
      // Cached from fetch responses: no network round trip.
      if (consumer->get_watermark_offsets(l.topic, l.partition, &low, &high) ==
              RdKafka::ERR_NO_ERROR &&
          high >= 0) {
        l.high_watermark = high;
      }
      fresh.push_back(std::move(l));
    }
    RdKafka::TopicPartition::destroy(parts);
    std::lock_guard<std::mutex> lock(mu);
    for (PartitionLag& l : fresh) {
      auto it = positions.find(TopicPartition{l.topic, l.partition});
      if (it != positions.end()) l.position = it->second;
      if (l.position >= 0 && l.high_watermark >= 0) {
        l.lag = std::max<int64_t>(0, l.high_watermark - l.position);
      }
    }
    lag = std::move(fresh);
  }

  // PollVisit's partitions in delivery order and the offset after each
  // one's last message; positions are updated from it at the end of the
  // poll. The iterators stay valid: positions only ever grows.
  std::vector<std::pair<OffsetMap::iterator, int64_t>> runs;
};

EventConsumer::EventConsumer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

EventConsumer::~EventConsumer() {
  if (impl_ != nullptr && impl_->consumer != nullptr) {
    Status s = Close();
    if (!s.ok()) spdlog::warn("kafka consumer close: {}", s.ToString());
  }
}

Status EventConsumer::Open(const KafkaOptions& options, std::unique_ptr<EventConsumer>* out) {
  if (options.brokers.empty()) return Status::InvalidArgument("kafka.brokers is empty");
  if (options.group_id.empty()) return Status::InvalidArgument("kafka.group_id is empty");
  if (options.ownership.count < 1 || options.ownership.index < 0 ||
      options.ownership.index >= options.ownership.count) {
    return Status::InvalidArgument("trainer.index must be in [0, trainer.count)");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  RECSTREAM_RETURN_IF_ERROR(ApplyConf(conf.get(),
                                      {
                                          {"bootstrap.servers", options.brokers},
                                          {"group.id", options.group_id},
                                          {"client.id", "recstream"},
                                          // The store is the source of truth.
                                          {"enable.auto.commit", "false"},
                                          {"enable.auto.offset.store", "false"},
                                          {"auto.offset.reset", "earliest"},
                                          // Low latency: don't let the broker sit on fetches.
                                          {"fetch.wait.max.ms", "10"},
                                          {"fetch.error.backoff.ms", "50"},
                                          // Throughput on a backlog: prefetch deep and
                                          // fetch 4 MiB per partition, so that the next
                                          // batch is ready whenever training wants it.
                                          // The prefetch is bounded by
                                          // queued.max.messages.kbytes, and
                                          // when it is full librdkafka 2.0 stops fetching
                                          // for a fixed second (librdkafka issue #2879;
                                          // fetch.queue.backoff.ms came later): the bound
                                          // must hold more than a second of learning, or
                                          // training starves for up to a second each
                                          // time. 256 MiB holds ~1.6M events of 160
                                          // bytes; the default 64 MiB holds less.
                                          {"max.partition.fetch.bytes", "4194304"},
                                          // A fetch response is received into one
                                          // buffer; 16 MiB (instead of 50) keeps it
                                          // below the size app::TuneMalloc lets
                                          // malloc reuse instead of mapping anew.
                                          {"fetch.max.bytes", "16777216"},
                                          {"queued.min.messages", "500000"},
                                          {"queued.max.messages.kbytes", "262144"},
                                          {"enable.partition.eof", "false"},
                                      },
                                      options.properties));
  RECSTREAM_RETURN_IF_ERROR(SetCallback(conf.get(), "offset_commit_cb",
                                        static_cast<RdKafka::OffsetCommitCb*>(impl.get())));
  RECSTREAM_RETURN_IF_ERROR(
      SetCallback(conf.get(), "event_cb", static_cast<RdKafka::EventCb*>(&impl->logger)));
  std::string err;
  impl->consumer.reset(RdKafka::KafkaConsumer::create(conf.get(), err));
  if (impl->consumer == nullptr) return Status::InvalidArgument("kafka consumer: " + err);
  out->reset(new EventConsumer(std::move(impl)));
  return Status::OK();
}

void EventConsumer::SeedOffsets(const OffsetMap& offsets) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const auto& [tp, offset] : offsets) impl_->positions[tp] = offset;
}

MessageView RawMessage::View() const {
  return MessageView{topic, partition, offset, key, payload, timestamp_ms};
}

RawMessage MessageView::ToRaw() const {
  RawMessage m;
  m.topic = std::string(topic);
  m.partition = partition;
  m.offset = offset;
  m.key = std::string(key);
  m.payload = std::string(payload);
  m.timestamp_ms = timestamp_ms;
  return m;
}

Status EventConsumer::Poll(size_t max_messages, int timeout_ms, std::vector<RawMessage>* out) {
  size_t count = 0;
  return PollEach(
      max_messages, timeout_ms, [out](const MessageView& m) { out->push_back(m.ToRaw()); }, &count);
}

Status EventConsumer::PollVisit(size_t max_messages, int timeout_ms, VisitFn fn, void* visit,
                                size_t* count, OffsetMap* next) {
  Impl& d = *impl_;
  if (d.closed) return Status::Internal("kafka consumer is closed");
  // The C API straight away: the C++ wrapper allocates a Message object
  // and copies the topic name into a std::string for every message.
  if (Clock::now() >= d.next_metadata) {
    d.RefreshAssignment();
    const int refresh_ms = d.has_assignment.load()
                               ? std::max(1, d.options.partition_refresh_ms)
                               : std::min(500, std::max(1, d.options.partition_refresh_ms));
    d.next_metadata = Clock::now() + std::chrono::milliseconds(refresh_ms);
  }
  rd_kafka_t* rk = d.consumer->c_ptr();
  size_t taken = 0;
  const auto deadline = Clock::now() + std::chrono::milliseconds(std::max(0, timeout_ms));
  Status status;
  d.runs.clear();
  while (taken < max_messages) {
    int wait_ms = 0;
    if (taken == 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      wait_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    rd_kafka_message_t* rkm = rd_kafka_consumer_poll(rk, wait_ms);
    if (rkm == nullptr) {
      // Nothing (more) fetched: done, unless still waiting for the first.
      if (taken > 0 || wait_ms == 0) break;
      continue;
    }
    struct Destroy {
      rd_kafka_message_t* m;
      ~Destroy() { rd_kafka_message_destroy(m); }
    } destroy{rkm};
    const rd_kafka_resp_err_t err = rkm->err;
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      MessageView m;
      m.topic = rd_kafka_topic_name(rkm->rkt);
      m.partition = rkm->partition;
      m.offset = rkm->offset;
      if (rkm->key != nullptr) m.key = {static_cast<const char*>(rkm->key), rkm->key_len};
      if (rkm->payload != nullptr) m.payload = {static_cast<const char*>(rkm->payload), rkm->len};
      rd_kafka_timestamp_type_t type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
      const int64_t ts = rd_kafka_message_timestamp(rkm, &type);
      m.timestamp_ms = type == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? -1 : ts;
      // Messages come in runs per partition: look the position up (and
      // copy the topic name) only when the partition changes.
      if (d.runs.empty() || d.runs.back().first->first.partition != m.partition ||
          d.runs.back().first->first.topic != m.topic) {
        std::lock_guard<std::mutex> lock(d.mu);
        d.runs.emplace_back(
            d.positions.try_emplace(TopicPartition{std::string(m.topic), m.partition}, 0).first, 0);
      }
      d.runs.back().second = m.offset + 1;
      fn(visit, m);
      ++taken;
      continue;
    }
    if (err == RD_KAFKA_RESP_ERR__PARTITION_EOF) continue;
    if (err == RD_KAFKA_RESP_ERR__FATAL || d.logger.fatal()) {
      std::string reason;
      RdKafka::ErrorCode ferr = d.consumer->fatal_error(reason);
      status =
          Status::IOError("kafka consumer fatal error: " + RdKafka::err2str(ferr) + ": " + reason);
      break;
    }
    d.logger.CountError();
    spdlog::warn("kafka consume: {}", rd_kafka_message_errstr(rkm));
    if (taken > 0 || Clock::now() >= deadline) break;
  }
  if (!d.runs.empty()) {
    std::lock_guard<std::mutex> lock(d.mu);
    for (const auto& [it, after] : d.runs) {
      it->second = after;
      if (next != nullptr) (*next)[it->first] = after;
    }
  }
  d.delivered.fetch_add(taken, std::memory_order_relaxed);
  *count += taken;
  if (Clock::now() >= d.next_lag_refresh) {
    d.RefreshLag();
    d.next_lag_refresh = Clock::now() + std::chrono::milliseconds(500);
  }
  return status;
}

OffsetMap EventConsumer::Positions() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->positions;
}

void EventConsumer::CommitAsync(const OffsetMap& offsets) {
  if (offsets.empty() || impl_->closed) return;
  std::vector<RdKafka::TopicPartition*> parts;
  parts.reserve(offsets.size());
  for (const auto& [tp, offset] : offsets) {
    parts.push_back(RdKafka::TopicPartition::create(tp.topic, tp.partition, offset));
  }
  RdKafka::ErrorCode err = impl_->consumer->commitAsync(parts);
  RdKafka::TopicPartition::destroy(parts);
  if (err != RdKafka::ERR_NO_ERROR) {
    impl_->logger.CountError();
    spdlog::debug("kafka commit: {}", RdKafka::err2str(err));
  }
}

bool EventConsumer::HasAssignment() const { return impl_->has_assignment.load(); }

AssignmentInfo EventConsumer::Assignment() const {
  AssignmentInfo info;
  info.ownership = impl_->options.ownership;
  std::lock_guard<std::mutex> lock(impl_->mu);
  info.assigned = impl_->assigned;
  info.missing = impl_->missing;
  info.waiting_for = impl_->waiting_for;
  return info;
}

std::vector<PartitionLag> EventConsumer::Lag() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->lag;
}

uint64_t EventConsumer::delivered() const {
  return impl_->delivered.load(std::memory_order_relaxed);
}
uint64_t EventConsumer::errors() const { return impl_->logger.errors(); }

Status EventConsumer::Close() {
  Impl& d = *impl_;
  if (d.closed) return Status::OK();
  d.closed = true;
  RdKafka::ErrorCode err = d.consumer->close();
  d.has_assignment.store(false);
  {
    std::lock_guard<std::mutex> lock(d.mu);
    d.assigned.clear();
    d.lag.clear();
    d.waiting_for = "the consumer is closed";
  }
  if (err != RdKafka::ERR_NO_ERROR) {
    return Status::IOError("kafka consumer close: " + RdKafka::err2str(err));
  }
  return Status::OK();
}

// ---------------------------------------------------------------- DeadLetterQueue

struct DeadLetterQueue::Impl {
  std::string topic;
  ProducerCore core;
};

DeadLetterQueue::DeadLetterQueue(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeadLetterQueue::~DeadLetterQueue() = default;

Status DeadLetterQueue::Open(const KafkaOptions& options, std::unique_ptr<DeadLetterQueue>* out) {
  auto impl = std::make_unique<Impl>();
  impl->topic = options.topics.dlq;
  RECSTREAM_RETURN_IF_ERROR(impl->core.Open(options.brokers, options.properties));
  out->reset(new DeadLetterQueue(std::move(impl)));
  return Status::OK();
}

void DeadLetterQueue::Send(const RawMessage& original, RejectReason reason,
                           std::string_view detail) {
  Send(original.View(), reason, detail);
}

void DeadLetterQueue::Send(const MessageView& original, RejectReason reason,
                           std::string_view detail) {
  RdKafka::Headers* headers = RdKafka::Headers::create();
  headers->add("reason", std::string(RejectReasonName(reason)));
  headers->add("detail", std::string(detail));
  headers->add("source_topic", std::string(original.topic));
  headers->add("source_partition", std::to_string(original.partition));
  headers->add("source_offset", std::to_string(original.offset));
  Status s = impl_->core.Produce(impl_->topic, original.key, original.payload, headers,
                                 /*max_wait_ms=*/1000);
  if (!s.ok()) spdlog::warn("dead letter dropped: {}", s.ToString());
}

Status DeadLetterQueue::Flush(int timeout_ms) { return impl_->core.Flush(timeout_ms); }
uint64_t DeadLetterQueue::sent() const { return impl_->core.delivered(); }
uint64_t DeadLetterQueue::failed() const { return impl_->core.failed(); }

// ---------------------------------------------------------------- EventProducer

struct EventProducer::Impl {
  TopicNames topics;
  ProducerCore core;
  // Built on first SendEvent, rebuilt if the options change.
  std::unique_ptr<EventParser> parser;
  ParserOptions parser_options;
  learner::Event event;
  std::string detail;
};

EventProducer::EventProducer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EventProducer::~EventProducer() = default;

Status EventProducer::Open(const std::string& brokers, const TopicNames& topics,
                           std::unique_ptr<EventProducer>* out,
                           const std::map<std::string, std::string>& properties) {
  auto impl = std::make_unique<Impl>();
  impl->topics = topics;
  RECSTREAM_RETURN_IF_ERROR(impl->core.Open(brokers, properties));
  out->reset(new EventProducer(std::move(impl)));
  return Status::OK();
}

Status EventProducer::SendRaw(const std::string& topic, std::string_view key,
                              std::string_view payload) {
  return impl_->core.Produce(topic, key, payload, nullptr, /*max_wait_ms=*/60000);
}

Status EventProducer::SendEvent(std::string_view json_line, const ParserOptions& parser_options) {
  Impl& d = *impl_;
  if (d.parser == nullptr || !(d.parser_options == parser_options)) {
    d.parser = std::make_unique<EventParser>(parser_options);
    d.parser_options = parser_options;
  }
  std::optional<RejectReason> reason = d.parser->Parse(json_line, &d.event, 0, &d.detail);
  if (reason) {
    return Status::InvalidArgument(std::string(RejectReasonName(*reason)) + ": " + d.detail);
  }
  const std::string* topic = &d.topics.click;
  if (d.event.task == learner::Task::kPurchase) topic = &d.topics.purchase;
  if (d.event.task == learner::Task::kRating) topic = &d.topics.rating;
  return SendRaw(*topic, d.event.user, json_line);
}

Status EventProducer::Flush(int timeout_ms) { return impl_->core.Flush(timeout_ms); }
uint64_t EventProducer::delivered() const { return impl_->core.delivered(); }
uint64_t EventProducer::failed() const { return impl_->core.failed(); }

}  // namespace recstream::ingest
