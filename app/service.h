// Service: the running recstream, wiring ingest -> learner -> store and serve.
//
// Start() restores the model and offsets from the store (if any), starts
// the Kafka consumer (and an embedded mock cluster when no brokers are
// configured), the ingest, training and checkpoint threads and the HTTP
// server. The ingest thread polls a batch and parses it (rejects go to the
// dead-letter topic) while the training thread learns the previous one; each
// batch carries the positions its messages bring their partitions to, and
// the training thread counts those as learned once it has learned the batch.
// Between batches it hands a snapshot of the changed rows plus the learned
// positions to the checkpoint writer, which stores them in one atomic batch.
// So the stored offsets always cover exactly the events in the stored model:
// after a crash, nothing is lost or learned twice.
//
// Thread safety: the ServiceHooks methods may be called from HTTP threads.
// Shutdown() is called once, from the thread that called Start().
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "config/config.h"

namespace recstream::app {

// Tunes glibc's malloc for a process that runs a Service; call it once,
// early in main(), before Service::Start. Process-wide (it is the program's
// choice, not a component's); nothing on other C libraries.
//
// Why: the Kafka consumer's broker thread receives each fetch response (up
// to kafka fetch.max.bytes, 16 MiB by default here) into one fresh buffer,
// freed once the ingest thread has parsed its messages. With glibc's
// defaults that memory goes back to the kernel and is faulted in again,
// zeroed, for the next response, which dominates the broker thread's time.
// With TuneMalloc, blocks below 32 MiB come from malloc's heaps, which keep
// freed memory for reuse.
// Service::Start returns what a restore used to the kernel when it is done.
void TuneMalloc();

class Service {
 public:
  // IOError/Unavailable when a component cannot start (store locked, port
  // taken, Kafka client error); Corruption when the stored model does not
  // match the configured model shape.
  static Status Start(const config::AppConfig& config, std::unique_ptr<Service>* service);
  ~Service();

  // The address the HTTP server listens on, "host:port".
  std::string http_address() const;
  // The Kafka bootstrap servers in use (the embedded cluster's if started).
  std::string kafka_brokers() const;

  // Stops consuming, writes a final checkpoint, leaves the consumer group
  // and stops the HTTP server. Returns the final checkpoint's status.
  Status Shutdown();

  struct Impl;

 private:
  explicit Service(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::app
