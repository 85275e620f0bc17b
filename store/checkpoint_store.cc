#include "store/checkpoint_store.h"

#include <oneapi/tbb/parallel_sort.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/table.h>
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

namespace recstream::store {

// Rows and dense blocks are stored as the floats' raw bytes.
static_assert(std::endian::native == std::endian::little, "store/ assumes a little-endian host");
static_assert(sizeof(float) == 4);
static_assert(learner::kNumTasks == 3, "CheckpointInfo::learned and m/info hold 3 tasks");

namespace {

constexpr char kInfoKey[] = "m/info";
constexpr char kShapeKey[] = "m/shape";
constexpr char kWidthPrefix[] = "m/width/";
constexpr char kRowPrefix[] = "r/";
constexpr char kDensePrefix[] = "d/";
constexpr char kPurchasePrefix[] = "p/";
constexpr char kFeatureListPrefix[] = "f/";
constexpr char kOffsetPrefix[] = "o/";
// Subdirectory of the store holding table files until they are ingested.
constexpr char kIngestDir[] = "ingest";
constexpr size_t kInfoSize = 8 * 5 + 8 * 3;

// Sequential scans of a whole prefix: read ahead generously.
constexpr size_t kScanReadahead = 4 << 20;

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  std::string message = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(std::move(message));
  if (s.IsCorruption()) return Status::Corruption(std::move(message));
  return Status::IOError(std::move(message));
}

template <typename T>
void PutFixed(std::string* dst, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  dst->append(buf, sizeof(T));
}

template <typename T>
T GetFixed(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// The smallest key greater than every key starting with `prefix` (no prefix
// here ends in 0xff).
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

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  end.back() = static_cast<char>(end.back() + 1);
  return end;
}

rocksdb::Slice FloatSlice(const float* p, size_t n) {
  return rocksdb::Slice(reinterpret_cast<const char*>(p), n * sizeof(float));
}

std::string EncodeInfo(const CheckpointInfo& info) {
  std::string v;
  v.reserve(kInfoSize);
  PutFixed<uint64_t>(&v, info.sequence);
  PutFixed<int64_t>(&v, info.time_ms);
  PutFixed<uint64_t>(&v, info.rows);
  PutFixed<uint64_t>(&v, info.bytes);
  PutFixed<double>(&v, info.duration_ms);
  for (uint64_t n : info.learned) PutFixed<uint64_t>(&v, n);
  return v;
}

Status DecodeInfo(const rocksdb::Slice& v, CheckpointInfo* info) {
  if (v.size() != kInfoSize) {
    return Status::Corruption("checkpoint info has " + std::to_string(v.size()) +
                              " bytes, expected " + std::to_string(kInfoSize));
  }
  const char* p = v.data();
  info->sequence = GetFixed<uint64_t>(p);
  info->time_ms = GetFixed<int64_t>(p + 8);
  info->rows = GetFixed<uint64_t>(p + 16);
  info->bytes = GetFixed<uint64_t>(p + 24);
  info->duration_ms = GetFixed<double>(p + 32);
  for (int i = 0; i < 3; ++i) info->learned[i] = GetFixed<uint64_t>(p + 40 + 8 * i);
  return Status::OK();
}

std::string OffsetKey(const TopicPartition& tp) {
  std::string k(kOffsetPrefix);
  k += tp.topic;
  k.push_back('\0');
  PutFixed<int32_t>(&k, tp.partition);
  return k;
}

// `rest` is the key after kOffsetPrefix.
Status DecodeOffset(std::string_view rest, const rocksdb::Slice& v, TopicPartition* tp,
                    int64_t* offset) {
  if (rest.size() < 5 || rest[rest.size() - 5] != '\0' || v.size() != 8) {
    return Status::Corruption("malformed offset entry");
  }
  tp->topic.assign(rest.data(), rest.size() - 5);
  tp->partition = GetFixed<int32_t>(rest.data() + rest.size() - 4);
  *offset = GetFixed<int64_t>(v.data());
  return Status::OK();
}

Status DecodeWidth(std::string_view table, const rocksdb::Slice& v, int* width) {
  if (v.size() != 4) return Status::Corruption("malformed width of table " + std::string(table));
  uint32_t w = GetFixed<uint32_t>(v.data());
  if (w == 0 || w > (1u << 20)) {
    return Status::Corruption("implausible width " + std::to_string(w) + " of table " +
                              std::string(table));
  }
  *width = static_cast<int>(w);
  return Status::OK();
}

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

rocksdb::Options MakeRocksOptions() {
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
  // compress: measured on 1M rows of 70 floats, lz4 saved 0% of the space
  // and made Load 50% and recovery 40% slower. So no compression.
  o.compression = rocksdb::kNoCompression;
  // Start writing back while a checkpoint is still being written, so that
  // its final sync has little left to do.
  o.bytes_per_sync = 8 << 20;
  o.wal_bytes_per_sync = 8 << 20;
  o.keep_log_file_num = 5;
  o.max_log_file_size = 16 << 20;
  // Only whole-prefix scans and a few point reads: big blocks, no filters.
  rocksdb::BlockBasedTableOptions t;
  t.block_size = 64 << 10;
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

  rocksdb::Options RocksOptions() {
    rocksdb::Options o = MakeRocksOptions();
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
    };
    // Row and feature-list keys (and the lists' values) live in arenas sized
    // up front, so views into them stay valid; the few other keys and values
    // in `owned`.
    size_t arena_size = 0, count = 0;
    for (const auto& t : snapshot.tables) {
      for (const auto& k : t.keys) arena_size += sizeof(kRowPrefix) + t.table.size() + k.size();
      count += t.keys.size() + 1;
    }
    for (const auto& l : snapshot.feature_lists) {
      for (size_t i = 0; i < l.keys.size(); ++i) {
        arena_size += sizeof(kFeatureListPrefix) + l.table.size() + l.keys[i].size() + 4;
        for (const std::string& f : l.features[i]) arena_size += 4 + f.size();
      }
      count += l.keys.size();
    }
    std::string arena;
    arena.reserve(arena_size);
    std::deque<std::string> owned;
    std::vector<Entry> entries;
    entries.reserve(count + snapshot.dense.size() + snapshot.new_purchases.size() +
                    new_offsets.size() + 2);
    auto own = [&owned](std::string v) -> std::string_view {
      return owned.emplace_back(std::move(v));
    };
    auto add = [&entries](std::string_view k, std::string_view v) {
      entries.push_back({k, v, entries.size()});
    };
    auto arena_since = [&arena](size_t at) { return std::string_view(arena).substr(at); };

    for (const auto& t : snapshot.tables) {
      std::string width_value;
      PutFixed<uint32_t>(&width_value, static_cast<uint32_t>(t.width));
      add(own(std::string(kWidthPrefix) + t.table), own(std::move(width_value)));
      const size_t row_bytes = static_cast<size_t>(t.width) * sizeof(float);
      const char* values = reinterpret_cast<const char*>(t.values.data());
      for (size_t i = 0; i < t.keys.size(); ++i) {
        const size_t at = arena.size();
        arena += kRowPrefix;
        arena += t.table;
        arena.push_back('\0');
        arena += t.keys[i];
        add(arena_since(at), std::string_view(values + i * row_bytes, row_bytes));
      }
    }
    for (const auto& [name, values] : snapshot.dense) {
      add(own(std::string(kDensePrefix) + name),
          std::string_view(reinterpret_cast<const char*>(values.data()),
                           values.size() * sizeof(float)));
    }
    for (const auto& l : snapshot.feature_lists) {
      for (size_t i = 0; i < l.keys.size(); ++i) {
        size_t at = arena.size();
        arena += kFeatureListPrefix;
        arena += l.table;
        arena.push_back('\0');
        arena += l.keys[i];
        std::string_view key = arena_since(at);
        at = arena.size();
        PutFixed<uint32_t>(&arena, static_cast<uint32_t>(l.features[i].size()));
        for (const std::string& f : l.features[i]) {
          PutFixed<uint32_t>(&arena, static_cast<uint32_t>(f.size()));
          arena += f;
        }
        add(key, arena_since(at));
      }
    }
    for (const auto& [user, item] : snapshot.new_purchases) {
      std::string key(kPurchasePrefix);
      PutFixed<uint32_t>(&key, static_cast<uint32_t>(user.size()));
      key += user;
      key += item;
      add(own(std::move(key)), std::string_view());
    }
    add(kShapeKey, snapshot.shape);
    for (const auto& [tp, offset] : new_offsets) {
      std::string v;
      PutFixed<int64_t>(&v, offset);
      add(own(OffsetKey(tp)), own(std::move(v)));
    }
    std::string& info_value = owned.emplace_back(kInfoSize, '\0');
    add(kInfoKey, info_value);

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
    std::memcpy(info_value.data(), info.data(), kInfoSize);  // same size: views stay valid

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
        s = writer.Put(rocksdb::Slice(e.key.data(), e.key.size()),
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

  // Fills the caches and `last` from the stored metadata.
  Status ReadMetadata() {
    std::string v;
    rocksdb::Status s = db->Get(rocksdb::ReadOptions(), kInfoKey, &v);
    if (s.IsNotFound()) return Status::OK();
    if (!s.ok()) return FromRocks(s, "reading checkpoint info");
    CheckpointInfo info;
    RECSTREAM_RETURN_IF_ERROR(DecodeInfo(v, &info));
    s = db->Get(rocksdb::ReadOptions(), kShapeKey, &shape);
    if (s.IsNotFound()) return Status::Corruption("checkpoint without a model shape");
    if (!s.ok()) return FromRocks(s, "reading model shape");
    RECSTREAM_RETURN_IF_ERROR(
        Scan(nullptr, kWidthPrefix, [&](std::string_view table, const rocksdb::Slice& value) {
          return DecodeWidth(table, value, &widths[std::string(table)]);
        }));
    RECSTREAM_RETURN_IF_ERROR(
        Scan(nullptr, kOffsetPrefix, [&](std::string_view rest, const rocksdb::Slice& value) {
          TopicPartition tp;
          int64_t offset = 0;
          RECSTREAM_RETURN_IF_ERROR(DecodeOffset(rest, value, &tp, &offset));
          offsets[tp] = offset;
          return Status::OK();
        }));
    info.offsets = offsets;
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
  OffsetMap merged = d.offsets;
  for (const auto& [tp, offset] : offsets) merged[tp] = offset;

  rocksdb::Status s;
  if (!replace && reserve >= d.options.ingest_min_bytes) {
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
  auto put = [&batch](const rocksdb::Slice& k, const rocksdb::Slice& v) { return batch.Put(k, v); };
  if (replace) {
    // A model of another shape: nothing of the old one may survive.
    for (std::string_view prefix :
         {kRowPrefix, kDensePrefix, kPurchasePrefix, kWidthPrefix, kFeatureListPrefix}) {
      std::string end = PrefixEnd(prefix);
      s = batch.DeleteRange(rocksdb::Slice(prefix.data(), prefix.size()), end);
      if (!s.ok()) break;
    }
  }
  std::string key;
  for (const auto& t : snapshot.tables) {
    if (!s.ok()) break;
    std::string width_value;
    PutFixed<uint32_t>(&width_value, static_cast<uint32_t>(t.width));
    s = put(std::string(kWidthPrefix) + t.table, width_value);
    key.assign(kRowPrefix);
    key += t.table;
    key.push_back('\0');
    const size_t id_at = key.size();
    for (size_t i = 0; i < t.keys.size() && s.ok(); ++i) {
      key.resize(id_at);
      key += t.keys[i];
      s = put(key, FloatSlice(t.values.data() + i * t.width, t.width));
    }
  }
  for (const auto& [name, values] : snapshot.dense) {
    if (!s.ok()) break;
    s = put(std::string(kDensePrefix) + name, FloatSlice(values.data(), values.size()));
  }
  for (const auto& l : snapshot.feature_lists) {
    if (!s.ok()) break;
    // "f/<table>\0<id>" -> count u32, then (length u32, bytes) per feature.
    key.assign(kFeatureListPrefix);
    key += l.table;
    key.push_back('\0');
    const size_t id_at = key.size();
    std::string value;
    for (size_t i = 0; i < l.keys.size() && s.ok(); ++i) {
      key.resize(id_at);
      key += l.keys[i];
      value.clear();
      PutFixed<uint32_t>(&value, static_cast<uint32_t>(l.features[i].size()));
      for (const std::string& f : l.features[i]) {
        PutFixed<uint32_t>(&value, static_cast<uint32_t>(f.size()));
        value += f;
      }
      s = put(key, value);
    }
  }
  for (const auto& [user, item] : snapshot.new_purchases) {
    if (!s.ok()) break;
    key.assign(kPurchasePrefix);
    PutFixed<uint32_t>(&key, static_cast<uint32_t>(user.size()));
    key += user;
    key += item;
    s = put(key, rocksdb::Slice());
  }
  if (s.ok()) s = put(kShapeKey, snapshot.shape);
  for (const auto& [tp, offset] : offsets) {
    if (!s.ok()) break;
    std::string v;
    PutFixed<int64_t>(&v, offset);
    s = put(OffsetKey(tp), v);
  }
  next->bytes = batch.GetDataSize() + kInfoSize + sizeof(kInfoKey) + 8;
  next->duration_ms = MillisSince(start);
  if (s.ok()) s = put(kInfoKey, EncodeInfo(*next));
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
  const rocksdb::Snapshot* snap = d.db->GetSnapshot();
  struct Release {
    rocksdb::DB* db;
    const rocksdb::Snapshot* snap;
    ~Release() { db->ReleaseSnapshot(snap); }
  } release{d.db.get(), snap};
  rocksdb::ReadOptions ro;
  ro.snapshot = snap;

  std::string v;
  rocksdb::Status s = d.db->Get(ro, kInfoKey, &v);
  if (s.IsNotFound()) return Status::NotFound("no checkpoint in " + d.options.path);
  if (!s.ok()) return FromRocks(s, "reading checkpoint info");
  CheckpointInfo loaded;
  RECSTREAM_RETURN_IF_ERROR(DecodeInfo(v, &loaded));

  learner::ModelSnapshot out;
  s = d.db->Get(ro, kShapeKey, &out.shape);
  if (s.IsNotFound()) return Status::Corruption("checkpoint without a model shape");
  if (!s.ok()) return FromRocks(s, "reading model shape");
  out.learned = {loaded.learned[0], loaded.learned[1], loaded.learned[2]};

  // Tables in name order, which is also the order of their rows' keys.
  std::map<std::string, int> widths;
  RECSTREAM_RETURN_IF_ERROR(
      d.Scan(snap, kWidthPrefix, [&](std::string_view table, const rocksdb::Slice& value) {
        return DecodeWidth(table, value, &widths[std::string(table)]);
      }));
  std::map<std::string, size_t> table_index;
  for (const auto& [table, width] : widths) {
    table_index[table] = out.tables.size();
    learner::TableDelta t;
    t.table = table;
    t.width = width;
    // Reserving from RocksDB's size estimate (keys included, so slightly
    // over) avoids regrowing gigabytes of floats for big models.
    const std::string begin = std::string(kRowPrefix) + table + std::string(1, '\0');
    const std::string end = PrefixEnd(begin);
    rocksdb::Range range(begin, end);
    rocksdb::SizeApproximationOptions approx;
    approx.include_memtables = true;
    uint64_t bytes = 0;
    if (sink == nullptr &&
        d.db->GetApproximateSizes(approx, d.db->DefaultColumnFamily(), &range, 1, &bytes).ok()) {
      const uint64_t rows = bytes / (static_cast<uint64_t>(width) * sizeof(float));
      t.values.reserve(std::min<uint64_t>(rows, uint64_t{1} << 28) * width);
      t.keys.reserve(std::min<uint64_t>(rows, uint64_t{1} << 28));
    }
    out.tables.push_back(std::move(t));
  }

  // Checks one row entry; sets *table to its table (kept between calls).
  auto decode_row = [&](std::string_view rest, const rocksdb::Slice& value,
                        learner::TableDelta** table) {
    size_t sep = rest.find('\0');
    if (sep == std::string_view::npos) return Status::Corruption("row key without a table");
    std::string_view name = rest.substr(0, sep);
    if (*table == nullptr || (*table)->table != name) {
      auto it = table_index.find(std::string(name));
      if (it == table_index.end()) {
        return Status::Corruption("rows of table " + std::string(name) +
                                  " whose width is not stored");
      }
      *table = &out.tables[it->second];
    }
    const size_t bytes = static_cast<size_t>((*table)->width) * sizeof(float);
    if (value.size() != bytes) {
      return Status::Corruption("row of table " + (*table)->table + " has " +
                                std::to_string(value.size()) + " bytes, expected " +
                                std::to_string(bytes));
    }
    return Status::OK();
  };

  // Streaming over several key ranges: one thread per range reads its rows
  // and hands each block to the sink itself.
  const std::vector<std::string> splits =
      sink != nullptr ? d.RowSplits(threads) : std::vector<std::string>();
  if (!splits.empty()) {
    const std::vector<std::string> bounds = RangeBounds(kRowPrefix, splits);
    RECSTREAM_RETURN_IF_ERROR(OnEachRange(bounds.size() - 1, [&](size_t r) {
      learner::TableDelta block;
      learner::TableDelta* table = nullptr;
      Status s;
      auto flush = [&] {
        if (!block.keys.empty() && s.ok()) s = (*sink)(block);
        block.keys.clear();
        block.values.clear();
      };
      Status scanned = d.ScanRange(
          snap, kRowPrefix, bounds[r], bounds[r + 1],
          [&](std::string_view rest, const rocksdb::Slice& value) {
            RECSTREAM_RETURN_IF_ERROR(decode_row(rest, value, &table));
            if (block.keys.size() >= BlockPipeline::kBlockRows || block.table != table->table) {
              flush();
              RECSTREAM_RETURN_IF_ERROR(s);
              block.table = table->table;
              block.width = table->width;
            }
            block.keys.emplace_back(rest.substr(rest.find('\0') + 1));
            const size_t at = block.values.size();
            block.values.resize(at + block.width);
            std::memcpy(block.values.data() + at, value.data(), value.size());
            return Status::OK();
          });
      flush();
      return scanned.ok() ? s : scanned;
    }));
  }

  learner::TableDelta* current = nullptr;
  std::optional<BlockPipeline> pipeline;
  if (sink != nullptr && splits.empty()) pipeline.emplace(*sink, threads);
  Status scanned =
      !splits.empty()
          ? Status::OK()
          : d.Scan(snap, kRowPrefix, [&](std::string_view rest, const rocksdb::Slice& value) {
              RECSTREAM_RETURN_IF_ERROR(decode_row(rest, value, &current));
              const size_t sep = rest.find('\0');
              const size_t bytes = value.size();
              learner::TableDelta* to = current;
              if (pipeline) {
                to = &pipeline->current();
                if (to->keys.size() >= BlockPipeline::kBlockRows || to->table != current->table) {
                  RECSTREAM_RETURN_IF_ERROR(pipeline->Next(current->table, current->width));
                }
              }
              to->keys.emplace_back(rest.substr(sep + 1));
              const size_t at = to->values.size();
              to->values.resize(at + to->width);
              std::memcpy(to->values.data() + at, value.data(), bytes);
              return Status::OK();
            });
  if (pipeline) {
    Status finished = pipeline->Finish();
    if (scanned.ok()) scanned = finished;
  }
  RECSTREAM_RETURN_IF_ERROR(scanned);

  RECSTREAM_RETURN_IF_ERROR(
      d.Scan(snap, kDensePrefix, [&](std::string_view name, const rocksdb::Slice& value) {
        if (value.size() % sizeof(float) != 0) {
          return Status::Corruption("dense block " + std::string(name) + " has " +
                                    std::to_string(value.size()) + " bytes");
        }
        std::vector<float> values(value.size() / sizeof(float));
        if (!values.empty()) std::memcpy(values.data(), value.data(), value.size());
        out.dense.emplace_back(std::string(name), std::move(values));
        return Status::OK();
      }));

  RECSTREAM_RETURN_IF_ERROR(
      d.Scan(snap, kPurchasePrefix, [&](std::string_view rest, const rocksdb::Slice&) {
        if (rest.size() < 4) return Status::Corruption("malformed purchase key");
        const uint32_t user_len = GetFixed<uint32_t>(rest.data());
        if (user_len > rest.size() - 4) return Status::Corruption("malformed purchase key");
        out.new_purchases.emplace_back(std::string(rest.substr(4, user_len)),
                                       std::string(rest.substr(4 + user_len)));
        return Status::OK();
      }));

  // One feature list entry: table and owner from the key, features from
  // the value.
  auto decode_list = [](std::string_view rest, const rocksdb::Slice& value, std::string_view* table,
                        std::string_view* owner, std::vector<std::string>* features) {
    size_t sep = rest.find('\0');
    if (sep == std::string_view::npos) return Status::Corruption("feature list without a table");
    *table = rest.substr(0, sep);
    *owner = rest.substr(sep + 1);
    auto malformed = [&] {
      return Status::Corruption("malformed feature list in table " + std::string(*table));
    };
    std::string_view v(value.data(), value.size());
    auto take_u32 = [&v](uint32_t* x) {
      if (v.size() < 4) return false;
      *x = GetFixed<uint32_t>(v.data());
      v.remove_prefix(4);
      return true;
    };
    uint32_t count = 0;
    if (!take_u32(&count) || count > v.size() / 4) return malformed();
    features->clear();
    for (uint32_t i = 0; i < count; ++i) {
      uint32_t len = 0;
      if (!take_u32(&len) || len > v.size()) return malformed();
      features->emplace_back(v.substr(0, len));
      v.remove_prefix(len);
    }
    if (!v.empty()) return malformed();
    return Status::OK();
  };
  if (list_sink != nullptr) {
    // Streaming: one thread per key range, each handing its blocks to the
    // sink itself.
    const std::vector<std::string> bounds =
        RangeBounds(kFeatureListPrefix, d.Splits(kFeatureListPrefix, threads));
    RECSTREAM_RETURN_IF_ERROR(OnEachRange(bounds.size() - 1, [&](size_t r) {
      learner::FeatureListDelta block;
      Status s;
      auto flush = [&] {
        if (!block.keys.empty() && s.ok()) s = (*list_sink)(block);
        block.keys.clear();
        block.features.clear();
      };
      Status scanned = d.ScanRange(
          snap, kFeatureListPrefix, bounds[r], bounds[r + 1],
          [&](std::string_view rest, const rocksdb::Slice& value) {
            std::string_view table, owner;
            std::vector<std::string> features;
            RECSTREAM_RETURN_IF_ERROR(decode_list(rest, value, &table, &owner, &features));
            if (block.keys.size() >= BlockPipeline::kBlockRows || block.table != table) {
              flush();
              RECSTREAM_RETURN_IF_ERROR(s);
              block.table = std::string(table);
            }
            block.keys.emplace_back(owner);
            block.features.push_back(std::move(features));
            return Status::OK();
          });
      flush();
      return scanned.ok() ? s : scanned;
    }));
  } else {
    learner::FeatureListDelta* lists = nullptr;
    RECSTREAM_RETURN_IF_ERROR(
        d.Scan(snap, kFeatureListPrefix, [&](std::string_view rest, const rocksdb::Slice& value) {
          std::string_view table, owner;
          std::vector<std::string> features;
          RECSTREAM_RETURN_IF_ERROR(decode_list(rest, value, &table, &owner, &features));
          if (lists == nullptr || lists->table != table) {
            lists = &out.feature_lists.emplace_back();
            lists->table = std::string(table);
          }
          lists->keys.emplace_back(owner);
          lists->features.push_back(std::move(features));
          return Status::OK();
        }));
  }

  OffsetMap stored_offsets;
  RECSTREAM_RETURN_IF_ERROR(
      d.Scan(snap, kOffsetPrefix, [&](std::string_view rest, const rocksdb::Slice& value) {
        TopicPartition tp;
        int64_t offset = 0;
        RECSTREAM_RETURN_IF_ERROR(DecodeOffset(rest, value, &tp, &offset));
        stored_offsets[tp] = offset;
        return Status::OK();
      }));

  loaded.offsets = stored_offsets;
  *full = std::move(out);
  if (offsets != nullptr) *offsets = std::move(stored_offsets);
  if (info != nullptr) *info = std::move(loaded);
  return Status::OK();
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
