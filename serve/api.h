// Api: the HTTP API of docs/interface.md section 3, as a pure function from HttpRequest to
// HttpResponse (HttpServer carries the bytes). It reads the model through a
// const learner::Learner and asks the application for everything else
// (counters, lag, readiness, checkpoints) through ServiceHooks.
//
// Routes:
//   GET  /v1/score?user=U&item=I           one pair, with "known" flags
//   POST /v1/score {"user":U,"items":[..]} many items, in request order
//   GET  /v1/recommend?user=U&k=10&exclude_purchased=true
//   GET  /v1/stats                         service and model statistics
//   GET  /healthz, GET /readyz, GET /metrics (Prometheus text 0.0.4)
//   POST /v1/admin/checkpoint              Authorization: Bearer <admin_token>
//   GET  /                                 the live dashboard (one HTML page)
//   GET  /v1/history?since=MS              recent samples for the dashboard
//                                          (see MetricsHistory::ToJson)
// The Api owns a MetricsHistory whose thread samples the hooks and the
// learner once a second from construction to destruction.
// Ids in the query string or in a POST body may be strings (1-256 bytes of
// UTF-8) or non-negative integers (rendered in decimal, as ingest does).
// Errors are {"error": "..."} naming the bad parameter: 400 for a bad
// request, 401 for missing/wrong admin credentials, 404 for an unknown route
// or disabled admin endpoints, 405 for a wrong method, 503 when the model or
// hooks are unavailable.
//
// Thread safety. Handle() is const and may be called from any number of
// threads at once; the HTTP counters it keeps for /metrics are atomics.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "learner/learner.h"
#include "serve/http_server.h"
#include "serve/options.h"

namespace recstream::serve {

class MetricsHistory;

struct PartitionLagInfo {
  std::string topic;
  int32_t partition = 0;
  int64_t position = 0;        // next offset the consumer will read
  int64_t high_watermark = 0;  // offset after the last message in the partition
  int64_t lag = 0;             // high_watermark - position, >= 0
};

// A snapshot of the service's state, filled by the application for
// /v1/stats and /metrics.
struct ServiceStatus {
  std::array<uint64_t, learner::kNumTasks> seen{};     // accepted events, Task order
  std::array<uint64_t, learner::kNumTasks> learned{};  // events trained on, Task order
  // Rejected events by reason (every reason, zeros included).
  std::vector<std::pair<std::string, uint64_t>> rejected;
  uint64_t dlq_sent = 0;
  std::vector<PartitionLagInfo> lag;
  // Fixed partition ownership: trainer `trainer_index` of `trainer_count`,
  // the partitions it has assigned itself and the ones that disappeared
  // ("topic/partition").
  int trainer_index = 0;
  int trainer_count = 1;
  std::vector<std::string> assigned_partitions;
  std::vector<std::string> missing_partitions;
  // Several trainers sharing one model (docs/interface.md): whether this
  // trainer exchanges, and the exchange's counters since start.
  struct Exchange {
    bool on = false;
    uint64_t sent_batches = 0;        // batches acknowledged (one per other owner)
    uint64_t sent_bytes = 0;
    uint64_t outbox = 0;              // batches taken, not sent yet
    uint64_t received_batches = 0;    // other trainers' changes applied
    uint64_t duplicate_batches = 0;   // dropped: applied before
    uint64_t incomplete_batches = 0;  // dropped: cut short
    uint64_t bad_records = 0;         // unreadable, skipped
    uint64_t followed_versions = 0;   // other trainers' rows followed
    uint64_t errors = 0;              // sends that failed, changes refused
  } exchange;
  bool checkpoint_ok = true;  // false when the last checkpoint failed
  std::string checkpoint_error;
  int64_t last_checkpoint_ms = 0;  // Unix ms; 0 = never
  uint64_t last_checkpoint_rows = 0;
  uint64_t checkpoints = 0;  // successful checkpoints since start
  double last_checkpoint_duration_ms = 0;
  uint64_t last_checkpoint_bytes = 0;
  // "topic/partition" -> next offset, as stored by the last checkpoint.
  std::vector<std::pair<std::string, int64_t>> checkpoint_offsets;
  double uptime_s = 0;
  double events_per_second = 0;

  // The model topic (docs/interface.md, "Replicas"). A trainer that
  // publishes fills `publishing`; a replica fills `replica`.
  bool publishing = false;
  std::string model_topic;
  std::string published_version;  // "generation.sequence" of the last one acknowledged
  uint64_t published_versions = 0;
  uint64_t published_full = 0;
  uint64_t published_records = 0;
  uint64_t published_bytes = 0;
  uint64_t publish_failures = 0;
  double last_publish_ms = 0;
  std::string publish_error;  // of the last failure, while failing
  bool replica = false;
  double replica_lag_ms = -1;  // age of the newest version applied; -1: none yet
  std::string replica_version;
  uint64_t replica_versions_applied = 0;
  uint64_t replica_heartbeats = 0;
  uint64_t replica_records_applied = 0;
  uint64_t replica_bad_records = 0;
  uint64_t replica_incomplete_versions = 0;
  uint64_t replica_apply_errors = 0;
  uint64_t replica_snapshot_records = 0;
  uint64_t replica_resyncs = 0;
  uint64_t replica_gaps = 0;
  uint64_t replica_tombstones = 0;
  double replica_bootstrap_s = 0;
};

// Implemented by the application. Called from HTTP I/O threads and from the
// Api's history thread (Status(), once a second, for as long as the Api
// lives), concurrently: implementations must be thread-safe.
class ServiceHooks {
 public:
  virtual ~ServiceHooks() = default;
  virtual ServiceStatus Status() const = 0;
  // True once the model is loaded and the consumer has its partitions;
  // otherwise false with *why_not set to a human-readable reason.
  virtual bool Ready(std::string* why_not) const = 0;
  // Forces a checkpoint and returns when it is stored (or failed).
  virtual recstream::Status Checkpoint() = 0;
  // One page of the stored model for GET /v1/snapshot (a replica's
  // bootstrap): the records after key `after`, about `max_bytes` of them,
  // encoded as store/model_records.h EncodePage. With `fresh`, a
  // checkpoint is forced first (at most one a second), so the page is at
  // least as new as every version published before the call.
  // NotFound/Unavailable when this process has no stored model to offer.
  virtual recstream::Status SnapshotPage(const std::string& after, size_t max_bytes, bool fresh,
                                         std::string* body) {
    return recstream::Status::NotFound("this process serves no snapshot");
  }
};

class Api {
 public:
  // `learner` and `hooks` are borrowed and must outlive the Api. Either may
  // be null: score routes then answer 503, service routes report what they
  // can (no hooks: /readyz is ready, checkpoint answers 503).
  Api(const ServeOptions& options, const learner::Blend& blend, const learner::Learner* learner,
      ServiceHooks* hooks);
  ~Api();
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  HttpResponse Handle(const HttpRequest& request) const;

  // Handle() bound to this Api, for HttpServer::Start.
  HttpHandler Handler() const {
    return [this](const HttpRequest& r) { return Handle(r); };
  }

 private:
  enum Route : int {
    kScore,
    kRecommend,
    kStats,
    kHealthz,
    kReadyz,
    kMetrics,
    kAdminCheckpoint,
    kDashboard,
    kHistory,
    kSnapshot,
    kOther,
    kNumRoutes
  };
  static constexpr int kCodes[] = {200, 400, 401, 404, 405, 500, 503};
  static constexpr int kNumCodes = sizeof(kCodes) / sizeof(kCodes[0]);
  // Upper bounds (seconds) of the latency histogram; +Inf is implicit.
  static constexpr double kBuckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                        0.01,   0.025,   0.05,   0.1,   0.25,   1.0};
  static constexpr int kNumBuckets = sizeof(kBuckets) / sizeof(kBuckets[0]);
  static const char* RouteName(int route);
  HttpResponse Snapshot(const HttpRequest& req) const;

  struct RouteCounters {
    std::array<std::atomic<uint64_t>, kNumCodes> by_code{};
    std::array<std::atomic<uint64_t>, kNumBuckets + 1> buckets{};  // non-cumulative
    std::atomic<uint64_t> sum_ns{0};
  };

  HttpResponse Dispatch(const HttpRequest& request, int* route) const;
  HttpResponse GetScore(const HttpRequest& request) const;
  HttpResponse PostScore(const HttpRequest& request) const;
  HttpResponse Recommend(const HttpRequest& request) const;
  HttpResponse Stats() const;
  HttpResponse Ready() const;
  HttpResponse Metrics() const;
  HttpResponse AdminCheckpoint(const HttpRequest& request) const;
  HttpResponse History(const HttpRequest& request) const;
  void Record(int route, int status, uint64_t nanos) const;

  const ServeOptions options_;
  const learner::Blend blend_;
  const learner::Learner* const learner_;
  ServiceHooks* const hooks_;
  std::unique_ptr<MetricsHistory> history_;
  // Where the parts of a long POST /v1/score run (a oneTBB arena, api.cc).
  struct Parts;
  std::unique_ptr<Parts> parts_;
  // Counters for /metrics; relaxed atomics, a scrape may see a request
  // counted in one series and not yet in another.
  mutable std::array<RouteCounters, kNumRoutes> counters_;
};

}  // namespace recstream::serve
