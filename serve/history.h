// MetricsHistory: the recent past of the service's headline numbers, for the
// dashboard at `/` (GET /v1/history). A background thread samples the
// ServiceHooks and the learner every `interval` and keeps the last
// `capacity` samples in a ring, so a freshly opened dashboard shows the last
// minutes at once instead of starting empty.
//
// Thread safety: Since() may be called from any number of threads at once;
// the sampler thread is the only writer. Stop() (also run by the destructor)
// joins the sampler; after it, Since() still answers with what was kept.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "learner/learner.h"

namespace recstream::serve {

class ServiceHooks;

struct HistorySample {
  int64_t time_ms = 0;  // Unix ms when the sample was taken
  double events_per_second = 0;
  std::array<uint64_t, learner::kNumTasks> learned{};  // Task order
  std::array<double, learner::kNumTasks> loss_weight{};
  // NaN until the task has learned an event. auc/logloss for click and
  // purchase; mae/rmse for rating (the other pair stays NaN).
  std::array<double, learner::kNumTasks> auc{}, logloss{}, mae{}, rmse{};
  uint64_t rejected = 0;  // all reasons
  int64_t total_lag = 0;
  // Lag summed over the partitions of each topic, topics in name order.
  std::vector<std::pair<std::string, int64_t>> lag_by_topic;
};

struct HistoryOptions {
  std::chrono::milliseconds interval{1000};
  size_t capacity = 900;  // 15 minutes at one sample a second
};

class MetricsHistory {
 public:
  // `learner` and `hooks` are borrowed, may be null (that part of a sample
  // stays empty), and must outlive the MetricsHistory. The first sample is
  // taken at once, on the sampler thread.
  MetricsHistory(const HistoryOptions& options, const learner::Learner* learner,
                 ServiceHooks* hooks);
  ~MetricsHistory();
  MetricsHistory(const MetricsHistory&) = delete;
  MetricsHistory& operator=(const MetricsHistory&) = delete;

  void Stop();

  // Samples taken strictly after `after_ms` (0: all kept), oldest first.
  std::vector<HistorySample> Since(int64_t after_ms) const;

  // One sample of the current state, as the sampler takes it.
  static HistorySample Take(const learner::Learner* learner, ServiceHooks* hooks);

  // Samples as column-oriented JSON, the body of GET /v1/history:
  // {"interval_ms":1000,"t":[ms,...],"events_per_second":[...],
  //  "learned":{"click":[...],...},"loss_weight":{...},"auc":{"click":[...],
  //  "purchase":[...]},"logloss":{...},"mae":{"rating":[...]},"rmse":{...},
  //  "rejected":[...],"total_lag":[...],"lag":{"<topic>":[...]}}
  // NaN is written as null. A topic absent from a sample has null there.
  static std::string ToJson(const std::vector<HistorySample>& samples, int64_t interval_ms);

  int64_t interval_ms() const { return options_.interval.count(); }

 private:
  void Run();

  const HistoryOptions options_;
  const learner::Learner* const learner_;
  ServiceHooks* const hooks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<HistorySample> samples_;  // guarded by mu_
  bool stop_ = false;                  // guarded by mu_
  std::thread thread_;
};

}  // namespace recstream::serve
