// The record format of a checkpoint: every key and value the store writes,
// encoded and decoded in one place, free of RocksDB types (so that the model
// topic of replicas can carry the same records).
//
// Every integer and float is little-endian, whatever the host: fixed-width
// integers byte by byte (as LevelDB's util/coding.h), floats as the
// little-endian bytes of their IEEE-754 bits. On a little-endian host rows
// and dense blocks are plain copies of the learner's floats.
//
// Keys and values (u32/i32/i64/u64/f32/f64: fixed width; <x>: bytes):
//
//   key                              value
//   "m/info"                         sequence u64, time_ms i64, rows u64, bytes u64,
//                                    duration_ms f64, learned u64 x 3 (task order)
//   "m/shape"                        the model's shape string
//   "m/width/" <table>               floats per row of <table>, u32 (1..2^20)
//   "r/" <table> \0 <id>             one row: width x f32
//   "d/" <name>                      one dense block: n x f32
//   "p/" <len u32> <user> <item>     a purchase (empty value); len = user's length
//   "f/" <table> \0 <id>             side features of a user or item: count u32,
//                                    then per feature: length u32, bytes; the same
//                                    layout holds a user's history ("user_history"),
//                                    the negative ring, and, for a user that left
//                                    memory under a memory limit ("user_left"), its
//                                    touch time in decimal (store only)
//   "o/" <topic> \0 <partition i32>  next offset to consume, i64
//   "m/published"                    the model-topic version of the stored
//                                    model: generation u64, sequence u64
//
// Keys sort bytewise (RocksDB's default comparator), so all rows of a table
// are contiguous and tables come in name order. A table name never contains
// '\0'. Decoding never trusts a length: a record that does not fit its
// layout is Corruption, naming the record.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/offsets.h"
#include "common/status.h"
#include "learner/learner.h"

namespace recstream::store::codec {

// Key prefixes, one per record kind.
inline constexpr std::string_view kInfoKey = "m/info";
inline constexpr std::string_view kShapeKey = "m/shape";
inline constexpr std::string_view kWidthPrefix = "m/width/";
inline constexpr std::string_view kRowPrefix = "r/";
inline constexpr std::string_view kDensePrefix = "d/";
inline constexpr std::string_view kPurchasePrefix = "p/";
inline constexpr std::string_view kFeatureListPrefix = "f/";
inline constexpr std::string_view kOffsetPrefix = "o/";
// Several trainers: the outbox of changes taken for other trainers
// (CheckpointStore::PutOutbox), the trainer's own, never part of the model.
inline constexpr std::string_view kOutboxPrefix = "x/";
// The model-topic version the stored model is (when the trainer publishes):
// generation u64, sequence u64 (store/model_records.h).
inline constexpr std::string_view kPublishedKey = "m/published";
// The prefixes of the model's records (not metadata or offsets): what a model
// of another shape replaces.
inline constexpr std::string_view kModelPrefixes[] = {kRowPrefix, kDensePrefix, kPurchasePrefix,
                                                      kWidthPrefix, kFeatureListPrefix};

// The smallest key greater than every key that starts with `prefix` (no
// prefix above ends in 0xff).
std::string PrefixEnd(std::string_view prefix);

// ---- primitives
void PutFixed32(std::string* dst, uint32_t v);
void PutFixed64(std::string* dst, uint64_t v);
// `p` must hold 4 (8) bytes.
uint32_t DecodeFixed32(const char* p);
uint64_t DecodeFixed64(const char* p);
// n floats, little-endian.
void PutFloats(std::string* dst, const float* values, size_t n);
// Reads value.size() / 4 floats into `out` (which must hold them).
void DecodeFloats(std::string_view value, float* out);
// True when PutFloats is a plain copy of the floats' bytes (a little-endian
// host), so that a caller may point at the learner's floats directly.
bool FloatsAreNative();

// ---- the checkpoint's metadata
struct Info {
  uint64_t sequence = 0;
  int64_t time_ms = 0;
  uint64_t rows = 0;
  uint64_t bytes = 0;
  double duration_ms = 0.0;
  uint64_t learned[learner::kNumTasks] = {0, 0, 0};
};
inline constexpr size_t kInfoSize = 8 * 5 + 8 * learner::kNumTasks;
std::string EncodeInfo(const Info& info);
Status DecodeInfo(std::string_view value, Info* info);

std::string WidthKey(std::string_view table);
std::string EncodeWidth(int width);
Status DecodeWidth(std::string_view table, std::string_view value, int* width);

// ---- rows: keys are appended to a caller's buffer (the hot path reuses it).
void AppendRowKey(std::string* dst, std::string_view table, std::string_view id);
// `rest`: the key after kRowPrefix. Splits it into table and id.
Status DecodeRowKey(std::string_view rest, std::string_view* table, std::string_view* id);
// Checks that a row value of `table` holds exactly `width` floats.
Status CheckRowValue(std::string_view table, int width, std::string_view value);

std::string DenseKey(std::string_view name);
Status DecodeDense(std::string_view name, std::string_view value, std::vector<float>* values);

std::string PurchaseKey(std::string_view user, std::string_view item);
// `rest`: the key after kPurchasePrefix.
Status DecodePurchaseKey(std::string_view rest, std::string* user, std::string* item);

void AppendFeatureListKey(std::string* dst, std::string_view table, std::string_view id);
void AppendFeatureList(std::string* dst, const std::vector<std::string>& features);
// `rest`: the key after kFeatureListPrefix.
Status DecodeFeatureList(std::string_view rest, std::string_view value, std::string_view* table,
                         std::string_view* id, std::vector<std::string>* features);

std::string EncodePublished(uint64_t generation, uint64_t sequence);
Status DecodePublished(std::string_view value, uint64_t* generation, uint64_t* sequence);

std::string OffsetKey(const TopicPartition& tp);
std::string EncodeOffset(int64_t offset);
// `rest`: the key after kOffsetPrefix.
Status DecodeOffset(std::string_view rest, std::string_view value, TopicPartition* tp,
                    int64_t* offset);

// Calls emit(key, value, value_stable) for every record of `snapshot` and
// `offsets` except the info record (whose byte count depends on the rest),
// in this order: per table its width then its rows, dense blocks, feature
// lists, purchases, the shape, the offsets. `key` is valid only during the
// call; `value` too, unless `value_stable`: then it points into `snapshot`
// and stays valid as long as it does (rows and dense blocks on a
// little-endian host). Stops at, and returns, the first non-OK status of
// `emit`.
template <typename Emit>
Status ForEachRecord(const learner::ModelSnapshot& snapshot, const OffsetMap& offsets, Emit&& emit);

// Calls fn(key) for every key the snapshot's deletions remove (expiry):
// per removed id its row, its feature list and, for a user, its history and
// "user_left" record;
// then each deleted purchase. A writer applies these before the records of
// ForEachRecord (an id removed and seen again since is in both). `key` is
// valid only during the call. Stops at, and returns, the first non-OK
// status of `fn`.
template <typename Fn>
Status ForEachDeletedKey(const learner::ModelSnapshot& snapshot, Fn&& fn);

}  // namespace recstream::store::codec

#include "store/codec_inl.h"  // IWYU pragma: keep
