#include "learner/scorer.h"

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <thread>

namespace recstream::learner {
namespace {

constexpr int L = kScoreLanes;
using Clock = std::chrono::steady_clock;

// Recommend's freshness (RecommendCache). While Recommend is in use (a call
// in the last kIdleSeconds), a background thread rebuilds the panel when the
// model has changed, at most every max(kRefreshSeconds, 10 x build time); a
// call finding the panel stale by more than max(kMaxStaleSeconds, 20 x build
// time) rebuilds it before answering, and one whose build takes under
// kSyncBuildSeconds or whose catalogue has at most kSyncItems items (small
// catalogues) always does. Items created after the
// panel's build are gathered by each call, so new items are never missed.
constexpr double kRefreshSeconds = 0.25;
constexpr double kMaxStaleSeconds = 2.0;
constexpr double kSyncBuildSeconds = 0.001;
// Catalogues of at most this many items are always scored from a panel that
// matches the model, whatever the machine's load: deterministic results for
// small catalogues (and for tests), at a rebuild cost of about 1 ms.
constexpr uint32_t kSyncItems = 4096;
constexpr double kIdleSeconds = 60.0;
// Panels of at least this many blocks (32,768 items) are scanned in
// kParallelParts parts with oneTBB. Many small parts rather than one per
// core: a second thread often joins a call late (an idle vCPU wakes in 0.1
// ms to a few ms), and with few parts the caller has by then taken the rest
// itself.
constexpr size_t kParallelBlocks = 2048;
constexpr int kParallelParts = 16;

double Now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

typedef float V8 __attribute__((vector_size(32)));
typedef int32_t V8i __attribute__((vector_size(32)));

// Screening of a block for Recommend: an approximation of the blended score
// of every lane (exp by the Cephes polynomial, relative error ~1e-7), used
// only to skip lanes that cannot enter the top k; candidates are then scored
// exactly. kScreenMargin bounds the approximation's error with a wide
// safety factor.
constexpr float kScreenError = 2e-5f;

struct ScreenParams {
  float ub[kNumTasks];
  float wc, wp, wr, rmin, rmax, rmid, inv_range;
  bool esmm;
};

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

__attribute__((target_clones("arch=x86-64-v3", "default"))) void ScreenBlock(
    const float* __restrict y, const float* __restrict vbias, const ScreenParams& sp,
    float* __restrict out) {
  const V8 zero = {};
  // In place: exp(x).
  auto exp = [&](V8& x) {
    x = x < zero - 87.0f ? zero - 87.0f : x;
    x = x > zero + 87.0f ? zero + 87.0f : x;
    V8 fx = x * 1.44269504088896341f + 0.5f;
    V8i i = __builtin_convertvector(fx, V8i);
    V8 fi = __builtin_convertvector(i, V8);
    i += (fi > fx);  // -1 where truncation rounded up: floor
    fi = __builtin_convertvector(i, V8);
    x = x - fi * 0.693359375f;
    x = x - fi * -2.12194440e-4f;
    V8 z = x * x;
    V8 p = 1.9875691500e-4f * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    p = p * z + x + 1.0f;
    V8i e = (i + 127) << 23;
    V8 scale;
    std::memcpy(&scale, &e, sizeof scale);
    x = p * scale;
  };
  for (int h = 0; h < 2; ++h) {
    V8 y0, y1, y2, b0, b1, b2;
    std::memcpy(&y0, y + 0 * L + 8 * h, 32);
    std::memcpy(&y1, y + 1 * L + 8 * h, 32);
    std::memcpy(&y2, y + 2 * L + 8 * h, 32);
    std::memcpy(&b0, vbias + 0 * L + 8 * h, 32);
    std::memcpy(&b1, vbias + 1 * L + 8 * h, 32);
    std::memcpy(&b2, vbias + 2 * L + 8 * h, 32);
    V8 c = zero - (y0 + sp.ub[0] + b0), p = zero - (y1 + sp.ub[1] + b1);
    exp(c);
    exp(p);
    c = 1.0f / (1.0f + c);
    p = 1.0f / (1.0f + p);
    if (sp.esmm) p = p * c;
    V8 r = y2 + sp.ub[2] + b2;
    V8 rc = r < zero + sp.rmin ? zero + sp.rmin : r;
    rc = rc > zero + sp.rmax ? zero + sp.rmax : rc;
    V8 ar = r < zero ? -r : r;
    rc = ar <= zero + 3.4e38f ? rc : zero + sp.rmid;  // not finite: mid-scale
    V8 s = sp.wc * c + sp.wp * p + sp.wr * ((rc - sp.rmin) * sp.inv_range);
    std::memcpy(out + 8 * h, &s, 32);
  }
}

#pragma GCC pop_options

}  // namespace

void Scorer::GatherRequest(const EmbeddingTable& main, const EmbeddingTable& side,
                           uint32_t main_row, const std::vector<std::string>& features, float* vec,
                           float* bias, std::vector<uint32_t>* found) const {
  std::vector<const float*> rows;
  rows.reserve(features.size() + 1);
  if (main_row != EmbeddingTable::kNoRow) rows.push_back(main.Row(main_row));
  for (const std::string& f : features) {
    const uint32_t r = side.Find(f);
    if (r == EmbeddingTable::kNoRow) continue;
    rows.push_back(side.Row(r));
    if (found) found->push_back(r);
  }
  if (rows.empty()) {
    std::fill(vec, vec + m_.options.dim, 0.0f);
    std::fill(bias, bias + kNumTasks, 0.0f);
    return;
  }
  SumRows(
      m_.options.dim, rows.size(), [&](size_t i) { return rows[i]; }, vec, bias);
}

void Scorer::PrepareUserSide(std::string_view user, UserSide* side,
                             const std::vector<std::string>* features) const {
  std::vector<float> u(m_.options.dim, 0.0f);
  side->bias.fill(0.0f);
  side->row = m_.FindUser(user);
  // A user without a row of its own (not admitted yet) is scored through
  // the prior row, as its events are learned (LearnerOptions::admit_after).
  const uint32_t vec_row = side->row != EmbeddingTable::kNoRow ? side->row : m_.Prior(0);
  if (features != nullptr) {
    GatherRequest(m_.users, m_.user_features, vec_row, *features, u.data(), side->bias.data());
  } else if (vec_row != EmbeddingTable::kNoRow) {
    std::vector<uint32_t> rows = {vec_row};
    if (side->row != EmbeddingTable::kNoRow) m_.user_lists.Get(side->row, &rows);
    m_.Gather(m_.users, m_.user_features, rows, u.data(), side->bias.data());
  }
  // The dense layers see the pooled history at the learned gate's weight,
  // the implicit tasks' two towers at weight 1 (Model::history_gate).
  side->history = HistoryView();
  side->u = u;
  if (side->row != EmbeddingTable::kNoRow && m_.options.history > 0) {
    std::vector<float> acc(m_.options.dim), pooled(m_.options.dim, 0.0f);
    m_.AddHistory(side->row, &side->history, acc.data(), pooled.data());
    const float gate = m_.history_gate[0];
    for (int k = 0; k < m_.options.dim; ++k) {
      u[k] += gate * pooled[k];
      side->u[k] += pooled[k];
    }
  }
  for (int t = 0; t < kNumTasks; ++t) side->implicit[t] = m_.implicit(t);
  m_.shape.PrepareUser(m_.dense.data(), u.data(), &side->ctx);
}

bool Scorer::Better(const ScoredItem& a, const ScoredItem& b) const {
  if (a.score != b.score) return a.score > b.score;
  return a.row != b.row && m_.items.key(a.row) < m_.items.key(b.row);
}

bool Scorer::NeedsMatch(const UserSide& side) const {
  for (bool implicit : side.implicit)
    if (implicit) return true;
  return false;
}

void Scorer::LaneMatch(const UserSide& side, uint32_t row, const uint32_t* f, size_t nf,
                       float popularity, int lane, float* match, bool* own) const {
  own[lane] = false;
  for (int t = 0; t < kNumTasks; ++t) {
    if (!side.implicit[t]) {
      match[t * L + lane] = 0.0f;
      continue;
    }
    match[t * L + lane] =
        m_.HistoryMatch(t, side.history, row, f, nf, nullptr, &own[lane]) + popularity;
  }
}

void Scorer::ImplicitScores(const UserSide& side, const float* block, const float* match,
                            const bool* own, float* y) const {
  // An implicit task's logit is the two towers' u . v (its biases are added
  // by FinishLane), summed in k order in every lane.
  const int d = m_.options.dim;
  const float* u = side.u.data();
  for (int t = 0; t < kNumTasks; ++t) {
    if (!side.implicit[t]) continue;
    float dot[L] = {};
    for (int k = 0; k < d; ++k)
      for (int i = 0; i < L; ++i) dot[i] += u[k] * block[k * L + i];
    const float alpha[2] = {m_.TowerWeight(t, side.history, false),
                            m_.TowerWeight(t, side.history, true)};
    for (int i = 0; i < L; ++i) dot[i] *= alpha[match != nullptr && own[i]];
    if (match != nullptr)
      for (int i = 0; i < L; ++i) dot[i] += match[t * L + i];
    const float shift = m_.implicit_shift[t];
    for (int i = 0; i < L; ++i) dot[i] -= shift;
    std::copy(dot, dot + L, y + t * L);
  }
}

void Scorer::FindItems(std::span<const std::string> keys, std::vector<uint32_t>* rows) const {
  // Two-step prefetching, as in training (ResolveChunk): index slots
  // kSlotAhead keys ahead, then the id headers they point to kRowAhead ahead.
  constexpr size_t kSlotAhead = 16, kRowAhead = 8;
  const size_t n = keys.size();
  rows->resize(n);
  for (size_t i = 0; i < std::min(n, kSlotAhead); ++i) m_.items.Prefetch(keys[i]);
  for (size_t i = 0; i < std::min(n, kRowAhead); ++i) m_.items.PrefetchRow(keys[i]);
  for (size_t i = 0; i < n; ++i) {
    if (i + kSlotAhead < n) m_.items.Prefetch(keys[i + kSlotAhead]);
    if (i + kRowAhead < n) m_.items.PrefetchRow(keys[i + kRowAhead]);
    const uint32_t row = m_.items.Find(keys[i]);
    (*rows)[i] = row;
    if (row != EmbeddingTable::kNoRow) m_.item_lists.Prefetch(row);
  }
}

void Scorer::PrefetchItem(uint32_t row) const {
  if (row == EmbeddingTable::kNoRow) return;
  PrefetchBytes(m_.items.Row(row), size_t(m_.width) * sizeof(float));  // values only
}

void Scorer::GatherItem(uint32_t row, int lane, std::vector<uint32_t>* rows, float* v, float* block,
                        const std::vector<std::string>* features) const {
  const int d = m_.options.dim;
  std::fill(v, v + m_.width, 0.0f);
  rows->assign(1, row);
  // An item without a row of its own (not admitted yet) is scored through
  // the prior row, as its events are learned (LearnerOptions::admit_after).
  if (row == EmbeddingTable::kNoRow && m_.Prior(1) != EmbeddingTable::kNoRow) {
    const uint32_t prior = m_.Prior(1);
    (*rows)[0] = prior;
    if (features != nullptr) {
      GatherRequest(m_.items, m_.item_features, prior, *features, v, v + d, rows);
    } else {
      m_.Gather(m_.items, m_.item_features, *rows, v, v + d);
    }
    for (int k = 0; k < m_.width; ++k) block[k * L + lane] = v[k];
    return;
  }
  if (features != nullptr) {
    GatherRequest(m_.items, m_.item_features, row, *features, v, v + d, rows);
    const uint32_t pre_row = m_.PretrainedRow(row);
    if (pre_row != EmbeddingTable::kNoRow)
      m_.shape.Project(m_.dense.data(), m_.pretrained->Row(pre_row), v);
  } else if (row != EmbeddingTable::kNoRow) {
    m_.item_lists.Get(row, rows);
    m_.Gather(m_.items, m_.item_features, *rows, v, v + d);
    const uint32_t pre_row = m_.PretrainedRow(row);
    if (pre_row != EmbeddingTable::kNoRow)
      m_.shape.Project(m_.dense.data(), m_.pretrained->Row(pre_row), v);
  }
  for (int k = 0; k < m_.width; ++k) block[k * L + lane] = v[k];
}

Prediction Scorer::FinishLane(const float* y, int lane, const UserSide& side,
                              const float* block) const {
  const int d = m_.options.dim;
  const float* vbias = block + size_t(d) * L + lane;
  Prediction p;
  p.click = Sigmoid(y[0 * L + lane] + side.bias[0] + vbias[0 * L]);
  p.purchase = Sigmoid(y[1 * L + lane] + side.bias[1] + vbias[1 * L]);
  if (m_.options.esmm) p.purchase *= p.click;
  float r = y[2 * L + lane] + side.bias[2] + vbias[2 * L];
  p.rating = std::isfinite(r) ? std::clamp(r, m_.options.rating_min, m_.options.rating_max)
                              : 0.5f * (m_.options.rating_min + m_.options.rating_max);
  return p;
}

void Scorer::ScoreRows(const UserSide& side, const std::vector<uint32_t>& item_rows,
                       std::vector<Prediction>* out,
                       std::span<const std::vector<std::string>* const> features) const {
  const size_t n = item_rows.size();
  out->resize(n);
  // Items [begin, end), begin a multiple of L.
  auto score = [&](size_t begin, size_t end) {
    AlignedFloats block(m_.shape.block_floats()), scratch(m_.shape.score_scratch_floats());
    alignas(64) float y[kNumTasks * L];
    float match[kNumTasks * L];
    bool own[L] = {};
    const bool need_match = NeedsMatch(side);
    std::vector<uint32_t> rows;
    std::vector<float> v(m_.width);
    // Rows of the next block are loaded while this one is gathered.
    for (size_t i = begin; i < std::min(end, begin + L); ++i) PrefetchItem(item_rows[i]);
    for (size_t first = begin; first < end; first += L) {
      const int lanes = int(std::min<size_t>(L, end - first));
      for (size_t i = first + L; i < std::min(end, first + 2 * L); ++i) PrefetchItem(item_rows[i]);
      if (first > begin && lanes < L) std::fill(block.data(), block.data() + block.size(), 0.0f);
      if (need_match) std::fill(match, match + kNumTasks * L, 0.0f);
      for (int i = 0; i < lanes; ++i) {
        const uint32_t row = item_rows[first + i];
        GatherItem(row, i, &rows, v.data(), block.data(),
                   features.empty() ? nullptr : features[first + i]);
        if (need_match)
          LaneMatch(side, row, rows.data() + 1, rows.size() - 1, m_.RecentPopularityOfRow(row), i,
                    match, own);
      }
      m_.shape.ScoreBlock(m_.dense.data(), side.ctx, block.data(), scratch.data(), y);
      ImplicitScores(side, block.data(), need_match ? match : nullptr, own, y);
      for (int i = 0; i < lanes; ++i) (*out)[first + i] = FinishLane(y, i, side, block.data());
    }
  };
  // Only large batches in parallel: with the lookups and gathers prefetched,
  // a thousand items take a fraction of a millisecond on one thread, less
  // than waking workers costs. Results do not depend on the split.
  constexpr size_t kParallelItems = 4096, kGrain = 1024;
  if (n < kParallelItems) return score(0, n);
  tbb::parallel_for(
      tbb::blocked_range<size_t>(0, (n + kGrain - 1) / kGrain, 1),
      [&](const tbb::blocked_range<size_t>& r) {
        score(r.begin() * kGrain, std::min(n, r.end() * kGrain));
      },
      tbb::simple_partitioner());
}

void Scorer::TopKOfBlocks(const UserSide& side, const float* blocks, size_t begin, size_t end,
                          uint32_t first_row, uint32_t end_row, const uint32_t* feat_begin,
                          const uint32_t* feat_rows, const float* popularity, int k,
                          const std::vector<uint32_t>& excluded, const Blend& blend,
                          std::vector<ScoredItem>* out) const {
  const size_t stride = m_.shape.block_floats();
  const int d = m_.options.dim;
  AlignedFloats scratch(m_.shape.score_scratch_floats());
  alignas(64) float y[kNumTasks * L];
  alignas(64) float approx[L];
  ScreenParams sp;
  for (int t = 0; t < kNumTasks; ++t) sp.ub[t] = side.bias[t];
  sp.wc = blend.click, sp.wp = blend.purchase, sp.wr = blend.rating;
  sp.rmin = m_.options.rating_min, sp.rmax = m_.options.rating_max;
  sp.rmid = 0.5f * (m_.options.rating_min + m_.options.rating_max);
  sp.inv_range = 1.0f / (m_.options.rating_max - m_.options.rating_min);
  sp.esmm = m_.options.esmm;
  const float margin_base = kScreenError * (std::abs(blend.click) + 2 * std::abs(blend.purchase) +
                                            std::abs(blend.rating));
  // Min-heap of the best k by Better: top() is the worst kept.
  std::vector<ScoredItem> heap;
  heap.reserve(size_t(k) + 1);
  const auto better = [this](const ScoredItem& a, const ScoredItem& b) { return Better(a, b); };
  float match[kNumTasks * L];
  bool own[L] = {};
  const bool need_match = NeedsMatch(side);
  for (size_t b = begin; b < end; ++b) {
    const float* block = blocks + b * stride;
    m_.shape.ScoreBlock(m_.dense.data(), side.ctx, block, scratch.data(), y);
    if (need_match) {
      std::fill(match, match + kNumTasks * L, 0.0f);
      std::fill(own, own + L, false);
      for (int i = 0; i < L; ++i) {
        const uint32_t row = first_row + uint32_t(b * L) + uint32_t(i);
        if (row >= end_row) break;
        const uint32_t at = row - first_row;
        LaneMatch(side, row, feat_rows + feat_begin[at], feat_begin[at + 1] - feat_begin[at],
                  popularity[at], i, match, own);
      }
    }
    ImplicitScores(side, block, need_match ? match : nullptr, own, y);
    ScreenBlock(y, block + size_t(d) * L, sp, approx);
    const bool full = int(heap.size()) >= k;
    const float bar =
        full ? heap.front().score - margin_base - 1e-6f * std::abs(heap.front().score) : -INFINITY;
    for (int i = 0; i < L; ++i) {
      const uint32_t row = first_row + uint32_t(b * L) + uint32_t(i);
      if (row >= end_row) break;
      if (full && !(approx[i] > bar)) continue;
      if (!excluded.empty() && std::binary_search(excluded.begin(), excluded.end(), row)) continue;
      ScoredItem c;
      c.prediction = FinishLane(y, i, side, block);
      c.score = BlendScore(c.prediction, blend, m_.options.rating_min, m_.options.rating_max);
      c.row = row;
      if (int(heap.size()) < k) {
        heap.push_back(c);
        std::push_heap(heap.begin(), heap.end(), better);
      } else if (Better(c, heap.front())) {
        std::pop_heap(heap.begin(), heap.end(), better);
        heap.back() = c;
        std::push_heap(heap.begin(), heap.end(), better);
      }
    }
  }
  std::sort_heap(heap.begin(), heap.end(), better);
  *out = std::move(heap);
}

// ---- The item panel and its cache ----

struct Scorer::ItemPanel {
  uint32_t items = 0;  // item rows [0, items), in ceil(items / L) blocks
  uint64_t signature = 0;
  double build_seconds = 0;
  // Now() when the panel was last known to match the model.
  mutable std::atomic<double> current_at{0};
  AlignedFloats data;
  // Each item's feature rows (for the history match): item r's are
  // feat_rows[feat_begin[r] .. feat_begin[r + 1]).
  std::vector<uint32_t> feat_begin, feat_rows;
  std::vector<float> popularity;  // Model::RecentPopularity of each item at the build
};

class Scorer::RecommendCache {
 public:
  explicit RecommendCache(const Scorer& scorer) : scorer_(scorer), m_(scorer.m_) {}
  ~RecommendCache() {
    stopping_.store(true);
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // The panel to score from (never null), built or rebuilt first when it
  // is missing or too stale (see the constants at the top).
  std::shared_ptr<const ItemPanel> Get() {
    const double entry = Now();
    std::shared_ptr<const ItemPanel> p;
    {
      std::lock_guard lock(mu_);
      p = panel_;
      last_used_ = entry;
      if (!thread_.joinable() && !stop_) thread_ = std::thread([this] { Loop(); });
    }
    if (p && Usable(*p, entry)) return p;
    std::lock_guard build(build_mu_);
    {
      std::lock_guard lock(mu_);
      p = panel_;
    }
    // Built by another caller or the refresher while this one waited.
    if (p && (p->current_at.load() >= entry || Usable(*p, Now()))) return p;
    std::shared_ptr<ItemPanel> fresh = Build(/*parallel=*/true);
    Publish(fresh);
    return fresh;
  }

 private:
  // Changes whenever training, a snapshot or an import may have changed an
  // item vector (every trained event counts in `learned` or `refused`, every
  // applied snapshot in `applied`).
  uint64_t Signature() const {
    uint64_t s = m_.items.size();
    s = s * 1000003u + m_.applied.load(std::memory_order_relaxed);
    s = s * 1000003u + m_.item_features.size();
    for (const auto& l : m_.learned) s = s * 1000003u + l.load(std::memory_order_relaxed);
    s = s * 1000003u + m_.refused.load(std::memory_order_relaxed);
    if (m_.pretrained) s = s * 1000003u + m_.pretrained->size();
    return s;
  }

  bool Usable(const ItemPanel& p, double now) const {
    if (Signature() == p.signature) {
      p.current_at.store(now);
      return true;
    }
    if (p.items <= kSyncItems || p.build_seconds < kSyncBuildSeconds) return false;
    // Twice the refresher's period: a request rebuilds only when the
    // refresher has fallen behind (or was idle).
    return now - p.current_at.load() <= std::max(kMaxStaleSeconds, 20 * p.build_seconds);
  }

  // Null when the cache is being destroyed.
  std::shared_ptr<ItemPanel> Build(bool parallel) const {
    auto p = std::make_shared<ItemPanel>();
    const double start = Now();
    p->signature = Signature();  // before reading any row
    p->items = m_.items.size();
    const size_t blocks = (size_t(p->items) + L - 1) / L, stride = m_.shape.block_floats();
    p->data.Resize(blocks * stride);
    std::atomic<bool> aborted{false};
    auto gather = [&](size_t begin, size_t end) {
      std::vector<uint32_t> rows;
      std::vector<float> v(m_.width);
      for (size_t b = begin; b < end; ++b) {
        if (stopping_.load(std::memory_order_relaxed)) {
          aborted.store(true);
          return;
        }
        float* block = p->data.data() + b * stride;
        for (int i = 0; i < L && b * L + i < p->items; ++i)
          scorer_.GatherItem(uint32_t(b * L + i), i, &rows, v.data(), block);
      }
    };
    if (parallel && blocks >= kParallelBlocks) {
      tbb::parallel_for(tbb::blocked_range<size_t>(0, blocks, 256),
                        [&](const tbb::blocked_range<size_t>& r) { gather(r.begin(), r.end()); });
    } else {
      gather(0, blocks);
    }
    if (aborted.load()) return nullptr;
    // The feature lists, in one pass (GatherItem read them too, per block).
    p->feat_begin.reserve(size_t(p->items) + 1);
    p->feat_begin.push_back(0);
    p->popularity.resize(p->items);
    for (uint32_t r = 0; r < p->items; ++r) {
      m_.item_lists.Get(r, &p->feat_rows);
      p->feat_begin.push_back(uint32_t(p->feat_rows.size()));
      p->popularity[r] = m_.RecentPopularityOfRow(r);
    }
    p->build_seconds = Now() - start;
    p->current_at.store(start);
    return p;
  }

  void Publish(std::shared_ptr<ItemPanel> p) {
    if (!p) return;
    std::lock_guard lock(mu_);
    panel_ = std::move(p);
  }

  // The refresher thread.
  void Loop() {
    std::unique_lock lock(mu_);
    double period = kRefreshSeconds;
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::duration<double>(period));
      if (stop_) break;
      if (Now() - last_used_ > kIdleSeconds) continue;
      std::shared_ptr<const ItemPanel> p = panel_;
      lock.unlock();
      if (!p || Signature() != p->signature) {
        std::shared_ptr<ItemPanel> fresh;
        {
          std::lock_guard build(build_mu_);
          fresh = Build(/*parallel=*/false);
        }
        if (fresh) period = std::max(kRefreshSeconds, 10 * fresh->build_seconds);
        Publish(std::move(fresh));
      } else {
        p->current_at.store(Now());
      }
      lock.lock();
    }
  }

  const Scorer& scorer_;
  const Model& m_;
  std::atomic<bool> stopping_{false};
  std::mutex build_mu_;  // one build at a time
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<const ItemPanel> panel_;  // guarded by mu_
  double last_used_ = 0;                    // guarded by mu_
  bool stop_ = false;                       // guarded by mu_
  std::thread thread_;                      // started by the first Get; guarded by mu_
};

Scorer::Scorer(const Model* model)
    : m_(*model), recommend_cache_(std::make_unique<RecommendCache>(*this)) {}

Scorer::~Scorer() = default;

// ---- The public calls ----

Blend Scorer::Effective(const Blend& blend) const {
  // A task that has learned nothing predicts from an untrained head: it
  // does not count (unless no task has learned anything yet).
  Blend b = blend;
  const bool none =
      m_.learned[0].load() == 0 && m_.learned[1].load() == 0 && m_.learned[2].load() == 0;
  if (none) return b;
  if (m_.learned[int(Task::kClick)].load() == 0) b.click = 0.0f;
  if (m_.learned[int(Task::kPurchase)].load() == 0) b.purchase = 0.0f;
  if (m_.learned[int(Task::kRating)].load() == 0) b.rating = 0.0f;
  return b;
}

ScoreResult Scorer::Score(std::string_view user, std::string_view item, const Blend& given,
                          const std::vector<std::string>* user_features,
                          const std::vector<std::string>* item_features) const {
  const Blend blend = Effective(given);
  ScoreResult r;
  UserSide side(m_.shape);
  PrepareUserSide(user, &side, user_features);
  uint32_t ir = m_.items.Find(item);
  r.user_known = side.row != EmbeddingTable::kNoRow;
  r.item_known = ir != EmbeddingTable::kNoRow;
  std::vector<Prediction> p;
  const std::vector<std::string>* const per_item[1] = {item_features};
  ScoreRows(side, {ir}, &p,
            item_features ? std::span<const std::vector<std::string>* const>(per_item)
                          : std::span<const std::vector<std::string>* const>());
  r.prediction = p[0];
  r.score = BlendScore(p[0], blend, m_.options.rating_min, m_.options.rating_max);
  return r;
}

void Scorer::ScoreMany(std::string_view user, std::span<const std::string> items,
                       const Blend& given, std::vector<ScoreResult>* out,
                       const std::vector<std::string>* user_features,
                       std::span<const std::vector<std::string>* const> item_features) const {
  const Blend blend = Effective(given);
  UserSide side(m_.shape);
  PrepareUserSide(user, &side, user_features);
  std::vector<uint32_t> rows;
  FindItems(items, &rows);
  const bool user_known = side.row != EmbeddingTable::kNoRow;
  std::vector<Prediction> p;
  ScoreRows(side, rows, &p,
            item_features.size() == items.size() ? item_features : decltype(item_features)());
  out->resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    ScoreResult& r = (*out)[i];
    r.prediction = p[i];
    r.score = BlendScore(p[i], blend, m_.options.rating_min, m_.options.rating_max);
    r.user_known = user_known;
    r.item_known = rows[i] != EmbeddingTable::kNoRow;
  }
}

std::vector<Recommendation> Scorer::Recommend(std::string_view user, int k, bool exclude_purchased,
                                              const Blend& given) const {
  const Blend blend = Effective(given);
  std::vector<Recommendation> result;
  if (k <= 0) return result;
  UserSide side(m_.shape);
  PrepareUserSide(user, &side);
  std::vector<uint32_t> excluded;
  if (exclude_purchased && side.row != EmbeddingTable::kNoRow) {
    std::shared_lock lock(m_.purchases_mu);
    auto it = m_.purchases.find(side.row);
    if (it != m_.purchases.end()) excluded.assign(it->second.begin(), it->second.end());
  }
  // The prior item row is no item to recommend, nor is a removed one
  // (expiry; its row waits to be reused).
  if (m_.Prior(1) != EmbeddingTable::kNoRow) excluded.push_back(m_.Prior(1));
  if (m_.items.live_size() < m_.items.size()) {
    const uint32_t n = m_.items.size();
    for (uint32_t r = 0; r < n; ++r)
      if (!m_.items.IsLive(r)) excluded.push_back(r);
  }
  std::sort(excluded.begin(), excluded.end());

  std::shared_ptr<const ItemPanel> panel = recommend_cache_->Get();
  const size_t stride = m_.shape.block_floats();
  const size_t blocks = (size_t(panel->items) + L - 1) / L;
  // Items created since the panel was built: gathered now.
  const uint32_t n = m_.items.size();
  AlignedFloats tail;
  size_t tail_blocks = 0;
  std::vector<uint32_t> tail_begin = {0}, tail_feats;
  std::vector<float> tail_popularity;
  if (n > panel->items) {
    tail_blocks = (size_t(n - panel->items) + L - 1) / L;
    tail.Resize(tail_blocks * stride);
    std::vector<uint32_t> rows;
    std::vector<float> v(m_.width);
    for (uint32_t r = panel->items; r < n; ++r) {
      const uint32_t i = r - panel->items;
      GatherItem(r, int(i % L), &rows, v.data(), tail.data() + (i / L) * stride);
      tail_feats.insert(tail_feats.end(), rows.begin() + 1, rows.end());
      tail_begin.push_back(uint32_t(tail_feats.size()));
      tail_popularity.push_back(m_.RecentPopularityOfRow(r));
    }
  }

  const int parts = blocks >= kParallelBlocks ? kParallelParts : 1;
  std::vector<std::vector<ScoredItem>> best(parts + 1);
  auto scan = [&](int part) {
    const size_t begin = blocks * part / parts, end = blocks * (part + 1) / parts;
    TopKOfBlocks(side, panel->data.data(), begin, end, 0, panel->items, panel->feat_begin.data(),
                 panel->feat_rows.data(), panel->popularity.data(), k, excluded, blend,
                 &best[part]);
  };
  if (parts > 1) {
    tbb::parallel_for(
        tbb::blocked_range<int>(0, parts, 1),
        [&](const tbb::blocked_range<int>& r) {
          for (int part = r.begin(); part < r.end(); ++part) scan(part);
        },
        tbb::simple_partitioner());
  } else {
    scan(0);
  }
  if (tail_blocks > 0)
    TopKOfBlocks(side, tail.data(), 0, tail_blocks, panel->items, n, tail_begin.data(),
                 tail_feats.data(), tail_popularity.data(), k, excluded, blend, &best[parts]);

  std::vector<ScoredItem> all;
  for (auto& b : best) all.insert(all.end(), b.begin(), b.end());
  const auto better = [this](const ScoredItem& a, const ScoredItem& b) { return Better(a, b); };
  std::sort(all.begin(), all.end(), better);
  if (all.size() > size_t(k)) all.resize(size_t(k));
  result.reserve(all.size());
  for (const auto& c : all)
    result.push_back(Recommendation{m_.items.key(c.row), c.prediction, c.score});
  return result;
}

}  // namespace recstream::learner
