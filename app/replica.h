// Replica: `recstream replica`, a serving process that follows the model a
// trainer publishes on the model topic (replicate/follower.h) and answers
// the read API (score, recommend, stats, health, metrics, dashboard) from
// it. It has no store, consumes no events and changes nothing: no admin
// endpoints. /readyz is 200 once it has caught up with the model topic as
// it was at start; /v1/stats ("replica") and /metrics
// (recstream_replica_lag_ms) show how far behind the trainer it is.
//
// Thread safety: Shutdown() is called once, from the thread that called
// Start().
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "config/config.h"

namespace recstream::app {

class Replica {
 public:
  // Builds the configuration of the learner from a trainer's model
  // settings (config::ModelSettings lines): the replica's own keys with the
  // trainer's model.*, rating.* and serve.blend.* on top.
  using Configure =
      std::function<Status(const std::string& trainer_settings, config::AppConfig* out)>;

  // Starts the HTTP server at once (healthz answers while the model is
  // bootstrapped) and the follower. IOError when the port is taken;
  // InvalidArgument for bad Kafka properties. The replica needs brokers:
  // kafka.brokers must be set (there is no embedded Kafka to follow).
  // snapshot_page_bytes > 0 replaces the size of the snapshot pages it asks
  // a trainer for (replicate::FollowerOptions::page_bytes; tests use small
  // pages to cover models of many pages).
  static Status Start(const config::AppConfig& config, Configure configure,
                      std::unique_ptr<Replica>* out, size_t snapshot_page_bytes = 0);
  ~Replica();

  std::string http_address() const;
  Status Shutdown();

  struct Impl;

 private:
  explicit Replica(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::app
