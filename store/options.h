// Options of store/. Plain data, cheap to include.
#pragma once

#include <cstdint>
#include <string>

namespace recstream::store {

struct StoreOptions {
  // RocksDB directory; created if missing.
  std::string path = "data/recstream";
  // Time between checkpoints of the service.
  int64_t checkpoint_interval_ms = 5000;
  // fsync each checkpoint's WriteBatch (the WAL) before reporting success.
  bool sync = true;
};

}  // namespace recstream::store
