#include "replicate/exchange.h"

#include <librdkafka/rdkafkacpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "replicate/kafka_util.h"
#include "store/codec.h"
#include "store/model_records.h"

namespace recstream::replicate {

namespace mr = store::model_records;
namespace codec = store::codec;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kSenderBits = 12;  // trainer.count is at most 4096
// In an encoded batch (TrainerExchange::Encode): the owner (u32) whose
// partition the records after it go to.
constexpr std::string_view kOwnerKey = "m/owner";

// The records of a page (mr::Kind::kPage) into `builder`: each of the
// page's version. Corruption at the first that is not.
Status AddPageRecords(mr::SnapshotBuilder* builder, const mr::Header& page,
                      std::string_view records) {
  return mr::ForEachPageRecord(records, [&](std::string_view key, std::string_view value) {
    if (value.empty()) return builder->AddTombstone(key);
    mr::Header h;
    std::string_view payload;
    RECSTREAM_RETURN_IF_ERROR(mr::DecodeHeader(value, &h, &payload));
    if (h.version != page.version || h.kind == mr::Kind::kPage || h.kind == mr::Kind::kCommit)
      return Status::Corruption("a page holds a record of another version or kind");
    return builder->AddTopicRecord(key, h, payload);
  });
}

// A batch or version being read: its records so far.
struct Pending {
  mr::Version version;
  uint64_t records = 0;
  int64_t first_offset = -1;  // of its first record
  // A page of the batch was missed or unreadable: it cannot be whole, and
  // its commit is dropped as incomplete.
  bool broken = false;
  mr::SnapshotBuilder builder;
  // Whether what was read is the batch that commit `c` closes, whole (or
  // both are empty).
  bool Complete(const mr::Commit& c) const {
    return !broken && c.records == records && (records == 0 || c.version == version);
  }
  // Adds a record at `offset` (the first one names the version); false
  // when it is unreadable.
  bool Add(std::string_view key, const mr::Header& h, std::string_view payload, int64_t offset) {
    if (records == 0) {
      version = h.version;
      first_offset = offset;
    }
    if (!builder.AddTopicRecord(key, h, payload).ok()) return false;
    ++records;
    return true;
  }
};

// Adds a record of the updates topic other than a commit to its sender's
// batch `b`. Pages are numbered from 0 in their key: a page 0 starts the
// batch afresh (a sender that sends it again after a crash or a failed
// delivery, whose earlier pages may have arrived), and any other page must
// be the next one, or the batch is broken. A batch with a bad page is given
// up whole. Returns false for an unreadable record (which breaks the batch it
// belongs to); *dropped counts unfinished batches given up.
bool AddToBatch(Pending* b, std::string_view key, const mr::Header& h, std::string_view payload,
                int64_t offset, uint64_t* dropped) {
  // Starts the batch again (broken: as one that cannot be whole, counted
  // at its commit); a batch given up for another is counted here.
  auto restart = [&](bool broken) {
    if ((b->records > 0 || b->broken) && (!broken || b->version != h.version)) ++*dropped;
    *b = Pending();
    b->broken = broken;
    b->version = h.version;
    b->first_offset = offset;
  };
  if (h.kind != mr::Kind::kPage) {  // one record per row (an older build's batch)
    if (b->broken && b->version == h.version) return true;
    return b->Add(key, h, payload, offset);
  }
  if (key.size() != mr::kPageKey.size() + 4 || !key.starts_with(mr::kPageKey)) return false;
  const uint32_t index = codec::DecodeFixed32(key.data() + mr::kPageKey.size());
  if (index == 0) {
    restart(false);
  } else if (b->broken || b->version != h.version || index != b->records) {
    if (!(b->broken && b->version == h.version)) restart(true);
    return true;
  }
  // A page that fails part way leaves records in the builder: the batch is
  // given up whole (restart), so none of them is ever handed over.
  if (!AddPageRecords(&b->builder, h, payload).ok()) {
    restart(true);
    return false;
  }
  if (b->records == 0) {
    b->version = h.version;
    b->first_offset = offset;
  }
  ++b->records;
  return true;
}

// Changes travel as the rows, lists and dense blocks of a snapshot.
learner::ModelSnapshot AsSnapshot(learner::ModelChanges changes) {
  learner::ModelSnapshot s;
  s.tables = std::move(changes.tables);
  s.dense = std::move(changes.dense);
  s.feature_lists = std::move(changes.feature_lists);
  return s;
}
learner::ModelChanges AsChanges(learner::ModelSnapshot s) {
  learner::ModelChanges c;
  c.tables = std::move(s.tables);
  c.dense = std::move(s.dense);
  c.feature_lists = std::move(s.feature_lists);
  return c;
}

}  // namespace

struct TrainerExchange::Impl : public RdKafka::DeliveryReportCb {
  ExchangeOptions options;
  KafkaLogger logger;
  std::unique_ptr<RdKafka::Producer> producer;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer;
  std::thread thread;
  std::atomic<bool> stop{false};

  // Delivery of the batch in flight (dr_cb runs inside poll on Send's thread).
  uint64_t acked = 0, acked_bytes = 0, failed = 0;
  std::string first_error;

  mutable std::mutex mu;  // guards everything below
  Received received;
  // Updates partitions read: the next offset, and per sender the batch
  // being read.
  std::map<int, int64_t> next;
  std::map<int, std::map<int, Pending>> batches;
  std::map<int, uint64_t> applied;    // per sender: last batch handed over
  std::map<int, Pending> versions;    // per model partition
  std::map<int, int64_t> model_next;  // per model partition: next offset
  ExchangeStats stats;
  // As of the last Take (Positions).
  std::map<int, int64_t> taken_positions;
  std::map<int, uint64_t> taken_applied;
  std::map<int, int64_t> taken_follow;

  void dr_cb(RdKafka::Message& m) override {
    if (m.err() == RdKafka::ERR_NO_ERROR) {
      ++acked;
      acked_bytes += m.len() + (m.key() ? m.key()->size() : 0);
    } else if (failed++ == 0) {
      first_error = m.errstr();
    }
  }

  void Loop();
  void OnUpdate(const RdKafka::Message& m);
  void OnVersion(const RdKafka::Message& m);
};

std::string EncodeChanges(const learner::ModelChanges& changes) {
  const learner::ModelSnapshot s = AsSnapshot(changes);
  std::string out;
  (void)mr::ForEachModelRecord(s, mr::Commit(), false,
                               [&](std::string_view key, std::string_view value) -> Status {
                                 if (key != mr::kCommitKey) mr::AppendPageRecord(&out, key, value);
                                 return Status::OK();
                               });
  return out;
}

Status DecodeChanges(std::string_view bytes, learner::ModelChanges* out) {
  mr::SnapshotBuilder builder;
  RECSTREAM_RETURN_IF_ERROR(
      mr::ForEachPageRecord(bytes, [&](std::string_view key, std::string_view value) -> Status {
        mr::Header h;
        std::string_view payload;
        RECSTREAM_RETURN_IF_ERROR(mr::DecodeHeader(value, &h, &payload));
        return builder.AddTopicRecord(key, h, payload);
      }));
  learner::ModelSnapshot s;
  *out = builder.Take(&s) ? AsChanges(std::move(s)) : learner::ModelChanges();
  return Status::OK();
}

TrainerExchange::TrainerExchange(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TrainerExchange::~TrainerExchange() {
  impl_->stop.store(true);
  if (impl_->thread.joinable()) impl_->thread.join();
  if (impl_->consumer) impl_->consumer->close();
  if (impl_->producer) {
    impl_->producer->purge(RdKafka::Producer::PURGE_QUEUE | RdKafka::Producer::PURGE_INFLIGHT);
    impl_->producer->poll(0);
  }
}

Status TrainerExchange::Open(const ExchangeOptions& options, const std::map<int, int64_t>& start,
                             const std::map<int, uint64_t>& applied,
                             const std::map<int, int64_t>& follow,
                             std::unique_ptr<TrainerExchange>* out) {
  if (options.brokers.empty()) return Status::InvalidArgument("kafka.brokers is empty");
  if (options.count < 2 || options.count > (1 << kSenderBits) || options.index < 0 ||
      options.index >= options.count)
    return Status::InvalidArgument("the exchange needs trainer.count >= 2 and a valid index");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->applied = applied;
  impl->taken_applied = applied;

  std::unique_ptr<RdKafka::Conf> conf;
  RECSTREAM_RETURN_IF_ERROR(OpenOrderedProducer(options.brokers, "recstream-exchange",
                                                options.delivery_timeout_ms, options.properties,
                                                impl.get(), &impl->logger, &conf, &impl->producer));
  std::string err;
  RECSTREAM_RETURN_IF_ERROR(
      OpenAssignConsumer(options.brokers, options.properties, &impl->logger, &impl->consumer));
  // The updates partitions this trainer reads, from the topic's metadata.
  std::unique_ptr<RdKafka::Topic> topic(
      RdKafka::Topic::create(impl->producer.get(), options.updates_topic, nullptr, err));
  RdKafka::Metadata* raw = nullptr;
  if (!topic || impl->producer->metadata(false, topic.get(), &raw, 10000) != RdKafka::ERR_NO_ERROR)
    return Status::Unavailable("reading the metadata of " + options.updates_topic);
  std::unique_ptr<RdKafka::Metadata> metadata(raw);
  int partitions = 0;
  for (const RdKafka::TopicMetadata* t : *metadata->topics())
    if (t->topic() == options.updates_topic && t->err() == RdKafka::ERR_NO_ERROR)
      partitions = int(t->partitions()->size());
  if (partitions < options.count)
    return Status::InvalidArgument(options.updates_topic + " has " + std::to_string(partitions) +
                                   " partitions; it needs at least trainer.count (" +
                                   std::to_string(options.count) + ")");
  std::vector<std::unique_ptr<RdKafka::TopicPartition>> owned;
  std::vector<RdKafka::TopicPartition*> assign;
  for (int p = 0; p < partitions; ++p) {
    if (p % options.count != options.index) continue;
    auto it = start.find(p);
    const int64_t from = it != start.end() ? it->second : RdKafka::Topic::OFFSET_BEGINNING;
    owned.emplace_back(RdKafka::TopicPartition::create(options.updates_topic, p, from));
    impl->next[p] = it != start.end() ? it->second : 0;
    impl->taken_positions[p] = impl->next[p];
  }
  for (int j = 0; j < options.count; ++j) {
    if (j == options.index) continue;
    auto it = follow.find(j);
    owned.emplace_back(RdKafka::TopicPartition::create(
        options.model_topic, j,
        it != follow.end() ? it->second : RdKafka::Topic::OFFSET_BEGINNING));
    impl->model_next[j] = it != follow.end() ? it->second : 0;
    impl->taken_follow[j] = impl->model_next[j];
  }
  for (auto& tp : owned) assign.push_back(tp.get());
  if (impl->consumer->assign(assign) != RdKafka::ERR_NO_ERROR)
    return Status::Unavailable("assigning the exchange's partitions");
  Impl* d = impl.get();
  impl->thread = std::thread([d] { d->Loop(); });
  out->reset(new TrainerExchange(std::move(impl)));
  return Status::OK();
}

void TrainerExchange::Impl::Loop() {
  while (!stop.load()) {
    std::unique_ptr<RdKafka::Message> m(consumer->consume(50));
    if (m->err() != RdKafka::ERR_NO_ERROR) {
      if (m->err() != RdKafka::ERR__TIMED_OUT && m->err() != RdKafka::ERR__PARTITION_EOF)
        spdlog::warn("exchange: reading {}: {}", m->topic_name(), m->errstr());
      continue;
    }
    if (m->topic_name() == options.updates_topic) {
      OnUpdate(*m);
    } else {
      OnVersion(*m);
    }
  }
}

void TrainerExchange::Impl::OnUpdate(const RdKafka::Message& m) {
  const int p = m.partition();
  std::lock_guard lock(mu);
  next[p] = m.offset() + 1;
  mr::Header h;
  std::string_view payload;
  const std::string_view value(static_cast<const char*>(m.payload()), m.payload() ? m.len() : 0);
  if (m.key() == nullptr || value.empty() || !mr::DecodeHeader(value, &h, &payload).ok()) {
    ++stats.bad_records;
    return;
  }
  const int sender = int(h.version.generation & ((uint64_t(1) << kSenderBits) - 1));
  Pending& b = batches[p][sender];
  if ((b.records > 0 || b.broken) && b.version != h.version) {
    // The sender started another batch before committing this one.
    ++stats.incomplete_batches;
    b = Pending();
  }
  if (h.kind == mr::Kind::kCommit) {
    mr::Commit c;
    if (*m.key() != mr::kCommitKey || !mr::DecodeCommit(h, payload, &c).ok()) {
      ++stats.bad_records;
      return;
    }
    if (!b.Complete(c)) {
      ++stats.incomplete_batches;
    } else if (auto it = applied.find(sender);
               it != applied.end() && c.version.sequence <= it->second) {
      ++stats.duplicate_batches;
    } else {
      applied[sender] = c.version.sequence;
      learner::ModelSnapshot s;
      if (c.records > 0 && b.builder.Take(&s)) {
        received.changes.push_back(AsChanges(std::move(s)));
        ++stats.received_batches;
      }
    }
    b = Pending();
    return;
  }
  if (!AddToBatch(&b, *m.key(), h, payload, m.offset(), &stats.incomplete_batches))
    ++stats.bad_records;
}

void TrainerExchange::Impl::OnVersion(const RdKafka::Message& m) {
  std::lock_guard lock(mu);
  model_next[m.partition()] = m.offset() + 1;
  Pending& v = versions[m.partition()];
  const std::string_view value(static_cast<const char*>(m.payload()), m.payload() ? m.len() : 0);
  if (m.key() == nullptr) {
    ++stats.bad_records;
    return;
  }
  if (value.empty()) {  // a tombstone of the version being read
    if (!v.builder.AddTombstone(*m.key()).ok()) {
      ++stats.bad_records;
    } else if (v.records++ == 0) {
      v.first_offset = m.offset();
    }
    return;
  }
  mr::Header h;
  std::string_view payload;
  if (!mr::DecodeHeader(value, &h, &payload).ok()) {
    ++stats.bad_records;
    return;
  }
  if (v.records > 0 && v.version != h.version) {
    v.records = 0;
    v.builder.Clear();
  }
  if (h.kind == mr::Kind::kCommit) {
    mr::Commit c;
    if (!mr::DecodeCommit(h, payload, &c).ok()) {
      ++stats.bad_records;
      return;
    }
    learner::ModelSnapshot s;
    if (c.records > 0 && v.version == c.version && v.records == c.records && v.builder.Take(&s)) {
      received.versions.push_back(std::move(s));
      received.version_from.push_back(m.partition());  // trainer j publishes on partition j
      ++stats.followed_versions;
    }
    v.records = 0;
    v.version = mr::Version();
    v.builder.Clear();  // the widths and shape stay
    return;
  }
  if (!v.Add(*m.key(), h, payload, m.offset())) ++stats.bad_records;
}

namespace {

// ForEachUpdateRecord's records appended to *out, framed as page records
// (mr::AppendPageRecord): each page written in place, its length filled in
// when it closes.
void AppendUpdateRecords(learner::ModelChanges* changes, uint64_t generation, uint64_t number,
                         std::string* out) {
  const mr::Version version{generation, number};
  size_t bytes = 1024;
  for (const learner::TableDelta& t : changes->tables)
    bytes += t.values.size() * sizeof(float) + t.keys.size() * (mr::kHeaderSize + 40);
  for (const auto& [name, v] : changes->dense) bytes += v.size() * sizeof(float) + 128;
  out->reserve(out->size() + bytes + bytes / 8);
  constexpr size_t kClosed = ~size_t(0);
  size_t page_at = kClosed;  // where the open page's value begins
  uint64_t pages = 0;
  auto close = [&] {
    if (page_at == kClosed) return;
    std::string len;
    codec::PutFixed32(&len, uint32_t(out->size() - page_at));
    out->replace(page_at - 4, 4, len);
    page_at = kClosed;
    ++pages;
  };
  // The changes' buffers are lent to a snapshot for the records, then given
  // back.
  learner::ModelSnapshot s = AsSnapshot(std::move(*changes));
  struct GiveBack {
    learner::ModelSnapshot* s;
    learner::ModelChanges* c;
    ~GiveBack() { *c = AsChanges(std::move(*s)); }
  } give_back{&s, changes};
  mr::Commit commit;
  commit.version = version;
  const bool empty = s.tables.empty() && s.dense.empty() && s.feature_lists.empty();
  (void)mr::ForEachModelRecord(
      s, commit, empty, [&](std::string_view key, std::string_view value) -> Status {
        if (key == mr::kCommitKey) {
          close();
          mr::Commit c;
          c.version = version;
          c.records = pages;
          mr::AppendPageRecord(out, mr::kCommitKey, mr::EncodeCommit(c));
          return Status::OK();
        }
        if (page_at != kClosed &&
            out->size() - page_at + key.size() + value.size() + 8 > kUpdatePageBytes)
          close();
        if (page_at == kClosed) {
          std::string key(mr::kPageKey);
          codec::PutFixed32(&key, uint32_t(pages));            // the page's number in its batch
          mr::AppendPageRecord(out, key, std::string_view());  // length filled in later
          page_at = out->size();
          mr::AppendHeader(out, mr::Kind::kPage, version);
        }
        mr::AppendPageRecord(out, key, value);
        return Status::OK();
      });
}

}  // namespace

Status ForEachUpdateRecord(learner::ModelChanges* changes, uint64_t generation, uint64_t number,
                           const std::function<Status(std::string_view, std::string_view)>& emit) {
  std::string records;
  AppendUpdateRecords(changes, generation, number, &records);
  return mr::ForEachPageRecord(records, emit);
}

Status DecodeUpdateRecords(std::span<const std::pair<std::string, std::string>> records,
                           learner::ModelChanges* out) {
  Pending b;
  for (const auto& [key, value] : records) {
    mr::Header h;
    std::string_view payload;
    RECSTREAM_RETURN_IF_ERROR(mr::DecodeHeader(value, &h, &payload));
    if (h.kind == mr::Kind::kCommit) {
      mr::Commit c;
      RECSTREAM_RETURN_IF_ERROR(mr::DecodeCommit(h, payload, &c));
      if (!b.Complete(c)) return Status::Corruption("a batch cut short");
      learner::ModelSnapshot s;
      *out = b.builder.Take(&s) ? AsChanges(std::move(s)) : learner::ModelChanges();
      return Status::OK();
    }
    uint64_t dropped = 0;
    if (!AddToBatch(&b, key, h, payload, 0, &dropped) || dropped > 0)
      return Status::Corruption("an unreadable record");
  }
  return Status::Corruption("a batch without its commit");
}

std::string EncodeBatch(learner::ModelChanges* changes, int index, int count, uint64_t run,
                        uint64_t number) {
  std::vector<learner::ModelChanges> parts;
  learner::SplitByOwner(std::move(*changes), count, &parts);
  std::string out;
  for (int owner = 0; owner < count; ++owner) {
    if (owner == index) continue;
    std::string to;
    codec::PutFixed32(&to, uint32_t(owner));
    mr::AppendPageRecord(&out, kOwnerKey, to);
    AppendUpdateRecords(&parts[size_t(owner)], run << kSenderBits | uint64_t(index), number, &out);
  }
  // The tables' buffers go back to the caller, for its next take: no rows
  // (keys), values of any size (Learner::TakeChanges reuses them).
  *changes = learner::ModelChanges();
  for (learner::ModelChanges& p : parts)
    for (learner::TableDelta& t : p.tables) {
      t.keys.clear();
      changes->tables.push_back(std::move(t));
    }
  return out;
}

std::string TrainerExchange::Encode(learner::ModelChanges* changes, uint64_t number) const {
  const ExchangeOptions& o = impl_->options;
  return EncodeBatch(changes, o.index, o.count, o.run, number);
}

bool IsEncodedBatch(std::string_view bytes) {
  bool owner_first = false;
  (void)mr::ForEachPageRecord(bytes, [&](std::string_view key, std::string_view) {
    owner_first = key == kOwnerKey;
    return Status::Corruption("only the first");
  });
  return owner_first;
}

Status ForEachEncodedRecord(
    std::string_view bytes, int index, int count,
    const std::function<Status(int, std::string_view, std::string_view)>& fn) {
  int owner = -1;
  return mr::ForEachPageRecord(bytes, [&](std::string_view key, std::string_view value) {
    if (key == kOwnerKey) {
      owner = value.size() == 4 ? int(codec::DecodeFixed32(value.data())) : -1;
      if (owner < 0 || owner >= count || owner == index)
        return Status::Corruption("an outbox batch for trainer " + std::to_string(owner) +
                                  " stored by a trainer that is now " + std::to_string(index) +
                                  " of " + std::to_string(count) +
                                  " (trainer.index or trainer.count changed)");
      return Status::OK();
    }
    if (owner < 0) return Status::Corruption("an outbox batch without its owner");
    return fn(owner, key, value);
  });
}

Status CheckEncodedBatch(std::string_view bytes, int index, int count) {
  return ForEachEncodedRecord(bytes, index, count,
                              [](int, std::string_view, std::string_view) { return Status::OK(); });
}

Status TrainerExchange::Send(const learner::ModelChanges& changes, uint64_t number) {
  learner::ModelChanges copy = changes;
  return SendEncoded(Encode(&copy, number), number);
}

Status TrainerExchange::SendEncoded(std::string_view batch, uint64_t number) {
  Impl& d = *impl_;
  const auto deadline = Clock::now() + std::chrono::milliseconds(d.options.delivery_timeout_ms);
  d.acked = d.acked_bytes = d.failed = 0;
  d.first_error.clear();
  uint64_t sent = 0;
  Status st =
      ForEachEncodedRecord(batch, d.options.index, d.options.count,
                           [&](int owner, std::string_view key, std::string_view value) -> Status {
                             for (;;) {
                               RdKafka::ErrorCode err = d.producer->produce(
                                   d.options.updates_topic, owner, RdKafka::Producer::RK_MSG_COPY,
                                   const_cast<char*>(value.data()), value.size(),
                                   const_cast<char*>(key.data()), key.size(), 0, nullptr);
                               if (err == RdKafka::ERR_NO_ERROR) break;
                               if (err != RdKafka::ERR__QUEUE_FULL || Clock::now() >= deadline)
                                 return Status::IOError("producing to " + d.options.updates_topic +
                                                        ": " + RdKafka::err2str(err));
                               d.producer->poll(10);
                             }
                             ++sent;
                             return Status::OK();
                           });
  RECSTREAM_RETURN_IF_ERROR(st);
  while (d.producer->outq_len() > 0 && Clock::now() < deadline) d.producer->poll(5);
  if (d.failed > 0)
    return Status::IOError(std::to_string(d.failed) + " records of batch " +
                           std::to_string(number) + " not delivered: " + d.first_error);
  if (d.acked < sent)
    return Status::Unavailable("batch " + std::to_string(number) + " not acknowledged in time");
  std::lock_guard lock(d.mu);
  d.stats.sent_batches += size_t(d.options.count - 1);
  d.stats.sent_records += d.acked;
  d.stats.sent_bytes += d.acked_bytes;
  return Status::OK();
}

void TrainerExchange::Take(Received* out) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  *out = std::move(d.received);
  d.received = Received();
  // Everything read so far is handed over: read again from here, except
  // that a batch still being read must be read again from its first
  // record.
  d.taken_positions = d.next;
  for (const auto& [p, senders] : d.batches)
    for (const auto& [sender, b] : senders)
      if (b.records > 0 && b.first_offset < d.taken_positions[p])
        d.taken_positions[p] = b.first_offset;
  d.taken_applied = d.applied;
  d.taken_follow = d.model_next;
  for (const auto& [p, v] : d.versions)
    if (v.records > 0 && v.first_offset < d.taken_follow[p]) d.taken_follow[p] = v.first_offset;
}

void TrainerExchange::Positions(std::map<int, int64_t>* positions, std::map<int, uint64_t>* applied,
                                std::map<int, int64_t>* follow) const {
  std::lock_guard lock(impl_->mu);
  *positions = impl_->taken_positions;
  *applied = impl_->taken_applied;
  if (follow) *follow = impl_->taken_follow;
}

ExchangeStats TrainerExchange::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

}  // namespace recstream::replicate
