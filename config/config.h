// Configuration: builds every module's Options struct from one TOML file, the
// environment and --set flags (docs/interface.md section 6). Only config/ and main read
// files, flags and the environment; modules receive their Options by const
// reference.
//
// Keys. Every key is a dotted name such as `model.dim`; the full list, with
// defaults and allowed values, is config/recstream.example.toml. In TOML a
// key is a table path (`[model]` then `dim = 32`); in the environment it is
// RECSTREAM_ + the key upper-cased with dots as "__"
// (RECSTREAM_KAFKA__BROKERS); on the command line it is `--set key=value`.
// `kafka.properties.<name>` passes any librdkafka property through verbatim.
//
// Precedence: flags (in order, the later wins) > environment > file >
// defaults. Unknown keys and bad values in any source are errors: Load
// returns InvalidArgument whose message names the source, the key, the bad
// value and what is allowed. Nothing throws.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "ingest/options.h"
#include "learner/learner.h"
#include "replicate/options.h"
#include "serve/options.h"
#include "store/options.h"

namespace recstream::config {

struct AppConfig {
  // The service favours answering over learning: training threads run 10
  // nice levels below the HTTP threads unless learner.train_nice says
  // otherwise (learner::LearnerOptions leaves priorities alone by default).
  AppConfig() { learner.train_nice = 10; }

  ingest::KafkaOptions kafka;
  // rating_min/rating_max are copied from `rating.min`/`rating.max`, the same
  // values as learner.rating_min/rating_max.
  ingest::ParserOptions parser;
  learner::LearnerOptions learner;
  // Weights of the blended score served by the HTTP API (serve.blend.*).
  learner::Blend blend;
  store::StoreOptions store;
  serve::ServeOptions serve;
  // replicate.* and replica.* (the model topic is kafka.topics.model).
  replicate::ReplicationOptions replicate;
  // The scheduler time slice (microseconds, common/thread_slice.h) of every
  // thread the service starts except the HTTP I/O threads
  // (serve.io_slice_us): training, ingest, checkpoints, librdkafka and
  // RocksDB threads, the embedded Kafka. Longer than the I/O threads' slice
  // so that a request preempts them at once. 0 leaves them the slice of the
  // thread that calls Service::Start. Key serve.background_slice_us.
  int background_slice_us = 3000;
  // trace, debug, info, warn or error.
  std::string log_level = "info";
};

// Where the effective value of one key came from.
struct ConfigSource {
  std::string key;    // dotted key, e.g. "model.dim"
  std::string value;  // the effective value, unquoted (e.g. 32, recstream.click)
  // "default", "file <path>", "env RECSTREAM_X" or "flag --set".
  std::string origin;
};

// Builds the effective configuration into *out (which is reset to defaults
// first). `file_path` empty: no file. `set_flags` holds the arguments of
// --set, each "key=value", applied in order. `env` maps variable names to
// values; only names starting with RECSTREAM_ are considered. On success,
// when `sources` is non-null, it receives one entry per key (all known keys
// in a stable order, then every kafka.properties.* key) with its effective
// value and origin. The result has passed learner::ValidateOptions.
// Errors: InvalidArgument for an unreadable or malformed file, an unknown
// key, a value of the wrong type or out of range, rating.min >= rating.max.
Status Load(const std::string& file_path, const std::vector<std::string>& set_flags,
            const std::map<std::string, std::string>& env, AppConfig* out,
            std::vector<ConfigSource>* sources = nullptr);

// What a replica needs to build a learner that scores exactly as this one:
// "key=value" lines of every model.*, rating.* and serve.blend.* key, as
// `config` has them. A trainer announces them on the model topic.
std::string ModelSettings(const AppConfig& config);
// `settings` (ModelSettings lines) as --set flags, to append after a
// replica's own flags so that the trainer's model settings win.
std::vector<std::string> SettingsAsFlags(const std::string& settings);

// The RECSTREAM_* variables of this process's environment.
std::map<std::string, std::string> CurrentEnvironment();

// For `recstream config --print`: one line per source, `key = value  # origin`,
// values quoted as TOML where they are strings. Secrets (serve.admin_token and
// kafka.properties whose name contains "password" or "secret") are shown as
// "<redacted>" when set.
std::string Render(const std::vector<ConfigSource>& sources);

}  // namespace recstream::config
