#include "learner/embedding_table.h"

#include <catch2/catch.hpp>
#include <set>
#include <thread>

namespace recstream::learner {

TEST_CASE("EmbeddingTable gives each distinct id its own row", "[EmbeddingTable]") {
  EmbeddingTable table("user", 4, 3, 0.1f, 0.0f, 7);
  bool created = false;
  uint32_t a = table.GetOrCreate("alice", &created);
  CHECK(created);
  CHECK(table.GetOrCreate("alice", &created) == a);
  CHECK_FALSE(created);
  CHECK(table.Find("alice") == a);
  CHECK(table.Find("bob") == EmbeddingTable::kNoRow);
  CHECK(table.key(a) == "alice");
  const float* r = table.Row(a);
  for (int i = 0; i < 3; ++i) CHECK(std::abs(r[i]) <= 0.1f);
  CHECK(r[3] == 0.0f);  // past the random prefix
}

TEST_CASE("EmbeddingTable grows past many chunks without collisions", "[EmbeddingTable]") {
  EmbeddingTable table("item", 2, 2, 0.1f, 0.0f, 1);
  const int n = 50000;
  std::set<uint32_t> rows;
  for (int i = 0; i < n; ++i) rows.insert(table.GetOrCreate("item-" + std::to_string(i)));
  CHECK(rows.size() == size_t(n));
  CHECK(table.size() == uint32_t(n));
  for (int i = 0; i < n; i += 997)
    CHECK(table.key(table.Find("item-" + std::to_string(i))) == "item-" + std::to_string(i));
}

TEST_CASE("EmbeddingTable creates rows safely from many threads", "[EmbeddingTable]") {
  EmbeddingTable table("user", 4, 4, 0.1f, 0.0f, 3);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) table.GetOrCreate(std::to_string(i));
    });
  for (auto& t : threads) t.join();
  CHECK(table.size() == 20000u);
  std::set<uint32_t> rows;
  for (int i = 0; i < 20000; ++i) rows.insert(table.Find(std::to_string(i)));
  CHECK(rows.size() == 20000u);
}

TEST_CASE("EmbeddingTable initial values depend only on id and seed", "[EmbeddingTable]") {
  EmbeddingTable a("user", 8, 8, 0.1f, 0.0f, 5), b("user", 8, 8, 0.1f, 0.0f, 5);
  a.GetOrCreate("x");
  uint32_t ry = a.GetOrCreate("y");
  uint32_t ry2 = b.GetOrCreate("y");
  for (int i = 0; i < 8; ++i) CHECK(a.Row(ry)[i] == b.Row(ry2)[i]);
}

TEST_CASE("EmbeddingTable tracks dirty rows", "[EmbeddingTable]") {
  EmbeddingTable table("user", 2, 2, 0.1f, 0.0f, 3);
  table.GetOrCreate("a");
  table.GetOrCreate("b");
  int n = 0;
  table.ForEachDirty(false, [&](uint32_t) { ++n; });
  CHECK(n == 2);
  n = 0;
  table.ForEachDirty(false, [&](uint32_t) { ++n; });
  CHECK(n == 0);
  table.MarkDirty(table.Find("b"));
  std::vector<std::string> keys;
  table.ForEachDirty(false, [&](uint32_t r) { keys.push_back(table.key(r)); });
  CHECK(keys == std::vector<std::string>{"b"});
  n = 0;
  table.ForEachDirty(true, [&](uint32_t) { ++n; });
  CHECK(n == 2);
}

}  // namespace recstream::learner
