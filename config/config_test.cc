#include "config/config.h"

#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace recstream::config {
namespace {

namespace fs = std::filesystem;
using Env = std::map<std::string, std::string>;
using Flags = std::vector<std::string>;

// A TOML file in a temp dir, removed at the end of the test.
class TempToml {
 public:
  explicit TempToml(const std::string& text) {
    static int counter = 0;
    path_ = (fs::temp_directory_path() / ("recstream_config_test_" + std::to_string(::getpid()) +
                                          "_" + std::to_string(counter++) + ".toml"))
                .string();
    std::ofstream(path_) << text;
  }
  ~TempToml() { fs::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const ConfigSource* FindSource(const std::vector<ConfigSource>& sources, const std::string& key) {
  for (const auto& s : sources) {
    if (s.key == key) return &s;
  }
  return nullptr;
}

TEST_CASE("Load with nothing set gives the documented defaults", "[config]") {
  AppConfig cfg;
  cfg.learner.dim = 7;  // Load must reset *out
  std::vector<ConfigSource> sources;
  Status s = Load("", {}, {}, &cfg, &sources);
  REQUIRE(s.ok());
  CHECK(cfg.kafka.brokers.empty());
  CHECK(cfg.kafka.group_id == "recstream");
  CHECK(cfg.kafka.topics.click == "recstream.click");
  CHECK(cfg.kafka.topics.purchase == "recstream.purchase");
  CHECK(cfg.kafka.topics.rating == "recstream.rating");
  CHECK(cfg.kafka.topics.dlq == "recstream.dlq");
  CHECK(cfg.learner.dim == 32);
  CHECK(cfg.learner.arch == learner::Arch::kSharedBottom);
  CHECK(cfg.learner.weighting == learner::Weighting::kUncertainty);
  CHECK(cfg.learner.threads == 0);
  CHECK(cfg.store.path == "data/recstream");
  CHECK(cfg.store.checkpoint_interval_ms == 5000);
  CHECK(cfg.serve.listen == "127.0.0.1:8080");
  CHECK(cfg.serve.admin_token.empty());
  CHECK(cfg.learner.rating_min == 1.0f);
  CHECK(cfg.learner.rating_max == 5.0f);
  CHECK(cfg.parser.rating_min == 1.0f);
  CHECK(cfg.parser.rating_max == 5.0f);
  CHECK(cfg.blend.click == learner::Blend{}.click);
  CHECK(cfg.log_level == "info");
  CHECK(cfg.kafka.properties.empty());

  REQUIRE(sources.size() > 30);
  for (const auto& src : sources) {
    INFO(src.key);
    CHECK(src.origin == "default");
  }
  const ConfigSource* dim = FindSource(sources, "model.dim");
  REQUIRE(dim != nullptr);
  CHECK(dim->value == "32");
  REQUIRE(FindSource(sources, "model.arch") != nullptr);
  CHECK(FindSource(sources, "model.arch")->value == "shared_bottom");
  // Keys that must exist (the upstream ones of docs/interface.md section 6).
  for (const char* key :
       {"kafka.brokers", "kafka.group_id", "kafka.topics.click", "kafka.topics.purchase",
        "kafka.topics.rating", "kafka.topics.dlq", "model.dim", "model.arch", "model.weighting",
        "learner.threads", "store.path", "store.checkpoint_interval_ms", "serve.listen",
        "serve.admin_token", "rating.min", "rating.max"}) {
    INFO(key);
    CHECK(FindSource(sources, key) != nullptr);
  }
}

TEST_CASE("Load reads every kind of value from the file", "[config]") {
  TempToml file(R"(
[kafka]
brokers = "k1:9092,k2:9092"
group_id = "g1"
max_batch = 100
[kafka.topics]
click = "c"
dlq = "dead"
[model]
dim = 16
arch = "mmoe"
weighting = "fixed"
l2 = 0          # an integer is accepted for a float key
lr_dense = 0.5
[model.fixed_weights]
purchase = 3.5
[learner]
threads = 2
[store]
path = "/tmp/x"
sync = false
[serve]
listen = "[::1]:0"
admin_token = "s3cret"
[serve.blend]
rating = 0.7
[rating]
min = 0.5
max = 10
[log]
level = "debug"
)");
  AppConfig cfg;
  std::vector<ConfigSource> sources;
  Status s = Load(file.path(), {}, {}, &cfg, &sources);
  REQUIRE(s.ToString() == "OK");
  CHECK(cfg.kafka.brokers == "k1:9092,k2:9092");
  CHECK(cfg.kafka.group_id == "g1");
  CHECK(cfg.kafka.max_batch == 100);
  CHECK(cfg.kafka.topics.click == "c");
  CHECK(cfg.kafka.topics.purchase == "recstream.purchase");
  CHECK(cfg.kafka.topics.dlq == "dead");
  CHECK(cfg.learner.dim == 16);
  CHECK(cfg.learner.arch == learner::Arch::kMmoe);
  CHECK(cfg.learner.weighting == learner::Weighting::kFixed);
  CHECK(cfg.learner.l2 == 0.0f);
  CHECK(cfg.learner.lr_dense == 0.5f);
  CHECK(cfg.learner.fixed_weights[1] == 3.5f);
  CHECK(cfg.learner.threads == 2);
  CHECK(cfg.store.path == "/tmp/x");
  CHECK_FALSE(cfg.store.sync);
  CHECK(cfg.serve.listen == "[::1]:0");
  CHECK(cfg.serve.admin_token == "s3cret");
  CHECK(cfg.blend.rating == 0.7f);
  CHECK(cfg.learner.rating_min == 0.5f);
  CHECK(cfg.learner.rating_max == 10.0f);
  CHECK(cfg.parser.rating_min == 0.5f);
  CHECK(cfg.parser.rating_max == 10.0f);
  CHECK(cfg.log_level == "debug");
  CHECK(FindSource(sources, "model.dim")->origin == "file " + file.path());
  CHECK(FindSource(sources, "model.hidden")->origin == "default");
}

TEST_CASE("Precedence is flag over environment over file over default", "[config]") {
  TempToml file("[model]\ndim = 16\nhidden = 8\n[kafka]\nbrokers = \"file:1\"\n");
  const Env env = {{"RECSTREAM_MODEL__DIM", "24"},
                   {"RECSTREAM_KAFKA__BROKERS", "env:1"},
                   {"RECSTREAM_KAFKA__GROUP_ID", "env-group"},
                   {"PATH", "/usr/bin"},         // not ours: ignored
                   {"RECSTREAMX", "whatever"}};  // no RECSTREAM_ prefix: ignored
  AppConfig cfg;
  std::vector<ConfigSource> sources;

  SECTION("environment overrides file") {
    REQUIRE(Load(file.path(), {}, env, &cfg, &sources).ok());
    CHECK(cfg.learner.dim == 24);
    CHECK(cfg.learner.hidden == 8);
    CHECK(cfg.kafka.brokers == "env:1");
    CHECK(cfg.kafka.group_id == "env-group");
    CHECK(FindSource(sources, "model.dim")->origin == "env RECSTREAM_MODEL__DIM");
    CHECK(FindSource(sources, "model.hidden")->origin == "file " + file.path());
    CHECK(FindSource(sources, "kafka.group_id")->origin == "env RECSTREAM_KAFKA__GROUP_ID");
  }
  SECTION("flags override environment, the later flag wins") {
    REQUIRE(Load(file.path(), {"model.dim=40", "kafka.brokers=flag:1", "model.dim=48"}, env, &cfg,
                 &sources)
                .ok());
    CHECK(cfg.learner.dim == 48);
    CHECK(cfg.kafka.brokers == "flag:1");
    CHECK(cfg.kafka.group_id == "env-group");
    CHECK(cfg.learner.hidden == 8);
    CHECK(FindSource(sources, "model.dim")->origin == "flag --set");
    CHECK(FindSource(sources, "model.dim")->value == "48");
  }
  SECTION("serve.io_priority takes a nice value or a SCHED_FIFO priority") {
    REQUIRE(Load(file.path(), {"serve.io_priority=nice:-5"}, env, &cfg).ok());
    CHECK(cfg.serve.io_priority == "nice:-5");
    REQUIRE(Load(file.path(), {"serve.io_priority=fifo:50"}, env, &cfg).ok());
    CHECK(cfg.serve.io_priority == "fifo:50");
  }
  SECTION("a flag may set a string to empty or to a value containing '='") {
    REQUIRE(Load(file.path(), {"kafka.brokers=", "serve.admin_token=a=b"}, env, &cfg).ok());
    CHECK(cfg.kafka.brokers.empty());
    CHECK(cfg.serve.admin_token == "a=b");
  }
}

struct ErrorCase {
  const char* name;
  std::string file;  // TOML text, or empty for no file
  Env env;
  Flags flags;
  std::vector<std::string> message_has;  // substrings of the error message
};

TEST_CASE("Unknown keys and bad values are InvalidArgument naming key, value and rule",
          "[config]") {
  const std::vector<ErrorCase> cases = {
      {"unknown key in file", "[model]\ndimm = 3\n", {}, {}, {"model.dimm", "model.dim", "file"}},
      {"unknown table in file", "[modle]\ndim = 3\n", {}, {}, {"modle", "did you mean \"model\""}},
      {"unknown top-level key in file", "verbose = true\n", {}, {}, {"verbose"}},
      {"value where a table belongs", "kafka = \"x\"\n", {}, {}, {"\"kafka\""}},
      {"unknown key in env",
       "",
       {{"RECSTREAM_MODEL__DIMS", "3"}},
       {},
       {"model.dims", "RECSTREAM_MODEL__DIMS"}},
      {"unknown key in flag",
       "",
       {},
       {"serve.lisen=1:2"},
       {"serve.lisen", "serve.listen", "--set"}},
      {"flag without =", "", {}, {"model.dim"}, {"model.dim", "key=value"}},
      {"model.dim=0", "", {}, {"model.dim=0"}, {"model.dim", "\"0\"", "[1, 1024]"}},
      {"model.dim too big", "", {}, {"model.dim=1025"}, {"model.dim", "1025"}},
      {"model.dim not numeric", "", {}, {"model.dim=abc"}, {"model.dim", "\"abc\"", "integer"}},
      {"int with trailing junk", "", {}, {"learner.threads=4x"}, {"learner.threads", "4x"}},
      {"int that is a float", "", {}, {"learner.chunk=1.5"}, {"learner.chunk", "1.5"}},
      {"int overflow", "", {}, {"model.seed=99999999999999999999999"}, {"model.seed"}},
      {"model.arch=foo",
       "",
       {},
       {"model.arch=foo"},
       {"model.arch", "foo", "shared_bottom", "mmoe"}},
      {"model.weighting=bar",
       "",
       {{"RECSTREAM_MODEL__WEIGHTING", "bar"}},
       {},
       {"model.weighting", "bar", "gradnorm", "RECSTREAM_MODEL__WEIGHTING"}},
      {"rating.min >= rating.max",
       "",
       {},
       {"rating.min=5", "rating.max=5"},
       {"rating.min", "rating.max", "5"}},
      {"rating.min > rating.max in file", "[rating]\nmin = 6\n", {}, {}, {"rating.min", "6"}},
      {"model.admit_after=0", "", {}, {"model.admit_after=0"}, {"model.admit_after", "0"}},
      {"model.expire.user_s=-1", "", {}, {"model.expire.user_s=-1"}, {"model.expire.user_s", "-1"}},
      {"model.expire.item_s=-5", "", {}, {"model.expire.item_s=-5"}, {"model.expire.item_s", "-5"}},
      {"model.expire.feature_s=x", "", {}, {"model.expire.feature_s=x"}, {"model.expire.feature_s"}},
      {"model.expire.user_s not numeric", "[model.expire]\nuser_s = \"a day\"\n", {}, {},
       {"model.expire.user_s"}},
      {"model.admit_after too big", "[model]\nadmit_after = 300\n", {}, {}, {"model.admit_after", "300"}},
      {"model.memory_limit_mb=-5", "", {}, {"model.memory_limit_mb=-5"},
       {"model.memory_limit_mb", "-5"}},
      {"model.memory_limit_mb not numeric", "[model]\nmemory_limit_mb = \"1G\"\n", {}, {},
       {"model.memory_limit_mb"}},
      {"store.checkpoint_interval_ms=-1",
       "",
       {},
       {"store.checkpoint_interval_ms=-1"},
       {"store.checkpoint_interval_ms", "-1", ">= 1"}},
      {"store.checkpoint_interval_ms=0",
       "[store]\ncheckpoint_interval_ms = 0\n",
       {},
       {},
       {"store.checkpoint_interval_ms", "0"}},
      {"serve.listen=nohost",
       "",
       {},
       {"serve.listen=nohost"},
       {"serve.listen", "nohost", "host:port"}},
      {"serve.listen bad port",
       "",
       {},
       {"serve.listen=127.0.0.1:70000"},
       {"serve.listen", "70000"}},
      {"serve.listen no host", "", {}, {"serve.listen=:8080"}, {"serve.listen", ":8080"}},
      {"serve.io_priority unknown policy",
       "",
       {},
       {"serve.io_priority=rr:5"},
       {"serve.io_priority", "rr:5", "fifo:P"}},
      {"serve.io_priority fifo 0",
       "",
       {},
       {"serve.io_priority=fifo:0"},
       {"serve.io_priority", "fifo:0"}},
      {"serve.io_priority nice out of range",
       "",
       {},
       {"serve.io_priority=nice:-21"},
       {"serve.io_priority", "nice:-21", "-20..19"}},
      {"serve.io_priority no number", "", {}, {"serve.io_priority=nice:"}, {"serve.io_priority"}},
      {"bool not true/false", "", {}, {"store.sync=yes"}, {"store.sync", "yes", "true or false"}},
      {"float not a number", "", {}, {"model.lr_dense=fast"}, {"model.lr_dense", "fast"}},
      {"float nan", "", {}, {"model.lr_dense=nan"}, {"model.lr_dense", "nan"}},
      {"float must be > 0", "", {}, {"model.lr_embedding=0"}, {"model.lr_embedding", "> 0"}},
      {"negative blend", "", {}, {"serve.blend.click=-1"}, {"serve.blend.click", "-1"}},
      {"bad log level", "", {}, {"log.level=loud"}, {"log.level", "loud", "warn"}},
      {"empty topic", "", {}, {"kafka.topics.click="}, {"kafka.topics.click"}},
      {"topic with space", "", {}, {"kafka.topics.dlq=a b"}, {"kafka.topics.dlq", "a b"}},
      {"string for int in file",
       "[model]\ndim = \"32\"\n",
       {},
       {},
       {"model.dim", "\"32\"", "a string", ".toml:2:"}},
      {"float for int in file", "[model]\ndim = 3.0\n", {}, {}, {"model.dim", "3"}},
      {"int for bool in file", "[store]\nsync = 1\n", {}, {}, {"store.sync", "true or false"}},
      {"int for string in file", "[store]\npath = 5\n", {}, {}, {"store.path", "5"}},
      {"array in file", "[kafka]\nbrokers = [\"a\", \"b\"]\n", {}, {}, {"kafka.brokers", "array"}},
      {"property with array value",
       "[kafka.properties]\n\"a.b\" = [1]\n",
       {},
       {},
       {"kafka.properties.a.b"}},
      {"malformed TOML", "[model\ndim = 3\n", {}, {}, {"config file", ":1:"}},
  };
  for (const auto& c : cases) {
    SECTION(c.name) {
      std::unique_ptr<TempToml> file;
      if (!c.file.empty()) file = std::make_unique<TempToml>(c.file);
      AppConfig cfg;
      Status s = Load(file ? file->path() : "", c.flags, c.env, &cfg);
      INFO(s.ToString());
      REQUIRE(s.IsInvalidArgument());
      for (const auto& part : c.message_has) {
        INFO(part);
        CHECK(s.message().find(part) != std::string::npos);
      }
    }
  }
}

TEST_CASE("A bad value is reported the same way from env and from a flag", "[config]") {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"model.dim", "0"},         {"model.arch", "foo"},
      {"learner.threads", "300"}, {"store.checkpoint_interval_ms", "-1"},
      {"serve.listen", "nohost"}, {"serve.threads", "two"},
      {"kafka.max_batch", "0"},   {"rating.max", "inf"}};
  for (const auto& [key, value] : bad) {
    std::string var = "RECSTREAM_" + key;
    for (char& ch : var) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    size_t dot;
    while ((dot = var.find('.')) != std::string::npos) var.replace(dot, 1, "__");
    AppConfig cfg;
    Status from_flag = Load("", {key + "=" + value}, {}, &cfg);
    Status from_env = Load("", {}, {{var, value}}, &cfg);
    INFO(from_flag.ToString());
    INFO(from_env.ToString());
    REQUIRE(from_flag.IsInvalidArgument());
    REQUIRE(from_env.IsInvalidArgument());
    for (const Status* s : {&from_flag, &from_env}) {
      CHECK(s->message().find(key) != std::string::npos);
      CHECK(s->message().find("\"" + value + "\"") != std::string::npos);
      CHECK(s->message().find("allowed: ") != std::string::npos);
    }
    CHECK(from_env.message().find(var) != std::string::npos);
  }
}

TEST_CASE("A missing config file is an error naming it", "[config]") {
  AppConfig cfg;
  Status s = Load("/nonexistent/recstream.toml", {}, {}, &cfg);
  REQUIRE(s.IsInvalidArgument());
  CHECK(s.message().find("/nonexistent/recstream.toml") != std::string::npos);
}

TEST_CASE("kafka.properties pass through from every source", "[config]") {
  TempToml file(R"(
[kafka.properties]
"session.timeout.ms" = 45000
security.protocol = "SASL_SSL"
"enable.auto.commit" = false
"sasl.password" = "pw"
)");
  const Env env = {{"RECSTREAM_KAFKA__PROPERTIES__FETCH__MAX__BYTES", "1000"}};
  AppConfig cfg;
  std::vector<ConfigSource> sources;
  REQUIRE(Load(file.path(), {"kafka.properties.client.id=me", "kafka.properties.fetch.max.bytes=9"},
               env, &cfg, &sources)
              .ok());
  const std::map<std::string, std::string> want = {{"session.timeout.ms", "45000"},
                                                   {"security.protocol", "SASL_SSL"},
                                                   {"enable.auto.commit", "false"},
                                                   {"sasl.password", "pw"},
                                                   {"client.id", "me"},
                                                   {"fetch.max.bytes", "9"}};
  CHECK(cfg.kafka.properties == want);
  const ConfigSource* p = FindSource(sources, "kafka.properties.session.timeout.ms");
  REQUIRE(p != nullptr);
  CHECK(p->value == "45000");
  CHECK(p->origin == "file " + file.path());
  CHECK(FindSource(sources, "kafka.properties.fetch.max.bytes")->origin == "flag --set");

  SECTION("env alone sets a property") {
    REQUIRE(Load("", {}, env, &cfg, &sources).ok());
    CHECK(cfg.kafka.properties.at("fetch.max.bytes") == "1000");
    CHECK(FindSource(sources, "kafka.properties.fetch.max.bytes")->origin ==
          "env RECSTREAM_KAFKA__PROPERTIES__FETCH__MAX__BYTES");
  }
  SECTION("an empty property name is an unknown key") {
    CHECK(Load("", {"kafka.properties.=x"}, {}, &cfg).IsInvalidArgument());
  }
}

TEST_CASE("Render shows every key with its value and origin", "[config]") {
  TempToml file("[model]\ndim = 16\n[serve]\nadmin_token = \"topsecret\"\n");
  AppConfig cfg;
  std::vector<ConfigSource> sources;
  REQUIRE(Load(file.path(), {"model.arch=mmoe", "kafka.properties.sasl.password=hunter2"},
               {{"RECSTREAM_STORE__PATH", "/var/lib/rs"}}, &cfg, &sources)
              .ok());
  const std::string text = Render(sources);
  INFO(text);
  CHECK(text.find("model.dim = 16  # file " + file.path() + "\n") != std::string::npos);
  CHECK(text.find("model.arch = \"mmoe\"  # flag --set\n") != std::string::npos);
  CHECK(text.find("store.path = \"/var/lib/rs\"  # env RECSTREAM_STORE__PATH\n") !=
        std::string::npos);
  CHECK(text.find("model.hidden = 32  # default\n") != std::string::npos);
  CHECK(text.find("rating.min = 1.0  # default\n") != std::string::npos);
  CHECK(text.find("store.sync = true  # default\n") != std::string::npos);
  // Secrets are not printed.
  CHECK(text.find("topsecret") == std::string::npos);
  CHECK(text.find("hunter2") == std::string::npos);
  CHECK(text.find("serve.admin_token = \"<redacted>\"") != std::string::npos);
  CHECK(text.find("serve.blend.click = 0.5  # default\n") != std::string::npos);
  // Floats print in their shortest form.
  CHECK(text.find("model.lr_embedding = 0.2  # default\n") != std::string::npos);
  CHECK(text.find("serve.blend.purchase = 0.3  # default\n") != std::string::npos);
}

TEST_CASE("Render output loads back to the same configuration", "[config]") {
  AppConfig cfg;
  std::vector<ConfigSource> sources;
  REQUIRE(Load("",
               {"model.dim=8", "kafka.properties.client.id=x y", "model.l2=0",
                "kafka.brokers=a:1,b:2", "rating.max=10"},
               {}, &cfg, &sources)
              .ok());
  TempToml file(Render(sources));
  AppConfig again;
  std::vector<ConfigSource> again_sources;
  Status s = Load(file.path(), {}, {}, &again, &again_sources);
  REQUIRE(s.ToString() == "OK");
  REQUIRE(again_sources.size() == sources.size());
  for (size_t i = 0; i < sources.size(); ++i) {
    CHECK(again_sources[i].key == sources[i].key);
    CHECK(again_sources[i].value == sources[i].value);
  }
}

TEST_CASE("The example config sets every key to its default", "[config]") {
  AppConfig defaults;
  std::vector<ConfigSource> default_sources;
  REQUIRE(Load("", {}, {}, &defaults, &default_sources).ok());

  AppConfig example;
  std::vector<ConfigSource> example_sources;
  Status s = Load(RECSTREAM_EXAMPLE_CONFIG, {}, {}, &example, &example_sources);
  REQUIRE(s.ToString() == "OK");
  REQUIRE(example_sources.size() == default_sources.size());
  for (size_t i = 0; i < default_sources.size(); ++i) {
    INFO(default_sources[i].key);
    CHECK(example_sources[i].key == default_sources[i].key);
    CHECK(example_sources[i].value == default_sources[i].value);
    // Every key is spelled out in the example.
    CHECK(example_sources[i].origin == std::string("file ") + RECSTREAM_EXAMPLE_CONFIG);
  }
}

TEST_CASE("CurrentEnvironment returns only RECSTREAM_ variables", "[config]") {
  REQUIRE(::setenv("RECSTREAM_CONFIG_TEST_VAR", "v=1", 1) == 0);
  auto env = CurrentEnvironment();
  ::unsetenv("RECSTREAM_CONFIG_TEST_VAR");
  CHECK(env.at("RECSTREAM_CONFIG_TEST_VAR") == "v=1");
  for (const auto& [name, value] : env) CHECK(name.rfind("RECSTREAM_", 0) == 0);
  // And Load rejects it, since it is not a key.
  AppConfig cfg;
  Status s = Load("", {}, env, &cfg);
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("config_test_var") != std::string::npos);
}

}  // namespace
}  // namespace recstream::config
