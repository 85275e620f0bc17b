#include "learner/model.h"

#include <catch2/catch.hpp>

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

}  // namespace
}  // namespace recstream::learner
