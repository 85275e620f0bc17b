// recstream: the command line of docs/interface.md section 4.
//   serve, replica, broker, produce, gen, eval, config, import-embeddings
// Exit codes: 0 success, 2 usage or configuration error, 1 run-time failure.
#include <fmt/format.h>
#include <signal.h>
#include <simdjson.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "app/replica.h"
#include "app/service.h"
#include "config/config.h"
#include "eval/evaluator.h"
#include "eval/generator.h"
#include "eval/implicit_generator.h"
#include "ingest/kafka.h"
#include "learner/learner.h"
#include "store/checkpoint_store.h"

namespace recstream::app {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// Blocks SIGINT and SIGTERM in every thread (call before starting any) so
// that WaitForSignal can take them synchronously.
sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int WaitForSignal(const sigset_t& set) {
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

// A progress line on stderr for long commands, redrawn at most once a
// second: how many events, how fast, and when the total is known how far and
// how long is left. Silent when stderr is not a terminal (logs, pipes, CI)
// or with --quiet; Finish() clears it.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled, std::string unit = "events")
      : enabled_(enabled && isatty(STDERR_FILENO)),
        unit_(std::move(unit)),
        start_(std::chrono::steady_clock::now()) {}
  ~ProgressLine() { Finish(); }

  // `fraction` of the work done, in [0, 1]; negative when unknown.
  void Update(uint64_t events, double fraction) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (now < next_) return;
    next_ = now + std::chrono::seconds(1);
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = secs > 0 ? double(events) / secs : 0;
    std::string line = fmt::format("{} {}, {:.0f}/s", events, unit_, rate);
    if (fraction > 0 && fraction <= 1) {
      double left = secs * (1 - fraction) / fraction;
      line += fmt::format(", {:.0f}%, {} left", 100 * fraction, Duration(left));
    }
    std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
    std::fflush(stderr);
    shown_ = true;
  }

  void Finish() {
    if (!shown_) return;
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
    shown_ = false;
  }

  bool enabled() const { return enabled_; }

 private:
  static std::string Duration(double secs) {
    long s = std::lround(secs);
    if (s < 60) return fmt::format("{}s", s);
    if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
    return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  }

  const bool enabled_;
  const std::string unit_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point next_ = start_;  // the first update draws at once
  bool shown_ = false;
};

struct ConfigFlags {
  std::string file;
  std::vector<std::string> sets;
  void Add(CLI::App* cmd) {
    cmd->add_option("--config", file, "TOML configuration file");
    cmd->add_option("--set", sets, "override a configuration key: key=value (repeatable)");
  }
  // Loads the effective configuration; prints the error and returns false on failure.
  bool Load(config::AppConfig* out, std::vector<config::ConfigSource>* sources = nullptr) const {
    Status s = config::Load(file, sets, config::CurrentEnvironment(), out, sources);
    if (!s.ok()) {
      std::fprintf(stderr, "recstream: configuration error: %s\n", s.message().c_str());
      return false;
    }
    spdlog::set_level(spdlog::level::from_str(out->log_level));
    return true;
  }
};

int RunServe(const ConfigFlags& flags) {
  config::AppConfig cfg;
  if (!flags.Load(&cfg)) return kExitUsage;
  sigset_t signals = BlockStopSignals();
  TuneMalloc();
  spdlog::info("starting: model {}/{} dim {}, store {} (checkpoint every {} ms), log level {}",
               learner::ArchName(cfg.learner.arch), learner::WeightingName(cfg.learner.weighting),
               cfg.learner.dim, cfg.store.path, cfg.store.checkpoint_interval_ms, cfg.log_level);
  std::unique_ptr<Service> service;
  Status s = Service::Start(cfg, &service);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: cannot start: %s\n", s.ToString().c_str());
    return s.IsInvalidArgument() ? kExitUsage : kExitFailure;
  }
  std::printf("recstream: Kafka bootstrap servers %s%s\n", service->kafka_brokers().c_str(),
              cfg.kafka.brokers.empty() ? " (embedded)" : "");
  std::printf(
      "recstream: serving on http://%s/  (dashboard; API: /v1/score, /v1/recommend, /v1/stats)\n",
      service->http_address().c_str());
  std::fflush(stdout);
  int sig = WaitForSignal(signals);
  spdlog::info("received signal {}: checkpointing and stopping", sig);
  s = service->Shutdown();
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: final checkpoint failed: %s\n", s.ToString().c_str());
    return kExitFailure;
  }
  spdlog::info("stopped; final checkpoint stored in {}", cfg.store.path);
  return kExitOk;
}

int RunReplica(const ConfigFlags& flags) {
  config::AppConfig cfg;
  if (!flags.Load(&cfg)) return kExitUsage;
  if (cfg.kafka.brokers.empty()) {
    std::fprintf(stderr,
                 "recstream: configuration error: kafka.brokers is empty; a replica follows the "
                 "model topic on the brokers its trainer uses (set kafka.brokers)\n");
    return kExitUsage;
  }
  sigset_t signals = BlockStopSignals();
  TuneMalloc();
  // The learner is built with the trainer's model settings on top of this
  // replica's own configuration.
  auto configure = [flags](const std::string& settings, config::AppConfig* out) {
    std::vector<std::string> sets = flags.sets;
    for (std::string& s : config::SettingsAsFlags(settings)) sets.push_back(std::move(s));
    return config::Load(flags.file, sets, config::CurrentEnvironment(), out);
  };
  std::unique_ptr<Replica> replica;
  Status s = Replica::Start(cfg, configure, &replica);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: cannot start: %s\n", s.ToString().c_str());
    return s.IsInvalidArgument() ? kExitUsage : kExitFailure;
  }
  std::printf("recstream: replica of %s on %s, serving on http://%s/\n",
              cfg.kafka.topics.model.c_str(), cfg.kafka.brokers.c_str(),
              replica->http_address().c_str());
  std::fflush(stdout);
  int sig = WaitForSignal(signals);
  spdlog::info("received signal {}: stopping", sig);
  (void)replica->Shutdown();
  return kExitOk;
}

int RunBroker(int partitions, const std::string& bootstrap_file) {
  sigset_t signals = BlockStopSignals();
  std::unique_ptr<ingest::EmbeddedKafka> kafka;
  ingest::TopicNames topics;
  Status s = ingest::EmbeddedKafka::Start(1, partitions, topics, &kafka);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: cannot start the embedded Kafka: %s\n", s.ToString().c_str());
    return kExitFailure;
  }
  if (!bootstrap_file.empty()) {
    // Write then rename, so a reader never sees a partial address.
    std::string tmp = bootstrap_file + ".tmp";
    std::ofstream(tmp) << kafka->bootstrap() << "\n";
    if (std::rename(tmp.c_str(), bootstrap_file.c_str()) != 0) {
      std::fprintf(stderr, "recstream: cannot write %s\n", bootstrap_file.c_str());
      return kExitFailure;
    }
  }
  std::printf("%s\n", kafka->bootstrap().c_str());
  std::fflush(stdout);
  WaitForSignal(signals);
  return kExitOk;
}

int RunProduce(const ConfigFlags& flags, std::string brokers, double rate, const std::string& path,
               bool quiet) {
  config::AppConfig cfg;
  if (!flags.Load(&cfg)) return kExitUsage;
  if (brokers.empty()) brokers = cfg.kafka.brokers;
  if (brokers.empty()) {
    std::fprintf(stderr, "recstream: produce needs --brokers (or kafka.brokers)\n");
    return kExitUsage;
  }
  std::ifstream file;
  std::istream* in = &std::cin;
  uint64_t total_bytes = 0;  // 0: unknown (standard input, a pipe)
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) {
      std::fprintf(stderr, "recstream: cannot open %s\n", path.c_str());
      return kExitFailure;
    }
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) total_bytes = uint64_t(st.st_size);
    in = &file;
  }
  std::unique_ptr<ingest::EventProducer> producer;
  Status s = ingest::EventProducer::Open(brokers, cfg.kafka.topics, &producer);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: %s\n", s.ToString().c_str());
    return kExitFailure;
  }
  const auto start = std::chrono::steady_clock::now();
  ProgressLine progress(!quiet);
  uint64_t sent = 0, bad = 0, bytes = 0;
  std::string line;
  while (std::getline(*in, line)) {
    bytes += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    Status ls = producer->SendEvent(line, cfg.parser);
    if (ls.ok()) {
      ++sent;
    } else if (ls.IsInvalidArgument()) {
      if (bad++ < 10) {
        progress.Finish();
        std::fprintf(stderr, "recstream: skipping line: %s\n", ls.message().c_str());
      }
    } else {
      progress.Finish();
      std::fprintf(stderr, "recstream: %s\n", ls.ToString().c_str());
      return kExitFailure;
    }
    if (rate > 0) {
      auto due = start + std::chrono::duration<double>(double(sent) / rate);
      std::this_thread::sleep_until(due);
    }
    if (progress.enabled() && (sent & 255) == 0) {
      progress.Update(sent, total_bytes > 0 ? double(bytes) / double(total_bytes) : -1);
    }
  }
  progress.Finish();
  s = producer->Flush(30000);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr,
               "produced %llu events in %.2f s (%llu delivered, %llu failed, %llu lines skipped)\n",
               (unsigned long long)sent, secs, (unsigned long long)producer->delivered(),
               (unsigned long long)producer->failed(), (unsigned long long)bad);
  if (!s.ok() || producer->failed() > 0) return kExitFailure;
  return kExitOk;
}

// Standard output for "" or "-", else `path` opened (truncated) into *file;
// null, with the message printed, when it cannot be written.
std::ostream* OpenOutput(const std::string& path, std::ofstream* file) {
  if (path.empty() || path == "-") return &std::cout;
  file->open(path, std::ios::binary | std::ios::trunc);
  if (!*file) {
    std::fprintf(stderr, "recstream: cannot write %s\n", path.c_str());
    return nullptr;
  }
  return file;
}

// Flushes what OpenOutput gave; kExitFailure, with the message printed,
// when `written` or the stream failed.
int FinishOutput(std::ostream* out, const std::string& path, const Status& written) {
  out->flush();
  if (!written.ok() || !*out) {
    std::fprintf(stderr, "recstream: writing %s failed\n",
                 out == &std::cout ? "standard output" : path.c_str());
    return kExitFailure;
  }
  return kExitOk;
}

int RunGen(const eval::GeneratorOptions& options, const std::string& out_path, bool quiet) {
  Status valid = eval::ValidateGeneratorOptions(options);
  if (!valid.ok()) {
    std::fprintf(stderr, "recstream: %s\n", valid.message().c_str());
    return kExitUsage;
  }
  std::ofstream file;
  std::ostream* out = OpenOutput(out_path, &file);
  if (out == nullptr) return kExitFailure;
  eval::Generator gen(options);
  ProgressLine progress(!quiet);
  const double total = double(options.events);
  // Written in blocks of about 1 MiB: as fast as Generator::WriteAll.
  std::string line, block;
  block.reserve(1 << 20);
  uint64_t n = 0;
  while (gen.Next(&line)) {
    block.append(line);
    block.push_back('\n');
    if (block.size() >= (1 << 20) - 1024) {
      out->write(block.data(), std::streamsize(block.size()));
      block.clear();
      if (!*out) break;
    }
    if ((++n & 4095) == 0) progress.Update(n, total > 0 ? double(n) / total : -1);
  }
  out->write(block.data(), std::streamsize(block.size()));
  progress.Finish();
  return FinishOutput(out, out_path, Status::OK());
}

int RunGenImplicit(const eval::ImplicitGeneratorOptions& options, const std::string& out_path) {
  Status valid = eval::ValidateImplicitOptions(options);
  if (!valid.ok()) {
    std::fprintf(stderr, "recstream: %s\n", valid.message().c_str());
    return kExitUsage;
  }
  std::ofstream file;
  std::ostream* out = OpenOutput(out_path, &file);
  if (out == nullptr) return kExitFailure;
  return FinishOutput(out, out_path, eval::WriteImplicitStream(options, out));
}

int RunGenVectors(const eval::GeneratorOptions& options, const std::string& path, int dim,
                  double noise) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) {
    std::fprintf(stderr, "recstream: cannot write %s\n", path.c_str());
    return kExitFailure;
  }
  eval::Generator gen(options);
  Status s = gen.WriteItemVectors(&file, dim, noise);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: %s\n", s.message().c_str());
    return s.IsInvalidArgument() ? kExitUsage : kExitFailure;
  }
  return kExitOk;
}

bool LoadVectors(const std::string& path, int dim,
                 std::vector<std::pair<std::string, std::vector<float>>>* out);

int RunEval(const ConfigFlags& flags, const std::string& events_path,
            const std::string& report_path, int ranking_k, int candidates,
            const std::string& predictions, bool quiet, bool baselines,
            const std::string& vectors_path, int trainers, uint64_t exchange_events,
            uint64_t follow_events) {
  config::AppConfig cfg;
  if (!flags.Load(&cfg)) return kExitUsage;
  std::ifstream in(events_path);
  if (!in) {
    std::fprintf(stderr, "recstream: cannot open %s\n", events_path.c_str());
    return kExitFailure;
  }
  eval::EvalOptions options;
  options.learner = cfg.learner;
  options.parser = cfg.parser;
  options.ranking_k = ranking_k;
  options.candidates = candidates;
  options.predictions_path = predictions;
  options.progress = !quiet;
  options.baselines = baselines;
  options.trainers = trainers;
  options.exchange_events = exchange_events;
  options.follow_events = follow_events;
  if (trainers > 1 && cfg.learner.memory_limit_mb > 0) {
    std::fprintf(stderr, "recstream: eval --trainers does not run with model.memory_limit_mb\n");
    return kExitUsage;
  }
  if (!vectors_path.empty()) {
    if (cfg.learner.pretrained_dim <= 0) {
      std::fprintf(
          stderr,
          "recstream: --vectors needs model.pretrained_dim set to the vectors' dimension\n");
      return kExitUsage;
    }
    if (!LoadVectors(vectors_path, cfg.learner.pretrained_dim, &options.pretrained))
      return kExitUsage;
  }
  // A memory limit needs a store to hold the users that leave memory: a
  // temporary one, checkpointed whenever the learner asks (and, as the
  // service does, before a batch when users are a quarter over the limit).
  std::unique_ptr<store::CheckpointStore> tier;
  std::string tier_dir;
  learner::ModelSnapshot tier_snap;
  auto tier_checkpoint = [&](learner::Learner* l) {
    l->TakeSnapshot(false, &tier_snap);
    const uint64_t number = l->snapshot_number();
    if (tier->Write(tier_snap, OffsetMap(), nullptr).ok()) l->SnapshotStored(number);
    l->Idle();
  };
  if (cfg.learner.memory_limit_mb > 0) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "recstream-eval-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::fprintf(stderr, "recstream: cannot create a temporary store for the memory limit\n");
      return kExitFailure;
    }
    tier_dir = tmpl;
    store::StoreOptions so = cfg.store;
    so.path = tier_dir;
    so.sync = false;  // a scratch store: nothing to keep across a crash
    so.point_reads = true;
    if (Status o = store::CheckpointStore::Open(so, &tier); !o.ok()) {
      std::fprintf(stderr, "recstream: %s\n", o.ToString().c_str());
      return kExitFailure;
    }
    options.attach = [&](learner::Learner* l) {
      l->SetRowSource(tier.get());
      return Status::OK();
    };
    options.after_train = [&](learner::Learner* l) {
      for (int tries = 0; tries < 100 && (l->WantsCheckpoint() || l->OverLimit()); ++tries)
        tier_checkpoint(l);
    };
  }
  struct RemoveDir {
    std::string* dir;
    std::unique_ptr<store::CheckpointStore>* store;
    ~RemoveDir() {
      store->reset();
      std::error_code ec;
      if (!dir->empty()) std::filesystem::remove_all(*dir, ec);
    }
  } remove_tier{&tier_dir, &tier};
  std::error_code size_error;
  auto size = std::filesystem::file_size(events_path, size_error);
  if (!size_error) options.total_bytes = size;
  eval::EvalReport report;
  Status s = eval::RunEval(options, in, &report);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: eval failed: %s\n", s.ToString().c_str());
    return s.IsInvalidArgument() ? kExitUsage : kExitFailure;
  }
  std::cout << eval::ReportSummary(report);
  if (!report_path.empty()) {
    std::ofstream out(report_path);
    out << eval::ReportJson(report) << "\n";
    if (!out) {
      std::fprintf(stderr, "recstream: cannot write %s\n", report_path.c_str());
      return kExitFailure;
    }
  }
  return kExitOk;
}

// Why a line of an embeddings file was skipped; the error of its first
// occurrence is kept for the report.
enum class VectorError { kNone, kJson, kItem, kVector, kDimension, kNonFinite };

VectorError ParseVectorLine(simdjson::dom::parser& parser, const std::string& line, int dim,
                            std::string* item, std::vector<float>* vec, std::string* detail) {
  simdjson::dom::element doc;
  if (auto err = parser.parse(line).get(doc)) {
    *detail = simdjson::error_message(err);
    return VectorError::kJson;
  }
  simdjson::dom::object obj;
  if (doc.get(obj)) {
    *detail = "not a JSON object";
    return VectorError::kJson;
  }
  simdjson::dom::element id;
  if (obj["item"].get(id)) {
    *detail = "no \"item\"";
    return VectorError::kItem;
  }
  std::string_view sv;
  uint64_t n = 0;
  if (!id.get(sv)) {
    item->assign(sv);
  } else if (!id.get(n)) {
    *item = std::to_string(n);
  } else {
    *detail = "\"item\" must be a string or a non-negative integer";
    return VectorError::kItem;
  }
  if (item->empty()) {
    *detail = "\"item\" is empty";
    return VectorError::kItem;
  }
  simdjson::dom::array arr;
  if (obj["vector"].get(arr)) {
    *detail = "no \"vector\" array";
    return VectorError::kVector;
  }
  vec->clear();
  for (simdjson::dom::element x : arr) {
    double v = 0;
    if (x.get(v)) {
      *detail = "\"vector\" holds a value that is not a number";
      return VectorError::kVector;
    }
    vec->push_back(float(v));
  }
  if (int(vec->size()) != dim) {
    *detail = fmt::format("{} values, model.pretrained_dim is {}", vec->size(), dim);
    return VectorError::kDimension;
  }
  for (float v : *vec)
    if (!std::isfinite(v)) {
      *detail = "a value is not finite as a float";
      return VectorError::kNonFinite;
    }
  return VectorError::kNone;
}

bool LoadVectors(const std::string& path, int dim,
                 std::vector<std::pair<std::string, std::vector<float>>>* out) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "recstream: cannot open %s\n", path.c_str());
    return false;
  }
  simdjson::dom::parser parser;
  std::string line, item, detail;
  std::vector<float> vec;
  uint64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (ParseVectorLine(parser, line, dim, &item, &vec, &detail) != VectorError::kNone) {
      std::fprintf(stderr, "recstream: %s line %llu: %s\n", path.c_str(),
                   static_cast<unsigned long long>(n), detail.c_str());
      return false;
    }
    out->emplace_back(item, vec);
  }
  return true;
}

int RunImportEmbeddings(const ConfigFlags& flags, const std::string& path, bool quiet) {
  config::AppConfig cfg;
  if (!flags.Load(&cfg)) return kExitUsage;
  const int dim = cfg.learner.pretrained_dim;
  if (dim <= 0) {
    std::fprintf(stderr,
                 "recstream: model.pretrained_dim is 0: set it to the vectors' dimension (in the "
                 "configuration the service uses too)\n");
    return kExitUsage;
  }
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "recstream: cannot open %s\n", path.c_str());
    return kExitFailure;
  }
  std::unique_ptr<store::CheckpointStore> store;
  Status s = store::CheckpointStore::Open(cfg.store, &store);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: cannot open the store %s (stop the service first): %s\n",
                 cfg.store.path.c_str(), s.ToString().c_str());
    return kExitFailure;
  }
  std::unique_ptr<learner::Learner> model;
  s = learner::Learner::Create(cfg.learner, &model);
  if (!s.ok()) {
    std::fprintf(stderr, "recstream: %s\n", s.ToString().c_str());
    return kExitUsage;
  }
  bool fresh = false;
  {
    learner::ModelSnapshot stored;
    OffsetMap offsets;
    store::CheckpointInfo info;
    s = store->Load(&stored, &offsets, &info);
    if (s.IsNotFound()) {
      fresh = true;
    } else if (!s.ok()) {
      std::fprintf(stderr, "recstream: cannot load the model from %s: %s\n", cfg.store.path.c_str(),
                   s.ToString().c_str());
      return kExitFailure;
    } else if (Status a = model->ApplySnapshot(stored); !a.ok()) {
      std::fprintf(stderr,
                   "recstream: the stored model does not fit the configuration (is "
                   "model.pretrained_dim the one it was created with?): %s\n",
                   a.ToString().c_str());
      return kExitFailure;
    }
  }

  std::error_code size_error;
  const auto total = std::filesystem::file_size(path, size_error);
  ProgressLine progress(!quiet, "vectors");
  simdjson::dom::parser parser;
  std::map<VectorError, std::pair<uint64_t, std::string>> bad;  // count, first report
  const std::map<VectorError, const char*> reasons = {
      {VectorError::kJson, "invalid JSON"},
      {VectorError::kItem, "bad item"},
      {VectorError::kVector, "bad vector"},
      {VectorError::kDimension, "wrong dimension"},
      {VectorError::kNonFinite, "non-finite value"}};
  uint64_t lines = 0, imported = 0, bytes = 0, printed = 0;
  std::string line, item, detail;
  std::vector<float> vec;
  while (std::getline(in, line)) {
    ++lines;
    bytes += line.size() + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    VectorError e = ParseVectorLine(parser, line, dim, &item, &vec, &detail);
    if (e == VectorError::kNone) {
      if (Status st = model->ImportPretrained(item, vec); !st.ok()) {
        e = VectorError::kVector;
        detail = st.message();
      }
    }
    if (e != VectorError::kNone) {
      bad[e].first++;
      if (printed < 10) {
        ++printed;
        progress.Finish();
        std::fprintf(stderr, "recstream: %s line %llu: %s: %s\n", path.c_str(),
                     static_cast<unsigned long long>(lines), reasons.at(e), detail.c_str());
      }
      continue;
    }
    ++imported;
    if (progress.enabled() && (lines & 1023) == 0)
      progress.Update(imported, !size_error && total > 0 ? double(bytes) / double(total) : -1);
  }
  progress.Finish();
  if (in.bad()) {
    std::fprintf(stderr, "recstream: error reading %s\n", path.c_str());
    return kExitFailure;
  }

  uint64_t skipped = 0;
  for (const auto& [e, c] : bad) skipped += c.first;
  if (imported > 0) {
    learner::ModelSnapshot snapshot;
    model->TakeSnapshot(fresh, &snapshot);
    store::CheckpointInfo info;
    // No offsets: the stored ones are kept (Write merges them).
    s = store->Write(snapshot, OffsetMap(), &info);
    if (!s.ok()) {
      std::fprintf(stderr, "recstream: cannot write the checkpoint to %s: %s\n",
                   cfg.store.path.c_str(), s.ToString().c_str());
      return kExitFailure;
    }
    std::printf(
        "imported %llu vectors of dimension %d into %s (%s model; %llu items with a "
        "vector, %llu items in all; checkpoint %llu, %llu rows)\n",
        static_cast<unsigned long long>(imported), dim, cfg.store.path.c_str(),
        fresh ? "new" : "stored", static_cast<unsigned long long>(model->Stats().pretrained),
        static_cast<unsigned long long>(model->Stats().items),
        static_cast<unsigned long long>(info.sequence), static_cast<unsigned long long>(info.rows));
  } else {
    std::printf("imported no vectors; the store %s is unchanged\n", cfg.store.path.c_str());
  }
  if (skipped > 0) {
    std::printf("skipped %llu bad lines:", static_cast<unsigned long long>(skipped));
    for (const auto& [e, c] : bad)
      std::printf(" %s %llu;", reasons.at(e), static_cast<unsigned long long>(c.first));
    std::printf("\n");
  }
  return imported == 0 && skipped > 0 ? kExitFailure : kExitOk;
}

int Main(int argc, char** argv) {
  auto console = spdlog::stderr_color_mt("recstream");
  spdlog::set_default_logger(console);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  CLI::App app{"recstream: online multi-task recommendations from Kafka event streams"};
  app.require_subcommand(1);
  // The version of the source tree it was built from (CMake's project version).
  app.set_version_flag("--version", std::string("recstream ") + RECSTREAM_VERSION);
  app.footer(
      "Every configuration key is documented in config/recstream.example.toml; `recstream config "
      "--print` shows the effective values and where they came from. While `serve` runs, its "
      "live dashboard is at http://<serve.listen>/ (default http://127.0.0.1:8080/).");

  ConfigFlags serve_flags;
  auto* serve = app.add_subcommand("serve", "consume, learn, checkpoint and serve over HTTP");
  serve_flags.Add(serve);

  ConfigFlags replica_flags;
  auto* replica = app.add_subcommand(
      "replica", "serve the read API from the model a trainer publishes on the model topic");
  replica_flags.Add(replica);

  int partitions = 3;
  std::string bootstrap_file;
  auto* broker =
      app.add_subcommand("broker", "run the embedded Kafka (mock cluster) in the foreground");
  broker->add_option("--partitions", partitions, "partitions per topic")
      ->check(CLI::Range(1, 1000));
  broker->add_option("--bootstrap-file", bootstrap_file,
                     "write the bootstrap address to this file");

  ConfigFlags produce_flags;
  std::string brokers, produce_path;
  double rate = 0;
  bool quiet = false;
  bool baselines = false;
  auto* produce = app.add_subcommand("produce", "send JSONL events to the topic of their type");
  produce->add_option("--brokers", brokers, "Kafka bootstrap servers");
  produce->add_option("--rate", rate, "events per second (0: as fast as possible)")
      ->check(CLI::NonNegativeNumber);
  produce->add_option("file", produce_path, "JSONL file, or - for standard input")->required();
  produce->add_flag("--quiet", quiet, "no progress line");
  produce_flags.Add(produce);

  eval::GeneratorOptions gen_options;
  std::string gen_out;
  auto* gen = app.add_subcommand("gen", "write a synthetic event stream with known ground truth");
  gen->add_option("--events", gen_options.events, "number of events")->required();
  gen->add_option("--users", gen_options.users, "distinct users")->check(CLI::PositiveNumber);
  gen->add_option("--items", gen_options.items, "distinct items")->check(CLI::PositiveNumber);
  gen->add_option("--seed", gen_options.seed, "random seed");
  gen->add_option("--out", gen_out, "output file (default: standard output)");
  bool gen_quiet = false;
  gen->add_flag("--quiet", gen_quiet, "no progress line");
  bool gen_implicit = false;
  eval::ImplicitGeneratorOptions implicit_options;
  gen->add_flag("--implicit", gen_implicit,
                "a positive-only stream as shops log it (views as clicks, purchases; item "
                "categories, a long tail of new items, users with short and long histories)");
  gen->add_option("--categories", implicit_options.categories,
                  "item categories of --implicit (default: one per 640 events)")
      ->check(CLI::PositiveNumber);
  std::string gen_vectors;
  int gen_vector_dim = 16;
  double gen_vector_noise = 0.3;
  gen->add_option("--item-vectors", gen_vectors,
                  "also write one pretrained-like vector per item (import-embeddings input)");
  gen->add_option("--vector-dim", gen_vector_dim, "values per item vector")
      ->check(CLI::Range(1, 8192));
  gen->add_option("--vector-noise", gen_vector_noise, "noise sd added to each value")
      ->check(CLI::NonNegativeNumber);

  ConfigFlags eval_flags;
  std::string events_path, report_path, predictions;
  int ranking_k = 0, candidates = 100, eval_trainers = 1;
  uint64_t eval_exchange_events = 5000, eval_follow_events = 0;
  auto* evalc =
      app.add_subcommand("eval", "progressive validation over a JSONL file, without Kafka");
  evalc->add_option("--events", events_path, "JSONL events")->required();
  evalc->add_option("--report", report_path, "write the JSON report here");
  evalc->add_option("--ranking", ranking_k, "also report HR@K and NDCG@K")
      ->check(CLI::PositiveNumber);
  evalc->add_option("--candidates", candidates, "candidates per ranking query")
      ->check(CLI::PositiveNumber);
  evalc->add_option("--trainers", eval_trainers,
                    "simulate N trainers sharing one model (issue #31), each learning its users' "
                    "events, exchanging changes every --exchange-events events each")
      ->check(CLI::Range(1, 64));
  evalc->add_option("--exchange-events", eval_exchange_events,
                    "with --trainers: events each trainer learns between exchanges (default 5000)")
      ->check(CLI::PositiveNumber);
  evalc->add_option("--follow-events", eval_follow_events,
                    "with --trainers: events each trainer learns between owners publishing their "
                    "rows and trainers following them (default: every exchange)");
  evalc->add_option("--predictions", predictions,
                    "write each prediction before learning, one JSON line each");
  evalc->add_flag("--quiet", quiet, "no progress line");
  evalc->add_flag(
      "--baselines", baselines,
      "also run popularity, online biased MF and single-task baselines on the same stream");
  std::string eval_vectors;
  evalc->add_option("--vectors", eval_vectors,
                    "import these pretrained item vectors (JSONL, as import-embeddings) first");
  eval_flags.Add(evalc);

  ConfigFlags config_flags;
  bool print = false;
  auto* configc = app.add_subcommand("config", "check and show the effective configuration");
  configc->add_flag("--print", print, "print every key with its value and where it came from");
  config_flags.Add(configc);

  ConfigFlags import_flags;
  std::string vectors_path;
  bool import_quiet = false;
  auto* importc = app.add_subcommand(
      "import-embeddings",
      "load pretrained item vectors (JSONL {\"item\": ..., \"vector\": [...]}) into the stored "
      "model; stop the service first");
  importc->add_option("--vectors", vectors_path, "JSONL file of item vectors")->required();
  importc->add_flag("--quiet", import_quiet, "no progress line");
  import_flags.Add(importc);

  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const CLI::App* sub : app.get_subcommands({})) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "recstream: unknown subcommand \"%s\"; use one of %s (or --help)\n",
                   argv[1], names.c_str());
      return kExitUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  if (*serve) return RunServe(serve_flags);
  if (*replica) return RunReplica(replica_flags);
  if (*broker) return RunBroker(partitions, bootstrap_file);
  if (*produce) return RunProduce(produce_flags, brokers, rate, produce_path, quiet);
  if (*gen && gen_implicit) {
    if (gen->count("--users") > 0) implicit_options.users = gen_options.users;
    implicit_options.events = gen_options.events;
    implicit_options.seed = gen_options.seed;
    return RunGenImplicit(implicit_options, gen_out);
  }
  if (*gen) {
    int rc = RunGen(gen_options, gen_out, gen_quiet);
    if (rc != kExitOk || gen_vectors.empty()) return rc;
    return RunGenVectors(gen_options, gen_vectors, gen_vector_dim, gen_vector_noise);
  }
  if (*evalc)
    return RunEval(eval_flags, events_path, report_path, ranking_k, candidates, predictions, quiet,
                   baselines, eval_vectors, eval_trainers, eval_exchange_events,
                   eval_follow_events);
  if (*importc) return RunImportEmbeddings(import_flags, vectors_path, import_quiet);
  if (*configc) {
    config::AppConfig cfg;
    std::vector<config::ConfigSource> sources;
    if (!config_flags.Load(&cfg, &sources)) return kExitUsage;
    if (print)
      std::cout << config::Render(sources);
    else
      std::cout << "configuration is valid\n";
    return kExitOk;
  }
  return kExitUsage;
}

}  // namespace
}  // namespace recstream::app

int main(int argc, char** argv) { return recstream::app::Main(argc, argv); }
