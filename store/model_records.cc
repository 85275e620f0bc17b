#include "store/model_records.h"

#include <fmt/format.h>

#include "store/codec.h"

namespace recstream::store::model_records {

std::string Version::ToString() const { return fmt::format("{}.{}", generation, sequence); }

void AppendHeader(std::string* dst, Kind kind, const Version& version) {
  dst->push_back('R');
  dst->push_back('M');
  dst->push_back(char(kFormat));
  dst->push_back(char(kind));
  codec::PutFixed64(dst, version.generation);
  codec::PutFixed64(dst, version.sequence);
}

Status DecodeHeader(std::string_view value, Header* header, std::string_view* payload) {
  if (value.size() < kHeaderSize || value[0] != 'R' || value[1] != 'M')
    return Status::Corruption(
        fmt::format("not a model record ({} bytes without the 'RM' header)", value.size()));
  if (uint8_t(value[2]) != kFormat)
    return Status::Corruption(fmt::format("model record of format {}; this build reads format {}",
                                          int(uint8_t(value[2])), int(kFormat)));
  const uint8_t kind = uint8_t(value[3]);
  if (kind < uint8_t(Kind::kRecord) || kind > uint8_t(Kind::kPage))
    return Status::Corruption(fmt::format("model record of unknown kind {}", int(kind)));
  header->kind = Kind(kind);
  header->version.generation = codec::DecodeFixed64(value.data() + 4);
  header->version.sequence = codec::DecodeFixed64(value.data() + 12);
  *payload = value.substr(kHeaderSize);
  return Status::OK();
}

std::string EncodeCommit(const Commit& c) {
  std::string v;
  AppendHeader(&v, Kind::kCommit, c.version);
  codec::PutFixed64(&v, c.records);
  codec::PutFixed64(&v, uint64_t(c.time_ms));
  v.push_back(c.full ? 1 : 0);
  for (uint64_t n : c.learned) codec::PutFixed64(&v, n);
  codec::PutFixed32(&v, uint32_t(c.snapshot_url.size()));
  v += c.snapshot_url;
  codec::PutFixed32(&v, uint32_t(c.settings.size()));
  v += c.settings;
  codec::PutFixed64(&v, c.previous.generation);
  codec::PutFixed64(&v, c.previous.sequence);
  return v;
}

Status DecodeCommit(const Header& header, std::string_view p, Commit* c) {
  constexpr size_t kFixed = 8 + 8 + 1 + 8 * learner::kNumTasks + 4;
  if (header.kind != Kind::kCommit || p.size() < kFixed)
    return Status::Corruption(fmt::format("malformed commit record ({} bytes)", p.size()));
  c->version = header.version;
  c->records = codec::DecodeFixed64(p.data());
  c->time_ms = int64_t(codec::DecodeFixed64(p.data() + 8));
  c->full = p[16] != 0;
  for (int t = 0; t < learner::kNumTasks; ++t)
    c->learned[t] = codec::DecodeFixed64(p.data() + 17 + 8 * t);
  const uint32_t url = codec::DecodeFixed32(p.data() + kFixed - 4);
  if (p.size() < kFixed + url + 4)
    return Status::Corruption(fmt::format("malformed commit record ({} bytes)", p.size()));
  c->snapshot_url.assign(p.substr(kFixed, url));
  const uint32_t settings = codec::DecodeFixed32(p.data() + kFixed + url);
  const size_t end = kFixed + url + 4 + settings;
  if (p.size() != end && p.size() != end + 16)
    return Status::Corruption(fmt::format("malformed commit record ({} bytes)", p.size()));
  c->settings.assign(p.substr(kFixed + url + 4, settings));
  c->previous = Version();
  if (p.size() == end + 16) {
    c->previous.generation = codec::DecodeFixed64(p.data() + end);
    c->previous.sequence = codec::DecodeFixed64(p.data() + end + 8);
  }
  return Status::OK();
}

std::string EncodePage(const ModelPage& page) {
  std::string b = "RSNP";
  b.push_back(char(kFormat));
  codec::PutFixed64(&b, page.published.generation);
  codec::PutFixed64(&b, page.published.sequence);
  codec::PutFixed64(&b, page.sequence);
  for (uint64_t n : page.learned) codec::PutFixed64(&b, n);
  codec::PutFixed32(&b, uint32_t(page.last_key.size()));
  b += page.last_key;
  b += page.records;
  return b;
}

Status DecodePage(std::string_view b, ModelPage* page) {
  constexpr size_t kFixed = 5 + 24 + 8 * learner::kNumTasks + 4;
  if (b.size() < kFixed || b.substr(0, 4) != "RSNP")
    return Status::Corruption("not a snapshot page");
  if (uint8_t(b[4]) != kFormat)
    return Status::Corruption(fmt::format("snapshot page of format {}; this build reads format {}",
                                          int(uint8_t(b[4])), int(kFormat)));
  page->published.generation = codec::DecodeFixed64(b.data() + 5);
  page->published.sequence = codec::DecodeFixed64(b.data() + 13);
  page->sequence = codec::DecodeFixed64(b.data() + 21);
  for (int t = 0; t < learner::kNumTasks; ++t)
    page->learned[t] = codec::DecodeFixed64(b.data() + 29 + 8 * t);
  const uint32_t klen = codec::DecodeFixed32(b.data() + kFixed - 4);
  if (b.size() - kFixed < klen) return Status::Corruption("snapshot page cut short");
  page->last_key.assign(b.substr(kFixed, klen));
  page->records.assign(b.substr(kFixed + klen));
  return Status::OK();
}

void AppendPageRecord(std::string* records, std::string_view key, std::string_view value) {
  codec::PutFixed32(records, uint32_t(key.size()));
  *records += key;
  codec::PutFixed32(records, uint32_t(value.size()));
  *records += value;
}

Status KeepOwnedRecords(int index, int count, ModelPage* page) {
  if (count <= 1) return Status::OK();
  // "r/" and "f/" keys are <table> \0 <id> (codec::DecodeRowKey).
  auto owned = [&](std::string_view key) {
    std::string_view table, id;
    if (key.starts_with(codec::kRowPrefix) &&
        codec::DecodeRowKey(key.substr(codec::kRowPrefix.size()), &table, &id).ok())
      return learner::PublishesRow(index, count, table, id);
    if (key.starts_with(codec::kFeatureListPrefix) &&
        codec::DecodeRowKey(key.substr(codec::kFeatureListPrefix.size()), &table, &id).ok())
      return learner::PublishesList(index, count, table, id);
    if (key.starts_with(codec::kDensePrefix)) return learner::PublishesDense(index);
    return true;
  };
  std::string kept;
  kept.reserve(page->records.size());
  RECSTREAM_RETURN_IF_ERROR(
      ForEachPageRecord(page->records, [&](std::string_view key, std::string_view value) {
        if (owned(key)) AppendPageRecord(&kept, key, value);
        return Status::OK();
      }));
  page->records = std::move(kept);
  return Status::OK();
}

std::string DenseChunkKey(std::string_view name, uint32_t chunk) {
  std::string k = codec::DenseKey(name);
  k.push_back('\0');
  codec::PutFixed32(&k, chunk);
  return k;
}

learner::TableDelta* SnapshotBuilder::TableFor(std::string_view table) {
  auto it = table_index_.find(table);
  if (it == table_index_.end()) {
    auto w = widths_.find(table);
    if (w == widths_.end()) return nullptr;
    it = table_index_.emplace(std::string(table), building_.tables.size()).first;
    learner::TableDelta& t = building_.tables.emplace_back();
    t.table = std::string(table);
    t.width = w->second;
  }
  return &building_.tables[it->second];
}

learner::FeatureListDelta* SnapshotBuilder::ListFor(std::string_view table) {
  auto it = list_index_.find(table);
  if (it == list_index_.end()) {
    it = list_index_.emplace(std::string(table), building_.feature_lists.size()).first;
    building_.feature_lists.emplace_back().table = std::string(table);
  }
  return &building_.feature_lists[it->second];
}

Status SnapshotBuilder::AddStoreRecord(std::string_view key, std::string_view value) {
  if (key.starts_with(codec::kRowPrefix)) {
    std::string_view table, id;
    RECSTREAM_RETURN_IF_ERROR(codec::DecodeRowKey(key.substr(codec::kRowPrefix.size()), &table, &id));
    learner::TableDelta* t = TableFor(table);
    if (t == nullptr)
      return Status::Corruption("row of table " + std::string(table) + " before its width");
    RECSTREAM_RETURN_IF_ERROR(codec::CheckRowValue(table, t->width, value));
    const size_t at = t->values.size();
    t->values.resize(at + size_t(t->width));
    codec::DecodeFloats(value, t->values.data() + at);
    t->keys.emplace_back(id);
    ++pending_;
  } else if (key.starts_with(codec::kWidthPrefix)) {
    const std::string_view table = key.substr(codec::kWidthPrefix.size());
    int width = 0;
    RECSTREAM_RETURN_IF_ERROR(codec::DecodeWidth(table, value, &width));
    auto [it, inserted] = widths_.emplace(std::string(table), width);
    if (!inserted && it->second != width) {
      // A new shape: rows collected with the old width are of no use.
      if (auto ti = table_index_.find(table); ti != table_index_.end()) {
        learner::TableDelta& t = building_.tables[ti->second];
        pending_ -= t.keys.size();
        t.keys.clear();
        t.values.clear();
        t.width = width;
      }
      it->second = width;
    }
  } else if (key.starts_with(codec::kDensePrefix)) {
    const std::string_view name = key.substr(codec::kDensePrefix.size());
    std::vector<float> values;
    RECSTREAM_RETURN_IF_ERROR(codec::DecodeDense(name, value, &values));
    for (auto& [n, v] : building_.dense)
      if (n == name) {
        v = std::move(values);
        return Status::OK();
      }
    building_.dense.emplace_back(std::string(name), std::move(values));
  } else if (key.starts_with(codec::kFeatureListPrefix)) {
    std::string_view table, id;
    std::vector<std::string> features;
    RECSTREAM_RETURN_IF_ERROR(codec::DecodeFeatureList(key.substr(codec::kFeatureListPrefix.size()),
                                                       value, &table, &id, &features));
    learner::FeatureListDelta* l = ListFor(table);
    l->keys.emplace_back(id);
    l->features.push_back(std::move(features));
    ++pending_;
  } else if (key.starts_with(codec::kPurchasePrefix)) {
    std::string user, item;
    RECSTREAM_RETURN_IF_ERROR(
        codec::DecodePurchaseKey(key.substr(codec::kPurchasePrefix.size()), &user, &item));
    building_.new_purchases.emplace_back(std::move(user), std::move(item));
    ++pending_;
  } else if (key == codec::kShapeKey) {
    shape_.assign(value);
  }
  // Anything else (info, offsets, replication metadata) is the store's own.
  return Status::OK();
}

Status SnapshotBuilder::AddTopicRecord(std::string_view key, const Header& header,
                                       std::string_view payload) {
  if (header.kind == Kind::kRecord) {
    if (key.starts_with(codec::kRowPrefix)) {
      // A compacted topic keeps only the latest width record of a table,
      // which may follow rows of older versions: a row's width is then its
      // value's size (a width record that says otherwise resets the table).
      std::string_view table, id;
      RECSTREAM_RETURN_IF_ERROR(
          codec::DecodeRowKey(key.substr(codec::kRowPrefix.size()), &table, &id));
      if (!widths_.contains(table) && !payload.empty() && payload.size() % sizeof(float) == 0)
        widths_.emplace(std::string(table), int(payload.size() / sizeof(float)));
    }
    return AddStoreRecord(key, payload);
  }
  if (header.kind == Kind::kPage)
    return Status::Corruption("a page of records belongs to the updates topic, not a snapshot");
  if (header.kind != Kind::kDenseChunk)
    return Status::InvalidArgument("a commit is not a record of the snapshot");
  // "d/" name \0 chunk
  if (!key.starts_with(codec::kDensePrefix) || key.size() < codec::kDensePrefix.size() + 5 ||
      key[key.size() - 5] != '\0' || payload.size() < 8 || (payload.size() - 8) % 4 != 0)
    return Status::Corruption("malformed dense chunk record");
  const std::string_view name =
      key.substr(codec::kDensePrefix.size(), key.size() - 5 - codec::kDensePrefix.size());
  const uint32_t chunk = codec::DecodeFixed32(key.data() + key.size() - 4);
  const uint32_t chunks = codec::DecodeFixed32(payload.data());
  const uint32_t total = codec::DecodeFixed32(payload.data() + 4);
  const size_t n = (payload.size() - 8) / 4;
  const size_t begin = size_t(chunk) * kDenseChunkFloats;
  if (chunks == 0 || chunk >= chunks || total > size_t(chunks) * kDenseChunkFloats ||
      begin + n > total || (chunk + 1 < chunks && n != kDenseChunkFloats))
    return Status::Corruption("dense chunk " + std::to_string(chunk) + " of block " +
                              std::string(name) + " does not fit its block");
  auto it = dense_parts_.find(name);
  if (it == dense_parts_.end()) it = dense_parts_.emplace(std::string(name), DenseParts()).first;
  DenseParts& d = it->second;
  if (d.version != header.version || d.chunks != chunks || d.total != total) {
    d = DenseParts();
    d.version = header.version;
    d.chunks = chunks;
    d.total = total;
    d.values.assign(total, 0.0f);
    d.got.assign(chunks, false);
  }
  codec::DecodeFloats(payload.substr(8), d.values.data() + begin);
  if (!d.got[chunk]) {
    d.got[chunk] = true;
    ++d.have;
  }
  if (d.have == d.chunks) {
    bool replaced = false;
    for (auto& [n2, v] : building_.dense)
      if (n2 == name) {
        v = std::move(d.values);
        replaced = true;
      }
    if (!replaced) building_.dense.emplace_back(std::string(name), std::move(d.values));
    dense_parts_.erase(it);
  }
  return Status::OK();
}

Status SnapshotBuilder::AddTombstone(std::string_view key) {
  if (key.starts_with(codec::kRowPrefix)) {
    std::string_view table, id;
    RECSTREAM_RETURN_IF_ERROR(codec::DecodeRowKey(key.substr(codec::kRowPrefix.size()), &table, &id));
    auto it = std::find_if(building_.deleted.begin(), building_.deleted.end(),
                           [&](const learner::TableDeletion& d) { return d.table == table; });
    if (it == building_.deleted.end())
      it = building_.deleted.insert(building_.deleted.end(), {std::string(table), {}});
    it->keys.emplace_back(id);
    ++pending_;
    return Status::OK();
  }
  if (key.starts_with(codec::kPurchasePrefix)) {
    std::string user, item;
    RECSTREAM_RETURN_IF_ERROR(
        codec::DecodePurchaseKey(key.substr(codec::kPurchasePrefix.size()), &user, &item));
    building_.deleted_purchases.emplace_back(std::move(user), std::move(item));
    ++pending_;
    return Status::OK();
  }
  if (key.starts_with(codec::kFeatureListPrefix)) return Status::OK();  // goes with its row
  return Status::Corruption("tombstone of an unknown key");
}

bool SnapshotBuilder::Take(learner::ModelSnapshot* out) {
  const bool any = pending_ > 0 || !building_.dense.empty();
  building_.shape = shape_;
  *out = std::move(building_);
  building_ = learner::ModelSnapshot();
  table_index_.clear();
  list_index_.clear();
  pending_ = 0;
  return any;
}

void SnapshotBuilder::Clear() {
  building_ = learner::ModelSnapshot();
  table_index_.clear();
  list_index_.clear();
  dense_parts_.clear();
  pending_ = 0;
}

}  // namespace recstream::store::model_records
