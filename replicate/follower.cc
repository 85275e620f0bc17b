#include "replicate/follower.h"

#include <librdkafka/rdkafkacpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "replicate/http_get.h"
#include "replicate/kafka_util.h"

namespace recstream::replicate {

namespace mr = store::model_records;
using Clock = std::chrono::steady_clock;

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string HexOf(std::string_view s) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * s.size());
  for (unsigned char c : s) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

}  // namespace

struct ModelFollower::Impl {
  FollowerOptions options;
  LearnerFactory factory;
  OnLearner on_learner;
  KafkaLogger logger;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer;
  std::unique_ptr<learner::Learner> learner_owned;
  std::atomic<const learner::Learner*> learner{nullptr};
  std::atomic<bool> stop{false};
  std::thread thread;
  const Clock::time_point started = Clock::now();

  // Per partition, follower thread only.
  struct Part {
    int partition = 0;
    int64_t low = 0;
    int64_t end_at_start = 0;
    bool caught_up = false;
    mr::Version skip_until;  // versions up to this one are in the snapshot
    mr::Version applied;     // the last version applied (or the snapshot's)
    std::vector<std::string> tombstones;  // keys waiting for their version
    // The version being collected.
    mr::Version open;
    uint64_t count = 0;     // its records so far
    bool broken = false;    // a record of it could not be read
    mr::SnapshotBuilder builder;
    // The snapshot url this partition's trainer announced last (several
    // trainers publish on partitions of their own, each its own rows).
    std::string url;
  };
  std::map<int, Part> parts;

  mutable std::mutex mu;  // guards the fields below
  FollowerStats stats;
  std::string why_not = "starting";
  bool ready = false;
  bool applied_any = false;

  void SetWhyNot(std::string s) {
    std::lock_guard lock(mu);
    if (why_not != s) spdlog::info("replica: {}", s);
    why_not = std::move(s);
  }
  template <typename Fn>
  void Update(Fn&& fn) {
    std::lock_guard lock(mu);
    fn(stats);
  }

  void Run();
  Status Setup(std::string* topic_settings, std::string* url);
  Status EnsureLearner(const std::string& settings);
  Status FetchSnapshot(const std::string& url, mr::Version* version);
  void Handle(Part& p, const RdKafka::Message& m);
  // Moves the tombstones waiting in p into the open version (they come
  // before `m`, its first record with a header).
  void AddTombstones(Part& p, const RdKafka::Message& m);
  void ApplyOpen(Part& p, const mr::Commit* commit);
  void DropOpen(Part& p, const char* why);
  void CheckReady();
  // A partition fell behind the topic's retention: snapshot again, then
  // read it from its new start.
  void Resync(int partition, const std::string& url);
  Status Assign(const std::map<int, int64_t>& from);
  std::string url;  // the snapshot url in use (configured, or the latest announced)
  // Where partition p's snapshot comes from: the configured url, else the
  // one p's trainer announced, else (one trainer) the one announced. Empty
  // when several trainers announce and p's has not yet: another trainer's
  // snapshot holds none of p's rows.
  const std::string& UrlOf(const Part& p) const {
    static const std::string kNone;
    if (!options.snapshot_url.empty()) return url;
    if (!p.url.empty()) return p.url;
    for (const auto& [id, q] : parts)
      if (!q.url.empty() && q.url != url) return kNone;
    return url;
  }
  int resync_pending = -1;  // a partition Handle found a gap in
};

ModelFollower::ModelFollower(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelFollower::~ModelFollower() { Stop(); }

void ModelFollower::Stop() {
  if (!impl_) return;
  impl_->stop.store(true);
  if (impl_->thread.joinable()) impl_->thread.join();
  if (impl_->consumer) {
    impl_->consumer->close();
    impl_->consumer.reset();
  }
}

Status ModelFollower::Start(const FollowerOptions& options, LearnerFactory factory,
                            OnLearner on_learner, std::unique_ptr<ModelFollower>* out) {
  if (options.topic.empty()) return Status::InvalidArgument("kafka.topics.model is empty");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->factory = std::move(factory);
  impl->on_learner = std::move(on_learner);
  RECSTREAM_RETURN_IF_ERROR(
      OpenAssignConsumer(options.brokers, options.properties, &impl->logger, &impl->consumer));
  Impl* d = impl.get();
  impl->thread = std::thread([d] {
    pthread_setname_np(pthread_self(), "replica");
    d->Run();
  });
  out->reset(new ModelFollower(std::move(impl)));
  return Status::OK();
}

const learner::Learner* ModelFollower::learner() const { return impl_->learner.load(); }

bool ModelFollower::Ready(std::string* why_not) const {
  std::lock_guard lock(impl_->mu);
  if (!impl_->ready) *why_not = impl_->why_not;
  return impl_->ready;
}

FollowerStats ModelFollower::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

double ModelFollower::lag_ms() const {
  std::lock_guard lock(impl_->mu);
  if (impl_->stats.last_time_ms == 0) return -1;
  return double(std::max<int64_t>(0, NowMs() - impl_->stats.last_time_ms));
}

Status ModelFollower::Impl::EnsureLearner(const std::string& settings) {
  if (learner_owned) return Status::OK();
  std::unique_ptr<learner::Learner> l;
  Status s = factory(settings, &l);
  if (!s.ok()) return s;
  learner_owned = std::move(l);
  learner.store(learner_owned.get());
  if (on_learner) on_learner(learner_owned.get());
  return Status::OK();
}

// Reads the topic's partitions and ends, and the latest commit (settings
// and snapshot url). NotFound while the topic or its first commit is
// missing.
Status ModelFollower::Impl::Setup(std::string* settings, std::string* url) {
  std::string err;
  std::unique_ptr<RdKafka::Topic> topic(
      RdKafka::Topic::create(consumer.get(), options.topic, nullptr, err));
  if (!topic) return Status::Internal("kafka topic handle: " + err);
  RdKafka::Metadata* raw = nullptr;
  RdKafka::ErrorCode e = consumer->metadata(false, topic.get(), &raw, 5000);
  std::unique_ptr<RdKafka::Metadata> md(raw);
  if (e != RdKafka::ERR_NO_ERROR)
    return Status::Unavailable("reading the metadata of " + options.topic + ": " +
                               RdKafka::err2str(e));
  std::vector<int> partitions;
  for (const RdKafka::TopicMetadata* t : *md->topics()) {
    if (t->topic() != options.topic) continue;
    if (t->err() != RdKafka::ERR_NO_ERROR)
      return Status::NotFound("the model topic " + options.topic + ": " +
                              RdKafka::err2str(t->err()));
    for (const RdKafka::PartitionMetadata* p : *t->partitions()) partitions.push_back(p->id());
  }
  if (partitions.empty()) return Status::NotFound("the model topic " + options.topic + " has no partitions");
  bool found = false;
  for (int p : partitions) {
    Part& part = parts[p];
    part.partition = p;
    int64_t low = 0, high = 0;
    e = consumer->query_watermark_offsets(options.topic, p, &low, &high, 5000);
    if (e != RdKafka::ERR_NO_ERROR)
      return Status::Unavailable("reading the ends of " + options.topic + "/" + std::to_string(p) +
                                 ": " + RdKafka::err2str(e));
    part.low = low;
    part.end_at_start = high;
    part.caught_up = high <= low;
    if (high > low) {
      mr::Commit c;
      Status s = ReadLastCommit(options.brokers, options.properties, options.topic, p, 30000, &c);
      if (s.ok()) {
        part.url = c.snapshot_url;
        if (!found || c.version > mr::Version()) {
          *settings = c.settings;
          if (url->empty()) *url = c.snapshot_url;
        }
        found = true;
      } else if (!s.IsNotFound()) {
        return s;
      }
    }
  }
  if (!found) return Status::NotFound("no trainer has published a model on " + options.topic + " yet");
  return Status::OK();
}

Status ModelFollower::Impl::FetchSnapshot(const std::string& base, mr::Version* version) {
  std::string after;
  bool first = true;
  mr::SnapshotBuilder builder;
  *version = mr::Version();
  bool have_version = false;
  for (;;) {
    std::string body;
    const std::string url = base + "/v1/snapshot?max_bytes=" +
                            std::to_string(options.page_bytes) +
                            (first ? "&fresh=1" : "&after=" + HexOf(after));
    RECSTREAM_RETURN_IF_ERROR(HttpGet(url, 120000, &body));
    mr::ModelPage page;
    RECSTREAM_RETURN_IF_ERROR(mr::DecodePage(body, &page));
    uint64_t n = 0;
    RECSTREAM_RETURN_IF_ERROR(mr::ForEachPageRecord(page.records, [&](std::string_view k, std::string_view v) {
      ++n;
      return builder.AddStoreRecord(k, v);
    }));
    learner::ModelSnapshot snap;
    builder.Take(&snap);
    snap.learned = page.learned;
    // Pages are in key order: the shape record ("m/shape") comes after the
    // dense blocks and lists, so early pages of a big model lack it.
    if (snap.shape.empty()) snap.shape = learner_owned->Shape();
    Status s = learner_owned->ApplySnapshot(snap);
    if (!s.ok()) return s;
    // The oldest page decides where the topic must be read from.
    if (!have_version || page.published < *version) *version = page.published;
    have_version = true;
    Update([&](FollowerStats& st) {
      ++st.snapshot_pages;
      st.snapshot_records += n;
    });
    first = false;
    if (page.last_key.empty()) break;
    after = page.last_key;
  }
  return Status::OK();
}

void ModelFollower::Impl::DropOpen(Part& p, const char* why) {
  if (p.count > 0 || p.broken) {
    spdlog::warn("replica: version {} of partition {} dropped: {}", p.open.ToString(), p.partition,
                 why);
    Update([](FollowerStats& st) { ++st.incomplete_versions; });
  }
  p.builder.Clear();
  p.count = 0;
  p.broken = false;
  p.open = mr::Version();
}

void ModelFollower::Impl::ApplyOpen(Part& p, const mr::Commit* commit) {
  learner::ModelSnapshot snap;
  const bool any = p.builder.Take(&snap);
  // A heartbeat (a commit without records) applies nothing but its time.
  if (any) {
    if (commit != nullptr) {
      snap.learned = commit->learned;
    } else {
      // An early block of a big version (bootstrap): the counters come with
      // its commit.
      const learner::LearnerStats ls = learner_owned->Stats();
      for (int t = 0; t < learner::kNumTasks; ++t) snap.learned[t] = ls.tasks[t].learned;
    }
    // Blocks of a compacted topic may come before its latest shape record.
    if (snap.shape.empty()) snap.shape = learner_owned->Shape();
    Status s = learner_owned->ApplySnapshot(snap);
    if (!s.ok()) {
      spdlog::error("replica: the learner refused version {}: {}", p.open.ToString(), s.ToString());
      Update([](FollowerStats& st) { ++st.apply_errors; });
      return;
    }
  }
  if (commit == nullptr) return;
  std::lock_guard lock(mu);
  if (any) {
    ++stats.versions_applied;
  } else {
    ++stats.heartbeats;
  }
  stats.records_applied += p.count;
  if (commit->version > stats.last) {
    stats.last = commit->version;
    stats.last_time_ms = commit->time_ms;
  }
  for (auto& fp : stats.partitions)
    if (fp.partition == p.partition) fp.applied = commit->version;
  applied_any = true;
}

void ModelFollower::Impl::AddTombstones(Part& p, const RdKafka::Message& m) {
  for (const std::string& key : p.tombstones) {
    ++p.count;
    if (Status s = p.builder.AddTombstone(key); !s.ok()) {
      p.broken = true;
      Update([](FollowerStats& st) { ++st.bad_records; });
      spdlog::warn("replica: skipped a tombstone before {}/{} offset {}: {}", options.topic,
                   p.partition, m.offset(), s.ToString());
    }
  }
  p.tombstones.clear();
}

void ModelFollower::Impl::Handle(Part& p, const RdKafka::Message& m) {
  const std::string_view key =
      m.key() != nullptr ? std::string_view(*m.key()) : std::string_view();
  if (m.payload() == nullptr) {
    // A tombstone: a deletion (expiry) of the version being read, applied
    // with it.
    Update([](FollowerStats& st) { ++st.tombstones; });
    // Tombstones carry no version: they wait for the record after them,
    // which tells which version they belong to.
    p.tombstones.emplace_back(key);
    return;
  }
  const std::string_view value(static_cast<const char*>(m.payload()), m.len());
  mr::Header h;
  std::string_view payload;
  Status s = mr::DecodeHeader(value, &h, &payload);
  mr::Commit commit;
  if (s.ok() && h.kind == mr::Kind::kCommit) s = mr::DecodeCommit(h, payload, &commit);
  if (!s.ok()) {
    uint64_t n = 0;
    Update([&](FollowerStats& st) { n = ++st.bad_records; });
    if (n <= 10 || (n & (n - 1)) == 0)
      spdlog::warn("replica: skipped an unreadable record at {}/{} offset {} ({} so far): {}",
                   options.topic, p.partition, m.offset(), n, s.ToString());
    if (p.count > 0) p.broken = true;
    return;
  }
  if (h.version <= p.skip_until) {  // in the snapshot already
    p.tombstones.clear();
    return;
  }
  // Reading a whole partition up to where it ended at start: compaction may
  // have removed records and commits of old versions, so what is read is
  // applied as it is (the latest record of each key).
  const bool compacted_bootstrap = !p.caught_up && p.low == 0 && p.skip_until == mr::Version();
  if (h.kind == mr::Kind::kCommit) {
    if (h.version != p.open && p.count > 0 && !compacted_bootstrap)
      DropOpen(p, "its commit never came");
    if (p.open != h.version) p.open = h.version;
    AddTombstones(p, m);
    if ((p.broken || p.count != commit.records) && !compacted_bootstrap) {
      if (p.count != commit.records && p.count == 0 && m.offset() < p.low + int64_t(commit.records)) {
        // The version began before the partition's retained start: it
        // is older than the snapshot that bootstrapped this partition.
        DropOpen(p, "it began before the topic's retained start");
      } else {
        DropOpen(p, p.broken ? "a record of it was unreadable"
                             : "its records do not match its commit's count");
      }
      return;
    }
    if (options.snapshot_url.empty() && !commit.snapshot_url.empty()) url = commit.snapshot_url;
    if (!commit.snapshot_url.empty()) p.url = commit.snapshot_url;
    if (!learner_owned) {
      if (Status e = EnsureLearner(commit.settings); !e.ok()) {
        SetWhyNot("cannot build a learner from the trainer's settings: " + e.ToString());
        DropOpen(p, "no learner");
        return;
      }
    }
    // A version missed between the last applied and this one: its rows
    // would stay stale. Only a snapshot brings them back.
    const bool gap = !compacted_bootstrap && !commit.full && commit.previous != mr::Version() &&
                     p.applied != mr::Version() && commit.previous != p.applied;
    const mr::Version applied_before = p.applied;
    ApplyOpen(p, &commit);
    p.applied = commit.version;
    p.builder.Clear();
    p.count = 0;
    p.broken = false;
    p.open = mr::Version();
    if (gap) {
      uint64_t n = 0;
      Update([&](FollowerStats& st) { n = ++st.gaps; });
      if (UrlOf(p).empty()) {
        if (n <= 10 || (n & (n - 1)) == 0)
          spdlog::warn("replica: versions missed on {}/{} before {} (after {}), and no snapshot "
                       "url is known: rows they changed stay stale until they change again",
                       options.topic, p.partition, commit.version.ToString(),
                       applied_before.ToString());
      } else {
        spdlog::warn("replica: versions missed on {}/{} between {} and {}: fetching a snapshot",
                     options.topic, p.partition, applied_before.ToString(),
                     commit.version.ToString());
        resync_pending = p.partition;
      }
    }
    return;
  }
  if (h.version != p.open) {
    if (p.count > 0 && !compacted_bootstrap) DropOpen(p, "its commit never came");
    p.open = h.version;
  }
  AddTombstones(p, m);
  ++p.count;
  s = p.builder.AddTopicRecord(key, h, payload);
  if (!s.ok()) {
    p.broken = true;
    uint64_t n = 0;
    Update([&](FollowerStats& st) { n = ++st.bad_records; });
    if (n <= 10 || (n & (n - 1)) == 0)
      spdlog::warn("replica: skipped an unreadable record at {}/{} offset {}: {}", options.topic,
                   p.partition, m.offset(), s.ToString());
    return;
  }
  // Bootstrapping from a long topic (compacted, or a full version of a big
  // model): apply in blocks, since nothing is served as ready yet.
  bool is_ready;
  {
    std::lock_guard lock(mu);
    is_ready = ready;
  }
  if (!is_ready && learner_owned && p.builder.pending_records() >= options.bootstrap_block_records)
    ApplyOpen(p, nullptr);
}

void ModelFollower::Impl::CheckReady() {
  std::lock_guard lock(mu);
  if (ready) return;
  for (const auto& [id, p] : parts)
    if (!p.caught_up) {
      why_not = "catching up with " + options.topic + "/" + std::to_string(id);
      return;
    }
  if (!applied_any) {
    why_not = "waiting for the trainer's first version";
    return;
  }
  ready = true;
  why_not.clear();
  stats.bootstrap_s = std::chrono::duration<double>(Clock::now() - started).count();
  spdlog::info("replica ready after {:.2f} s: version {} applied", stats.bootstrap_s,
               stats.last.ToString());
}

Status ModelFollower::Impl::Assign(const std::map<int, int64_t>& from) {
  std::vector<RdKafka::TopicPartition*> assign;
  for (const auto& [id, offset] : from)
    assign.push_back(RdKafka::TopicPartition::create(options.topic, id, offset));
  RdKafka::ErrorCode e = consumer->assign(assign);
  RdKafka::TopicPartition::destroy(assign);
  if (e != RdKafka::ERR_NO_ERROR)
    return Status::Unavailable("assigning the model topic: " + RdKafka::err2str(e));
  return Status::OK();
}

void ModelFollower::Impl::Resync(int partition, const std::string& base) {
  Update([](FollowerStats& st) { ++st.resyncs; });
  Part& p = parts[partition];
  DropOpen(p, "the topic dropped records before they were read");
  p.tombstones.clear();
  for (;;) {
    if (stop.load()) return;
    if (base.empty()) {
      SetWhyNot("fell behind the model topic's retention and no snapshot url is known");
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    mr::Version v;
    Status s = FetchSnapshot(base, &v);
    int64_t low = 0, high = 0;
    if (s.ok()) {
      RdKafka::ErrorCode e =
          consumer->query_watermark_offsets(options.topic, partition, &low, &high, 5000);
      if (e != RdKafka::ERR_NO_ERROR) s = Status::Unavailable(RdKafka::err2str(e));
    }
    if (s.ok()) {
      spdlog::info("replica: partition {} resynchronised from a snapshot of version {}",
                   partition, v.ToString());
      p.skip_until = v;
      p.applied = v;
      p.low = low;
      std::map<int, int64_t> from;
      std::lock_guard lock(mu);
      for (auto& fp : stats.partitions) {
        if (fp.partition == partition) fp.position = low;
        from[fp.partition] = fp.position;
      }
      if (Status a = Assign(from); !a.ok()) spdlog::error("replica: {}", a.ToString());
      return;
    }
    spdlog::warn("replica: resynchronising partition {}: {}", partition, s.ToString());
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

void ModelFollower::Impl::Run() {
  std::string settings;
  // Wait for the topic and a first commit.
  for (;;) {
    if (stop.load()) return;
    parts.clear();
    settings.clear();
    url = options.snapshot_url;
    Status s = Setup(&settings, &url);
    if (s.ok()) {
      s = EnsureLearner(settings);
      if (s.ok()) break;
      SetWhyNot("cannot build a learner from the trainer's settings: " + s.ToString());
    } else {
      SetWhyNot(s.ToString());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  // Partitions whose beginning is gone need their trainer's snapshot first:
  // one fetch per url (one trainer's rows; with several trainers, each
  // publishes and serves only its own).
  std::map<std::string, std::vector<int>> need;
  for (const auto& [id, p] : parts)
    if (p.low > 0) need[UrlOf(p)].push_back(id);
  for (auto it = need.begin(); it != need.end() && !stop.load();) {
    const std::string& from = it->first;
    if (from.empty()) {
      SetWhyNot("the model topic no longer holds the whole model (it does not start at offset 0) "
                "and no snapshot url is known: set replica.snapshot_url, or serve.advertise_url "
                "on the trainer");
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    SetWhyNot("fetching the trainer's snapshot from " + from);
    mr::Version v;
    const auto t0 = Clock::now();
    Status s = FetchSnapshot(from, &v);
    if (s.ok()) {
      spdlog::info("replica: snapshot of version {} fetched from {} in {:.2f} s", v.ToString(), from,
                   std::chrono::duration<double>(Clock::now() - t0).count());
      for (int id : it->second) parts[id].skip_until = parts[id].applied = v;
      std::lock_guard lock(mu);
      applied_any = true;
      stats.last = v;
      ++it;
      continue;
    }
    SetWhyNot("fetching the trainer's snapshot from " + from + ": " + s.ToString());
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  {
    std::lock_guard lock(mu);
    for (const auto& [id, p] : parts)
      stats.partitions.push_back({id, p.low, p.end_at_start, p.end_at_start, {}});
  }
  {
    std::map<int, int64_t> from;
    for (const auto& [id, p] : parts) from[id] = p.low;
    if (Status a = Assign(from); !a.ok()) {
      SetWhyNot(a.ToString());
      return;
    }
  }
  CheckReady();
  auto next_lag = Clock::now();
  while (!stop.load()) {
    std::unique_ptr<RdKafka::Message> m(consumer->consume(50));
    auto it = parts.find(m->partition());
    if (m->err() == RdKafka::ERR_NO_ERROR && it != parts.end()) {
      Handle(it->second, *m);
      if (resync_pending >= 0) {
        const int partition = std::exchange(resync_pending, -1);
        Resync(partition, UrlOf(parts[partition]));
        continue;
      }
      if (!it->second.caught_up && m->offset() + 1 >= it->second.end_at_start) {
        it->second.caught_up = true;
        CheckReady();
      }
      std::lock_guard lock(mu);
      for (auto& fp : stats.partitions)
        if (fp.partition == m->partition()) fp.position = m->offset() + 1;
    } else if (m->err() == RdKafka::ERR__AUTO_OFFSET_RESET) {
      spdlog::warn("replica: {}/{} dropped records before this replica read them ({}): "
                   "fetching a snapshot again",
                   options.topic, m->partition(), m->errstr());
      if (m->partition() >= 0 && parts.count(m->partition()))
        Resync(m->partition(), UrlOf(parts[m->partition()]));
    } else if (m->err() == RdKafka::ERR__PARTITION_EOF && it != parts.end()) {
      if (!it->second.caught_up && m->offset() >= it->second.end_at_start) {
        it->second.caught_up = true;
        CheckReady();
      }
    }
    if (Clock::now() >= next_lag) {
      next_lag = Clock::now() + std::chrono::seconds(1);
      std::lock_guard lock(mu);
      for (auto& fp : stats.partitions) {
        int64_t low = 0, high = 0;
        if (consumer->get_watermark_offsets(options.topic, fp.partition, &low, &high) ==
                RdKafka::ERR_NO_ERROR &&
            high >= 0)
          fp.high_watermark = high;
      }
    }
  }
}

}  // namespace recstream::replicate
