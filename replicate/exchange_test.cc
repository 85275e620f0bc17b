// TrainerExchange against librdkafka's mock cluster: two trainers sharing
// one model exchange through the updates topic and the model topic exactly
// as they do in one process, each batch applied once.
#include "replicate/exchange.h"

#include <librdkafka/rdkafkacpp.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "ingest/kafka.h"
#include "replicate/publisher.h"
#include "store/model_records.h"

namespace recstream::replicate {
namespace {

using learner::Event;
using learner::Learner;

std::vector<Event> Stream(int n, int users, int items, uint64_t seed, const std::string& prefix) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pu(0, users - 1), pi(0, items - 1);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::vector<Event> out;
  for (int i = 0; i < n; ++i) {
    const int u = pu(rng), it = pi(rng);
    Event e;
    e.user = prefix + std::to_string(u);
    e.item = "i" + std::to_string(it);
    e.item_features = {"ig=" + std::to_string(it % 4)};
    e.task = learner::Task::kClick;
    e.label = unif(rng) < ((u % 4) == (it % 4) ? 0.8 : 0.2) ? 1.0f : 0.0f;
    out.push_back(std::move(e));
  }
  return out;
}

std::unique_ptr<Learner> Make(int index, int dim = 8) {
  learner::LearnerOptions o;
  o.dim = dim;
  o.hidden = 8;
  o.threads = 1;
  o.trainer_count = 2;
  o.trainer_index = index;
  std::unique_ptr<Learner> l;
  REQUIRE(Learner::Create(o, &l).ok());
  return l;
}

std::map<std::string, std::vector<float>> SharedRows(Learner* l) {
  learner::ModelSnapshot s;
  l->TakeSnapshot(true, &s);
  std::map<std::string, std::vector<float>> out;
  for (const auto& t : s.tables) {
    if (t.table == "user") continue;
    for (size_t i = 0; i < t.keys.size(); ++i)
      out[t.table + "/" + t.keys[i]].assign(t.values.data() + i * size_t(t.width),
                                            t.values.data() + (i + 1) * size_t(t.width));
  }
  for (const auto& [name, v] : s.dense)
    if (name == "dense") out["dense"] = v;
  return out;
}

bool WaitFor(const std::function<bool()>& done, int ms = 10000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

struct Cluster {
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  std::map<std::string, std::string> properties;
  Cluster() {
    ingest::TopicNames topics;
    // The topics, the updates topic included, with 2 partitions each.
    REQUIRE(ingest::EmbeddedKafka::Start(1, 2, topics, &kafka).ok());
    ingest::EmbeddedKafka::AddConsumerProperties(&properties);
  }
  ExchangeOptions Options(int index) const {
    ExchangeOptions o;
    o.brokers = kafka->bootstrap();
    o.index = index;
    o.count = 2;
    o.run = 1000 + uint64_t(index);
    o.properties = properties;
    return o;
  }
  // A plain producer, for records the exchange would never send.
  std::unique_ptr<RdKafka::Producer> RawProducer() const {
    std::string err;
    std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
    REQUIRE(conf->set("bootstrap.servers", kafka->bootstrap(), err) == RdKafka::Conf::CONF_OK);
    std::unique_ptr<RdKafka::Producer> raw(RdKafka::Producer::create(conf.get(), err));
    REQUIRE(raw);
    return raw;
  }
  std::unique_ptr<ModelPublisher> Publisher(int index) const {
    PublisherOptions po;
    po.brokers = kafka->bootstrap();
    po.partition = index;
    std::unique_ptr<ModelPublisher> p;
    REQUIRE(ModelPublisher::Open(po, 5000 + uint64_t(index), &p).ok());
    return p;
  }
};

TEST_CASE("An owner whose dense blocks changed by others' changes alone publishes them",
          "[exchange]") {
  // Trainer 0 learns nothing more, but adds trainer 1's change of the dense
  // blocks: its next version must carry them (not a heartbeat), or
  // followers and replicas would keep the old ones for good.
  Cluster c;
  auto owner = Make(0), other = Make(1);
  const std::vector<Event> events = Stream(2000, 40, 30, 7, "u");
  owner->Train(std::span<const Event>(events.data(), 1000));
  auto publisher = c.Publisher(0);
  learner::ModelSnapshot snap;
  owner->TakeSnapshot(true, &snap);
  learner::KeepOwned(0, 2, &snap);
  REQUIRE(publisher->Publish(snap, true, 1).ok());
  // Quiet: a heartbeat, one record.
  uint64_t records = publisher->stats().records;
  owner->TakeSnapshot(false, &snap);
  learner::KeepOwned(0, 2, &snap);
  REQUIRE(publisher->Publish(snap, false, 2).ok());
  CHECK(publisher->stats().records == records + 1);

  other->Train(std::span<const Event>(events.data() + 1000, 1000));
  learner::ModelChanges changes;
  other->TakeChanges(&changes);
  std::vector<learner::ModelChanges> split;
  learner::SplitByOwner(changes, 2, &split);
  REQUIRE(!split[0].dense.empty());
  split[0].tables.clear();  // the dense blocks' change alone
  split[0].feature_lists.clear();
  REQUIRE(owner->AddChanges(split[0]).ok());
  records = publisher->stats().records;
  owner->TakeSnapshot(false, &snap);
  learner::KeepOwned(0, 2, &snap);
  REQUIRE(snap.rows() == 0);
  REQUIRE(publisher->Publish(snap, false, 3).ok());
  CHECK(publisher->stats().records > records + 1);
  // Nothing changed since: a heartbeat again.
  records = publisher->stats().records;
  owner->TakeSnapshot(false, &snap);
  learner::KeepOwned(0, 2, &snap);
  REQUIRE(publisher->Publish(snap, false, 4).ok());
  CHECK(publisher->stats().records == records + 1);
}

TEST_CASE("Two trainers exchanging through Kafka end as they do in one process", "[exchange]") {
  Cluster c;
  std::unique_ptr<TrainerExchange> ex[2];
  for (int i = 0; i < 2; ++i) REQUIRE(TrainerExchange::Open(c.Options(i), {}, {}, {}, &ex[i]).ok());
  std::unique_ptr<ModelPublisher> pub[2] = {c.Publisher(0), c.Publisher(1)};
  // Twins: the same learning, exchanged in process.
  std::unique_ptr<Learner> t[2] = {Make(0), Make(1)}, twin[2] = {Make(0), Make(1)};
  const std::vector<Event> stream[2] = {Stream(3000, 40, 30, 1, "a"), Stream(3000, 40, 30, 2, "b")};

  for (int round = 0; round < 3; ++round) {
    const size_t at = size_t(round) * 1000;
    for (int i = 0; i < 2; ++i) {
      std::vector<Event> part(stream[i].begin() + long(at), stream[i].begin() + long(at + 1000));
      t[i]->Train(part);
      twin[i]->Train(part);
    }
    // Changes to owners, through the updates topic.
    learner::ModelChanges taken[2];
    for (int i = 0; i < 2; ++i) {
      t[i]->TakeChanges(&taken[i]);
      REQUIRE(taken[i].rows() > 0);
      REQUIRE(ex[i]->Send(taken[i], uint64_t(round + 1)).ok());
    }
    for (int i = 0; i < 2; ++i) {
      REQUIRE(WaitFor([&] { return ex[i]->stats().received_batches == uint64_t(round + 1); }));
      TrainerExchange::Received got;
      ex[i]->Take(&got);
      REQUIRE(got.changes.size() == 1);
      REQUIRE(t[i]->AddChanges(got.changes[0]).ok());
    }
    // Owners' rows, through the model topic.
    for (int i = 0; i < 2; ++i) {
      learner::ModelChanges none;
      learner::ModelSnapshot owned;
      t[i]->TakeChanges(&none, &owned);
      REQUIRE(pub[i]->Publish(owned, false, 0).ok());
    }
    for (int i = 0; i < 2; ++i) {
      REQUIRE(WaitFor([&] { return ex[i]->stats().followed_versions == uint64_t(round + 1); }));
      TrainerExchange::Received got;
      ex[i]->Take(&got);
      REQUIRE(got.versions.size() == 1);
      CHECK(got.version_from[0] == 1 - i);
      REQUIRE(t[i]->FollowOwners(got.versions[0], got.version_from[0]).ok());
    }
    // The twins exchange in process.
    std::vector<Learner*> twins = {twin[0].get(), twin[1].get()};
    REQUIRE(learner::ExchangeDirectly(twins).ok());
  }
  // Bit for bit as in one process, and both trainers hold the same shared rows.
  const auto rows0 = SharedRows(t[0].get());
  CHECK(rows0 == SharedRows(twin[0].get()));
  CHECK(SharedRows(t[1].get()) == SharedRows(twin[1].get()));
  CHECK(rows0 == SharedRows(t[1].get()));
  for (int i = 0; i < 2; ++i) {
    const ExchangeStats st = ex[i]->stats();
    CHECK(st.sent_batches == 3);
    CHECK(st.duplicate_batches == 0);
    CHECK(st.incomplete_batches == 0);
    CHECK(st.bad_records == 0);
  }
}

TEST_CASE("A batch sent again, cut short or garbled is not applied twice or in part",
          "[exchange]") {
  Cluster c;
  std::unique_ptr<TrainerExchange> owner, sender;
  REQUIRE(TrainerExchange::Open(c.Options(0), {}, {}, {}, &owner).ok());
  REQUIRE(TrainerExchange::Open(c.Options(1), {}, {}, {}, &sender).ok());
  auto b = Make(1);
  b->Train(Stream(1000, 20, 20, 3, "b"));
  learner::ModelChanges changes;
  b->TakeChanges(&changes);
  std::vector<learner::ModelChanges> split;
  learner::SplitByOwner(changes, 2, &split);
  REQUIRE(split[0].rows() > 0);

  REQUIRE(sender->Send(changes, 1).ok());
  REQUIRE(sender->Send(changes, 1).ok());  // the same batch again (a restart)
  // Garbage, and a batch cut short: records of batch 2, then batch 3.
  {
    std::unique_ptr<RdKafka::Producer> raw = c.RawProducer();
    const std::string key = "r/item\0x", value = "not a record";
    REQUIRE(raw->produce("recstream.model.updates", 0, RdKafka::Producer::RK_MSG_COPY,
                         const_cast<char*>(value.data()), value.size(), key.data(), key.size(), 0,
                         nullptr) == RdKafka::ERR_NO_ERROR);
    // Batch 2 of trainer 1 without its commit (a sender that died while
    // sending it).
    uint64_t records = 0;
    REQUIRE(ForEachUpdateRecord(
                &split[0], c.Options(1).run << 12 | 1, 2,
                [&](std::string_view k, std::string_view v) -> Status {
                  if (k == store::model_records::kCommitKey) return Status::OK();
                  ++records;
                  return raw->produce("recstream.model.updates", 0, RdKafka::Producer::RK_MSG_COPY,
                                      const_cast<char*>(v.data()), v.size(), k.data(), k.size(), 0,
                                      nullptr) == RdKafka::ERR_NO_ERROR
                             ? Status::OK()
                             : Status::IOError("produce");
                })
                .ok());
    REQUIRE(records > 0);
    REQUIRE(raw->flush(5000) == RdKafka::ERR_NO_ERROR);
  }
  REQUIRE(sender->Send(changes, 3).ok());
  REQUIRE(WaitFor([&] { return owner->stats().received_batches == 2; }));
  TrainerExchange::Received got;
  owner->Take(&got);
  CHECK(got.changes.size() == 2);  // batches 1 and 3
  CHECK(owner->stats().duplicate_batches == 1);
  CHECK(owner->stats().bad_records == 1);
  CHECK(owner->stats().incomplete_batches == 1);
  // The owner adds what it got: batch 1's rows, each once per batch.
  auto a = Make(0);
  REQUIRE(a->AddChanges(got.changes[0]).ok());
  CHECK(a->Stats().shared_rows_added == split[0].rows());

  // A restart from the stored positions reads nothing again; one from the
  // partition's beginning with the stored batches drops every batch read.
  std::map<int, int64_t> positions;
  std::map<int, uint64_t> applied;
  owner->Positions(&positions, &applied);
  CHECK(applied.at(1) == 3);
  CHECK(positions.at(0) > 0);
  owner.reset();
  std::unique_ptr<TrainerExchange> again;
  REQUIRE(TrainerExchange::Open(c.Options(0), positions, applied, {}, &again).ok());
  REQUIRE(sender->Send(changes, 4).ok());
  REQUIRE(WaitFor([&] { return again->stats().received_batches == 1; }));
  CHECK(again->stats().duplicate_batches == 0);
  std::unique_ptr<TrainerExchange> from_start;
  REQUIRE(TrainerExchange::Open(c.Options(0), {}, applied, {}, &from_start).ok());
  REQUIRE(WaitFor([&] { return from_start->stats().received_batches == 1; }));  // batch 4
  CHECK(from_start->stats().duplicate_batches == 3);                            // 1, 1 again, 3
  CHECK(from_start->stats().incomplete_batches == 1);                           // 2
}

TEST_CASE("A batch travels as a few pages of rows and arrives whole", "[exchange]") {
  Cluster c;
  std::unique_ptr<TrainerExchange> owner, sender;
  REQUIRE(TrainerExchange::Open(c.Options(0), {}, {}, {}, &owner).ok());
  REQUIRE(TrainerExchange::Open(c.Options(1), {}, {}, {}, &sender).ok());
  // Rows of 64 dimensions (over 500 bytes each) for 4,000 items: more than
  // one page for the owner.
  auto b = Make(1, 64);
  b->Train(Stream(8000, 200, 4000, 5, "b"));
  learner::ModelChanges changes;
  b->TakeChanges(&changes);
  std::vector<learner::ModelChanges> split;
  learner::SplitByOwner(changes, 2, &split);
  size_t bytes = 0;
  for (const auto& t : split[0].tables) bytes += t.values.size() * sizeof(float);
  REQUIRE(bytes > kUpdatePageBytes);

  // As records: pages then the commit, read back to the same changes.
  std::vector<std::pair<std::string, std::string>> records;
  const uint64_t generation = c.Options(1).run << 12 | 1;
  REQUIRE(
      ForEachUpdateRecord(&split[0], generation, 1, [&](std::string_view k, std::string_view v) {
        records.emplace_back(k, v);
        return Status::OK();
      }).ok());
  CHECK(records.size() >= 3);  // two pages or more, and the commit
  CHECK(records.back().first == store::model_records::kCommitKey);
  for (size_t i = 0; i + 1 < records.size(); ++i) {
    CHECK(records[i].first.starts_with(store::model_records::kPageKey));
    CHECK(records[i].first.size() == store::model_records::kPageKey.size() + 4);
    CHECK(uint8_t(records[i].first.back()) == 0);  // page i's number, little-endian
    CHECK(uint8_t(records[i].first[store::model_records::kPageKey.size()]) == i);
    CHECK(records[i].second.size() <= kUpdatePageBytes);
    if (i + 2 < records.size()) CHECK(records[i].second.size() > kUpdatePageBytes * 9 / 10);
  }
  learner::ModelChanges back;
  REQUIRE(DecodeUpdateRecords(records, &back).ok());
  CHECK(back.rows() == split[0].rows());
  auto a = Make(0, 64), a2 = Make(0, 64);
  REQUIRE(a->AddChanges(back).ok());
  REQUIRE(a2->AddChanges(split[0]).ok());
  CHECK(SharedRows(a.get()) == SharedRows(a2.get()));
  // Without its last page the batch is refused, not applied in part.
  std::vector<std::pair<std::string, std::string>> cut = records;
  cut.erase(cut.end() - 2);
  CHECK(!DecodeUpdateRecords(cut, &back).ok());

  // An outbox batch is encoded once, and told from an older build's.
  learner::ModelChanges borrowed = changes;
  const std::string encoded = EncodeBatch(&borrowed, 1, 2, 1001, 1);
  CHECK(borrowed.rows() == 0);
  CHECK(IsEncodedBatch(encoded));
  CHECK(!IsEncodedBatch(EncodeChanges(changes)));
  CHECK(CheckEncodedBatch(encoded, 1, 2).ok());
  CHECK(CheckEncodedBatch(encoded, 0, 2).IsCorruption());  // trainer.index changed
  CHECK(CheckEncodedBatch(encoded, 0, 1).IsCorruption());  // trainer.count changed
  CHECK(sender->SendEncoded(EncodeChanges(changes), 9).IsCorruption());

  // Through Kafka: a handful of records for thousands of rows, one batch
  // handed over with every row. Before it, the first page of the same batch
  // alone (a sender that died after sending it, then sent the batch again
  // from its outbox after a restart): the owner starts the batch afresh at
  // its page 0 and applies it once, whole.
  {
    std::unique_ptr<RdKafka::Producer> raw = c.RawProducer();
    REQUIRE(raw->produce("recstream.model.updates", 0, RdKafka::Producer::RK_MSG_COPY,
                         records[0].second.data(), records[0].second.size(),
                         records[0].first.data(), records[0].first.size(), 0,
                         nullptr) == RdKafka::ERR_NO_ERROR);
    REQUIRE(raw->flush(5000) == RdKafka::ERR_NO_ERROR);
  }
  REQUIRE(sender->Send(changes, 1).ok());
  CHECK(sender->stats().sent_records == records.size());
  REQUIRE(WaitFor([&] { return owner->stats().received_batches == 1; }));
  TrainerExchange::Received got;
  owner->Take(&got);
  REQUIRE(got.changes.size() == 1);
  CHECK(got.changes[0].rows() == split[0].rows());
  CHECK(owner->stats().bad_records == 0);
  CHECK(owner->stats().incomplete_batches == 1);  // the first attempt, given up
  auto a3 = Make(0, 64);
  REQUIRE(a3->AddChanges(got.changes[0]).ok());
  CHECK(SharedRows(a3.get()) == SharedRows(a2.get()));

  // A batch missing a page in the middle is not applied in part.
  {
    std::unique_ptr<RdKafka::Producer> raw = c.RawProducer();
    std::vector<std::pair<std::string, std::string>> batch2;
    REQUIRE(
        ForEachUpdateRecord(&split[0], generation, 2, [&](std::string_view k, std::string_view v) {
          batch2.emplace_back(k, v);
          return Status::OK();
        }).ok());
    REQUIRE(batch2.size() >= 3);
    for (size_t i = 0; i < batch2.size(); ++i) {
      if (i == 1) continue;  // page 1 lost
      REQUIRE(raw->produce("recstream.model.updates", 0, RdKafka::Producer::RK_MSG_COPY,
                           batch2[i].second.data(), batch2[i].second.size(), batch2[i].first.data(),
                           batch2[i].first.size(), 0, nullptr) == RdKafka::ERR_NO_ERROR);
    }
    REQUIRE(raw->flush(5000) == RdKafka::ERR_NO_ERROR);
  }
  REQUIRE(sender->Send(changes, 3).ok());
  REQUIRE(WaitFor([&] { return owner->stats().received_batches == 2; }));
  owner->Take(&got);
  REQUIRE(got.changes.size() == 1);  // batch 3 only
  CHECK(got.changes[0].rows() == split[0].rows());
  CHECK(owner->stats().incomplete_batches == 2);
}

}  // namespace
}  // namespace recstream::replicate
