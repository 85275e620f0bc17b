#include "eval/evaluator.h"

#include <simdjson.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <random>
#include <unordered_set>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "eval/generator.h"

namespace recstream::eval {
namespace {

namespace fs = std::filesystem;

// A fresh temporary directory, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("recstream_eval_test_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path path() const { return path_; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// A small world (500 users, 300 items), so that 100k events are enough for
// the learner to get near the Bayes ceiling.
std::string GeneratedStream(uint64_t events, uint64_t seed = 3) {
  GeneratorOptions options;
  options.events = events;
  options.users = 500;
  options.items = 300;
  options.seed = seed;
  std::ostringstream out;
  Generator gen(options);
  REQUIRE(gen.WriteAll(&out).ok());
  return out.str();
}

EvalOptions QuietOptions() {
  EvalOptions options;
  options.progress = false;
  options.learner.threads = 2;
  return options;
}

// The shared 100k-event stream and its evaluation, computed once.
struct Fixture {
  std::string stream;
  EvalReport report;
  std::vector<float> ratings;
};
const Fixture& Big() {
  static const Fixture* fixture = [] {
    auto* f = new Fixture;
    f->stream = GeneratedStream(100000);
    std::istringstream in(f->stream);
    Status s = RunEval(QuietOptions(), in, &f->report);
    REQUIRE(s.ok());
    ingest::EventParser parser{ingest::ParserOptions()};
    learner::Event e;
    std::istringstream again(f->stream);
    std::string line;
    while (std::getline(again, line))
      if (!parser.Parse(line, &e, 0) && e.task == learner::Task::kRating)
        f->ratings.push_back(e.label);
    return f;
  }();
  return *fixture;
}

TEST_CASE("RunEval learns the generated stream close to the Bayes ceiling", "[evaluator]") {
  const EvalReport& r = Big().report;
  INFO(ReportSummary(r));
  CHECK(r.events == 100000);
  CHECK(r.rejected == 0);
  const TaskReport& click = r.tasks[0];
  const TaskReport& purchase = r.tasks[1];
  const TaskReport& rating = r.tasks[2];
  CHECK(click.count + purchase.count + rating.count == 100000);
  REQUIRE(click.has_bayes);
  CHECK(click.auc > 0.65);
  CHECK(click.bayes_auc > 0.7);
  CHECK(click.last10_auc > click.bayes_auc - 0.08);
  CHECK(click.last10_logloss < 0.65);
  CHECK(click.logloss >= click.bayes_logloss - 0.02);
  CHECK(purchase.count > 0);
  CHECK(std::isfinite(purchase.auc));

  // Ratings: better than always predicting the (oracle) mean rating.
  const std::vector<float>& ratings = Big().ratings;
  REQUIRE(ratings.size() == rating.count);
  double mean = 0;
  for (float v : ratings) mean += v;
  mean /= double(ratings.size());
  double constant_mae = 0;
  for (float v : ratings) constant_mae += std::abs(v - mean);
  constant_mae /= double(ratings.size());
  CHECK(rating.mae < constant_mae);
  CHECK(rating.last10_mae < constant_mae - 0.05);
  CHECK(rating.bayes_mae < rating.mae);
  CHECK(rating.rmse >= rating.mae);
  CHECK(r.task_weights[0] > 0);
}

TEST_CASE("Two trainers sharing one model learn the stream as one trainer does", "[evaluator][trainers]") {
  // Each trainer learns half of the users; the items' rows each have one
  // owner. Exchanging, both come close to one trainer; never exchanging
  // (each learns alone), they fall behind.
  EvalOptions options = QuietOptions();
  options.learner.threads = 1;
  options.trainers = 2;
  options.exchange_events = 1000;
  std::istringstream in(Big().stream);
  EvalReport two;
  REQUIRE(RunEval(options, in, &two).ok());
  options.exchange_events = 1u << 30;
  std::istringstream again(Big().stream);
  EvalReport apart;
  REQUIRE(RunEval(options, again, &apart).ok());
  const EvalReport& one = Big().report;
  INFO(ReportSummary(two) << ReportSummary(apart));
  CHECK(two.events == 100000);
  CHECK(two.trainers == 2);
  CHECK(two.exchanges >= 49);
  CHECK(two.exchanged_rows > 0);
  CHECK(two.sent_bytes_per_event > 0);
  CHECK(apart.exchanges == 0);
  CHECK(std::abs(two.tasks[0].auc - one.tasks[0].auc) < 0.01);
  CHECK(std::abs(two.tasks[2].mae - one.tasks[2].mae) < 0.02);
  CHECK(two.tasks[0].auc > apart.tasks[0].auc + 0.005);
  CHECK(two.tasks[2].mae < apart.tasks[2].mae - 0.01);
  CHECK(ReportJson(two).find("\"trainers\": {\"count\": 2") != std::string::npos);

  // Owners publishing (and trainers following) every tenth exchange only:
  // a tenth of the followed bytes, and still close to one trainer (each
  // trainer's own changes stay in its copies).
  options.exchange_events = 1000;
  options.follow_events = 10000;
  std::istringstream third(Big().stream);
  EvalReport later;
  REQUIRE(RunEval(options, third, &later).ok());
  INFO(ReportSummary(later));
  CHECK(later.exchanges == two.exchanges);
  CHECK(later.followed_bytes_per_event < two.followed_bytes_per_event / 3);
  CHECK(std::abs(later.tasks[0].auc - one.tasks[0].auc) < 0.01);
  CHECK(std::abs(later.tasks[2].mae - one.tasks[2].mae) < 0.02);
  CHECK(ReportJson(later).find("\"follow_events\": 10000") != std::string::npos);
}

TEST_CASE("ReportJson has the docs/interface.md section 5 shape", "[evaluator]") {
  const EvalReport& r = Big().report;
  const std::string json = ReportJson(r);
  INFO(json);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  REQUIRE(parser.parse(json).get(doc) == simdjson::SUCCESS);
  CHECK(uint64_t(doc["events"]) == 100000);
  CHECK(uint64_t(doc["rejected"]) == 0);
  CHECK(double(doc["seconds"]) > 0);
  CHECK(double(doc["events_per_second"]) > 0);
  for (const char* key : {"auc", "logloss", "bayes_auc", "bayes_logloss", "precision", "recall",
                          "f1"}) {
    INFO(key);
    CHECK(double(doc["tasks"]["click"][key]) > 0);
    CHECK(double(doc["tasks"]["purchase"][key]) > 0);
  }
  CHECK(double(doc["tasks"]["click"]["f1"]) == Approx(r.tasks[0].f1));
  CHECK(r.tasks[0].f1 < 1.0);
  CHECK(uint64_t(doc["tasks"]["click"]["count"]) == r.tasks[0].count);
  CHECK(double(doc["tasks"]["click"]["last10"]["auc"]) == Approx(r.tasks[0].last10_auc));
  CHECK(double(doc["tasks"]["click"]["last10"]["logloss"]) > 0);
  for (const char* key : {"mae", "rmse", "bayes_mae", "bayes_rmse"}) {
    INFO(key);
    CHECK(double(doc["tasks"]["rating"][key]) > 0);
  }
  CHECK(double(doc["tasks"]["rating"]["last10"]["mae"]) > 0);
  CHECK(double(doc["tasks"]["rating"]["last10"]["rmse"]) > 0);
  CHECK(doc["ranking"].error() == simdjson::NO_SUCH_FIELD);
  for (const char* key : {"click", "purchase", "rating"})
    CHECK(double(doc["task_weights"][key]) > 0);

  // The weights over time (an extension, docs/interface.md section 5): a sample about
  // every 10,000 events, the last one the final weights.
  simdjson::dom::array history;
  REQUIRE(doc["task_weights_history"].get(history) == simdjson::SUCCESS);
  REQUIRE(history.size() == r.weight_history.size());
  CHECK(history.size() >= 8);
  CHECK(history.size() <= 11);
  uint64_t previous = 0;
  bool moved = false;
  for (simdjson::dom::element sample : history) {
    CHECK(uint64_t(sample["events"]) > previous);
    previous = uint64_t(sample["events"]);
    for (const char* key : {"click", "purchase", "rating"})
      moved |= double(sample[key]) != double(history.at(0)[key]);
  }
  CHECK(previous == 100000);
  CHECK(moved);  // uncertainty weighting (the default) adapts the weights
  for (int t = 0; t < learner::kNumTasks; ++t)
    CHECK(r.weight_history.back().weights[t] == r.task_weights[t]);
  const std::string summary = ReportSummary(r);
  CHECK(summary.find("click") != std::string::npos);
  CHECK(summary.find("rating") != std::string::npos);
}

TEST_CASE("Baselines run beside the learner on the same events", "[evaluator]") {
  EvalOptions options = QuietOptions();
  options.baselines = true;
  std::istringstream in(Big().stream);
  EvalReport r;
  REQUIRE(RunEval(options, in, &r).ok());
  INFO(ReportSummary(r));
  REQUIRE(r.baselines.size() == 3);
  CHECK(r.baselines[0].name == "popularity");
  CHECK(r.baselines[1].name == "biased_mf");
  CHECK(r.baselines[2].name == "single_task");
  for (const BaselineReport& b : r.baselines)
    for (int t = 0; t < learner::kNumTasks; ++t) {
      INFO(b.name << " task " << t);
      CHECK(b.tasks[t].count == r.tasks[t].count);
      CHECK_FALSE(b.tasks[t].has_bayes);
    }
  const auto& pop = r.baselines[0].tasks;
  const auto& mf = r.baselines[1].tasks;
  const auto& single = r.baselines[2].tasks;
  // Every baseline learns something; the multi-task learner beats them.
  CHECK(pop[0].auc > 0.55);
  CHECK(mf[0].auc > 0.55);
  CHECK(mf[2].mae < pop[2].mae);
  CHECK(r.tasks[0].last10_auc > pop[0].last10_auc);
  CHECK(r.tasks[0].last10_auc > mf[0].last10_auc);
  CHECK(r.tasks[2].last10_mae < mf[2].last10_mae);
  // The rare purchase task gains most from the other tasks.
  CHECK(r.tasks[1].auc > single[1].auc);

  const std::string json = ReportJson(r);
  INFO(json);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  REQUIRE(parser.parse(json).get(doc) == simdjson::SUCCESS);
  CHECK(double(doc["baselines"]["biased_mf"]["rating"]["mae"]) == Approx(mf[2].mae));
  CHECK(double(doc["baselines"]["single_task"]["purchase"]["last10"]["auc"]) ==
        Approx(single[1].last10_auc));
  CHECK(double(doc["baselines"]["popularity"]["click"]["auc"]) == Approx(pop[0].auc));
  CHECK(double(doc["task_weights"]["click"]) > 0);
}

TEST_CASE("RunEval counts rejected lines and writes one prediction per accepted event",
          "[evaluator]") {
  std::string stream = GeneratedStream(2000, 5);
  std::istringstream lines(stream);
  std::string mixed, line;
  int i = 0;
  while (std::getline(lines, line)) {
    mixed += line + "\n";
    if (++i % 500 == 0) {
      mixed += "{not json\n";
      mixed += R"({"type":"click","user":1,"item":"x","label":2})"
               "\n";
      mixed += "\n";  // blank lines are skipped, not counted
    }
  }
  TempDir dir;
  EvalOptions options = QuietOptions();
  options.batch = 128;
  options.predictions_path = (dir.path() / "pred.jsonl").string();
  EvalReport report;
  std::istringstream in(mixed);
  REQUIRE(RunEval(options, in, &report).ok());
  CHECK(report.events == 2000);
  CHECK(report.rejected == 8);
  CHECK(report.rejected_by_reason[size_t(ingest::RejectReason::kMalformedJson)] == 4);
  CHECK(report.rejected_by_reason[size_t(ingest::RejectReason::kBadLabel)] == 4);
  CHECK(ReportSummary(report).find("bad_label 4") != std::string::npos);

  std::ifstream pred(options.predictions_path);
  simdjson::dom::parser parser;
  ingest::EventParser event_parser{ingest::ParserOptions()};
  learner::Event e;
  std::istringstream accepted(stream);
  std::string event_line;
  uint64_t count = 0;
  while (std::getline(pred, line)) {
    REQUIRE(std::getline(accepted, event_line));
    REQUIRE_FALSE(event_parser.Parse(event_line, &e, 0));
    simdjson::dom::element doc;
    REQUIRE(parser.parse(line).get(doc) == simdjson::SUCCESS);
    std::string_view type = doc["type"];
    CHECK(type == learner::TaskName(e.task));
    double p = doc["pred"];
    if (e.task == learner::Task::kRating) {
      CHECK(p >= 1.0);
      CHECK(p <= 5.0);
    } else {
      CHECK(p > 0.0);
      CHECK(p < 1.0);
    }
    ++count;
  }
  CHECK(count == report.events);
}

TEST_CASE("RunEval is deterministic with one training thread", "[evaluator]") {
  // Single-threaded training is deterministic: same stream, same report.
  std::string stream = GeneratedStream(5000, 9);
  EvalOptions options = QuietOptions();
  options.learner.threads = 1;
  EvalReport a, b;
  std::istringstream in1(stream), in2(stream);
  REQUIRE(RunEval(options, in1, &a).ok());
  REQUIRE(RunEval(options, in2, &b).ok());
  CHECK(a.tasks[0].auc == b.tasks[0].auc);
  CHECK(a.tasks[2].mae == b.tasks[2].mae);
}

TEST_CASE("RunEval ranks positive events among sampled candidates", "[evaluator]") {
  std::string stream = GeneratedStream(60000, 11);
  EvalOptions options = QuietOptions();
  options.ranking_k = 10;
  options.candidates = 50;
  EvalReport report;
  std::istringstream in(stream);
  REQUIRE(RunEval(options, in, &report).ok());
  INFO(ReportSummary(report));
  REQUIRE(report.has_ranking);
  CHECK(report.ranking.k == 10);
  CHECK(report.ranking.candidates == 50);
  CHECK(report.ranking.ranked > 10000);
  // Chance is 10/51 = 0.196.
  CHECK(report.ranking.hr > 0.22);
  CHECK(report.ranking.ndcg > 0);
  CHECK(report.ranking.ndcg < report.ranking.hr);

  const std::string json = ReportJson(report);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  REQUIRE(parser.parse(json).get(doc) == simdjson::SUCCESS);
  CHECK(int64_t(doc["ranking"]["k"]) == 10);
  CHECK(int64_t(doc["ranking"]["candidates"]) == 50);
  CHECK(double(doc["ranking"]["hr"]) == Approx(report.ranking.hr).epsilon(1e-5));
  CHECK(double(doc["ranking"]["ndcg"]) > 0);
}

TEST_CASE("A ranking that ranks no event says why", "[evaluator]") {
  // 30 items: no stratum ever holds 100 other items.
  std::string stream;
  for (int i = 0; i < 300; ++i)
    stream += R"({"type":"click","user":"u)" + std::to_string(i % 7) + R"(","item":"i)" +
              std::to_string(i % 30) + R"(","label":1,"ts":)" + std::to_string(1000 + i) + "}\n";
  EvalOptions options = QuietOptions();
  options.ranking_k = 10;
  options.candidates = 100;
  EvalReport report;
  std::istringstream in(stream);
  REQUIRE(RunEval(options, in, &report).ok());
  REQUIRE(report.has_ranking);
  CHECK(report.ranking.ranked == 0);
  CHECK(ReportSummary(report).find("no event ranked") != std::string::npos);
  options.candidates = 20;
  std::istringstream again(stream);
  REQUIRE(RunEval(options, again, &report).ok());
  CHECK(report.ranking.ranked > 0);
  CHECK(ReportSummary(report).find("no event ranked") == std::string::npos);
}

TEST_CASE("Ranking is stratified: warm among seen items, cold among the catalog's unseen ones",
          "[evaluator]") {
  // Items keep arriving; each carries a category, clicked items a good one.
  std::string stream;
  std::mt19937 rng(5);
  for (int i = 0; i < 20000; ++i) {
    const int item = i < 4000 ? i / 2 : int(rng() % 2000 + std::min(i / 8, 6000));
    const bool good = item % 2 == 0;
    stream += R"({"type":"click","user":)" + std::to_string(rng() % 300) + R"(,"item":"i)" +
              std::to_string(item) + R"(","label":)" + (good ? "1" : "0") +
              R"(,"item_features":["cat=)" + (good ? "good" : "bad") + "\"]}\n";
  }
  TempDir dir;
  EvalOptions options = QuietOptions();
  options.ranking_k = 10;
  options.candidates = 20;
  options.predictions_path = (dir.path() / "pred.jsonl").string();
  EvalReport report;
  std::istringstream in(stream);
  REQUIRE(RunEval(options, in, &report).ok());
  INFO(ReportSummary(report));
  const RankingReport& rk = report.ranking;
  CHECK(rk.warm.count + rk.cold.count == rk.ranked);
  CHECK(rk.warm.count > 1000);
  CHECK(rk.cold.count > 100);

  // The file says what each event was ranked against: recompute.
  std::ifstream pred(options.predictions_path);
  std::istringstream ev(stream);
  std::unordered_set<std::string> seen;
  simdjson::dom::parser pe, pp;
  std::string le, lp;
  double hits = 0;
  uint64_t ranked = 0, cold = 0, bad = 0, bad_below = 0, line = 0;
  while (std::getline(ev, le) && std::getline(pred, lp)) {
    ++line;
    simdjson::dom::element e, p;
    REQUIRE(pe.parse(le).get(e) == simdjson::SUCCESS);
    REQUIRE(pp.parse(lp).get(p) == simdjson::SUCCESS);
    std::string_view item_view;
    REQUIRE(e["item"].get_string().get(item_view) == simdjson::SUCCESS);
    const std::string item(item_view);
    const bool warm = seen.count(item) > 0;
    simdjson::dom::object rank;
    if (p["rank"].get_object().get(rank) == simdjson::SUCCESS) {
      ++ranked;
      cold += !warm;
      double score = 0;
      REQUIRE(rank["score"].get_double().get(score) == simdjson::SUCCESS);
      simdjson::dom::array candidates;
      REQUIRE(rank["candidates"].get_array().get(candidates) == simdjson::SUCCESS);
      double above = 0;
      std::unordered_set<std::string> distinct;
      for (simdjson::dom::element c : candidates) {
        std::string_view id_view;
        double v = 0;
        REQUIRE(c.at(0).get_string().get(id_view) == simdjson::SUCCESS);
        REQUIRE(c.at(1).get_double().get(v) == simdjson::SUCCESS);
        const std::string id(id_view);
        CHECK(id != item);
        CHECK(distinct.insert(id).second);
        // A warm event's candidates were seen before it, a cold one's not.
        CHECK(seen.count(id) == (warm ? 1u : 0u));
        above += v > score ? 1.0 : v == score ? 0.5 : 0.0;
        // Cold items score from their catalog features: once the categories
        // are learned, a candidate of the bad one (odd ids) below the
        // clicked good item.
        if (!warm && line > 10000 && std::stoi(id.substr(1)) % 2 == 1) {
          ++bad;
          bad_below += v < score;
        }
      }
      CHECK(distinct.size() == 20);
      hits += above < 10 ? 1 : 0;
    }
    seen.insert(item);
  }
  CHECK(ranked == rk.ranked);
  CHECK(cold == rk.cold.count);
  CHECK(hits / double(ranked) == Approx(rk.hr).epsilon(1e-6));
  CHECK(bad > 1000);
  CHECK(double(bad_below) / double(bad) > 0.95);
}

TEST_CASE("Absent tasks and missing truth are left out of the report", "[evaluator]") {
  // Clicks only; one of them without truth.
  std::string stream;
  for (int i = 0; i < 200; ++i) {
    stream += "{\"type\":\"click\",\"user\":" + std::to_string(i % 7) + ",\"item\":\"i" +
              std::to_string(i % 5) + "\",\"label\":" + std::to_string(i % 3 == 0 ? 1 : 0);
    stream += i == 17 ? "}\r\n" : ",\"truth\":{\"p\":0.3}}\n";
  }
  EvalReport report;
  std::istringstream in(stream);
  REQUIRE(RunEval(QuietOptions(), in, &report).ok());
  CHECK(report.events == 200);
  CHECK(report.rejected == 0);
  CHECK_FALSE(report.tasks[0].has_bayes);
  const std::string json = ReportJson(report);
  INFO(json);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  REQUIRE(parser.parse(json).get(doc) == simdjson::SUCCESS);
  CHECK(uint64_t(doc["tasks"]["click"]["count"]) == 200);
  CHECK(doc["tasks"]["click"]["bayes_auc"].error() == simdjson::NO_SUCH_FIELD);
  CHECK(doc["tasks"]["purchase"].error() == simdjson::NO_SUCH_FIELD);
  CHECK(doc["tasks"]["rating"].error() == simdjson::NO_SUCH_FIELD);

  // An empty stream still gives valid JSON with no tasks.
  EvalReport empty;
  std::istringstream nothing("");
  REQUIRE(RunEval(QuietOptions(), nothing, &empty).ok());
  REQUIRE(parser.parse(ReportJson(empty)).get(doc) == simdjson::SUCCESS);
  CHECK(uint64_t(doc["events"]) == 0);
  CHECK(simdjson::dom::object(doc["tasks"]).size() == 0);
}

TEST_CASE("RunEval reports bad options and unwritable files", "[evaluator]") {
  std::istringstream in("");
  EvalReport report;
  EvalOptions options = QuietOptions();
  options.batch = 0;
  CHECK(RunEval(options, in, &report).IsInvalidArgument());
  options = QuietOptions();
  options.learner.dim = 0;
  CHECK(RunEval(options, in, &report).IsInvalidArgument());
  options = QuietOptions();
  options.ranking_k = 10;
  options.candidates = 0;
  CHECK(RunEval(options, in, &report).IsInvalidArgument());
  options = QuietOptions();
  options.predictions_path = "/nonexistent-dir/pred.jsonl";
  CHECK(RunEval(options, in, &report).IsIOError());
}

}  // namespace
}  // namespace recstream::eval

namespace recstream::eval {
namespace {

// Warm start measured the way EVAL.md does: items of a large catalogue are
// mostly new when they first appear; pretrained vectors that carry their
// latent factors (Generator::WriteItemVectors) must make those cold events
// better predicted than without them.
TEST_CASE("Pretrained item vectors improve cold-start predictions", "[evaluator][pretrained]") {
  GeneratorOptions g;
  g.events = 60000;
  g.users = 500;
  g.items = 20000;
  g.seed = 11;
  Generator gen(g);
  std::ostringstream events, vectors;
  REQUIRE(gen.WriteAll(&events).ok());
  REQUIRE(gen.WriteItemVectors(&vectors, 8, 0.1).ok());

  EvalOptions options = QuietOptions();
  options.learner.pretrained_dim = 8;
  EvalReport cold;
  {
    std::istringstream in(events.str());
    REQUIRE(RunEval(options, in, &cold).ok());
  }
  simdjson::dom::parser parser;
  std::istringstream lines(vectors.str());
  std::string line;
  while (std::getline(lines, line)) {
    simdjson::dom::element doc;
    REQUIRE(parser.parse(line).get(doc) == simdjson::SUCCESS);
    std::vector<float> vec;
    for (simdjson::dom::element x : doc["vector"].get_array()) vec.push_back(float(double(x)));
    REQUIRE(vec.size() == 8);
    options.pretrained.emplace_back(std::string(std::string_view(doc["item"])), vec);
  }
  REQUIRE(options.pretrained.size() == 20000);
  EvalReport warm;
  {
    std::istringstream in(events.str());
    REQUIRE(RunEval(options, in, &warm).ok());
  }
  INFO(ReportSummary(cold) << "\nwith vectors:\n" << ReportSummary(warm));
  // Same events either way, most of them cold in this catalogue.
  REQUIRE(cold.cold[0].count == warm.cold[0].count);
  CHECK(cold.cold[0].count > 10000);
  CHECK(warm.pretrained_items == 20000);
  CHECK(warm.cold[0].auc > cold.cold[0].auc + 0.03);
  CHECK(warm.cold[2].mae < cold.cold[2].mae);

  const std::string json = ReportJson(warm);
  simdjson::dom::element doc;
  REQUIRE(parser.parse(json).get(doc) == simdjson::SUCCESS);
  CHECK(uint64_t(doc["cold_start"]["item_events_below"]) == 10);
  CHECK(uint64_t(doc["cold_start"]["click"]["count"]) == warm.cold[0].count);
  CHECK(double(doc["cold_start"]["click"]["auc"]) == Approx(warm.cold[0].auc));

  // A vector of the wrong size is refused before any event is learned.
  options.pretrained.resize(1);
  options.pretrained[0].second.push_back(1.0f);
  std::istringstream in(events.str());
  EvalReport bad;
  CHECK(RunEval(options, in, &bad).IsInvalidArgument());
}

}  // namespace
}  // namespace recstream::eval
