#include "serve/api.h"

#include <fmt/format.h>
#include <simdjson.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <span>
#include <string_view>

#include "serve/dashboard.h"
#include "serve/history.h"
#include "serve/json_writer.h"

namespace recstream::serve {

namespace {

using learner::Task;

constexpr size_t kMaxIdBytes = 256;

HttpResponse Json(int status, std::string body) {
  return HttpResponse{status, "application/json", std::move(body)};
}

HttpResponse Error(int status, std::string_view message) {
  return Json(status, ErrorBody(message));
}

bool ValidUtf8(std::string_view s) { return simdjson::validate_utf8(s.data(), s.size()); }

// Checks an id taken from the query string; "" when fine, else the error.
std::string CheckId(std::string_view name, std::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) {
    return fmt::format("bad parameter {}: must be 1 to {} bytes", name, kMaxIdBytes);
  }
  if (!ValidUtf8(id)) return fmt::format("bad parameter {}: not valid UTF-8", name);
  return "";
}

// Reads a required id from the query string.
bool QueryId(const HttpRequest& req, std::string_view name, std::string* id, HttpResponse* err) {
  auto it = req.query.find(std::string(name));
  if (it == req.query.end()) {
    *err = Error(400, fmt::format("missing parameter: {}", name));
    return false;
  }
  std::string problem = CheckId(name, it->second);
  if (!problem.empty()) {
    *err = Error(400, problem);
    return false;
  }
  *id = it->second;
  return true;
}

// Request-time features, by the rules of events: at most kMaxFeatures, each
// 1-256 bytes of UTF-8.
constexpr size_t kMaxFeatures = 64;

std::string CheckFeature(std::string_view name, std::string_view f) {
  if (f.empty() || f.size() > kMaxIdBytes)
    return fmt::format("bad {}: each feature must be 1 to {} bytes", name, kMaxIdBytes);
  if (!ValidUtf8(f)) return fmt::format("bad {}: not valid UTF-8", name);
  return "";
}

// An optional comma-separated feature list from the query string: false
// (with *err) when malformed; *present tells whether it was given.
bool QueryFeatures(const HttpRequest& req, std::string_view name, bool* present,
                   std::vector<std::string>* features, HttpResponse* err) {
  auto it = req.query.find(std::string(name));
  *present = it != req.query.end();
  features->clear();
  if (!*present || it->second.empty()) return true;
  std::string_view rest = it->second;
  while (true) {
    const size_t comma = rest.find(',');
    const std::string_view f = rest.substr(0, comma);
    std::string problem = CheckFeature(fmt::format("parameter {}", name), f);
    if (!problem.empty()) {
      *err = Error(400, problem);
      return false;
    }
    features->emplace_back(f);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (features->size() > kMaxFeatures) {
    *err = Error(400, fmt::format("bad parameter {}: {} features, at most {} allowed", name,
                                  features->size(), kMaxFeatures));
    return false;
  }
  return true;
}

// A JSON array of feature strings (field `name`).
bool JsonFeatures(simdjson::dom::element e, std::string_view name,
                  std::vector<std::string>* features, std::string* err) {
  simdjson::dom::array arr;
  if (e.get_array().get(arr)) {
    *err = fmt::format("bad field {}: must be an array of strings", name);
    return false;
  }
  if (arr.size() > kMaxFeatures) {
    *err = fmt::format("bad field {}: {} features, at most {} allowed", name, arr.size(),
                       kMaxFeatures);
    return false;
  }
  features->clear();
  for (simdjson::dom::element f : arr) {
    std::string_view s;
    if (f.get_string().get(s)) {
      *err = fmt::format("bad field {}: must be an array of strings", name);
      return false;
    }
    *err = CheckFeature(fmt::format("field {}", name), s);
    if (!err->empty()) return false;
    features->emplace_back(s);
  }
  return true;
}

// A JSON id: a string (1-256 bytes; simdjson has already checked UTF-8) or
// a non-negative integer, rendered in decimal as ingest does.
bool JsonId(simdjson::dom::element e, std::string_view name, std::string* id, std::string* err) {
  switch (e.type()) {
    case simdjson::dom::element_type::STRING: {
      std::string_view s = e.get_string().value_unsafe();
      if (s.empty() || s.size() > kMaxIdBytes) {
        *err = fmt::format("bad field {}: must be 1 to {} bytes", name, kMaxIdBytes);
        return false;
      }
      id->assign(s);
      return true;
    }
    case simdjson::dom::element_type::INT64: {
      int64_t v = e.get_int64().value_unsafe();
      if (v < 0) break;
      *id = std::to_string(v);
      return true;
    }
    case simdjson::dom::element_type::UINT64:
      *id = std::to_string(e.get_uint64().value_unsafe());
      return true;
    default:
      break;
  }
  *err = fmt::format("bad field {}: must be a string or a non-negative integer", name);
  return false;
}

// Compares without an early exit, so the time taken does not reveal how
// much of the token a guess got right.
bool ConstantTimeEquals(std::string_view given, std::string_view expected) {
  volatile unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return false;
    }
  }
  return true;
}

void WritePrediction(JsonWriter& w, const learner::Prediction& p) {
  w.Key("click").Float(p.click);
  w.Key("purchase").Float(p.purchase);
  w.Key("rating").Float(p.rating);
}

std::string IsoTime(int64_t ms) {
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
}

// Prometheus text format 0.0.4 helpers.
class PromWriter {
 public:
  explicit PromWriter(std::string* out) : out_(out) {}

  void Header(std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(*out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                   type);
  }

  // labels: alternating names and values.
  void Sample(std::string_view name, std::initializer_list<std::string_view> labels, double value) {
    out_->append(name);
    if (labels.size() > 0) {
      out_->push_back('{');
      bool first = true;
      for (auto it = labels.begin(); it != labels.end(); it += 2) {
        if (!first) out_->push_back(',');
        first = false;
        out_->append(*it);
        out_->append("=\"");
        AppendLabelValue(*(it + 1));
        out_->push_back('"');
      }
      out_->push_back('}');
    }
    out_->push_back(' ');
    AppendValue(value);
    out_->push_back('\n');
  }

  void Sample(std::string_view name, double value) { Sample(name, {}, value); }

 private:
  void AppendLabelValue(std::string_view v) {
    for (char c : v) {
      if (c == '\\') {
        out_->append("\\\\");
      } else if (c == '"') {
        out_->append("\\\"");
      } else if (c == '\n') {
        out_->append("\\n");
      } else {
        out_->push_back(c);
      }
    }
  }

  void AppendValue(double v) {
    if (std::isnan(v)) {
      out_->append("NaN");
    } else if (std::isinf(v)) {
      out_->append(v > 0 ? "+Inf" : "-Inf");
    } else {
      fmt::format_to(std::back_inserter(*out_), "{}", v);
    }
  }

  std::string* out_;
};

}  // namespace

// The oneTBB arena of the parts of a long POST /v1/score, at low priority: its
// one worker comes from the process's pool only while no arena of normal
// priority (the learner's training) wants it, so that a POST uses an idle
// core and never takes one from training (it then runs its parts on the I/O
// thread alone). A slot for each I/O thread, so that none waits for one.
struct Api::Parts {
  explicit Parts(int io_threads)
      : arena(std::max(1, io_threads) + 1, unsigned(std::max(1, io_threads)),
              tbb::task_arena::priority::low) {}
  tbb::task_arena arena;
};

Api::Api(const ServeOptions& options, const learner::Blend& blend, const learner::Learner* learner,
         ServiceHooks* hooks)
    : options_(options),
      blend_(blend),
      learner_(learner),
      hooks_(hooks),
      history_(std::make_unique<MetricsHistory>(HistoryOptions(), learner, hooks)),
      parts_(std::make_unique<Parts>(options.threads)) {}

// The history thread reads the learner and the hooks: stop it first.
Api::~Api() { history_->Stop(); }

const char* Api::RouteName(int route) {
  switch (route) {
    case kScore:
      return "/v1/score";
    case kRecommend:
      return "/v1/recommend";
    case kStats:
      return "/v1/stats";
    case kHealthz:
      return "/healthz";
    case kReadyz:
      return "/readyz";
    case kMetrics:
      return "/metrics";
    case kAdminCheckpoint:
      return "/v1/admin/checkpoint";
    case kDashboard:
      return "/";
    case kHistory:
      return "/v1/history";
    case kSnapshot:
      return "/v1/snapshot";
    default:
      return "other";
  }
}

HttpResponse Api::Handle(const HttpRequest& request) const {
  auto start = std::chrono::steady_clock::now();
  int route = kOther;
  HttpResponse response;
  try {
    response = Dispatch(request, &route);
  } catch (const std::exception& e) {
    // Allocation failure or a bug below; keep the connection and the counters.
    response = Error(500, fmt::format("internal error: {}", e.what()));
  }
  auto nanos =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count();
  Record(route, response.status, static_cast<uint64_t>(nanos));
  return response;
}

void Api::Record(int route, int status, uint64_t nanos) const {
  RouteCounters& c = counters_[route];
  for (int i = 0; i < kNumCodes; ++i) {
    if (kCodes[i] == status) {
      c.by_code[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  double seconds = static_cast<double>(nanos) * 1e-9;
  int b = 0;
  while (b < kNumBuckets && seconds > kBuckets[b]) ++b;
  c.buckets[b].fetch_add(1, std::memory_order_relaxed);
  c.sum_ns.fetch_add(nanos, std::memory_order_relaxed);
}

HttpResponse Api::Dispatch(const HttpRequest& req, int* route) const {
  struct Entry {
    const char* path;
    Route route;
    const char* method;  // the only method besides the POST /v1/score case
  };
  static constexpr Entry kTable[] = {
      {"/v1/score", kScore, "GET"},
      {"/v1/recommend", kRecommend, "GET"},
      {"/v1/stats", kStats, "GET"},
      {"/healthz", kHealthz, "GET"},
      {"/readyz", kReadyz, "GET"},
      {"/metrics", kMetrics, "GET"},
      {"/v1/admin/checkpoint", kAdminCheckpoint, "POST"},
      {"/", kDashboard, "GET"},
      {"/v1/history", kHistory, "GET"},
      {"/v1/snapshot", kSnapshot, "GET"},
  };
  const Entry* entry = nullptr;
  for (const Entry& e : kTable) {
    if (req.path == e.path) entry = &e;
  }
  if (entry == nullptr) return Error(404, fmt::format("no route for {}", req.path));
  *route = entry->route;
  if (entry->route == kScore && req.method == "POST") return PostScore(req);
  if (req.method != entry->method) {
    std::string allowed = entry->route == kScore ? "GET or POST" : entry->method;
    return Error(
        405, fmt::format("method {} not allowed on {}; use {}", req.method, entry->path, allowed));
  }
  switch (entry->route) {
    case kScore:
      return GetScore(req);
    case kRecommend:
      return Recommend(req);
    case kStats:
      return Stats();
    case kHealthz:
      return Json(200, R"({"status":"ok"})");
    case kReadyz:
      return Ready();
    case kMetrics:
      return Metrics();
    case kAdminCheckpoint:
      return AdminCheckpoint(req);
    case kDashboard:
      return HttpResponse{200, "text/html; charset=utf-8", std::string(DashboardHtml())};
    case kHistory:
      return History(req);
    case kSnapshot:
      return Snapshot(req);
    default:
      return Error(404, "no route");
  }
}

HttpResponse Api::GetScore(const HttpRequest& req) const {
  HttpResponse err;
  std::string user, item;
  if (!QueryId(req, "user", &user, &err) || !QueryId(req, "item", &item, &err)) return err;
  bool has_user_features = false, has_item_features = false;
  std::vector<std::string> user_features, item_features;
  if (!QueryFeatures(req, "user_features", &has_user_features, &user_features, &err) ||
      !QueryFeatures(req, "item_features", &has_item_features, &item_features, &err)) {
    return err;
  }
  if (learner_ == nullptr) return Error(503, "model not loaded");
  learner::ScoreResult r =
      learner_->Score(user, item, blend_, has_user_features ? &user_features : nullptr,
                      has_item_features ? &item_features : nullptr);
  std::string out;
  out.reserve(160 + user.size() + item.size());
  JsonWriter w(&out);
  w.BeginObject();
  w.Key("user").String(user);
  w.Key("item").String(item);
  WritePrediction(w, r.prediction);
  w.Key("score").Float(r.score);
  w.Key("known").BeginObject().Key("user").Bool(r.user_known).Key("item").Bool(r.item_known);
  w.EndObject();
  w.EndObject();
  return Json(200, std::move(out));
}

namespace {

// POST /v1/score scores and writes its answer in parts of at least this many
// items, at most kMaxParts of them, run in parallel (`api_bench`:
// BM_PostScore/1000).
constexpr size_t kPartItems = 128, kMaxParts = 8;

// Scores `items` for `user` and appends their elements of the "scores"
// array to *out (with a leading comma unless `first`). The elements are
// written by hand into one buffer sized for the worst case: the same bytes
// as JsonWriter's BeginObject/Key/.../EndObject, without a string append
// per piece.
void AppendScores(const learner::Learner& learner, const learner::Blend& blend,
                  const std::string& user, std::span<const std::string> items, bool first,
                  std::string* out, const std::vector<std::string>* user_features,
                  std::span<const std::vector<std::string>* const> item_features) {
  std::vector<learner::ScoreResult> results;
  learner.ScoreMany(user, items, blend, &results, user_features, item_features);
  static constexpr std::string_view kItem = ",{\"item\":", kClick = ",\"click\":",
                                    kPurchase = ",\"purchase\":", kRating = ",\"rating\":",
                                    kScore = ",\"score\":";
  constexpr size_t kPerItem = kItem.size() + kClick.size() + kPurchase.size() + kRating.size() +
                              kScore.size() + 4 * JsonWriter::kMaxFloatChars + 1;  // and '}'
  size_t bound = items.size() * kPerItem;
  for (const std::string& id : items) bound += JsonWriter::MaxStringChars(id.size());
  const size_t at = out->size();
  out->resize(at + bound);
  char* p = out->data() + at;
  auto put = [&p](std::string_view s) {
    std::memcpy(p, s.data(), s.size());
    p += s.size();
  };
  for (size_t i = 0; i < items.size() && i < results.size(); ++i) {
    const learner::ScoreResult& r = results[i];
    put(i == 0 && first ? kItem.substr(1) : kItem);
    p = JsonWriter::WriteString(p, items[i]);
    put(kClick);
    p = JsonWriter::WriteFloat(p, r.prediction.click);
    put(kPurchase);
    p = JsonWriter::WriteFloat(p, r.prediction.purchase);
    put(kRating);
    p = JsonWriter::WriteFloat(p, r.prediction.rating);
    put(kScore);
    p = JsonWriter::WriteFloat(p, r.score);
    *p++ = '}';
  }
  out->resize(size_t(p - out->data()));
}

}  // namespace

HttpResponse Api::PostScore(const HttpRequest& req) const {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto error = parser.parse(req.body).get(root)) {
    return Error(400, fmt::format("malformed JSON body: {}", simdjson::error_message(error)));
  }
  simdjson::dom::object obj;
  if (root.get_object().get(obj)) return Error(400, "body must be a JSON object");

  std::string user, problem;
  simdjson::dom::element user_el;
  if (obj["user"].get(user_el)) return Error(400, "missing field: user");
  if (!JsonId(user_el, "user", &user, &problem)) return Error(400, problem);

  simdjson::dom::element items_el;
  if (obj["items"].get(items_el)) return Error(400, "missing field: items");
  simdjson::dom::array items_arr;
  if (items_el.get_array().get(items_arr)) return Error(400, "bad field items: must be an array");
  if (items_arr.size() > options_.max_batch_items) {
    return Error(400, fmt::format("bad field items: {} items, at most {} allowed", items_arr.size(),
                                  options_.max_batch_items));
  }
  // Request-time features: of the user, and of each item given as an object
  // {"item": I, "features": [...]} (docs/interface.md section 3).
  std::vector<std::string> user_features;
  bool has_user_features = false;
  if (simdjson::dom::element uf; !obj["user_features"].get(uf)) {
    if (!JsonFeatures(uf, "user_features", &user_features, &problem)) return Error(400, problem);
    has_user_features = true;
  }
  std::vector<std::string> items;
  items.reserve(items_arr.size());
  // Per item: its features, or null for the stored ones; filled only once
  // an item carries features. The lists never move (reserved).
  std::vector<std::vector<std::string>> feature_lists;
  feature_lists.reserve(items_arr.size());
  std::vector<const std::vector<std::string>*> item_features;
  for (simdjson::dom::element e : items_arr) {
    std::string id;
    if (e.type() == simdjson::dom::element_type::OBJECT) {
      const std::string name = fmt::format("items[{}]", items.size());
      simdjson::dom::element item_el, features_el;
      if (e["item"].get(item_el)) return Error(400, fmt::format("missing field: {}.item", name));
      if (!JsonId(item_el, name + ".item", &id, &problem)) return Error(400, problem);
      if (!e["features"].get(features_el)) {
        std::vector<std::string>& list = feature_lists.emplace_back();
        if (!JsonFeatures(features_el, name + ".features", &list, &problem))
          return Error(400, problem);
        if (item_features.empty()) item_features.assign(items_arr.size(), nullptr);
        item_features[items.size()] = &list;
      }
      items.push_back(std::move(id));
      continue;
    }
    if (!JsonId(e, "items", &id, &problem)) {
      // Again, with the element's index in the message (not formatted for
      // every valid element).
      JsonId(e, fmt::format("items[{}]", items.size()), &id, &problem);
      return Error(400, problem);
    }
    items.push_back(std::move(id));
  }
  if (learner_ == nullptr) return Error(503, "model not loaded");

  std::string out;
  JsonWriter w(&out);
  w.BeginObject();
  w.Key("user").String(user);
  w.Key("scores").BeginArray();
  const std::span<const std::string> all(items);
  const std::span<const std::vector<std::string>* const> all_features(item_features);
  const std::vector<std::string>* user_list = has_user_features ? &user_features : nullptr;
  const size_t parts = std::clamp(items.size() / kPartItems, size_t(1), kMaxParts);
  if (parts == 1) {
    AppendScores(*learner_, blend_, user, all, /*first=*/true, &out, user_list, all_features);
  } else {
    // In parts, on this thread and a oneTBB worker when one is free (see
    // Parts; the worker may need tens of microseconds to wake: parts rather
    // than halves, so that this thread goes on meanwhile).
    std::vector<std::string> rest(parts - 1);
    parts_->arena.execute([&] {
      tbb::parallel_for(size_t(0), parts, [&](size_t part) {
        const size_t begin = items.size() * part / parts, end = items.size() * (part + 1) / parts;
        AppendScores(
            *learner_, blend_, user, all.subspan(begin, end - begin), part == 0,
            part == 0 ? &out : &rest[part - 1], user_list,
            all_features.empty() ? all_features : all_features.subspan(begin, end - begin));
      });
    });
    for (const std::string& r : rest) out += r;
  }
  out.push_back(']');
  out.push_back('}');
  return Json(200, std::move(out));
}

HttpResponse Api::Recommend(const HttpRequest& req) const {
  HttpResponse err;
  std::string user;
  if (!QueryId(req, "user", &user, &err)) return err;
  int k = 10;
  if (auto it = req.query.find("k"); it != req.query.end()) {
    const std::string& s = it->second;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), k);
    if (ec != std::errc() || ptr != s.data() + s.size() || k < 1 || k > options_.max_k) {
      return Error(400,
                   fmt::format("bad parameter k: must be an integer from 1 to {}", options_.max_k));
    }
  }
  bool exclude_purchased = true;
  if (auto it = req.query.find("exclude_purchased"); it != req.query.end()) {
    const std::string& s = it->second;
    if (s == "true" || s == "1") {
      exclude_purchased = true;
    } else if (s == "false" || s == "0") {
      exclude_purchased = false;
    } else {
      return Error(400, "bad parameter exclude_purchased: must be true or false");
    }
  }
  if (learner_ == nullptr) return Error(503, "model not loaded");
  std::vector<learner::Recommendation> recs =
      learner_->Recommend(user, k, exclude_purchased, blend_);
  std::string out;
  JsonWriter w(&out);
  w.BeginObject();
  w.Key("user").String(user);
  w.Key("items").BeginArray();
  for (const auto& r : recs) {
    w.BeginObject();
    w.Key("item").String(r.item);
    w.Key("score").Float(r.score);
    WritePrediction(w, r.prediction);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return Json(200, std::move(out));
}

HttpResponse Api::Stats() const {
  ServiceStatus st;
  if (hooks_ != nullptr) st = hooks_->Status();
  learner::LearnerStats ls;
  if (learner_ != nullptr) ls = learner_->Stats();

  std::string out;
  JsonWriter w(&out);
  w.BeginObject();
  w.Key("uptime_s").Double(st.uptime_s);
  w.Key("events_per_second").Double(st.events_per_second);

  w.Key("tasks").BeginObject();
  for (Task t : learner::kAllTasks) {
    int i = static_cast<int>(t);
    const learner::TaskStats& ts = ls.tasks[i];
    w.Key(learner::TaskName(t)).BeginObject();
    w.Key("seen").Uint(st.seen[i]);
    w.Key("learned").Uint(st.learned[i]);
    w.Key("learned_by_model").Uint(ts.learned);
    w.Key("loss_weight").Double(ts.loss_weight);
    w.Key("feedback").String(ts.implicit ? "implicit" : "explicit");
    w.Key("avg_loss").Double(ts.avg_loss);
    w.Key("progressive").BeginObject();
    bool any = ts.learned > 0;
    if (t == Task::kRating) {
      w.Key("mae");
      any ? w.Double(ts.mae) : w.Null();
      w.Key("rmse");
      any ? w.Double(ts.rmse) : w.Null();
    } else {
      w.Key("auc");
      any ? w.Double(ts.auc) : w.Null();
      w.Key("logloss");
      any ? w.Double(ts.logloss) : w.Null();
      for (auto [key, value] :
           {std::pair{"precision", ts.precision}, {"recall", ts.recall}, {"f1", ts.f1}}) {
        w.Key(key);
        any ? w.Double(value) : w.Null();
      }
    }
    w.EndObject();
    w.EndObject();
  }
  w.EndObject();

  uint64_t rejected_total = 0;
  for (const auto& [reason, n] : st.rejected) rejected_total += n;
  w.Key("rejected").BeginObject();
  w.Key("total").Uint(rejected_total);
  w.Key("by_reason").BeginObject();
  for (const auto& [reason, n] : st.rejected) w.Key(reason).Uint(n);
  w.EndObject();
  w.Key("dlq_sent").Uint(st.dlq_sent);
  w.EndObject();

  w.Key("model").BeginObject();
  // Without a learner (a replica before its first commit) the defaults.
  const learner::LearnerOptions lo =
      learner_ != nullptr ? learner_->options() : learner::LearnerOptions();
  if (learner_ != nullptr) {
    w.Key("arch").String(learner::ArchName(lo.arch));
    w.Key("weighting").String(learner::WeightingName(lo.weighting));
    w.Key("dim").Int(lo.dim);
  }
  w.Key("users").Uint(ls.users);
  w.Key("items").Uint(ls.items);
  w.Key("features").Uint(ls.features);
  w.Key("nonfinite_updates_refused").Uint(ls.nonfinite_updates_refused);
  // Admission (model.admit_after): events whose user or item had no row of
  // its own yet, learned through the prior rows.
  w.Key("admission").BeginObject();
  w.Key("admit_after").Int(lo.admit_after);
  w.Key("refused_user_events").Uint(ls.not_admitted_users);
  w.Key("refused_item_events").Uint(ls.not_admitted_items);
  w.EndObject();
  // Expiry (model.expire.*): rows removed since start, and the event time
  // expiry measures from.
  w.Key("expiry").BeginObject();
  w.Key("user_s").Int(lo.expire_user_s);
  w.Key("item_s").Int(lo.expire_item_s);
  w.Key("feature_s").Int(lo.expire_feature_s);
  w.Key("expired_users").Uint(ls.expired_users);
  w.Key("expired_items").Uint(ls.expired_items);
  w.Key("expired_features").Uint(ls.expired_features);
  w.Key("event_time_s").Int(ls.event_time_s);
  w.EndObject();
  // Memory limit (model.memory_limit_mb): users in memory and in the
  // store only, and the reads that bring them back.
  w.Key("memory").BeginObject();
  w.Key("limit_mb").Int(lo.memory_limit_mb);
  w.Key("model_bytes").Uint(ls.model_bytes);
  w.Key("user_budget").Uint(ls.user_budget);
  w.Key("resident_users").Uint(ls.users);
  w.Key("evicted_users").Uint(ls.users_evicted);
  w.Key("reloaded_users").Uint(ls.users_reloaded);
  w.Key("store_reads").Uint(ls.store_reads);
  w.Key("store_read_errors").Uint(ls.store_read_errors);
  w.Key("checkpoints_asked").Uint(ls.checkpoints_wanted);
  w.EndObject();
  w.Key("blend").BeginObject();
  w.Key("click").Float(blend_.click).Key("purchase").Float(blend_.purchase);
  w.Key("rating").Float(blend_.rating);
  w.EndObject();
  w.EndObject();

  int64_t total_lag = 0;
  for (const auto& p : st.lag) total_lag += p.lag;
  w.Key("trainer").BeginObject();
  w.Key("index").Int(st.trainer_index);
  w.Key("count").Int(st.trainer_count);
  w.Key("partitions").BeginArray();
  for (const std::string& p : st.assigned_partitions) w.String(p);
  w.EndArray();
  w.Key("missing_partitions").BeginArray();
  for (const std::string& p : st.missing_partitions) w.String(p);
  w.EndArray();
  if (st.exchange.on) {
    const ServiceStatus::Exchange& x = st.exchange;
    w.Key("exchange").BeginObject();
    w.Key("sent_batches").Uint(x.sent_batches);
    w.Key("sent_bytes").Uint(x.sent_bytes);
    w.Key("outbox").Uint(x.outbox);
    w.Key("received_batches").Uint(x.received_batches);
    w.Key("duplicate_batches").Uint(x.duplicate_batches);
    w.Key("incomplete_batches").Uint(x.incomplete_batches);
    w.Key("bad_records").Uint(x.bad_records);
    w.Key("followed_versions").Uint(x.followed_versions);
    w.Key("errors").Uint(x.errors);
    w.EndObject();
  }
  w.EndObject();

  w.Key("consumer").BeginObject();
  w.Key("total_lag").Int(total_lag);
  w.Key("partitions").BeginArray();
  for (const auto& p : st.lag) {
    w.BeginObject();
    w.Key("topic").String(p.topic);
    w.Key("partition").Int(p.partition);
    w.Key("position").Int(p.position);
    w.Key("high_watermark").Int(p.high_watermark);
    w.Key("lag").Int(p.lag);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();

  if (st.publishing) {
    w.Key("publishing").BeginObject();
    w.Key("topic").String(st.model_topic);
    w.Key("version").String(st.published_version);
    w.Key("versions").Uint(st.published_versions);
    w.Key("full_versions").Uint(st.published_full);
    w.Key("records").Uint(st.published_records);
    w.Key("bytes").Uint(st.published_bytes);
    w.Key("failures").Uint(st.publish_failures);
    w.Key("last_publish_ms").Double(st.last_publish_ms);
    w.Key("error");
    st.publish_error.empty() ? w.Null() : w.String(st.publish_error);
    w.EndObject();
  }
  if (st.replica) {
    w.Key("replica").BeginObject();
    w.Key("topic").String(st.model_topic);
    w.Key("lag_ms");
    st.replica_lag_ms < 0 ? w.Null() : w.Double(st.replica_lag_ms);
    w.Key("version").String(st.replica_version);
    w.Key("versions_applied").Uint(st.replica_versions_applied);
    w.Key("heartbeats").Uint(st.replica_heartbeats);
    w.Key("records_applied").Uint(st.replica_records_applied);
    w.Key("bad_records").Uint(st.replica_bad_records);
    w.Key("incomplete_versions").Uint(st.replica_incomplete_versions);
    w.Key("apply_errors").Uint(st.replica_apply_errors);
    w.Key("snapshot_records").Uint(st.replica_snapshot_records);
    w.Key("resyncs").Uint(st.replica_resyncs);
    w.Key("gaps").Uint(st.replica_gaps);
    w.Key("tombstones").Uint(st.replica_tombstones);
    w.Key("bootstrap_s").Double(st.replica_bootstrap_s);
    w.EndObject();
  }

  w.Key("checkpoint").BeginObject();
  w.Key("ok").Bool(st.checkpoint_ok);
  w.Key("error");
  st.checkpoint_error.empty() ? w.Null() : w.String(st.checkpoint_error);
  w.Key("count").Uint(st.checkpoints);
  w.Key("last");
  if (st.last_checkpoint_ms <= 0) {
    w.Null();
  } else {
    w.BeginObject();
    w.Key("time_ms").Int(st.last_checkpoint_ms);
    w.Key("time").String(IsoTime(st.last_checkpoint_ms));
    w.Key("rows").Uint(st.last_checkpoint_rows);
    w.Key("bytes").Uint(st.last_checkpoint_bytes);
    w.Key("duration_ms").Double(st.last_checkpoint_duration_ms);
    w.Key("offsets").BeginObject();
    for (const auto& [tp, offset] : st.checkpoint_offsets) w.Key(tp).Int(offset);
    w.EndObject();
    w.EndObject();
  }
  w.EndObject();

  w.EndObject();
  return Json(200, std::move(out));
}

HttpResponse Api::Snapshot(const HttpRequest& req) const {
  if (hooks_ == nullptr) return Error(404, "this process serves no snapshot");
  std::string after;
  if (auto it = req.query.find("after"); it != req.query.end()) {
    const std::string& hex = it->second;
    if (hex.size() % 2 != 0) return Error(400, "after must be hex digits");
    for (size_t i = 0; i < hex.size(); i += 2) {
      auto digit = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
      };
      const int hi = digit(hex[i]), lo = digit(hex[i + 1]);
      if (hi < 0 || lo < 0) return Error(400, "after must be hex digits");
      after.push_back(char(hi * 16 + lo));
    }
  }
  size_t max_bytes = 8 << 20;
  if (auto it = req.query.find("max_bytes"); it != req.query.end()) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0' || v < 1024 || v > (1ull << 30))
      return Error(400, "max_bytes must be a number in [1024, 2^30]");
    max_bytes = size_t(v);
  }
  const bool fresh = req.query.count("fresh") > 0 && req.query.at("fresh") != "0";
  std::string body;
  recstream::Status s = hooks_->SnapshotPage(after, max_bytes, fresh, &body);
  if (s.IsNotFound()) return Error(404, s.ToString());
  if (!s.ok()) return Error(503, s.ToString());
  return HttpResponse{200, "application/octet-stream", std::move(body)};
}

HttpResponse Api::Ready() const {
  std::string why_not;
  if (learner_ == nullptr) return Error(503, "model not loaded");
  if (hooks_ != nullptr && !hooks_->Ready(&why_not)) {
    std::string out;
    JsonWriter w(&out);
    w.BeginObject().Key("status").String("not ready").Key("error").String(why_not).EndObject();
    return Json(503, std::move(out));
  }
  return Json(200, R"({"status":"ready"})");
}

HttpResponse Api::AdminCheckpoint(const HttpRequest& req) const {
  if (options_.admin_token.empty()) return Error(404, "admin endpoints are disabled");
  constexpr std::string_view kBearer = "Bearer ";
  std::string_view auth = req.authorization;
  if (!StartsWithNoCase(auth, kBearer) ||
      !ConstantTimeEquals(auth.substr(kBearer.size()), options_.admin_token)) {
    return Error(401, "missing or invalid admin token (Authorization: Bearer <token>)");
  }
  if (hooks_ == nullptr) return Error(503, "checkpoints are not available");
  recstream::Status s = hooks_->Checkpoint();
  if (!s.ok()) {
    return Error(s.code() == recstream::Status::Code::kUnavailable ? 503 : 500,
                 "checkpoint failed: " + s.ToString());
  }
  ServiceStatus st = hooks_->Status();
  std::string out;
  JsonWriter w(&out);
  w.BeginObject();
  w.Key("status").String("ok");
  w.Key("time_ms").Int(st.last_checkpoint_ms);
  w.Key("rows").Uint(st.last_checkpoint_rows);
  w.Key("bytes").Uint(st.last_checkpoint_bytes);
  w.Key("duration_ms").Double(st.last_checkpoint_duration_ms);
  w.EndObject();
  return Json(200, std::move(out));
}

HttpResponse Api::History(const HttpRequest& req) const {
  int64_t since = 0;
  if (auto it = req.query.find("since"); it != req.query.end()) {
    const std::string& s = it->second;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), since);
    if (ec != std::errc() || ptr != s.data() + s.size() || since < 0) {
      return Error(400, "bad parameter since: must be a non-negative integer (Unix ms)");
    }
  }
  return Json(200, MetricsHistory::ToJson(history_->Since(since), history_->interval_ms()));
}

HttpResponse Api::Metrics() const {
  ServiceStatus st;
  if (hooks_ != nullptr) st = hooks_->Status();
  learner::LearnerStats ls;
  if (learner_ != nullptr) ls = learner_->Stats();
  std::string out;
  out.reserve(8192);
  PromWriter p(&out);

  p.Header("recstream_events_total", "counter",
           "Events by task and outcome (seen: accepted from Kafka, learned: trained on).");
  for (Task t : learner::kAllTasks) {
    int i = static_cast<int>(t);
    p.Sample("recstream_events_total", {"task", learner::TaskName(t), "outcome", "seen"},
             static_cast<double>(st.seen[i]));
    p.Sample("recstream_events_total", {"task", learner::TaskName(t), "outcome", "learned"},
             static_cast<double>(st.learned[i]));
  }
  p.Header("recstream_rejected_total", "counter", "Rejected events by reason.");
  for (const auto& [reason, n] : st.rejected) {
    p.Sample("recstream_rejected_total", {"reason", reason}, static_cast<double>(n));
  }
  p.Header("recstream_dlq_sent_total", "counter", "Rejected events produced to the DLQ topic.");
  p.Sample("recstream_dlq_sent_total", static_cast<double>(st.dlq_sent));

  p.Header("recstream_trainer_info", "gauge",
           "1, labelled with this trainer's index and the trainer count (trainer.index/count).");
  p.Sample("recstream_trainer_info",
           {"index", std::to_string(st.trainer_index), "count", std::to_string(st.trainer_count)},
           1.0);
  if (st.exchange.on) {
    const ServiceStatus::Exchange& x = st.exchange;
    p.Header("recstream_exchange_batches_total", "counter",
             "Several trainers: batches of changes sent to other owners and received from other "
             "trainers (applied, or dropped as duplicate or incomplete).");
    p.Sample("recstream_exchange_batches_total", {"kind", "sent"}, double(x.sent_batches));
    p.Sample("recstream_exchange_batches_total", {"kind", "received"}, double(x.received_batches));
    p.Sample("recstream_exchange_batches_total", {"kind", "duplicate"}, double(x.duplicate_batches));
    p.Sample("recstream_exchange_batches_total", {"kind", "incomplete"},
             double(x.incomplete_batches));
    p.Header("recstream_exchange_sent_bytes_total", "counter",
             "Bytes of changes sent to other trainers.");
    p.Sample("recstream_exchange_sent_bytes_total", double(x.sent_bytes));
    p.Header("recstream_exchange_outbox", "gauge", "Batches of changes taken, not sent yet.");
    p.Sample("recstream_exchange_outbox", double(x.outbox));
    p.Header("recstream_exchange_followed_versions_total", "counter",
             "Other trainers' published versions followed.");
    p.Sample("recstream_exchange_followed_versions_total", double(x.followed_versions));
    p.Header("recstream_exchange_errors_total", "counter",
             "Sends that failed (sent again), changes refused and unreadable update records.");
    p.Sample("recstream_exchange_errors_total", double(x.errors + x.bad_records));
  }
  p.Header("recstream_assigned_partitions", "gauge",
           "Event-topic partitions this trainer owns and consumes.");
  p.Sample("recstream_assigned_partitions", static_cast<double>(st.assigned_partitions.size()));
  p.Header("recstream_missing_partitions", "gauge",
           "Partitions assigned or stored that are no longer in the topics' metadata.");
  p.Sample("recstream_missing_partitions", static_cast<double>(st.missing_partitions.size()));

  if (st.publishing) {
    p.Header("recstream_model_versions_published_total", "counter",
             "Versions of the model published to the model topic and acknowledged.");
    p.Sample("recstream_model_versions_published_total", double(st.published_versions));
    p.Header("recstream_model_publish_failures_total", "counter",
             "Versions whose publishing failed (the next one carries the whole model).");
    p.Sample("recstream_model_publish_failures_total", double(st.publish_failures));
    p.Header("recstream_model_published_bytes_total", "counter",
             "Key and value bytes acknowledged on the model topic.");
    p.Sample("recstream_model_published_bytes_total", double(st.published_bytes));
    p.Header("recstream_model_publish_seconds", "gauge", "How long the last version took to publish.");
    p.Sample("recstream_model_publish_seconds", st.last_publish_ms / 1e3);
  }
  if (st.replica) {
    p.Header("recstream_replica_lag_ms", "gauge",
             "Age of the newest model version this replica applied (trainer clock), ms; -1 before any.");
    p.Sample("recstream_replica_lag_ms", st.replica_lag_ms);
    p.Header("recstream_replica_versions_applied_total", "counter", "Model versions applied.");
    p.Sample("recstream_replica_versions_applied_total", double(st.replica_versions_applied));
    p.Header("recstream_replica_bad_records_total", "counter",
             "Unreadable model-topic records, skipped.");
    p.Sample("recstream_replica_bad_records_total", double(st.replica_bad_records));
    p.Header("recstream_replica_incomplete_versions_total", "counter",
             "Versions dropped because their records did not match their commit.");
    p.Sample("recstream_replica_incomplete_versions_total", double(st.replica_incomplete_versions));
  }

  p.Header("recstream_consumer_lag", "gauge", "Messages behind the high watermark per partition.");
  for (const auto& l : st.lag) {
    p.Sample("recstream_consumer_lag", {"topic", l.topic, "partition", std::to_string(l.partition)},
             static_cast<double>(l.lag));
  }

  p.Header("recstream_task_loss_weight", "gauge", "Current weight of each task's loss.");
  for (Task t : learner::kAllTasks) {
    p.Sample("recstream_task_loss_weight", {"task", learner::TaskName(t)},
             ls.tasks[static_cast<int>(t)].loss_weight);
  }
  struct Metric {
    const char* name;
    const char* help;
    double learner::TaskStats::*field;
    bool rating;
  };
  const Metric kProgressive[] = {
      {"recstream_progressive_auc", "Progressive AUC (click, purchase).", &learner::TaskStats::auc,
       false},
      {"recstream_progressive_logloss", "Progressive log loss (click, purchase).",
       &learner::TaskStats::logloss, false},
      {"recstream_progressive_precision",
       "Progressive precision at the decision threshold (click, purchase).",
       &learner::TaskStats::precision, false},
      {"recstream_progressive_recall",
       "Progressive recall at the decision threshold (click, purchase).",
       &learner::TaskStats::recall, false},
      {"recstream_progressive_f1", "Progressive F1 at the decision threshold (click, purchase).",
       &learner::TaskStats::f1, false},
      {"recstream_progressive_mae", "Progressive MAE of clipped rating predictions.",
       &learner::TaskStats::mae, true},
      {"recstream_progressive_rmse", "Progressive RMSE of clipped rating predictions.",
       &learner::TaskStats::rmse, true},
  };
  for (const Metric& m : kProgressive) {
    p.Header(m.name, "gauge", m.help);
    for (Task t : learner::kAllTasks) {
      const learner::TaskStats& ts = ls.tasks[static_cast<int>(t)];
      if ((t == Task::kRating) != m.rating || ts.learned == 0) continue;
      p.Sample(m.name, {"task", learner::TaskName(t)}, ts.*m.field);
    }
  }
  p.Header("recstream_model_rows", "gauge", "Embedding rows per table.");
  p.Sample("recstream_model_rows", {"table", "user"}, static_cast<double>(ls.users));
  p.Sample("recstream_model_rows", {"table", "item"}, static_cast<double>(ls.items));
  p.Sample("recstream_model_rows", {"table", "feature"}, static_cast<double>(ls.features));
  p.Header("recstream_admission_refused_total", "counter",
           "Events whose user or item id was not admitted yet (model.admit_after): learned "
           "through the table's prior row.");
  p.Sample("recstream_admission_refused_total", {"table", "user"},
           static_cast<double>(ls.not_admitted_users));
  p.Sample("recstream_admission_refused_total", {"table", "item"},
           static_cast<double>(ls.not_admitted_items));
  p.Header("recstream_expired_rows_total", "counter",
           "Rows removed by expiry (model.expire.*) since start.");
  p.Sample("recstream_expired_rows_total", {"table", "user"}, static_cast<double>(ls.expired_users));
  p.Sample("recstream_expired_rows_total", {"table", "item"}, static_cast<double>(ls.expired_items));
  p.Sample("recstream_expired_rows_total", {"table", "feature"},
           static_cast<double>(ls.expired_features));
  p.Header("recstream_memory_limit_bytes", "gauge",
           "The memory limit of the model's rows (model.memory_limit_mb; 0: none).");
  p.Sample("recstream_memory_limit_bytes", static_cast<double>(ls.memory_limit_bytes));
  p.Header("recstream_model_bytes", "gauge",
           "Memory the model's rows take, estimated from row counts (with a memory limit).");
  p.Sample("recstream_model_bytes", static_cast<double>(ls.model_bytes));
  p.Header("recstream_evicted_rows_total", "counter",
           "Rows that left memory for the store under the memory limit, since start.");
  p.Sample("recstream_evicted_rows_total", {"table", "user"},
           static_cast<double>(ls.users_evicted));
  p.Header("recstream_reloaded_rows_total", "counter",
           "Rows read back from the store under the memory limit, since start.");
  p.Sample("recstream_reloaded_rows_total", {"table", "user"},
           static_cast<double>(ls.users_reloaded));
  p.Header("recstream_store_reads_total", "counter",
           "Reads of the store for rows that left memory (one per Train call or request).");
  p.Sample("recstream_store_reads_total", static_cast<double>(ls.store_reads));
  p.Header("recstream_store_read_errors_total", "counter",
           "Reads of the store for rows that left memory that failed.");
  p.Sample("recstream_store_read_errors_total", static_cast<double>(ls.store_read_errors));
  p.Header("recstream_nonfinite_updates_refused_total", "counter",
           "Updates refused because they would have written NaN or infinity.");
  p.Sample("recstream_nonfinite_updates_refused_total",
           static_cast<double>(ls.nonfinite_updates_refused));

  p.Header("recstream_checkpoint_completed_total", "counter", "Successful checkpoints.");
  p.Sample("recstream_checkpoint_completed_total", static_cast<double>(st.checkpoints));
  p.Header("recstream_checkpoint_ok", "gauge", "1 unless the last checkpoint attempt failed.");
  p.Sample("recstream_checkpoint_ok", st.checkpoint_ok ? 1 : 0);
  p.Header("recstream_checkpoint_last_timestamp_seconds", "gauge",
           "Unix time of the last successful checkpoint (0: none yet).");
  p.Sample("recstream_checkpoint_last_timestamp_seconds",
           static_cast<double>(st.last_checkpoint_ms) / 1000.0);
  p.Header("recstream_checkpoint_last_rows", "gauge", "Rows written by the last checkpoint.");
  p.Sample("recstream_checkpoint_last_rows", static_cast<double>(st.last_checkpoint_rows));
  p.Header("recstream_checkpoint_last_bytes", "gauge", "Bytes written by the last checkpoint.");
  p.Sample("recstream_checkpoint_last_bytes", static_cast<double>(st.last_checkpoint_bytes));
  p.Header("recstream_checkpoint_last_duration_seconds", "gauge",
           "Duration of the last checkpoint.");
  p.Sample("recstream_checkpoint_last_duration_seconds", st.last_checkpoint_duration_ms / 1000.0);

  p.Header("recstream_ready", "gauge",
           "1 when the model is loaded and the consumer has its partitions (as /readyz).");
  std::string why_not;
  bool ready = learner_ != nullptr && (hooks_ == nullptr || hooks_->Ready(&why_not));
  p.Sample("recstream_ready", ready ? 1 : 0);
  if (learner_ != nullptr) {
    const learner::LearnerOptions& lo = learner_->options();
    p.Header("recstream_model_info", "gauge", "The model's configuration, as labels; always 1.");
    p.Sample("recstream_model_info",
             {"arch", learner::ArchName(lo.arch), "weighting", learner::WeightingName(lo.weighting),
              "dim", std::to_string(lo.dim)},
             1);
  }
  p.Header("recstream_uptime_seconds", "gauge", "Seconds since the service started.");
  p.Sample("recstream_uptime_seconds", st.uptime_s);
  p.Header("recstream_events_per_second", "gauge", "Recent learning throughput.");
  p.Sample("recstream_events_per_second", st.events_per_second);

  p.Header("recstream_http_requests_total", "counter", "HTTP requests by route and status code.");
  for (int r = 0; r < kNumRoutes; ++r) {
    for (int c = 0; c < kNumCodes; ++c) {
      uint64_t n = counters_[r].by_code[c].load(std::memory_order_relaxed);
      if (n == 0) continue;
      p.Sample("recstream_http_requests_total",
               {"route", RouteName(r), "code", std::to_string(kCodes[c])}, static_cast<double>(n));
    }
  }
  p.Header("recstream_http_request_duration_seconds", "histogram",
           "Time to handle a request (excluding network I/O), by route.");
  for (int r = 0; r < kNumRoutes; ++r) {
    const RouteCounters& c = counters_[r];
    uint64_t cumulative = 0;
    for (int b = 0; b <= kNumBuckets; ++b) {
      cumulative += c.buckets[b].load(std::memory_order_relaxed);
      std::string le = b < kNumBuckets ? fmt::format("{}", kBuckets[b]) : "+Inf";
      p.Sample("recstream_http_request_duration_seconds_bucket", {"route", RouteName(r), "le", le},
               static_cast<double>(cumulative));
    }
    p.Sample("recstream_http_request_duration_seconds_sum", {"route", RouteName(r)},
             static_cast<double>(c.sum_ns.load(std::memory_order_relaxed)) * 1e-9);
    // The count is the +Inf bucket, so _count and _bucket{le="+Inf"} agree.
    p.Sample("recstream_http_request_duration_seconds_count", {"route", RouteName(r)},
             static_cast<double>(cumulative));
  }
  return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", std::move(out)};
}

}  // namespace recstream::serve
