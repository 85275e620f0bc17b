#include "eval/implicit_generator.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "eval/rng.h"

namespace recstream::eval {
namespace {

// Zipf-like over [0, n): rank r with weight 1 / (r + 1)^s, by inversion of
// the continuous approximation.
uint64_t Zipf(Rng& rng, uint64_t n, double s) {
  const double u = rng.Uniform();
  const double a = 1.0 - s;
  const double x = std::pow(u * (std::pow(double(n) + 1.0, a) - 1.0) + 1.0, 1.0 / a) - 1.0;
  return std::min<uint64_t>(n - 1, uint64_t(x));
}

struct User {
  std::vector<int> categories;   // preferred, 1-3
  std::vector<uint32_t> recent;  // the user's last items, oldest first
};

// Recent views of a category's items: drawing one gives an item in
// proportion to its recent popularity.
struct Category {
  std::vector<uint32_t> views;  // ring of the last kWindow viewed items
  size_t next = 0;
};
constexpr size_t kWindow = 256;
constexpr size_t kRecentPerUser = 20;

}  // namespace

Status ValidateImplicitOptions(const ImplicitGeneratorOptions& o) {
  auto share = [](double x) { return x >= 0.0 && x <= 1.0; };
  if (o.categories < 0) return Status::InvalidArgument("categories must not be negative");
  if (o.users < 0) return Status::InvalidArgument("users must not be negative");
  if (!share(o.new_user_share)) return Status::InvalidArgument("new_user_share must be in [0, 1]");
  if (!share(o.new_item_share)) return Status::InvalidArgument("new_item_share must be in [0, 1]");
  if (!share(o.repeat_share)) return Status::InvalidArgument("repeat_share must be in [0, 1]");
  if (!share(o.purchase_share)) return Status::InvalidArgument("purchase_share must be in [0, 1]");
  if (o.days < 1) return Status::InvalidArgument("days must be at least 1");
  return Status::OK();
}

Status WriteImplicitStream(const ImplicitGeneratorOptions& o, std::ostream* out) {
  RECSTREAM_RETURN_IF_ERROR(ValidateImplicitOptions(o));
  Rng rng(o.seed * 0x2545F4914F6CDD1DULL + 77);
  std::vector<User> users;
  std::vector<uint32_t> sessions_of;  // a user per earlier session: activity-weighted draws
  std::vector<int> item_category;
  const int n_categories =
      o.categories > 0 ? o.categories : int(std::max<uint64_t>(20, o.events / 640));
  std::vector<Category> categories(static_cast<size_t>(n_categories), Category{});
  const int64_t start_ms = 1'700'000'000'000;
  const double ms_per_event =
      double(o.days) * 86'400'000.0 / double(std::max<uint64_t>(1, o.events));
  fmt::memory_buffer buf;
  auto flush = [&]() -> Status {
    out->write(buf.data(), std::streamsize(buf.size()));
    buf.clear();
    return *out ? Status::OK() : Status::IOError("writing the stream failed");
  };
  auto new_item = [&](int category) {
    item_category.push_back(category);
    return uint32_t(item_category.size() - 1);
  };
  auto view = [&](User& u, uint32_t item) {
    Category& c = categories[size_t(item_category[item])];
    if (c.views.size() < kWindow) {
      c.views.push_back(item);
    } else {
      c.views[c.next] = item;
      c.next = (c.next + 1) % kWindow;
    }
    u.recent.push_back(item);
    if (u.recent.size() > kRecentPerUser) u.recent.erase(u.recent.begin());
  };
  uint64_t written = 0;
  while (written < o.events) {
    // The session's user.
    uint32_t uid;
    auto new_user = [&](User* u) {
      const int preferred = 1 + int(rng.Below(3));
      for (int k = 0; k < preferred; ++k)
        u->categories.push_back(int(Zipf(rng, uint64_t(n_categories), 0.9)));
    };
    if (o.users > 0) {
      if (users.empty()) users.resize(size_t(o.users));
      uid = uint32_t(rng.Below(uint64_t(o.users)));
      if (users[uid].categories.empty()) new_user(&users[uid]);
    } else if (users.empty() || rng.Bernoulli(o.new_user_share)) {
      uid = uint32_t(users.size());
      new_user(&users.emplace_back());
    } else {
      uid = sessions_of[rng.Below(sessions_of.size())];
    }
    sessions_of.push_back(uid);
    User& u = users[uid];
    // Session length: 1 + geometric, mean about 1.8, at most 8.
    int length = 1;
    while (length < 8 && rng.Bernoulli(0.45)) ++length;
    std::vector<uint32_t> session_items;
    for (int k = 0; k < length && written < o.events; ++k) {
      const int64_t ts = start_ms + int64_t(double(written) * ms_per_event);
      if (!session_items.empty() && rng.Bernoulli(o.purchase_share * 2.6)) {
        const uint32_t item = session_items[rng.Below(session_items.size())];
        fmt::format_to(fmt::appender(buf),
                       "{{\"type\":\"purchase\",\"user\":{},\"item\":\"t{}\",\"label\":1,\"ts\":{},"
                       "\"item_features\":[\"category=c{}\"]}}\n",
                       uid, item, ts, item_category[item]);
        ++written;
        continue;
      }
      uint32_t item;
      if (!u.recent.empty() && rng.Bernoulli(o.repeat_share)) {
        item = u.recent[rng.Below(u.recent.size())];
      } else {
        const int category = rng.Bernoulli(0.85) ? u.categories[rng.Below(u.categories.size())]
                                                 : int(Zipf(rng, uint64_t(n_categories), 0.9));
        Category& c = categories[size_t(category)];
        item = c.views.empty() || rng.Bernoulli(o.new_item_share)
                   ? new_item(category)
                   : c.views[rng.Below(c.views.size())];
      }
      view(u, item);
      session_items.push_back(item);
      fmt::format_to(fmt::appender(buf),
                     "{{\"type\":\"click\",\"user\":{},\"item\":\"t{}\",\"label\":1,\"ts\":{},"
                     "\"item_features\":[\"category=c{}\"]}}\n",
                     uid, item, ts, item_category[item]);
      ++written;
      if (buf.size() > (1 << 20)) RECSTREAM_RETURN_IF_ERROR(flush());
    }
  }
  return flush();
}

}  // namespace recstream::eval
