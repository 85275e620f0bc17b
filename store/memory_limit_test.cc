// The memory limit (model.memory_limit_mb) with a real learner and a real
// RocksDB store: users that leave memory come back from the store bit for
// bit, while training and after a restart.

#include <bit>
#include <catch2/catch.hpp>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "store/checkpoint_store.h"
#include "tests/test_util.h"

namespace recstream::store {
namespace {

using learner::Event;
using learner::Learner;
using learner::LearnerOptions;
using learner::ModelSnapshot;
using learner::Task;

constexpr int kUsers = 12000;  // three times what a 1 MiB limit keeps
constexpr int kItems = 300;

std::string User(int u) {
  std::string id = "user-";
  return id += std::to_string(u);
}
std::string Item(int i) {
  std::string id = "item-";
  return id += std::to_string(i);
}

// Batches of events over many users: each batch mostly new users, some
// who come back after others pushed them out, with features, histories
// (implicit clicks) and purchases.
std::vector<std::vector<Event>> MakeBatches(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> item(0, kItems - 1), task(0, 9), back(0, 3);
  std::vector<std::vector<Event>> batches;
  int next_user = 0;
  int64_t ts = 1'700'000'000'000;
  while (next_user < kUsers) {
    std::vector<Event> batch;
    for (int k = 0; k < 512; ++k) {
      int u;
      if (back(rng) == 0 && next_user > 0) {
        u = int(rng() % uint64_t(next_user));  // someone seen before
      } else {
        u = next_user < kUsers ? next_user++ : int(rng() % uint64_t(kUsers));
      }
      for (int rep = 0; rep < 2; ++rep) {
        Event e;
        const int t = task(rng);
        e.task = t < 8 ? Task::kClick : Task::kPurchase;
        e.label = 1.0f;
        e.user = User(u);
        const int i = item(rng);
        e.item = Item(i);
        e.ts_ms = ts++;
        e.user_features = {"segment=" + std::to_string(u % 7)};
        e.item_features = {"category=" + std::to_string(i % 11)};
        batch.push_back(std::move(e));
      }
    }
    batches.push_back(std::move(batch));
  }
  return batches;
}

LearnerOptions Options(int64_t limit_mb) {
  LearnerOptions o;
  o.dim = 8;
  o.hidden = 8;
  o.threads = 1;
  o.seed = 11;
  o.history = 4;
  o.memory_limit_mb = limit_mb;
  return o;
}

std::unique_ptr<Learner> NewLearner(const LearnerOptions& options) {
  std::unique_ptr<Learner> l;
  REQUIRE(Learner::Create(options, &l).ok());
  return l;
}

bool Same(const learner::ScoreResult& a, const learner::ScoreResult& b) {
  auto eq = [](float x, float y) { return std::bit_cast<uint32_t>(x) == std::bit_cast<uint32_t>(y); };
  return eq(a.prediction.click, b.prediction.click) &&
         eq(a.prediction.purchase, b.prediction.purchase) && eq(a.score, b.score) &&
         a.user_known == b.user_known;
}

// Options(1) (a 1 MiB memory limit) with user expiry after `expire_s` s.
LearnerOptions ExpiryOptions(int64_t expire_s) {
  LearnerOptions o = Options(1);
  o.expire_user_s = expire_s;
  return o;
}

// A learner of `options` that reads users back from `store`.
std::unique_ptr<Learner> NewLimitedLearner(const LearnerOptions& options, CheckpointStore* store) {
  auto l = NewLearner(options);
  l->SetRowSource(store);
  return l;
}

// A store tuned for point reads, as a trainer with a memory limit opens
// it, under `dir`.
std::unique_ptr<CheckpointStore> OpenPointReadStore(const testing::TempDir& dir) {
  StoreOptions so;
  so.path = dir.path() + "/store";
  so.point_reads = true;
  std::unique_ptr<CheckpointStore> store;
  REQUIRE(CheckpointStore::Open(so, &store).ok());
  return store;
}

// Stores one checkpoint of `l` and tells it so.
void Checkpoint(Learner* l, CheckpointStore* store) {
  ModelSnapshot snap;
  l->BeginSnapshot(false, &snap);
  const uint64_t number = l->snapshot_number();
  l->FinishSnapshot(&snap);
  REQUIRE(store->Write(snap, OffsetMap(), nullptr).ok());
  l->SnapshotStored(number);
}

// A learner restored from `store` as a restarted service restores it (rows
// streamed on two threads), reading users back from it.
std::unique_ptr<Learner> Restore(const LearnerOptions& options, CheckpointStore* store) {
  auto restored = NewLimitedLearner(options, store);
  ModelSnapshot rest;
  OffsetMap offsets;
  CheckpointInfo info;
  REQUIRE(store
              ->LoadStreaming([&](const learner::TableDelta& d) { return restored->ApplyRows(d); },
                              [&](const learner::FeatureListDelta& d) {
                                return restored->ApplyLists(d);
                              },
                              2, &rest, &offsets, &info)
              .ok());
  REQUIRE(restored->ApplySnapshot(rest).ok());
  return restored;
}

// Users whose scores differ between the two learners (every user, a few
// items each); `first` describes the first.
int Mismatches(const Learner& want, const Learner& got, std::string* first, int offset = 0) {
  const learner::Blend blend;
  int bad = 0;
  for (int u = offset; u < kUsers; u += 7) {
    for (int i = 0; i < kItems; i += 37) {
      const auto a = want.Score(User(u), Item(i), blend);
      const auto b = got.Score(User(u), Item(i), blend);
      if (!Same(a, b) && bad++ == 0)
        *first = User(u) + "/" + Item(i) + ": " + std::to_string(a.score) + " vs " +
                 std::to_string(b.score);
    }
  }
  return bad;
}

TEST_CASE("Users that leave memory come back from the store bit for bit", "[memory]") {
  testing::TempDir dir;
  StoreOptions so;
  so.path = dir.path() + "/store";
  std::unique_ptr<CheckpointStore> store;
  REQUIRE(CheckpointStore::Open(so, &store).ok());
  auto limited = NewLimitedLearner(Options(1), store.get());
  auto full = NewLearner(Options(0));

  const auto batches = MakeBatches(5);
  for (size_t b = 0; b < batches.size(); ++b) {
    limited->Train(batches[b]);
    full->Train(batches[b]);
    if (b % 2 == 1) Checkpoint(limited.get(), store.get());
  }
  const learner::LearnerStats ls = limited->Stats();
  INFO("budget " << ls.user_budget << ", resident " << ls.users << ", evicted "
                 << ls.users_evicted << ", reloaded " << ls.users_reloaded);
  // Users left memory, and users who came back were read back, not made
  // anew (which would have scored differently from the unlimited twin).
  REQUIRE(ls.users_evicted > 0);
  REQUIRE(ls.users_reloaded > 0);
  REQUIRE(ls.store_read_errors == 0);
  // Within the limit, give or take a checkpoint interval's new users.
  REQUIRE(ls.users <= ls.user_budget + 2 * 1024);
  REQUIRE(full->Stats().users == uint64_t(kUsers));

  std::string first;
  int bad = Mismatches(*full, *limited, &first);
  INFO("first mismatch " << first);
  REQUIRE(bad == 0);
  // Recommendations of a user read back leave out its purchases as before.
  for (int u = 0; u < 200; u += 13) {
    const auto want = full->Recommend(User(u), 5, true, learner::Blend());
    const auto got = limited->Recommend(User(u), 5, true, learner::Blend());
    REQUIRE(want.size() == got.size());
    for (size_t k = 0; k < want.size(); ++k) REQUIRE(want[k].item == got[k].item);
  }

  SECTION("a restart loads the users that were in memory and reads the others back") {
    // The scores above read users back beyond the budget: one more batch,
    // then quiet until the users over the limit have left.
    limited->Train(batches.back());
    full->Train(batches.back());
    for (int i = 0; i < 8 && limited->Stats().users > limited->Stats().user_budget; ++i) {
      Checkpoint(limited.get(), store.get());
      limited->Idle();
    }
    Checkpoint(limited.get(), store.get());
    limited.reset();
    auto restored = Restore(Options(1), store.get());
    const learner::LearnerStats rs = restored->Stats();
    INFO("restored " << rs.users << " of " << kUsers << " users, budget " << rs.user_budget);
    REQUIRE(rs.users <= rs.user_budget);
    REQUIRE(rs.users > 0);
    // The users in memory when the model was stored are the ones loaded:
    // those of the last batch need no read of the store.
    const uint64_t reads = restored->Stats().store_reads;
    for (const Event& e : batches.back()) restored->Score(e.user, e.item, learner::Blend());
    CHECK(restored->Stats().store_reads == reads);
    first.clear();
    bad = Mismatches(*full, *restored, &first);
    INFO("first mismatch " << first);
    REQUIRE(bad == 0);
    // Users scored above were in memory (scoring read them back): other
    // users come back from the store now, bit for bit.
    bad = Mismatches(*full, *restored, &first, 3);
    REQUIRE(bad == 0);
    REQUIRE(restored->Stats().users_reloaded > 0);
  }
}

TEST_CASE("Users expire from the store while out of memory", "[memory]") {
  testing::TempDir dir;
  std::unique_ptr<CheckpointStore> store = OpenPointReadStore(dir);
  const LearnerOptions o = ExpiryOptions(60);
  auto l = NewLimitedLearner(o, store.get());
  // Wave after wave of new users, one second of event time per event: a
  // wave's users are out of memory (three waves fill it) long before they
  // are a minute old.
  constexpr int kWave = 3000, kWaves = 12;
  int64_t ts = 1'700'000'000'000;
  for (int w = 0; w < kWaves; ++w) {
    std::vector<Event> batch;
    for (int u = w * kWave; u < (w + 1) * kWave; ++u) {
      Event e;
      e.user = User(u);
      e.item = Item(u % kItems);
      e.ts_ms = ts;
      ts += 1000 / 100;  // 100 events a second
      if (u % 10 == 0) {  // every tenth user also buys
        Event p = e;
        p.task = Task::kPurchase;
        p.label = 1;
        batch.push_back(std::move(p));
      }
      batch.push_back(std::move(e));
    }
    l->Train(batch);
    Checkpoint(l.get(), store.get());
    l->Idle();
  }
  // Quiet: expiry goes on over what is stored.
  for (int i = 0; i < 64; ++i) {
    l->Idle();
    Checkpoint(l.get(), store.get());
  }
  const learner::LearnerStats ls = l->Stats();
  INFO("evicted " << ls.users_evicted << ", expired " << ls.expired_users << ", resident "
                  << ls.users);
  REQUIRE(ls.users_evicted > 0);
  ModelSnapshot stored;
  REQUIRE(store->Load(&stored, nullptr, nullptr).ok());
  size_t user_rows = 0, left = 0;
  for (const auto& t : stored.tables)
    if (t.table == "user") user_rows = t.keys.size();
  for (const auto& f : stored.feature_lists)
    if (f.table == learner::kUserLeftLists) left = f.keys.size();
  // 360 s of event time: the users of the last minute (6,000) stay, every
  // older one is gone from the store, evicted or not.
  INFO("stored user rows " << user_rows << ", user_left entries " << left);
  REQUIRE(user_rows <= 6000 + 100);
  REQUIRE(ls.expired_users >= uint64_t(kWave * kWaves) - 6000 - 100);
  REQUIRE(left <= user_rows);
  // Their purchases went with them (expiry reads those of the users out of
  // memory that bought, and deletes them in the same checkpoint).
  std::set<std::string> live;
  for (const auto& t : stored.tables)
    if (t.table == "user") live.insert(t.keys.begin(), t.keys.end());
  size_t kept_purchases = 0;
  for (const auto& [user, item] : stored.new_purchases) {
    INFO("a purchase of " << user);
    REQUIRE(live.count(user) == 1);
    ++kept_purchases;
  }
  CHECK(kept_purchases > 0);
  // An expired user who returns starts afresh: unknown until its event,
  // and without a store read once expiry has recorded its deletion (the
  // filter of users out of memory is built again by each pass).
  uint64_t reads = l->Stats().store_reads;
  for (int u = 0; u < 5 * kWave; u += 97)
    REQUIRE_FALSE(l->Score(User(u), Item(0), learner::Blend()).user_known);
  CHECK(l->Stats().store_reads == reads);
  // The users of the last minute are all known, from memory or the store.
  reads = l->Stats().store_reads;
  for (int u = (kWaves - 2) * kWave + kWave / 2; u < kWaves * kWave; u += 53)
    REQUIRE(l->Score(User(u), Item(0), learner::Blend()).user_known);
  CHECK(l->Stats().store_reads > reads);

  SECTION("after a restart, users out of memory come back until their time is up") {
    Checkpoint(l.get(), store.get());
    l.reset();
    auto restored = Restore(o, store.get());
    // Event time moves on by one event; expiry passes over the store's
    // entries and builds the filter of users out of memory again.
    Event e;
    e.user = "newcomer";
    e.item = Item(0);
    e.ts_ms = ts;
    restored->Train(std::vector<Event>{e});
    for (int i = 0; i < 64; ++i) {
      restored->Idle();
      Checkpoint(restored.get(), store.get());
    }
    for (int u = (kWaves - 2) * kWave + kWave / 2; u < kWaves * kWave; u += 53)
      REQUIRE(restored->Score(User(u), Item(0), learner::Blend()).user_known);
    for (int u = 0; u < 5 * kWave; u += 97)
      REQUIRE_FALSE(restored->Score(User(u), Item(0), learner::Blend()).user_known);
  }
}

TEST_CASE("Expiry over the store keeps pace with event time while training", "[memory]") {
  // No Idle calls: expiry of users out of memory must go on at the pace of
  // event time alone, after a burst of visitors that leave memory at once
  // and while few users leave afterwards.
  testing::TempDir dir;
  std::unique_ptr<CheckpointStore> store = OpenPointReadStore(dir);
  const LearnerOptions o = ExpiryOptions(3600);
  auto l = NewLimitedLearner(o, store.get());
  int64_t ts = 1'700'000'000'000;
  auto event = [&](const std::string& user) {
    Event e;
    e.user = user;
    e.item = Item(0);
    e.ts_ms = ts;
    return e;
  };
  // One event first: expiry's first pass goes over an empty store.
  l->Train(std::vector<Event>{event("first")});
  Checkpoint(l.get(), store.get());
  // 30,000 new visitors within a second of event time: most leave memory.
  ts += 1000;
  for (int w = 0; w < 10; ++w) {
    std::vector<Event> batch;
    for (int u = w * 3000; u < (w + 1) * 3000; ++u) batch.push_back(event(User(u)));
    l->Train(batch);
    Checkpoint(l.get(), store.get());
  }
  REQUIRE(l->Stats().users_evicted > 20000);
  // Then 100 regulars, a call per minute of event time, for three hours.
  for (int c = 0; c < 180; ++c) {
    ts += 60'000;
    std::vector<Event> batch;
    for (int u = 0; u < 100; ++u) batch.push_back(event("regular-" + std::to_string(u)));
    l->Train(batch);
    Checkpoint(l.get(), store.get());
  }
  ModelSnapshot stored;
  REQUIRE(store->Load(&stored, nullptr, nullptr).ok());
  std::set<std::string> live;
  size_t left = 0;
  for (const auto& t : stored.tables)
    if (t.table == "user") live.insert(t.keys.begin(), t.keys.end());
  for (const auto& f : stored.feature_lists)
    if (f.table == learner::kUserLeftLists) left = f.keys.size();
  // The visitors are two hours past their time: all gone from the store.
  INFO("stored users " << live.size() << ", user_left entries " << left);
  CHECK(live.size() <= 100 + 2);
  CHECK(left <= 100 + 2);
  // And the passes that deleted them have ended: a returning one costs no
  // store read.
  const uint64_t reads = l->Stats().store_reads;
  for (int u = 0; u < 30000; u += 151)
    REQUIRE_FALSE(l->Score(User(u), Item(0), learner::Blend()).user_known);
  CHECK(l->Stats().store_reads == reads);
}

}  // namespace
}  // namespace recstream::store
