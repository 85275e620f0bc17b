// librdkafka helpers shared by the publisher and the follower (kept out of
// their headers).
#pragma once

#include <librdkafka/rdkafkacpp.h>

#include <atomic>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "store/model_records.h"

namespace recstream::replicate {

// Our defaults first, then the user's properties, which win.
Status ApplyConf(RdKafka::Conf* conf,
                 const std::vector<std::pair<std::string, std::string>>& defaults,
                 const std::map<std::string, std::string>& properties);

// Forwards librdkafka's events to spdlog; counts errors.
class KafkaLogger : public RdKafka::EventCb {
 public:
  void event_cb(RdKafka::Event& event) override;
  uint64_t errors() const { return errors_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> errors_{0};
};

// A producer whose records stay in order and are never duplicated by a
// retry (idempotent), batched and lz4-compressed, for the model topic and
// the updates topic; `dr` and `logger` must outlive it. *conf keeps its
// configuration, to create it again after a fatal error.
Status OpenOrderedProducer(const std::string& brokers, const std::string& client_id,
                           int delivery_timeout_ms,
                           const std::map<std::string, std::string>& properties,
                           RdKafka::DeliveryReportCb* dr, KafkaLogger* logger,
                           std::unique_ptr<RdKafka::Conf>* conf,
                           std::unique_ptr<RdKafka::Producer>* out);

// A consumer that assigns partitions itself (no group membership, no
// commits), reading up to the end quickly.
Status OpenAssignConsumer(const std::string& brokers,
                          const std::map<std::string, std::string>& properties,
                          KafkaLogger* logger, std::unique_ptr<RdKafka::KafkaConsumer>* out);

// The latest commit record in the last records of one partition.
Status ReadLastCommit(const std::string& brokers,
                      const std::map<std::string, std::string>& properties,
                      const std::string& topic, int partition, int timeout_ms,
                      store::model_records::Commit* out);

}  // namespace recstream::replicate
