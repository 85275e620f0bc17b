// libFuzzer target: EventParser::Parse on arbitrary bytes. It must never
// crash, an accepted event must satisfy the contract of ingest/parser.h, and
// Parse (On-Demand fast path, DOM otherwise) must agree with the DOM path.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "ingest/parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static recstream::ingest::ParserOptions options;
  static recstream::ingest::EventParser parser(options);
  static auto dom = recstream::ingest::NewDomOnlyEventParserForTesting(options);
  recstream::learner::Event event, dom_event;
  std::string detail;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto reason = parser.Parse(bytes, &event, 1700000000000, &detail);
  auto dom_reason = dom->Parse(bytes, &dom_event, 1700000000000);
  if (reason != dom_reason) std::abort();
  if (!reason && event != dom_event) std::abort();
  if (!reason) {
    // Accepted: ids are non-empty and short, the label is finite, the
    // features within limits.
    if (event.user.empty() || event.user.size() > options.max_id_bytes) std::abort();
    if (event.item.empty() || event.item.size() > options.max_id_bytes) std::abort();
    if (!std::isfinite(event.label)) std::abort();
    if (event.user_features.size() > options.max_features) std::abort();
    if (event.item_features.size() > options.max_features) std::abort();
  } else if (recstream::ingest::RejectReasonName(*reason).empty()) {
    std::abort();
  }
  return 0;
}
