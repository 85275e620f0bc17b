#include "eval/batch_parser.h"

#include <catch2/catch.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "eval/generator.h"
#include "learner/learner.h"

namespace recstream::eval {
namespace {

using ingest::RejectReason;
using learner::Event;

// `count` generated lines; every seventh replaced by a bad one (three kinds
// in turn), so that rejected lines fall inside every task's range.
std::vector<std::string> MixedLines(size_t count) {
  GeneratorOptions options;
  options.events = count;
  options.users = 50;
  options.items = 40;
  Generator gen(options);
  std::vector<std::string> lines;
  std::string line;
  while (gen.Next(&line)) lines.push_back(line);
  const std::string bad[] = {R"({"type":"click","user":"u1")",
                             R"({"type":"rating","user":"u1","item":"i1","value":99})",
                             R"({"type":"click","item":"i1"})"};
  for (size_t i = 3; i < lines.size(); i += 7) lines[i] = bad[(i / 7) % 3];
  return lines;
}

TEST_CASE(
    "BatchParser: accepted events in line order, rejections counted, on 1 and 2 threads of its "
    "own and on a learner's",
    "[eval]") {
  // 1 or 2: threads of its own; 0: the threads of a two-thread learner.
  const int threads = GENERATE(1, 2, 0);
  const std::vector<std::string> lines = MixedLines(3000);  // about 12 tasks of 256 lines

  // What one EventParser makes of the lines, one after the other.
  ingest::EventParser one(ingest::ParserOptions{});
  std::vector<Event> expected;
  std::vector<RejectReason> expected_rejected;
  for (const std::string& l : lines) {
    Event e;
    if (auto reason = one.Parse(l, &e, 42)) {
      expected_rejected.push_back(*reason);
    } else {
      expected.push_back(e);
    }
  }
  REQUIRE(expected_rejected.size() > 400);
  REQUIRE(expected_rejected.size() < lines.size());

  std::unique_ptr<learner::Learner> model;
  learner::LearnerOptions lo;
  lo.threads = 2;
  REQUIRE(learner::Learner::Create(lo, &model).ok());
  auto parser =
      threads > 0
          ? std::make_unique<BatchParser>(ingest::ParserOptions{}, threads)
          : std::make_unique<BatchParser>(
                ingest::ParserOptions{},
                [&model](size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
                  model->ParallelFor(n, grain, fn);
                });
  std::vector<Event> out(lines.size());
  // Twice over the same `out`: the second pass reuses the swapped events.
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<RejectReason> rejected;
    const size_t accepted = parser->Parse(lines, 42, out, &rejected);
    REQUIRE(accepted == expected.size());
    CHECK(rejected == expected_rejected);
    size_t differ = 0;
    for (size_t i = 0; i < accepted; ++i) differ += out[i] != expected[i];
    CHECK(differ == 0);
  }
}

TEST_CASE("BatchParser: an empty batch and a batch of only bad lines", "[eval]") {
  BatchParser parser(ingest::ParserOptions{}, 2);
  std::vector<Event> out(4);
  std::vector<RejectReason> rejected;
  CHECK(parser.Parse({}, 0, out, &rejected) == 0);
  CHECK(rejected.empty());
  const std::vector<std::string> bad = {"not json", "{}", "[1,2]"};
  CHECK(parser.Parse(bad, 0, out, &rejected) == 0);
  CHECK(rejected.size() == 3);
  CHECK(rejected[0] == RejectReason::kMalformedJson);
}

}  // namespace
}  // namespace recstream::eval
