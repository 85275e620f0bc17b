// Options of store/. Plain data, cheap to include.
#pragma once

#include <cstddef>
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
  // Checkpoints of at least this many bytes (keys and values) are written as
  // sorted table files that RocksDB ingests atomically, bypassing its WAL and
  // memtable (the rows go to disk once, built on two threads); smaller ones go
  // through one WriteBatch and the WAL. Both are equally atomic and durable.
  // Not a configuration key: tests lower it to cover both paths. Kept low
  // because a large checkpoint through the WAL and the memtable's skiplist
  // costs the checkpoint thread several times the CPU of table files, which
  // it takes from learning (figures in BENCHMARKS.md).
  size_t ingest_min_bytes = 4 << 20;
  // An ingested checkpoint of at least this many bytes is split into two
  // files built in parallel (and read back in parallel by a streaming load).
  // Not a configuration key either.
  size_t ingest_split_bytes = 64 << 20;
  // Tuned for point reads (set by the service with model.memory_limit_mb,
  // whose users are read back one by one): 4 KiB table blocks instead of
  // 64 KiB, and a block cache of block_cache_bytes (part of the process's
  // fixed memory). Files written before keep their blocks until compacted.
  // Checkpoints of 64 KiB or more (or ingest_min_bytes if lower) are then
  // ingested as table files: the limit asks for many checkpoints of a few
  // MiB, which the memtable would make costly to write and to read back.
  bool point_reads = false;
  size_t block_cache_bytes = 32 << 20;
  // Fault injection for tests (never set from configuration): while it
  // returns true, every write, flush or sync of a store file fails as on a
  // full disk (IOError "No space left on device"). Called from RocksDB's
  // threads; must be thread-safe.
  std::function<bool()> fail_writes;
};

}  // namespace recstream::store
