// api_bench (Google Benchmark): the serving handlers without the network
// (issue #4, target 3): serve::Api::Handle for GET /v1/score and for
// POST /v1/score with 1,000 items, on a default model (dim 32) with
// 100,000 users and 10,000 items; and JsonWriter::AppendFloat against
// fmt's FMT_COMPILE("{}") (the former code), which it matches byte for byte (4 floats per scored
// item).
//
//   build/bench/api_bench [--benchmark_repetitions=5]
#include <benchmark/benchmark.h>
#include <fmt/compile.h>
#include <fmt/format.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "learner/learner.h"
#include "serve/api.h"
#include "serve/json_writer.h"

namespace {

using namespace recstream;

constexpr int kUsers = 100000;
constexpr int kItems = 10000;

const learner::Learner& Model() {
  static const std::unique_ptr<learner::Learner> model = [] {
    learner::LearnerOptions lo;
    std::unique_ptr<learner::Learner> m;
    if (!learner::Learner::Create(lo, &m).ok()) std::abort();
    std::mt19937 rng(1);
    std::vector<learner::Event> batch;
    for (int i = 0; i < 300000; ++i) {
      learner::Event e;
      e.task = i % 3 == 0 ? learner::Task::kRating : learner::Task::kClick;
      e.user = std::to_string(i < kUsers ? i : int(rng() % kUsers));
      e.item = "i" + std::to_string(i < kItems ? i : int(rng() % kItems));
      e.label = e.task == learner::Task::kRating ? float(1 + rng() % 5) : float(rng() % 2);
      batch.push_back(std::move(e));
      if (batch.size() == 4096) {
        m->Train(batch);
        batch.clear();
      }
    }
    m->Train(batch);
    return m;
  }();
  return *model;
}

serve::Api& TheApi() {
  static serve::Api api(serve::ServeOptions(), learner::Blend(), &Model(), nullptr);
  return api;
}

void BM_GetScore(benchmark::State& state) {
  serve::Api& api = TheApi();
  std::mt19937 rng(2);
  std::vector<std::string> targets;
  for (int i = 0; i < 4096; ++i) {
    targets.push_back("/v1/score?user=" + std::to_string(rng() % kUsers) + "&item=i" +
                      std::to_string(rng() % kItems));
  }
  serve::HttpRequest req;
  req.method = "GET";
  size_t i = 0;
  for (auto _ : state) {
    serve::ParseTarget(targets[i++ & 4095], &req.path, &req.query);
    serve::HttpResponse r = api.Handle(req);
    if (r.status != 200) state.SkipWithError("GET /v1/score failed");
    benchmark::DoNotOptimize(r.body.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(BM_GetScore);

void BM_PostScore(benchmark::State& state) {
  serve::Api& api = TheApi();
  std::mt19937 rng(3);
  std::vector<serve::HttpRequest> reqs(16);
  for (auto& req : reqs) {
    req.method = "POST";
    req.path = "/v1/score";
    req.body = "{\"user\":\"" + std::to_string(rng() % kUsers) + "\",\"items\":[";
    for (int k = 0; k < state.range(0); ++k) {
      req.body += (k ? ",\"i" : "\"i") + std::to_string(rng() % kItems) + "\"";
    }
    req.body += "]}";
  }
  size_t i = 0;
  for (auto _ : state) {
    serve::HttpResponse r = api.Handle(reqs[i++ & 15]);
    if (r.status != 200) state.SkipWithError("POST /v1/score failed");
    benchmark::DoNotOptimize(r.body.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations() * state.range(0)));
}
BENCHMARK(BM_PostScore)->Arg(1000)->Unit(benchmark::kMicrosecond);

// Predictions-like values: probabilities, ratings, blended scores.
std::vector<float> Floats() {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f), rating(1.0f, 5.0f);
  std::vector<float> v(4000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = i % 4 == 2 ? rating(rng) : unit(rng);
  return v;
}

void BM_AppendFloat(benchmark::State& state) {
  const std::vector<float> v = Floats();
  std::string out;
  for (auto _ : state) {
    out.clear();
    for (float f : v) serve::JsonWriter::AppendFloat(&out, f);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations() * v.size()));
}
BENCHMARK(BM_AppendFloat);

void BM_FmtFloat(benchmark::State& state) {
  const std::vector<float> v = Floats();
  std::string out;
  for (auto _ : state) {
    out.clear();
    for (float f : v) {
      char buf[64];
      char* end = fmt::format_to(buf, FMT_COMPILE("{}"), f);
      out.append(buf, end);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations() * v.size()));
}
BENCHMARK(BM_FmtFloat);

}  // namespace

BENCHMARK_MAIN();
