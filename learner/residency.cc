#include "learner/residency.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "learner/model.h"
#include "learner/row_source.h"

namespace recstream::learner {
namespace {

uint64_t Hash64(std::string_view id) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a, then a finaliser
  for (unsigned char c : id) h = (h ^ c) * 0x100000001b3ULL;
  h = (h ^ (h >> 33)) * 0xff51afd7ed558ccdULL;
  h = (h ^ (h >> 33)) * 0xc4ceb9fe1a85ec53ULL;
  return h ^ (h >> 33);
}

}  // namespace

Residency::Residency(Model* model)
    : m_(*model), limit_bytes_(uint64_t(model->options.memory_limit_mb) << 20) {
  // The filter takes 1/32 of the limit (at least 128 KiB): about 9 bits for
  // each of 9 times as many users as fit in memory, about 1% false
  // positives until that many have left.
  int bits = 20;
  while (bits < 36 && (uint64_t(1) << (bits + 1)) / 8 <= limit_bytes_ / 32) ++bits;
  filter_bits_ = bits;
  const size_t words = size_t(1) << (bits - 6);
  filter_.reset(new std::atomic<uint64_t>[words]);
  for (size_t i = 0; i < words; ++i) filter_[i].store(0, std::memory_order_relaxed);
  m_.users.TrackTouches();
  m_.users.TrackEpochs();
  // Rows changed before the first snapshot are in snapshot 1.
  m_.users.SetEpoch(1);
}

Residency::~Residency() = default;

bool Residency::MayHaveLeft(std::string_view id) const {
  const uint64_t h = Hash64(id);
  const uint64_t mask = (uint64_t(1) << filter_bits_) - 1;
  uint64_t a = h, b = (h >> 32) | 1;
  for (int i = 0; i < kProbes; ++i, a += b) {
    const uint64_t bit = a & mask;
    if (!(filter_[bit >> 6].load(std::memory_order_relaxed) & (uint64_t(1) << (bit & 63))))
      return false;
  }
  return true;
}

void Residency::NoteLeft(std::string_view id) {
  const uint64_t h = Hash64(id);
  const uint64_t mask = (uint64_t(1) << filter_bits_) - 1;
  uint64_t a = h, b = (h >> 32) | 1;
  for (int i = 0; i < kProbes; ++i, a += b) {
    const uint64_t bit = a & mask;
    filter_[bit >> 6].fetch_or(uint64_t(1) << (bit & 63), std::memory_order_relaxed);
  }
}

uint64_t Residency::BytesPerUser() const {
  const int h = m_.options.history;
  return m_.users.bytes_per_row() + 4 /* epoch */ + 5 /* list */ +
         (h > 0 ? uint64_t(1 + h) * 4 + 1 : 0);
}

uint64_t Residency::SharedBytes() const {
  uint64_t b = 0;
  b += uint64_t(m_.items.size()) * (m_.items.bytes_per_row() + 5);
  b += uint64_t(m_.user_features.size()) * m_.user_features.bytes_per_row();
  b += uint64_t(m_.item_features.size()) * m_.item_features.bytes_per_row();
  if (m_.pretrained) b += uint64_t(m_.pretrained->size()) * m_.pretrained->bytes_per_row();
  b += (m_.dense.size() + m_.dense_accum.size() + m_.dense_m.size()) * sizeof(float);
  b += m_.recent.size() * 8 + m_.recent_count.size() * 4 + m_.history_match.size() * 4;
  if (m_.admission) b += uint64_t(AdmissionSketch::kDepth) * AdmissionSketch::kWidth;
  b += (uint64_t(1) << filter_bits_) / 8;
  return b;
}

uint64_t Residency::user_budget() const {
  const uint64_t shared = SharedBytes();
  const uint64_t room = limit_bytes_ > shared ? (limit_bytes_ - shared) / BytesPerUser() : 0;
  return std::max(kMinUsers, room);
}

uint64_t Residency::model_bytes() const {
  return SharedBytes() + uint64_t(m_.users.size()) * BytesPerUser();
}

uint32_t Residency::Now() const {
  return m_.options.expire_user_s > 0 ? uint32_t(m_.event_time_s.load(std::memory_order_relaxed))
                                      : clock();
}

void Residency::Stored(uint64_t number) {
  uint64_t s = stored_.load(std::memory_order_relaxed);
  while (s < number && !stored_.compare_exchange_weak(s, number, std::memory_order_acq_rel)) {
  }
}

bool Residency::KeepRestored(std::string_view id) {
  // Counted here, not by the table: blocks are restored on several
  // threads, each a block at a time.
  if (restored_.fetch_add(1, std::memory_order_relaxed) < user_budget()) return true;
  restored_.fetch_sub(1, std::memory_order_relaxed);
  NoteLeft(id);
  return false;
}

void Residency::Prepare(std::span<const Event> events) {
  clock_.fetch_add(1, std::memory_order_relaxed);
  if (!has_source()) return;
  ids_.clear();
  {
    // A score reading a user back holds mu_ until the user is whole: a
    // user found here has its list and history.
    std::lock_guard lock(mu_);
    for (const Event& e : events)
      if (m_.users.Find(e.user) == EmbeddingTable::kNoRow && MayHaveLeft(e.user))
        ids_.push_back(e.user);
  }
  if (ids_.empty()) return;
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
  // Nothing leaves memory before this call's Evict (the same thread), so
  // what is read is what the store holds.
  ReadBack(ids_);
}

size_t Residency::ReadBack(std::span<const std::string_view> ids) {
  const RowSource* source = source_.load(std::memory_order_acquire);
  ModelSnapshot part;
  store_reads_.fetch_add(1, std::memory_order_relaxed);
  if (Status s = source->ReadUsers(ids, &part); !s.ok()) {
    read_errors_.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  std::lock_guard lock(mu_);
  return Apply(part);
}

uint32_t Residency::FindUser(std::string_view id) {
  uint32_t row = m_.users.Find(id);
  if (row != EmbeddingTable::kNoRow) {
    // A request is a use too (LRU); with expiry, touch times are event
    // times and only events move them.
    if (m_.options.expire_user_s <= 0) m_.users.Touch(row, clock());
    return row;
  }
  if (!has_source() || !MayHaveLeft(id)) return row;
  const std::string_view ids[] = {id};
  // A user read back, trained, stored and let go again while this read
  // was under way would come back as the older stored state: the read is
  // applied only when no user left memory meanwhile, else made again
  // (under mu_ the last time, which evictions then wait for).
  for (int attempt = 0; attempt < 3; ++attempt) {
    const uint64_t before = evicted_.load(std::memory_order_acquire);
    const RowSource* source = source_.load(std::memory_order_acquire);
    ModelSnapshot part;
    store_reads_.fetch_add(1, std::memory_order_relaxed);
    const bool last = attempt == 2;
    std::unique_lock lock(mu_, std::defer_lock);
    if (last) lock.lock();
    if (Status s = source->ReadUsers(ids, &part); !s.ok()) {
      read_errors_.fetch_add(1, std::memory_order_relaxed);
      return EmbeddingTable::kNoRow;
    }
    if (!last) lock.lock();
    if (!last && evicted_.load(std::memory_order_acquire) != before) continue;
    Apply(part);
    return m_.users.Find(id);
  }
  return EmbeddingTable::kNoRow;
}

size_t Residency::Apply(const ModelSnapshot& part) {
  std::unordered_map<std::string_view, uint32_t> created;
  const uint32_t now = Now();
  for (const TableDelta& t : part.tables) {
    if (t.table != "user" || t.width != int(m_.users.row_floats()) ||
        t.values.size() != t.keys.size() * size_t(t.width))
      continue;
    for (size_t i = 0; i < t.keys.size(); ++i) {
      bool fresh = false;
      const uint32_t row = m_.users.Restore(t.keys[i], t.values.data() + i * size_t(t.width), &fresh);
      if (!fresh) continue;  // in memory already (read back by another caller)
      m_.users.Touch(row, now);
      created.emplace(t.keys[i], row);
    }
  }
  if (created.empty()) return 0;
  std::vector<uint32_t> rows;
  for (const FeatureListDelta& l : part.feature_lists) {
    const bool history = l.table == "user_history";
    if (!history && l.table != "user") continue;
    for (size_t i = 0; i < l.keys.size() && i < l.features.size(); ++i) {
      const auto it = created.find(l.keys[i]);
      if (it == created.end()) continue;
      rows.clear();
      for (const std::string& f : l.features[i]) {
        // Items and features removed (expiry) while the user was away are
        // left out; the list is then stored again without them.
        const uint32_t r = history ? m_.items.Find(f) : m_.user_features.Find(f);
        if (r != EmbeddingTable::kNoRow) rows.push_back(r);
      }
      const bool whole = rows.size() == l.features[i].size();
      if (history) {
        m_.histories.Set(it->second, rows.data(), rows.data() + rows.size());
        if (whole) m_.histories.MarkClean(it->second);
      } else {
        m_.user_lists.Set(it->second, rows.data(), rows.data() + rows.size());
        if (whole) m_.user_lists.MarkClean(it->second);
      }
    }
  }
  if (!part.new_purchases.empty()) {
    std::unique_lock lock(m_.purchases_mu);
    for (const auto& [user, item] : part.new_purchases) {
      const auto it = created.find(user);
      if (it == created.end()) continue;
      const uint32_t r = m_.items.Find(item);
      if (r != EmbeddingTable::kNoRow) m_.purchases[it->second].insert(r);
    }
  }
  reloaded_.fetch_add(created.size(), std::memory_order_relaxed);
  return created.size();
}

void Residency::Evict() {
  // Rows let go by the previous call are reused from here (a score that
  // found one a moment before has had a whole Train call to finish).
  m_.ReclaimRetired();
  const uint32_t prior = m_.Prior(0);
  const uint64_t live = m_.users.live_size() - (prior != EmbeddingTable::kNoRow ? 1 : 0);
  const uint64_t budget = user_budget();
  if (live <= budget || !has_source() || m_.exporting.load(std::memory_order_acquire)) {
    if (live <= budget) wants_checkpoint_.store(false, std::memory_order_relaxed);
    return;
  }
  const uint64_t over = live - budget;
  const uint32_t n = m_.users.size();
  // The cutoff: the touch time below which about `over` of the live users
  // lie, from a sample of touch times (touch 0: restored, not used since).
  std::vector<uint32_t> sample;
  for (int i = 0; i < 256 && sample.size() < 64; ++i) {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    const uint32_t row = uint32_t(rng_ % n);
    if (row != prior && m_.users.IsLive(row)) sample.push_back(m_.users.touched(row));
  }
  if (sample.empty()) return;
  std::sort(sample.begin(), sample.end());
  const double share = std::min(1.0, double(over) / double(live));
  const uint32_t cutoff =
      sample[std::min(sample.size() - 1, size_t(std::ceil(share * double(sample.size()))))];
  const uint64_t stored = stored_.load(std::memory_order_acquire);
  // Users with a purchase not stored yet stay.
  std::unordered_set<uint32_t> buying;
  {
    std::shared_lock lock(m_.purchases_mu);
    for (const auto& p : m_.new_purchases) buying.insert(p.first);
  }
  std::lock_guard lock(mu_);
  const size_t scan = std::min<size_t>(n, std::max<size_t>(4096, 8 * over));
  uint64_t let_go = 0, changed = 0;
  for (size_t k = 0; k < scan && let_go < over; ++k) {
    if (cursor_ >= n) cursor_ = 0;
    const uint32_t row = cursor_++;
    if (row == prior || !m_.users.IsLive(row) || m_.users.touched(row) > cutoff) continue;
    if (!m_.users.IsClean(row) || m_.users.dirtied(row) > stored || m_.user_lists.IsDirty(row) ||
        m_.histories.IsDirty(row) || buying.count(row)) {
      ++changed;
      continue;
    }
    NoteLeft(m_.users.key(row));
    m_.RemoveRow(m_.users, row, false);
    ++let_go;
  }
  evicted_.fetch_add(let_go, std::memory_order_release);
  // Over by more than an eighth with the users to let go all changed
  // since the last stored checkpoint: ask for one.
  const bool want = let_go < over && changed > 0 && over > budget / 8;
  if (want && !wants_checkpoint_.load(std::memory_order_relaxed))
    checkpoints_wanted_.fetch_add(1, std::memory_order_relaxed);
  wants_checkpoint_.store(want, std::memory_order_relaxed);
}

}  // namespace recstream::learner
