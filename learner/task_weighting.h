// TaskWeighting: dynamic reweighting of the task losses of an online
// multi-task learner. The trainer multiplies task t's loss gradient by
// weight(t); after each chunk of events it reports the chunk's per-task mean
// losses and gradient norms so the strategy can adapt.
//
//  fixed        weights from the options, never change.
//  uncertainty  Kendall, Gal & Cipolla 2018: loss = sum_t exp(-s_t) L_t + s_t
//               with learned log-variances s_t; weight = exp(-s_t).
//  dwa          Liu et al. 2019 (dynamic weight average), T = 2, over sliding
//               windows of per-task mean losses since a stream has no epochs:
//               w_t = K softmax_t(r_t / T), r_t = L_t(window) / L_t(previous).
//  gradnorm     Chen et al. 2018, alpha = 1.5, on the last shared layer:
//               weights move so that each task's weighted gradient norm
//               tracks the mean norm times its relative inverse training rate.
//
// Thread safety: weight() is lock-free and may be called from any thread;
// Update() and state I/O are serialised internally.
#pragma once

#include <array>
#include <atomic>
#include <mutex>
#include <vector>

#include "learner/options.h"

namespace recstream::learner {

struct TaskChunkStats {
  std::array<double, kNumTasks> loss_sum{};
  std::array<double, kNumTasks> grad_norm_sum{};  // |dL_t/dh| before weighting
  std::array<uint64_t, kNumTasks> count{};
};

class TaskWeighting {
 public:
  explicit TaskWeighting(const LearnerOptions& options);

  float weight(Task t) const { return weights_[int(t)].load(std::memory_order_relaxed); }
  void Update(const TaskChunkStats& chunk);
  // EMA of each task's loss, for stats.
  std::array<double, kNumTasks> AverageLoss() const;

  // Flat state for snapshots; Load returns false on a size mismatch.
  std::vector<float> Save() const;
  bool Load(const std::vector<float>& state);

 private:
  void Publish();

  const LearnerOptions options_;
  std::array<std::atomic<float>, kNumTasks> weights_;
  mutable std::mutex mu_;
  // All guarded by mu_.
  std::array<double, kNumTasks> log_var_{};    // uncertainty
  std::array<double, kNumTasks> learned_w_{};  // gradnorm
  std::array<double, kNumTasks> loss_ema_{};
  std::array<double, kNumTasks> grad_ema_{};
  std::array<double, kNumTasks> initial_loss_{};  // gradnorm: first window mean
  std::array<double, kNumTasks> window_sum_{};    // dwa
  std::array<double, kNumTasks> window_count_{};
  std::array<double, kNumTasks> window_prev_{};  // previous window mean, 0 = none
  std::array<double, kNumTasks> window_cur_{};   // last complete window mean, 0 = none
};

}  // namespace recstream::learner
