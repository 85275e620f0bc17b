#include "store/codec.h"

#include <bit>
#include <cstring>
#include <limits>

namespace recstream::store::codec {

static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559);
static_assert(sizeof(double) == 8 && std::numeric_limits<double>::is_iec559);

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  end.back() = static_cast<char>(end.back() + 1);
  return end;
}

void PutFixed32(std::string* dst, uint32_t v) {
  char buf[4];
  for (int i = 0; i < 4; ++i) buf[i] = static_cast<char>(v >> (8 * i));
  dst->append(buf, 4);
}

void PutFixed64(std::string* dst, uint64_t v) {
  char buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(v >> (8 * i));
  dst->append(buf, 8);
}

uint32_t DecodeFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint64_t DecodeFixed64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

bool FloatsAreNative() { return std::endian::native == std::endian::little; }

void PutFloats(std::string* dst, const float* values, size_t n) {
  if (FloatsAreNative()) {
    dst->append(reinterpret_cast<const char*>(values), n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; ++i) PutFixed32(dst, std::bit_cast<uint32_t>(values[i]));
}

void DecodeFloats(std::string_view value, float* out) {
  const size_t n = value.size() / sizeof(float);
  if (FloatsAreNative()) {
    if (n > 0) std::memcpy(out, value.data(), n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(DecodeFixed32(value.data() + 4 * i));
}

std::string EncodeInfo(const Info& info) {
  std::string v;
  v.reserve(kInfoSize);
  PutFixed64(&v, info.sequence);
  PutFixed64(&v, static_cast<uint64_t>(info.time_ms));
  PutFixed64(&v, info.rows);
  PutFixed64(&v, info.bytes);
  PutFixed64(&v, std::bit_cast<uint64_t>(info.duration_ms));
  for (uint64_t n : info.learned) PutFixed64(&v, n);
  return v;
}

Status DecodeInfo(std::string_view value, Info* info) {
  if (value.size() != kInfoSize) {
    return Status::Corruption("checkpoint info has " + std::to_string(value.size()) +
                              " bytes, expected " + std::to_string(kInfoSize));
  }
  const char* p = value.data();
  info->sequence = DecodeFixed64(p);
  info->time_ms = static_cast<int64_t>(DecodeFixed64(p + 8));
  info->rows = DecodeFixed64(p + 16);
  info->bytes = DecodeFixed64(p + 24);
  info->duration_ms = std::bit_cast<double>(DecodeFixed64(p + 32));
  for (int i = 0; i < learner::kNumTasks; ++i) info->learned[i] = DecodeFixed64(p + 40 + 8 * i);
  return Status::OK();
}

std::string WidthKey(std::string_view table) {
  std::string k(kWidthPrefix);
  k += table;
  return k;
}

std::string EncodeWidth(int width) {
  std::string v;
  PutFixed32(&v, static_cast<uint32_t>(width));
  return v;
}

Status DecodeWidth(std::string_view table, std::string_view value, int* width) {
  if (value.size() != 4) {
    return Status::Corruption("malformed width of table " + std::string(table));
  }
  const uint32_t w = DecodeFixed32(value.data());
  if (w == 0 || w > (1u << 20)) {
    return Status::Corruption("implausible width " + std::to_string(w) + " of table " +
                              std::string(table));
  }
  *width = static_cast<int>(w);
  return Status::OK();
}

void AppendRowKey(std::string* dst, std::string_view table, std::string_view id) {
  *dst += kRowPrefix;
  *dst += table;
  dst->push_back('\0');
  *dst += id;
}

Status DecodeRowKey(std::string_view rest, std::string_view* table, std::string_view* id) {
  const size_t sep = rest.find('\0');
  if (sep == std::string_view::npos) return Status::Corruption("row key without a table");
  *table = rest.substr(0, sep);
  *id = rest.substr(sep + 1);
  return Status::OK();
}

Status CheckRowValue(std::string_view table, int width, std::string_view value) {
  const size_t bytes = static_cast<size_t>(width) * sizeof(float);
  if (value.size() != bytes) {
    return Status::Corruption("row of table " + std::string(table) + " has " +
                              std::to_string(value.size()) + " bytes, expected " +
                              std::to_string(bytes));
  }
  return Status::OK();
}

std::string DenseKey(std::string_view name) {
  std::string k(kDensePrefix);
  k += name;
  return k;
}

Status DecodeDense(std::string_view name, std::string_view value, std::vector<float>* values) {
  if (value.size() % sizeof(float) != 0) {
    return Status::Corruption("dense block " + std::string(name) + " has " +
                              std::to_string(value.size()) + " bytes");
  }
  values->resize(value.size() / sizeof(float));
  DecodeFloats(value, values->data());
  return Status::OK();
}

std::string PurchaseKey(std::string_view user, std::string_view item) {
  std::string k(kPurchasePrefix);
  PutFixed32(&k, static_cast<uint32_t>(user.size()));
  k += user;
  k += item;
  return k;
}

Status DecodePurchaseKey(std::string_view rest, std::string* user, std::string* item) {
  if (rest.size() < 4) return Status::Corruption("malformed purchase key");
  const uint32_t user_len = DecodeFixed32(rest.data());
  if (user_len > rest.size() - 4) return Status::Corruption("malformed purchase key");
  user->assign(rest.substr(4, user_len));
  item->assign(rest.substr(4 + user_len));
  return Status::OK();
}

void AppendFeatureListKey(std::string* dst, std::string_view table, std::string_view id) {
  *dst += kFeatureListPrefix;
  *dst += table;
  dst->push_back('\0');
  *dst += id;
}

void AppendFeatureList(std::string* dst, const std::vector<std::string>& features) {
  PutFixed32(dst, static_cast<uint32_t>(features.size()));
  for (const std::string& f : features) {
    PutFixed32(dst, static_cast<uint32_t>(f.size()));
    *dst += f;
  }
}

Status DecodeFeatureList(std::string_view rest, std::string_view value, std::string_view* table,
                         std::string_view* id, std::vector<std::string>* features) {
  const size_t sep = rest.find('\0');
  if (sep == std::string_view::npos) return Status::Corruption("feature list without a table");
  *table = rest.substr(0, sep);
  *id = rest.substr(sep + 1);
  auto malformed = [&] {
    return Status::Corruption("malformed feature list in table " + std::string(*table));
  };
  auto take_u32 = [&value](uint32_t* x) {
    if (value.size() < 4) return false;
    *x = DecodeFixed32(value.data());
    value.remove_prefix(4);
    return true;
  };
  uint32_t count = 0;
  if (!take_u32(&count) || count > value.size() / 4) return malformed();
  features->clear();
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t len = 0;
    if (!take_u32(&len) || len > value.size()) return malformed();
    features->emplace_back(value.substr(0, len));
    value.remove_prefix(len);
  }
  if (!value.empty()) return malformed();
  return Status::OK();
}

std::string EncodePublished(uint64_t generation, uint64_t sequence) {
  std::string v;
  PutFixed64(&v, generation);
  PutFixed64(&v, sequence);
  return v;
}

Status DecodePublished(std::string_view value, uint64_t* generation, uint64_t* sequence) {
  if (value.size() != 16) return Status::Corruption("malformed published version record");
  *generation = DecodeFixed64(value.data());
  *sequence = DecodeFixed64(value.data() + 8);
  return Status::OK();
}

std::string OffsetKey(const TopicPartition& tp) {
  std::string k(kOffsetPrefix);
  k += tp.topic;
  k.push_back('\0');
  PutFixed32(&k, static_cast<uint32_t>(tp.partition));
  return k;
}

std::string EncodeOffset(int64_t offset) {
  std::string v;
  PutFixed64(&v, static_cast<uint64_t>(offset));
  return v;
}

Status DecodeOffset(std::string_view rest, std::string_view value, TopicPartition* tp,
                    int64_t* offset) {
  if (rest.size() < 5 || rest[rest.size() - 5] != '\0' || value.size() != 8) {
    return Status::Corruption("malformed offset entry");
  }
  tp->topic.assign(rest.data(), rest.size() - 5);
  tp->partition = static_cast<int32_t>(DecodeFixed32(rest.data() + rest.size() - 4));
  *offset = static_cast<int64_t>(DecodeFixed64(value.data()));
  return Status::OK();
}

}  // namespace recstream::store::codec
