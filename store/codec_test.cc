#include "store/codec.h"

#include <bit>
#include <catch2/catch.hpp>
#include <cstring>

namespace recstream::store::codec {
namespace {

std::string Hex(std::string_view s) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (char c : s) {
    out.push_back(kDigits[uint8_t(c) >> 4]);
    out.push_back(kDigits[uint8_t(c) & 15]);
  }
  return out;
}

TEST_CASE("codec: integers and floats are little-endian on every host", "[codec]") {
  std::string v;
  PutFixed32(&v, 0x01020304u);
  PutFixed64(&v, 0x0102030405060708ull);
  CHECK(Hex(v) ==
        "04030201"
        "0807060504030201");
  CHECK(DecodeFixed32(v.data()) == 0x01020304u);
  CHECK(DecodeFixed64(v.data() + 4) == 0x0102030405060708ull);
  v.clear();
  const float floats[] = {1.0f, -2.5f};
  PutFloats(&v, floats, 2);
  CHECK(Hex(v) ==
        "0000803f"
        "000020c0");  // IEEE-754 bits, low byte first
  float back[2];
  DecodeFloats(v, back);
  CHECK(std::bit_cast<uint32_t>(back[0]) == std::bit_cast<uint32_t>(1.0f));
  CHECK(back[1] == -2.5f);
}

TEST_CASE("codec: every record round-trips", "[codec]") {
  Info info;
  info.sequence = 7;
  info.time_ms = -3;
  info.rows = 1u << 31;
  info.bytes = 99;
  info.duration_ms = 0.125;
  info.learned[2] = 5;
  Info back;
  REQUIRE(DecodeInfo(EncodeInfo(info), &back).ok());
  CHECK(back.sequence == 7);
  CHECK(back.time_ms == -3);
  CHECK(back.rows == (1u << 31));
  CHECK(back.duration_ms == 0.125);
  CHECK(back.learned[2] == 5);
  CHECK(DecodeInfo("short", &back).IsCorruption());

  int width = 0;
  REQUIRE(DecodeWidth("user", EncodeWidth(12), &width).ok());
  CHECK(width == 12);
  CHECK(DecodeWidth("user", EncodeWidth(0), &width).IsCorruption());
  CHECK(DecodeWidth("user", "abc", &width).IsCorruption());

  std::string key;
  AppendRowKey(&key, "item",
               "i\x00"
               "7");
  CHECK(key.substr(0, 2) == kRowPrefix);
  std::string_view table, id;
  REQUIRE(DecodeRowKey(std::string_view(key).substr(kRowPrefix.size()), &table, &id).ok());
  CHECK(table == "item");
  CHECK(DecodeRowKey("noseparator", &table, &id).IsCorruption());
  CHECK(CheckRowValue("item", 2, std::string(8, 'x')).ok());
  CHECK(CheckRowValue("item", 2, std::string(7, 'x')).IsCorruption());

  std::vector<float> dense;
  std::string dv;
  const float d[] = {0.5f, 3.0f, -1.0f};
  PutFloats(&dv, d, 3);
  REQUIRE(DecodeDense("w", dv, &dense).ok());
  CHECK(dense == std::vector<float>{0.5f, 3.0f, -1.0f});
  CHECK(DecodeDense("w", "12345", &dense).IsCorruption());

  std::string user, item;
  const std::string pk = PurchaseKey("u1", "i22");
  REQUIRE(
      DecodePurchaseKey(std::string_view(pk).substr(kPurchasePrefix.size()), &user, &item).ok());
  CHECK(user == "u1");
  CHECK(item == "i22");
  CHECK(DecodePurchaseKey(std::string("\xff\0\0\0u", 5), &user, &item).IsCorruption());

  key.clear();
  AppendFeatureListKey(&key, "user", "u9");
  std::string value;
  AppendFeatureList(&value, {"age=3", "", "city=x"});
  std::vector<std::string> features;
  REQUIRE(DecodeFeatureList(std::string_view(key).substr(kFeatureListPrefix.size()), value, &table,
                            &id, &features)
              .ok());
  CHECK(table == "user");
  CHECK(id == "u9");
  CHECK(features == std::vector<std::string>{"age=3", "", "city=x"});
  value.pop_back();  // a truncated list
  CHECK(DecodeFeatureList("user\0u9", value, &table, &id, &features).IsCorruption());

  TopicPartition tp{"recstream.click", 513}, tp_back;
  int64_t offset = 0;
  const std::string ok = OffsetKey(tp);
  REQUIRE(DecodeOffset(std::string_view(ok).substr(kOffsetPrefix.size()), EncodeOffset(1ll << 40),
                       &tp_back, &offset)
              .ok());
  CHECK(tp_back == tp);
  CHECK(offset == (1ll << 40));
  CHECK(DecodeOffset("x", EncodeOffset(1), &tp_back, &offset).IsCorruption());
}

TEST_CASE("codec: ForEachRecord emits every record of a snapshot once, in order", "[codec]") {
  learner::ModelSnapshot snap;
  snap.shape = "shape-1";
  learner::TableDelta users;
  users.table = "user";
  users.width = 2;
  users.keys = {"a", "b"};
  users.values = {1, 2, 3, 4};
  snap.tables.push_back(users);
  snap.dense.emplace_back("bottom", std::vector<float>{5, 6, 7});
  learner::FeatureListDelta lists;
  lists.table = "user";
  lists.keys = {"a"};
  lists.features = {{"f=1"}};
  snap.feature_lists.push_back(lists);
  snap.new_purchases.emplace_back("a", "i1");
  std::vector<std::string> keys;
  std::vector<float> row_b(2);
  Status s = ForEachRecord(snap, {{{"t", 1}, 10}},
                           [&](std::string_view k, std::string_view v, bool stable) {
                             keys.emplace_back(k);
                             if (k == std::string("r/user\0b", 8)) {
                               DecodeFloats(v, row_b.data());
                               CHECK(stable == FloatsAreNative());
                             }
                             return Status::OK();
                           });
  REQUIRE(s.ok());
  CHECK(row_b == std::vector<float>{3, 4});
  REQUIRE(keys.size() == 8);
  CHECK(keys[0] == "m/width/user");
  CHECK(keys[3] == "d/bottom");
  CHECK(keys[4] == std::string("f/user\0a", 8));
  CHECK(keys[5] == PurchaseKey("a", "i1"));
  CHECK(keys[6] == kShapeKey);
  CHECK(keys[7] == OffsetKey({"t", 1}));
  // An error from the sink stops the walk and is returned.
  int calls = 0;
  s = ForEachRecord(snap, {}, [&](std::string_view, std::string_view, bool) {
    return ++calls == 2 ? Status::IOError("full") : Status::OK();
  });
  CHECK(s.IsIOError());
  CHECK(calls == 2);
}

}  // namespace
}  // namespace recstream::store::codec
