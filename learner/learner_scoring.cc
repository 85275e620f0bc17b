// Score, ScoreMany and Recommend: the read side of the learner.
#include "learner/learner_impl.h"

namespace recstream::learner {

void Learner::Impl::ScoreItems(std::string_view user, const std::vector<uint32_t>& item_rows,
                               std::vector<Prediction>* out) const {
  const int d = options.dim;
  UserContext ctx(shape);
  std::vector<float> u(d, 0.0f), ubias(kNumTasks, 0.0f);
  std::vector<uint32_t> rows;
  uint32_t ur = users.Find(user);
  if (ur != EmbeddingTable::kNoRow) {
    rows.push_back(ur);
    user_lists.Get(ur, &rows);
    Gather(users, user_features, rows, u.data(), ubias.data());
  }
  shape.PrepareUser(dense.data(), u.data(), &ctx);
  out->resize(item_rows.size());
  std::vector<float> v(width, 0.0f);
  std::array<float, kNumTasks> y;
  auto sigmoid = [](float x) { return 1.0f / (1.0f + std::exp(-x)); };
  for (size_t i = 0; i < item_rows.size(); ++i) {
    std::fill(v.begin(), v.end(), 0.0f);
    if (item_rows[i] != EmbeddingTable::kNoRow) {
      rows.clear();
      rows.push_back(item_rows[i]);
      item_lists.Get(item_rows[i], &rows);
      Gather(items, item_features, rows, v.data(), v.data() + d);
      const uint32_t pre_row = PretrainedRow(item_rows[i]);
      if (pre_row != EmbeddingTable::kNoRow)
        shape.Project(dense.data(), pretrained->Row(pre_row), v.data());
    }
    shape.ScoreItem(dense.data(), ctx, v.data(), &y);
    Prediction& p = (*out)[i];
    p.click = sigmoid(y[0] + ubias[0] + v[d + 0]);
    p.purchase = sigmoid(y[1] + ubias[1] + v[d + 1]);
    if (options.esmm) p.purchase *= p.click;
    float r = y[2] + ubias[2] + v[d + 2];
    p.rating = std::isfinite(r) ? std::clamp(r, options.rating_min, options.rating_max)
                                : 0.5f * (options.rating_min + options.rating_max);
  }
}

ScoreResult Learner::Score(std::string_view user, std::string_view item, const Blend& blend) const {
  const Impl& m = *impl_;
  ScoreResult r;
  uint32_t ir = m.items.Find(item);
  r.user_known = m.users.Find(user) != EmbeddingTable::kNoRow;
  r.item_known = ir != EmbeddingTable::kNoRow;
  std::vector<Prediction> p;
  m.ScoreItems(user, {ir}, &p);
  r.prediction = p[0];
  r.score = BlendScore(p[0], blend, m.options.rating_min, m.options.rating_max);
  return r;
}

void Learner::ScoreMany(std::string_view user, std::span<const std::string> items,
                        const Blend& blend, std::vector<ScoreResult>* out) const {
  const Impl& m = *impl_;
  std::vector<uint32_t> rows(items.size());
  for (size_t i = 0; i < items.size(); ++i) rows[i] = m.items.Find(items[i]);
  bool user_known = m.users.Find(user) != EmbeddingTable::kNoRow;
  std::vector<Prediction> p;
  m.ScoreItems(user, rows, &p);
  out->resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    ScoreResult& r = (*out)[i];
    r.prediction = p[i];
    r.score = BlendScore(p[i], blend, m.options.rating_min, m.options.rating_max);
    r.user_known = user_known;
    r.item_known = rows[i] != EmbeddingTable::kNoRow;
  }
}

std::vector<Recommendation> Learner::Recommend(std::string_view user, int k, bool exclude_purchased,
                                               const Blend& blend) const {
  const Impl& m = *impl_;
  std::vector<Recommendation> result;
  if (k <= 0) return result;
  uint32_t n = m.items.size();
  std::vector<uint32_t> rows(n);
  for (uint32_t i = 0; i < n; ++i) rows[i] = i;
  if (exclude_purchased) {
    uint32_t ur = m.users.Find(user);
    std::shared_lock lock(m.purchases_mu);
    auto it = ur == EmbeddingTable::kNoRow ? m.purchases.end() : m.purchases.find(ur);
    if (it != m.purchases.end())
      std::erase_if(rows, [&](uint32_t r) { return it->second.count(r) > 0; });
  }
  std::vector<Prediction> preds;
  m.ScoreItems(user, rows, &preds);
  // Min-heap of the best k.
  using Entry = std::pair<float, size_t>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  for (size_t i = 0; i < rows.size(); ++i) {
    float s = BlendScore(preds[i], blend, m.options.rating_min, m.options.rating_max);
    if (int(heap.size()) < k) {
      heap.emplace(s, i);
    } else if (s > heap.top().first) {
      heap.pop();
      heap.emplace(s, i);
    }
  }
  result.resize(heap.size());
  for (size_t j = heap.size(); j-- > 0;) {
    auto [s, i] = heap.top();
    heap.pop();
    result[j] = Recommendation{m.items.key(rows[i]), preds[i], s};
  }
  return result;
}

}  // namespace recstream::learner
