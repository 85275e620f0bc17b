// Event: one parsed, validated training example, as ingest/ hands it to the
// learner. The learner never sees raw bytes; validation (docs/interface.md section 1) is
// ingest's job, so every Event reaching the learner is well formed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace recstream::learner {

enum class Task : uint8_t { kClick = 0, kPurchase = 1, kRating = 2 };
inline constexpr int kNumTasks = 3;
inline constexpr Task kAllTasks[kNumTasks] = {Task::kClick, Task::kPurchase, Task::kRating};

// "click", "purchase", "rating".
std::string_view TaskName(Task task);
// Inverse of TaskName; nullopt for anything else.
std::optional<Task> ParseTask(std::string_view name);

struct Event {
  Task task = Task::kClick;
  // Canonical ids: an integer id is rendered in decimal, so 42 and "42" are
  // the same user.
  std::string user;
  std::string item;
  // 0 or 1 for click and purchase; the rating value for rating.
  float label = 1.0f;
  int64_t ts_ms = 0;
  std::vector<std::string> user_features;
  std::vector<std::string> item_features;
  // Ground truth from the generator (p for click/purchase, mean for rating);
  // only eval reads it, never the learner.
  bool has_truth = false;
  double truth = 0.0;

  bool operator==(const Event&) const = default;
};

}  // namespace recstream::learner
