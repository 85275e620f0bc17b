#include "serve/history.h"

#include <cmath>
#include <map>
#include <set>

#include "serve/api.h"
#include "serve/json_writer.h"

namespace recstream::serve {

namespace {

using learner::Task;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

MetricsHistory::MetricsHistory(const HistoryOptions& options, const learner::Learner* learner,
                               ServiceHooks* hooks)
    : options_(options), learner_(learner), hooks_(hooks) {
  thread_ = std::thread([this] { Run(); });
}

MetricsHistory::~MetricsHistory() { Stop(); }

void MetricsHistory::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MetricsHistory::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    HistorySample s = Take(learner_, hooks_);
    lock.lock();
    samples_.push_back(std::move(s));
    while (samples_.size() > options_.capacity) samples_.pop_front();
    cv_.wait_for(lock, options_.interval, [this] { return stop_; });
  }
}

std::vector<HistorySample> MetricsHistory::Since(int64_t after_ms) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<HistorySample> out;
  for (const HistorySample& s : samples_) {
    if (s.time_ms > after_ms) out.push_back(s);
  }
  return out;
}

HistorySample MetricsHistory::Take(const learner::Learner* learner, ServiceHooks* hooks) {
  HistorySample s;
  s.time_ms = NowMs();
  const double nan = std::nan("");
  s.auc.fill(nan);
  s.logloss.fill(nan);
  s.mae.fill(nan);
  s.rmse.fill(nan);
  if (learner != nullptr) {
    learner::LearnerStats ls = learner->Stats();
    for (Task t : learner::kAllTasks) {
      int i = static_cast<int>(t);
      const learner::TaskStats& ts = ls.tasks[i];
      s.learned[i] = ts.learned;
      s.loss_weight[i] = ts.loss_weight;
      if (ts.learned == 0) continue;
      if (t == Task::kRating) {
        s.mae[i] = ts.mae;
        s.rmse[i] = ts.rmse;
      } else {
        s.auc[i] = ts.auc;
        s.logloss[i] = ts.logloss;
      }
    }
  }
  if (hooks != nullptr) {
    ServiceStatus st = hooks->Status();
    s.events_per_second = st.events_per_second;
    // The service counts events learned since start plus the restored ones.
    for (int i = 0; i < learner::kNumTasks; ++i) s.learned[i] = st.learned[i];
    for (const auto& [reason, n] : st.rejected) s.rejected += n;
    std::map<std::string, int64_t> by_topic;
    for (const PartitionLagInfo& p : st.lag) {
      by_topic[p.topic] += p.lag;
      s.total_lag += p.lag;
    }
    s.lag_by_topic.assign(by_topic.begin(), by_topic.end());
  }
  return s;
}

std::string MetricsHistory::ToJson(const std::vector<HistorySample>& samples, int64_t interval_ms) {
  std::string out;
  out.reserve(256 + samples.size() * 256);
  JsonWriter w(&out);
  auto column = [&](auto value_of) {
    w.BeginArray();
    for (const HistorySample& s : samples) value_of(s);
    w.EndArray();
  };
  // One array per task, for the tasks `include` selects.
  auto per_task = [&](const char* key, auto include, auto value_of) {
    w.Key(key).BeginObject();
    for (Task t : learner::kAllTasks) {
      if (!include(t)) continue;
      int i = static_cast<int>(t);
      w.Key(learner::TaskName(t));
      column([&](const HistorySample& s) { value_of(s, i); });
    }
    w.EndObject();
  };
  auto all = [](Task) { return true; };
  auto binary = [](Task t) { return t != Task::kRating; };
  auto rating = [](Task t) { return t == Task::kRating; };

  w.BeginObject();
  w.Key("interval_ms").Int(interval_ms);
  w.Key("t");
  column([&](const HistorySample& s) { w.Int(s.time_ms); });
  w.Key("events_per_second");
  column([&](const HistorySample& s) { w.Double(s.events_per_second); });
  per_task("learned", all, [&](const HistorySample& s, int i) { w.Uint(s.learned[i]); });
  per_task("loss_weight", all, [&](const HistorySample& s, int i) { w.Double(s.loss_weight[i]); });
  per_task("auc", binary, [&](const HistorySample& s, int i) { w.Double(s.auc[i]); });
  per_task("logloss", binary, [&](const HistorySample& s, int i) { w.Double(s.logloss[i]); });
  per_task("mae", rating, [&](const HistorySample& s, int i) { w.Double(s.mae[i]); });
  per_task("rmse", rating, [&](const HistorySample& s, int i) { w.Double(s.rmse[i]); });
  w.Key("rejected");
  column([&](const HistorySample& s) { w.Uint(s.rejected); });
  w.Key("total_lag");
  column([&](const HistorySample& s) { w.Int(s.total_lag); });
  std::set<std::string> topics;
  for (const HistorySample& s : samples) {
    for (const auto& [topic, lag] : s.lag_by_topic) topics.insert(topic);
  }
  w.Key("lag").BeginObject();
  for (const std::string& topic : topics) {
    w.Key(topic);
    column([&](const HistorySample& s) {
      for (const auto& [name, lag] : s.lag_by_topic) {
        if (name == topic) {
          w.Int(lag);
          return;
        }
      }
      w.Null();
    });
  }
  w.EndObject();
  w.EndObject();
  return out;
}

}  // namespace recstream::serve
