#include "replicate/kafka_util.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace recstream::replicate {

namespace mr = store::model_records;

Status ApplyConf(RdKafka::Conf* conf,
                 const std::vector<std::pair<std::string, std::string>>& defaults,
                 const std::map<std::string, std::string>& properties) {
  std::string err;
  auto set = [&](const std::string& k, const std::string& v) {
    if (conf->set(k, v, err) != RdKafka::Conf::CONF_OK)
      return Status::InvalidArgument("kafka property " + k + "=" + v + ": " + err);
    return Status::OK();
  };
  for (const auto& [k, v] : defaults) RECSTREAM_RETURN_IF_ERROR(set(k, v));
  for (const auto& [k, v] : properties) RECSTREAM_RETURN_IF_ERROR(set(k, v));
  return Status::OK();
}

void KafkaLogger::event_cb(RdKafka::Event& event) {
  switch (event.type()) {
    case RdKafka::Event::EVENT_ERROR:
      errors_.fetch_add(1, std::memory_order_relaxed);
      if (event.fatal())
        spdlog::error("kafka (model topic) fatal error: {}", event.str());
      else
        spdlog::warn("kafka (model topic): {} ({})", event.str(), RdKafka::err2str(event.err()));
      break;
    case RdKafka::Event::EVENT_LOG:
      if (event.fac() != "FAIL" && event.fac() != "CONFWARN" && event.severity() <= 4)
        spdlog::warn("kafka {}: {}", event.fac(), event.str());
      break;
    default:
      break;
  }
}

Status OpenOrderedProducer(const std::string& brokers, const std::string& client_id,
                           int delivery_timeout_ms,
                           const std::map<std::string, std::string>& properties,
                           RdKafka::DeliveryReportCb* dr, KafkaLogger* logger,
                           std::unique_ptr<RdKafka::Conf>* conf,
                           std::unique_ptr<RdKafka::Producer>* out) {
  if (brokers.empty()) return Status::InvalidArgument("kafka.brokers is empty");
  conf->reset(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  RECSTREAM_RETURN_IF_ERROR(ApplyConf(
      conf->get(),
      {
          {"bootstrap.servers", brokers},
          {"client.id", client_id},
          // Records stay in order, and a retry never duplicates or
          // reorders one.
          {"enable.idempotence", "true"},
          // A batch of records goes out at once; they batch among
          // themselves.
          {"linger.ms", "1"},
          {"batch.num.messages", "10000"},
          {"batch.size", "4000000"},
          {"message.max.bytes", "8000000"},
          {"compression.type", "lz4"},
          {"queue.buffering.max.messages", "1000000"},
          {"queue.buffering.max.kbytes", "1048576"},
          {"message.timeout.ms", std::to_string(std::max(1000, delivery_timeout_ms))},
      },
      properties));
  std::string err;
  if ((*conf)->set("dr_cb", dr, err) != RdKafka::Conf::CONF_OK ||
      (*conf)->set("event_cb", static_cast<RdKafka::EventCb*>(logger), err) !=
          RdKafka::Conf::CONF_OK)
    return Status::Internal("kafka producer callbacks: " + err);
  out->reset(RdKafka::Producer::create(conf->get(), err));
  if (!*out) return Status::InvalidArgument("kafka producer: " + err);
  return Status::OK();
}

Status OpenAssignConsumer(const std::string& brokers,
                          const std::map<std::string, std::string>& properties,
                          KafkaLogger* logger, std::unique_ptr<RdKafka::KafkaConsumer>* out) {
  if (brokers.empty()) return Status::InvalidArgument("kafka.brokers is empty");
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  RECSTREAM_RETURN_IF_ERROR(ApplyConf(conf.get(),
                                      {
                                          {"bootstrap.servers", brokers},
                                          {"client.id", "recstream-replica"},
                                          {"group.id", "recstream-model-readers"},
                                          {"enable.auto.commit", "false"},
                                          {"enable.auto.offset.store", "false"},
                                          {"enable.partition.eof", "true"},
                                          // Records deleted before they were read are
                                          // reported (the follower snapshots again),
                                          // never silently skipped.
                                          {"auto.offset.reset", "error"},
                                          // A new version reaches a replica at once.
                                          {"fetch.wait.max.ms", "10"},
                                          {"fetch.max.bytes", "67108864"},
                                          {"max.partition.fetch.bytes", "16777216"},
                                      },
                                      properties));
  std::string err;
  if (conf->set("event_cb", static_cast<RdKafka::EventCb*>(logger), err) != RdKafka::Conf::CONF_OK)
    return Status::Internal("kafka consumer event_cb: " + err);
  out->reset(RdKafka::KafkaConsumer::create(conf.get(), err));
  if (!*out) return Status::InvalidArgument("kafka consumer: " + err);
  return Status::OK();
}

Status ReadLastCommit(const std::string& brokers,
                      const std::map<std::string, std::string>& properties,
                      const std::string& topic, int partition, int timeout_ms, mr::Commit* out) {
  KafkaLogger logger;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer;
  RECSTREAM_RETURN_IF_ERROR(OpenAssignConsumer(brokers, properties, &logger, &consumer));
  struct Closer {
    RdKafka::KafkaConsumer* c;
    ~Closer() { c->close(); }
  } closer{consumer.get()};
  int64_t low = 0, high = 0;
  RdKafka::ErrorCode err =
      consumer->query_watermark_offsets(topic, partition, &low, &high, timeout_ms);
  if (err != RdKafka::ERR_NO_ERROR)
    return Status::Unavailable("reading the end of " + topic + "/" + std::to_string(partition) +
                               ": " + RdKafka::err2str(err));
  if (high <= low) return Status::NotFound("the model topic's partition is empty");
  // The last commit lies within the last version; a full version of a big
  // model is the longest, so look back far.
  constexpr int64_t kLookBack = 2'000'000;
  const int64_t from = std::max(low, high - kLookBack);
  std::unique_ptr<RdKafka::TopicPartition> tp(
      RdKafka::TopicPartition::create(topic, partition, from));
  std::vector<RdKafka::TopicPartition*> parts = {tp.get()};
  err = consumer->assign(parts);
  if (err != RdKafka::ERR_NO_ERROR)
    return Status::Unavailable("assigning " + topic + ": " + RdKafka::err2str(err));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  bool found = false;
  int64_t next = from;
  while (next < high && std::chrono::steady_clock::now() < deadline) {
    std::unique_ptr<RdKafka::Message> m(consumer->consume(100));
    if (m->err() == RdKafka::ERR__TIMED_OUT || m->err() == RdKafka::ERR__PARTITION_EOF) {
      if (m->err() == RdKafka::ERR__PARTITION_EOF) break;
      continue;
    }
    if (m->err() != RdKafka::ERR_NO_ERROR) continue;
    next = m->offset() + 1;
    if (m->key() == nullptr || *m->key() != mr::kCommitKey || m->payload() == nullptr) continue;
    mr::Header h;
    std::string_view payload;
    const std::string_view value(static_cast<const char*>(m->payload()), m->len());
    if (!mr::DecodeHeader(value, &h, &payload).ok()) continue;
    mr::Commit c;
    if (mr::DecodeCommit(h, payload, &c).ok()) {
      *out = std::move(c);
      found = true;
    }
  }
  if (next < high)
    return Status::Unavailable("reading the end of the model topic took longer than " +
                               std::to_string(timeout_ms) + " ms");
  return found ? Status::OK() : Status::NotFound("no commit at the end of the model topic");
}

}  // namespace recstream::replicate
