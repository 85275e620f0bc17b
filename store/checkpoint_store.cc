#include "store/checkpoint_store.h"

#include <oneapi/tbb/parallel_sort.h>
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/options_util.h>
#include <rocksdb/utilities/table_properties_collectors.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "store/codec.h"

namespace recstream::store {

static_assert(learner::kNumTasks == 3, "CheckpointInfo::learned holds 3 tasks");

namespace {

using codec::kDensePrefix;
using codec::kFeatureListPrefix;
using codec::kInfoKey;
using codec::kOffsetPrefix;
using codec::kOutboxPrefix;
using codec::kPurchasePrefix;
using codec::kRowPrefix;
using codec::kShapeKey;
using codec::kWidthPrefix;
using codec::PrefixEnd;

// StoreOptions::point_reads ingests checkpoints from this size on.
constexpr size_t kPointReadsIngestMinBytes = 64 << 10;

// Subdirectory of the store holding table files until they are ingested.
constexpr char kIngestDir[] = "ingest";

// Sequential scans of a whole prefix: read ahead generously.
constexpr size_t kScanReadahead = 4 << 20;

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  std::string message = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(std::move(message));
  if (s.IsCorruption()) return Status::Corruption(std::move(message));
  return Status::IOError(std::move(message));
}

rocksdb::Slice ToSlice(std::string_view v) { return rocksdb::Slice(v.data(), v.size()); }
std::string_view ToView(const rocksdb::Slice& s) { return std::string_view(s.data(), s.size()); }

// ReadOptions on a snapshot of `db`, released when this goes: every read
// through `ro` sees one consistent state of the store.
struct SnapshotRead {
  explicit SnapshotRead(rocksdb::DB* db) : db(db), snap(db->GetSnapshot()) { ro.snapshot = snap; }
  ~SnapshotRead() { db->ReleaseSnapshot(snap); }
  SnapshotRead(const SnapshotRead&) = delete;
  SnapshotRead& operator=(const SnapshotRead&) = delete;
  rocksdb::DB* const db;
  const rocksdb::Snapshot* const snap;
  rocksdb::ReadOptions ro;
};

std::string EncodeInfo(const CheckpointInfo& info) {
  codec::Info record;
  record.sequence = info.sequence;
  record.time_ms = info.time_ms;
  record.rows = info.rows;
  record.bytes = info.bytes;
  record.duration_ms = info.duration_ms;
  for (int t = 0; t < learner::kNumTasks; ++t) record.learned[t] = info.learned[t];
  return codec::EncodeInfo(record);
}

Status DecodeInfo(std::string_view value, CheckpointInfo* info) {
  codec::Info record;
  RECSTREAM_RETURN_IF_ERROR(codec::DecodeInfo(value, &record));
  info->sequence = record.sequence;
  info->time_ms = record.time_ms;
  info->rows = record.rows;
  info->bytes = record.bytes;
  info->duration_ms = record.duration_ms;
  for (int t = 0; t < learner::kNumTasks; ++t) info->learned[t] = record.learned[t];
  return Status::OK();
}

// The key halfway between a and b (a < b), reading the 15 bytes after
// their common prefix as a big-endian number (shorter keys padded with 0).
std::string MidKey(const std::string& a, const std::string& b) {
  size_t common = 0;
  while (common < a.size() && common < b.size() && a[common] == b[common]) ++common;
  constexpr int kBytes = 15;  // the sum of two fits in 128 bits
  auto number = [&](const std::string& s) {
    unsigned __int128 v = 0;
    for (size_t i = 0; i < kBytes; ++i)
      v = (v << 8) | (common + i < s.size() ? uint8_t(s[common + i]) : 0);
    return v;
  };
  const unsigned __int128 mid = (number(a) + number(b)) / 2;
  std::string out = a.substr(0, common);
  for (int i = kBytes - 1; i >= 0; --i) out.push_back(char(uint8_t(mid >> (8 * i))));
  while (out.size() > common && out.back() == '\0') out.pop_back();
  return out;
}

// Copies of keys and values whose views must outlive their source (the
// table-file path sorts them all before writing). Blocks never move.
class Arena {
 public:
  std::string_view Copy(std::string_view v) {
    if (v.size() > left_) {
      const size_t size = std::max<size_t>(kBlock, v.size());
      blocks_.push_back(std::make_unique<char[]>(size));
      next_ = blocks_.back().get();
      left_ = size;
    }
    if (!v.empty()) std::memcpy(next_, v.data(), v.size());
    std::string_view copy(next_, v.size());
    next_ += v.size();
    left_ -= v.size();
    return copy;
  }

 private:
  static constexpr size_t kBlock = 4 << 20;
  std::vector<std::unique_ptr<char[]>> blocks_;
  char* next_ = nullptr;
  size_t left_ = 0;
};

// A file system whose writes fail while `fail()` holds (StoreOptions::fail_writes).
class FaultyWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultyWritableFile(std::unique_ptr<rocksdb::FSWritableFile> file,
                     const std::function<bool()>* fail)
      : FSWritableFileOwnerWrapper(std::move(file)), fail_(fail) {}
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           rocksdb::IODebugContext* dbg) override {
    if ((*fail_)()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    return FSWritableFileOwnerWrapper::Append(data, o, dbg);
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           const rocksdb::DataVerificationInfo& v,
                           rocksdb::IODebugContext* dbg) override {
    if ((*fail_)()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    return FSWritableFileOwnerWrapper::Append(data, o, v, dbg);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& o,
                                     rocksdb::IODebugContext* dbg) override {
    if ((*fail_)()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    return FSWritableFileOwnerWrapper::PositionedAppend(data, offset, o, dbg);
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    if ((*fail_)()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    return FSWritableFileOwnerWrapper::Flush(o, dbg);
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    if ((*fail_)()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    return FSWritableFileOwnerWrapper::Sync(o, dbg);
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    if ((*fail_)()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    return FSWritableFileOwnerWrapper::Fsync(o, dbg);
  }

 private:
  const std::function<bool()>* fail_;
};

class FaultyFileSystem : public rocksdb::FileSystemWrapper {
 public:
  FaultyFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base, std::function<bool()> fail)
      : FileSystemWrapper(base), fail_(std::move(fail)) {}
  const char* Name() const override { return "RecstreamFaultyFileSystem"; }
  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    if (fail_()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = FileSystemWrapper::NewWritableFile(f, o, &file, dbg);
    if (s.ok()) r->reset(new FaultyWritableFile(std::move(file), &fail_));
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override {
    if (fail_()) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = FileSystemWrapper::ReopenWritableFile(f, o, &file, dbg);
    if (s.ok()) r->reset(new FaultyWritableFile(std::move(file), &fail_));
    return s;
  }

 private:
  std::function<bool()> fail_;
};

// Whether the store at `path` should size its levels dynamically
// (level_compaction_dynamic_level_bytes): a store keeps the layout it was
// created with, read from its latest OPTIONS file, since RocksDB advises
// against switching it for an existing database. A new store (no CURRENT
// file yet) does; an existing one whose options cannot be read keeps
// RocksDB's default, off.
bool DynamicLevels(const std::string& path) {
  rocksdb::ConfigOptions config;
  config.ignore_unknown_options = true;
  config.ignore_unsupported_options = true;
  rocksdb::DBOptions db_options;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  const rocksdb::Status s = rocksdb::LoadLatestOptions(config, path, &db_options, &families);
  if (s.IsNotFound()) return !std::filesystem::exists(path + "/CURRENT");
  for (const auto& f : families)
    if (f.name == rocksdb::kDefaultColumnFamilyName)
      return f.options.level_compaction_dynamic_level_bytes;
  return false;
}

rocksdb::Options MakeRocksOptions(const StoreOptions& options, bool dynamic_levels) {
  rocksdb::Options o;
  o.create_if_missing = true;
  // Background flushes and compactions share a small machine with training.
  o.IncreaseParallelism(2);
  o.max_background_jobs = 2;
  // A full checkpoint is one batch of up to millions of rows: large
  // memtables and files keep the number of flushes and levels small.
  o.write_buffer_size = 128 << 20;
  o.max_write_buffer_number = 3;
  o.target_file_size_base = 128 << 20;
  o.max_bytes_for_level_base = 1024ull << 20;
  o.compaction_readahead_size = 2 << 20;
  // Rows are trained floats (embeddings, Adagrad state), which do not
  // compress: compression would cost load and recovery time for no space.
  o.compression = rocksdb::kNoCompression;
  // Start writing back while a checkpoint is still being written, so that
  // its final sync has little left to do.
  o.bytes_per_sync = 8 << 20;
  o.wal_bytes_per_sync = 8 << 20;
  o.keep_log_file_num = 5;
  o.max_log_file_size = 16 << 20;
  // Expiry deletes rows: a file whose entries are mostly deletions is
  // compacted soon, so that deleted rows leave the disk instead of waiting
  // for a compaction of the bottom level.
  o.table_properties_collector_factories.emplace_back(
      rocksdb::NewCompactOnDeletionCollectorFactory(/*sliding_window_size=*/65536,
                                                    /*deletion_trigger=*/16384,
                                                    /*deletion_ratio=*/0.25));
  // Level sizes follow the last level's, so that most data sits in the
  // last level and a compaction of new files rewrites less of the rest: a
  // memory limit's frequent checkpoints, each a table file of users spread
  // over the whole key range, cost half the compaction CPU (BENCHMARKS.md,
  // "Memory limit"). Only for stores created so (DynamicLevels).
  o.level_compaction_dynamic_level_bytes = dynamic_levels;
  rocksdb::BlockBasedTableOptions t;
  if (options.point_reads) {
    // Users read back one by one (a memory limit): a read costs a block
    // (read, checksummed), so small blocks, and a cache for the hottest.
    t.block_size = 4 << 10;
    // Checkpoints arrive as table files, many of which overlap a key: a
    // filter per file spares the read of each file without it (10 bits a
    // key, about 1% false positives).
    t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
    t.cache_index_and_filter_blocks = false;
    t.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  } else {
    // Only whole-prefix scans and a few point reads: big blocks, no filters.
    t.block_size = 64 << 10;
  }
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  return o;
}

double MillisSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

struct CheckpointStore::Impl {
  StoreOptions options;
  // Set only with options.fail_writes; must outlive db.
  std::unique_ptr<rocksdb::Env> faulty_env;
  std::unique_ptr<rocksdb::DB> db;  // null after a failed reopen
  bool dynamic_levels = false;      // DynamicLevels, as found at Open

  rocksdb::Options RocksOptions() {
    rocksdb::Options o = MakeRocksOptions(options, dynamic_levels);
    if (options.fail_writes) {
      if (!faulty_env) {
        faulty_env = rocksdb::NewCompositeEnv(std::make_shared<FaultyFileSystem>(
            rocksdb::FileSystem::Default(), options.fail_writes));
      }
      o.env = faulty_env.get();
    }
    return o;
  }

  // After a failed write RocksDB refuses further writes until it recovers.
  // Resume() clears a recoverable error; otherwise (or after a failed
  // reopen) the database is closed and opened again, which recovers it from
  // its WAL and MANIFEST: a batch that failed is either wholly there or not
  // at all. Called with io_mu held.
  rocksdb::Status Recover() {
    if (db) {
      rocksdb::Status s = db->Resume();
      if (s.ok()) return s;
      (void)db->Close();
      db.reset();
    }
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(RocksOptions(), options.path, &raw);
    if (!s.ok()) return s;
    db.reset(raw);
    // The caches may lag what a half-reported write did store: reread them.
    shape.clear();
    widths.clear();
    offsets.clear();
    Status m = ReadMetadata();
    if (!m.ok()) return rocksdb::Status::Corruption(m.ToString());
    return rocksdb::Status::OK();
  }

  // RocksDB's estimate of the bytes of the keys in [begin, end), memtables
  // included.
  uint64_t ApproximateSize(const std::string& begin, const std::string& end) {
    rocksdb::SizeApproximationOptions approx;
    approx.include_memtables = true;
    rocksdb::Range range(begin, end);
    uint64_t bytes = 0;
    (void)db->GetApproximateSizes(approx, db->DefaultColumnFamily(), &range, 1, &bytes);
    return bytes;
  }

  // Up to parts - 1 keys splitting the rows ("r/...") into parts of about
  // equal size, taken from where table files begin (a big ingested
  // checkpoint is two files split in the middle); none when no file begins
  // inside the rows.
  std::vector<std::string> RowSplits(int parts) {
    std::vector<std::string> splits;
    if (parts < 2) return splits;
    const std::string begin(kRowPrefix), end = PrefixEnd(kRowPrefix);
    std::vector<rocksdb::LiveFileMetaData> files;
    db->GetLiveFilesMetaData(&files);
    std::vector<std::string> candidates;
    for (const auto& f : files)
      if (f.smallestkey > begin && f.smallestkey < end) candidates.push_back(f.smallestkey);
    if (candidates.empty()) return splits;
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
    auto size_before = [&](const std::string& key) { return ApproximateSize(begin, key); };
    const uint64_t total = size_before(end);
    std::vector<uint64_t> before;
    for (const std::string& c : candidates) before.push_back(size_before(c));
    for (int k = 1; k < parts; ++k) {
      const uint64_t target = total / uint64_t(parts) * uint64_t(k);
      size_t best = 0;
      for (size_t i = 1; i < candidates.size(); ++i) {
        auto distance = [&](size_t j) {
          return before[j] > target ? before[j] - target : target - before[j];
        };
        if (distance(i) < distance(best)) best = i;
      }
      // A split near either end is not worth a thread.
      if (before[best] < total / 8 || before[best] > total - total / 8) continue;
      if (splits.empty() || splits.back() < candidates[best]) splits.push_back(candidates[best]);
    }
    return splits;
  }

  // Keys that cut the entries under `prefix` into `parts` ranges of about
  // equal size, in order; none when they are too few to be worth a thread.
  // Found by bisecting the key space with RocksDB's size estimates, so any
  // layout works (file boundaries, as RowSplits uses, may not fall inside
  // a small prefix).
  std::vector<std::string> Splits(std::string_view prefix, int parts) {
    std::vector<std::string> splits;
    const std::string begin(prefix), end = PrefixEnd(prefix);
    auto size_before = [&](const std::string& key) { return ApproximateSize(begin, key); };
    const uint64_t total = size_before(end);
    if (parts < 2 || total < (uint64_t{256} << 10)) return splits;
    for (int k = 1; k < parts; ++k) {
      const uint64_t target = total / uint64_t(parts) * uint64_t(k);
      std::string lo = begin, hi = end;
      for (int step = 0; step < 160; ++step) {  // 8 per byte
        std::string mid = MidKey(lo, hi);
        if (mid <= lo || mid >= hi) break;
        (size_before(mid) < target ? lo : hi) = std::move(mid);
      }
      const uint64_t at = size_before(hi);
      if (at < total / 8 || at > total - total / 8) continue;
      if (splits.empty() || splits.back() < hi) splits.push_back(hi);
    }
    return splits;
  }

  // Stores one checkpoint in one WriteBatch through the WAL. Fills
  // next->bytes and next->duration_ms (encoding). Called with io_mu held.
  rocksdb::Status WriteBatchOf(const learner::ModelSnapshot& snapshot, const OffsetMap& offsets,
                               bool replace, size_t reserve,
                               std::chrono::steady_clock::time_point start, CheckpointInfo* next);

  // Stores one checkpoint as sorted table files ingested in one atomic step
  // (StoreOptions::ingest_min_bytes). The keys and values are those Write()
  // puts into a WriteBatch; where a key repeats, the last one wins, as in a
  // batch. Fills next->bytes and next->duration_ms (encoding). Called with
  // io_mu held; never for a model replacing another shape.
  rocksdb::Status Ingest(const learner::ModelSnapshot& snapshot, const OffsetMap& new_offsets,
                         std::chrono::steady_clock::time_point start, CheckpointInfo* next) {
    struct Entry {
      std::string_view key, value;
      size_t order;
      bool del = false;  // a deletion (expiry): a tombstone in the file
    };
    // Keys, and values that do not point into the snapshot, are copied into
    // the arena: every view stays valid until the files are written.
    Arena arena;
    std::vector<Entry> entries;
    entries.reserve(snapshot.rows() + snapshot.dense.size() + snapshot.new_purchases.size() +
                    new_offsets.size() + 2 * snapshot.tables.size() + 2);
    auto add = [&](std::string_view key, std::string_view value, bool value_stable) {
      entries.push_back(
          {arena.Copy(key), value_stable ? value : arena.Copy(value), entries.size()});
      return Status::OK();
    };
    // Deletions first: of equal keys the last added wins (an id removed
    // and seen again since is in both).
    Status encoded = codec::ForEachDeletedKey(snapshot, [&](std::string_view key) {
      entries.push_back({arena.Copy(key), std::string_view(), entries.size(), true});
      return Status::OK();
    });
    if (encoded.ok()) encoded = codec::ForEachRecord(snapshot, new_offsets, add);
    if (!encoded.ok()) return rocksdb::Status::InvalidArgument(encoded.ToString());
    std::string info_value(codec::kInfoSize, '\0');
    entries.push_back({kInfoKey, info_value, entries.size()});
    const std::string published =
        codec::EncodePublished(next->published.generation, next->published.sequence);
    if (next->published.generation != 0)
      entries.push_back({codec::kPublishedKey, published, entries.size()});

    // Table files need strictly increasing keys (bytewise, as RocksDB's
    // default comparator); of equal keys the last added wins.
    tbb::parallel_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      const int c = a.key.compare(b.key);
      return c != 0 ? c < 0 : a.order < b.order;
    });
    size_t kept = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (i + 1 < entries.size() && entries[i + 1].key == entries[i].key) continue;
      bytes += entries[i].key.size() + entries[i].value.size();
      entries[kept++] = entries[i];
    }
    entries.resize(kept);
    next->bytes = bytes;
    next->duration_ms = MillisSince(start);
    const std::string info = EncodeInfo(*next);
    std::memcpy(info_value.data(), info.data(), codec::kInfoSize);  // same size: views stay valid

    // Leftovers of an interrupted checkpoint are never ingested: start clean.
    const std::string dir = options.path + "/" + kIngestDir;
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    std::filesystem::create_directories(dir, ec);
    if (ec) return rocksdb::Status::IOError("creating " + dir + ": " + ec.message());

    const size_t files = bytes >= options.ingest_split_bytes && entries.size() >= 2 ? 2 : 1;
    std::vector<std::string> paths(files);
    std::vector<rocksdb::Status> built(files);
    const rocksdb::Options rocks = RocksOptions();
    // Files of about equal bytes (rows dominate), so that the boundary falls
    // among the rows, where a streaming load splits its reading.
    std::vector<size_t> cuts = {0};
    {
      uint64_t sum = 0;
      for (size_t i = 0; i < entries.size() && cuts.size() < files; ++i) {
        sum += entries[i].key.size() + entries[i].value.size();
        if (sum >= bytes / files * cuts.size() && i + 1 < entries.size()) cuts.push_back(i + 1);
      }
      while (cuts.size() < files) cuts.push_back(entries.size());  // (never: files <= entries)
      cuts.push_back(entries.size());
    }
    auto build = [&](size_t f) {
      const size_t begin = cuts[f], end = cuts[f + 1];
      paths[f] = dir + "/" + std::to_string(next->sequence) + "-" + std::to_string(f) + ".sst";
      // Keep the pages cached: a restart soon after reads them back.
      rocksdb::SstFileWriter writer(rocksdb::EnvOptions(), rocks, nullptr,
                                    /*invalidate_page_cache=*/false);
      rocksdb::Status s = writer.Open(paths[f]);
      for (size_t i = begin; i < end && s.ok(); ++i) {
        const Entry& e = entries[i];
        s = e.del ? writer.Delete(rocksdb::Slice(e.key.data(), e.key.size()))
                  : writer.Put(rocksdb::Slice(e.key.data(), e.key.size()),
                               rocksdb::Slice(e.value.data(), e.value.size()));
      }
      if (s.ok()) s = writer.Finish();  // also syncs the file
      built[f] = s;
    };
    std::thread second;
    if (files > 1) second = std::thread(build, size_t{1});
    build(0);
    if (second.joinable()) second.join();
    rocksdb::Status s;
    for (const rocksdb::Status& b : built)
      if (s.ok() && !b.ok()) s = b;
    if (s.ok()) {
      rocksdb::IngestExternalFileOptions io;
      io.move_files = true;  // a hard link, not a copy
      io.verify_checksums_before_ingest = false;
      s = db->IngestExternalFile(paths, io);
    }
    std::filesystem::remove_all(dir, ec);
    return s;
  }

  // Serialises Write() and Load(); guards the caches below, which mirror
  // what is stored so that Write() needs no reads.
  std::mutex io_mu;
  std::string shape;                  // empty: no checkpoint yet
  std::map<std::string, int> widths;  // table -> floats per row
  OffsetMap offsets;

  // Guards what HTTP threads read; never held during I/O.
  mutable std::mutex state_mu;
  CheckpointInfo last;
  Status health;

  // Calls `fn(key without prefix, value)` for each key starting with
  // `prefix`, in key order, as of `snapshot` (may be null).
  Status Scan(const rocksdb::Snapshot* snapshot, std::string_view prefix,
              const std::function<Status(std::string_view, const rocksdb::Slice&)>& fn) {
    return ScanRange(snapshot, prefix, prefix, PrefixEnd(prefix), fn);
  }
  // Scan of the keys in [from, to), all of which start with `prefix`.
  Status ScanRange(const rocksdb::Snapshot* snapshot, std::string_view prefix,
                   std::string_view from, const std::string& to,
                   const std::function<Status(std::string_view, const rocksdb::Slice&)>& fn) {
    rocksdb::Slice upper(to);
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot;
    ro.iterate_upper_bound = &upper;
    ro.readahead_size = kScanReadahead;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro));
    for (it->Seek(rocksdb::Slice(from.data(), from.size())); it->Valid(); it->Next()) {
      rocksdb::Slice k = it->key();
      RECSTREAM_RETURN_IF_ERROR(
          fn(std::string_view(k.data() + prefix.size(), k.size() - prefix.size()), it->value()));
    }
    if (!it->status().ok()) return FromRocks(it->status(), "scanning checkpoint");
    return Status::OK();
  }

  // The stored model-topic version (zero when none is stored).
  Status ReadPublished(const rocksdb::Snapshot* snapshot, model_records::Version* v) {
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot;
    std::string value;
    rocksdb::Status s = db->Get(ro, ToSlice(codec::kPublishedKey), &value);
    if (s.IsNotFound()) return Status::OK();
    if (!s.ok()) return FromRocks(s, "reading the published version");
    return codec::DecodePublished(value, &v->generation, &v->sequence);
  }

  // Fills the caches and `last` from the stored metadata.
  Status ReadMetadata() {
    std::string v;
    rocksdb::Status s = db->Get(rocksdb::ReadOptions(), ToSlice(kInfoKey), &v);
    if (s.IsNotFound()) return Status::OK();
    if (!s.ok()) return FromRocks(s, "reading checkpoint info");
    CheckpointInfo info;
    RECSTREAM_RETURN_IF_ERROR(DecodeInfo(v, &info));
    s = db->Get(rocksdb::ReadOptions(), ToSlice(kShapeKey), &shape);
    if (s.IsNotFound()) return Status::Corruption("checkpoint without a model shape");
    if (!s.ok()) return FromRocks(s, "reading model shape");
    RECSTREAM_RETURN_IF_ERROR(
        Scan(nullptr, kWidthPrefix, [&](std::string_view table, const rocksdb::Slice& value) {
          return codec::DecodeWidth(table, ToView(value), &widths[std::string(table)]);
        }));
    RECSTREAM_RETURN_IF_ERROR(
        Scan(nullptr, kOffsetPrefix, [&](std::string_view rest, const rocksdb::Slice& value) {
          TopicPartition tp;
          int64_t offset = 0;
          RECSTREAM_RETURN_IF_ERROR(codec::DecodeOffset(rest, ToView(value), &tp, &offset));
          offsets[tp] = offset;
          return Status::OK();
        }));
    info.offsets = offsets;
    RECSTREAM_RETURN_IF_ERROR(ReadPublished(nullptr, &info.published));
    last = std::move(info);
    return Status::OK();
  }
};

CheckpointStore::CheckpointStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CheckpointStore::~CheckpointStore() {
  if (impl_ && impl_->db) {
    // Flushing the memtable now spares the next Open() a replay of the WAL
    // (seconds for a full checkpoint of millions of rows). Best effort: a
    // failed flush or close loses nothing that Write() reported done.
    rocksdb::FlushOptions flush;
    flush.wait = true;
    (void)impl_->db->Flush(flush);
    (void)impl_->db->Close();
  }
}

Status CheckpointStore::Open(const StoreOptions& options, std::unique_ptr<CheckpointStore>* store) {
  if (options.path.empty()) return Status::InvalidArgument("store.path is empty");
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return Status::IOError("cannot create store directory " + options.path + ": " + ec.message());
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->dynamic_levels = DynamicLevels(options.path);
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(impl->RocksOptions(), options.path, &db);
  if (!s.ok()) {
    std::string message = "opening store " + options.path;
    return s.IsCorruption() ? FromRocks(s, message)
                            : Status::IOError(message + ": " + s.ToString());
  }
  impl->db.reset(db);
  // Table files of a checkpoint interrupted before its ingestion are not
  // part of the store.
  std::filesystem::remove_all(options.path + "/" + kIngestDir, ec);
  RECSTREAM_RETURN_IF_ERROR(impl->ReadMetadata());
  store->reset(new CheckpointStore(std::move(impl)));
  return Status::OK();
}

Status CheckpointStore::Write(const learner::ModelSnapshot& snapshot, const OffsetMap& offsets,
                              CheckpointInfo* info) {
  return Write(snapshot, offsets, model_records::Version(), info);
}

Status CheckpointStore::Write(const learner::ModelSnapshot& snapshot, const OffsetMap& offsets,
                              const model_records::Version& published, CheckpointInfo* info) {
  const auto start = std::chrono::steady_clock::now();
  Impl& d = *impl_;
  std::lock_guard<std::mutex> io_lock(d.io_mu);

  bool failing;
  {
    std::lock_guard<std::mutex> lock(d.state_mu);
    failing = !d.health.ok();
  }
  if (failing || !d.db) {
    rocksdb::Status r = d.Recover();
    if (!r.ok()) {
      Status error =
          Status::IOError("store " + d.options.path + " has not recovered: " + r.ToString());
      std::lock_guard<std::mutex> lock(d.state_mu);
      d.health = error;
      return error;
    }
  }

  // Validate everything before encoding anything.
  if (snapshot.shape.empty()) return Status::InvalidArgument("snapshot without a model shape");
  const bool replace = !d.shape.empty() && d.shape != snapshot.shape;
  std::map<std::string, int> new_widths;
  size_t reserve = 4096;
  for (const auto& t : snapshot.tables) {
    if (t.table.empty() || t.table.find('\0') != std::string::npos) {
      return Status::InvalidArgument("invalid table name in snapshot");
    }
    if (t.width <= 0) {
      return Status::InvalidArgument("table " + t.table + " has width " + std::to_string(t.width));
    }
    if (t.values.size() != t.keys.size() * static_cast<size_t>(t.width)) {
      return Status::InvalidArgument("table " + t.table + ": " + std::to_string(t.keys.size()) +
                                     " rows of width " + std::to_string(t.width) + " but " +
                                     std::to_string(t.values.size()) + " values");
    }
    auto [it, inserted] = new_widths.emplace(t.table, t.width);
    if (!inserted && it->second != t.width) {
      return Status::InvalidArgument("table " + t.table + " appears with two widths");
    }
    if (!replace) {
      auto stored = d.widths.find(t.table);
      if (stored != d.widths.end() && stored->second != t.width) {
        return Status::InvalidArgument("table " + t.table + " has width " +
                                       std::to_string(t.width) + " but the store holds width " +
                                       std::to_string(stored->second) + " under the same shape");
      }
    }
    for (const auto& k : t.keys) reserve += k.size() + t.table.size() + 16;
    reserve += t.values.size() * sizeof(float);
  }
  for (const auto& [name, values] : snapshot.dense) {
    reserve += name.size() + values.size() * sizeof(float) + 16;
  }
  for (const auto& l : snapshot.feature_lists) {
    if (l.table.empty() || l.table.find('\0') != std::string::npos) {
      return Status::InvalidArgument("invalid feature list table name in snapshot");
    }
    if (l.features.size() != l.keys.size()) {
      return Status::InvalidArgument("feature lists of " + l.table + ": " +
                                     std::to_string(l.keys.size()) + " ids but " +
                                     std::to_string(l.features.size()) + " lists");
    }
  }

  CheckpointInfo next;
  {
    std::lock_guard<std::mutex> lock(d.state_mu);
    next.sequence = d.last.sequence + 1;
  }
  next.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
  next.rows = snapshot.rows();
  next.learned = {snapshot.learned[0], snapshot.learned[1], snapshot.learned[2]};
  {
    std::lock_guard<std::mutex> lock(d.state_mu);
    next.published = published.generation != 0 ? published : d.last.published;
  }
  OffsetMap merged = d.offsets;
  for (const auto& [tp, offset] : offsets) merged[tp] = offset;

  rocksdb::Status s;
  // With a memory limit (point_reads), checkpoints come often, asked for by
  // the limit to store the users it lets go, each of a few MiB: through the
  // WAL their rows would go into one large memtable, whose skiplist then
  // takes more CPU than the rest of the checkpoint (BENCHMARKS.md, "Memory
  // limit"), and which every read of a user back searches.
  const size_t ingest_min = d.options.point_reads
                                ? std::min(d.options.ingest_min_bytes, kPointReadsIngestMinBytes)
                                : d.options.ingest_min_bytes;
  if (!replace && reserve >= ingest_min) {
    s = d.Ingest(snapshot, offsets, start, &next);
  } else {
    s = d.WriteBatchOf(snapshot, offsets, replace, reserve, start, &next);
  }
  if (!s.ok()) {
    Status error = Status::IOError("writing checkpoint " + std::to_string(next.sequence) + " to " +
                                   d.options.path + ": " + s.ToString());
    std::lock_guard<std::mutex> lock(d.state_mu);
    d.health = error;
    return error;
  }

  // Stored: bring the caches up to date.
  d.shape = snapshot.shape;
  if (replace) d.widths.clear();
  for (const auto& [table, width] : new_widths) d.widths[table] = width;
  d.offsets = std::move(merged);
  next.offsets = d.offsets;
  next.duration_ms = MillisSince(start);
  if (info != nullptr) *info = next;
  std::lock_guard<std::mutex> lock(d.state_mu);
  d.last = std::move(next);
  d.health = Status::OK();
  return Status::OK();
}

// The WriteBatch path of Write(): everything in one batch through the WAL.
rocksdb::Status CheckpointStore::Impl::WriteBatchOf(const learner::ModelSnapshot& snapshot,
                                                    const OffsetMap& offsets, bool replace,
                                                    size_t reserve,
                                                    std::chrono::steady_clock::time_point start,
                                                    CheckpointInfo* next) {
  Impl& d = *this;
  rocksdb::WriteBatch batch(reserve);
  rocksdb::Status s;
  if (replace) {
    // A model of another shape: nothing of the old one may survive.
    for (std::string_view prefix : codec::kModelPrefixes) {
      std::string end = PrefixEnd(prefix);
      s = batch.DeleteRange(ToSlice(prefix), end);
      if (!s.ok()) break;
    }
  }
  if (s.ok()) {
    // Deletions (expiry) first, in the same batch: the checkpoint removes
    // them atomically with everything else.
    Status deleted = codec::ForEachDeletedKey(snapshot, [&](std::string_view key) {
      rocksdb::Status del = batch.Delete(ToSlice(key));
      return del.ok() ? Status::OK() : FromRocks(del, "encoding checkpoint");
    });
    if (!deleted.ok()) s = rocksdb::Status::InvalidArgument(deleted.ToString());
  }
  if (s.ok()) {
    Status encoded = codec::ForEachRecord(
        snapshot, offsets, [&](std::string_view key, std::string_view value, bool) {
          rocksdb::Status put = batch.Put(ToSlice(key), ToSlice(value));
          return put.ok() ? Status::OK() : FromRocks(put, "encoding checkpoint");
        });
    if (!encoded.ok()) s = rocksdb::Status::InvalidArgument(encoded.ToString());
  }
  next->bytes = batch.GetDataSize() + codec::kInfoSize + kInfoKey.size() + 1 + 8;
  next->duration_ms = MillisSince(start);
  if (s.ok()) s = batch.Put(ToSlice(kInfoKey), EncodeInfo(*next));
  if (s.ok() && next->published.generation != 0)
    s = batch.Put(ToSlice(codec::kPublishedKey),
                  codec::EncodePublished(next->published.generation, next->published.sequence));
  if (s.ok()) {
    rocksdb::WriteOptions wo;
    wo.sync = d.options.sync;
    s = d.db->Write(wo, &batch);
  }
  return s;
}

namespace {

// The bounds of the key ranges that `splits` cut the keys under `prefix`
// into: range r is [bounds[r], bounds[r + 1]).
std::vector<std::string> RangeBounds(const std::string& prefix,
                                     const std::vector<std::string>& splits) {
  std::vector<std::string> bounds = {prefix};
  bounds.insert(bounds.end(), splits.begin(), splits.end());
  bounds.push_back(PrefixEnd(prefix));
  return bounds;
}

// Runs scan(r) for r in [0, ranges), each on its own thread (0 on the
// caller's), and returns the first error.
Status OnEachRange(size_t ranges, const std::function<Status(size_t)>& scan) {
  std::vector<Status> results(ranges);
  std::vector<std::thread> threads;
  for (size_t r = 1; r < ranges; ++r) threads.emplace_back([&, r] { results[r] = scan(r); });
  if (ranges > 0) results[0] = scan(0);
  for (std::thread& t : threads) t.join();
  for (const Status& r : results) RECSTREAM_RETURN_IF_ERROR(r);
  return Status::OK();
}

// Streaming Load: the reading thread fills blocks of rows, `threads` workers
// hand them to the sink. At most kQueuedBlocks wait, which bounds memory.
class BlockPipeline {
 public:
  static constexpr size_t kBlockRows = 8192;
  static constexpr size_t kQueuedBlocks = 4;

  BlockPipeline(const CheckpointStore::RowSink& sink, int threads) : sink_(sink) {
    for (int i = 0; i < std::max(1, threads); ++i) workers_.emplace_back([this] { Work(); });
  }
  ~BlockPipeline() { (void)Finish(); }

  // The block being filled by the reading thread.
  learner::TableDelta& current() { return current_; }

  // Queues the current block (if it has rows) and starts a new one of
  // `table`. Waits while the queue is full; returns a sink's error, if any.
  Status Next(const std::string& table, int width) {
    std::unique_lock lock(mu_);
    if (!current_.keys.empty()) {
      cv_.wait(lock, [&] { return queue_.size() < kQueuedBlocks || !error_.ok(); });
      if (!error_.ok()) return error_;
      queue_.push_back(std::move(current_));
      cv_.notify_all();
      if (!free_.empty()) {
        current_ = std::move(free_.back());
        free_.pop_back();
      } else {
        current_ = learner::TableDelta();
      }
      current_.keys.clear();
      current_.values.clear();
    }
    lock.unlock();
    if (current_.keys.capacity() == 0) {
      current_.keys.reserve(kBlockRows);
      current_.values.reserve(kBlockRows * static_cast<size_t>(width));
    }
    current_.table = table;
    current_.width = width;
    return Status::OK();
  }

  // Queues the last block and waits for the workers; the first sink error.
  Status Finish() {
    Status s = Status::OK();
    if (!workers_.empty()) {
      s = Next(current_.table, current_.width);
      {
        std::lock_guard lock(mu_);
        done_ = true;
        cv_.notify_all();
      }
      for (std::thread& w : workers_) w.join();
      workers_.clear();
    }
    std::lock_guard lock(mu_);
    return error_.ok() ? s : error_;
  }

 private:
  void Work() {
    for (;;) {
      learner::TableDelta block;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || done_; });
        if (queue_.empty()) return;
        block = std::move(queue_.front());
        queue_.pop_front();
        cv_.notify_all();
      }
      Status s = error_ok() ? sink_(block) : Status::OK();
      std::lock_guard lock(mu_);
      if (!s.ok() && error_.ok()) error_ = s;
      if (free_.size() < 2 * kQueuedBlocks) free_.push_back(std::move(block));
      cv_.notify_all();
    }
  }
  bool error_ok() {
    std::lock_guard lock(mu_);
    return error_.ok();
  }

  const CheckpointStore::RowSink& sink_;
  learner::TableDelta current_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<learner::TableDelta> queue_;  // guarded by mu_
  std::vector<learner::TableDelta> free_;  // guarded by mu_
  bool done_ = false;                      // guarded by mu_
  Status error_;                           // guarded by mu_
};

}  // namespace

Status CheckpointStore::Load(learner::ModelSnapshot* full, OffsetMap* offsets,
                             CheckpointInfo* info) {
  return LoadImpl(nullptr, nullptr, 0, full, offsets, info);
}

Status CheckpointStore::LoadStreaming(const RowSink& rows, int threads,
                                      learner::ModelSnapshot* rest, OffsetMap* offsets,
                                      CheckpointInfo* info) {
  return LoadImpl(&rows, nullptr, threads, rest, offsets, info);
}

Status CheckpointStore::LoadStreaming(const RowSink& rows, const ListSink& lists, int threads,
                                      learner::ModelSnapshot* rest, OffsetMap* offsets,
                                      CheckpointInfo* info) {
  return LoadImpl(&rows, &lists, threads, rest, offsets, info);
}

namespace {

// One Load: reads a consistent RocksDB snapshot of the store step by step
// into a ModelSnapshot (or hands rows and feature lists to sinks).
class Loader {
 public:
  using Scan = std::function<Status(std::string_view prefix, std::string_view from,
                                    const std::string& to, const std::function<Status(
                                        std::string_view, std::string_view)>& fn)>;
  Loader(const Scan& scan, learner::ModelSnapshot* out) : scan_(scan), out_(*out) {}

  // Fills out.tables (empty) from the stored widths, in name order, which is
  // also the order of their rows' keys. `reserve_rows(table, width)` gives
  // the rows to reserve room for (0 when streaming).
  Status ReadTables(const std::function<uint64_t(const std::string&, int)>& reserve_rows) {
    std::map<std::string, int> widths;
    RECSTREAM_RETURN_IF_ERROR(ScanAll(kWidthPrefix, [&](std::string_view table, std::string_view v) {
      return codec::DecodeWidth(table, v, &widths[std::string(table)]);
    }));
    for (const auto& [table, width] : widths) {
      table_index_[table] = out_.tables.size();
      learner::TableDelta t;
      t.table = table;
      t.width = width;
      const uint64_t rows = std::min<uint64_t>(reserve_rows(table, width), uint64_t{1} << 28);
      t.values.reserve(rows * width);
      t.keys.reserve(rows);
      out_.tables.push_back(std::move(t));
    }
    return Status::OK();
  }

  // Every row into out.tables.
  Status ReadRows() {
    learner::TableDelta* table = nullptr;
    return ScanAll(kRowPrefix, [&](std::string_view rest, std::string_view value) {
      std::string_view id;
      RECSTREAM_RETURN_IF_ERROR(DecodeRow(rest, value, &table, &id));
      Append(table, id, value);
      return Status::OK();
    });
  }

  // Every row to `sink`, in blocks filled here and handed to `threads`
  // workers.
  Status StreamRows(const CheckpointStore::RowSink& sink, int threads) {
    BlockPipeline pipeline(sink, threads);
    learner::TableDelta* table = nullptr;
    Status scanned = ScanAll(kRowPrefix, [&](std::string_view rest, std::string_view value) {
      std::string_view id;
      RECSTREAM_RETURN_IF_ERROR(DecodeRow(rest, value, &table, &id));
      learner::TableDelta& block = pipeline.current();
      if (block.keys.size() >= BlockPipeline::kBlockRows || block.table != table->table) {
        RECSTREAM_RETURN_IF_ERROR(pipeline.Next(table->table, table->width));
      }
      Append(&pipeline.current(), id, value);
      return Status::OK();
    });
    Status finished = pipeline.Finish();
    return scanned.ok() ? finished : scanned;
  }

  // Every row to `sink`, one thread per key range [bounds[r], bounds[r+1]),
  // each filling and handing over its own blocks.
  Status StreamRowRanges(const CheckpointStore::RowSink& sink,
                         const std::vector<std::string>& bounds) {
    return OnEachRange(bounds.size() - 1, [&](size_t r) {
      learner::TableDelta block;
      learner::TableDelta* table = nullptr;
      Status handed;
      auto flush = [&] {
        if (!block.keys.empty() && handed.ok()) handed = sink(block);
        block.keys.clear();
        block.values.clear();
      };
      Status scanned = scan_(kRowPrefix, bounds[r], bounds[r + 1],
                             [&](std::string_view rest, std::string_view value) {
                               std::string_view id;
                               RECSTREAM_RETURN_IF_ERROR(DecodeRow(rest, value, &table, &id));
                               if (block.keys.size() >= BlockPipeline::kBlockRows ||
                                   block.table != table->table) {
                                 flush();
                                 RECSTREAM_RETURN_IF_ERROR(handed);
                                 block.table = table->table;
                                 block.width = table->width;
                               }
                               Append(&block, id, value);
                               return Status::OK();
                             });
      flush();
      return scanned.ok() ? handed : scanned;
    });
  }

  Status ReadDense() {
    return ScanAll(kDensePrefix, [&](std::string_view name, std::string_view value) {
      std::vector<float> values;
      RECSTREAM_RETURN_IF_ERROR(codec::DecodeDense(name, value, &values));
      out_.dense.emplace_back(std::string(name), std::move(values));
      return Status::OK();
    });
  }

  Status ReadPurchases() {
    return ScanAll(kPurchasePrefix, [&](std::string_view rest, std::string_view) {
      auto& [user, item] = out_.new_purchases.emplace_back();
      return codec::DecodePurchaseKey(rest, &user, &item);
    });
  }

  // Every feature list into out.feature_lists, one entry per table.
  Status ReadFeatureLists() {
    learner::FeatureListDelta* lists = nullptr;
    return ScanAll(kFeatureListPrefix, [&](std::string_view rest, std::string_view value) {
      std::string_view table, owner;
      std::vector<std::string> features;
      RECSTREAM_RETURN_IF_ERROR(codec::DecodeFeatureList(rest, value, &table, &owner, &features));
      if (lists == nullptr || lists->table != table) {
        lists = &out_.feature_lists.emplace_back();
        lists->table = std::string(table);
      }
      lists->keys.emplace_back(owner);
      lists->features.push_back(std::move(features));
      return Status::OK();
    });
  }

  // Every feature list to `sink`, one thread per key range.
  Status StreamFeatureLists(const CheckpointStore::ListSink& sink,
                            const std::vector<std::string>& bounds) {
    return OnEachRange(bounds.size() - 1, [&](size_t r) {
      learner::FeatureListDelta block;
      Status handed;
      auto flush = [&] {
        if (!block.keys.empty() && handed.ok()) handed = sink(block);
        block.keys.clear();
        block.features.clear();
      };
      Status scanned = scan_(
          kFeatureListPrefix, bounds[r], bounds[r + 1],
          [&](std::string_view rest, std::string_view value) {
            std::string_view table, owner;
            std::vector<std::string> features;
            RECSTREAM_RETURN_IF_ERROR(
                codec::DecodeFeatureList(rest, value, &table, &owner, &features));
            if (block.keys.size() >= BlockPipeline::kBlockRows || block.table != table) {
              flush();
              RECSTREAM_RETURN_IF_ERROR(handed);
              block.table = std::string(table);
            }
            block.keys.emplace_back(owner);
            block.features.push_back(std::move(features));
            return Status::OK();
          });
      flush();
      return scanned.ok() ? handed : scanned;
    });
  }

  Status ReadOffsets(OffsetMap* offsets) {
    return ScanAll(kOffsetPrefix, [&](std::string_view rest, std::string_view value) {
      TopicPartition tp;
      int64_t offset = 0;
      RECSTREAM_RETURN_IF_ERROR(codec::DecodeOffset(rest, value, &tp, &offset));
      (*offsets)[tp] = offset;
      return Status::OK();
    });
  }

 private:
  Status ScanAll(std::string_view prefix,
                 const std::function<Status(std::string_view, std::string_view)>& fn) {
    return scan_(prefix, prefix, PrefixEnd(prefix), fn);
  }

  // Checks one row entry; *table is its table (kept between calls, since
  // rows come grouped by table).
  Status DecodeRow(std::string_view rest, std::string_view value, learner::TableDelta** table,
                   std::string_view* id) {
    std::string_view name;
    RECSTREAM_RETURN_IF_ERROR(codec::DecodeRowKey(rest, &name, id));
    if (*table == nullptr || (*table)->table != name) {
      auto it = table_index_.find(std::string(name));
      if (it == table_index_.end()) {
        return Status::Corruption("rows of table " + std::string(name) +
                                  " whose width is not stored");
      }
      *table = &out_.tables[it->second];
    }
    return codec::CheckRowValue((*table)->table, (*table)->width, value);
  }

  static void Append(learner::TableDelta* to, std::string_view id, std::string_view value) {
    to->keys.emplace_back(id);
    const size_t at = to->values.size();
    to->values.resize(at + to->width);
    codec::DecodeFloats(value, to->values.data() + at);
  }

  const Scan& scan_;
  learner::ModelSnapshot& out_;
  std::map<std::string, size_t> table_index_;
};

}  // namespace

Status CheckpointStore::LoadImpl(const RowSink* sink, const ListSink* list_sink, int threads,
                                 learner::ModelSnapshot* full, OffsetMap* offsets,
                                 CheckpointInfo* info) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> io_lock(d.io_mu);
  if (!d.db) {
    rocksdb::Status r = d.Recover();
    if (!r.ok())
      return Status::IOError("store " + d.options.path + " is not open: " + r.ToString());
  }
  SnapshotRead view(d.db.get());
  rocksdb::ReadOptions& ro = view.ro;

  std::string v;
  rocksdb::Status s = d.db->Get(ro, ToSlice(kInfoKey), &v);
  if (s.IsNotFound()) return Status::NotFound("no checkpoint in " + d.options.path);
  if (!s.ok()) return FromRocks(s, "reading checkpoint info");
  CheckpointInfo loaded;
  RECSTREAM_RETURN_IF_ERROR(DecodeInfo(v, &loaded));
  learner::ModelSnapshot out;
  s = d.db->Get(ro, ToSlice(kShapeKey), &out.shape);
  if (s.IsNotFound()) return Status::Corruption("checkpoint without a model shape");
  if (!s.ok()) return FromRocks(s, "reading model shape");
  out.learned = {loaded.learned[0], loaded.learned[1], loaded.learned[2]};

  const Loader::Scan scan = [&](std::string_view prefix, std::string_view from,
                                const std::string& to, const auto& fn) {
    return d.ScanRange(view.snap, prefix, from, to,
                       [&](std::string_view rest, const rocksdb::Slice& value) {
                         return fn(rest, ToView(value));
                       });
  };
  Loader loader(scan, &out);
  // Reserving from RocksDB's size estimate (keys included, so slightly
  // over) avoids regrowing gigabytes of floats for big models.
  RECSTREAM_RETURN_IF_ERROR(loader.ReadTables([&](const std::string& table, int width) {
    if (sink != nullptr) return uint64_t{0};
    std::string begin;
    codec::AppendRowKey(&begin, table, "");
    return d.ApproximateSize(begin, PrefixEnd(begin)) / (uint64_t(width) * sizeof(float));
  }));
  if (sink == nullptr) {
    RECSTREAM_RETURN_IF_ERROR(loader.ReadRows());
  } else if (std::vector<std::string> splits = d.RowSplits(threads); !splits.empty()) {
    RECSTREAM_RETURN_IF_ERROR(
        loader.StreamRowRanges(*sink, RangeBounds(std::string(kRowPrefix), splits)));
  } else {
    RECSTREAM_RETURN_IF_ERROR(loader.StreamRows(*sink, threads));
  }
  RECSTREAM_RETURN_IF_ERROR(loader.ReadDense());
  RECSTREAM_RETURN_IF_ERROR(loader.ReadPurchases());
  if (list_sink == nullptr) {
    RECSTREAM_RETURN_IF_ERROR(loader.ReadFeatureLists());
  } else {
    const std::string prefix(kFeatureListPrefix);
    RECSTREAM_RETURN_IF_ERROR(loader.StreamFeatureLists(
        *list_sink, RangeBounds(prefix, d.Splits(kFeatureListPrefix, threads))));
  }
  OffsetMap stored_offsets;
  RECSTREAM_RETURN_IF_ERROR(loader.ReadOffsets(&stored_offsets));

  loaded.offsets = stored_offsets;
  RECSTREAM_RETURN_IF_ERROR(d.ReadPublished(view.snap, &loaded.published));
  *full = std::move(out);
  if (offsets != nullptr) *offsets = std::move(stored_offsets);
  if (info != nullptr) *info = std::move(loaded);
  return Status::OK();
}

Status CheckpointStore::ReadModelPage(std::string_view after, size_t max_bytes,
                                      model_records::ModelPage* page) const {
  Impl& d = *impl_;
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  SnapshotRead view(d.db.get());
  rocksdb::ReadOptions& ro = view.ro;
  ro.fill_cache = false;
  std::string v;
  rocksdb::Status s = d.db->Get(ro, ToSlice(kInfoKey), &v);
  if (s.IsNotFound()) return Status::NotFound("no checkpoint in " + d.options.path);
  if (!s.ok()) return FromRocks(s, "reading checkpoint info");
  CheckpointInfo info;
  RECSTREAM_RETURN_IF_ERROR(DecodeInfo(v, &info));
  page->sequence = info.sequence;
  page->learned = info.learned;
  page->published = model_records::Version();
  RECSTREAM_RETURN_IF_ERROR(d.ReadPublished(view.snap, &page->published));
  page->records.clear();
  page->last_key.clear();
  std::unique_ptr<rocksdb::Iterator> it(d.db->NewIterator(ro));
  if (after.empty()) {
    it->SeekToFirst();
  } else {
    it->Seek(ToSlice(after));
    if (it->Valid() && ToView(it->key()) == after) it->Next();
  }
  for (; it->Valid(); it->Next()) {
    const std::string_view key = ToView(it->key());
    // Metadata and positions are the trainer's own.
    if (key.starts_with(kOffsetPrefix) || key == kInfoKey || key == codec::kPublishedKey ||
        key.starts_with(kOutboxPrefix))
      continue;
    const std::string_view value = ToView(it->value());
    model_records::AppendPageRecord(&page->records, key, value);
    if (page->records.size() >= max_bytes) {
      page->last_key.assign(key);
      break;
    }
  }
  if (!it->status().ok()) return FromRocks(it->status(), "reading the model");
  return Status::OK();
}

namespace {
// The outbox (PutOutbox): "x/b" + the number (big-endian, so in number
// order) -> positions, then the batch's bytes; "x/last" -> the last number.
std::string OutboxKey(uint64_t number) {
  std::string k(kOutboxPrefix);
  k += 'b';
  for (int i = 7; i >= 0; --i) k.push_back(char((number >> (8 * i)) & 0xff));
  return k;
}
const std::string kOutboxLast = std::string(kOutboxPrefix) + "last";

// Appends the purchases of `user` (keys "p/" <length> <user> <item>,
// contiguous per user) that `it` sees; `prefix` is scratch.
Status SeekPurchases(rocksdb::Iterator* it, std::string_view user, std::string* prefix,
                     std::vector<std::pair<std::string, std::string>>* out) {
  prefix->assign(kPurchasePrefix);
  codec::PutFixed32(prefix, uint32_t(user.size()));
  prefix->append(user);
  for (it->Seek(ToSlice(*prefix)); it->Valid() && ToView(it->key()).starts_with(*prefix);
       it->Next())
    out->emplace_back(std::string(user), std::string(ToView(it->key()).substr(prefix->size())));
  if (!it->status().ok()) return FromRocks(it->status(), "reading purchases back");
  return Status::OK();
}
}  // namespace

Status CheckpointStore::PutOutbox(const OutboxBatch& batch) {
  Impl& d = *impl_;
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  std::string value;
  codec::PutFixed32(&value, uint32_t(batch.positions.size()));
  for (const auto& [tp, offset] : batch.positions) {
    codec::PutFixed32(&value, uint32_t(tp.topic.size()));
    value += tp.topic;
    codec::PutFixed32(&value, uint32_t(tp.partition));
    codec::PutFixed64(&value, uint64_t(offset));
  }
  value += batch.bytes;
  std::string last;
  codec::PutFixed64(&last, batch.number);
  rocksdb::WriteBatch wb;
  rocksdb::Status s = wb.Put(ToSlice(OutboxKey(batch.number)), ToSlice(value));
  if (s.ok()) s = wb.Put(ToSlice(kOutboxLast), ToSlice(last));
  if (s.ok()) s = d.db->Write(rocksdb::WriteOptions(), &wb);
  return s.ok() ? Status::OK() : FromRocks(s, "storing an outbox batch");
}

Status CheckpointStore::SyncOutbox() {
  Impl& d = *impl_;
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  if (!d.options.sync) return Status::OK();
  rocksdb::Status s = d.db->SyncWAL();
  return s.ok() ? Status::OK() : FromRocks(s, "syncing the outbox");
}

Status CheckpointStore::ReadOutbox(std::vector<OutboxBatch>* batches, uint64_t* last) const {
  Impl& d = *impl_;
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  batches->clear();
  *last = 0;
  std::string v;
  rocksdb::Status g = d.db->Get(rocksdb::ReadOptions(), ToSlice(kOutboxLast), &v);
  if (g.ok() && v.size() == 8) *last = codec::DecodeFixed64(v.data());
  if (!g.ok() && !g.IsNotFound()) return FromRocks(g, "reading the outbox");
  std::unique_ptr<rocksdb::Iterator> it(d.db->NewIterator(rocksdb::ReadOptions()));
  const std::string first = std::string(kOutboxPrefix) + "b";
  for (it->Seek(ToSlice(first)); it->Valid(); it->Next()) {
    const std::string_view key = ToView(it->key());
    if (!key.starts_with(first) || key.size() != first.size() + 8) break;
    OutboxBatch& b = batches->emplace_back();
    for (size_t i = 0; i < 8; ++i) b.number = b.number << 8 | uint8_t(key[first.size() + i]);
    std::string_view r = ToView(it->value());
    auto bad = [&] { return Status::Corruption("outbox batch " + std::to_string(b.number) + " is malformed"); };
    if (r.size() < 4) return bad();
    uint32_t n = codec::DecodeFixed32(r.data());
    r.remove_prefix(4);
    for (uint32_t i = 0; i < n; ++i) {
      if (r.size() < 4) return bad();
      const uint32_t len = codec::DecodeFixed32(r.data());
      if (r.size() < 4 + size_t(len) + 12) return bad();
      TopicPartition tp;
      tp.topic.assign(r.substr(4, len));
      tp.partition = int32_t(codec::DecodeFixed32(r.data() + 4 + len));
      b.positions[tp] = int64_t(codec::DecodeFixed64(r.data() + 8 + len));
      r.remove_prefix(16 + len);
    }
    b.bytes.assign(r);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "reading the outbox");
  return Status::OK();
}

Status CheckpointStore::DeleteOutbox(uint64_t through) {
  Impl& d = *impl_;
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  rocksdb::WriteOptions wo;
  wo.sync = d.options.sync;
  rocksdb::Status s = d.db->DeleteRange(wo, d.db->DefaultColumnFamily(),
                                        ToSlice(OutboxKey(0)), ToSlice(OutboxKey(through + 1)));
  return s.ok() ? Status::OK() : FromRocks(s, "deleting sent outbox batches");
}

Status CheckpointStore::ReadUsers(std::span<const std::string_view> ids,
                                  std::span<const uint8_t> purchases, bool touch_times,
                                  learner::ModelSnapshot* out) const {
  Impl& d = *impl_;
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  if (ids.empty()) return Status::OK();
  SnapshotRead view(d.db.get());
  rocksdb::ReadOptions& ro = view.ro;
  // Per user: its row, its feature list, its history, when it left memory
  // (with touch_times).
  const size_t parts = touch_times ? 4 : 3;
  std::vector<std::string> keys(ids.size() * parts);
  for (size_t i = 0; i < ids.size(); ++i) {
    codec::AppendRowKey(&keys[parts * i], "user", ids[i]);
    codec::AppendFeatureListKey(&keys[parts * i + 1], "user", ids[i]);
    codec::AppendFeatureListKey(&keys[parts * i + 2], "user_history", ids[i]);
    if (touch_times)
      codec::AppendFeatureListKey(&keys[parts * i + 3], learner::kUserLeftLists, ids[i]);
  }
  std::vector<rocksdb::Slice> slices;
  slices.reserve(keys.size());
  for (const std::string& k : keys) slices.emplace_back(k);
  // The batched MultiGet (one pass over the memtables and files for all
  // keys, their filters probed together), not the one of a vector of keys,
  // which gets each key on its own.
  std::vector<rocksdb::PinnableSlice> values(slices.size());
  std::vector<rocksdb::Status> got(slices.size());
  d.db->MultiGet(ro, d.db->DefaultColumnFamily(), slices.size(), slices.data(), values.data(),
                 got.data());
  learner::TableDelta rows;
  rows.table = "user";
  learner::FeatureListDelta lists, histories, left;
  lists.table = "user";
  histories.table = "user_history";
  left.table = std::string(learner::kUserLeftLists);
  std::unique_ptr<rocksdb::Iterator> it;
  std::string prefix;
  for (size_t i = 0; i < ids.size(); ++i) {
    const rocksdb::Status& row_status = got[parts * i];
    if (row_status.IsNotFound()) continue;
    if (!row_status.ok()) return FromRocks(row_status, "reading a user back");
    const std::string_view row = ToView(values[parts * i]);
    if (row.empty() || row.size() % 4 != 0)
      return Status::Corruption("stored row of user '" + std::string(ids[i]) + "' is malformed");
    const int width = int(row.size() / 4);
    if (rows.width == 0) rows.width = width;
    if (width != rows.width)
      return Status::Corruption("stored rows of table 'user' differ in width");
    rows.keys.emplace_back(ids[i]);
    const size_t at = rows.values.size();
    rows.values.resize(at + size_t(width));
    codec::DecodeFloats(row, rows.values.data() + at);
    for (size_t part = 1; part < parts; ++part) {
      const rocksdb::Status& st = got[parts * i + part];
      if (st.IsNotFound()) continue;
      if (!st.ok()) return FromRocks(st, "reading a user back");
      std::string_view table, id;
      std::vector<std::string> features;
      RECSTREAM_RETURN_IF_ERROR(codec::DecodeFeatureList(
          std::string_view(keys[parts * i + part]).substr(kFeatureListPrefix.size()),
          ToView(values[parts * i + part]), &table, &id, &features));
      learner::FeatureListDelta& dst = part == 1 ? lists : part == 2 ? histories : left;
      dst.keys.emplace_back(ids[i]);
      dst.features.push_back(std::move(features));
    }
    if (!purchases.empty() && (i >= purchases.size() || !purchases[i])) continue;
    if (!it) it.reset(d.db->NewIterator(ro));
    RECSTREAM_RETURN_IF_ERROR(SeekPurchases(it.get(), ids[i], &prefix, &out->new_purchases));
  }
  if (!rows.keys.empty()) out->tables.push_back(std::move(rows));
  if (!lists.keys.empty()) out->feature_lists.push_back(std::move(lists));
  if (!histories.keys.empty()) out->feature_lists.push_back(std::move(histories));
  if (!left.keys.empty()) out->feature_lists.push_back(std::move(left));
  return Status::OK();
}

Status CheckpointStore::ReadPurchases(std::span<const std::string_view> ids,
                                      std::vector<std::pair<std::string, std::string>>* out) const {
  Impl& d = *impl_;
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  if (ids.empty()) return Status::OK();
  SnapshotRead view(d.db.get());
  std::unique_ptr<rocksdb::Iterator> it(d.db->NewIterator(view.ro));
  std::string prefix;
  for (std::string_view id : ids)
    RECSTREAM_RETURN_IF_ERROR(SeekPurchases(it.get(), id, &prefix, out));
  return Status::OK();
}

Status CheckpointStore::ScanLeft(std::string_view after, size_t max,
                                 std::vector<LeftUser>* out) const {
  Impl& d = *impl_;
  out->clear();
  if (!d.db) return Status::Unavailable("store " + d.options.path + " is not open");
  std::string prefix;
  codec::AppendFeatureListKey(&prefix, learner::kUserLeftLists, "");
  std::string from = prefix;
  from += after;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(d.db->NewIterator(ro));
  it->Seek(ToSlice(from));
  if (!after.empty() && it->Valid() && ToView(it->key()) == from) it->Next();
  std::vector<std::string> features;
  for (; it->Valid() && out->size() < max; it->Next()) {
    const std::string_view key = ToView(it->key());
    if (!key.starts_with(prefix)) break;
    std::string_view table, id;
    features.clear();
    RECSTREAM_RETURN_IF_ERROR(codec::DecodeFeatureList(key.substr(kFeatureListPrefix.size()),
                                                       ToView(it->value()), &table, &id, &features));
    LeftUser u;
    u.id.assign(id);
    if (!features.empty()) u.touched = uint32_t(std::strtoul(features[0].c_str(), nullptr, 10));
    out->push_back(std::move(u));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "reading users that left memory");
  return Status::OK();
}

CheckpointStore::MemoryUsage CheckpointStore::Memory() const {
  MemoryUsage m;
  const Impl& d = *impl_;
  if (!d.db) return m;
  auto prop = [&](const char* name) {
    uint64_t v = 0;
    return d.db->GetIntProperty(name, &v) ? v : 0;
  };
  m.memtables = prop("rocksdb.size-all-mem-tables");
  m.table_readers = prop("rocksdb.estimate-table-readers-mem");
  m.block_cache = prop("rocksdb.block-cache-usage");
  return m;
}

CheckpointInfo CheckpointStore::last() const {
  std::lock_guard<std::mutex> lock(impl_->state_mu);
  return impl_->last;
}

Status CheckpointStore::Health() const {
  std::lock_guard<std::mutex> lock(impl_->state_mu);
  return impl_->health;
}

}  // namespace recstream::store
