#include "learner/residency.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
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

// Calls probe(word, bit) for each of the filter's six bits of `id` (a
// filter of 2^bits bits, as 64-bit words) while it returns true; returns
// whether every call did.
template <typename Probe>
bool ForEachProbe(int bits, std::string_view id, Probe&& probe) {
  const uint64_t h = Hash64(id);
  const uint64_t mask = (uint64_t(1) << bits) - 1;
  uint64_t a = h;
  const uint64_t b = (h >> 32) | 1;  // double hashing
  for (int i = 0; i < 6; ++i, a += b) {
    const uint64_t bit = a & mask;
    if (!probe(size_t(bit >> 6), uint64_t(1) << (bit & 63))) return false;
  }
  return true;
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
  buyer_bits_ = bits - 2;
  // With expiry, two filters of half the bits: each holds only the users
  // the store holds out of memory.
  if (model->options.expire_user_s > 0) --filter_bits_;
  auto make = [](int b) {
    const size_t words = size_t(1) << (b - 6);
    std::unique_ptr<std::atomic<uint64_t>[]> f(new std::atomic<uint64_t>[words]);
    for (size_t i = 0; i < words; ++i) f[i].store(0, std::memory_order_relaxed);
    return f;
  };
  filters_[0] = make(filter_bits_);
  if (model->options.expire_user_s > 0) filters_[1] = make(filter_bits_);
  buyers_ = make(buyer_bits_);
  m_.users.TrackTouches();
  m_.users.TrackEpochs();
  // Rows changed before the first snapshot are in snapshot 1.
  m_.users.SetEpoch(1);
}

Residency::~Residency() = default;

void Residency::SetSource(const RowSource* source) {
  source_.store(source, std::memory_order_release);
  if (source == nullptr) return;
  std::string after;
  std::vector<RowSource::LeftUser> page;
  for (;;) {
    constexpr size_t kPage = 65536;
    if (Status s = source->ScanLeft(after, kPage, &page); !s.ok()) {
      read_errors_.fetch_add(1, std::memory_order_relaxed);
      break;
    }
    for (const RowSource::LeftUser& u : page) {
      if (u.touched == RowSource::LeftUser::kBackInMemory) continue;
      NoteLeft(u.id);
      // With expiry the filter is built again from the store's entries:
      // KeepRestored must not take a false positive of it for one.
      if (filters_[1]) restore_left_.push_back(Hash64(u.id));
    }
    if (page.size() < kPage) break;
    after = page.back().id;
  }
  std::sort(restore_left_.begin(), restore_left_.end());
}

bool Residency::MayHaveLeft(std::string_view id) const {
  for (;;) {
    const uint64_t e = epoch_.load(std::memory_order_acquire);
    const bool may = MayHold(filters_[e & 1], filter_bits_, id);
    // A filter swapped out meanwhile may be cleared for the next pass: its
    // answer counts only if the epoch did not move while it was read.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (epoch_.load(std::memory_order_relaxed) == e) return may;
  }
}

void Residency::NoteLeft(std::string_view id) {
  const uint64_t e = epoch_.load(std::memory_order_acquire);
  Note(filters_[e & 1], filter_bits_, id);
  if (rebuilding_.load(std::memory_order_acquire)) Note(filters_[1 - (e & 1)], filter_bits_, id);
}

bool Residency::MayHold(const std::unique_ptr<std::atomic<uint64_t>[]>& filter, int bits,
                        std::string_view id) {
  return ForEachProbe(bits, id, [&](size_t word, uint64_t bit) {
    return (filter[word].load(std::memory_order_relaxed) & bit) != 0;
  });
}

void Residency::Note(const std::unique_ptr<std::atomic<uint64_t>[]>& filter, int bits,
                     std::string_view id) {
  ForEachProbe(bits, id, [&](size_t word, uint64_t bit) {
    filter[word].fetch_or(bit, std::memory_order_relaxed);
    return true;
  });
}

uint64_t BytesPerUser(const Model& m) {
  const int h = m.options.history;
  return m.users.bytes_per_row() + (m.residency ? 4 /* epoch */ : 0) + 5 /* list */ +
         (h > 0 ? uint64_t(1 + h) * 4 + 1 : 0);
}

uint64_t SharedBytes(const Model& m) {
  uint64_t b = 0;
  b += uint64_t(m.items.size()) * (m.items.bytes_per_row() + 5);
  b += uint64_t(m.user_features.size()) * m.user_features.bytes_per_row();
  b += uint64_t(m.item_features.size()) * m.item_features.bytes_per_row();
  if (m.pretrained) b += uint64_t(m.pretrained->size()) * m.pretrained->bytes_per_row();
  b += (m.dense.size() + m.dense_accum.size() + m.dense_m.size()) * sizeof(float);
  b += m.recent.size() * 8 + m.ring_dirty.size() +
       (m.recent_count.size() + m.quarter_count.size() + m.long_count.size()) * 4 +
       m.history_match.size() * 4;
  if (m.admission) b += uint64_t(AdmissionSketch::kDepth) * AdmissionSketch::kWidth;
  if (m.residency) b += m.residency->filter_bytes();
  return b;
}

uint64_t ModelBytes(const Model& m) {
  return SharedBytes(m) + uint64_t(m.users.size()) * BytesPerUser(m);
}

uint64_t Residency::user_budget() const {
  const uint64_t shared = SharedBytes(m_);
  const uint64_t room = limit_bytes_ > shared ? (limit_bytes_ - shared) / BytesPerUser(m_) : 0;
  // Four fifths: users may exceed the budget by a quarter while they wait
  // for a checkpoint (OverLimit), so that the room holds them then too.
  return std::max(kMinUsers, room - room / 5);
}

uint32_t Residency::Now() const {
  return m_.options.expire_user_s > 0 ? uint32_t(m_.event_time_s.load(std::memory_order_relaxed))
                                      : clock();
}

void Residency::Stored(uint64_t number) {
  uint64_t s = stored_.load(std::memory_order_relaxed);
  while (s < number && !stored_.compare_exchange_weak(s, number, std::memory_order_acq_rel)) {
  }
  {
    std::lock_guard lock(left_mu_);
    exported_.erase(number);
  }
  std::lock_guard lock(mu_);
  std::erase_if(expiring_, [&](const auto& e) { return e.second <= number; });
}

void Residency::ExportLeft(ModelSnapshot* out) {
  std::vector<std::pair<std::string, uint32_t>> left;
  {
    std::lock_guard lock(left_mu_);
    left.swap(left_);
  }
  if (left.empty()) return;
  if (filters_[1]) {
    // Until this snapshot is stored, a pass cannot find these in the store.
    std::lock_guard lock(left_mu_);
    auto& ids = exported_[begun_.load(std::memory_order_acquire)];
    for (const auto& [id, touched] : left) ids.push_back(id);
  }
  FeatureListDelta d;
  d.table = std::string(kUserLeftLists);
  d.keys.reserve(left.size());
  d.features.reserve(left.size());
  for (auto& [id, touched] : left) {
    d.keys.push_back(std::move(id));
    d.features.push_back({std::to_string(touched)});
  }
  out->feature_lists.push_back(std::move(d));
}

void Residency::ExpireLeft(bool idle) {
  const int64_t now = m_.event_time_s.load(std::memory_order_relaxed);
  if (now <= 0) return;
  {
    // Users found past their time when read back (Apply).
    std::lock_guard lock(mu_);
    if (!returned_expired_.empty()) {
      const uint64_t carrier = begun_.load(std::memory_order_acquire) + 1;
      std::vector<std::string>& deleted = m_.deleted_ids["user"];
      for (std::string& id : returned_expired_) {
        expiring_.emplace(id, carrier);
        deleted.push_back(std::move(id));
      }
      m_.expired[0].fetch_add(returned_expired_.size(), std::memory_order_relaxed);
      returned_expired_.clear();
      for (auto& p : returned_expired_purchases_) m_.deleted_purchases.push_back(std::move(p));
      returned_expired_purchases_.clear();
    }
  }
  // The pace, in event time: a pass over the store's entries takes about
  // kPassShare of the expiry time, so that a user past its time is
  // recorded deleted about that much late at most, and what expiry reads
  // follows the entries and the event time, not the number or the size of
  // Train calls. A pass's length is estimated from above as the entries
  // the last one found plus the users let go since it began (their entries
  // may lie behind its cursor). Once a pass is under way, each call reads
  // at least kMinSlice entries, and as many as the users the previous call
  // let go, so that a wrong estimate cannot stall it; a new pass begins
  // only when the pace or users let go ask for one (beginning one costs a
  // filter to clear). At most kMaxSlice, so that a jump in event time
  // cannot stall training. The first pass after a start is not paced, and
  // any pass while the learner is idle reads at least kIdleSlice entries
  // per call (the first also twice the users the previous call let go).
  constexpr double kPassShare = 0.5;
  constexpr size_t kIdleSlice = 1024, kMinSlice = 64, kMaxSlice = 65536;
  size_t slice_size = std::max<size_t>(kIdleSlice, 2 * last_let_go_);
  if (pass_length_ > 0) {
    const double length = double(pass_length_ + left_since_pass_);
    const double period = std::max(1.0, kPassShare * double(m_.options.expire_user_s));
    if (now > scanned_at_)
      scan_credit_ = std::min(length, scan_credit_ + length * double(now - scanned_at_) / period);
    scanned_at_ = std::max(scanned_at_, now);
    if (idle) {
      // A pass that began at this event time found every user due by now:
      // until event time moves, another would find nothing new.
      if (left_cursor_.empty() && pass_began_at_ >= now) return;
      slice_size = std::max<size_t>(kIdleSlice, size_t(scan_credit_));
    } else {
      if (left_cursor_.empty() && scan_credit_ < 1.0 && last_let_go_ == 0) return;
      slice_size = std::max<size_t>({kMinSlice, size_t(last_let_go_), size_t(scan_credit_)});
    }
    slice_size = std::min(slice_size, kMaxSlice);
  }
  std::vector<RowSource::LeftUser> slice;
  const RowSource* source = source_.load(std::memory_order_acquire);
  if (left_cursor_.empty() && !rebuilding_.load(std::memory_order_relaxed)) {
    // A pass begins: the filter it builds starts empty, with the users
    // whose entries the store does not hold yet (waiting in left_, or in
    // snapshots not stored); the pass adds those it finds, and NoteLeft
    // those that leave memory meanwhile.
    const uint64_t e = epoch_.load(std::memory_order_acquire);
    auto& next = filters_[1 - (e & 1)];
    const size_t words = size_t(1) << (filter_bits_ - 6);
    for (size_t i = 0; i < words; ++i) next[i].store(0, std::memory_order_relaxed);
    rebuilding_.store(true, std::memory_order_release);
    std::lock_guard lock(left_mu_);
    for (const auto& [id, touched] : left_) Note(next, filter_bits_, id);
    for (const auto& [number, ids] : exported_)
      for (const std::string& id : ids) Note(next, filter_bits_, id);
  }
  if (Status s = source->ScanLeft(left_cursor_, slice_size, &slice); !s.ok()) {
    read_errors_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  scan_credit_ = std::max(0.0, scan_credit_ - double(slice_size));
  if (left_cursor_.empty()) {
    pass_seen_ = 0;
    pass_began_at_ = now;
  }
  const bool pass_ends = slice.size() < slice_size;
  left_cursor_ = pass_ends ? std::string() : slice.back().id;
  pass_seen_ += slice.size();
  if (pass_ends) {
    pass_length_ = std::max<uint64_t>(pass_seen_ + left_since_pass_, 1);
    left_since_pass_ = 0;
    scanned_at_ = now;
    scan_credit_ = 0;
  }
  std::vector<std::string_view> gone;
  {
    std::lock_guard lock(mu_);
    for (const RowSource::LeftUser& u : slice) {
      // Back in memory (expiry in memory decides), or already going (kept
      // in the filter until its deletion is stored: a snapshot carrying it
      // may fail).
      if (m_.users.Find(u.id) != EmbeddingTable::kNoRow) continue;
      if (!Returnable(u.id)) {
        NoteNext(u.id);
        continue;
      }
      if (u.touched == 0 || u.touched == RowSource::LeftUser::kBackInMemory) {
        // Its time is unknown (left at a restore, or in memory at the last
        // checkpoint): touched now, as expiry counts users after a restart.
        NoteNext(u.id);
        std::lock_guard left_lock(left_mu_);
        left_.emplace_back(u.id, uint32_t(now));
        continue;
      }
      if (int64_t(u.touched) < now - m_.options.expire_user_s) {
        gone.push_back(u.id);  // its deletion is recorded below: not noted
      } else {
        NoteNext(u.id);
      }
    }
  }
  // At the pass's end the filter built holds every user out of memory the
  // store holds, save those whose deletion the pass recorded: swap.
  auto finish = [&](bool recorded) {
    // Not recorded (a read failed): still held, found again by a later pass.
    if (!recorded)
      for (std::string_view id : gone) NoteNext(id);
    if (!pass_ends) return;
    epoch_.fetch_add(1, std::memory_order_acq_rel);
    rebuilding_.store(false, std::memory_order_release);
  };
  if (gone.empty()) {
    finish(true);
    return;
  }
  // Their purchases go too: read those of the users that may have some.
  std::vector<std::string_view> buyers;
  for (std::string_view id : gone)
    if (MayHold(buyers_, buyer_bits_, id)) buyers.push_back(id);
  std::vector<std::pair<std::string, std::string>> purchases;
  if (!buyers.empty()) {
    if (Status s = source->ReadPurchases(buyers, &purchases); !s.ok()) {
      read_errors_.fetch_add(1, std::memory_order_relaxed);
      finish(false);  // not gone after all: a later pass finds them again
      return;
    }
  }
  {
    std::lock_guard lock(mu_);
    const uint64_t carrier = begun_.load(std::memory_order_acquire) + 1;
    std::vector<std::string>& deleted = m_.deleted_ids["user"];
    for (std::string_view id : gone) {
      deleted.emplace_back(id);
      expiring_.emplace(std::string(id), carrier);
    }
    for (auto& p : purchases) m_.deleted_purchases.push_back(std::move(p));
    m_.expired[0].fetch_add(gone.size(), std::memory_order_relaxed);
  }
  finish(true);
}

bool Residency::OverLimit() const {
  if (!has_source()) return false;
  const uint64_t budget = user_budget();
  return m_.users.live_size() > budget + budget / 4;
}

bool Residency::KeepRestored(std::string_view id) {
  // Out of memory at the last checkpoint (SetSource read which): it stays
  // in the store, so that the users in memory then are the ones loaded.
  // (Without expiry, a false positive of the filter leaves a user in the
  // store too, for good: the filter only grows. With expiry it is built
  // again from the store's entries, so the exact list decides.)
  if (filters_[1] ? std::binary_search(restore_left_.begin(), restore_left_.end(), Hash64(id))
                  : MayHaveLeft(id)) {
    // Noted again, should two ids share a hash.
    if (filters_[1]) NoteLeft(id);
    return false;
  }
  // Counted here, not by the table: blocks are restored on several
  // threads, each a block at a time.
  if (restored_.fetch_add(1, std::memory_order_relaxed) < user_budget()) return true;
  restored_.fetch_sub(1, std::memory_order_relaxed);
  NoteLeft(id);
  if (m_.options.expire_user_s > 0) {
    std::lock_guard lock(left_mu_);
    left_.emplace_back(std::string(id), 0);  // its time is not stored: unknown
  }
  return false;
}

void Residency::Prepare(std::span<const Event> events, const ParallelFor& parallel_for) {
  clock_.fetch_add(1, std::memory_order_relaxed);
  if (!has_source()) return;
  if (!restore_left_.empty()) std::vector<uint64_t>().swap(restore_left_);  // restored
  ids_.clear();
  {
    // A score reading a user back holds mu_ until the user is whole: a
    // user found here has its list and history.
    std::lock_guard lock(mu_);
    for (const Event& e : events)
      if (m_.users.Find(e.user) == EmbeddingTable::kNoRow && MayHaveLeft(e.user) &&
          Returnable(e.user))
        ids_.push_back(e.user);
  }
  if (ids_.empty()) return;
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
  // Nothing leaves memory before this call's Evict (the same thread), so
  // what is read is what the store holds. The reads of a big batch are
  // split over the training threads, each a call of the source.
  constexpr size_t kGrain = 256;
  parallel_for(ids_.size(), kGrain, [&](size_t begin, size_t end) {
    ReadBack(std::span(ids_).subspan(begin, end - begin));
  });
}

size_t Residency::ReadBack(std::span<const std::string_view> ids) {
  const RowSource* source = source_.load(std::memory_order_acquire);
  std::vector<uint8_t> buyers(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) buyers[i] = MayHold(buyers_, buyer_bits_, ids[i]);
  ModelSnapshot part;
  store_reads_.fetch_add(1, std::memory_order_relaxed);
  if (Status s = source->ReadUsers(ids, buyers, m_.options.expire_user_s > 0, &part); !s.ok()) {
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
  {
    std::lock_guard lock(mu_);
    if (!Returnable(id)) return row;
  }
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
    const uint8_t buyer[] = {uint8_t(MayHold(buyers_, buyer_bits_, id))};
    if (Status s = source->ReadUsers(ids, buyer, m_.options.expire_user_s > 0, &part); !s.ok()) {
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
  // With user expiry: users that left memory and whose time ran out
  // meanwhile are not read back but expired (Evict records it), and start
  // afresh.
  std::unordered_set<std::string_view> expired;
  if (m_.options.expire_user_s > 0 && now > 0) {
    for (const FeatureListDelta& l : part.feature_lists) {
      if (l.table != kUserLeftLists) continue;
      for (size_t i = 0; i < l.keys.size() && i < l.features.size(); ++i) {
        const uint32_t touched =
            l.features[i].empty() ? 0 : uint32_t(std::strtoul(l.features[i][0].c_str(), nullptr, 10));
        if (touched > 0 && int64_t(touched) < int64_t(now) - m_.options.expire_user_s &&
            m_.users.Find(l.keys[i]) == EmbeddingTable::kNoRow) {
          expired.insert(l.keys[i]);
          returned_expired_.emplace_back(l.keys[i]);
        }
      }
    }
    for (const auto& [user, item] : part.new_purchases)
      if (expired.count(user)) returned_expired_purchases_.emplace_back(user, item);
  }
  for (const TableDelta& t : part.tables) {
    if (t.table != "user" || t.width != int(m_.users.row_floats()) ||
        t.values.size() != t.keys.size() * size_t(t.width))
      continue;
    for (size_t i = 0; i < t.keys.size(); ++i) {
      if (!expired.empty() && expired.count(t.keys[i])) continue;
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
  {
    // Back in memory: a restart loads it again.
    std::lock_guard left_lock(left_mu_);
    for (const auto& [id, row] : created)
      left_.emplace_back(std::string(id), RowSource::LeftUser::kBackInMemory);
  }
  reloaded_.fetch_add(created.size(), std::memory_order_relaxed);
  return created.size();
}

void Residency::Evict(bool idle) {
  // Rows let go by the previous call are reused from here (a score that
  // found one a moment before has had a whole Train call to finish).
  m_.ReclaimRetired();
  if (m_.options.expire_user_s > 0 && has_source() &&
      !m_.exporting.load(std::memory_order_acquire))
    ExpireLeft(idle);
  last_let_go_ = 0;
  const uint32_t prior = m_.Prior(0);
  const uint64_t live = m_.users.live_size() - (prior != EmbeddingTable::kNoRow ? 1 : 0);
  // Users leave down to 7/8 of the budget, so that the new users of the
  // next several calls fit before the budget is reached; beyond it, users
  // that wait for a checkpoint to store them make the learner ask for one.
  const uint64_t budget = user_budget(), target = budget - budget / 8;
  if (live <= target || !has_source() || m_.exporting.load(std::memory_order_acquire)) {
    if (live <= budget) wants_checkpoint_.store(false, std::memory_order_relaxed);
    return;
  }
  const uint64_t over = live - target;
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
    const std::string_view id = m_.users.key(row);
    NoteLeft(id);
    {
      // Its event time with user expiry; otherwise unknown (touch times are
      // then the limit's clock, which means nothing to a later expiry).
      std::lock_guard left_lock(left_mu_);
      left_.emplace_back(std::string(id),
                         m_.options.expire_user_s > 0 ? m_.users.touched(row) : 0);
    }
    {
      std::shared_lock plock(m_.purchases_mu);
      const auto it = m_.purchases.find(row);
      if (it != m_.purchases.end() && !it->second.empty()) NoteBuyer(id);
    }
    m_.RemoveRow(m_.users, row, false);
    ++let_go;
  }
  evicted_.fetch_add(let_go, std::memory_order_release);
  last_let_go_ = let_go;
  left_since_pass_ += let_go;
  const bool want = live - let_go > budget && changed > 0;
  if (want && !wants_checkpoint_.load(std::memory_order_relaxed))
    checkpoints_wanted_.fetch_add(1, std::memory_order_relaxed);
  wants_checkpoint_.store(want, std::memory_order_relaxed);
}

}  // namespace recstream::learner
