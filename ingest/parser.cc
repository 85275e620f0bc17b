#include "ingest/parser.h"

#include <simdjson.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

namespace recstream::ingest {

namespace {

constexpr std::string_view kReasonNames[kNumRejectReasons] = {
    "malformed_json", "invalid_utf8", "too_large",     "not_object",        "missing_type",
    "bad_type",       "missing_user", "bad_user",      "missing_item",      "bad_item",
    "id_too_long",    "bad_label",    "missing_value", "bad_value",         "rating_out_of_range",
    "non_finite",     "bad_ts",       "bad_features",  "too_many_features", "bad_truth",
};

using simdjson::dom::element;
using simdjson::dom::element_type;

// On the (rare) parse-failure path: does the text hold a number JSON cannot
// represent as a finite double (NaN, Infinity, 1e999)? Strings are skipped.
bool HasNonFiniteToken(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    char c = s[i];
    if (c == '"') {
      ++i;
      while (i < n && s[i] != '"') i += (s[i] == '\\') ? 2 : 1;
      ++i;
      continue;
    }
    if (c == 'N' && s.substr(i, 3) == "NaN") return true;
    if (c == 'I' && s.substr(i, 8) == "Infinity") return true;
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t j = i + 1;
      while (j < n && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.' ||
                       s[j] == 'e' || s[j] == 'E' || s[j] == '+' || s[j] == '-')) {
        ++j;
      }
      std::string token(s.substr(i, j - i));
      char* end = nullptr;
      double v = std::strtod(token.c_str(), &end);
      if (end != token.c_str() && std::isinf(v)) return true;
      i = j;
      continue;
    }
    ++i;
  }
  return false;
}

}  // namespace

std::string_view RejectReasonName(RejectReason reason) {
  int i = static_cast<int>(reason);
  if (i < 0 || i >= kNumRejectReasons) return "unknown";
  return kReasonNames[i];
}

std::optional<RejectReason> ParseRejectReason(std::string_view name) {
  for (int i = 0; i < kNumRejectReasons; ++i) {
    if (kReasonNames[i] == name) return static_cast<RejectReason>(i);
  }
  return std::nullopt;
}

namespace {

// The top-level keys of an event (both parse paths; one bit each in the
// fast path's `seen` mask).
enum Key : int {
  kKeyType,
  kKeyUser,
  kKeyItem,
  kKeyLabel,
  kKeyValue,
  kKeyTs,
  kKeyUserFeatures,
  kKeyItemFeatures,
  kKeyTruth,
  kKeyUnknown
};

Key KeyOf(std::string_view k) {
  switch (k.size()) {
    case 2:
      return k == "ts" ? kKeyTs : kKeyUnknown;
    case 4:
      return k == "type" ? kKeyType : k == "user" ? kKeyUser : k == "item" ? kKeyItem : kKeyUnknown;
    case 5:
      return k == "label"   ? kKeyLabel
             : k == "value" ? kKeyValue
             : k == "truth" ? kKeyTruth
                            : kKeyUnknown;
    case 13:
      return k == "user_features"   ? kKeyUserFeatures
             : k == "item_features" ? kKeyItemFeatures
                                    : kKeyUnknown;
    default:
      return kKeyUnknown;
  }
}

}  // namespace

struct EventParser::Impl {
  Impl(const ParserOptions& o, bool dom_only) : options(o), dom_only(dom_only) {}

  ParserOptions options;
  const bool dom_only;  // tests: every event through the DOM path
  simdjson::dom::parser parser;
  simdjson::ondemand::parser fast_parser;
  // The input copied with SIMDJSON_PADDING readable bytes after it; reused.
  std::vector<char> padded;

  // The fast path: simdjson's On-Demand API reads the fields straight from
  // the structural index, without building the DOM's tape first. It takes
  // only events it can check completely: each known key once, no other key, every value of the type
  // the rules expect and the rules met.
  // For anything else it returns false and Parse() hands the event to the
  // DOM path, which stays the one definition of the rules and of every
  // rejection (bad events are rare, so they may cost a second parse).
  // Writes *out as it goes; on false, *out is unspecified.
  bool ParseFast(size_t size, learner::Event* out, int64_t now_ms) {
    namespace od = simdjson::ondemand;
    using simdjson::SUCCESS;
    od::document doc;
    if (fast_parser.iterate(padded.data(), size, padded.size()).get(doc) != SUCCESS) return false;
    od::object obj;
    if (doc.get_object().get(obj) != SUCCESS) return false;
    std::string_view type_name;
    double label = 1.0, value = 0.0, truth_p = -1.0, truth_mean = 0.0;
    bool has_label = false, has_value = false, has_p = false, has_mean = false, has_uf = false,
         has_if = false, has_truth = false;
    int64_t ts = now_ms;
    uint32_t seen = 0;
    for (auto field_result : obj) {
      od::field field;
      if (std::move(field_result).get(field) != SUCCESS) return false;
      // The key as written, without unescaping it: a key with an escape
      // counts as unknown, and the DOM path decides.
      const char* raw = field.key().raw();
      size_t key_size = 0;
      for (; raw[key_size] != '"'; ++key_size)
        if (raw[key_size] == '\\') return false;
      const Key k = KeyOf(std::string_view(raw, key_size));
      if (k == kKeyUnknown || (seen & (1u << k))) return false;
      seen |= 1u << k;
      od::value v = field.value();
      bool null = false;
      if (k != kKeyType && k != kKeyUser && k != kKeyItem &&
          (v.is_null().get(null) != SUCCESS || null)) {
        if (!null) return false;
        continue;  // null: absent (a required `value` is then missing)
      }
      switch (k) {
        case kKeyType:
          if (v.get_string().get(type_name) != SUCCESS) return false;
          break;
        case kKeyUser:
          if (!FastId(v, &out->user)) return false;
          break;
        case kKeyItem:
          if (!FastId(v, &out->item)) return false;
          break;
        case kKeyLabel:
          if (!FastNumber(v, &label)) return false;
          has_label = true;
          break;
        case kKeyValue:
          if (!FastNumber(v, &value)) return false;
          has_value = true;
          break;
        case kKeyTs: {
          od::number_type t;
          if (v.get_number_type().get(t) != SUCCESS || t != od::number_type::signed_integer ||
              v.get_int64().get(ts) != SUCCESS || ts < 0)
            return false;
          break;
        }
        case kKeyUserFeatures:
          if (!FastFeatures(v, &out->user_features)) return false;
          has_uf = true;
          break;
        case kKeyItemFeatures:
          if (!FastFeatures(v, &out->item_features)) return false;
          has_if = true;
          break;
        case kKeyTruth: {
          od::object t;
          if (v.get_object().get(t) != SUCCESS) return false;
          for (auto tf_result : t) {
            od::field tf;
            std::string_view tk;
            if (std::move(tf_result).get(tf) != SUCCESS || tf.unescaped_key().get(tk) != SUCCESS)
              return false;
            bool* has = tk == "p" ? &has_p : tk == "mean" ? &has_mean : nullptr;
            if (has == nullptr || *has) return false;
            if (!FastNumber(tf.value(), tk == "p" ? &truth_p : &truth_mean)) return false;
            *has = true;
          }
          has_truth = true;
          break;
        }
        case kKeyUnknown:
          return false;
      }
    }
    // Nothing after the object (the DOM path rejects trailing content).
    if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS) return false;

    // The rules, as the DOM path applies them.
    if (!(seen & (1u << kKeyType)) || !(seen & (1u << kKeyUser)) || !(seen & (1u << kKeyItem)))
      return false;
    const std::optional<learner::Task> task = learner::ParseTask(type_name);
    if (!task) return false;
    out->task = *task;
    const bool rating = *task == learner::Task::kRating;
    if (rating) {
      if (!has_value || !std::isfinite(value) || value < options.rating_min ||
          value > options.rating_max)
        return false;
      out->label = static_cast<float>(value);
    } else {
      if (has_label && label != 0.0 && label != 1.0) return false;
      out->label = static_cast<float>(label);
    }
    out->ts_ms = ts;
    if (!has_uf) out->user_features.clear();
    if (!has_if) out->item_features.clear();
    out->has_truth = false;
    out->truth = 0.0;
    if (has_truth) {
      const double t = rating ? truth_mean : truth_p;
      if (!(rating ? has_mean : has_p) || !std::isfinite(t) || (!rating && (t < 0.0 || t > 1.0)))
        return false;
      out->has_truth = true;
      out->truth = t;
    }
    return true;
  }

  // A string id of 1..max_id_bytes bytes, or a non-negative integer.
  bool FastId(simdjson::ondemand::value v, std::string* out) const {
    namespace od = simdjson::ondemand;
    using simdjson::SUCCESS;
    od::json_type type;
    if (v.type().get(type) != SUCCESS) return false;
    if (type == od::json_type::string) {
      std::string_view s;
      if (v.get_string().get(s) != SUCCESS || s.empty() || s.size() > options.max_id_bytes)
        return false;
      out->assign(s.data(), s.size());
      return true;
    }
    od::number_type t;
    if (type != od::json_type::number || v.get_number_type().get(t) != SUCCESS) return false;
    uint64_t u = 0;
    if (t == od::number_type::signed_integer) {
      int64_t i = 0;
      if (v.get_int64().get(i) != SUCCESS || i < 0) return false;
      u = static_cast<uint64_t>(i);
    } else if (t != od::number_type::unsigned_integer || v.get_uint64().get(u) != SUCCESS) {
      return false;
    }
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof(buf), u);
    out->assign(buf, res.ptr);
    return true;
  }

  static bool FastNumber(simdjson::ondemand::value v, double* out) {
    simdjson::ondemand::json_type type;
    return v.type().get(type) == simdjson::SUCCESS &&
           type == simdjson::ondemand::json_type::number &&
           v.get_double().get(*out) == simdjson::SUCCESS;
  }

  // An array of at most max_features strings of 1..max_id_bytes bytes; the
  // strings of *out are reused.
  bool FastFeatures(simdjson::ondemand::value v, std::vector<std::string>* out) const {
    simdjson::ondemand::array arr;
    if (v.get_array().get(arr) != simdjson::SUCCESS) return false;
    size_t n = 0;
    for (auto e : arr) {
      std::string_view s;
      if (e.get_string().get(s) != simdjson::SUCCESS || s.empty() ||
          s.size() > options.max_id_bytes || n == options.max_features)
        return false;
      if (n < out->size()) {
        (*out)[n].assign(s.data(), s.size());
      } else {
        out->emplace_back(s);
      }
      ++n;
    }
    out->resize(n);
    return true;
  }

  // Sets *detail (if any) and returns `reason`.
  static std::optional<RejectReason> Reject(RejectReason reason, std::string* detail,
                                            std::string_view what) {
    if (detail != nullptr) detail->assign(what);
    return reason;
  }

  // Reads a user or item id: a string of 1..max_id_bytes bytes, or a
  // non-negative 64-bit integer rendered in decimal.
  std::optional<RejectReason> ReadId(element e, RejectReason bad, const char* field,
                                     std::string* out, std::string* detail) const {
    switch (e.type()) {
      case element_type::STRING: {
        std::string_view s;
        if (e.get_string().get(s) != simdjson::SUCCESS) return Reject(bad, detail, field);
        if (s.empty()) return Reject(bad, detail, std::string(field) + " is an empty string");
        if (s.size() > options.max_id_bytes) {
          return Reject(RejectReason::kIdTooLong, detail,
                        std::string(field) + " is " + std::to_string(s.size()) +
                            " bytes, longer than " + std::to_string(options.max_id_bytes));
        }
        out->assign(s.data(), s.size());
        return std::nullopt;
      }
      case element_type::INT64:
      case element_type::UINT64: {
        uint64_t v = 0;
        if (e.type() == element_type::INT64) {
          int64_t sv = 0;
          if (e.get_int64().get(sv) != simdjson::SUCCESS || sv < 0) {
            return Reject(bad, detail, std::string(field) + " is a negative integer");
          }
          v = static_cast<uint64_t>(sv);
        } else if (e.get_uint64().get(v) != simdjson::SUCCESS) {
          return Reject(bad, detail, field);
        }
        char buf[24];
        auto res = std::to_chars(buf, buf + sizeof(buf), v);
        out->assign(buf, res.ptr);
        return std::nullopt;
      }
      default:
        return Reject(bad, detail,
                      std::string(field) + " must be a string or a non-negative integer");
    }
  }

  std::optional<RejectReason> ReadFeatures(element e, const char* field,
                                           std::vector<std::string>* out,
                                           std::string* detail) const {
    out->clear();
    if (e.is_null()) return std::nullopt;
    simdjson::dom::array arr;
    if (e.get_array().get(arr) != simdjson::SUCCESS) {
      return Reject(RejectReason::kBadFeatures, detail,
                    std::string(field) + " must be an array of strings");
    }
    size_t n = arr.size();
    if (n > options.max_features) {
      return Reject(RejectReason::kTooManyFeatures, detail,
                    std::string(field) + " has " + std::to_string(n) + " entries, more than " +
                        std::to_string(options.max_features));
    }
    out->resize(n);
    size_t i = 0;
    for (element f : arr) {
      std::string_view s;
      if (f.get_string().get(s) != simdjson::SUCCESS || s.empty() ||
          s.size() > options.max_id_bytes) {
        return Reject(RejectReason::kBadFeatures, detail,
                      std::string(field) + " entries must be strings of 1.." +
                          std::to_string(options.max_id_bytes) + " bytes");
      }
      (*out)[i++].assign(s.data(), s.size());
    }
    return std::nullopt;
  }

  std::optional<RejectReason> Parse(std::string_view bytes, learner::Event* out, int64_t now_ms,
                                    std::string* detail) {
    if (bytes.size() > options.max_event_bytes) {
      return Reject(RejectReason::kTooLarge, detail,
                    "event is " + std::to_string(bytes.size()) + " bytes, more than " +
                        std::to_string(options.max_event_bytes));
    }
    if (padded.size() < bytes.size() + simdjson::SIMDJSON_PADDING) {
      padded.resize(bytes.size() + simdjson::SIMDJSON_PADDING);
    }
    if (!bytes.empty()) std::memcpy(padded.data(), bytes.data(), bytes.size());
    std::memset(padded.data() + bytes.size(), 0, simdjson::SIMDJSON_PADDING);
    if (!dom_only && ParseFast(bytes.size(), out, now_ms)) return std::nullopt;

    element doc;
    simdjson::error_code err = parser.parse(padded.data(), bytes.size(), false).get(doc);
    if (err != simdjson::SUCCESS) {
      // Report bad UTF-8 even when the parser stopped at another error first.
      if (err == simdjson::UTF8_ERROR || !simdjson::validate_utf8(bytes.data(), bytes.size())) {
        return Reject(RejectReason::kInvalidUtf8, detail, "invalid UTF-8");
      }
      if (HasNonFiniteToken(bytes)) {
        return Reject(RejectReason::kNonFinite, detail, "NaN or infinite number");
      }
      return Reject(RejectReason::kMalformedJson, detail, simdjson::error_message(err));
    }
    simdjson::dom::object obj;
    if (doc.get_object().get(obj) != simdjson::SUCCESS) {
      return Reject(RejectReason::kNotObject, detail, "event is not a JSON object");
    }

    // One pass over the fields; later duplicates overwrite earlier ones.
    element type_e, user_e, item_e, label_e, value_e, ts_e, uf_e, if_e, truth_e;
    bool has_type = false, has_user = false, has_item = false, has_label = false, has_value = false,
         has_ts = false, has_uf = false, has_if = false, has_truth = false;
    for (simdjson::dom::key_value_pair field : obj) {
      switch (KeyOf(field.key)) {
        case kKeyType:
          type_e = field.value, has_type = true;
          break;
        case kKeyUser:
          user_e = field.value, has_user = true;
          break;
        case kKeyItem:
          item_e = field.value, has_item = true;
          break;
        case kKeyLabel:
          label_e = field.value, has_label = true;
          break;
        case kKeyValue:
          value_e = field.value, has_value = true;
          break;
        case kKeyTs:
          ts_e = field.value, has_ts = true;
          break;
        case kKeyUserFeatures:
          uf_e = field.value, has_uf = true;
          break;
        case kKeyItemFeatures:
          if_e = field.value, has_if = true;
          break;
        case kKeyTruth:
          truth_e = field.value, has_truth = true;
          break;
        case kKeyUnknown:
          break;
      }
    }

    // type
    if (!has_type) return Reject(RejectReason::kMissingType, detail, "no \"type\"");
    std::string_view type_name;
    if (type_e.get_string().get(type_name) != simdjson::SUCCESS) {
      return Reject(RejectReason::kBadType, detail, "\"type\" must be a string");
    }
    std::optional<learner::Task> task = learner::ParseTask(type_name);
    if (!task) {
      return Reject(RejectReason::kBadType, detail,
                    "\"type\" must be click, purchase or rating, not \"" +
                        std::string(type_name.substr(0, 64)) + "\"");
    }
    out->task = *task;

    // ids
    if (!has_user) return Reject(RejectReason::kMissingUser, detail, "no \"user\"");
    if (auto r = ReadId(user_e, RejectReason::kBadUser, "user", &out->user, detail)) return r;
    if (!has_item) return Reject(RejectReason::kMissingItem, detail, "no \"item\"");
    if (auto r = ReadId(item_e, RejectReason::kBadItem, "item", &out->item, detail)) return r;

    // label / value
    if (*task == learner::Task::kRating) {
      if (!has_value)
        return Reject(RejectReason::kMissingValue, detail, "rating without \"value\"");
      double v = 0;
      if (value_e.get_double().get(v) != simdjson::SUCCESS) {
        return Reject(RejectReason::kBadValue, detail, "\"value\" must be a number");
      }
      if (!std::isfinite(v)) return Reject(RejectReason::kNonFinite, detail, "\"value\"");
      if (v < options.rating_min || v > options.rating_max) {
        return Reject(RejectReason::kRatingOutOfRange, detail,
                      "rating " + std::to_string(v) + " outside [" +
                          std::to_string(options.rating_min) + ", " +
                          std::to_string(options.rating_max) + "]");
      }
      out->label = static_cast<float>(v);
    } else {
      out->label = 1.0f;
      if (has_label && !label_e.is_null()) {
        double v = -1;
        if (!label_e.is_number() || label_e.get_double().get(v) != simdjson::SUCCESS ||
            (v != 0.0 && v != 1.0)) {
          return Reject(RejectReason::kBadLabel, detail, "\"label\" must be 0 or 1");
        }
        out->label = static_cast<float>(v);
      }
    }

    // ts
    out->ts_ms = now_ms;
    if (has_ts && !ts_e.is_null()) {
      int64_t ts = -1;
      if ((ts_e.type() != element_type::INT64 && ts_e.type() != element_type::UINT64) ||
          ts_e.get_int64().get(ts) != simdjson::SUCCESS || ts < 0) {
        return Reject(RejectReason::kBadTs, detail,
                      "\"ts\" must be a non-negative integer (ms since the epoch)");
      }
      out->ts_ms = ts;
    }

    // features
    if (has_uf) {
      if (auto r = ReadFeatures(uf_e, "user_features", &out->user_features, detail)) return r;
    } else {
      out->user_features.clear();
    }
    if (has_if) {
      if (auto r = ReadFeatures(if_e, "item_features", &out->item_features, detail)) return r;
    } else {
      out->item_features.clear();
    }

    // truth
    out->has_truth = false;
    out->truth = 0.0;
    if (has_truth && !truth_e.is_null()) {
      const bool rating = *task == learner::Task::kRating;
      const char* key = rating ? "mean" : "p";
      simdjson::dom::object t;
      element tv;
      double v = 0;
      if (truth_e.get_object().get(t) != simdjson::SUCCESS ||
          t.at_key(key).get(tv) != simdjson::SUCCESS ||
          tv.get_double().get(v) != simdjson::SUCCESS || !std::isfinite(v) ||
          (!rating && (v < 0.0 || v > 1.0))) {
        return Reject(RejectReason::kBadTruth, detail,
                      rating ? "\"truth\" must be {\"mean\": number}"
                             : "\"truth\" must be {\"p\": number in [0, 1]}");
      }
      out->has_truth = true;
      out->truth = v;
    }
    return std::nullopt;
  }
};

EventParser::EventParser(const ParserOptions& options)
    : impl_(std::make_unique<Impl>(options, /*dom_only=*/false)) {}

EventParser::EventParser(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::unique_ptr<EventParser> NewDomOnlyEventParserForTesting(const ParserOptions& options) {
  return std::unique_ptr<EventParser>(
      new EventParser(std::make_unique<EventParser::Impl>(options, /*dom_only=*/true)));
}
EventParser::~EventParser() = default;

std::optional<RejectReason> EventParser::Parse(std::string_view bytes, learner::Event* out,
                                               int64_t now_ms, std::string* detail) {
  return impl_->Parse(bytes, out, now_ms, detail);
}

}  // namespace recstream::ingest
