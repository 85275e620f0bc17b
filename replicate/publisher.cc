#include "replicate/publisher.h"

#include <librdkafka/rdkafkacpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <bit>
#include <chrono>

#include "replicate/kafka_util.h"

namespace recstream::replicate {

namespace mr = store::model_records;
using Clock = std::chrono::steady_clock;

namespace {

// FNV-1a, a word at a time, over the dense blocks' names and floats.
uint64_t DenseHash(const learner::ModelSnapshot& snapshot) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto& [name, values] : snapshot.dense) {
    for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
    for (float v : values) h = (h ^ std::bit_cast<uint32_t>(v)) * 0x100000001b3ULL;
  }
  return h;
}

}  // namespace

struct ModelPublisher::Impl : public RdKafka::DeliveryReportCb {
  PublisherOptions options;
  KafkaLogger logger;
  std::unique_ptr<RdKafka::Conf> conf;  // to create the producer again
  std::unique_ptr<RdKafka::Producer> producer;
  // After a failure the producer is created afresh: an idempotent producer
  // that met a permanent error may be unusable (fatal) for good.
  bool recreate = false;
  mr::Version next;
  std::array<uint64_t, learner::kNumTasks> last_learned = {~0ull, ~0ull, ~0ull};
  // A hash of the dense blocks last published: they change without rows
  // or counters when another trainer's changes are added (several trainers
  // on one model), and then must go out all the same.
  uint64_t last_dense = 0;
  bool last_failed = true;  // the first version is never a heartbeat
  // Delivery of the version in flight (dr_cb runs inside poll/flush on the
  // publishing thread).
  uint64_t acked = 0, acked_bytes = 0, failed = 0;
  std::string first_error;
  PublisherStats stats;
  mutable std::mutex stats_mu;
  std::atomic<bool> aborted{false};

  void dr_cb(RdKafka::Message& m) override {
    if (m.err() == RdKafka::ERR_NO_ERROR) {
      ++acked;
      acked_bytes += m.len() + (m.key() ? m.key()->size() : 0);
    } else {
      if (failed++ == 0) first_error = m.errstr();
    }
  }
};

ModelPublisher::ModelPublisher(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelPublisher::~ModelPublisher() {
  if (impl_ && impl_->producer) {
    // What is still queued is of a version that failed or was aborted:
    // replicas drop it anyway.
    if (!impl_->aborted.load()) impl_->producer->flush(2000);
    impl_->producer->purge(RdKafka::Producer::PURGE_QUEUE | RdKafka::Producer::PURGE_INFLIGHT);
    impl_->producer->poll(0);
  }
}

Status ModelPublisher::Open(const PublisherOptions& options, uint64_t generation,
                            std::unique_ptr<ModelPublisher>* out) {
  if (options.brokers.empty()) return Status::InvalidArgument("kafka.brokers is empty");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->next = {generation, 1};
  std::unique_ptr<RdKafka::Conf> conf;
  RECSTREAM_RETURN_IF_ERROR(OpenOrderedProducer(options.brokers, "recstream-model-publisher",
                                                options.delivery_timeout_ms, options.properties,
                                                impl.get(), &impl->logger, &conf, &impl->producer));
  impl->conf = std::move(conf);
  out->reset(new ModelPublisher(std::move(impl)));
  return Status::OK();
}

mr::Version ModelPublisher::next() const { return impl_->next; }

void ModelPublisher::SkipVersion() {
  ++impl_->next.sequence;
  impl_->last_failed = true;
}

Status ModelPublisher::Publish(const learner::ModelSnapshot& snapshot, bool full, int64_t time_ms,
                               int timeout_ms) {
  Impl& d = *impl_;
  const auto start = Clock::now();
  const int timeout = timeout_ms >= 0 ? timeout_ms : d.options.delivery_timeout_ms;
  const auto deadline = start + std::chrono::milliseconds(timeout);
  if (d.recreate) {
    // Records of the failed version may still wait in the old producer:
    // they must not follow this version's, so they are dropped with it.
    d.producer->purge(RdKafka::Producer::PURGE_QUEUE | RdKafka::Producer::PURGE_INFLIGHT);
    d.producer->flush(0);
    std::string err;
    std::unique_ptr<RdKafka::Producer> fresh(RdKafka::Producer::create(d.conf.get(), err));
    if (!fresh) return Status::Internal("kafka producer: " + err);
    d.producer = std::move(fresh);
    d.recreate = false;
  }
  d.acked = d.acked_bytes = d.failed = 0;
  d.first_error.clear();
  const uint64_t dense = DenseHash(snapshot);
  const bool heartbeat = !full && !d.last_failed && snapshot.rows() == 0 &&
                         snapshot.feature_lists.empty() && snapshot.new_purchases.empty() &&
                         snapshot.deleted.empty() && snapshot.deleted_purchases.empty() &&
                         snapshot.learned == d.last_learned && dense == d.last_dense;
  mr::Commit commit;
  commit.version = d.next;
  commit.time_ms = time_ms;
  commit.full = full;
  commit.snapshot_url = d.options.snapshot_url;
  commit.settings = d.options.model_settings;
  if (!d.last_failed) commit.previous = d.stats.last;
  uint64_t sent = 0;
  Status s = mr::ForEachModelRecord(
      snapshot, commit, heartbeat, [&](std::string_view key, std::string_view value) -> Status {
        for (;;) {
          // An empty value is a tombstone: Kafka's null value.
          RdKafka::ErrorCode err = d.producer->produce(
              d.options.topic, d.options.partition, RdKafka::Producer::RK_MSG_COPY,
              value.empty() ? nullptr : const_cast<char*>(value.data()), value.size(), key.data(),
              key.size(), 0, nullptr);
          if (err == RdKafka::ERR_NO_ERROR) break;
          if (err != RdKafka::ERR__QUEUE_FULL || Clock::now() >= deadline || d.aborted.load())
            return Status::IOError("producing to " + d.options.topic + ": " +
                                   RdKafka::err2str(err));
          d.producer->poll(10);
        }
        ++sent;
        if ((sent & 1023) == 0) d.producer->poll(0);
        return Status::OK();
      });
  // Every record produced must be acknowledged (or failed) before the next
  // version, so wait for the queue to drain, up to the deadline.
  while (d.producer->outq_len() > 0 && Clock::now() < deadline && !d.aborted.load())
    d.producer->poll(5);
  if (s.ok() && d.aborted.load()) s = Status::Unavailable("publishing aborted (shutting down)");
  if (s.ok() && d.failed > 0)
    s = Status::IOError(fmt::format("{} of {} records of version {} not delivered to {}: {}",
                                    d.failed, sent, d.next.ToString(), d.options.topic,
                                    d.first_error));
  if (s.ok() && d.acked < sent)
    s = Status::Unavailable(fmt::format("{} of {} records of version {} not acknowledged by {} within {} ms",
                                        sent - d.acked, sent, d.next.ToString(), d.options.topic,
                                        timeout));
  const double took = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::lock_guard lock(d.stats_mu);
  if (s.ok()) {
    ++d.stats.versions;
    d.stats.records += d.acked;
    d.stats.bytes += d.acked_bytes;
    if (full) ++d.stats.full;
    d.stats.last = d.next;
    d.stats.last_time_ms = time_ms;
    d.stats.last_publish_ms = took;
    d.last_learned = snapshot.learned;
    d.last_dense = dense;
    d.last_failed = false;
  } else {
    ++d.stats.failures;
    d.last_failed = true;
    d.recreate = true;
  }
  // A failed version's number is not reused: its records may be on the
  // topic, without a commit that matches them.
  ++d.next.sequence;
  return s;
}

Status ModelPublisher::LastCommit(int timeout_ms, mr::Commit* out) {
  Impl& d = *impl_;
  return ReadLastCommit(d.options.brokers, d.options.properties, d.options.topic,
                        d.options.partition, timeout_ms, out);
}

void ModelPublisher::Abort() { impl_->aborted.store(true); }

PublisherStats ModelPublisher::stats() const {
  std::lock_guard lock(impl_->stats_mu);
  return impl_->stats;
}

}  // namespace recstream::replicate
