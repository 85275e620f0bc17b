#include "app/replica.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>

#include "learner/learner.h"
#include "replicate/follower.h"
#include "serve/api.h"
#include "serve/http_server.h"

namespace recstream::app {

using Clock = std::chrono::steady_clock;

struct Replica::Impl : public serve::ServiceHooks {
  config::AppConfig config;
  Configure configure;
  const Clock::time_point started = Clock::now();
  std::unique_ptr<replicate::ModelFollower> follower;
  std::unique_ptr<serve::Api> api_owned;
  std::atomic<serve::Api*> api{nullptr};
  std::unique_ptr<serve::HttpServer> http;
  config::AppConfig model_config;  // set once, by the follower's thread, before api

  serve::HttpResponse Handle(const serve::HttpRequest& req) {
    if (serve::Api* a = api.load()) return a->Handle(req);
    std::string why;
    if (follower) follower->Ready(&why);
    if (req.path == "/healthz") return {200, "application/json", R"({"status":"ok"})"};
    std::string msg = why.empty() ? "starting" : why;
    std::string escaped;
    for (char c : msg) {
      if (c == '"' || c == '\\') escaped.push_back('\\');
      if (uint8_t(c) >= 0x20) escaped.push_back(c);
    }
    if (req.path == "/readyz")
      return {503, "application/json",
              R"({"status":"not ready","error":")" + escaped + R"("})"};
    return {503, "application/json",
            R"({"error":"no model yet: )" + escaped + R"("})"};
  }

  serve::ServiceStatus Status() const override {
    serve::ServiceStatus st;
    st.uptime_s = std::chrono::duration<double>(Clock::now() - started).count();
    st.replica = true;
    st.model_topic = config.kafka.topics.model;
    if (!follower) return st;
    const replicate::FollowerStats fs = follower->stats();
    st.replica_lag_ms = follower->lag_ms();
    st.replica_version = fs.last.ToString();
    st.replica_versions_applied = fs.versions_applied;
    st.replica_heartbeats = fs.heartbeats;
    st.replica_records_applied = fs.records_applied;
    st.replica_bad_records = fs.bad_records;
    st.replica_incomplete_versions = fs.incomplete_versions;
    st.replica_apply_errors = fs.apply_errors;
    st.replica_snapshot_records = fs.snapshot_records;
    st.replica_resyncs = fs.resyncs;
    st.replica_gaps = fs.gaps;
    st.replica_tombstones = fs.tombstones;
    st.replica_bootstrap_s = fs.bootstrap_s;
    if (const learner::Learner* l = follower->learner()) {
      const learner::LearnerStats ls = l->Stats();
      for (int t = 0; t < learner::kNumTasks; ++t) st.learned[t] = ls.tasks[t].learned;
    }
    for (const auto& p : fs.partitions)
      st.lag.push_back({config.kafka.topics.model, p.partition, p.position, p.high_watermark,
                        std::max<int64_t>(0, p.high_watermark - p.position)});
    return st;
  }
  bool Ready(std::string* why_not) const override {
    return follower && follower->Ready(why_not);
  }
  recstream::Status Checkpoint() override {
    return recstream::Status::NotFound("a replica has no checkpoints");
  }
};

Replica::Replica(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Replica::~Replica() {
  if (impl_) (void)Shutdown();
}

Status Replica::Start(const config::AppConfig& config, Configure configure,
                      std::unique_ptr<Replica>* out, size_t snapshot_page_bytes) {
  if (config.kafka.brokers.empty())
    return Status::InvalidArgument(
        "kafka.brokers is empty: a replica follows the model topic of a trainer's Kafka (set "
        "kafka.brokers to the brokers the trainer uses)");
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->configure = std::move(configure);
  Impl* d = impl.get();
  replicate::FollowerOptions fo;
  fo.brokers = config.kafka.brokers;
  fo.topic = config.kafka.topics.model;
  fo.properties = config.kafka.properties;
  fo.snapshot_url = config.replicate.snapshot_url;
  if (snapshot_page_bytes > 0) fo.page_bytes = snapshot_page_bytes;
  auto factory = [d](const std::string& settings, std::unique_ptr<learner::Learner>* learner) {
    config::AppConfig c;
    RECSTREAM_RETURN_IF_ERROR(d->configure(settings, &c));
    RECSTREAM_RETURN_IF_ERROR(learner::Learner::Create(c.learner, learner));
    d->model_config = c;
    return Status::OK();
  };
  auto on_learner = [d](const learner::Learner* learner) {
    // Served as the trainer serves: its blend; no admin endpoints.
    serve::ServeOptions so = d->config.serve;
    so.admin_token.clear();
    d->api_owned = std::make_unique<serve::Api>(so, d->model_config.blend, learner, d);
    d->api.store(d->api_owned.get());
  };
  RECSTREAM_RETURN_IF_ERROR(
      replicate::ModelFollower::Start(fo, factory, on_learner, &impl->follower));
  RECSTREAM_RETURN_IF_ERROR(serve::HttpServer::Start(
      config.serve, [d](const serve::HttpRequest& r) { return d->Handle(r); }, &impl->http));
  out->reset(new Replica(std::move(impl)));
  return Status::OK();
}

std::string Replica::http_address() const {
  return impl_->http ? impl_->http->address() : impl_->config.serve.listen;
}

Status Replica::Shutdown() {
  Impl& d = *impl_;
  if (d.http) d.http->Stop();
  if (d.follower) d.follower->Stop();
  d.api.store(nullptr);
  d.api_owned.reset();
  d.http.reset();
  d.follower.reset();
  return Status::OK();
}

}  // namespace recstream::app
