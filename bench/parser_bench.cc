// parser_bench (Google Benchmark): ingest::EventParser::Parse on generated
// events (`recstream gen` lines, with side features and truth) and on a
// minimal event, reusing one Event as the service does.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "eval/generator.h"
#include "ingest/parser.h"

namespace {

std::vector<std::string> GeneratedLines(size_t n) {
  recstream::eval::GeneratorOptions go;
  go.events = n;
  go.users = 100000;
  go.items = 10000;
  recstream::eval::Generator gen(go);
  std::vector<std::string> lines;
  std::string line;
  while (gen.Next(&line)) lines.push_back(line);
  return lines;
}

void BM_ParseGenerated(benchmark::State& state) {
  static const std::vector<std::string> lines = GeneratedLines(4096);
  recstream::ingest::EventParser parser{recstream::ingest::ParserOptions()};
  recstream::learner::Event event;
  size_t i = 0, bytes = 0;
  for (auto _ : state) {
    const std::string& l = lines[i++ & 4095];
    bytes += l.size();
    auto reason = parser.Parse(l, &event, 0);
    benchmark::DoNotOptimize(reason);
  }
  state.SetItemsProcessed(int64_t(state.iterations()));
  state.SetBytesProcessed(int64_t(bytes));
}
BENCHMARK(BM_ParseGenerated);

void BM_ParseMinimal(benchmark::State& state) {
  const std::string line = R"({"type":"click","user":42,"item":"i7","label":1})";
  recstream::ingest::EventParser parser{recstream::ingest::ParserOptions()};
  recstream::learner::Event event;
  for (auto _ : state) {
    auto reason = parser.Parse(line, &event, 0);
    benchmark::DoNotOptimize(reason);
  }
  state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(BM_ParseMinimal);

void BM_RejectMalformed(benchmark::State& state) {
  const std::string line = R"({"type":"click","user":42,"item":"i7","label":1)";
  recstream::ingest::EventParser parser{recstream::ingest::ParserOptions()};
  recstream::learner::Event event;
  std::string detail;
  for (auto _ : state) {
    auto reason = parser.Parse(line, &event, 0, &detail);
    benchmark::DoNotOptimize(reason);
  }
  state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(BM_RejectMalformed);

}  // namespace

BENCHMARK_MAIN();
