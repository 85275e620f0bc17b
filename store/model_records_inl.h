// ForEachModelRecord (store/model_records.h), a template so that the
// publisher's sink is inlined into the loop over rows.
#pragma once

#include <algorithm>

#include "store/codec.h"

namespace recstream::store::model_records {

template <typename Emit>
Status ForEachModelRecord(const learner::ModelSnapshot& snapshot, Commit commit, bool heartbeat,
                          Emit&& emit) {
  const Version version = commit.version;
  uint64_t count = 0;
  commit.learned = snapshot.learned;
  if (heartbeat) {
    commit.records = 0;
    const std::string c = EncodeCommit(commit);
    return emit(kCommitKey, std::string_view(c));
  }
  std::string value;
  std::string key;
  // Deletions first, as tombstones (an empty value; Kafka: a null one).
  RECSTREAM_RETURN_IF_ERROR(codec::ForEachDeletedKey(snapshot, [&](std::string_view k) -> Status {
    if (k.starts_with(kStoreOnlyListsKey)) return Status::OK();
    RECSTREAM_RETURN_IF_ERROR(emit(k, std::string_view()));
    ++count;
    return Status::OK();
  }));
  Status s = codec::ForEachRecord(
      snapshot, OffsetMap(),
      [&](std::string_view k, std::string_view v, bool) -> Status {
        if (k.starts_with(codec::kDensePrefix)) {
          // Dense blocks travel in chunks, each small enough for Kafka.
          const std::string_view name = k.substr(codec::kDensePrefix.size());
          // The trainer's admission counts stay in its store: replicas do
          // not train, and the block is megabytes.
          if (name == kStoreOnlyDense) return Status::OK();
          const uint32_t total = uint32_t(v.size() / sizeof(float));
          const uint32_t chunks = std::max<uint32_t>(1, (total + kDenseChunkFloats - 1) / kDenseChunkFloats);
          for (uint32_t c = 0; c < chunks; ++c) {
            value.clear();
            AppendHeader(&value, Kind::kDenseChunk, version);
            codec::PutFixed32(&value, chunks);
            codec::PutFixed32(&value, total);
            const size_t begin = size_t(c) * kDenseChunkFloats * sizeof(float);
            const size_t end = std::min(v.size(), begin + kDenseChunkFloats * sizeof(float));
            value.append(v.data() + begin, end - begin);
            key = DenseChunkKey(name, c);
            RECSTREAM_RETURN_IF_ERROR(emit(std::string_view(key), std::string_view(value)));
            ++count;
          }
          return Status::OK();
        }
        if (k.starts_with(kStoreOnlyListsKey)) return Status::OK();
        value.clear();
        AppendHeader(&value, Kind::kRecord, version);
        value.append(v.data(), v.size());
        RECSTREAM_RETURN_IF_ERROR(emit(k, std::string_view(value)));
        ++count;
        return Status::OK();
      });
  RECSTREAM_RETURN_IF_ERROR(s);
  commit.records = count;
  const std::string c = EncodeCommit(commit);
  return emit(kCommitKey, std::string_view(c));
}

template <typename Fn>
Status ForEachPageRecord(std::string_view r, Fn&& fn) {
  while (!r.empty()) {
    if (r.size() < 4) return Status::Corruption("snapshot page cut short");
    const uint32_t klen = codec::DecodeFixed32(r.data());
    if (r.size() - 4 < size_t(klen) + 4) return Status::Corruption("snapshot page cut short");
    const std::string_view key = r.substr(4, klen);
    const uint32_t vlen = codec::DecodeFixed32(r.data() + 4 + klen);
    if (r.size() - 8 - klen < vlen) return Status::Corruption("snapshot page cut short");
    const std::string_view value = r.substr(8 + klen, vlen);
    RECSTREAM_RETURN_IF_ERROR(fn(key, value));
    r.remove_prefix(8 + size_t(klen) + vlen);
  }
  return Status::OK();
}

}  // namespace recstream::store::model_records
