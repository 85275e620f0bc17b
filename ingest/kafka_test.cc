#include "ingest/kafka.h"

#include <librdkafka/rdkafka.h>
// rdkafka_mock.h needs rdkafka.h first.
#include <librdkafka/rdkafka_mock.h>
#include <librdkafka/rdkafkacpp.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace recstream::ingest {
namespace {

using Clock = std::chrono::steady_clock;
using MessageId = std::tuple<std::string, int32_t, int64_t>;

constexpr int kPartitions = 3;

std::unique_ptr<EmbeddedKafka> StartKafka(const TopicNames& topics = {}) {
  std::unique_ptr<EmbeddedKafka> kafka;
  Status s = EmbeddedKafka::Start(1, kPartitions, topics, &kafka);
  INFO(s.ToString());
  REQUIRE(s.ok());
  REQUIRE_FALSE(kafka->bootstrap().empty());
  return kafka;
}

KafkaOptions ConsumerOptions(const EmbeddedKafka& kafka, const std::string& group) {
  KafkaOptions o;
  o.brokers = kafka.bootstrap();
  o.group_id = group;
  return o;
}

std::unique_ptr<EventConsumer> OpenConsumer(const KafkaOptions& o) {
  std::unique_ptr<EventConsumer> consumer;
  Status s = EventConsumer::Open(o, &consumer);
  INFO(s.ToString());
  REQUIRE(s.ok());
  return consumer;
}

// Polls until `want` messages in total have arrived or `timeout_s` passes.
std::vector<RawMessage> PollUntil(EventConsumer* consumer, size_t want, int timeout_s,
                                  size_t max_batch = 1000) {
  std::vector<RawMessage> got;
  auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (got.size() < want && Clock::now() < deadline) {
    const size_t before = got.size();
    const size_t limit = std::min(max_batch, want - got.size());
    Status s = consumer->Poll(limit, 100, &got);
    REQUIRE(s.ok());
    REQUIRE(got.size() - before <= limit);
  }
  return got;
}

std::string EventJson(int i) {
  static const char* kTypes[] = {"click", "purchase", "rating"};
  const char* type = kTypes[i % 3];
  std::string user = (i % 2) ? std::to_string(i % 17) : "\"u" + std::to_string(i % 17) + "\"";
  std::string json = std::string(R"({"type":")") + type + R"(","user":)" + user + R"(,"item":"i)" +
                     std::to_string(i % 41) + R"(","seq":)" + std::to_string(i);
  if (i % 3 == 2) json += R"(,"value":4)";
  return json + "}";
}

int SeqOf(const std::string& payload) {
  auto pos = payload.find("\"seq\":");
  REQUIRE(pos != std::string::npos);
  return std::stoi(payload.substr(pos + 6));
}

void ProduceEvents(const EmbeddedKafka& kafka, const TopicNames& topics, int first, int n) {
  std::unique_ptr<EventProducer> producer;
  REQUIRE(EventProducer::Open(kafka.bootstrap(), topics, &producer).ok());
  for (int i = first; i < first + n; ++i) {
    Status s = producer->SendEvent(EventJson(i), ParserOptions{});
    INFO(s.ToString());
    REQUIRE(s.ok());
  }
  REQUIRE(producer->Flush(10000).ok());
  CHECK(producer->delivered() == static_cast<uint64_t>(n));
  CHECK(producer->failed() == 0);
}

TEST_CASE("EmbeddedKafka starts and rejects bad arguments", "[kafka]") {
  std::unique_ptr<EmbeddedKafka> kafka;
  CHECK(EmbeddedKafka::Start(0, 3, TopicNames{}, &kafka).IsInvalidArgument());
  CHECK(EmbeddedKafka::Start(1, 0, TopicNames{}, &kafka).IsInvalidArgument());
  REQUIRE(EmbeddedKafka::Start(2, 3, TopicNames{}, &kafka).ok());
  CHECK(kafka->bootstrap().find(',') != std::string::npos);  // two brokers
  CHECK(kafka->mock_cluster() != nullptr);
}

TEST_CASE("EventProducer validates and routes events", "[kafka]") {
  auto kafka = StartKafka();
  std::unique_ptr<EventProducer> producer;
  REQUIRE(EventProducer::Open(kafka->bootstrap(), TopicNames{}, &producer).ok());
  Status bad =
      producer->SendEvent(R"({"type":"rating","user":"u","item":"i","value":9})", ParserOptions{});
  CHECK(bad.IsInvalidArgument());
  CHECK(bad.message().rfind("rating_out_of_range", 0) == 0);
  CHECK(producer->SendEvent("not json", ParserOptions{}).IsInvalidArgument());
  std::unique_ptr<EventProducer> unused;
  CHECK(EventProducer::Open("", TopicNames{}, &unused).IsInvalidArgument());
  KafkaOptions o;
  o.brokers = kafka->bootstrap();
  o.properties["no.such.property"] = "1";
  std::unique_ptr<EventConsumer> consumer;
  Status s = EventConsumer::Open(o, &consumer);
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("no.such.property") != std::string::npos);
}

TEST_CASE("EventConsumer receives every produced event in partition order", "[kafka]") {
  TopicNames topics;
  auto kafka = StartKafka(topics);
  const int kEvents = 3000;
  ProduceEvents(*kafka, topics, 0, kEvents);

  auto consumer = OpenConsumer(ConsumerOptions(*kafka, "g-all"));
  CHECK_FALSE(consumer->HasAssignment());
  std::vector<RawMessage> got = PollUntil(consumer.get(), kEvents, 20);
  REQUIRE(got.size() == static_cast<size_t>(kEvents));
  CHECK(consumer->HasAssignment());
  CHECK(consumer->delivered() == static_cast<uint64_t>(kEvents));

  std::set<int> seqs;
  std::map<std::pair<std::string, int32_t>, int64_t> last_offset;
  std::map<std::string, int> last_seq_of_user;  // keyed by the message key
  for (const RawMessage& m : got) {
    int seq = SeqOf(m.payload);
    CHECK(seqs.insert(seq).second);
    CHECK(m.payload == EventJson(seq));  // original bytes
    // Routed to the topic of its type, keyed by the canonical user id.
    const std::string& want_topic =
        seq % 3 == 0 ? topics.click : (seq % 3 == 1 ? topics.purchase : topics.rating);
    CHECK(m.topic == want_topic);
    CHECK(m.key == ((seq % 2) ? "" : "u") + std::to_string(seq % 17));
    CHECK(m.timestamp_ms > 0);
    // Offsets increase within a partition, and so do one user's events.
    auto tp = std::make_pair(m.topic, m.partition);
    if (last_offset.count(tp)) CHECK(m.offset == last_offset[tp] + 1);
    last_offset[tp] = m.offset;
    std::string user_key = m.topic + "/" + m.key;
    if (last_seq_of_user.count(user_key)) CHECK(seq > last_seq_of_user[user_key]);
    last_seq_of_user[user_key] = seq;
  }
  CHECK(seqs.size() == static_cast<size_t>(kEvents));

  // Nothing more arrives, and an empty poll honours its timeout.
  std::vector<RawMessage> none;
  auto start = Clock::now();
  REQUIRE(consumer->Poll(100, 600, &none).ok());
  CHECK(none.empty());
  CHECK(Clock::now() - start < std::chrono::seconds(3));

  // Positions are the high watermarks: everything was delivered.
  OffsetMap positions = consumer->Positions();
  std::vector<PartitionLag> lag = consumer->Lag();
  REQUIRE(lag.size() == 3 * kPartitions);
  int64_t total = 0;
  for (const PartitionLag& l : lag) {
    INFO(l.topic << "/" << l.partition);
    auto it = positions.find(TopicPartition{l.topic, l.partition});
    REQUIRE(it != positions.end());
    CHECK(it->second == l.high_watermark);
    CHECK(l.position == l.high_watermark);
    CHECK(l.lag == 0);
    total += l.high_watermark;
  }
  CHECK(total == kEvents);

  // A broker outage is transient: Poll keeps returning OK, and events
  // produced after the broker is back still arrive.
  REQUIRE(rd_kafka_mock_broker_set_down(kafka->mock_cluster(), 1) == RD_KAFKA_RESP_ERR_NO_ERROR);
  for (int i = 0; i < 10; ++i) REQUIRE(consumer->Poll(100, 100, &none).ok());
  CHECK(none.empty());
  CHECK(consumer->errors() > 0);
  REQUIRE(rd_kafka_mock_broker_set_up(kafka->mock_cluster(), 1) == RD_KAFKA_RESP_ERR_NO_ERROR);
  ProduceEvents(*kafka, topics, kEvents, 30);
  std::vector<RawMessage> after = PollUntil(consumer.get(), 30, 15);
  CHECK(after.size() == 30);
  REQUIRE(consumer->Close().ok());
  CHECK_FALSE(consumer->HasAssignment());
  CHECK(consumer->Close().ok());  // idempotent
}

TEST_CASE("EventConsumer resumes exactly at seeded positions", "[kafka]") {
  TopicNames topics;
  auto kafka = StartKafka(topics);
  const int kEvents = 2000;
  ProduceEvents(*kafka, topics, 0, kEvents);
  KafkaOptions o = ConsumerOptions(*kafka, "g-restart");

  std::set<MessageId> seen;
  OffsetMap checkpoint;
  {
    auto first = OpenConsumer(o);
    std::vector<RawMessage> got = PollUntil(first.get(), kEvents / 2, 20, 100);
    REQUIRE(got.size() >= static_cast<size_t>(kEvents / 2));
    REQUIRE(got.size() < static_cast<size_t>(kEvents));
    for (const RawMessage& m : got) {
      CHECK(seen.insert({m.topic, m.partition, m.offset}).second);
    }
    checkpoint = first->Positions();
    // Commit offset 0 everywhere: the seeded positions must win over it.
    OffsetMap zeros = checkpoint;
    for (auto& [tp, offset] : zeros) offset = 0;
    first->CommitAsync(zeros);
    REQUIRE(first->Close().ok());
  }
  auto second = OpenConsumer(o);
  second->SeedOffsets(checkpoint);
  CHECK(second->Positions() == checkpoint);
  std::vector<RawMessage> rest = PollUntil(second.get(), kEvents - seen.size(), 20);
  for (const RawMessage& m : rest) {
    INFO(m.topic << "/" << m.partition << "@" << m.offset);
    CHECK(seen.insert({m.topic, m.partition, m.offset}).second);  // none twice
  }
  CHECK(seen.size() == static_cast<size_t>(kEvents));  // none lost
  std::vector<RawMessage> more;
  REQUIRE(second->Poll(100, 300, &more).ok());
  CHECK(more.empty());

  // CommitAsync publishes positions to the group for lag tooling.
  OffsetMap final_positions = second->Positions();
  second->CommitAsync(final_positions);
  REQUIRE(second->Close().ok());  // waits for the commit in flight
  std::string err;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  REQUIRE(conf->set("bootstrap.servers", kafka->bootstrap(), err) == RdKafka::Conf::CONF_OK);
  REQUIRE(conf->set("group.id", o.group_id, err) == RdKafka::Conf::CONF_OK);
  std::unique_ptr<RdKafka::KafkaConsumer> lag_tool(RdKafka::KafkaConsumer::create(conf.get(), err));
  REQUIRE(lag_tool != nullptr);
  std::vector<RdKafka::TopicPartition*> parts;
  for (const auto& [tp, offset] : final_positions) {
    parts.push_back(RdKafka::TopicPartition::create(tp.topic, tp.partition));
  }
  REQUIRE(lag_tool->committed(parts, 5000) == RdKafka::ERR_NO_ERROR);
  for (RdKafka::TopicPartition* p : parts) {
    INFO(p->topic() << "/" << p->partition());
    CHECK(p->offset() == final_positions.at(TopicPartition{p->topic(), p->partition()}));
  }
  RdKafka::TopicPartition::destroy(parts);
  lag_tool->close();
}

TEST_CASE("DeadLetterQueue sends original bytes with reason headers", "[kafka]") {
  TopicNames topics;
  auto kafka = StartKafka(topics);
  KafkaOptions o;
  o.brokers = kafka->bootstrap();
  std::unique_ptr<DeadLetterQueue> dlq;
  REQUIRE(DeadLetterQueue::Open(o, &dlq).ok());
  RawMessage original;
  original.topic = topics.rating;
  original.partition = 2;
  original.offset = 41;
  original.key = "u9";
  original.payload = std::string("{\"type\":\"rating\",\"value\":NaN}\x00\xff", 32);
  dlq->Send(original, RejectReason::kNonFinite, "NaN or infinite number");
  RawMessage keyless = original;
  keyless.key.clear();
  dlq->Send(keyless, RejectReason::kMalformedJson, "truncated");
  REQUIRE(dlq->Flush(10000).ok());
  CHECK(dlq->sent() == 2);
  CHECK(dlq->failed() == 0);

  // Read the DLQ topic back with a plain consumer.
  std::string err;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  REQUIRE(conf->set("bootstrap.servers", kafka->bootstrap(), err) == RdKafka::Conf::CONF_OK);
  REQUIRE(conf->set("group.id", "dlq-reader", err) == RdKafka::Conf::CONF_OK);
  std::unique_ptr<RdKafka::KafkaConsumer> reader(RdKafka::KafkaConsumer::create(conf.get(), err));
  REQUIRE(reader != nullptr);
  std::vector<RdKafka::TopicPartition*> parts;
  for (int p = 0; p < kPartitions; ++p) {
    parts.push_back(
        RdKafka::TopicPartition::create(topics.dlq, p, RdKafka::Topic::OFFSET_BEGINNING));
  }
  REQUIRE(reader->assign(parts) == RdKafka::ERR_NO_ERROR);
  RdKafka::TopicPartition::destroy(parts);
  std::vector<std::unique_ptr<RdKafka::Message>> letters;
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (letters.size() < 2 && Clock::now() < deadline) {
    std::unique_ptr<RdKafka::Message> m(reader->consume(100));
    if (m->err() == RdKafka::ERR_NO_ERROR) letters.push_back(std::move(m));
  }
  REQUIRE(letters.size() == 2);
  std::set<std::string> reasons;
  for (auto& m : letters) {
    CHECK(std::string(static_cast<const char*>(m->payload()), m->len()) == original.payload);
    RdKafka::Headers* h = m->headers();
    REQUIRE(h != nullptr);
    auto get = [&](const std::string& name) {
      RdKafka::Headers::Header hd = h->get_last(name);
      REQUIRE(hd.err() == RdKafka::ERR_NO_ERROR);
      return std::string(static_cast<const char*>(hd.value()), hd.value_size());
    };
    std::string reason = get("reason");
    reasons.insert(reason);
    CHECK(get("source_topic") == topics.rating);
    CHECK(get("source_partition") == "2");
    CHECK(get("source_offset") == "41");
    if (reason == "non_finite") {
      CHECK(get("detail") == "NaN or infinite number");
      REQUIRE(m->key() != nullptr);
      CHECK(*m->key() == "u9");
    } else {
      CHECK(get("detail") == "truncated");
      CHECK(m->key_len() == 0);
    }
  }
  CHECK(reasons == std::set<std::string>{"non_finite", "malformed_json"});
  reader->close();
}

TEST_CASE("PollEach hands over every message in place and advances the positions", "[kafka]") {
  TopicNames topics;
  auto kafka = StartKafka(topics);
  const int kEvents = 2000;
  {
    // Extra producer properties apply (a bulk load lingers); bad ones are refused.
    std::unique_ptr<EventProducer> producer;
    CHECK(EventProducer::Open(kafka->bootstrap(), topics, &producer, {{"no.such.property", "1"}})
              .IsInvalidArgument());
    REQUIRE(EventProducer::Open(kafka->bootstrap(), topics, &producer,
                                {{"linger.ms", "200"}, {"batch.num.messages", "100000"}})
                .ok());
    for (int i = 0; i < kEvents; ++i) REQUIRE(producer->SendEvent(EventJson(i), {}).ok());
    REQUIRE(producer->Flush(10000).ok());
    CHECK(producer->delivered() == static_cast<uint64_t>(kEvents));
  }
  auto consumer = OpenConsumer(ConsumerOptions(*kafka, "g-each"));
  std::set<int> seqs;
  std::map<TopicPartition, int64_t> next;  // offset after the last message seen
  size_t count = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (count < size_t(kEvents) && Clock::now() < deadline) {
    const size_t before = count;
    size_t visited = 0;
    Status s = consumer->PollEach(
        300, 100,
        [&](const MessageView& m) {
          ++visited;
          const std::string payload(m.payload);
          const int seq = SeqOf(payload);
          CHECK(seqs.insert(seq).second);
          CHECK(payload == EventJson(seq));
          CHECK(m.topic == (seq % 3 == 0   ? topics.click
                            : seq % 3 == 1 ? topics.purchase
                                           : topics.rating));
          CHECK(m.key == ((seq % 2) ? "" : "u") + std::to_string(seq % 17));
          CHECK(m.timestamp_ms > 0);
          TopicPartition tp{std::string(m.topic), m.partition};
          if (next.count(tp)) CHECK(m.offset == next[tp]);
          next[tp] = m.offset + 1;
          const RawMessage raw = m.ToRaw();
          CHECK(raw.payload == payload);
          CHECK(raw.offset == m.offset);
        },
        &count);
    REQUIRE(s.ok());
    CHECK(count - before == visited);
    CHECK(visited <= 300);
    // Positions cover exactly what was handed over, after each poll.
    OffsetMap positions = consumer->Positions();
    for (const auto& [tp, offset] : next) CHECK(positions[tp] == offset);
  }
  CHECK(count == size_t(kEvents));
  CHECK(seqs.size() == size_t(kEvents));
  CHECK(consumer->delivered() == uint64_t(kEvents));
}

TEST_CASE("Two trainers split four partitions without overlap, at once", "[kafka]") {
  TopicNames topics;
  std::unique_ptr<EmbeddedKafka> kafka;
  REQUIRE(EmbeddedKafka::Start(1, 4, topics, &kafka).ok());
  const int kEvents = 3000;
  ProduceEvents(*kafka, topics, 0, kEvents);
  std::set<int> seqs;
  std::vector<std::unique_ptr<EventConsumer>> trainers;
  for (int i = 0; i < 2; ++i) {
    KafkaOptions o = ConsumerOptions(*kafka, "g-two");  // one group: no rebalance between them
    o.ownership = Ownership{2, i};
    trainers.push_back(OpenConsumer(o));
  }
  size_t total = 0;
  for (int i = 0; i < 2; ++i) {
    // Each trainer has its partitions at its first poll: no group join to wait for.
    const auto start = Clock::now();
    std::vector<RawMessage> got;
    REQUIRE(trainers[i]->Poll(1, 5000, &got).ok());
    CHECK(trainers[i]->HasAssignment());
    CHECK(Clock::now() - start < std::chrono::seconds(3));
    got = PollUntil(trainers[i].get(), kEvents, 3);  // everything it owns, then nothing
    for (const RawMessage& m : got) {
      INFO(m.topic << "/" << m.partition);
      CHECK(m.partition % 2 == i);
      CHECK(seqs.insert(SeqOf(m.payload)).second);
    }
    total += got.size() + 1;
    AssignmentInfo a = trainers[i]->Assignment();
    CHECK(a.ownership.index == i);
    CHECK(a.ownership.count == 2);
    REQUIRE(a.assigned.size() == 6);  // 3 topics x partitions {i, i + 2}
    for (const TopicPartition& tp : a.assigned) CHECK(tp.partition % 2 == i);
    CHECK(a.missing.empty());
    CHECK(a.waiting_for.empty());
  }
  CHECK(total == size_t(kEvents));
  CHECK(seqs.size() >= size_t(kEvents - 2));  // the two single-message polls' seqs not kept

  // An index out of range is refused.
  KafkaOptions bad = ConsumerOptions(*kafka, "g-bad");
  bad.ownership = Ownership{2, 2};
  std::unique_ptr<EventConsumer> consumer;
  CHECK(EventConsumer::Open(bad, &consumer).IsInvalidArgument());
}

TEST_CASE("A topic that appears while consuming is picked up from its start", "[kafka]") {
  TopicNames topics;
  auto kafka = StartKafka(topics);
  KafkaOptions o = ConsumerOptions(*kafka, "g-late");
  o.topics.click = "late.click";  // not created yet
  o.partition_refresh_ms = 200;
  o.ownership = Ownership{2, 1};
  auto consumer = OpenConsumer(o);
  std::vector<RawMessage> got;
  REQUIRE(consumer->Poll(10, 300, &got).ok());
  AssignmentInfo a = consumer->Assignment();
  CHECK(a.assigned.size() == 2);  // partition 1 of purchase and rating
  TopicNames late = topics;
  late.click = o.topics.click;
  REQUIRE(kafka->CreateTopic(late.click, 4).ok());
  // Produced before the trainer noticed the topic: learned all the same.
  ProduceEvents(*kafka, late, 0, 600);
  got = PollUntil(consumer.get(), 600, 10);
  std::set<int> seqs;
  size_t clicks = 0;
  for (const RawMessage& m : got) {
    CHECK(m.partition % 2 == 1);
    if (m.topic == late.click) ++clicks;
  }
  CHECK(clicks > 0);
  a = consumer->Assignment();
  CHECK(a.assigned.size() == 4);  // + late.click partitions 1 and 3
  CHECK(std::count(a.assigned.begin(), a.assigned.end(), TopicPartition{late.click, 3}) == 1);
  // Everything the trainer owns arrived: nothing more.
  std::vector<RawMessage> more = PollUntil(consumer.get(), 600, 1);
  CHECK(more.empty());
  OffsetMap positions = consumer->Positions();
  int64_t owned = 0;
  for (const auto& [tp, offset] : positions) owned += offset;
  CHECK(owned == int64_t(got.size()));
}

TEST_CASE("A trainer that owns no partition says so while not ready", "[kafka]") {
  TopicNames topics;
  auto kafka = StartKafka(topics);  // 3 partitions
  KafkaOptions o = ConsumerOptions(*kafka, "g-none");
  o.ownership = Ownership{4, 3};
  auto consumer = OpenConsumer(o);
  std::vector<RawMessage> got;
  REQUIRE(consumer->Poll(10, 300, &got).ok());
  CHECK_FALSE(consumer->HasAssignment());
  AssignmentInfo a = consumer->Assignment();
  INFO(a.waiting_for);
  CHECK(a.waiting_for.find("trainer.index 3 of trainer.count 4") != std::string::npos);
  CHECK(a.waiting_for.find(topics.click + " has 3") != std::string::npos);
}

}  // namespace

TEST_CASE("EmbeddedKafka's consumer properties keep what the user set", "[kafka]") {
  std::map<std::string, std::string> props;
  EmbeddedKafka::AddConsumerProperties(&props);
  CHECK(props["fetch.wait.max.ms"] == "2");
  props = {{"fetch.wait.max.ms", "50"}, {"client.id", "x"}};
  EmbeddedKafka::AddConsumerProperties(&props);
  CHECK(props["fetch.wait.max.ms"] == "50");
  CHECK(props["client.id"] == "x");
}

}  // namespace recstream::ingest
