// The command line as a user meets it: the real `recstream` binary, run with
// files, environment variables and --set flags. Checks exit codes (0 fine,
// 2 for a bad key, value or flag, naming it), `config --print` origins, that
// the example file documents every key the program knows, and when progress
// lines appear.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

extern char** environ;

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs the binary with `args` and exactly the environment `env` (plus PATH).
Result RunRecstream(const std::vector<std::string>& args,
                    const std::map<std::string, std::string>& env = {}) {
  static int n = 0;
  std::string base = (std::filesystem::temp_directory_path() /
                      ("recstream-cli-" + std::to_string(::getpid()) + "-" + std::to_string(n++)))
                         .string();
  std::vector<std::string> argv_s = {RECSTREAM_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s = {"PATH=/usr/bin:/bin"};
  for (const auto& [k, v] : env) env_s.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, (base + ".out").c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, (base + ".err").c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  Result r;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data()) == 0) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  posix_spawn_file_actions_destroy(&actions);
  r.out = Slurp(base + ".out");
  r.err = Slurp(base + ".err");
  std::filesystem::remove(base + ".out");
  std::filesystem::remove(base + ".err");
  return r;
}

// `key = value  # origin` lines of `config --print`.
std::map<std::string, std::pair<std::string, std::string>> ParsePrint(const std::string& text) {
  std::map<std::string, std::pair<std::string, std::string>> out;
  std::regex line(R"(^(\S+) = (.*?)\s+# (.*)$)");
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l)) {
    std::smatch m;
    if (std::regex_match(l, m, line)) out[m[1]] = {m[2], m[3]};
  }
  return out;
}

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    path_ = (std::filesystem::temp_directory_path() /
             ("recstream-cli-" + std::to_string(::getpid()) + "-" + std::to_string(n_++) + ".toml"))
                .string();
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  static inline int n_ = 0;
  std::string path_;
};

TEST_CASE("config --print shows each value and where it came from", "[cli]") {
  TempFile file("[model]\ndim = 48\narch = \"mmoe\"\n[serve]\nlisten = \"0.0.0.0:9000\"\n");
  Result r = RunRecstream({"config", "--print", "--config", file.path(), "--set", "model.arch=mmoe",
                           "--set", "learner.threads=3"},
                          {{"RECSTREAM_MODEL__DIM", "64"}, {"RECSTREAM_STORE__PATH", "/tmp/x"}});
  INFO(r.err);
  REQUIRE(r.code == 0);
  auto keys = ParsePrint(r.out);
  REQUIRE(keys.size() >= 40);
  // Precedence: flag > environment > file > default.
  CHECK(keys["model.dim"] ==
        std::make_pair(std::string("64"), std::string("env RECSTREAM_MODEL__DIM")));
  CHECK(keys["model.arch"].second == "flag --set");
  CHECK(keys["learner.threads"] == std::make_pair(std::string("3"), std::string("flag --set")));
  CHECK(keys["serve.listen"].first == "\"0.0.0.0:9000\"");
  CHECK(keys["serve.listen"].second == "file " + file.path());
  CHECK(keys["store.path"].second == "env RECSTREAM_STORE__PATH");
  CHECK(keys["model.weighting"] ==
        std::make_pair(std::string("\"uncertainty\""), std::string("default")));

  // Without --print: a one-line verdict.
  r = RunRecstream({"config"});
  CHECK(r.code == 0);
  CHECK(r.out == "configuration is valid\n");
}

TEST_CASE("Every key the program knows is documented in the example file", "[cli]") {
  Result defaults = RunRecstream({"config", "--print"});
  REQUIRE(defaults.code == 0);
  auto keys = ParsePrint(defaults.out);
  REQUIRE(!keys.empty());
  // The example sets every key to its default, so loading it changes no value.
  Result example = RunRecstream({"config", "--print", "--config", RECSTREAM_EXAMPLE_CONFIG});
  INFO(example.err);
  REQUIRE(example.code == 0);
  auto from_file = ParsePrint(example.out);
  for (const auto& [key, value_origin] : keys) {
    INFO(key);
    REQUIRE(from_file.count(key) == 1);
    CHECK(from_file[key].first == value_origin.first);
    CHECK(from_file[key].second.rfind("file ", 0) == 0);
  }
}

TEST_CASE("Bad keys and values stop every subcommand with exit code 2, naming them", "[cli]") {
  struct Case {
    std::vector<std::string> args;
    std::map<std::string, std::string> env;
    std::string file;                    // TOML text; used as --config when non-empty
    std::vector<std::string> must_name;  // substrings of stderr
  };
  const std::vector<Case> cases = {
      {{"config", "--set", "model.dimm=3"}, {}, "", {"model.dimm"}},
      {{"config"}, {{"RECSTREAM_MODEL__DIMM", "3"}}, "", {"RECSTREAM_MODEL__DIMM"}},
      {{"config"}, {}, "[model]\ndimm = 3\n", {"model.dimm"}},
      {{"config", "--set", "model.arch=transformer"},
       {},
       "",
       {"model.arch", "shared_bottom", "mmoe"}},
      {{"config", "--set", "model.weighting=magic"},
       {},
       "",
       {"model.weighting", "fixed", "uncertainty", "gradnorm", "dwa"}},
      {{"config", "--set", "model.dim=0"}, {}, "", {"model.dim"}},
      {{"config", "--set", "model.dim=abc"}, {}, "", {"model.dim", "abc"}},
      {{"config"}, {{"RECSTREAM_LEARNER__THREADS", "-1"}}, "", {"learner.threads"}},
      {{"config", "--set", "store.sync=perhaps"}, {}, "", {"store.sync"}},
      {{"config", "--set", "rating.min=5", "--set", "rating.max=1"}, {}, "", {"rating.min"}},
      {{"config", "--set", "model.dim"}, {}, "", {"model.dim"}},
      {{"config"}, {}, "[model\ndim = 3\n", {}},
      {{"config", "--config", "/nonexistent/recstream.toml"},
       {},
       "",
       {"/nonexistent/recstream.toml"}},
      {{"serve", "--set", "serve.listne=1"}, {}, "", {"serve.listne"}},
      {{"eval", "--events", "/dev/null", "--set", "model.arch=x"}, {}, "", {"model.arch"}},
      {{"produce", "--brokers", "x:1", "--set", "kafka.topics.clik=a", "-"},
       {},
       "",
       {"kafka.topics.clik"}},
      {{"serve", "--bogus-flag"}, {}, "", {"--bogus-flag"}},
      {{"gen"}, {}, "", {"--events"}},
      {{"nonsense"}, {}, "", {"nonsense"}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = c.args;
    std::unique_ptr<TempFile> file;
    if (!c.file.empty()) {
      file = std::make_unique<TempFile>(c.file);
      args.push_back("--config");
      args.push_back(file->path());
    }
    std::string shown;
    for (const auto& a : args) shown += a + " ";
    for (const auto& [k, v] : c.env) shown += k + "=" + v + " ";
    Result r = RunRecstream(args, c.env);
    INFO("recstream " << shown << "\nstderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(!r.err.empty());
    for (const std::string& s : c.must_name) CHECK(r.err.find(s) != std::string::npos);
  }
}

}  // namespace

// Progress lines (gen here; produce and eval share the behaviour): drawn on
// stderr only when it is a terminal, never with --quiet. `script` gives the
// command a pseudo-terminal.
TEST_CASE("Long commands show a progress line on a terminal only", "[cli]") {
  if (::access("/usr/bin/script", X_OK) != 0) {
    WARN("script(1) not installed: progress on a terminal not checked");
    return;
  }
  const std::string gen = std::string(RECSTREAM_BINARY) + " gen --events 1500000 --out /dev/null";
  auto under_pty = [](const std::string& command) {
    std::string out = (std::filesystem::temp_directory_path() /
                       ("recstream-cli-pty-" + std::to_string(::getpid())))
                          .string();
    std::string shell = "/usr/bin/script -qec '" + command + "' /dev/null > " + out + " 2>&1";
    int rc = std::system(shell.c_str());
    std::string text = Slurp(out);
    std::filesystem::remove(out);
    return std::make_pair(rc, text);
  };
  auto [rc, text] = under_pty(gen);
  INFO(text);
  CHECK(rc == 0);
  // The first line is drawn at once; rate, percentage and time left follow
  // once a second.
  CHECK(std::regex_search(text, std::regex(R"(\r\d+ events, \d+/s)")));
  auto [quiet_rc, quiet_text] = under_pty(gen + " --quiet");
  CHECK(quiet_rc == 0);
  CHECK(quiet_text.find("events,") == std::string::npos);
  // Not a terminal: nothing on stderr.
  Result plain = RunRecstream({"gen", "--events", "1500000", "--out", "/dev/null"});
  CHECK(plain.code == 0);
  CHECK(plain.err.empty());
}
