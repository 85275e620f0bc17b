// Reading topics back in tests: what the service produced to Kafka (the
// dead-letter topic), with a plain librdkafka consumer that joins no group.
#pragma once

#include <librdkafka/rdkafkacpp.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace recstream::testing {

struct Letter {
  std::string payload;
  std::string reason;
};

// Reads up to `want` messages of `topic` from the beginning (no group).
std::vector<Letter> ReadTopic(const std::string& brokers, const std::string& topic, size_t want) {
  std::string err;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  conf->set("bootstrap.servers", brokers, err);
  conf->set("group.id", "reader", err);
  conf->set("enable.auto.commit", "false", err);
  std::unique_ptr<RdKafka::KafkaConsumer> c(RdKafka::KafkaConsumer::create(conf.get(), err));
  REQUIRE(c);
  std::vector<RdKafka::TopicPartition*> parts;
  for (int p = 0; p < 3; ++p)
    parts.push_back(RdKafka::TopicPartition::create(topic, p, RdKafka::Topic::OFFSET_BEGINNING));
  c->assign(parts);
  RdKafka::TopicPartition::destroy(parts);
  std::vector<Letter> out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
    std::unique_ptr<RdKafka::Message> m(c->consume(200));
    if (m->err() != RdKafka::ERR_NO_ERROR) continue;
    Letter l;
    l.payload.assign(static_cast<const char*>(m->payload()), m->len());
    if (auto* h = m->headers()) {
      auto hs = h->get_last("reason");
      if (hs.err() == RdKafka::ERR_NO_ERROR)
        l.reason.assign(static_cast<const char*>(hs.value()), hs.value_size());
    }
    out.push_back(std::move(l));
  }
  c->close();
  return out;
}

}  // namespace recstream::testing
