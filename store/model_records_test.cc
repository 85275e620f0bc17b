#include "store/model_records.h"

#include <catch2/catch.hpp>

#include "store/codec.h"

namespace recstream::store::model_records {
namespace {

learner::ModelSnapshot Sample() {
  learner::ModelSnapshot snap;
  snap.shape = "shape-1";
  learner::TableDelta users;
  users.table = "user";
  users.width = 2;
  users.keys = {"a", "b"};
  users.values = {1, 2, 3, 4};
  snap.tables.push_back(users);
  // Two chunks and a bit: a replica must get the block whole or not at all.
  std::vector<float> big(2 * kDenseChunkFloats + 5);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i) * 0.5f;
  snap.dense.emplace_back("bottom", big);
  learner::FeatureListDelta lists;
  lists.table = "item";
  lists.keys = {"i1"};
  lists.features = {{"c=1", "c=2"}};
  snap.feature_lists.push_back(lists);
  snap.new_purchases.emplace_back("a", "i1");
  snap.learned = {7, 8, 9};
  return snap;
}

struct Record {
  std::string key, value;
};

std::vector<Record> Publish(const learner::ModelSnapshot& snap, const Commit& commit) {
  std::vector<Record> out;
  REQUIRE(ForEachModelRecord(snap, commit, false, [&](std::string_view k, std::string_view v) {
            out.push_back({std::string(k), std::string(v)});
            return Status::OK();
          }).ok());
  return out;
}

TEST_CASE("model records: a published version reads back as the same snapshot", "[model_records]") {
  const learner::ModelSnapshot snap = Sample();
  Commit commit;
  commit.version = {1700000000000, 4};
  commit.previous = {1700000000000, 3};
  commit.time_ms = 1700000000123;
  commit.snapshot_url = "http://trainer:8080";
  commit.settings = "model.dim=16\n";
  const std::vector<Record> records = Publish(snap, commit);
  REQUIRE(records.size() >= 8);
  CHECK(records.back().key == kCommitKey);

  SnapshotBuilder builder;
  Commit read;
  uint64_t seen = 0;
  for (const Record& r : records) {
    Header h;
    std::string_view payload;
    REQUIRE(DecodeHeader(r.value, &h, &payload).ok());
    CHECK(h.version == commit.version);
    if (h.kind == Kind::kCommit) {
      REQUIRE(DecodeCommit(h, payload, &read).ok());
    } else {
      ++seen;
      REQUIRE(builder.AddTopicRecord(r.key, h, payload).ok());
    }
  }
  // The commit counts the version's records and carries what a replica
  // needs: counters, time, the snapshot url, the settings, the previous version.
  CHECK(read.records == seen);
  CHECK(read.learned == snap.learned);
  CHECK(read.time_ms == commit.time_ms);
  CHECK(read.snapshot_url == commit.snapshot_url);
  CHECK(read.settings == commit.settings);
  CHECK(read.previous == commit.previous);
  CHECK_FALSE(read.full);

  learner::ModelSnapshot back;
  REQUIRE(builder.Take(&back));
  CHECK(back.shape == snap.shape);
  REQUIRE(back.tables.size() == 1);
  CHECK(back.tables[0].keys == snap.tables[0].keys);
  CHECK(back.tables[0].values == snap.tables[0].values);
  REQUIRE(back.dense.size() == 1);
  CHECK(back.dense[0] == snap.dense[0]);
  REQUIRE(back.feature_lists.size() == 1);
  CHECK(back.feature_lists[0].features == snap.feature_lists[0].features);
  CHECK(back.new_purchases == snap.new_purchases);
}

TEST_CASE("model records: a dense block with a chunk missing is not applied", "[model_records]") {
  Commit commit;
  commit.version = {5, 1};
  std::vector<Record> records = Publish(Sample(), commit);
  SnapshotBuilder builder;
  bool dropped = false;
  for (const Record& r : records) {
    if (!dropped && r.key == DenseChunkKey("bottom", 1)) {
      dropped = true;
      continue;
    }
    Header h;
    std::string_view payload;
    REQUIRE(DecodeHeader(r.value, &h, &payload).ok());
    if (h.kind != Kind::kCommit) REQUIRE(builder.AddTopicRecord(r.key, h, payload).ok());
  }
  REQUIRE(dropped);
  learner::ModelSnapshot back;
  builder.Take(&back);
  CHECK(back.dense.empty());
  CHECK(back.tables.size() == 1);
}

TEST_CASE("model records: unreadable values are Corruption, never a crash", "[model_records]") {
  Header h;
  std::string_view payload;
  CHECK(DecodeHeader("", &h, &payload).IsCorruption());
  CHECK(DecodeHeader("not a record at all", &h, &payload).IsCorruption());
  std::string wrong_format = "RM";
  wrong_format.push_back(char(kFormat + 1));
  wrong_format.push_back(char(Kind::kRecord));
  wrong_format += std::string(16, '\0');
  CHECK(DecodeHeader(wrong_format, &h, &payload).IsCorruption());

  Commit commit;
  commit.version = {9, 2};
  commit.settings = "x=1\n";
  std::string value = EncodeCommit(commit);
  REQUIRE(DecodeHeader(value, &h, &payload).ok());
  Commit back;
  REQUIRE(DecodeCommit(h, payload, &back).ok());
  // A commit without the previous version (written before it existed)
  // still reads, its previous version unknown.
  REQUIRE(DecodeCommit(h, payload.substr(0, payload.size() - 16), &back).ok());
  CHECK(back.previous == Version());
  CHECK(back.settings == "x=1\n");
  // Cut anywhere else, it is refused.
  for (size_t cut : {size_t(1), size_t(8), size_t(17)})
    CHECK(DecodeCommit(h, payload.substr(0, payload.size() - cut), &back).IsCorruption());

  SnapshotBuilder builder;
  Header row{Kind::kRecord, {9, 2}};
  // A row that is not a whole number of floats.
  CHECK_FALSE(builder.AddTopicRecord(std::string("r/user\0u1", 9), row, "abc").ok());
}

TEST_CASE("model records: a compacted topic's rows may come before their width record",
          "[model_records]") {
  // Compaction keeps the latest record of each key: the width record of a
  // table (sent with every version) may follow rows of older versions.
  SnapshotBuilder builder;
  Header old_version{Kind::kRecord, {9, 2}};
  Header latest{Kind::kRecord, {9, 7}};
  std::string row;
  codec::PutFixed32(&row, 0);
  row.append(4, '\0');  // two floats, 0.0f and 0.0f
  REQUIRE(builder.AddTopicRecord(std::string("r/user\0u1", 9), old_version, row).ok());
  std::string width;
  std::vector<Record> width_record = Publish(Sample(), Commit{});
  for (const Record& r : width_record)
    if (r.key == "m/width/user") {
      Header h;
      std::string_view payload;
      REQUIRE(DecodeHeader(r.value, &h, &payload).ok());
      REQUIRE(builder.AddTopicRecord(r.key, latest, payload).ok());
    }
  learner::ModelSnapshot back;
  REQUIRE(builder.Take(&back));
  REQUIRE(back.tables.size() == 1);
  CHECK(back.tables[0].width == 2);
  CHECK(back.tables[0].keys == std::vector<std::string>{"u1"});
}

TEST_CASE("model records: deletions travel as tombstones ahead of the version's records",
          "[model_records][expiry]") {
  learner::ModelSnapshot snap = Sample();
  snap.deleted.push_back({"user", {"gone"}});
  snap.deleted_purchases.emplace_back("gone", "i9");
  Commit commit;
  commit.version = {3, 9};
  const std::vector<Record> records = Publish(snap, commit);
  // Row, feature list, history and purchase: four tombstones, first.
  REQUIRE(records.size() > 4);
  for (size_t i = 0; i < 4; ++i) CHECK(records[i].value.empty());
  CHECK_FALSE(records[4].value.empty());
  SnapshotBuilder builder;
  Commit read;
  uint64_t seen = 0;
  for (const Record& r : records) {
    ++seen;
    if (r.value.empty()) {
      REQUIRE(builder.AddTombstone(r.key).ok());
      continue;
    }
    Header h;
    std::string_view payload;
    REQUIRE(DecodeHeader(r.value, &h, &payload).ok());
    if (h.kind == Kind::kCommit) {
      --seen;
      REQUIRE(DecodeCommit(h, payload, &read).ok());
    } else {
      REQUIRE(builder.AddTopicRecord(r.key, h, payload).ok());
    }
  }
  CHECK(read.records == seen);  // tombstones count among the records
  learner::ModelSnapshot back;
  REQUIRE(builder.Take(&back));
  REQUIRE(back.deleted.size() == 1);
  CHECK(back.deleted[0].table == "user");
  CHECK(back.deleted[0].keys == std::vector<std::string>{"gone"});
  CHECK(back.deleted_purchases == snap.deleted_purchases);
  CHECK_FALSE(builder.AddTombstone("x/unknown").ok());
}

TEST_CASE("model records: touch times of users out of memory stay in the store", "[model_records]") {
  // A trainer with a memory limit keeps when each user that left memory
  // was last touched (learner::kUserLeftLists): its own expiry reads them,
  // replicas have no use for them, so neither they nor their deletion are
  // published.
  learner::ModelSnapshot snap = Sample();
  learner::FeatureListDelta left;
  left.table = std::string(learner::kUserLeftLists);
  left.keys = {"gone", "away"};
  left.features = {{"1700000000"}, {"1700000100"}};
  snap.feature_lists.push_back(left);
  snap.deleted.push_back({"user", {"expired"}});
  Commit commit;
  commit.version = {1700000000000, 1};
  const std::vector<Record> records = Publish(snap, commit);
  std::string user_left_key;
  codec::AppendFeatureListKey(&user_left_key, learner::kUserLeftLists, "");
  bool tombstone = false;
  for (const Record& r : records) {
    INFO("key " << r.key);
    CHECK_FALSE(r.key.starts_with(user_left_key));
    tombstone |= r.value.empty();
  }
  // The user's own records are deleted on replicas as before.
  CHECK(tombstone);
}

}  // namespace
}  // namespace recstream::store::model_records
