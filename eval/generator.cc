#include "eval/generator.h"

#include <fmt/compile.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "eval/rng.h"

namespace recstream::eval {

namespace {

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Shape of the synthetic world; see the header for the model.
constexpr int kAgeGroups = 6;
constexpr int kMaxCategories = 50;
constexpr double kGroupShare = 0.4;       // variance share of the group vector
constexpr double kZipfExponent = 0.9;     // item popularity skew
constexpr double kRatingShare = 0.27;     // steps that are ratings
constexpr double kClickIntercept = -1.2;  // about 30% of impressions clicked
constexpr double kClickAffinity = 1.5;
constexpr double kPurchaseShare = 0.1;  // clicks followed by a purchase event
constexpr double kPurchaseIntercept = -1.5;
constexpr double kPurchaseAffinity = 2.0;
constexpr double kPurchaseItemBias = 0.5;
constexpr double kUserBiasSd = 0.3;
constexpr double kRatingAffinity = 0.8;
constexpr double kRatingNoise = 0.6;         // in units of rating_scale
constexpr int64_t kStartTs = 1704067200000;  // 2024-01-01T00:00:00Z

}  // namespace

Status ValidateGeneratorOptions(const GeneratorOptions& o) {
  if (o.users < 1) return Status::InvalidArgument("users must be at least 1");
  if (o.items < 1) return Status::InvalidArgument("items must be at least 1");
  if (o.factors < 1 || o.factors > 256)
    return Status::InvalidArgument("factors must be in [1, 256]");
  if (!std::isfinite(o.rating_min) || !std::isfinite(o.rating_max) || o.rating_min >= o.rating_max)
    return Status::InvalidArgument("rating_min must be below rating_max");
  return Status::OK();
}

struct Generator::Impl {
  explicit Impl(const GeneratorOptions& o) : options(o), rng(o.seed) {
    options.users = std::max(options.users, 1);
    options.items = std::max(options.items, 1);
    options.factors = std::clamp(options.factors, 1, 256);
    if (!(options.rating_min < options.rating_max)) options.rating_max = options.rating_min + 1;
    Build();
  }

  void Build() {
    const int f = options.factors;
    const int categories = std::min(kMaxCategories, options.items);
    // Each factor coordinate has variance F^-1/2, so u.v has variance ~1.
    const double sd = std::pow(double(f), -0.25);
    const double group_sd = sd * std::sqrt(kGroupShare);
    const double own_sd = sd * std::sqrt(1.0 - kGroupShare);
    auto gaussian_rows = [&](int rows, double s) {
      std::vector<double> m(size_t(rows) * f);
      for (double& x : m) x = s * rng.Gaussian();
      return m;
    };
    age_vec = gaussian_rows(kAgeGroups, group_sd);
    std::vector<double> cat_vec = gaussian_rows(categories, group_sd);

    const double range = options.rating_max - options.rating_min;
    rating_scale = range / 4.0;
    rating_mu = options.rating_min + 0.625 * range;
    rating_step = range >= 2.0 ? 0.5 : 0.0;

    user_age.resize(options.users);
    user_vec = gaussian_rows(options.users, own_sd);
    user_bias.resize(options.users);
    for (int u = 0; u < options.users; ++u) {
      user_age[u] = int(rng.Below(kAgeGroups));
      for (int k = 0; k < f; ++k) user_vec[size_t(u) * f + k] += age_vec[user_age[u] * f + k];
      user_bias[u] = kUserBiasSd * rng.Gaussian();
    }
    item_cat.resize(options.items);
    item_vec = gaussian_rows(options.items, own_sd);
    item_bias.resize(options.items);
    for (int i = 0; i < options.items; ++i) {
      item_cat[i] = int(rng.Below(categories));
      for (int k = 0; k < f; ++k) item_vec[size_t(i) * f + k] += cat_vec[item_cat[i] * f + k];
      item_bias[i] = 0.5 * rng.Gaussian();
    }
    // Popularity: rank r has weight (r+1)^-s; ranks are shuffled over items.
    popular.resize(options.items);
    std::iota(popular.begin(), popular.end(), 0);
    for (int i = options.items - 1; i > 0; --i) std::swap(popular[i], popular[rng.Below(i + 1)]);
    item_cdf.resize(options.items);
    double total = 0;
    for (int r = 0; r < options.items; ++r) {
      total += std::pow(double(r + 1), -kZipfExponent);
      item_cdf[r] = total;
    }
    for (double& c : item_cdf) c /= total;
    SetWorldConstants();
  }

  int SampleItem() {
    double x = rng.Uniform();
    size_t r = std::upper_bound(item_cdf.begin(), item_cdf.end(), x) - item_cdf.begin();
    return popular[std::min(r, popular.size() - 1)];
  }

  double Affinity(int u, int i) const {
    const int f = options.factors;
    const double* a = &user_vec[size_t(u) * f];
    const double* b = &item_vec[size_t(i) * f];
    double s = 0;
    for (int k = 0; k < f; ++k) s += a[k] * b[k];
    return s;
  }

  void AppendCommon(fmt::memory_buffer* out, const char* type, int u, int i) {
    ts += 1 + int64_t(rng.Below(3));
    fmt::format_to(fmt::appender(*out),
                   FMT_COMPILE(R"({{"type":"{}","user":{},"item":"i{}","ts":{})"), type, u, i, ts);
  }
  void AppendFeatures(fmt::memory_buffer* out, int u, int i) {
    if (!options.side_features) return;
    fmt::format_to(fmt::appender(*out),
                   FMT_COMPILE(R"(,"user_features":["age={}"],"item_features":["category=c{}"])"),
                   user_age[u], item_cat[i]);
  }

  void Step(fmt::memory_buffer* out) {
    if (pending_purchase) {
      pending_purchase = false;
      const int u = pending_user, i = pending_item;
      const double p = Sigmoid(kPurchaseIntercept + kPurchaseItemBias * item_bias[i] +
                               kPurchaseAffinity * Affinity(u, i));
      const int label = rng.Bernoulli(p) ? 1 : 0;
      AppendCommon(out, "purchase", u, i);
      fmt::format_to(fmt::appender(*out), FMT_COMPILE(R"(,"label":{})"), label);
      AppendFeatures(out, u, i);
      fmt::format_to(fmt::appender(*out), FMT_COMPILE(R"(,"truth":{{"p":{:.6g}}}}})"), p);
      return;
    }
    const int u = int(rng.Below(options.users));
    const int i = SampleItem();
    const double a = Affinity(u, i);
    if (rng.Bernoulli(kRatingShare)) {
      const double lo = options.rating_min, hi = options.rating_max;
      const double mean = std::clamp(
          rating_mu + rating_scale * (user_bias[u] + item_bias[i] + kRatingAffinity * a), lo, hi);
      double value = mean + rating_scale * kRatingNoise * rng.Gaussian();
      if (rating_step > 0) value = std::round(value / rating_step) * rating_step;
      value = std::clamp(value, lo, hi);
      AppendCommon(out, "rating", u, i);
      fmt::format_to(fmt::appender(*out), FMT_COMPILE(R"(,"value":{})"), value);
      AppendFeatures(out, u, i);
      fmt::format_to(fmt::appender(*out), FMT_COMPILE(R"(,"truth":{{"mean":{:.6g}}}}})"), mean);
      return;
    }
    const double p = Sigmoid(kClickIntercept + item_bias[i] + kClickAffinity * a);
    const int label = rng.Bernoulli(p) ? 1 : 0;
    AppendCommon(out, "click", u, i);
    fmt::format_to(fmt::appender(*out), FMT_COMPILE(R"(,"label":{})"), label);
    AppendFeatures(out, u, i);
    fmt::format_to(fmt::appender(*out), FMT_COMPILE(R"(,"truth":{{"p":{:.6g}}}}})"), p);
    if (label == 1 && rng.Bernoulli(kPurchaseShare)) {
      pending_purchase = true;
      pending_user = u;
      pending_item = i;
    }
  }

  // The world's constants (its vectors are filled by Build in place).
  void SetWorldConstants() {
    World& w = world;
    w.factors = options.factors;
    w.user_own_sd = std::pow(double(options.factors), -0.25) * std::sqrt(1.0 - kGroupShare);
    w.user_bias_sd = kUserBiasSd;
    w.click_intercept = kClickIntercept;
    w.click_affinity = kClickAffinity;
    w.purchase_intercept = kPurchaseIntercept;
    w.purchase_item_bias = kPurchaseItemBias;
    w.purchase_affinity = kPurchaseAffinity;
    w.rating_affinity = kRatingAffinity;
    w.rating_noise = kRatingNoise;
  }

  GeneratorOptions options;
  Rng rng;
  uint64_t produced = 0;
  int64_t ts = kStartTs;

  // The hidden world; the names below refer to its parts (no copies).
  World world;
  std::vector<double>& age_vec = world.age_vec;  // age groups x factors
  std::vector<int>& user_age = world.user_age;
  std::vector<double>& user_vec = world.user_vec;  // users x factors
  std::vector<double>& user_bias = world.user_bias;
  std::vector<double>& item_vec = world.item_vec;  // items x factors
  std::vector<double>& item_bias = world.item_bias;
  double& rating_mu = world.rating_mu;
  double& rating_scale = world.rating_scale;
  std::vector<int> item_cat;
  std::vector<int> popular;      // popularity rank -> item
  std::vector<double> item_cdf;  // cumulative popularity by rank
  double rating_step = 0.5;

  fmt::memory_buffer buffer;  // the line (or lines) being written
  bool pending_purchase = false;
  int pending_user = 0, pending_item = 0;
};

Generator::Generator(const GeneratorOptions& options) : impl_(std::make_unique<Impl>(options)) {}
Generator::~Generator() = default;

bool Generator::Next(std::string* json_line) {
  Impl& m = *impl_;
  if (m.produced >= m.options.events) return false;
  m.buffer.clear();
  m.Step(&m.buffer);
  json_line->assign(m.buffer.data(), m.buffer.size());
  ++m.produced;
  return true;
}

Status Generator::WriteAll(std::ostream* out) {
  Impl& m = *impl_;
  fmt::memory_buffer& buffer = m.buffer;
  buffer.clear();
  auto flush = [&]() -> Status {
    out->write(buffer.data(), std::streamsize(buffer.size()));
    buffer.clear();
    if (!out->good()) return Status::IOError("writing generated events failed");
    return Status::OK();
  };
  while (m.produced < m.options.events) {
    m.Step(&buffer);
    buffer.push_back('\n');
    ++m.produced;
    if (buffer.size() >= (1 << 20) - 1024) RECSTREAM_RETURN_IF_ERROR(flush());
  }
  RECSTREAM_RETURN_IF_ERROR(flush());
  out->flush();
  if (!out->good()) return Status::IOError("writing generated events failed");
  return Status::OK();
}

uint64_t Generator::produced() const { return impl_->produced; }

Status Generator::WriteItemVectors(std::ostream* out, int dim, double noise) const {
  if (dim < 1 || dim > 8192) return Status::InvalidArgument("vector dim must be in [1, 8192]");
  if (!std::isfinite(noise) || noise < 0)
    return Status::InvalidArgument("vector noise must be a non-negative number");
  const Impl& m = *impl_;
  const int f = m.options.factors;
  Rng rng(m.options.seed ^ 0x5eedc0ffee123457ULL);
  std::vector<double> a(size_t(dim) * f);
  for (double& x : a) x = rng.Gaussian() / std::sqrt(double(f));
  fmt::memory_buffer buffer;
  for (int i = 0; i < m.options.items; ++i) {
    fmt::format_to(fmt::appender(buffer), FMT_COMPILE(R"({{"item":"i{}","vector":[)"), i);
    const double* v = &m.item_vec[size_t(i) * f];
    for (int j = 0; j < dim; ++j) {
      double p = noise * rng.Gaussian();
      for (int k = 0; k < f; ++k) p += a[size_t(j) * f + k] * v[k];
      fmt::format_to(fmt::appender(buffer), FMT_COMPILE("{}{:.5g}"), j ? "," : "", p);
    }
    fmt::format_to(fmt::appender(buffer), FMT_COMPILE("]}}\n"));
    if (buffer.size() >= (1 << 20)) {
      out->write(buffer.data(), std::streamsize(buffer.size()));
      buffer.clear();
    }
  }
  out->write(buffer.data(), std::streamsize(buffer.size()));
  out->flush();
  if (!out->good()) return Status::IOError("writing item vectors failed");
  return Status::OK();
}

const World& Generator::world() const { return impl_->world; }

}  // namespace recstream::eval
