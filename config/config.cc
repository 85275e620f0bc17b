#include "config/config.h"

#include <fmt/format.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

extern char** environ;

namespace recstream::config {
namespace {

constexpr std::string_view kEnvPrefix = "RECSTREAM_";
constexpr std::string_view kPropertiesPrefix = "kafka.properties.";
constexpr std::string_view kFlagOrigin = "flag --set";

enum class Type { kInt, kFloat, kBool, kString, kEnum };

// A value after conversion to its key's type: int64_t for kInt, double for
// kFloat, bool for kBool, std::string for kString and kEnum.
using Value = std::variant<int64_t, double, bool, std::string>;

// One configuration key. Each key is declared exactly once, in KeyTable().
struct Key {
  std::string name;
  Type type;
  // What is allowed, for error messages ("an integer in [1, 1024]").
  std::string allowed;
  // Stores a value of the key's type into the config. Returns "" on
  // success, otherwise why the value is not allowed.
  std::function<std::string(const Value&, AppConfig*)> set;
  // The effective value, unquoted, for ConfigSource::value.
  std::function<std::string(const AppConfig&)> get;
  bool secret = false;
};

// Field accessors are generic lambdas `[](auto& c) -> auto& { return c.x; }`
// so one accessor serves both the setter (AppConfig&) and the getter
// (const AppConfig&).
template <class F>
using FieldType = std::remove_cvref_t<decltype(std::declval<F>()(std::declval<AppConfig&>()))>;

// Shortest text that reads back to the same value of v's own type (so a
// float 0.05f prints as 0.05, not 0.05000000074505806).
template <class T>
std::string FormatFloat(T v) {
  return fmt::format("{}", v);
}

template <class F>
Key IntKey(std::string name, F field, int64_t lo, int64_t hi) {
  using T = FieldType<F>;
  Key k;
  k.name = std::move(name);
  k.type = Type::kInt;
  k.allowed = hi == std::numeric_limits<int64_t>::max()
                  ? fmt::format("an integer >= {}", lo)
                  : fmt::format("an integer in [{}, {}]", lo, hi);
  k.set = [field, lo, hi](const Value& v, AppConfig* c) -> std::string {
    int64_t x = std::get<int64_t>(v);
    if (x < lo || x > hi) return "out of range";
    field(*c) = static_cast<T>(x);
    return "";
  };
  k.get = [field](const AppConfig& c) { return std::to_string(field(c)); };
  return k;
}

// Bounds of a float key. lo_open: the lower bound itself is not allowed.
struct FloatRange {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
};
constexpr FloatRange kAnyFloat{};
constexpr FloatRange kPositive{0.0, std::numeric_limits<double>::infinity(), true};
constexpr FloatRange kNonNegative{0.0, std::numeric_limits<double>::infinity(), false};

template <class F>
Key FloatKey(std::string name, F field, FloatRange r) {
  using T = FieldType<F>;
  Key k;
  k.name = std::move(name);
  k.type = Type::kFloat;
  if (std::isinf(r.lo) && std::isinf(r.hi)) {
    k.allowed = "a finite number";
  } else if (std::isinf(r.hi)) {
    k.allowed = fmt::format("a number {} {}", r.lo_open ? ">" : ">=", FormatFloat(r.lo));
  } else {
    k.allowed = fmt::format("a number in {}{}, {}]", r.lo_open ? "(" : "[", FormatFloat(r.lo),
                            FormatFloat(r.hi));
  }
  k.set = [field, r](const Value& v, AppConfig* c) -> std::string {
    double x = std::get<double>(v);
    if (!std::isfinite(x)) return "not a finite number";
    if (x < r.lo || (r.lo_open && x == r.lo) || x > r.hi) return "out of range";
    // The stored type is float: reject values that overflow it.
    if (std::is_same_v<T, float> && !std::isfinite(static_cast<float>(x))) return "out of range";
    field(*c) = static_cast<T>(x);
    return "";
  };
  k.get = [field](const AppConfig& c) { return FormatFloat(field(c)); };
  return k;
}

template <class F>
Key BoolKey(std::string name, F field) {
  Key k;
  k.name = std::move(name);
  k.type = Type::kBool;
  k.allowed = "true or false";
  k.set = [field](const Value& v, AppConfig* c) -> std::string {
    field(*c) = std::get<bool>(v);
    return "";
  };
  k.get = [field](const AppConfig& c) { return std::string(field(c) ? "true" : "false"); };
  return k;
}

// check: returns "" when the string is acceptable, else why not.
template <class F>
Key StringKey(std::string name, F field, std::string allowed,
              std::function<std::string(std::string_view)> check = nullptr) {
  Key k;
  k.name = std::move(name);
  k.type = Type::kString;
  k.allowed = std::move(allowed);
  k.set = [field, check](const Value& v, AppConfig* c) -> std::string {
    const std::string& s = std::get<std::string>(v);
    if (check) {
      std::string why = check(s);
      if (!why.empty()) return why;
    }
    field(*c) = s;
    return "";
  };
  k.get = [field](const AppConfig& c) { return std::string(field(c)); };
  return k;
}

template <class F>
Key EnumKey(std::string name, F field, std::vector<std::pair<std::string, FieldType<F>>> choices) {
  Key k;
  k.name = std::move(name);
  k.type = Type::kEnum;
  k.allowed = "one of";
  for (size_t i = 0; i < choices.size(); ++i) {
    k.allowed += (i == 0 ? " " : ", ") + choices[i].first;
  }
  k.set = [field, choices](const Value& v, AppConfig* c) -> std::string {
    const std::string& s = std::get<std::string>(v);
    for (const auto& [label, value] : choices) {
      if (label == s) {
        field(*c) = value;
        return "";
      }
    }
    return "not a known choice";
  };
  k.get = [field, choices](const AppConfig& c) -> std::string {
    for (const auto& [label, value] : choices) {
      if (value == field(c)) return label;
    }
    return "?";
  };
  return k;
}

std::string CheckNonEmpty(std::string_view s) { return s.empty() ? "empty" : ""; }

// Kafka topic names: 1-249 characters of [a-zA-Z0-9._-].
std::string CheckTopic(std::string_view s) {
  if (s.empty()) return "empty";
  if (s.size() > 249) return "longer than 249 characters";
  for (char ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-') {
      return fmt::format("contains '{}'", ch);
    }
  }
  return "";
}

// host:port, host a name, an IPv4 address or a bracketed IPv6 address.
std::string CheckListen(std::string_view s) {
  size_t colon = s.rfind(':');
  if (colon == std::string_view::npos) return "no \":port\"";
  std::string_view host = s.substr(0, colon);
  std::string_view port = s.substr(colon + 1);
  if (host.empty()) return "no host";
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return "unterminated IPv6 address";
    for (char ch : host.substr(1, host.size() - 2)) {
      if (!std::isxdigit(static_cast<unsigned char>(ch)) && ch != ':' && ch != '.') {
        return "bad IPv6 address";
      }
    }
  } else {
    for (char ch : host) {
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '-') {
        return fmt::format("host contains '{}'", ch);
      }
    }
  }
  if (port.empty()) return "no port";
  int p = -1;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p < 0 || p > 65535) {
    return "port is not an integer in [0, 65535]";
  }
  return "";
}

// Empty, or "http://host:port" (a trailing path is allowed).
std::string CheckHttpUrl(std::string_view v) {
  if (v.empty()) return "";
  if (v.rfind("http://", 0) != 0) return "does not start with http://";
  std::string hostport(v.substr(7));
  hostport = hostport.substr(0, hostport.find('/'));
  if (hostport.find(':') == std::string::npos) return "no port";
  return CheckListen(hostport);
}

// Every key, in the order `config --print` shows them.
const std::vector<Key>& KeyTable() {
  using learner::Arch;
  using learner::Feedback;
  using learner::Optimizer;
  using learner::RatingLoss;
  using learner::Weighting;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  static const std::vector<Key> table = [] {
    std::vector<Key> t;
    // kafka
    t.push_back(StringKey(
        "kafka.brokers", [](auto& c) -> auto& { return c.kafka.brokers; },
        "a comma-separated host:port list, or empty for the embedded cluster"));
    t.push_back(StringKey(
        "kafka.group_id", [](auto& c) -> auto& { return c.kafka.group_id; }, "a non-empty string",
        CheckNonEmpty));
    const std::string topic_allowed = "1-249 characters of [a-zA-Z0-9._-]";
    t.push_back(StringKey(
        "kafka.topics.click", [](auto& c) -> auto& { return c.kafka.topics.click; }, topic_allowed,
        CheckTopic));
    t.push_back(StringKey(
        "kafka.topics.purchase", [](auto& c) -> auto& { return c.kafka.topics.purchase; },
        topic_allowed, CheckTopic));
    t.push_back(StringKey(
        "kafka.topics.rating", [](auto& c) -> auto& { return c.kafka.topics.rating; },
        topic_allowed, CheckTopic));
    t.push_back(StringKey(
        "kafka.topics.dlq", [](auto& c) -> auto& { return c.kafka.topics.dlq; }, topic_allowed,
        CheckTopic));
    t.push_back(StringKey(
        "kafka.topics.model", [](auto& c) -> auto& { return c.kafka.topics.model; },
        topic_allowed, CheckTopic));
    t.push_back(StringKey(
        "kafka.topics.updates", [](auto& c) -> auto& { return c.kafka.topics.updates; },
        topic_allowed, CheckTopic));
    t.push_back(IntKey(
        "kafka.embedded_partitions", [](auto& c) -> auto& { return c.kafka.embedded_partitions; },
        1, 1024));
    t.push_back(IntKey(
        "kafka.max_batch", [](auto& c) -> auto& { return c.kafka.max_batch; }, 1, 1000000));
    t.push_back(IntKey(
        "kafka.poll_timeout_ms", [](auto& c) -> auto& { return c.kafka.poll_timeout_ms; }, 0,
        60000));
    t.push_back(IntKey(
        "kafka.partition_refresh_ms",
        [](auto& c) -> auto& { return c.kafka.partition_refresh_ms; }, 100, 3600000));
    // trainer
    t.push_back(IntKey(
        "trainer.count", [](auto& c) -> auto& { return c.kafka.ownership.count; }, 1, 4096));
    t.push_back(IntKey(
        "trainer.index", [](auto& c) -> auto& { return c.kafka.ownership.index; }, 0, 4095));
    t.push_back(IntKey(
        "trainer.exchange_interval_ms",
        [](auto& c) -> auto& { return c.replicate.exchange_interval_ms; }, 0, 60000));
    // model
    t.push_back(IntKey(
        "model.dim", [](auto& c) -> auto& { return c.learner.dim; }, 1, 1024));
    t.push_back(EnumKey("model.arch", [](auto& c) -> auto& { return c.learner.arch; },
                        {{"shared_bottom", Arch::kSharedBottom}, {"mmoe", Arch::kMmoe}}));
    t.push_back(EnumKey("model.weighting", [](auto& c) -> auto& { return c.learner.weighting; },
                        {{"fixed", Weighting::kFixed},
                         {"uncertainty", Weighting::kUncertainty},
                         {"gradnorm", Weighting::kGradNorm},
                         {"dwa", Weighting::kDwa}}));
    t.push_back(IntKey(
        "model.hidden", [](auto& c) -> auto& { return c.learner.hidden; }, 1, 4096));
    t.push_back(IntKey(
        "model.experts", [](auto& c) -> auto& { return c.learner.experts; }, 1, 64));
    t.push_back(FloatKey(
        "model.fixed_weights.click", [](auto& c) -> auto& { return c.learner.fixed_weights[0]; },
        kNonNegative));
    t.push_back(FloatKey(
        "model.fixed_weights.purchase", [](auto& c) -> auto& { return c.learner.fixed_weights[1]; },
        kNonNegative));
    t.push_back(FloatKey(
        "model.fixed_weights.rating", [](auto& c) -> auto& { return c.learner.fixed_weights[2]; },
        kNonNegative));
    t.push_back(FloatKey(
        "model.lr_embedding", [](auto& c) -> auto& { return c.learner.lr_embedding; }, kPositive));
    t.push_back(FloatKey(
        "model.lr_dense", [](auto& c) -> auto& { return c.learner.lr_dense; }, kPositive));
    t.push_back(FloatKey(
        "model.lr_weighting", [](auto& c) -> auto& { return c.learner.lr_weighting; },
        kNonNegative));
    t.push_back(FloatKey(
        "model.l2", [](auto& c) -> auto& { return c.learner.l2; }, kNonNegative));
    t.push_back(FloatKey(
        "model.l1", [](auto& c) -> auto& { return c.learner.l1; }, kNonNegative));
    t.push_back(FloatKey(
        "model.init_scale", [](auto& c) -> auto& { return c.learner.init_scale; }, kPositive));
    t.push_back(FloatKey(
        "model.grad_clip", [](auto& c) -> auto& { return c.learner.grad_clip; }, kPositive));
    t.push_back(IntKey(
        "model.seed", [](auto& c) -> auto& { return c.learner.seed; }, 0, kMax));
    t.push_back(EnumKey("model.embedding_optimizer",
                        [](auto& c) -> auto& { return c.learner.embedding_optimizer; },
                        {{"adagrad", Optimizer::kAdagrad},
                         {"sgd", Optimizer::kSgd},
                         {"ftrl", Optimizer::kFtrl}}));
    t.push_back(EnumKey("model.dense_optimizer",
                        [](auto& c) -> auto& { return c.learner.dense_optimizer; },
                        {{"adagrad", Optimizer::kAdagrad},
                         {"adam", Optimizer::kAdam},
                         {"adamw", Optimizer::kAdamW},
                         {"sgd", Optimizer::kSgd}}));
    t.push_back(FloatKey(
        "model.lr_bias", [](auto& c) -> auto& { return c.learner.lr_bias; }, kNonNegative));
    t.push_back(FloatKey(
        "model.adagrad_init", [](auto& c) -> auto& { return c.learner.adagrad_init; },
        kNonNegative));
    // [0, 1): learner::ValidateOptions refuses 1 itself.
    t.push_back(FloatKey(
        "model.adam_beta1", [](auto& c) -> auto& { return c.learner.adam_beta1; },
        FloatRange{0.0, 1.0, false}));
    t.push_back(FloatKey(
        "model.adam_beta2", [](auto& c) -> auto& { return c.learner.adam_beta2; },
        FloatRange{0.0, 1.0, false}));
    t.push_back(FloatKey(
        "model.weight_decay", [](auto& c) -> auto& { return c.learner.weight_decay; },
        kNonNegative));
    t.push_back(EnumKey("model.rating_loss", [](auto& c) -> auto& { return c.learner.rating_loss; },
                        {{"squared", RatingLoss::kSquared}, {"huber", RatingLoss::kHuber}}));
    t.push_back(FloatKey(
        "model.huber_delta", [](auto& c) -> auto& { return c.learner.huber_delta; }, kPositive));
    t.push_back(BoolKey(
        "model.esmm", [](auto& c) -> auto& { return c.learner.esmm; }));
    t.push_back(EnumKey("model.feedback", [](auto& c) -> auto& { return c.learner.feedback; },
                        {{"auto", Feedback::kAuto},
                         {"explicit", Feedback::kExplicit},
                         {"implicit", Feedback::kImplicit}}));
    t.push_back(IntKey(
        "model.implicit_negatives",
        [](auto& c) -> auto& { return c.learner.implicit_negatives; }, 1, 1000));
    t.push_back(IntKey(
        "model.history", [](auto& c) -> auto& { return c.learner.history; }, 0, 1000));
    t.push_back(IntKey(
        "model.admit_after", [](auto& c) -> auto& { return c.learner.admit_after; }, 1, 255));
    t.push_back(IntKey(
        "model.expire.user_s", [](auto& c) -> auto& { return c.learner.expire_user_s; }, 0,
        std::numeric_limits<int64_t>::max()));
    t.push_back(IntKey(
        "model.expire.item_s", [](auto& c) -> auto& { return c.learner.expire_item_s; }, 0,
        std::numeric_limits<int64_t>::max()));
    t.push_back(IntKey(
        "model.expire.feature_s", [](auto& c) -> auto& { return c.learner.expire_feature_s; }, 0,
        std::numeric_limits<int64_t>::max()));
    t.push_back(IntKey(
        "model.memory_limit_mb", [](auto& c) -> auto& { return c.learner.memory_limit_mb; }, 0,
        int64_t(1) << 30));
    t.push_back(IntKey(
        "model.negatives", [](auto& c) -> auto& { return c.learner.negatives; }, 0, 100));
    t.push_back(IntKey(
        "model.negative_window", [](auto& c) -> auto& { return c.learner.negative_window; }, 1,
        1 << 24));
    t.push_back(IntKey(
        "model.replay", [](auto& c) -> auto& { return c.learner.replay; }, 0, 100));
    t.push_back(IntKey(
        "model.replay_window", [](auto& c) -> auto& { return c.learner.replay_window; }, 1,
        1 << 24));
    t.push_back(IntKey(
        "model.pretrained_dim", [](auto& c) -> auto& { return c.learner.pretrained_dim; }, 0,
        8192));
    t.push_back(BoolKey(
        "model.pretrained_trainable",
        [](auto& c) -> auto& { return c.learner.pretrained_trainable; }));
    // learner
    t.push_back(IntKey(
        "learner.threads", [](auto& c) -> auto& { return c.learner.threads; }, 0, 256));
    t.push_back(IntKey(
        "learner.chunk", [](auto& c) -> auto& { return c.learner.chunk; }, 1, 1 << 20));
    t.push_back(IntKey(
        "learner.train_nice", [](auto& c) -> auto& { return c.learner.train_nice; }, 0, 19));
    // metrics; (0, 1): learner::ValidateOptions refuses 1 itself.
    t.push_back(FloatKey(
        "metrics.threshold", [](auto& c) -> auto& { return c.learner.decision_threshold; },
        FloatRange{0.0, 1.0, true}));
    // store
    t.push_back(StringKey(
        "store.path", [](auto& c) -> auto& { return c.store.path; }, "a non-empty path",
        CheckNonEmpty));
    t.push_back(IntKey(
        "store.checkpoint_interval_ms",
        [](auto& c) -> auto& { return c.store.checkpoint_interval_ms; }, 1, kMax));
    t.push_back(BoolKey(
        "store.sync", [](auto& c) -> auto& { return c.store.sync; }));
    // replication
    t.push_back(IntKey(
        "replicate.interval_ms", [](auto& c) -> auto& { return c.replicate.interval_ms; }, 0,
        600000));
    t.push_back(IntKey(
        "replicate.timeout_ms", [](auto& c) -> auto& { return c.replicate.timeout_ms; }, 100,
        600000));
    t.push_back(StringKey(
        "replicate.advertise_url", [](auto& c) -> auto& { return c.replicate.advertise_url; },
        "empty, or http://host:port", CheckHttpUrl));
    t.push_back(StringKey(
        "replica.snapshot_url", [](auto& c) -> auto& { return c.replicate.snapshot_url; },
        "empty, or http://host:port", CheckHttpUrl));
    // serve
    t.push_back(StringKey(
        "serve.listen", [](auto& c) -> auto& { return c.serve.listen; },
        "host:port (e.g. 127.0.0.1:8080 or [::1]:8080; port 0..65535, 0 picks a free port)",
        CheckListen));
    Key token = StringKey(
        "serve.admin_token", [](auto& c) -> auto& { return c.serve.admin_token; },
        "a string (empty disables the admin endpoints)");
    token.secret = true;
    t.push_back(std::move(token));
    t.push_back(IntKey(
        "serve.threads", [](auto& c) -> auto& { return c.serve.threads; }, 1, 256));
    t.push_back(StringKey(
        "serve.io_priority", [](auto& c) -> auto& { return c.serve.io_priority; },
        "\"\" (inherit), nice:N (-20..19) or fifo:P (SCHED_FIFO priority 1..99)",
        [](std::string_view s) -> std::string {
          serve::IoPriority p;
          return serve::ParseIoPriority(s, &p) ? "" : "not one of these forms";
        }));
    t.push_back(IntKey(
        "serve.io_slice_us", [](auto& c) -> auto& { return c.serve.io_slice_us; }, 0, 100000));
    t.push_back(IntKey(
        "serve.background_slice_us", [](auto& c) -> auto& { return c.background_slice_us; }, 0,
        100000));
    t.push_back(IntKey(
        "serve.max_body_bytes", [](auto& c) -> auto& { return c.serve.max_body_bytes; }, 1,
        int64_t{1} << 32));
    t.push_back(IntKey(
        "serve.max_header_bytes", [](auto& c) -> auto& { return c.serve.max_header_bytes; }, 1024,
        int64_t{1} << 24));
    t.push_back(IntKey(
        "serve.request_timeout_ms", [](auto& c) -> auto& { return c.serve.request_timeout_ms; }, 1,
        3600000));
    t.push_back(IntKey(
        "serve.max_connections", [](auto& c) -> auto& { return c.serve.max_connections; }, 1,
        1000000));
    t.push_back(IntKey(
        "serve.max_batch_items", [](auto& c) -> auto& { return c.serve.max_batch_items; }, 1,
        1000000));
    t.push_back(IntKey(
        "serve.max_k", [](auto& c) -> auto& { return c.serve.max_k; }, 1, 1000000));
    t.push_back(FloatKey(
        "serve.blend.click", [](auto& c) -> auto& { return c.blend.click; }, kNonNegative));
    t.push_back(FloatKey(
        "serve.blend.purchase", [](auto& c) -> auto& { return c.blend.purchase; }, kNonNegative));
    t.push_back(FloatKey(
        "serve.blend.rating", [](auto& c) -> auto& { return c.blend.rating; }, kNonNegative));
    // rating (copied into the parser's options at the end of Load)
    t.push_back(FloatKey(
        "rating.min", [](auto& c) -> auto& { return c.learner.rating_min; }, kAnyFloat));
    t.push_back(FloatKey(
        "rating.max", [](auto& c) -> auto& { return c.learner.rating_max; }, kAnyFloat));
    // log
    t.push_back(EnumKey("log.level", [](auto& c) -> auto& { return c.log_level; },
                        {{"trace", "trace"},
                         {"debug", "debug"},
                         {"info", "info"},
                         {"warn", "warn"},
                         {"error", "error"}}));
    return t;
  }();
  return table;
}

const Key* FindKey(std::string_view name) {
  for (const Key& k : KeyTable()) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

bool IsPropertyKey(std::string_view name) {
  return name.size() > kPropertiesPrefix.size() && name.starts_with(kPropertiesPrefix);
}

// True when `name` is a table on the path to some key ("kafka",
// "kafka.topics", "kafka.properties").
bool IsTablePrefix(std::string_view name) {
  if (name == "kafka.properties") return true;
  for (const Key& k : KeyTable()) {
    if (k.name.size() > name.size() && k.name.starts_with(name) && k.name[name.size()] == '.') {
      return true;
    }
  }
  return false;
}

// Edit distance counting a swap of neighbours as one edit (optimal string
// alignment), so that "modle" is one typo away from "model".
size_t EditDistance(std::string_view a, std::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      d[i][j] = std::min(
          {d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

Status UnknownKey(const std::string& where, std::string_view name) {
  std::string msg = fmt::format("{}: unknown config key \"{}\"", where, name);
  // Suggest the closest key or table ("modle" -> "model").
  std::string best;
  size_t best_d = std::min<size_t>(3, std::max<size_t>(1, name.size() / 3)) + 1;
  auto consider = [&](std::string_view candidate) {
    size_t d = EditDistance(name, candidate);
    if (d < best_d) {
      best_d = d;
      best = candidate;
    }
  };
  for (const Key& k : KeyTable()) {
    consider(k.name);
    for (size_t dot = k.name.find('.'); dot != std::string::npos; dot = k.name.find('.', dot + 1)) {
      consider(std::string_view(k.name).substr(0, dot));
    }
  }
  if (!best.empty()) msg += fmt::format(" (did you mean \"{}\"?)", best);
  msg += "; see config/recstream.example.toml for every key";
  return Status::InvalidArgument(std::move(msg));
}

Status BadValue(const std::string& where, const Key& key, std::string_view value,
                std::string_view why) {
  return Status::InvalidArgument(fmt::format("{}: bad value {} for {} ({}); allowed: {}", where,
                                             value, key.name, why, key.allowed));
}

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
          out += fmt::format("\\u{:04X}", static_cast<unsigned char>(ch));
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Everything Load accumulates: the config and where each key came from.
struct LoadState {
  AppConfig* config;
  std::map<std::string, std::string> origins;
};

Status Store(const Key& key, const Value& value, std::string_view shown, const std::string& where,
             const std::string& origin, LoadState* state) {
  std::string why = key.set(value, state->config);
  if (!why.empty()) return BadValue(where, key, shown, why);
  state->origins[key.name] = origin;
  return Status::OK();
}

void StoreProperty(const std::string& name, std::string value, const std::string& origin,
                   LoadState* state) {
  std::string property = name.substr(kPropertiesPrefix.size());
  state->config->kafka.properties[property] = std::move(value);
  state->origins[name] = origin;
}

// A value from the environment or a flag: a string parsed by the key's type.
Status ApplyString(const std::string& name, const std::string& text, const std::string& origin,
                   LoadState* state) {
  if (IsPropertyKey(name)) {
    StoreProperty(name, text, origin, state);
    return Status::OK();
  }
  const Key* key = FindKey(name);
  if (key == nullptr) return UnknownKey(origin, name);
  const std::string shown = Quote(text);
  std::string_view t = Trim(text);
  switch (key->type) {
    case Type::kInt: {
      int64_t v = 0;
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
      if (t.empty() || ec == std::errc::invalid_argument || end != t.data() + t.size()) {
        return BadValue(origin, *key, shown, "not an integer");
      }
      if (ec == std::errc::result_out_of_range)
        return BadValue(origin, *key, shown, "out of range");
      return Store(*key, v, shown, origin, origin, state);
    }
    case Type::kFloat: {
      double v = 0;
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
      if (t.empty() || ec == std::errc::invalid_argument || end != t.data() + t.size()) {
        return BadValue(origin, *key, shown, "not a number");
      }
      if (ec == std::errc::result_out_of_range)
        return BadValue(origin, *key, shown, "out of range");
      return Store(*key, v, shown, origin, origin, state);
    }
    case Type::kBool: {
      std::string lower(t);
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char ch) { return std::tolower(ch); });
      if (lower != "true" && lower != "false") {
        return BadValue(origin, *key, shown, "not a boolean");
      }
      return Store(*key, lower == "true", shown, origin, origin, state);
    }
    case Type::kString:
    case Type::kEnum:
      return Store(*key, text, shown, origin, origin, state);
  }
  return Status::Internal("unhandled key type");
}

std::string_view TomlTypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date/time";
    default:
      return "an unsupported value";
  }
}

// The TOML text of a scalar node, for error messages and properties.
std::string TomlText(const toml::node& node) {
  if (auto s = node.as_string()) return Quote(s->get());
  if (auto i = node.as_integer()) return std::to_string(i->get());
  if (auto f = node.as_floating_point()) return FormatFloat(f->get());
  if (auto b = node.as_boolean()) return b->get() ? "true" : "false";
  return std::string(TomlTypeName(node));
}

Status ApplyToml(const std::string& name, const toml::node& node, const std::string& path,
                 LoadState* state) {
  const std::string origin = "file " + path;
  const std::string where = fmt::format("{}:{}", origin, node.source().begin.line);
  if (IsPropertyKey(name)) {
    // librdkafka properties are strings; scalars are accepted in their
    // natural spelling (6000, true).
    if (auto s = node.as_string()) {
      StoreProperty(name, s->get(), origin, state);
    } else if (node.is_integer() || node.is_floating_point() || node.is_boolean()) {
      StoreProperty(name, TomlText(node), origin, state);
    } else {
      return Status::InvalidArgument(
          fmt::format("{}: bad value ({}) for {}; allowed: a string, number or boolean", where,
                      TomlTypeName(node), name));
    }
    return Status::OK();
  }
  const Key* key = FindKey(name);
  if (key == nullptr) return UnknownKey(where, name);
  const std::string shown = TomlText(node);
  auto wrong_type = [&] {
    return BadValue(where, *key, shown, fmt::format("{} in the file", TomlTypeName(node)));
  };
  switch (key->type) {
    case Type::kInt:
      if (auto i = node.as_integer()) return Store(*key, i->get(), shown, where, origin, state);
      return wrong_type();
    case Type::kFloat:
      if (auto f = node.as_floating_point()) {
        return Store(*key, f->get(), shown, where, origin, state);
      }
      if (auto i = node.as_integer()) {
        return Store(*key, static_cast<double>(i->get()), shown, where, origin, state);
      }
      return wrong_type();
    case Type::kBool:
      if (auto b = node.as_boolean()) return Store(*key, b->get(), shown, where, origin, state);
      return wrong_type();
    case Type::kString:
    case Type::kEnum:
      if (auto s = node.as_string()) return Store(*key, s->get(), shown, where, origin, state);
      return wrong_type();
  }
  return Status::Internal("unhandled key type");
}

// Walks a table; under kafka.properties nested tables are joined back into
// dotted property names (so both `"session.timeout.ms" = 6000` and the
// unquoted `session.timeout.ms = 6000` work).
Status ApplyTable(const toml::table& table, const std::string& prefix, const std::string& path,
                  LoadState* state) {
  for (auto&& [k, node] : table) {
    std::string name = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (auto sub = node.as_table()) {
      if (!IsPropertyKey(name) && !IsTablePrefix(name)) {
        return UnknownKey(fmt::format("file {}:{}", path, node.source().begin.line), name);
      }
      RECSTREAM_RETURN_IF_ERROR(ApplyTable(*sub, name, path, state));
    } else {
      RECSTREAM_RETURN_IF_ERROR(ApplyToml(name, node, path, state));
    }
  }
  return Status::OK();
}

Status ApplyFile(const std::string& path, LoadState* state) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    if (where.line == 0) {
      return Status::InvalidArgument(fmt::format("config file {}: {}", path, e.description()));
    }
    return Status::InvalidArgument(
        fmt::format("config file {}:{}:{}: {}", path, where.line, where.column, e.description()));
  } catch (const std::exception& e) {
    return Status::InvalidArgument(fmt::format("config file {}: {}", path, e.what()));
  }
  return ApplyTable(table, "", path, state);
}

// RECSTREAM_KAFKA__GROUP_ID -> kafka.group_id.
std::string EnvToKey(std::string_view rest) {
  std::string key;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == '_' && i + 1 < rest.size() && rest[i + 1] == '_') {
      key += '.';
      ++i;
    } else {
      key += static_cast<char>(std::tolower(static_cast<unsigned char>(rest[i])));
    }
  }
  return key;
}

bool IsSecretProperty(std::string_view name) {
  return name.find("password") != std::string_view::npos ||
         name.find("secret") != std::string_view::npos;
}

// A TOML key path: bare segments as they are, others quoted.
std::string RenderKey(std::string_view name) {
  bool bare = std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.';
  });
  if (bare) return std::string(name);
  return "kafka.properties." + Quote(name.substr(kPropertiesPrefix.size()));
}

}  // namespace

Status Load(const std::string& file_path, const std::vector<std::string>& set_flags,
            const std::map<std::string, std::string>& env, AppConfig* out,
            std::vector<ConfigSource>* sources) {
  AppConfig config;
  LoadState state{&config, {}};

  if (!file_path.empty()) RECSTREAM_RETURN_IF_ERROR(ApplyFile(file_path, &state));

  for (const auto& [var, value] : env) {
    if (!std::string_view(var).starts_with(kEnvPrefix)) continue;
    std::string name = EnvToKey(std::string_view(var).substr(kEnvPrefix.size()));
    RECSTREAM_RETURN_IF_ERROR(ApplyString(name, value, "env " + var, &state));
  }

  for (const std::string& flag : set_flags) {
    size_t eq = flag.find('=');
    if (eq == std::string::npos) {
      return Status::InvalidArgument(
          fmt::format("--set {}: expected key=value (e.g. --set model.dim=64)", Quote(flag)));
    }
    std::string name(Trim(std::string_view(flag).substr(0, eq)));
    RECSTREAM_RETURN_IF_ERROR(
        ApplyString(name, flag.substr(eq + 1), std::string(kFlagOrigin), &state));
  }

  auto origin_of = [&](const std::string& name) {
    auto it = state.origins.find(name);
    return it == state.origins.end() ? std::string("default") : it->second;
  };

  if (!(config.learner.rating_min < config.learner.rating_max)) {
    return Status::InvalidArgument(fmt::format(
        "bad values for rating.min ({}, from {}) and rating.max ({}, from {}); allowed: "
        "rating.min < rating.max",
        FormatFloat(config.learner.rating_min), origin_of("rating.min"),
        FormatFloat(config.learner.rating_max), origin_of("rating.max")));
  }
  config.parser.rating_min = config.learner.rating_min;
  config.parser.rating_max = config.learner.rating_max;
  if (config.kafka.ownership.index >= config.kafka.ownership.count) {
    return Status::InvalidArgument(fmt::format(
        "bad value for trainer.index ({}, from {}); allowed: 0 to trainer.count - 1 ({}, from {})",
        config.kafka.ownership.index, origin_of("trainer.index"), config.kafka.ownership.count - 1,
        origin_of("trainer.count")));
  }

  if (config.kafka.ownership.count > 1 && config.replicate.exchange_interval_ms > 0 &&
      config.replicate.interval_ms == 0) {
    return Status::InvalidArgument(fmt::format(
        "bad value for replicate.interval_ms (0, from {}): trainers that share one model "
        "(trainer.count {}, trainer.exchange_interval_ms {}) publish their rows on the model "
        "topic; set replicate.interval_ms > 0, or trainer.exchange_interval_ms = 0",
        origin_of("replicate.interval_ms"), config.kafka.ownership.count,
        config.replicate.exchange_interval_ms));
  }

  Status s = learner::ValidateOptions(config.learner);
  if (!s.ok()) return Status::InvalidArgument("invalid model/learner settings: " + s.message());

  if (sources != nullptr) {
    sources->clear();
    for (const Key& key : KeyTable()) {
      sources->push_back({key.name, key.get(config), origin_of(key.name)});
    }
    for (const auto& [property, value] : config.kafka.properties) {
      std::string name = std::string(kPropertiesPrefix) + property;
      sources->push_back({name, value, origin_of(name)});
    }
  }
  *out = std::move(config);
  return Status::OK();
}

std::map<std::string, std::string> CurrentEnvironment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    if (!entry.starts_with(kEnvPrefix)) continue;
    size_t eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
  }
  return env;
}

std::string Render(const std::vector<ConfigSource>& sources) {
  std::string out;
  for (const ConfigSource& src : sources) {
    const Key* key = FindKey(src.key);
    bool secret = key != nullptr ? key->secret : IsSecretProperty(src.key);
    std::string value;
    if (secret && !src.value.empty()) {
      value = Quote("<redacted>");
    } else if (key == nullptr || key->type == Type::kString || key->type == Type::kEnum) {
      value = Quote(src.value);
    } else if (key->type == Type::kFloat && src.value.find_first_of(".eEni") == std::string::npos) {
      value = src.value + ".0";  // keep it a TOML float
    } else {
      value = src.value;
    }
    out += fmt::format("{} = {}  # {}\n", key != nullptr ? src.key : RenderKey(src.key), value,
                       src.origin);
  }
  return out;
}

std::string ModelSettings(const AppConfig& config) {
  std::string out;
  for (const Key& k : KeyTable()) {
    if (!(k.name.rfind("model.", 0) == 0 || k.name.rfind("rating.", 0) == 0 ||
          k.name.rfind("serve.blend.", 0) == 0))
      continue;
    out += k.name;
    out += '=';
    out += k.get(config);
    out += '\n';
  }
  return out;
}

std::vector<std::string> SettingsAsFlags(const std::string& settings) {
  std::vector<std::string> flags;
  size_t begin = 0;
  while (begin < settings.size()) {
    size_t end = settings.find('\n', begin);
    if (end == std::string::npos) end = settings.size();
    if (end > begin) flags.push_back(settings.substr(begin, end - begin));
    begin = end + 1;
  }
  return flags;
}

}  // namespace recstream::config
