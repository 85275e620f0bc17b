#include "learner/task_weighting.h"

#include <algorithm>
#include <cmath>

#include "learner/pack.h"

namespace recstream::learner {
namespace {

constexpr double kLogVarLimit = 4.0;  // weights stay within [e^-4, e^4]
constexpr double kDwaTemperature = 2.0;
constexpr double kDwaWindow = 2000.0;  // events of a task per window
constexpr double kGradNormAlpha = 1.5;
constexpr double kEmaRate = 0.02;  // per chunk

}  // namespace

TaskWeighting::TaskWeighting(const LearnerOptions& options) : options_(options) {
  for (int t = 0; t < kNumTasks; ++t) learned_w_[t] = 1.0;
  Publish();
}

void TaskWeighting::Publish() {
  for (int t = 0; t < kNumTasks; ++t) {
    double w = 1.0;
    switch (options_.weighting) {
      case Weighting::kFixed:
        w = options_.fixed_weights[t];
        break;
      case Weighting::kUncertainty:
        w = std::exp(-log_var_[t]);
        break;
      case Weighting::kGradNorm:
        w = learned_w_[t];
        break;
      case Weighting::kDwa: {
        double denom = 0.0;
        std::array<double, kNumTasks> r{};
        for (int j = 0; j < kNumTasks; ++j) {
          r[j] =
              (window_prev_[j] > 0 && window_cur_[j] > 0) ? window_cur_[j] / window_prev_[j] : 1.0;
          denom += std::exp(r[j] / kDwaTemperature);
        }
        w = kNumTasks * std::exp(r[t] / kDwaTemperature) / denom;
        break;
      }
    }
    weights_[t].store(float(w), std::memory_order_relaxed);
  }
}

void TaskWeighting::Update(const TaskChunkStats& chunk) {
  std::lock_guard lock(mu_);
  for (int t = 0; t < kNumTasks; ++t) {
    if (chunk.count[t] == 0) continue;
    double n = double(chunk.count[t]);
    double mean_loss = chunk.loss_sum[t] / n;
    double mean_grad = chunk.grad_norm_sum[t] / n;
    if (!std::isfinite(mean_loss) || !std::isfinite(mean_grad)) continue;
    if (loss_ema_[t] == 0.0) {
      loss_ema_[t] = mean_loss;
      grad_ema_[t] = mean_grad;
    } else {
      loss_ema_[t] += kEmaRate * (mean_loss - loss_ema_[t]);
      grad_ema_[t] += kEmaRate * (mean_grad - grad_ema_[t]);
    }
    // Uncertainty: d/ds (exp(-s) L + s) = 1 - exp(-s) L, summed over events.
    double g = n * (1.0 - std::exp(-log_var_[t]) * mean_loss);
    log_var_[t] = std::clamp(log_var_[t] - options_.lr_weighting * g, -kLogVarLimit, kLogVarLimit);
    // DWA windows.
    window_sum_[t] += chunk.loss_sum[t];
    window_count_[t] += n;
    if (window_count_[t] >= kDwaWindow) {
      window_prev_[t] = window_cur_[t];
      window_cur_[t] = window_sum_[t] / window_count_[t];
      if (initial_loss_[t] == 0.0) initial_loss_[t] = window_cur_[t];
      window_sum_[t] = window_count_[t] = 0.0;
    }
  }
  if (options_.weighting == Weighting::kGradNorm) {
    // G_t = w_t |grad_t|; target_t = mean(G) * r_t^alpha with r_t the task's
    // relative inverse training rate L_t / L_t(0) over its mean.
    std::array<double, kNumTasks> G{}, ratio{};
    double g_mean = 0.0, r_mean = 0.0;
    int active = 0;
    for (int t = 0; t < kNumTasks; ++t) {
      if (initial_loss_[t] <= 0.0 || grad_ema_[t] <= 0.0) continue;
      G[t] = learned_w_[t] * grad_ema_[t];
      ratio[t] = loss_ema_[t] / initial_loss_[t];
      g_mean += G[t];
      r_mean += ratio[t];
      ++active;
    }
    if (active >= 2) {
      g_mean /= active;
      r_mean /= active;
      double lr = options_.lr_weighting * 10.0;
      for (int t = 0; t < kNumTasks; ++t) {
        if (G[t] == 0.0) continue;
        double target = g_mean * std::pow(ratio[t] / r_mean, kGradNormAlpha);
        double grad = (G[t] > target ? 1.0 : -1.0) * grad_ema_[t];
        learned_w_[t] = std::max(0.05, learned_w_[t] - lr * grad);
      }
      double sum = 0.0;
      for (double w : learned_w_) sum += w;
      for (double& w : learned_w_) w *= kNumTasks / sum;
    }
  }
  Publish();
}

std::array<double, kNumTasks> TaskWeighting::AverageLoss() const {
  std::lock_guard lock(mu_);
  return loss_ema_;
}

std::vector<float> TaskWeighting::Save() const {
  std::lock_guard lock(mu_);
  std::vector<float> out;
  for (const auto* a : {&log_var_, &learned_w_, &loss_ema_, &grad_ema_, &initial_loss_,
                        &window_sum_, &window_count_, &window_prev_, &window_cur_}) {
    for (double v : *a) PackDouble(v, &out);
  }
  return out;
}

bool TaskWeighting::Load(const std::vector<float>& state) {
  std::lock_guard lock(mu_);
  auto arrays = {&log_var_,    &learned_w_,    &loss_ema_,    &grad_ema_,  &initial_loss_,
                 &window_sum_, &window_count_, &window_prev_, &window_cur_};
  if (state.size() != 2 * arrays.size() * kNumTasks) return false;
  size_t i = 0;
  for (auto* a : arrays)
    for (double& v : *a) v = UnpackDouble(state, i++);
  Publish();
  return true;
}

}  // namespace recstream::learner
