// The records of the model topic (kafka.topics.model; docs/interface.md,
// "Replicas and the model topic"): how a trainer publishes its model to
// replicas, and how a replica turns records back into snapshots.
//
// A published VERSION is the delta snapshot the trainer took at one moment
// (or, after a restart or a failed publish, its whole model). Its records go
// to the trainer's own partition of the model topic, in order, followed by
// one commit record. Keys are the store's keys (store/codec.h), so the topic
// can be compacted: the latest record of every row, feature list, purchase
// and dense chunk is all a new replica needs.
//
//   key                                     payload (after the header below)
//   "m/width/" <table>                      the store's width record
//   "m/shape"                               the model's shape string
//   "r/" <table> \0 <id>                    one row: width x f32 (as stored)
//   "f/" <table> \0 <id>                    a feature list (as stored)
//   "p/" <len u32> <user> <item>            a purchase (empty)
//   "d/" <name> \0 <chunk u32>              one chunk of a dense block:
//                                           chunks u32, total floats u32,
//                                           then up to kDenseChunkFloats f32
//   "m/commit"                              the version's commit (Commit)
//   "m/page" <number u32>                   many records in one (kind kPage),
//                                           the page's number in its batch:
//                                           records of the kinds above,
//                                           framed as page records
//                                           (AppendPageRecord), each value
//                                           with its own header. Only the
//                                           updates topic of several trainers
//                                           carries these (replicate/exchange.h);
//                                           a model topic never does.
//
// Every value begins with a 20-byte header: the magic bytes 'R' 'M', the
// format (kFormat), the kind (Kind), the version's generation u64 and
// sequence u64. All integers and floats are little-endian (store/codec.h).
// A record without a value (a Kafka tombstone) deletes its key: a removed
// id's row ("r/..."), feature list and history ("f/..."), or a purchase
// ("p/..."). Tombstones belong to the version whose records surround them
// and count among its records.
//
// A reader applies a version only once its commit has arrived and the
// number of records it saw matches the commit's count, so it never serves
// half a version; a dense block is replaced only by all of its chunks.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "learner/learner.h"

namespace recstream::store::model_records {

inline constexpr uint8_t kFormat = 1;
inline constexpr size_t kHeaderSize = 20;
// Floats per dense chunk (64 KiB), well under Kafka's default message size.
inline constexpr uint32_t kDenseChunkFloats = 16384;
inline constexpr std::string_view kCommitKey = "m/commit";
inline constexpr std::string_view kPageKey = "m/page";
// A dense block that is stored but never published (the admission counts).
inline constexpr std::string_view kStoreOnlyDense = "admission";
// Feature lists that are stored but never published: when users that left
// memory were last touched (learner::kUserLeftLists), for expiring them
// from the store. Their records' keys start with this.
inline constexpr std::string_view kStoreOnlyListsKey = "f/user_left\0";

// A published version. The generation is the trainer's start time (ms since
// the Unix epoch), so versions of a restarted trainer order after those of
// its previous run; the sequence counts versions within a generation from 1.
struct Version {
  uint64_t generation = 0;
  uint64_t sequence = 0;
  auto operator<=>(const Version&) const = default;
  std::string ToString() const;
};

enum class Kind : uint8_t { kRecord = 1, kDenseChunk = 2, kCommit = 3, kPage = 4 };

struct Header {
  Kind kind = Kind::kRecord;
  Version version;
};

struct Commit {
  Version version;
  // Records of this version before the commit, in this partition.
  uint64_t records = 0;
  // Wall-clock time of the trainer's snapshot, ms since the Unix epoch.
  int64_t time_ms = 0;
  // The version carries the whole model, not only what changed.
  bool full = false;
  std::array<uint64_t, learner::kNumTasks> learned = {0, 0, 0};
  // Where the trainer serves its stored model (GET <url>/v1/snapshot), for
  // replicas that cannot bootstrap from the topic alone; may be empty.
  std::string snapshot_url;
  // The trainer's model settings, "key=value" lines (config keys), from
  // which a replica builds a learner of the same shape and behaviour.
  std::string settings;
  // The version delivered on this partition just before this one; zero
  // when unknown (the first version of a trainer, or after a failed one:
  // such a version is full). A reader that applied some other version
  // last has missed one (records the topic dropped) and must snapshot
  // again. Encoded after the settings; absent in older records (zero).
  Version previous;
};

void AppendHeader(std::string* dst, Kind kind, const Version& version);
// Corruption when the value is shorter than a header, has the wrong magic or
// kind, or a format other than kFormat (named in the message).
Status DecodeHeader(std::string_view value, Header* header, std::string_view* payload);

std::string EncodeCommit(const Commit& commit);  // a whole value, header included
Status DecodeCommit(const Header& header, std::string_view payload, Commit* commit);

// Calls emit(key, value) for every record of `snapshot` as commit.version,
// then for `commit` itself, its count of records and its counters filled
// in. The snapshot's deletions come first, each as a tombstone: an empty
// value (every other value has a header), sent to Kafka as a null one. With `heartbeat`, only the commit is sent (0 records). key and value
// are valid only during the call. Stops at, and returns, the first non-OK
// status of `emit`.
template <typename Emit>
Status ForEachModelRecord(const learner::ModelSnapshot& snapshot, Commit commit, bool heartbeat,
                          Emit&& emit);

// One page of the stored model, for a replica that bootstraps over HTTP
// (ReadModelPage).
struct ModelPage {
  // Records in key order, each framed as: key length u32, key, value length
  // u32, value (store/codec.h formats; little-endian lengths).
  std::string records;
  // The last key of the page: pass it as `after` for the next page. Empty
  // when this page ends the model.
  std::string last_key;
  // The checkpoint this page was read from (each page is read from one).
  Version published;
  uint64_t sequence = 0;
  std::array<uint64_t, 3> learned = {0, 0, 0};
};

// A page as the trainer's GET /v1/snapshot sends it: the magic "RSNP", the
// format (kFormat), published generation u64 and sequence u64, the
// checkpoint's sequence u64, learned u64 x 3, the last key (length u32,
// bytes), then the records.
std::string EncodePage(const ModelPage& page);
Status DecodePage(std::string_view body, ModelPage* page);
// Calls fn(key, value) for each framed record of page.records. Corruption
// when the framing is cut short.
template <typename Fn>
Status ForEachPageRecord(std::string_view records, Fn&& fn);
// Appends one record to page records as ForEachPageRecord reads them.
void AppendPageRecord(std::string* records, std::string_view key, std::string_view value);

// Several trainers on one model (docs/interface.md, "Several trainers on
// one model"): keeps the records of `page` that trainer `index` of `count`
// publishes, as learner::KeepOwned keeps a snapshot's: its users' rows,
// lists and purchases, the shared rows and item lists it owns, the dense
// blocks and the negative ring when it is trainer 0, the width and shape
// records. So a replica that bootstraps from each trainer's
// GET /v1/snapshot takes every row from its owner. Corruption when the
// framing is cut short.
Status KeepOwnedRecords(int index, int count, ModelPage* page);

// The dense chunk key of block `name`.
std::string DenseChunkKey(std::string_view name, uint32_t chunk);

// Turns records back into a snapshot: the store's records (a checkpoint read
// page by page, see CheckpointStore::ReadModelPage) or the payloads of the
// model topic's records. Widths are remembered across Take(), so a table's
// rows may follow its width record in a later batch.
class SnapshotBuilder {
 public:
  // A store-format record (key and value as in store/codec.h; the info,
  // offset and replication records are skipped). Corruption (naming the
  // record) when it is malformed or a row's table has no width yet.
  Status AddStoreRecord(std::string_view key, std::string_view value);
  // A model-topic record's payload, by its header's kind; dense chunks are
  // kept until a block's chunks are all here (of one version). Commits are
  // not records: pass them to nobody.
  Status AddTopicRecord(std::string_view key, const Header& header, std::string_view payload);
  // A tombstone's key: a deletion of the snapshot (rows: TableDeletion;
  // purchases: deleted_purchases; feature lists and histories go with
  // their row). Corruption for a key of no known kind.
  Status AddTombstone(std::string_view key);
  // Moves what was added since the last Take into *out (replacing it); the
  // shape is the latest one seen. True when anything was added.
  bool Take(learner::ModelSnapshot* out);
  // Rows and lists held, for bounding memory.
  size_t pending_records() const { return pending_; }
  // Forgets everything but the widths and shape.
  void Clear();

 private:
  learner::TableDelta* TableFor(std::string_view table);
  learner::FeatureListDelta* ListFor(std::string_view table);

  std::map<std::string, int, std::less<>> widths_;
  std::string shape_;
  learner::ModelSnapshot building_;
  std::map<std::string, size_t, std::less<>> table_index_, list_index_;
  struct DenseParts {
    Version version;
    uint32_t chunks = 0;
    uint32_t total = 0;
    uint32_t have = 0;
    std::vector<float> values;
    std::vector<bool> got;
  };
  std::map<std::string, DenseParts, std::less<>> dense_parts_;
  size_t pending_ = 0;
};

}  // namespace recstream::store::model_records

#include "store/model_records_inl.h"  // IWYU pragma: keep
