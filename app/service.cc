#include "app/service.h"

#include <malloc.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include "common/thread_slice.h"
#include "ingest/kafka.h"
#include "ingest/ownership.h"
#include "ingest/parser.h"
#include "learner/learner.h"
#include "replicate/exchange.h"
#include "replicate/publisher.h"
#include "serve/api.h"
#include "serve/http_server.h"
#include "store/checkpoint_store.h"
#include "store/snapshot_accumulator.h"

namespace recstream::app {
namespace {

using Clock = std::chrono::steady_clock;

// CPU time of the calling thread, in seconds.
double ThreadCpuSeconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Parsed events of one poll, on their way from the ingest thread to the
// training thread, with the positions they bring their partitions to.
struct Batch {
  std::vector<learner::Event> events;  // events[0, size) are this batch's; reused
  size_t size = 0;
  // Per partition of the batch (rejected messages included): the offset
  // after its last message.
  OffsetMap next;
  // Several trainers, after a restart: events[0, replayed) are events
  // learned again whose changes to other trainers' rows are in the outbox
  // already (their shared changes are dropped); ahead of the rest, each
  // partition's events still in order. flags: per event, while building.
  size_t replayed = 0;
  std::vector<uint8_t> flags;
};

// A snapshot on its way to the store.
struct CheckpointJob {
  learner::ModelSnapshot snapshot;
  OffsetMap offsets;
  uint64_t request = 0;  // the forced-checkpoint request this job satisfies
  // The learner's number of the latest snapshot this job holds
  // (Learner::snapshot_number): stored, the memory limit may let go of
  // the users it holds.
  uint64_t number = 0;
  // Already complete (FinishSnapshot done, or merged deltas): the writer
  // stores it as it is.
  bool finished = false;
  // The model-topic version the snapshot brings the store to (zero when
  // not publishing).
  store::model_records::Version published;
  // Several trainers: the last outbox batch taken before the snapshot (its
  // events are in it); stored and sent, such batches leave the outbox.
  uint64_t exchange_through = 0;
};

// A snapshot on its way to the model topic (and, merged with the ones
// before it, to the store), when the trainer publishes.
struct SnapshotJob {
  learner::ModelSnapshot snapshot;
  OffsetMap offsets;
  bool full = false;
  bool publish = false;     // send it to the model topic
  bool final = false;       // the last one, at shutdown
  bool checkpoint = false;  // then store everything merged so far
  uint64_t request = 0;
  uint64_t number = 0;  // Learner::snapshot_number
  int64_t time_ms = 0;
  uint64_t exchange_through = 0;  // as CheckpointJob's
};

}  // namespace

struct Service::Impl : public serve::ServiceHooks {
  explicit Impl(const config::AppConfig& c) : config(c), parser(c.parser) {}

  recstream::Status Init();
  void IngestLoop();
  void TrainLoop();
  void WriterLoop();
  // On the training thread, between batches.
  void MaybeCheckpoint(bool final);
  // On the training thread: with more users in memory than the limit
  // allows by a quarter (Learner::OverLimit), checkpoints and waits until
  // they are stored and let go (at most 10 s, then trains on).
  void WaitForMemory();
  void Enqueue(std::unique_ptr<CheckpointJob> job);
  // Publishing: the training thread's part, and the publish thread.
  void MaybeSnapshot(bool final);
  void PublishLoop();
  recstream::Status OpenPublisher();

  // serve::ServiceHooks
  serve::ServiceStatus Status() const override;
  bool Ready(std::string* why_not) const override;
  recstream::Status Checkpoint() override;
  recstream::Status SnapshotPage(const std::string& after, size_t max_bytes, bool fresh,
                                 std::string* body) override;

  config::AppConfig config;
  const Clock::time_point started = Clock::now();
  std::unique_ptr<ingest::EmbeddedKafka> embedded;
  std::unique_ptr<store::CheckpointStore> store;
  std::unique_ptr<learner::Learner> learner;
  std::unique_ptr<ingest::EventConsumer> consumer;
  std::unique_ptr<ingest::DeadLetterQueue> dlq;
  std::unique_ptr<serve::Api> api;
  std::unique_ptr<serve::HttpServer> http;
  ingest::EventParser parser;  // ingest thread only

  std::atomic<bool> stop{false};
  std::atomic<bool> loaded{false};
  std::thread ingester, trainer, writer;

  // Ingest -> training hand-off: the ingest thread polls and parses the next
  // batch while the training thread learns the previous one.
  static constexpr size_t kMaxReadyBatches = 2;
  std::mutex batch_mu;
  std::condition_variable batch_cv;
  std::deque<std::unique_ptr<Batch>> ready;   // guarded by batch_mu
  std::vector<std::unique_ptr<Batch>> spare;  // guarded by batch_mu
  // Learned up to: the positions a checkpoint stores with the model (the
  // consumer's own positions run ahead by the batches in flight). Training
  // thread only once started.
  OffsetMap learned_positions;

  // Counters read by HTTP threads.
  std::array<std::atomic<uint64_t>, learner::kNumTasks> seen{};
  std::array<std::atomic<uint64_t>, ingest::kNumRejectReasons> rejected{};
  std::atomic<double> events_per_second{0.0};

  // Checkpoint hand-off. The training thread owns need_full and
  // next_checkpoint; the rest is guarded by mu.
  bool need_full = false;
  Clock::time_point next_checkpoint;
  // While checkpoints fail (disk full or read-only), each retry is a full
  // snapshot: retries back off from the interval up to kMaxRetryFactor times
  // it. Training thread only.
  int64_t retry_delay_ms = 0;
  static constexpr int64_t kMaxRetryFactor = 8;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::unique_ptr<CheckpointJob> pending;  // guarded by mu
  // The last job written, kept so that the next snapshot reuses its row
  // buffers (no fresh memory to fault in while training waits); guarded by mu.
  std::unique_ptr<CheckpointJob> recycled;
  bool writing = false;                // guarded by mu
  bool writer_stop = false;            // guarded by mu
  uint64_t requested = 0;              // forced checkpoints asked for; guarded by mu
  uint64_t completed = 0;              // forced checkpoints done; guarded by mu
  recstream::Status last_status;       // guarded by mu
  std::optional<OffsetMap> to_commit;  // stored offsets to commit to Kafka; guarded by mu
  uint64_t checkpoints = 0;            // guarded by mu
  bool write_failed = false;           // guarded by mu
  bool write_succeeded = false;        // guarded by mu

  // Publishing to the model topic (replicate.interval_ms > 0). Every
  // snapshot is a version: the publish thread finishes it, merges it into
  // `merged` (what the next checkpoint stores), and sends it; a checkpoint
  // hands everything merged to the writer. So the store always holds
  // exactly a published version, and what was published reaches the store
  // within a checkpoint interval.
  std::unique_ptr<replicate::ModelPublisher> publisher;
  std::thread publish_thread;
  Clock::time_point next_publish;  // training thread only
  std::unique_ptr<SnapshotJob> snap_pending;   // guarded by mu
  std::unique_ptr<SnapshotJob> snap_recycled;  // guarded by mu
  bool snap_busy = false;                      // guarded by mu
  // The next published version must carry the whole model: at start when
  // the topic's last version is not the stored one, and after a failure.
  bool publish_need_full = true;                // guarded by mu
  Clock::time_point publish_retry_at;           // guarded by mu
  int64_t publish_backoff_ms = 0;               // guarded by mu
  std::string publish_error;                    // guarded by mu
  store::SnapshotAccumulator merged;            // publish thread only
  OffsetMap merged_offsets;                     // publish thread only
  uint64_t merged_request = 0;                  // publish thread only
  uint64_t merged_number = 0;                   // publish thread only
  std::mutex fresh_mu;                          // one fresh snapshot checkpoint at a time
  Clock::time_point last_fresh;                 // guarded by fresh_mu

  // Several trainers on one model (trainer.count > 1 and
  // trainer.exchange_interval_ms > 0; docs/interface.md, "Several trainers
  // on one model"). The training thread applies what arrived and takes
  // its changes every interval; the send thread sends them, in order.
  // The exchange's positions (the updates partitions read, each sender's
  // last batch applied) go into learned_positions under the updates
  // topic's name and kAppliedSuffix, so that a checkpoint stores them
  // with the model that applied them.
  std::unique_ptr<replicate::TrainerExchange> exchange;
  std::thread send_thread;
  Clock::time_point next_exchange;  // training thread only
  uint64_t exchange_number = 0;     // the last batch taken; training thread only
  // Encoded batches (TrainerExchange::Encode) by number.
  std::deque<std::pair<uint64_t, std::string>> to_send;  // guarded by mu
  // The last batch taken, its tables' buffers reused by the next take
  // (guarded by mu): an exchange every few milliseconds would otherwise
  // allocate and fault in its megabytes afresh each time.
  learner::ModelChanges spare_changes;
  bool exchange_busy = false;  // a batch is being sent; guarded by mu
  std::atomic<uint64_t> exchange_errors{0};
  std::atomic<uint64_t> acked_through{0};  // batches sent, in order
  uint64_t outbox_deleted = 0;             // writer thread only
  uint64_t merged_exchange_through = 0;    // publish thread only
  // After a restart: events up to these positions were learned and their
  // changes stored in the outbox before the crash (ingest thread only).
  OffsetMap replay_until;
  void MaybeExchange();
  // Takes this trainer's changes to others' rows, stores them in the
  // outbox and queues them for sending; with `drop`, only forgets them
  // (replayed events: in the outbox already). Training thread.
  void TakeChanges(bool drop);
  void SendLoop();
  std::string applied_topic() const { return config.kafka.topics.updates + std::string(kAppliedSuffix); }
  std::string follow_topic() const { return config.kafka.topics.model + std::string(kFollowSuffix); }
  bool ExchangePosition(const std::string& topic) const {
    return topic == config.kafka.topics.updates || topic == applied_topic() ||
           topic == follow_topic();
  }
  static constexpr std::string_view kAppliedSuffix = "#applied";
  static constexpr std::string_view kFollowSuffix = "#follow";
};

recstream::Status Service::Impl::Init() {
  if (config.kafka.brokers.empty()) {
    RECSTREAM_RETURN_IF_ERROR(ingest::EmbeddedKafka::Start(1, config.kafka.embedded_partitions,
                                                           config.kafka.topics, &embedded));
    config.kafka.brokers = embedded->bootstrap();
    ingest::EmbeddedKafka::AddConsumerProperties(&config.kafka.properties);
    spdlog::info("embedded Kafka (librdkafka mock cluster) at {}", config.kafka.brokers);
    if (config.kafka.ownership.count > 1) {
      spdlog::warn(
          "trainer.count is {} but this trainer's Kafka is embedded, its own: the other trainers "
          "cannot read it. Point every trainer's kafka.brokers at one cluster (`recstream "
          "broker`, or a real Kafka)",
          config.kafka.ownership.count);
    }
  }
  // A memory limit reads users back one by one: a store tuned for that.
  config.store.point_reads = config.learner.memory_limit_mb > 0;
  RECSTREAM_RETURN_IF_ERROR(store::CheckpointStore::Open(config.store, &store));
  const bool sharing =
      config.kafka.ownership.count > 1 && config.replicate.exchange_interval_ms > 0;
  if (sharing) {
    config.learner.trainer_count = config.kafka.ownership.count;
    config.learner.trainer_index = config.kafka.ownership.index;
  }
  RECSTREAM_RETURN_IF_ERROR(learner::Learner::Create(config.learner, &learner));
  // With model.memory_limit_mb, users that left memory are read back from
  // the store (and a restore keeps only those that fit).
  learner->SetRowSource(store.get());

  learner::ModelSnapshot snapshot;
  OffsetMap offsets;
  store::CheckpointInfo info;
  // Rows, then feature lists, go straight from the store into the learner,
  // on every core, while the store reads on; the rest of the snapshot
  // follows.
  std::atomic<uint64_t> rows{0};
  const int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  recstream::Status s = store->LoadStreaming(
      [&](const learner::TableDelta& block) {
        rows.fetch_add(block.keys.size(), std::memory_order_relaxed);
        return learner->ApplyRows(block);
      },
      [&](const learner::FeatureListDelta& block) { return learner->ApplyLists(block); }, threads,
      &snapshot, &offsets, &info);
  if (s.ok()) {
    RECSTREAM_RETURN_IF_ERROR(learner->ApplySnapshot(snapshot));
    spdlog::info("restored checkpoint {} from {}: {} rows, {} partitions", info.sequence,
                 config.store.path, rows.load(), offsets.size());
  } else if (s.IsNotFound()) {
    spdlog::info("no checkpoint in {}: starting a new model", config.store.path);
  } else {
    return s;
  }
  loaded = true;
  // The restore's blocks are free again: return their pages to the kernel
  // (TuneMalloc keeps freed memory in the heaps otherwise).
  malloc_trim(0);

  // The exchange's positions are not event positions.
  std::map<int, int64_t> exchange_start;
  std::map<int, uint64_t> exchange_applied;
  std::map<int, int64_t> exchange_follow;
  for (auto it = offsets.begin(); it != offsets.end();) {
    if (it->first.topic == config.kafka.topics.updates) {
      exchange_start[it->first.partition] = it->second;
    } else if (it->first.topic == applied_topic()) {
      exchange_applied[it->first.partition] = uint64_t(it->second);
    } else if (it->first.topic == follow_topic()) {
      exchange_follow[it->first.partition] = it->second;
    } else {
      ++it;
      continue;
    }
    learned_positions[it->first] = it->second;
    it = offsets.erase(it);
  }
  // Fixed ownership: positions of partitions another trainer owns mean the
  // store was written with another trainer.count (or index). Taking them
  // over, or dropping them, would learn events twice or lose them.
  const ingest::Ownership& own = config.kafka.ownership;
  if (std::vector<TopicPartition> foreign = ingest::ForeignPositions(offsets, own);
      !foreign.empty()) {
    return recstream::Status::InvalidArgument(fmt::format(
        "the store {} holds learned positions of partitions that trainer.index {} of "
        "trainer.count {} does not own ({}): it was written with another trainer.count or "
        "trainer.index. Start this store with the trainer.count and trainer.index that wrote it, "
        "or give this trainer an empty store.path to learn its partitions afresh from the "
        "topics' start",
        config.store.path, own.index, own.count, ingest::PartitionNames(foreign)));
  }
  RECSTREAM_RETURN_IF_ERROR(ingest::EventConsumer::Open(config.kafka, &consumer));
  consumer->SeedOffsets(offsets);
  for (const auto& [tp, offset] : consumer->Positions()) learned_positions[tp] = offset;
  if (sharing) {
    replicate::ExchangeOptions eo;
    eo.brokers = config.kafka.brokers;
    eo.updates_topic = config.kafka.topics.updates;
    eo.model_topic = config.kafka.topics.model;
    eo.index = config.kafka.ownership.index;
    eo.count = config.kafka.ownership.count;
    eo.run = uint64_t(NowMs());
    eo.properties = config.kafka.properties;
    eo.delivery_timeout_ms = config.replicate.timeout_ms;
    RECSTREAM_RETURN_IF_ERROR(
        replicate::TrainerExchange::Open(eo, exchange_start, exchange_applied, exchange_follow,
                                         &exchange));
    next_exchange = Clock::now();
    // Batches taken before a crash or stop go out again (an owner drops
    // those it has), and the events they cover are learned again without
    // taking their changes a second time.
    std::vector<store::CheckpointStore::OutboxBatch> outbox;
    RECSTREAM_RETURN_IF_ERROR(store->ReadOutbox(&outbox, &exchange_number));
    for (store::CheckpointStore::OutboxBatch& b : outbox) {
      if (!replicate::IsEncodedBatch(b.bytes)) {  // an older build's outbox: its changes
        learner::ModelChanges changes;
        RECSTREAM_RETURN_IF_ERROR(replicate::DecodeChanges(b.bytes, &changes));
        b.bytes = exchange->Encode(&changes, b.number);
      }
      RECSTREAM_RETURN_IF_ERROR(replicate::CheckEncodedBatch(b.bytes, config.kafka.ownership.index,
                                                             config.kafka.ownership.count));
      to_send.emplace_back(b.number, std::move(b.bytes));
    }
    if (!outbox.empty()) {
      for (const auto& [tp, offset] : outbox.back().positions) {
        auto it = offsets.find(tp);
        if (it == offsets.end() || it->second < offset) replay_until[tp] = offset;
      }
      spdlog::info("exchange: {} outbox batches to send again (up to {}); {} partitions to replay",
                   outbox.size(), exchange_number, replay_until.size());
    }
    spdlog::info(
        "trainer {} of {} shares one model: changes to owners on {}, every {} ms; {} senders' "
        "batches applied before",
        eo.index, eo.count, eo.updates_topic, config.replicate.exchange_interval_ms,
        exchange_applied.size());
  }
  RECSTREAM_RETURN_IF_ERROR(ingest::DeadLetterQueue::Open(config.kafka, &dlq));

  api = std::make_unique<serve::Api>(config.serve, config.blend, learner.get(), this);
  RECSTREAM_RETURN_IF_ERROR(serve::HttpServer::Start(config.serve, api->Handler(), &http));

  next_checkpoint = Clock::now() + std::chrono::milliseconds(config.store.checkpoint_interval_ms);
  if (config.replicate.interval_ms > 0) RECSTREAM_RETURN_IF_ERROR(OpenPublisher());
  // Named for top -H, perf and /proc.
  auto start = [this](const char* name, void (Impl::*loop)()) {
    return std::thread([this, name, loop] {
      pthread_setname_np(pthread_self(), name);
      (this->*loop)();
    });
  };
  writer = start("checkpoint", &Impl::WriterLoop);
  if (publisher) publish_thread = start("publish", &Impl::PublishLoop);
  if (exchange) send_thread = start("exchange", &Impl::SendLoop);
  trainer = start("train", &Impl::TrainLoop);
  ingester = start("ingest", &Impl::IngestLoop);
  return recstream::Status::OK();
}

void Service::Impl::IngestLoop() {
  // Polling and parsing feed learning: they yield to serving like the
  // training threads (learner.train_nice; lowering one's own priority needs
  // no privilege).
  if (config.learner.train_nice > 0)
    setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), config.learner.train_nice);
  std::string detail;
  // The pipeline's own cost (poll, copy, parse; not librdkafka's threads).
  uint64_t consumed = 0;
  const double cpu_start = ThreadCpuSeconds();
  std::unique_ptr<Batch> batch;  // filled by the next poll
  while (!stop.load()) {
    {
      std::lock_guard lock(mu);
      // Commit stored offsets only once partitions are assigned (the
      // consumer's coordinator connection is up by then).
      if (to_commit && consumer->HasAssignment()) {
        consumer->CommitAsync(*to_commit);
        to_commit.reset();
      }
    }
    if (!batch) {
      std::lock_guard lock(batch_mu);
      if (!spare.empty()) {
        batch = std::move(spare.back());
        spare.pop_back();
      }
    }
    if (!batch) batch = std::make_unique<Batch>();
    batch->size = 0;
    batch->replayed = 0;
    batch->next.clear();
    // Each message is parsed straight from librdkafka's buffer into a reused
    // Event (its strings' and vectors' capacity stays): no copy of the
    // message, no allocation per event once the batch is warm.
    int64_t now = -1;  // arrival time, read once per poll
    std::array<uint64_t, learner::kNumTasks> seen_now{};
    Batch& b = *batch;
    auto parse = [&](const ingest::MessageView& m) {
      if (b.size == b.events.size()) b.events.emplace_back();
      learner::Event& e = b.events[b.size];
      if (now < 0) now = NowMs();
      detail.clear();
      if (auto reason = parser.Parse(m.payload, &e, now, &detail)) {
        rejected[int(*reason)].fetch_add(1, std::memory_order_relaxed);
        dlq->Send(m, *reason, detail);
        return;
      }
      ++seen_now[int(e.task)];
      if (!replay_until.empty()) {
        if (b.flags.size() < b.size + 1) b.flags.resize(b.size + 1);
        auto it = replay_until.find(TopicPartition{std::string(m.topic), m.partition});
        b.flags[b.size] = it != replay_until.end() && m.offset < it->second;
        b.replayed += b.flags[b.size];
      }
      ++b.size;
    };
    size_t polled = 0;
    // b.next: where each partition of the poll (rejected messages included)
    // is now.
    recstream::Status s = consumer->PollEach(size_t(config.kafka.max_batch),
                                             config.kafka.poll_timeout_ms, parse, &polled, &b.next);
    if (!s.ok()) {
      spdlog::error("Kafka consumer: {}", s.ToString());
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (polled == 0) continue;
    consumed += polled;
    if (b.replayed > 0) {
      // Replayed events first (each partition's order stays: its replayed
      // events come before its others).
      std::vector<size_t> order(b.size);
      for (size_t i = 0; i < b.size; ++i) order[i] = i;
      std::stable_partition(order.begin(), order.end(), [&](size_t i) { return b.flags[i] != 0; });
      std::vector<learner::Event> sorted(b.size);
      for (size_t i = 0; i < b.size; ++i) sorted[i] = std::move(b.events[order[i]]);
      for (size_t i = 0; i < b.size; ++i) b.events[i] = std::move(sorted[i]);
    }
    if (!replay_until.empty()) {
      const OffsetMap now_at = consumer->Positions();
      std::erase_if(replay_until, [&](const auto& e) {
        auto it = now_at.find(e.first);
        return it != now_at.end() && it->second >= e.second;
      });
      if (replay_until.empty()) spdlog::info("exchange: replay of the outbox's events done");
    }
    for (int t = 0; t < learner::kNumTasks; ++t)
      if (seen_now[t]) seen[t].fetch_add(seen_now[t], std::memory_order_relaxed);
    std::unique_lock lock(batch_mu);
    batch_cv.wait(lock, [&] { return ready.size() < kMaxReadyBatches || stop.load(); });
    // Stopping: a batch not learned is not stored either; it is read again
    // after the restart.
    if (stop.load()) break;
    ready.push_back(std::move(batch));
    batch_cv.notify_all();
  }
  const double cpu = ThreadCpuSeconds() - cpu_start;
  spdlog::info("ingest thread: {} messages polled and parsed, {:.3f} s CPU ({:.3f} us per message)",
               consumed, cpu, consumed > 0 ? cpu * 1e6 / double(consumed) : 0.0);
}

void Service::Impl::TrainLoop() {
  auto rate_start = Clock::now();
  uint64_t rate_events = 0, trained = 0;
  double train_s = 0;
  // Where gaps in learning come from: the longest wait for a parsed batch
  // while training had nothing to do (once it has started: from the end of
  // one batch to the start of the next, however many timed-out waits and
  // checkpoints lie between), and the longest Train call.
  double longest_wait_ms = 0, longest_train_ms = 0;
  auto idle_since = Clock::now();
  const double cpu_start = ThreadCpuSeconds();
  const auto wait = std::chrono::milliseconds(std::max(1, config.kafka.poll_timeout_ms));
  while (!stop.load()) {
    std::unique_ptr<Batch> batch;
    {
      std::unique_lock lock(batch_mu);
      batch_cv.wait_for(lock, wait, [&] { return !ready.empty() || stop.load(); });
      if (trained > 0 && !ready.empty())
        longest_wait_ms =
            std::max(longest_wait_ms,
                     std::chrono::duration<double, std::milli>(Clock::now() - idle_since).count());
      if (!ready.empty() && !stop.load()) {
        batch = std::move(ready.front());
        ready.pop_front();
        batch_cv.notify_all();
      }
    }
    if (batch && learner->OverLimit()) WaitForMemory();
    if (batch) {
      const auto train_start = Clock::now();
      if (batch->replayed > 0 && exchange) {
        TakeChanges(false);  // what was learned before goes out as usual
        learner->Train(std::span(batch->events.data(), batch->replayed));
        TakeChanges(true);
        if (batch->size > batch->replayed)
          learner->Train(std::span(batch->events.data() + batch->replayed,
                                   batch->size - batch->replayed));
      } else if (batch->size > 0) {
        learner->Train(std::span(batch->events.data(), batch->size));
      }
      const double took = std::chrono::duration<double>(Clock::now() - train_start).count();
      train_s += took;
      longest_train_ms = std::max(longest_train_ms, took * 1e3);
      trained += batch->size;
      idle_since = Clock::now();
      for (const auto& [tp, offset] : batch->next) learned_positions[tp] = offset;
      rate_events += batch->size;
      std::lock_guard lock(batch_mu);
      spare.push_back(std::move(batch));
    } else {
      // No events: users over the memory limit still leave once stored.
      learner->Idle();
    }
    auto elapsed = Clock::now() - rate_start;
    if (elapsed >= std::chrono::seconds(1)) {
      events_per_second = double(rate_events) / std::chrono::duration<double>(elapsed).count();
      rate_events = 0;
      rate_start = Clock::now();
    }
    MaybeExchange();
    if (publisher) {
      MaybeSnapshot(false);
    } else {
      MaybeCheckpoint(false);
    }
  }
  spdlog::info(
      "training thread: {} events, {:.3f} s in Train (wall), {:.3f} s CPU on this thread "
      "(Train's other workers not counted); longest wait for a batch {:.1f} ms, longest Train "
      "call {:.1f} ms",
      trained, train_s, ThreadCpuSeconds() - cpu_start, longest_wait_ms, longest_train_ms);
}

void Service::Impl::MaybeCheckpoint(bool final) {
  uint64_t request;
  {
    std::unique_lock lock(mu);
    if (write_failed) {
      need_full = true;  // the failed write's rows were unmarked: write everything
      write_failed = false;
      const int64_t interval = std::max<int64_t>(1, config.store.checkpoint_interval_ms);
      retry_delay_ms =
          std::min(interval * kMaxRetryFactor, retry_delay_ms == 0 ? interval : retry_delay_ms * 2);
      next_checkpoint = Clock::now() + std::chrono::milliseconds(retry_delay_ms);
    } else if (write_succeeded) {
      retry_delay_ms = 0;
    }
    write_succeeded = false;
    request = requested;
    // The memory limit waits for users to be stored before they may
    // leave memory: it may ask for a checkpoint before the interval ends.
    bool forced = request > completed || learner->WantsCheckpoint();
    if (!final && !forced && Clock::now() < next_checkpoint) return;
    // One write at a time; a due checkpoint waits for the next batch boundary.
    if (writing || pending) {
      if (!final) return;
      cv.wait(lock, [&] { return !writing && !pending; });
    }
  }
  std::unique_ptr<CheckpointJob> job;
  {
    std::lock_guard lock(mu);
    job = std::move(recycled);
  }
  if (!job) job = std::make_unique<CheckpointJob>();
  const auto snapshot_start = Clock::now();
  // Training waits only while the changed rows are listed; the writer
  // thread copies them (FinishSnapshot) while training goes on, and a
  // trainer about to change a row not yet copied copies it first, so the
  // stored rows still describe exactly the events of `offsets`.
  const double cpu_start = ThreadCpuSeconds();
  learner->BeginSnapshot(need_full, &job->snapshot);
  job->number = learner->snapshot_number();
  spdlog::debug("checkpoint snapshot begun in {:.2f} ms on the training thread ({:.2f} ms CPU)",
                std::chrono::duration<double, std::milli>(Clock::now() - snapshot_start).count(),
                (ThreadCpuSeconds() - cpu_start) * 1e3);
  need_full = false;
  job->offsets = learned_positions;
  job->request = request;
  next_checkpoint =
      Clock::now() + std::chrono::milliseconds(
                         retry_delay_ms > 0 ? retry_delay_ms : config.store.checkpoint_interval_ms);
  Enqueue(std::move(job));
}

void Service::Impl::WaitForMemory() {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (learner->OverLimit() && !stop.load() && Clock::now() < deadline) {
    if (publisher) {
      MaybeSnapshot(false);
    } else {
      MaybeCheckpoint(false);
    }
    {
      std::unique_lock lock(mu);
      cv.wait_for(lock, std::chrono::milliseconds(50), [&] {
        return !writing && !pending && !snap_pending && !snap_busy;
      });
    }
    learner->Idle();
  }
}

void Service::Impl::Enqueue(std::unique_ptr<CheckpointJob> job) {
  std::lock_guard lock(mu);
  pending = std::move(job);
  cv.notify_all();
}

void Service::Impl::WriterLoop() {
  for (;;) {
    std::unique_ptr<CheckpointJob> job;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return pending || writer_stop; });
      if (!pending) return;
      job = std::move(pending);
      writing = true;
    }
    if (!job->finished) {
      const auto copy_start = Clock::now();
      learner->FinishSnapshot(&job->snapshot);
      spdlog::debug("checkpoint snapshot: {} rows copied in {:.1f} ms beside training",
                    job->snapshot.rows(),
                    std::chrono::duration<double, std::milli>(Clock::now() - copy_start).count());
    }
    store::CheckpointInfo info;
    recstream::Status s = store->Write(job->snapshot, job->offsets, job->published, &info);
    if (s.ok()) {
      spdlog::debug("checkpoint {}: {} rows, {} bytes in {:.1f} ms", info.sequence, info.rows,
                    info.bytes, info.duration_ms);
      // Outbox batches that are sent and whose events this checkpoint
      // holds are done with.
      const uint64_t done =
          std::min(job->exchange_through, acked_through.load(std::memory_order_acquire));
      if (exchange && done > outbox_deleted) {
        if (recstream::Status d = store->DeleteOutbox(done); d.ok()) {
          outbox_deleted = done;
        } else {
          spdlog::warn("exchange: deleting sent outbox batches: {}", d.ToString());
        }
      }
    } else {
      spdlog::error("checkpoint failed: {}", s.ToString());
    }
    std::lock_guard lock(mu);
    writing = false;
    last_status = s;
    if (s.ok()) {
      ++checkpoints;
      learner->SnapshotStored(job->number);
      to_commit = job->offsets;
      // Kafka's group offsets are the event topics' (not the exchange's).
      std::erase_if(*to_commit, [&](const auto& e) { return ExchangePosition(e.first.topic); });
      write_succeeded = true;
    } else {
      write_failed = true;
    }
    completed = std::max(completed, job->request);
    recycled = std::move(job);
    cv.notify_all();
  }
}

recstream::Status Service::Impl::OpenPublisher() {
  replicate::PublisherOptions po;
  po.brokers = config.kafka.brokers;
  po.topic = config.kafka.topics.model;
  po.partition = config.kafka.ownership.index;
  po.properties = config.kafka.properties;
  po.delivery_timeout_ms = config.replicate.timeout_ms;
  po.model_settings = config::ModelSettings(config);
  po.snapshot_url = config.replicate.advertise_url;
  if (po.snapshot_url.empty()) {
    // serve.listen with the port bound; a wildcard host becomes this
    // machine's name, which other machines can resolve in most setups
    // (docker-compose service names; otherwise set replicate.advertise_url).
    const std::string address = http->address();
    const std::string port = address.substr(address.rfind(':') + 1);
    std::string host = address.substr(0, address.rfind(':'));
    if (host == "0.0.0.0" || host == "[::]" || host == "::" || host.empty()) {
      char name[256] = {0};
      host = ::gethostname(name, sizeof(name) - 1) == 0 ? name : "localhost";
    }
    po.snapshot_url = "http://" + host + ":" + port;
  }
  const uint64_t generation = uint64_t(NowMs());
  RECSTREAM_RETURN_IF_ERROR(replicate::ModelPublisher::Open(po, generation, &publisher));
  // Replicas hold the topic's last version. When it is the stored one (a
  // clean restart), they match this model and deltas suffice; otherwise
  // (a crash after publishing more than was stored, a new topic, an
  // unreadable one) the first version carries the whole model.
  store::model_records::Commit last;
  recstream::Status s = publisher->LastCommit(10000, &last);
  const store::model_records::Version stored = store->last().published;
  publish_need_full = !(s.ok() && stored.generation != 0 && last.version == stored);
  spdlog::info("publishing the model to {}/{} every {} ms as generation {}; snapshots at {}{}",
               po.topic, po.partition, config.replicate.interval_ms, generation, po.snapshot_url,
               publish_need_full ? " (the first version carries the whole model)" : "");
  next_publish = Clock::now();
  return recstream::Status::OK();
}

void Service::Impl::MaybeSnapshot(bool final) {
  const auto now = Clock::now();
  bool checkpoint, publish, full;
  uint64_t request;
  {
    std::unique_lock lock(mu);
    if (write_failed) {
      need_full = true;  // what the failed write held is gone: store everything
      write_failed = false;
      const int64_t interval = std::max<int64_t>(1, config.store.checkpoint_interval_ms);
      retry_delay_ms =
          std::min(interval * kMaxRetryFactor, retry_delay_ms == 0 ? interval : retry_delay_ms * 2);
      next_checkpoint = now + std::chrono::milliseconds(retry_delay_ms);
    } else if (write_succeeded) {
      retry_delay_ms = 0;
    }
    write_succeeded = false;
    request = requested;
    checkpoint =
        final || request > completed || now >= next_checkpoint || learner->WantsCheckpoint();
    const bool publish_due = final || now >= next_publish || checkpoint;
    if (!checkpoint && !publish_due) return;
    if (snap_pending || snap_busy) {
      if (!final) return;
      cv.wait(lock, [&] { return !snap_pending && !snap_busy; });
    }
    if (checkpoint && (writing || pending)) {
      // One write at a time: this snapshot is published, the checkpoint
      // waits for the next one.
      if (final) {
        cv.wait(lock, [&] { return !writing && !pending; });
      } else {
        checkpoint = false;
      }
    }
    // A final snapshot is published unless publishing is failing (its
    // wait would not fit the shutdown budget).
    publish = now >= publish_retry_at && (!final || publish_error.empty());
    full = need_full || (publish && publish_need_full);
  }
  std::unique_ptr<SnapshotJob> job;
  {
    std::lock_guard lock(mu);
    job = std::move(snap_recycled);
  }
  if (!job) job = std::make_unique<SnapshotJob>();
  // Several trainers: a checkpoint stores follower rows as their own base,
  // so every change up to it is taken (and in the outbox) first.
  if (exchange && checkpoint) TakeChanges(false);
  job->exchange_through = exchange_number;
  learner->BeginSnapshot(full, &job->snapshot);
  job->number = learner->snapshot_number();
  job->time_ms = NowMs();
  job->offsets = learned_positions;
  job->full = full;
  job->publish = publish;
  job->checkpoint = checkpoint;
  job->final = final;
  job->request = request;
  if (full) need_full = false;
  next_publish = now + std::chrono::milliseconds(config.replicate.interval_ms);
  if (checkpoint)
    next_checkpoint = now + std::chrono::milliseconds(
                                retry_delay_ms > 0 ? retry_delay_ms : config.store.checkpoint_interval_ms);
  std::lock_guard lock(mu);
  snap_pending = std::move(job);
  cv.notify_all();
}

void Service::Impl::MaybeExchange() {
  if (!exchange) return;
  const auto now = Clock::now();
  if (now < next_exchange) return;
  next_exchange = now + std::chrono::milliseconds(config.replicate.exchange_interval_ms);
  // What the others sent: changes to the rows this trainer owns, and the
  // owners' rows.
  replicate::TrainerExchange::Received got;
  exchange->Take(&got);
  for (const learner::ModelChanges& c : got.changes) {
    if (recstream::Status st = learner->AddChanges(c); !st.ok()) {
      exchange_errors.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn("exchange: changes refused: {}", st.ToString());
    }
  }
  for (size_t i = 0; i < got.versions.size(); ++i) {
    if (recstream::Status st = learner->FollowOwners(got.versions[i], got.version_from[i]);
        !st.ok()) {
      exchange_errors.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn("exchange: trainer {}'s rows refused: {}", got.version_from[i], st.ToString());
    }
  }
  std::map<int, int64_t> positions, follow;
  std::map<int, uint64_t> applied;
  exchange->Positions(&positions, &applied, &follow);
  for (const auto& [p, offset] : positions)
    learned_positions[{config.kafka.topics.updates, p}] = offset;
  for (const auto& [sender, number] : applied)
    learned_positions[{applied_topic(), sender}] = int64_t(number);
  for (const auto& [p, offset] : follow) learned_positions[{follow_topic(), p}] = offset;
  TakeChanges(false);
}

void Service::Impl::TakeChanges(bool drop) {
  learner::ModelChanges changes;
  {
    std::lock_guard lock(mu);
    changes = std::move(spare_changes);
  }
  learner->TakeChanges(&changes);
  bool any = changes.rows() > 0 || !changes.feature_lists.empty();
  for (const auto& [name, values] : changes.dense)
    for (float v : values) any |= v != 0.0f;
  if (drop || !any) {
    std::lock_guard lock(mu);
    spare_changes = std::move(changes);
    return;
  }
  store::CheckpointStore::OutboxBatch batch;
  batch.number = ++exchange_number;
  // Encoded once: what the outbox stores is what the send thread sends.
  batch.bytes = exchange->Encode(&changes, batch.number);
  for (const auto& [tp, offset] : learned_positions)
    if (!ExchangePosition(tp.topic)) batch.positions[tp] = offset;
  // Stored before it can count as sent (a checkpoint after this one stores
  // the rows as they are now, the change taken out): in the log now, synced
  // by the send thread before it goes out.
  if (recstream::Status st = store->PutOutbox(batch); !st.ok()) {
    exchange_errors.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("exchange: storing outbox batch {} failed (a crash before it is sent loses it): {}",
                 batch.number, st.ToString());
  }
  std::lock_guard lock(mu);
  spare_changes = std::move(changes);  // emptied by Encode, its buffers kept
  to_send.emplace_back(batch.number, std::move(batch.bytes));
  cv.notify_all();
}

void Service::Impl::SendLoop() {
  int64_t backoff_ms = 0;
  for (;;) {
    std::pair<uint64_t, std::string> batch;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !to_send.empty() || writer_stop; });
      if (to_send.empty()) return;
      batch = std::move(to_send.front());
      to_send.pop_front();
      exchange_busy = true;
    }
    // Durable before it leaves (store.sync): a machine that crashes after
    // sending it takes none of its changes again.
    if (recstream::Status st = store->SyncOutbox(); !st.ok()) {
      exchange_errors.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn("exchange: syncing the outbox: {}", st.ToString());
    }
    // In order, each until Kafka has it (the owner drops a batch sent twice).
    for (;;) {
      recstream::Status st = exchange->SendEncoded(batch.second, batch.first);
      if (st.ok()) {
        backoff_ms = 0;
        acked_through.store(batch.first, std::memory_order_release);
        std::lock_guard lock(mu);
        exchange_busy = false;
        cv.notify_all();
        break;
      }
      exchange_errors.fetch_add(1, std::memory_order_relaxed);
      backoff_ms = std::min<int64_t>(5000, backoff_ms == 0 ? 100 : backoff_ms * 2);
      spdlog::warn("exchange: sending batch {} failed (again in {} ms): {}", batch.first,
                   backoff_ms, st.ToString());
      std::unique_lock lock(mu);
      if (cv.wait_for(lock, std::chrono::milliseconds(backoff_ms), [&] { return writer_stop; }))
        return;
    }
  }
}

void Service::Impl::PublishLoop() {
  for (;;) {
    std::unique_ptr<SnapshotJob> job;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return snap_pending || writer_stop; });
      if (!snap_pending) return;
      job = std::move(snap_pending);
      snap_busy = true;
    }
    learner->FinishSnapshot(&job->snapshot);
    // Merged first: a version is in the next checkpoint before any replica
    // can see it, so a snapshot fetched after a version is at least as new.
    const store::model_records::Version version = publisher->next();
    merged.Merge(job->snapshot, job->full);
    for (const auto& [tp, offset] : job->offsets) merged_offsets[tp] = offset;
    merged_request = std::max(merged_request, job->request);
    merged_number = std::max(merged_number, job->number);
    merged_exchange_through = std::max(merged_exchange_through, job->exchange_through);
    recstream::Status s;
    if (job->publish) {
      // Several trainers: this trainer's own rows only (its users, the
      // shared rows it owns, the dense blocks when trainer 0), so that
      // replicas and the other trainers take each row from its owner;
      // trimmed in place, since the checkpoint has merged it above.
      if (exchange)
        learner::KeepOwned(config.kafka.ownership.index, config.kafka.ownership.count,
                           &job->snapshot);
      s = publisher->Publish(job->snapshot, job->full, job->time_ms,
                             job->final ? std::min(1000, config.replicate.timeout_ms) : -1);
    } else {
      s = recstream::Status::Unavailable("publishing paused after a failure");
      publisher->SkipVersion();
    }
    {
      std::lock_guard lock(mu);
      if (s.ok()) {
        if (job->full) publish_need_full = false;
        if (!publish_error.empty()) spdlog::info("publishing the model works again");
        publish_error.clear();
        publish_backoff_ms = 0;
      } else if (job->publish) {
        // Replicas drop the incomplete version; the next one carries the
        // whole model. Retries back off up to 30 s while Kafka fails.
        publish_need_full = true;
        publish_backoff_ms = std::min<int64_t>(30000, publish_backoff_ms == 0
                                                          ? std::max(100, config.replicate.interval_ms)
                                                          : publish_backoff_ms * 2);
        publish_retry_at = Clock::now() + std::chrono::milliseconds(publish_backoff_ms);
        publish_error = s.ToString();
        spdlog::warn("publishing version {} failed (retrying in {} ms with the whole model): {}",
                     version.ToString(), publish_backoff_ms, s.ToString());
      }
    }
    if (job->checkpoint) {
      auto ckpt = std::make_unique<CheckpointJob>();
      bool full = false;
      merged.Take(&ckpt->snapshot, &full);
      ckpt->offsets = std::move(merged_offsets);
      merged_offsets.clear();
      ckpt->request = merged_request;
      ckpt->number = merged_number;
      ckpt->exchange_through = merged_exchange_through;
      ckpt->finished = true;
      ckpt->published = version;
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !writing && !pending; });
      pending = std::move(ckpt);
      cv.notify_all();
    }
    std::lock_guard lock(mu);
    snap_busy = false;
    snap_recycled = std::move(job);
    cv.notify_all();
  }
}

recstream::Status Service::Impl::SnapshotPage(const std::string& after, size_t max_bytes,
                                              bool fresh, std::string* body) {
  if (fresh) {
    // At most one forced checkpoint a second, whoever asks.
    std::lock_guard lock(fresh_mu);
    if (Clock::now() - last_fresh >= std::chrono::seconds(1)) {
      RECSTREAM_RETURN_IF_ERROR(Checkpoint());
      last_fresh = Clock::now();
    }
  }
  store::model_records::ModelPage page;
  RECSTREAM_RETURN_IF_ERROR(store->ReadModelPage(after, max_bytes, &page));
  // Several trainers: what this trainer publishes, as on the model topic
  // (a replica takes each row from its owner's snapshot).
  if (config.learner.trainer_count > 1)
    RECSTREAM_RETURN_IF_ERROR(store::model_records::KeepOwnedRecords(
        config.kafka.ownership.index, config.kafka.ownership.count, &page));
  *body = store::model_records::EncodePage(page);
  return recstream::Status::OK();
}

recstream::Status Service::Impl::Checkpoint() {
  std::unique_lock lock(mu);
  uint64_t mine = ++requested;
  bool done =
      cv.wait_for(lock, std::chrono::seconds(30), [&] { return completed >= mine || stop; });
  if (!done) return recstream::Status::Unavailable("checkpoint did not finish within 30 s");
  if (completed < mine) return recstream::Status::Unavailable("service is stopping");
  return last_status;
}

serve::ServiceStatus Service::Impl::Status() const {
  serve::ServiceStatus st;
  learner::LearnerStats ls = learner->Stats();
  for (int t = 0; t < learner::kNumTasks; ++t) {
    st.seen[t] = seen[t].load(std::memory_order_relaxed);
    st.learned[t] = ls.tasks[t].learned;
  }
  for (int r = 0; r < ingest::kNumRejectReasons; ++r)
    st.rejected.emplace_back(std::string(ingest::RejectReasonName(ingest::RejectReason(r))),
                             rejected[r].load(std::memory_order_relaxed));
  st.dlq_sent = dlq->sent();
  ingest::AssignmentInfo assignment = consumer->Assignment();
  st.trainer_index = assignment.ownership.index;
  st.trainer_count = assignment.ownership.count;
  for (const TopicPartition& tp : assignment.assigned)
    st.assigned_partitions.push_back(tp.topic + "/" + std::to_string(tp.partition));
  for (const TopicPartition& tp : assignment.missing)
    st.missing_partitions.push_back(tp.topic + "/" + std::to_string(tp.partition));
  if (exchange) {
    const replicate::ExchangeStats x = exchange->stats();
    st.exchange.on = true;
    st.exchange.sent_batches = x.sent_batches;
    st.exchange.sent_bytes = x.sent_bytes;
    st.exchange.received_batches = x.received_batches;
    st.exchange.duplicate_batches = x.duplicate_batches;
    st.exchange.incomplete_batches = x.incomplete_batches;
    st.exchange.bad_records = x.bad_records;
    st.exchange.followed_versions = x.followed_versions;
    st.exchange.errors = exchange_errors.load(std::memory_order_relaxed);
    std::lock_guard lock(mu);
    st.exchange.outbox = to_send.size() + (exchange_busy ? 1 : 0);
  }
  for (const ingest::PartitionLag& l : consumer->Lag())
    st.lag.push_back({l.topic, l.partition, l.position, l.high_watermark, l.lag});
  recstream::Status health = store->Health();
  st.checkpoint_ok = health.ok();
  if (!health.ok()) st.checkpoint_error = health.ToString();
  store::CheckpointInfo info = store->last();
  st.last_checkpoint_ms = info.time_ms;
  st.last_checkpoint_rows = info.rows;
  st.last_checkpoint_duration_ms = info.duration_ms;
  st.last_checkpoint_bytes = info.bytes;
  for (const auto& [tp, off] : info.offsets)
    st.checkpoint_offsets.emplace_back(tp.topic + "/" + std::to_string(tp.partition), off);
  {
    std::lock_guard lock(mu);
    st.checkpoints = checkpoints;
  }
  st.uptime_s = std::chrono::duration<double>(Clock::now() - started).count();
  st.events_per_second = events_per_second.load();
  if (publisher) {
    const replicate::PublisherStats ps = publisher->stats();
    st.publishing = true;
    st.model_topic = config.kafka.topics.model;
    st.published_version = ps.last.ToString();
    st.published_versions = ps.versions;
    st.published_full = ps.full;
    st.published_records = ps.records;
    st.published_bytes = ps.bytes;
    st.publish_failures = ps.failures;
    st.last_publish_ms = ps.last_publish_ms;
    std::lock_guard lock(mu);
    st.publish_error = publish_error;
  }
  return st;
}

bool Service::Impl::Ready(std::string* why_not) const {
  if (!loaded) {
    *why_not = "model not loaded";
    return false;
  }
  if (!consumer->HasAssignment()) {
    *why_not = "waiting for " + consumer->Assignment().waiting_for;
    return false;
  }
  recstream::Status health = store->Health();
  if (!health.ok()) {
    *why_not = "checkpoint store failing: " + health.ToString();
    return false;
  }
  return true;
}

Service::Service(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Service::~Service() {
  if (impl_ && !impl_->stop) (void)Shutdown();
}

void TuneMalloc() {
#ifdef __GLIBC__
  // A fixed threshold (the largest glibc allows) instead of the dynamic one,
  // so fetch buffers are heap blocks rather than mappings of their own.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  // Freed memory stays in the heaps: no trimming of the top of a heap below
  // 1 GiB, and a per-thread heap that falls empty is kept rather than
  // unmapped (glibc keeps it when the top pad is as large as a heap).
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
#endif
}

recstream::Status Service::Start(const config::AppConfig& config,
                                 std::unique_ptr<Service>* service) {
  auto impl = std::make_unique<Impl>(config);
  recstream::Status s;
  {
    // Every thread Init starts, and the threads those start, inherit it.
    const ThreadSliceScope background(config.background_slice_us);
    s = impl->Init();
  }
  std::unique_ptr<Service> svc(new Service(std::move(impl)));
  if (!s.ok()) {
    (void)svc->Shutdown();
    return s;
  }
  *service = std::move(svc);
  return recstream::Status::OK();
}

std::string Service::http_address() const {
  return impl_->http ? impl_->http->address() : impl_->config.serve.listen;
}

std::string Service::kafka_brokers() const { return impl_->config.kafka.brokers; }

recstream::Status Service::Shutdown() {
  Impl& m = *impl_;
  if (m.stop.exchange(true)) return recstream::Status::OK();
  // SIGTERM must end the process within 5 s (docs/interface.md section 4):
  // the Kafka steps get what the final checkpoint leaves of this budget.
  const auto begin = Clock::now();
  const auto deadline = begin + std::chrono::milliseconds(4000);
  auto elapsed_ms = [&] {
    return std::chrono::duration<double, std::milli>(Clock::now() - begin).count();
  };
  {
    std::lock_guard lock(m.mu);
    m.cv.notify_all();  // wake forced-checkpoint waiters
  }
  {
    std::lock_guard lock(m.batch_mu);
    m.batch_cv.notify_all();
  }
  if (m.ingester.joinable()) m.ingester.join();
  if (m.trainer.joinable()) m.trainer.join();
  spdlog::debug("shutdown: training stopped after {:.0f} ms", elapsed_ms());
  // A publish waiting for Kafka would not fit the budget: one under way
  // gets 1 s, and the final version is sent only while Kafka takes them.
  if (m.publisher) {
    std::unique_lock lock(m.mu);
    if (!m.publish_error.empty() ||
        !m.cv.wait_for(lock, std::chrono::seconds(1), [&] { return !m.snap_busy && !m.snap_pending; }))
      m.publisher->Abort();
  }
  if (m.exchange) {
    // The last changes go to their owners before the final checkpoint
    // counts them as sent (up to 2 s).
    m.next_exchange = Clock::now();
    m.MaybeExchange();
    std::unique_lock lock(m.mu);
    if (!m.cv.wait_for(lock, std::chrono::seconds(2),
                       [&] { return m.to_send.empty() && !m.exchange_busy; }))
      spdlog::warn("shutdown: {} exchange batches not sent", m.to_send.size());
  }
  recstream::Status final_status;
  if (m.writer.joinable()) {
    // The last batch is learned; store it with its offsets (and publish it).
    if (m.publisher && m.publish_thread.joinable()) {
      m.MaybeSnapshot(true);
    } else {
      m.MaybeCheckpoint(true);
    }
    {
      std::unique_lock lock(m.mu);
      m.cv.wait(lock, [&] { return !m.pending && !m.writing && !m.snap_pending && !m.snap_busy; });
      final_status = m.last_status;
      m.writer_stop = true;
      m.cv.notify_all();
      if (final_status.ok() && m.to_commit && m.consumer->HasAssignment()) {
        m.consumer->CommitAsync(*m.to_commit);
        m.to_commit.reset();
      }
    }
    m.writer.join();
    if (m.publish_thread.joinable()) m.publish_thread.join();
    if (m.send_thread.joinable()) m.send_thread.join();
    spdlog::debug("shutdown: final checkpoint after {:.0f} ms", elapsed_ms());
  }
  if (m.http) m.http->Stop();
  if (m.consumer) {
    // Closing waits for the commit in flight; with the brokers unreachable
    // that can take longer than the budget. Then the consumer is left to
    // finish on its own thread (and leaked: the process is exiting). No group
    // membership is involved (fixed ownership), and the stored offsets, not
    // Kafka's, decide where the next start resumes.
    auto done = std::make_shared<std::promise<recstream::Status>>();
    std::future<recstream::Status> closed = done->get_future();
    ingest::EventConsumer* consumer = m.consumer.get();
    std::thread closer([consumer, done] { done->set_value(consumer->Close()); });
    auto budget = std::max<Clock::duration>(
        deadline - Clock::now() - std::chrono::milliseconds(500), std::chrono::milliseconds(500));
    if (closed.wait_for(budget) == std::future_status::ready) {
      closer.join();
      recstream::Status s = closed.get();
      if (!s.ok()) spdlog::warn("leaving the consumer group: {}", s.ToString());
    } else {
      spdlog::warn(
          "closing the Kafka consumer: no answer from Kafka within {:.0f} ms; exiting "
          "without waiting",
          std::chrono::duration<double, std::milli>(budget).count());
      closer.detach();
      (void)m.consumer.release();
    }
    spdlog::debug("shutdown: consumer closed after {:.0f} ms", elapsed_ms());
  }
  if (m.dlq) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    (void)m.dlq->Flush(int(std::max<int64_t>(100, left.count())));
  }
  spdlog::debug("shutdown: done after {:.0f} ms", elapsed_ms());
  return final_status;
}

}  // namespace recstream::app
