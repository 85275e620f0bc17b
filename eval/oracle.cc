#include "eval/oracle.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>
#include <vector>

#include "eval/metrics.h"
#include "ingest/parser.h"
#include "learner/event.h"

namespace recstream::eval {

namespace {

using learner::Task;

// Gaussian posteriors over (user vector, user rating bias), one per user.
class UserPosteriors {
 public:
  UserPosteriors(const World& w) : w_(w), f_(w.factors), k_(w.factors + 1) {
    const size_t users = w.user_age.size();
    mean_.assign(users * k_, 0.0);
    cov_.assign(users * k_ * k_, 0.0);
    for (size_t u = 0; u < users; ++u) {
      double* m = &mean_[u * k_];
      double* s = &cov_[u * k_ * k_];
      // Prior: the age group's vector (the group is a visible side feature).
      for (int j = 0; j < f_; ++j) {
        m[j] = w.age_vec[size_t(w.user_age[u]) * f_ + j];
        s[j * k_ + j] = w.user_own_sd * w.user_own_sd;
      }
      s[f_ * k_ + f_] = w.user_bias_sd * w.user_bias_sd;
    }
    sx_.resize(k_);
  }

  // Binary event with logit = c + x.theta (x has k_ entries); returns the
  // predictive probability before the update, then applies the probit ADF
  // update for label y.
  double Binary(size_t u, double c, const std::vector<double>& x, int y) {
    double* m = &mean_[u * k_];
    double* s = &cov_[u * k_ * k_];
    double mu = c, var = 0;
    Project(m, s, x, &mu, &var);
    const double lam2 = M_PI / 8.0, lam = std::sqrt(lam2);
    const double p = 1.0 / (1.0 + std::exp(-mu / std::sqrt(1.0 + lam2 * var)));
    const double ss = std::sqrt(1.0 + lam2 * var);
    const double sign = y ? 1.0 : -1.0;
    const double t = sign * lam * mu / ss;
    const double pdf = std::exp(-0.5 * t * t) / std::sqrt(2.0 * M_PI);
    const double cdf = 0.5 * std::erfc(-t / std::sqrt(2.0));
    const double v = pdf / std::max(cdf, 1e-300), wgt = v * (v + t);
    for (int a = 0; a < k_; ++a) m[a] += sign * lam * v / ss * sx_[a];
    const double f = lam2 * wgt / (ss * ss);
    for (int a = 0; a < k_; ++a)
      for (int b = 0; b < k_; ++b) s[a * k_ + b] -= f * sx_[a] * sx_[b];
    return p;
  }

  // Linear Gaussian event value = c + h.theta + noise(sd); returns the
  // predictive mean before the Kalman update.
  double Linear(size_t u, double c, const std::vector<double>& h, double noise_sd, double value) {
    double* m = &mean_[u * k_];
    double* s = &cov_[u * k_ * k_];
    double pred = c, hs = 0;
    Project(m, s, h, &pred, &hs);
    const double den = hs + noise_sd * noise_sd, err = value - pred;
    for (int a = 0; a < k_; ++a) m[a] += sx_[a] * err / den;
    for (int a = 0; a < k_; ++a)
      for (int b = 0; b < k_; ++b) s[a * k_ + b] -= sx_[a] * sx_[b] / den;
    return pred;
  }

 private:
  // sx_ = S x; adds x.m to *mean and x.S.x to *var.
  void Project(const double* m, const double* s, const std::vector<double>& x, double* mean,
               double* var) {
    for (int a = 0; a < k_; ++a) {
      double t = 0;
      for (int b = 0; b < k_; ++b) t += s[a * k_ + b] * x[b];
      sx_[a] = t;
      *mean += x[a] * m[a];
      *var += x[a] * t;
    }
  }

  const World& w_;
  const int f_, k_;
  std::vector<double> mean_, cov_, sx_;
};

struct Series {
  std::vector<float> pred, label, truth;
};

template <typename T>
bool ParseIndex(std::string_view s, T* out) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

void Fill(Task task, const Series& s, OracleTaskBound* b) {
  b->count = s.pred.size();
  if (b->count == 0) return;
  const size_t tail = (s.pred.size() + 9) / 10;
  std::span<const float> pred(s.pred), label(s.label), truth(s.truth);
  if (task == Task::kRating) {
    b->mae = Mae(pred, label);
    b->last10_mae = Mae(pred.last(tail), label.last(tail));
    b->last10_bayes_mae = Mae(truth.last(tail), label.last(tail));
  } else {
    b->auc = Auc(pred, label);
    b->last10_auc = Auc(pred.last(tail), label.last(tail));
    b->last10_bayes_auc = Auc(truth.last(tail), label.last(tail));
  }
}

}  // namespace

Status RunOracle(const GeneratorOptions& options, OracleReport* report) {
  RECSTREAM_RETURN_IF_ERROR(ValidateGeneratorOptions(options));
  *report = OracleReport();
  Generator gen(options);
  const World& w = gen.world();
  const int f = w.factors, k = f + 1;
  UserPosteriors posteriors(w);
  ingest::EventParser parser{ingest::ParserOptions()};
  learner::Event e;
  std::string line;
  std::vector<double> x(k);
  Series series[learner::kNumTasks];
  const double lo = options.rating_min, hi = options.rating_max;
  while (gen.Next(&line)) {
    if (parser.Parse(line, &e, 0).has_value())
      return Status::Corruption("generated event did not parse: " + line);
    size_t u = 0, i = 0;
    if (!ParseIndex(std::string_view(e.user), &u) || e.item.size() < 2 ||
        !ParseIndex(std::string_view(e.item).substr(1), &i) || u >= w.user_age.size() ||
        i >= w.item_bias.size())
      return Status::Corruption("unexpected ids in generated event: " + line);
    const double* v = &w.item_vec[i * f];
    double pred = 0;
    switch (e.task) {
      case Task::kClick:
      case Task::kPurchase: {
        const bool click = e.task == Task::kClick;
        const double scale = click ? w.click_affinity : w.purchase_affinity;
        const double c = click ? w.click_intercept + w.item_bias[i]
                               : w.purchase_intercept + w.purchase_item_bias * w.item_bias[i];
        for (int j = 0; j < f; ++j) x[j] = scale * v[j];
        x[f] = 0.0;
        pred = posteriors.Binary(u, c, x, e.label > 0.5f ? 1 : 0);
        break;
      }
      case Task::kRating: {
        // value = mu + scale (b_u + b_i + r a) + scale noise N(0, 1)
        for (int j = 0; j < f; ++j) x[j] = w.rating_scale * w.rating_affinity * v[j];
        x[f] = w.rating_scale;
        const double c = w.rating_mu + w.rating_scale * w.item_bias[i];
        pred = std::clamp(
            posteriors.Linear(u, c, x, w.rating_scale * w.rating_noise, double(e.label)), lo, hi);
        break;
      }
    }
    Series& s = series[int(e.task)];
    s.pred.push_back(float(pred));
    s.label.push_back(e.label);
    s.truth.push_back(float(e.truth));
  }
  Fill(Task::kClick, series[int(Task::kClick)], &report->click);
  Fill(Task::kPurchase, series[int(Task::kPurchase)], &report->purchase);
  Fill(Task::kRating, series[int(Task::kRating)], &report->rating);
  return Status::OK();
}

}  // namespace recstream::eval
