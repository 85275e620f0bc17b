// EventParser: validates one JSON event (docs/interface.md section 1) and turns it into a
// learner::Event, or says precisely why it was rejected.
//
// Rules beyond the table in docs/interface.md section 1, decided here:
//  - Duplicate keys are accepted; the last occurrence wins.
//  - `null` for an optional field (label, ts, features, truth) means "absent";
//    `null` for a required field (type, user, item, value) is a bad value.
//  - Integer ids are canonicalised to decimal ("42" and 42 are the same id);
//    integers must be non-negative and fit in 64 bits; floats are not ids.
//  - `label` must be the number 0 or 1 (1.0 is the same JSON number as 1);
//    on rating events it is ignored, the label being `value`.
//  - `value` is required and checked only on rating events.
//  - `ts` must be a non-negative integer; absent, it is the time of arrival.
//  - Each feature is a string of 1..max_id_bytes bytes.
//  - `truth` must be an object with a finite number under "p" (in [0, 1]) for
//    click/purchase or under "mean" for rating; other keys in it are ignored.
//  - NaN, Infinity and numbers that overflow a double are reported as
//    non_finite (they are not JSON, but Python's json module writes them).
//
// Thread safety: an EventParser holds per-thread scratch state (the simdjson
// parser and a padded copy buffer); use one per thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "ingest/options.h"
#include "learner/event.h"

namespace recstream::ingest {

enum class RejectReason : uint8_t {
  kMalformedJson = 0,
  kInvalidUtf8,
  kTooLarge,
  kNotObject,
  kMissingType,
  kBadType,
  kMissingUser,
  kBadUser,
  kMissingItem,
  kBadItem,
  kIdTooLong,
  kBadLabel,
  kMissingValue,
  kBadValue,
  kRatingOutOfRange,
  kNonFinite,
  kBadTs,
  kBadFeatures,
  kTooManyFeatures,
  kBadTruth,
};
inline constexpr int kNumRejectReasons = static_cast<int>(RejectReason::kBadTruth) + 1;

// All reasons in enum order, for stats tables: index i is reason i.
inline constexpr std::array<RejectReason, kNumRejectReasons> kAllRejectReasons = [] {
  std::array<RejectReason, kNumRejectReasons> all{};
  for (int i = 0; i < kNumRejectReasons; ++i) all[i] = static_cast<RejectReason>(i);
  return all;
}();

// snake_case name, stable (used in metrics, stats and DLQ headers):
// "malformed_json", "invalid_utf8", "too_large", "not_object", "missing_type",
// "bad_type", "missing_user", "bad_user", "missing_item", "bad_item",
// "id_too_long", "bad_label", "missing_value", "bad_value",
// "rating_out_of_range", "non_finite", "bad_ts", "bad_features",
// "too_many_features", "bad_truth".
std::string_view RejectReasonName(RejectReason reason);
// Inverse of RejectReasonName; nullopt for anything else.
std::optional<RejectReason> ParseRejectReason(std::string_view name);

class EventParser {
 public:
  explicit EventParser(const ParserOptions& options);
  ~EventParser();
  EventParser(const EventParser&) = delete;
  EventParser& operator=(const EventParser&) = delete;

  // Parses `bytes` (any bytes at all; no padding needed) into *out.
  // Returns nullopt when the event is accepted; *out is then fully
  // overwritten (its string and vector capacity is reused, so passing the
  // same Event repeatedly avoids allocations). Otherwise returns the reason,
  // *out is unspecified, and *detail (if given) gets a short human-readable
  // explanation. `now_ms` is the arrival time used when `ts` is absent.
  // Never throws on bad input.
  std::optional<RejectReason> Parse(std::string_view bytes, learner::Event* out, int64_t now_ms,
                                    std::string* detail = nullptr);

  // Parse() checks and decodes an ordinary event in one pass of simdjson's
  // On-Demand API; an event it cannot take that way (a rejection, an unknown
  // or repeated key, a value of an unexpected type) goes through simdjson's
  // DOM, which decides. Both give the same result for every input.

 private:
  struct Impl;
  explicit EventParser(std::unique_ptr<Impl> impl);
  friend std::unique_ptr<EventParser> NewDomOnlyEventParserForTesting(const ParserOptions& options);
  std::unique_ptr<Impl> impl_;
};

// For tests and fuzzing only: a parser that sends every event through the DOM
// path, to compare Parse() against.
std::unique_ptr<EventParser> NewDomOnlyEventParserForTesting(const ParserOptions& options);

}  // namespace recstream::ingest
