#include "eval/baselines.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <string>
#include <unordered_map>

namespace recstream::eval {

namespace {

using learner::Event;
using learner::kNumTasks;
using learner::Task;

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Dense indices for string ids.
class Ids {
 public:
  // The index of `id`; *created tells whether it is new.
  uint32_t Get(const std::string& id, bool* created) {
    auto [it, inserted] = index_.try_emplace(id, uint32_t(index_.size()));
    *created = inserted;
    return it->second;
  }

 private:
  std::unordered_map<std::string, uint32_t> index_;
};

class Popularity : public Baseline {
 public:
  explicit Popularity(const learner::LearnerOptions& o) : lo_(o.rating_min), hi_(o.rating_max) {}
  std::string_view name() const override { return "popularity"; }

  void Train(std::span<const Event> events, std::vector<float>* before) override {
    before->resize(events.size());
    for (size_t i = 0; i < events.size(); ++i) {
      const Event& e = events[i];
      const int t = int(e.task);
      bool created;
      uint32_t item = items_.Get(e.item, &created);
      if (created)
        for (auto& s : stats_) s.emplace_back();
      Stat& s = stats_[t][item];
      Stat& g = global_[t];
      const double prior =
          g.n > 0 ? g.sum / g.n : (e.task == Task::kRating ? 0.5 * (lo_ + hi_) : 0.5);
      const double pred = (s.sum + kStrength * prior) / (s.n + kStrength);
      (*before)[i] = e.task == Task::kRating ? std::clamp(float(pred), lo_, hi_) : float(pred);
      s.sum += e.label;
      s.n += 1;
      g.sum += e.label;
      g.n += 1;
    }
  }

 private:
  static constexpr double kStrength = 10.0;  // pseudo-events of the global prior
  struct Stat {
    double sum = 0, n = 0;
  };
  const float lo_, hi_;
  Ids items_;
  std::array<std::vector<Stat>, kNumTasks> stats_;
  std::array<Stat, kNumTasks> global_;
};

class BiasedMf : public Baseline {
 public:
  BiasedMf(const learner::LearnerOptions& lo, const BiasedMfOptions& o)
      : o_(o), lo_(lo.rating_min), hi_(lo.rating_max), rng_(o.seed) {
    for (int t = 0; t < kNumTasks; ++t) mu_[t] = 0.0f;
    mu_[int(Task::kRating)] = 0.5f * (lo_ + hi_);
    mu_[int(Task::kPurchase)] = -3.0f;
  }
  std::string_view name() const override { return "biased_mf"; }

  void Train(std::span<const Event> events, std::vector<float>* before) override {
    before->resize(events.size());
    const int d = o_.dim;
    for (size_t i = 0; i < events.size(); ++i) {
      const Event& e = events[i];
      const int t = int(e.task);
      float* pu = Row(&user_rows_[t], &users_[t], e.user);
      float* qi = Row(&item_rows_[t], &items_[t], e.item);
      float y = mu_[t] + pu[d] + qi[d];
      for (int k = 0; k < d; ++k) y += pu[k] * qi[k];
      float g;  // dL/dy
      if (e.task == Task::kRating) {
        (*before)[i] = std::clamp(y, lo_, hi_);
        g = std::clamp(y - e.label, -5.0f, 5.0f);
      } else {
        const float p = Sigmoid(y);
        (*before)[i] = p;
        g = p - e.label;
      }
      if (!std::isfinite(g)) continue;
      const float lr = o_.lr, l2 = o_.l2;
      mu_[t] -= lr * 0.1f * g;
      for (int k = 0; k < d; ++k) {
        const float u = pu[k], v = qi[k];
        pu[k] -= lr * (g * v + l2 * u);
        qi[k] -= lr * (g * u + l2 * v);
      }
      pu[d] -= lr * (g + l2 * pu[d]);
      qi[d] -= lr * (g + l2 * qi[d]);
    }
  }

 private:
  float* Row(Ids* ids, std::vector<float>* rows, const std::string& id) {
    const int w = o_.dim + 1;
    bool created;
    const uint32_t r = ids->Get(id, &created);
    if (created) {
      std::uniform_real_distribution<float> init(-o_.init_scale, o_.init_scale);
      for (int k = 0; k < o_.dim; ++k) rows->push_back(init(rng_));
      rows->push_back(0.0f);  // bias
    }
    return rows->data() + size_t(r) * w;
  }

  const BiasedMfOptions o_;
  const float lo_, hi_;
  std::mt19937 rng_;
  std::array<float, kNumTasks> mu_;
  std::array<Ids, kNumTasks> user_rows_, item_rows_;
  std::array<std::vector<float>, kNumTasks> users_, items_;  // (dim + 1) floats per row
};

class SingleTask : public Baseline {
 public:
  explicit SingleTask(std::array<std::unique_ptr<learner::Learner>, kNumTasks> models)
      : models_(std::move(models)) {}
  std::string_view name() const override { return "single_task"; }

  void Train(std::span<const Event> events, std::vector<float>* before) override {
    before->resize(events.size());
    for (int t = 0; t < kNumTasks; ++t) {
      own_.clear();
      index_.clear();
      for (size_t i = 0; i < events.size(); ++i)
        if (int(events[i].task) == t) {
          own_.push_back(events[i]);
          index_.push_back(i);
        }
      if (own_.empty()) continue;
      models_[t]->Train(own_, &preds_);
      for (size_t j = 0; j < own_.size(); ++j) (*before)[index_[j]] = preds_[j].Get(Task(t));
    }
  }

 private:
  std::array<std::unique_ptr<learner::Learner>, kNumTasks> models_;
  std::vector<Event> own_;
  std::vector<size_t> index_;
  std::vector<learner::Prediction> preds_;
};

}  // namespace

std::unique_ptr<Baseline> NewPopularityBaseline(const learner::LearnerOptions& learner) {
  return std::make_unique<Popularity>(learner);
}

std::unique_ptr<Baseline> NewBiasedMfBaseline(const learner::LearnerOptions& learner,
                                              const BiasedMfOptions& options) {
  return std::make_unique<BiasedMf>(learner, options);
}

std::unique_ptr<Baseline> NewSingleTaskBaseline(const learner::LearnerOptions& learner) {
  std::array<std::unique_ptr<learner::Learner>, kNumTasks> models;
  for (auto& m : models)
    if (!learner::Learner::Create(learner, &m).ok()) return nullptr;
  return std::make_unique<SingleTask>(std::move(models));
}

}  // namespace recstream::eval
