#include "learner/embedding_table.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "learner/feature_lists.h"

namespace recstream::learner {

TEST_CASE("EmbeddingTable's index stays the same size while ids come and go",
          "[EmbeddingTable][expiry]") {
  // A long tail: ids arrive, a few thousand live at a time, and go
  // (expiry, a memory limit). The index is rebuilt to drop the removed
  // ids' slots, and must not keep a new array each time.
  EmbeddingTable table("user", 4, 3, 0.1f, 0.0f, 7);
  constexpr int kLive = 4000;
  std::vector<uint32_t> rows(kLive, EmbeddingTable::kNoRow);
  size_t after_warmup = 0;
  for (int i = 0; i < 400000; ++i) {
    uint32_t& slot = rows[size_t(i % kLive)];
    if (slot != EmbeddingTable::kNoRow) {
      const std::string old = "visitor-" + std::to_string(i - kLive);
      REQUIRE(table.Remove(old) == slot);
      table.Reclaim(slot);
    }
    slot = table.GetOrCreate("visitor-" + std::to_string(i));
    if (i == 100000) after_warmup = table.index_bytes();
  }
  INFO("index bytes after 100k ids " << after_warmup << ", after 400k " << table.index_bytes());
  CHECK(table.index_bytes() <= after_warmup);
  CHECK(table.live_size() == uint32_t(kLive));
  CHECK(table.size() <= uint32_t(kLive) + 1);
}

TEST_CASE("EmbeddingTable removes ids and reuses their rows", "[EmbeddingTable][expiry]") {
  EmbeddingTable table("user", 4, 3, 0.1f, 0.0f, 7);
  std::vector<uint32_t> rows;
  for (int i = 0; i < 1000; ++i)
    rows.push_back(table.GetOrCreate("visitor-number-" + std::to_string(i)));  // long ids
  table.ForEachDirty(false, [](uint32_t) {});
  // Remove every other id: gone from the index, not exported, not counted.
  for (int i = 0; i < 1000; i += 2)
    CHECK(table.Remove("visitor-number-" + std::to_string(i)) == rows[size_t(i)]);
  CHECK(table.Remove("visitor-number-0") == EmbeddingTable::kNoRow);
  CHECK(table.Find("visitor-number-0") == EmbeddingTable::kNoRow);
  CHECK(table.Find("visitor-number-1") == rows[1]);
  CHECK(table.live_size() == 500);
  CHECK_FALSE(table.IsLive(rows[0]));
  std::vector<uint32_t> exported;
  FloatBuffer dest;
  table.BeginExport(/*all=*/true, &exported, &dest);
  table.FinishExport();
  CHECK(exported.size() == 500);
  for (uint32_t r : exported) CHECK(table.IsLive(r));
  // Reclaimed rows (and their ids' memory) go to new ids: the table does
  // not grow while ids come and go.
  for (int i = 0; i < 1000; i += 2) table.Reclaim(rows[size_t(i)]);
  for (int i = 0; i < 500; ++i) table.GetOrCreate("visitor-number-" + std::to_string(5000 + i));
  CHECK(table.size() == 1000);
  CHECK(table.live_size() == 1000);
  for (int i = 0; i < 500; ++i) {
    const std::string id = "visitor-number-" + std::to_string(5000 + i);
    const uint32_t r = table.Find(id);
    REQUIRE(r != EmbeddingTable::kNoRow);
    CHECK(table.key(r) == id);
  }
  for (int i = 1; i < 1000; i += 2) CHECK(table.key(table.Find("visitor-number-" + std::to_string(i))) == "visitor-number-" + std::to_string(i));
  // A removed id that comes back gets a fresh row with its initial values.
  EmbeddingTable fresh("user", 4, 3, 0.1f, 0.0f, 7);
  const uint32_t again = table.GetOrCreate("visitor-number-0");
  const uint32_t first = fresh.GetOrCreate("visitor-number-0");
  for (int k = 0; k < 8; ++k) CHECK(table.Row(again)[k] == fresh.Row(first)[k]);
}

TEST_CASE("EmbeddingTable lookups stay correct while other ids are removed and reused",
          "[EmbeddingTable][expiry]") {
  EmbeddingTable table("user", 4, 3, 0.1f, 0.0f, 7);
  for (int i = 0; i < 2000; ++i) table.GetOrCreate("stable" + std::to_string(i));
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::thread reader([&] {
    while (!stop.load()) {
      for (int i = 0; i < 2000; i += 7) {
        const std::string id = "stable" + std::to_string(i);
        const uint32_t r = table.Find(id);
        if (r == EmbeddingTable::kNoRow || table.key(r) != id) wrong.fetch_add(1);
      }
    }
  });
  // Churn: ids created, removed and reclaimed, many times over.
  for (int round = 0; round < 50; ++round) {
    std::vector<uint32_t> removed;
    for (int i = 0; i < 500; ++i) table.GetOrCreate("churn" + std::to_string(round * 500 + i));
    for (int i = 0; i < 500; ++i)
      removed.push_back(table.Remove("churn" + std::to_string(round * 500 + i)));
    for (uint32_t r : removed) table.Reclaim(r);
  }
  stop.store(true);
  reader.join();
  CHECK(wrong.load() == 0);
  CHECK(table.live_size() == 2000);
  CHECK(table.size() <= 2500);
}

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

TEST_CASE("A line-aligned EmbeddingTable starts every row on a cache line and keeps its values",
          "[EmbeddingTable]") {
  // Width 35 (2 * 35 floats = 280 bytes) is padded to 320 bytes per row.
  EmbeddingTable aligned("a", 35, 32, 0.1f, 0.5f, 7, /*line_aligned=*/true);
  EmbeddingTable packed("p", 35, 32, 0.1f, 0.5f, 7);
  std::vector<float> values(70);
  for (int i = 0; i < 40000; ++i) {  // more than two chunks
    const std::string id = "id" + std::to_string(i);
    for (int k = 0; k < 70; ++k) values[size_t(k)] = float(i) + float(k) / 100.0f;
    const uint32_t r = aligned.Put(id, values.data());
    REQUIRE(reinterpret_cast<uintptr_t>(aligned.Row(r)) % 64 == 0);
    packed.Put(id, values.data());
  }
  for (int i = 0; i < 40000; i += 997) {
    const std::string id = "id" + std::to_string(i);
    const uint32_t a = aligned.Find(id), p = packed.Find(id);
    REQUIRE(a != EmbeddingTable::kNoRow);
    CHECK(std::string(aligned.key(a)) == id);
    CHECK(std::equal(aligned.Row(a), aligned.Row(a) + 70, packed.Row(p)));
    CHECK(aligned.Row(a)[69] == float(i) + 0.69f);
  }
  // Initial values do not depend on the layout either.
  const uint32_t a = aligned.GetOrCreate("fresh"), p = packed.GetOrCreate("fresh");
  CHECK(std::equal(aligned.Row(a), aligned.Row(a) + 70, packed.Row(p)));
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

namespace recstream::learner {
namespace {

std::string Id(int i) { return std::to_string(i); }

}  // namespace

TEST_CASE("EmbeddingTable agrees on one row per id across threads", "[EmbeddingTable]") {
  // Four threads create the same 300,000 ids in different orders (through
  // many index growths) while a fifth only looks them up.
  EmbeddingTable table("user", 2, 2, 0.1f, 0.0f, 9);
  const int n = 300000, kThreads = 4;
  std::vector<std::vector<uint32_t>> seen(kThreads, std::vector<uint32_t>(n));
  std::atomic<bool> done{false};
  std::atomic<int> wrong{0};
  std::thread reader([&] {
    uint64_t x = 1;
    while (!done.load()) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      const std::string id = Id(int((x >> 33) % n));
      const uint32_t r = table.Find(id);
      if (r != EmbeddingTable::kNoRow && table.key(r) != id) ++wrong;
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t)
    writers.emplace_back([&, t] {
      for (int k = 0; k < n; ++k) {
        const int i = t % 2 ? n - 1 - k : (k * 7 + t * 1000) % n;  // 7 is prime to n
        seen[t][i] = table.GetOrCreate(Id(i));
      }
    });
  for (auto& w : writers) w.join();
  done = true;
  reader.join();
  CHECK(wrong.load() == 0);
  REQUIRE(table.size() == uint32_t(n));
  std::vector<bool> used(n, false);
  int mismatches = 0, duplicates = 0, lost = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t r = seen[0][i];
    for (int t = 1; t < kThreads; ++t) mismatches += seen[t][i] != r;
    if (r >= uint32_t(n) || used[r]) {
      ++duplicates;
      continue;
    }
    used[r] = true;
    lost += table.Find(Id(i)) != r || table.key(r) != Id(i);
  }
  CHECK(mismatches == 0);
  CHECK(duplicates == 0);
  CHECK(lost == 0);
}

TEST_CASE("EmbeddingTable finds every id created before the lookup while it grows",
          "[EmbeddingTable]") {
  // One writer creates 1,000,000 ids (the index grows past the size where
  // replaced arrays are released to the OS); readers look up ids that are
  // already created and must always find them.
  EmbeddingTable table("user", 1, 1, 0.1f, 0.0f, 2);
  const int n = 1000000;
  std::atomic<int> created{0};
  std::atomic<int> missing{0}, wrong{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t)
    readers.emplace_back([&, t] {
      uint64_t x = uint64_t(t) + 11;
      for (int c; (c = created.load(std::memory_order_acquire)) < n;) {
        if (c == 0) continue;
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        const int i = int((x >> 33) % uint64_t(c));
        const std::string id = "id:" + Id(i);
        const uint32_t r = table.Find(id);
        if (r == EmbeddingTable::kNoRow)
          ++missing;
        else if (table.key(r) != id)
          ++wrong;
      }
    });
  for (int i = 0; i < n; ++i) {
    table.GetOrCreate("id:" + Id(i));
    created.store(i + 1, std::memory_order_release);
  }
  for (auto& r : readers) r.join();
  CHECK(missing.load() == 0);
  CHECK(wrong.load() == 0);
  CHECK(table.size() == uint32_t(n));
  for (int i = 0; i < n; i += 4999) CHECK(table.key(table.Find("id:" + Id(i))) == "id:" + Id(i));
}

TEST_CASE("EmbeddingTable keeps long, empty and binary ids apart", "[EmbeddingTable]") {
  EmbeddingTable table("item", 3, 3, 0.1f, 0.0f, 4);
  std::vector<std::string> ids = {"",
                                  "a",
                                  std::string("a\0", 2),
                                  std::string("\0", 1),
                                  std::string("\0\0", 2),
                                  "1234567",   // the longest id kept in the row header
                                  "12345678",  // the shortest kept in the arena
                                  "123456789012345",
                                  "\xff\xfe\x80 not utf-8",
                                  std::string(127, 'x'),
                                  std::string(128, 'x'),  // two-byte length prefix
                                  std::string(256, 'y'),
                                  std::string(100000, 'z'),  // larger than an arena block share
                                  std::string(100001, 'z')};
  std::vector<uint32_t> rows;
  for (const std::string& id : ids) {
    bool created = false;
    rows.push_back(table.GetOrCreate(id, &created));
    CHECK(created);
  }
  std::set<uint32_t> distinct(rows.begin(), rows.end());
  CHECK(distinct.size() == ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    INFO("id #" << i);
    CHECK(table.Find(ids[i]) == rows[i]);
    CHECK(table.key(rows[i]) == ids[i]);
    CHECK(table.GetOrCreate(ids[i]) == rows[i]);
  }
  CHECK(table.Find("123456") == EmbeddingTable::kNoRow);
  CHECK(table.Find("1234567890") == EmbeddingTable::kNoRow);
  CHECK(table.Find(std::string(129, 'x')) == EmbeddingTable::kNoRow);
  CHECK(table.Find(std::string("\0\0\0", 3)) == EmbeddingTable::kNoRow);
  // A row's floats sit beside its id: writing them leaves the id intact.
  for (uint32_t r : rows) std::fill(table.Row(r), table.Row(r) + 6, -1.0f);
  for (size_t i = 0; i < ids.size(); ++i) CHECK(table.key(rows[i]) == ids[i]);
}

TEST_CASE("EmbeddingTable::key converts like the std::string it used to return",
          "[EmbeddingTable]") {
  EmbeddingTable table("user", 2, 2, 0.1f, 0.0f, 1);
  const uint32_t a = table.GetOrCreate("alice-with-a-long-id");
  const uint32_t b = table.GetOrCreate("bob");
  std::string copy = table.key(a);
  const std::string& bound = table.key(b);
  std::vector<std::string> keys;
  keys.push_back(table.key(a));
  keys.emplace_back(table.key(b));
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.emplace_back(table.key(a), table.key(b));
  std::string_view view = table.key(a);
  CHECK(copy == "alice-with-a-long-id");
  CHECK(bound == "bob");
  CHECK(keys == std::vector<std::string>{"alice-with-a-long-id", "bob"});
  CHECK(pairs[0].second == "bob");
  CHECK(view == copy);
  CHECK(table.key(b) == std::string("bob"));
  CHECK(table.Find(table.key(a)) == a);
}

TEST_CASE("EmbeddingTable reports exactly the rows marked dirty, in order", "[EmbeddingTable]") {
  EmbeddingTable table("user", 1, 1, 0.1f, 0.0f, 3);
  const uint32_t n = 40000;  // three chunks
  for (uint32_t i = 0; i < n; ++i) table.GetOrCreate(Id(int(i)));
  table.ForEachDirty(false, [](uint32_t) {});
  const std::vector<uint32_t> marked = {0, 7, 8, 9, 63, 64, 16383, 16384, 16391, 32767, 39999};
  for (uint32_t r : marked) table.MarkDirty(r);
  table.MarkDirty(8);  // twice is once
  std::vector<uint32_t> got;
  table.ForEachDirty(false, [&](uint32_t r) { got.push_back(r); });
  CHECK(got == marked);
  got.clear();
  table.ForEachDirty(false, [&](uint32_t r) { got.push_back(r); });
  CHECK(got.empty());
  uint32_t all = 0;
  table.ForEachDirty(true, [&](uint32_t r) { all += r == all; });
  CHECK(all == n);
}

namespace {

std::vector<uint32_t> ListOf(const FeatureLists& lists, uint32_t row) {
  std::vector<uint32_t> out;
  lists.Get(row, &out);
  return out;
}

std::map<uint32_t, std::vector<uint32_t>> DirtyLists(FeatureLists* lists, bool all) {
  std::map<uint32_t, std::vector<uint32_t>> out;
  lists->ForEachDirty(all, [&](uint32_t row, const std::vector<uint32_t>& list) {
    CHECK(out.count(row) == 0);
    out[row] = list;
  });
  return out;
}

}  // namespace

TEST_CASE("EmbeddingTable exports rows as they were when the export began", "[EmbeddingTable]") {
  EmbeddingTable table("user", 2, 2, 0.1f, 0.0f, 5);
  for (int i = 0; i < 10; ++i) table.GetOrCreate("u" + std::to_string(i));
  table.ForEachDirty(false, [](uint32_t) {});
  auto set = [&](uint32_t r, float v) { std::fill_n(table.Row(r), 4, v); };
  for (uint32_t r = 0; r < 10; ++r) set(r, float(r));
  for (uint32_t r : {2u, 5u, 7u}) table.MarkDirty(r);

  std::vector<uint32_t> rows;
  FloatBuffer dest;
  table.BeginExport(false, &rows, &dest);
  CHECK(rows == std::vector<uint32_t>{2, 5, 7});
  REQUIRE(dest.size() == 3 * 4);
  // A writer changes row 5 before the export copies it, and row 3, which is
  // not exported; both must show up as changed afterwards.
  for (uint32_t r : {5u, 3u}) {
    table.MarkDirty(r);
    set(r, 100.0f);
  }
  table.FinishExport();
  CHECK(std::vector<float>(dest.begin(), dest.end()) ==
        std::vector<float>{2, 2, 2, 2, 5, 5, 5, 5, 7, 7, 7, 7});
  std::vector<uint32_t> changed;
  table.ForEachDirty(false, [&](uint32_t r) { changed.push_back(r); });
  CHECK(changed == std::vector<uint32_t>{3, 5});
  // Writing a row again after the export is a plain change.
  table.MarkDirty(7);
  changed.clear();
  table.ForEachDirty(false, [&](uint32_t r) { changed.push_back(r); });
  CHECK(changed == std::vector<uint32_t>{7});
}

TEST_CASE("EmbeddingTable export is exact while writers change the rows", "[EmbeddingTable]") {
  const int n = 200000;
  EmbeddingTable table("user", 4, 4, 0.1f, 0.0f, 5);
  for (int i = 0; i < n; ++i) {
    const uint32_t r = table.GetOrCreate("u" + std::to_string(i));
    std::fill_n(table.Row(r), 8, float(r));
  }
  // Rows each writer touches: every 7th from its own starting place, in
  // the order trainers would hit them (mark, then write).
  auto row_of = [&](int w, uint32_t k) { return (k + uint32_t(w) * 60013u) % uint32_t(n); };
  std::set<uint32_t> touched;
  for (int w = 0; w < 3; ++w)
    for (uint32_t k = 0; k < uint32_t(n); k += 7) touched.insert(row_of(w, k));
  for (int round = 0; round < 3; ++round) {
    std::vector<float> expected(size_t(n) * 8);  // the rows before the export
    for (uint32_t r = 0; r < uint32_t(n); ++r) std::copy_n(table.Row(r), 8, &expected[r * 8]);
    std::vector<uint32_t> rows;
    FloatBuffer dest;
    table.BeginExport(true, &rows, &dest);
    REQUIRE(rows.size() == size_t(n));
    std::atomic<bool> go{false};
    std::vector<std::thread> writers;
    for (int w = 0; w < 3; ++w) {
      writers.emplace_back([&, w] {
        while (!go.load()) {
        }
        for (uint32_t k = 0; k < uint32_t(n); k += 7) {
          const uint32_t r = row_of(w, k);
          table.MarkDirty(r);
          float* v = table.Row(r);
          for (int j = 0; j < 8; ++j) v[j] = float(round * 10 + w) + 0.5f;
        }
      });
    }
    go = true;
    table.FinishExport();
    for (auto& t : writers) t.join();
    size_t wrong = 0;
    for (size_t i = 0; i < rows.size(); ++i)
      for (int j = 0; j < 8; ++j) wrong += dest[i * 8 + j] != expected[rows[i] * 8 + j];
    CHECK(wrong == 0);
    // The rows written meanwhile, and only those, are reported changed.
    std::set<uint32_t> changed;
    table.ForEachDirty(false, [&](uint32_t r) { changed.insert(r); });
    CHECK(changed == touched);
  }
}

TEST_CASE("FeatureLists keeps each row's last list", "[FeatureLists]") {
  FeatureLists lists;
  auto set = [&](uint32_t row, std::vector<uint32_t> list) {
    return lists.Set(row, list.data(), list.data() + list.size());
  };
  using V = std::vector<uint32_t>;
  CHECK(ListOf(lists, 3).empty());
  CHECK_FALSE(set(3, {}));  // an empty list is no list
  CHECK(set(3, {5}));
  CHECK_FALSE(set(3, {5}));
  CHECK(ListOf(lists, 3) == V{5});
  CHECK(set(3, {5, 6, 7}));
  CHECK_FALSE(set(3, {5, 6, 7}));
  CHECK(ListOf(lists, 3) == V{5, 6, 7});
  CHECK(set(3, {6, 5}));  // shorter: rewritten in place
  CHECK(ListOf(lists, 3) == V{6, 5});
  CHECK(set(3, {1}));
  CHECK(ListOf(lists, 3) == V{1});
  CHECK(set(3, {1, 2, 3, 4, 5, 6, 7, 8, 9}));  // longer: a new slot
  CHECK(ListOf(lists, 3) == V{1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(set(3, {}));
  CHECK(ListOf(lists, 3).empty());
  // Rows far apart, feature rows up to the largest, a list longer than a pool
  // block.
  CHECK(set(1u << 24, {0}));
  CHECK(set(70000, {(1u << 30) - 1}));
  V huge(70000);
  for (uint32_t i = 0; i < huge.size(); ++i) huge[i] = i * 3;
  CHECK(set(9, huge));
  CHECK(set(10, {4, 4}));  // after the dedicated block
  CHECK(ListOf(lists, 1u << 24) == V{0});
  CHECK(ListOf(lists, 70000) == V{(1u << 30) - 1});
  CHECK(ListOf(lists, 9) == huge);
  CHECK(ListOf(lists, 10) == V{4, 4});
  CHECK(ListOf(lists, 3).empty());
  CHECK(ListOf(lists, 4).empty());
}

TEST_CASE("FeatureLists reports changed lists once, cleared ones too", "[FeatureLists]") {
  FeatureLists lists;
  auto set = [&](uint32_t row, std::vector<uint32_t> list) {
    return lists.Set(row, list.data(), list.data() + list.size());
  };
  using M = std::map<uint32_t, std::vector<uint32_t>>;
  set(1, {10});
  set(2, {20, 21});
  set(100000, {30});
  CHECK(DirtyLists(&lists, false) == M{{1, {10}}, {2, {20, 21}}, {100000, {30}}});
  CHECK(DirtyLists(&lists, false).empty());
  set(1, {10});  // unchanged
  set(2, {});    // cleared
  set(5, {50, 51, 52});
  CHECK(DirtyLists(&lists, false) == M{{2, {}}, {5, {50, 51, 52}}});
  CHECK(DirtyLists(&lists, true) == M{{1, {10}}, {5, {50, 51, 52}}, {100000, {30}}});
  CHECK(DirtyLists(&lists, false).empty());
}

TEST_CASE("FeatureLists is safe to set and read from many threads", "[FeatureLists]") {
  // Threads set one-feature and three-feature lists on shared rows; a reader
  // must only ever see lists that some thread set, and the end state is the
  // last list some thread set.
  FeatureLists lists;
  const uint32_t rows = 5000;
  std::atomic<bool> done{false};
  std::atomic<int> bad{0};
  auto valid = [](const std::vector<uint32_t>& l, uint32_t row) {
    if (l.empty()) return true;
    for (uint32_t f : l)
      if (f % rows != row) return false;
    return l.size() == 1 || l.size() == 3;
  };
  std::thread reader([&] {
    std::vector<uint32_t> l;
    while (!done.load())
      for (uint32_t r = 0; r < rows; r += 7) {
        l.clear();
        lists.Get(r, &l);
        if (!valid(l, r)) ++bad;
      }
  });
  std::vector<std::thread> writers;
  for (uint32_t t = 0; t < 3; ++t)
    writers.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round)
        for (uint32_t r = 0; r < rows; ++r) {
          const uint32_t f = r + rows * ((t + round + r) % 4);
          uint32_t list[3] = {f, f + rows * 4, f + rows * 8};
          lists.Set(r, list, list + ((round + t) % 2 ? 1 : 3));
        }
    });
  for (auto& w : writers) w.join();
  done = true;
  reader.join();
  CHECK(bad.load() == 0);
  int wrong = 0;
  for (uint32_t r = 0; r < rows; ++r)
    wrong += !valid(ListOf(lists, r), r) || ListOf(lists, r).empty();
  CHECK(wrong == 0);
  CHECK(DirtyLists(&lists, false).size() == rows);
}

// Short ids and ids too long for the row header.
static std::string PutId(int i) {
  std::string id = i % 3 ? "u" : "a-long-user-id-";
  id += std::to_string(i);
  return id;
}

TEST_CASE("EmbeddingTable Put creates rows with the given values or overwrites them",
          "[EmbeddingTable]") {
  EmbeddingTable table("user", 3, 3, 0.1f, 0.5f, 7);
  const uint32_t a = table.GetOrCreate("alice");
  // Enough rows to span several chunks, with short and long ids.
  const int n = 40000;
  std::vector<float> v(6);
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < 6; ++k) v[k] = float(i) + 0.25f * float(k);
    const std::string id = PutId(i);
    const uint32_t r = table.Put(id, v.data());
    REQUIRE(r == uint32_t(i + 1));
  }
  CHECK(table.size() == uint32_t(n + 1));
  int wrong = 0;
  for (int i = 0; i < n; ++i) {
    const std::string id = PutId(i);
    const uint32_t r = table.Find(id);
    const float* row = r == EmbeddingTable::kNoRow ? nullptr : table.Row(r);
    bool ok = row != nullptr && table.key(r) == id;
    for (int k = 0; ok && k < 6; ++k) ok = row[k] == float(i) + 0.25f * float(k);
    wrong += !ok;
  }
  CHECK(wrong == 0);
  // Prefetch is a hint only: it creates nothing.
  table.Prefetch("nobody");
  table.Prefetch("alice");
  CHECK(table.Find("nobody") == EmbeddingTable::kNoRow);
  CHECK(table.size() == uint32_t(n + 1));
  // An existing row is overwritten, values and accumulators.
  const float mine[6] = {1, 2, 3, 4, 5, 6};
  CHECK(table.Put("alice", mine) == a);
  CHECK(table.size() == uint32_t(n + 1));
  CHECK(std::vector<float>(table.Row(a), table.Row(a) + 6) == std::vector<float>(mine, mine + 6));
  // Rows made by Put are changed rows, like any new row.
  int dirty = 0;
  table.ForEachDirty(false, [&](uint32_t) { ++dirty; });
  CHECK(dirty == n + 1);
}

}  // namespace recstream::learner

namespace recstream::learner {

TEST_CASE("EmbeddingTable PutMany gives what Put one row at a time gives", "[EmbeddingTable]") {
  // Blocks of new ids (short and long), ids that exist already and an id
  // given twice in one block: PutMany must leave each table as Put would.
  EmbeddingTable many("user", 3, 3, 0.1f, 0.5f, 7), one("user", 3, 3, 0.1f, 0.5f, 7);
  for (EmbeddingTable* t : {&many, &one}) t->GetOrCreate("alice");
  const int n = 40000, kBlock = 1000;
  std::vector<std::string> keys;
  std::vector<float> values;
  auto value = [](int i, int k) { return float(i) + 0.25f * float(k); };
  for (int b = 0; b < n; b += kBlock) {
    keys.clear();
    values.clear();
    for (int i = b; i < b + kBlock; ++i) {
      // Every fifth entry repeats the id of an earlier one: of the previous
      // block (an existing row) or of this block (given twice).
      const int id = i % 5 == 4 ? (i % 10 == 4 ? i - kBlock : i - 2) : i;
      keys.push_back(id < 0 ? "alice" : PutId(id));
      for (int k = 0; k < 6; ++k) values.push_back(value(i, k));
    }
    many.PutMany(keys, values.data());
    for (size_t j = 0; j < keys.size(); ++j) one.Put(keys[j], values.data() + 6 * j);
  }
  REQUIRE(many.size() == one.size());
  CHECK(many.size() > uint32_t(n / 2));
  int wrong = 0;
  for (uint32_t r = 0; r < one.size(); ++r) {
    const std::string id = one.key(r);
    const uint32_t m = many.Find(id);
    if (m == EmbeddingTable::kNoRow || many.key(m) != id) {
      ++wrong;
      continue;
    }
    wrong += !std::equal(one.Row(r), one.Row(r) + 6, many.Row(m));
  }
  CHECK(wrong == 0);
  // New rows are changed rows, as with Put.
  int dirty = 0;
  many.ForEachDirty(false, [&](uint32_t) { ++dirty; });
  CHECK(dirty == int(many.size()));
}

TEST_CASE("EmbeddingTable PutMany from several threads exposes only complete rows",
          "[EmbeddingTable]") {
  // Two threads restore disjoint blocks while a third creates rows one at a
  // time (as training does) and a reader checks that every row below size()
  // already has its id and values: rows are written outside the allocation
  // lock and must still become ready in order.
  constexpr int kWidth = 32;  // the default: a block takes a while to write
  EmbeddingTable table("user", kWidth, kWidth, 0.1f, 0.5f, 3);
  const int kBlocks = 100, kBlock = 2000;
  auto value = [](std::string_view id, int k) {
    return float(std::hash<std::string_view>()(id) % 1000) + float(k);
  };
  std::atomic<bool> done{false};
  std::atomic<int> incomplete{0};
  std::thread reader([&] {
    // Checks each row once, as soon as size() covers it.
    uint32_t checked = 0;
    while (!done.load()) {
      for (const uint32_t n = table.size(); checked < n; ++checked) {
        const std::string id = table.key(checked);
        if (id.rfind("made-", 0) == 0) continue;  // initial values
        const float* row = table.Row(checked);
        for (int k = 0; k < 2 * kWidth; ++k) incomplete += row[k] != value(id, k);
      }
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; ++t)
    writers.emplace_back([&, t] {
      std::vector<std::string> keys;
      std::vector<float> values;
      for (int b = t; b < kBlocks; b += 2) {
        keys.clear();
        values.clear();
        for (int i = b * kBlock; i < (b + 1) * kBlock; ++i) {
          keys.push_back(PutId(i));
          for (int k = 0; k < 2 * kWidth; ++k) values.push_back(value(keys.back(), k));
        }
        table.PutMany(keys, values.data());
      }
    });
  std::thread maker([&] {
    for (int i = 0; i < 20000; ++i) table.GetOrCreate("made-" + std::to_string(i));
  });
  for (auto& w : writers) w.join();
  maker.join();
  done = true;
  reader.join();
  CHECK(incomplete.load() == 0);
  REQUIRE(table.size() == uint32_t(kBlocks * kBlock + 20000));
  int lost = 0;
  for (int i = 0; i < kBlocks * kBlock; ++i) {
    const std::string id = PutId(i);
    const uint32_t r = table.Find(id);
    lost += r == EmbeddingTable::kNoRow || table.key(r) != id ||
            table.Row(r)[2 * kWidth - 1] != value(id, 2 * kWidth - 1);
  }
  for (int i = 0; i < 20000; ++i)
    lost += table.Find("made-" + std::to_string(i)) == EmbeddingTable::kNoRow;
  CHECK(lost == 0);
}

}  // namespace recstream::learner
