// Options of store/. Plain data, cheap to include.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace recstream::store {

struct StoreOptions {
  // RocksDB directory; created if missing.
  std::string path = "data/recstream";
  // Time between checkpoints of the service.
  int64_t checkpoint_interval_ms = 5000;
  // fsync each checkpoint's WriteBatch (the WAL) before reporting success.
  bool sync = true;
  // Fault injection for tests (never set from configuration): while it
  // returns true, every write, flush or sync of a store file fails as on a
  // full disk (IOError "No space left on device"). Called from RocksDB's
  // threads; must be thread-safe.
  std::function<bool()> fail_writes;
};

}  // namespace recstream::store
