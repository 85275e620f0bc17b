// The dashboard as a person sees it: the real `recstream serve` (embedded
// Kafka, RocksDB in a temporary directory) fed by `recstream gen | produce`,
// and the page at `/` loaded in headless Chromium. Checks, from the DOM the
// browser built, that every chart drew points from the running service and
// that the score and recommendation boxes answered; saves a screenshot.
//
// Skipped (exit code 77, SKIP_RETURN_CODE in CMake) when Chromium is not
// installed: scripts/install-deps.sh installs it.
#define CATCH_CONFIG_RUNNER
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <regex>

#include "serve/test_http_client.h"
#include "tests/test_util.h"

namespace recstream {
namespace {

using namespace std::chrono_literals;
using serve::testing::HttpCall;
using testing::ReadFile;

std::string FindChromium() {
  if (const char* env = std::getenv("RECSTREAM_CHROMIUM"); env != nullptr && *env) {
    return ::access(env, X_OK) == 0 ? env : "";
  }
  for (const char* p :
       {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

// Runs argv with stdout to `out_path` and stderr to `err_path`; kills it
// after `timeout`. Returns the exit code, or 128 + signal.
int Run(const std::vector<std::string>& argv, const std::string& out_path,
        const std::string& err_path, std::chrono::seconds timeout) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return 127;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<std::string> ChromiumArgs(const std::string& chromium, const std::string& profile) {
  return {chromium,
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-quic",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
          "--disable-dev-shm-usage",
          "--hide-scrollbars",
          "--user-data-dir=" + profile,
          "--window-size=1280,1000",
          "--virtual-time-budget=4000"};
}

// The value of attribute `attr` on the element with id `id`, "" if absent.
std::string Attribute(const std::string& dom, const std::string& id, const std::string& attr) {
  size_t at = dom.find("id=\"" + id + "\"");
  if (at == std::string::npos) return "";
  size_t open = dom.rfind('<', at), close = dom.find('>', at);
  std::string tag = dom.substr(open, close - open);
  std::smatch m;
  if (!std::regex_search(tag, m, std::regex(" " + attr + "=\"([^\"]*)\""))) return "";
  return m[1];
}

double Learned(uint16_t port) {
  auto r = HttpCall(port, "GET", "/v1/stats");
  testing::Json j;
  if (r.status != 200 || !j.Parse(r.body)) return -1;
  return j.Number("/tasks/click/learned") + j.Number("/tasks/purchase/learned") +
         j.Number("/tasks/rating/learned");
}

TEST_CASE("The dashboard draws live data from a running service in headless Chromium",
          "[dashboard]") {
  const std::string chromium = FindChromium();
  REQUIRE(!chromium.empty());
  testing::TempDir dir;
  const std::string bin = RECSTREAM_BINARY;
  const std::string log = dir.path() + "/serve.log";

  testing::ChildProcess serve({bin, "serve", "--set", "serve.listen=127.0.0.1:0", "--set",
                               "store.path=" + dir.path() + "/store", "--set",
                               "store.checkpoint_interval_ms=1000", "--set", "learner.threads=1",
                               "--set", "model.memory_limit_mb=64"},
                              log);
  REQUIRE(serve.started());
  std::smatch m;
  std::string text;
  REQUIRE(testing::WaitFor(
      [&] {
        text = ReadFile(log);
        return std::regex_search(text, m, std::regex(R"(serving on http://([0-9.]+):(\d+))"));
      },
      20s));
  const uint16_t port = uint16_t(std::stoi(m[2]));
  REQUIRE(std::regex_search(text, m, std::regex(R"(Kafka bootstrap servers (\S+))")));
  const std::string brokers = m[1];
  INFO("service log: " << log << "\n" << ReadFile(log));

  const std::string events = dir.path() + "/events.jsonl";
  REQUIRE(Run({bin, "gen", "--events", "24000", "--users", "400", "--items", "150", "--seed", "5",
               "--out", events},
              dir.path() + "/gen.out", dir.path() + "/gen.err", 60s) == 0);
  // Once the consumer has its partitions, fed at a steady rate for a few
  // seconds, so that the history shows the learning as it happened.
  REQUIRE(testing::WaitFor([&] { return HttpCall(port, "GET", "/readyz").status == 200; }, 30s));
  testing::ChildProcess produce(
      {bin, "produce", "--brokers", brokers, "--rate", "6000", "--quiet", events},
      dir.path() + "/produce.log");
  REQUIRE(testing::WaitFor([&] { return Learned(port) >= 24000; }, 40s));
  CHECK(produce.Wait() == 0);
  std::this_thread::sleep_for(1500ms);  // one more history sample after the last event

  const std::string url =
      "http://127.0.0.1:" + std::to_string(port) + "/?user=7&item=i3&k=5&refresh_ms=1000";
  // The DOM after the page's scripts ran.
  std::vector<std::string> args = ChromiumArgs(chromium, dir.path() + "/profile-dom");
  args.push_back("--dump-dom");
  args.push_back(url);
  const std::string dom_path = dir.path() + "/dom.html";
  int rc = Run(args, dom_path, dir.path() + "/chromium.log", 90s);
  std::string dom = ReadFile(dom_path);
  INFO("chromium exit " << rc << ", log:\n" << ReadFile(dir.path() + "/chromium.log"));
  REQUIRE(rc == 0);
  REQUIRE(dom.find("id=\"chart-eps\"") != std::string::npos);

  struct Chart {
    const char* card;
    int min_points;
  };
  // At least two samples per series: a line, not a dot.
  for (Chart c : {Chart{"card-eps", 2}, Chart{"card-lag", 2}, Chart{"card-weights", 6},
                  Chart{"card-auc", 4}, Chart{"card-logloss", 4}, Chart{"card-rating", 4}}) {
    INFO(c.card);
    std::string points = Attribute(dom, c.card, "data-points");
    REQUIRE(!points.empty());
    CHECK(std::stoi(points) >= c.min_points);
  }
  // The model learned something: click AUC well above chance, rating RMSE
  // far below the 1-5 range.
  CHECK(std::stod(Attribute(dom, "card-auc", "data-last")) > 0.55);
  double rmse = std::stod(Attribute(dom, "card-rating", "data-last"));
  CHECK(rmse > 0);
  CHECK(rmse < 2.0);
  std::string score = Attribute(dom, "score-result", "data-score");
  REQUIRE(!score.empty());
  CHECK(std::stod(score) > 0);
  CHECK(std::stod(score) < 1);
  CHECK(Attribute(dom, "rec-result", "data-items") == "5");
  std::smatch status;
  REQUIRE(std::regex_search(dom, status, std::regex(R"(id="status"[^>]*>([^<]*)<)")));
  CHECK(status[1] == "ready");
  // The rows figure's note tells the memory limit and its traffic.
  std::smatch rows_note;
  REQUIRE(std::regex_search(dom, rows_note, std::regex(R"(id="kpi-rows-k"[^>]*>([^<]*)<)")));
  INFO("rows note: " << rows_note[1]);
  CHECK(std::regex_search(std::string(rows_note[1]),
                          std::regex(R"(users to the store, \d+ back \(limit 64 MiB\))")));

  // A picture of it, for people (docs/dashboard.png was made this way).
  const char* shot_env = std::getenv("RECSTREAM_DASHBOARD_SCREENSHOT");
  const std::string shot = shot_env != nullptr && *shot_env ? shot_env : DASHBOARD_SCREENSHOT;
  std::remove(shot.c_str());
  args = ChromiumArgs(chromium, dir.path() + "/profile-shot");
  args.push_back("--screenshot=" + shot);
  args.push_back(url);
  rc = Run(args, dir.path() + "/shot.out", dir.path() + "/chromium.log", 90s);
  CHECK(rc == 0);
  std::string png = ReadFile(shot);
  CHECK(png.size() > 20000);
  CHECK(png.rfind("\x89PNG", 0) == 0);

  serve.Signal(SIGTERM);
  CHECK(serve.Wait() == 0);
}

}  // namespace
}  // namespace recstream

int main(int argc, char** argv) {
  if (recstream::FindChromium().empty()) {
    std::printf(
        "dashboard_test: SKIPPED: Chromium not found (apt-get install chromium, or set "
        "RECSTREAM_CHROMIUM); scripts/install-deps.sh installs it\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
