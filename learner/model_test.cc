#include "learner/model.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

namespace recstream::learner {
namespace {

LearnerOptions Small() {
  LearnerOptions o;
  o.dim = 4;
  o.hidden = 4;
  return o;
}

TEST_CASE("Model: Rows keeps each user's features as its list, Gather sums them", "[model]") {
  Model m(Small());
  CHECK(m.width == 4 + kNumTasks);
  CHECK(m.table("user") == &m.users);
  CHECK(m.table("item_pretrained") == nullptr);  // pretrained vectors off
  CHECK(m.all_tables().size() == 4);
  const uint32_t u = m.users.GetOrCreate("u1");
  std::vector<uint32_t> rows;
  m.Rows(u, {"age=3", "city=x"}, m.users, m.user_features, m.user_lists, &rows);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] == u);
  // Later events without features use the stored list.
  std::vector<uint32_t> again;
  m.Rows(u, {}, m.users, m.user_features, m.user_lists, &again);
  CHECK(again == rows);
  std::vector<float> vec(4), bias(kNumTasks);
  m.Gather(m.users, m.user_features, rows, vec.data(), bias.data());
  for (int k = 0; k < 4; ++k) {
    const float want =
        m.users.Row(rows[0])[k] + m.user_features.Row(rows[1])[k] + m.user_features.Row(rows[2])[k];
    CHECK(vec[k] == want);
  }
  CHECK(m.PretrainedRow(0) == EmbeddingTable::kNoRow);
}

TEST_CASE("Model: the dense block and its optimizer state follow the options", "[model]") {
  LearnerOptions o = Small();
  Model adagrad(o);
  CHECK(adagrad.dense.size() == adagrad.shape.dense_size());
  CHECK(adagrad.dense_m.empty());
  o.dense_optimizer = Optimizer::kAdam;
  Model adam(o);
  CHECK(adam.adam());
  CHECK(adam.dense_m.size() == adam.dense.size());
  // FTRL rows carry z and n after the values.
  o.embedding_optimizer = Optimizer::kFtrl;
  Model ftrl(o);
  CHECK(ftrl.users.row_floats() == 3 * size_t(ftrl.width));
  const float* r = ftrl.users.Row(ftrl.users.GetOrCreate("u"));
  CHECK(r[2 * ftrl.width] == o.adagrad_init);            // n
  if (r[0] != 0.0f) CHECK(r[ftrl.width] * r[0] < 0.0f);  // z opposes the value
}

TEST_CASE(
    "Model: the popularity prior counts the window's newest quarter twice, and a restore "
    "rebuilds it",
    "[model]") {
  LearnerOptions o = Small();
  o.negative_window = 8;  // its newest quarter: the last 2 items
  Model m(o);
  auto push = [&](const std::string& id) {
    m.PushRecent(m.items.GetOrCreate(id), Model::IdHash(id));
  };
  // The count behind the prior: n + n' (RecentPopularity = log(1 + n + n')).
  auto count = [](const Model& model, const std::string& id) {
    return std::lround(std::expm1(model.RecentPopularity(Model::IdHash(id))));
  };
  for (const char* id : {"a", "a", "b", "c", "c", "d", "b", "b"}) push(id);
  // Window a a b c c d b b; newest quarter b b.
  CHECK(count(m, "a") == 2);
  CHECK(count(m, "b") == 5);
  CHECK(count(m, "c") == 2);
  CHECK(count(m, "d") == 1);
  push("d");
  // Window a b c c d b b d; newest quarter b d: "d", seen as often as "a"
  // in the window but just now, ranks above it.
  CHECK(count(m, "a") == 1);
  CHECK(count(m, "b") == 4);
  CHECK(count(m, "d") == 3);
  push("e");
  push("e");
  // Window c c d b b d e e; newest quarter e e.
  CHECK(count(m, "a") == 0);
  CHECK(count(m, "b") == 2);
  CHECK(count(m, "e") == 4);

  // A restore of the ring (as a snapshot's "negative_ring" list: the next
  // position, then each slot's item) rebuilds both counts.
  FeatureListDelta ring;
  ring.table = "negative_ring";
  ring.keys = {""};
  std::vector<std::string> names = {std::to_string(m.recent_next.load())};
  for (const auto& e : m.recent) {
    const uint64_t v = e.load();
    names.push_back(v == Model::kNoEntry ? "" : std::string(m.items.key(uint32_t(v >> 32))));
  }
  ring.features = {names};
  Model restored(o);
  restored.SetLists(ring, 0, 1);
  for (const char* id : {"a", "b", "c", "d", "e"}) CHECK(count(restored, id) == count(m, id));
  // Both go on alike.
  for (Model* x : {&m, &restored}) x->PushRecent(x->items.GetOrCreate("a"), Model::IdHash("a"));
  for (const char* id : {"a", "b", "c", "d", "e"}) CHECK(count(restored, id) == count(m, id));
}

}  // namespace
}  // namespace recstream::learner
