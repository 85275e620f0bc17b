// ForEachRecord (store/codec.h), a template so that the write paths' sinks
// are inlined into the loop over millions of rows.
#pragma once

namespace recstream::store::codec {

template <typename Emit>
Status ForEachRecord(const learner::ModelSnapshot& snapshot, const OffsetMap& offsets,
                     Emit&& emit) {
  std::string key, value;
  const bool native = FloatsAreNative();
  auto floats = [&](const float* p, size_t n) -> std::string_view {
    if (native) return {reinterpret_cast<const char*>(p), n * sizeof(float)};
    value.clear();
    PutFloats(&value, p, n);
    return value;
  };
  for (const learner::TableDelta& t : snapshot.tables) {
    RECSTREAM_RETURN_IF_ERROR(emit(WidthKey(t.table), EncodeWidth(t.width), false));
    const size_t width = static_cast<size_t>(t.width);
    for (size_t i = 0; i < t.keys.size(); ++i) {
      key.clear();
      AppendRowKey(&key, t.table, t.keys[i]);
      RECSTREAM_RETURN_IF_ERROR(emit(key, floats(t.values.data() + i * width, width), native));
    }
  }
  for (const auto& [name, values] : snapshot.dense) {
    RECSTREAM_RETURN_IF_ERROR(emit(DenseKey(name), floats(values.data(), values.size()), native));
  }
  for (const learner::FeatureListDelta& l : snapshot.feature_lists) {
    for (size_t i = 0; i < l.keys.size(); ++i) {
      key.clear();
      AppendFeatureListKey(&key, l.table, l.keys[i]);
      value.clear();
      AppendFeatureList(&value, l.features[i]);
      RECSTREAM_RETURN_IF_ERROR(emit(key, value, false));
    }
  }
  for (const auto& [user, item] : snapshot.new_purchases) {
    RECSTREAM_RETURN_IF_ERROR(emit(PurchaseKey(user, item), std::string_view(), false));
  }
  RECSTREAM_RETURN_IF_ERROR(emit(kShapeKey, snapshot.shape, true));
  for (const auto& [tp, offset] : offsets) {
    RECSTREAM_RETURN_IF_ERROR(emit(OffsetKey(tp), EncodeOffset(offset), false));
  }
  return Status::OK();
}

template <typename Fn>
Status ForEachDeletedKey(const learner::ModelSnapshot& snapshot, Fn&& fn) {
  std::string key;
  for (const learner::TableDeletion& d : snapshot.deleted) {
    for (const std::string& id : d.keys) {
      key.clear();
      AppendRowKey(&key, d.table, id);
      RECSTREAM_RETURN_IF_ERROR(fn(std::string_view(key)));
      key.clear();
      AppendFeatureListKey(&key, d.table, id);
      RECSTREAM_RETURN_IF_ERROR(fn(std::string_view(key)));
      if (d.table == "user") {
        for (std::string_view lists : {"user_history", "user_left"}) {
          key.clear();
          AppendFeatureListKey(&key, lists, id);
          RECSTREAM_RETURN_IF_ERROR(fn(std::string_view(key)));
        }
      }
    }
  }
  for (const auto& [user, item] : snapshot.deleted_purchases) {
    const std::string k = PurchaseKey(user, item);
    RECSTREAM_RETURN_IF_ERROR(fn(std::string_view(k)));
  }
  return Status::OK();
}

}  // namespace recstream::store::codec
