// LearnerOptions: every setting of the learner, plain data with its default
// and meaning per field (config/ builds it from the configuration keys
// model.* and learner.*, docs/interface.md section 6). Cheap to include.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "learner/event.h"

namespace recstream::learner {

enum class Arch { kSharedBottom, kMmoe };
enum class Weighting { kFixed, kUncertainty, kGradNorm, kDwa };
enum class Optimizer { kAdagrad, kAdam, kAdamW, kSgd, kFtrl };
enum class RatingLoss { kSquared, kHuber };
enum class Feedback { kAuto, kExplicit, kImplicit };

std::string_view ArchName(Arch arch);
std::string_view WeightingName(Weighting weighting);
// "adagrad", "adam", "adamw", "sgd", "ftrl".
std::string_view OptimizerName(Optimizer optimizer);
// "squared", "huber".
std::string_view RatingLossName(RatingLoss loss);
// "auto", "explicit", "implicit".
std::string_view FeedbackName(Feedback feedback);

struct LearnerOptions {
  // Embedding dimension of users, items and side features.
  int dim = 32;
  Arch arch = Arch::kSharedBottom;
  // Width of the shared bottom layer (and of each MMoE expert).
  int hidden = 32;
  // Number of MMoE experts (arch = mmoe only).
  int experts = 4;
  Weighting weighting = Weighting::kUncertainty;
  // Task loss weights for weighting = fixed, in Task order.
  std::array<float, kNumTasks> fixed_weights = {1.0f, 1.0f, 1.0f};
  // Optimizer of the embedding rows (user, item, feature vectors and their
  // biases): adagrad, sgd or ftrl (FTRL-Proximal, McMahan et al., KDD 2013,
  // with L1 strength l1 and L2 l2, learning rate lr_embedding and beta 1;
  // it keeps two state floats per value, so rows take 3 instead of 2 floats
  // per value). adam and adamw are for dense layers only.
  Optimizer embedding_optimizer = Optimizer::kAdagrad;
  // Optimizer of the dense layers (bottom, experts, gates, heads).
  Optimizer dense_optimizer = Optimizer::kAdagrad;
  // Learning rates of the embedding rows and of the dense layers.
  float lr_embedding = 0.2f;
  float lr_dense = 0.02f;
  // Learning rate of the per-task user/item/feature biases; 0 means
  // lr_embedding.
  float lr_bias = 0.05f;
  // Initial Adagrad accumulator of every embedding coordinate: > 0 damps
  // the first, otherwise sign-sized, steps of a new row.
  float adagrad_init = 1.0f;
  // Adam and AdamW moment decay rates, and AdamW's decoupled weight decay.
  float adam_beta1 = 0.9f;
  float adam_beta2 = 0.999f;
  float weight_decay = 1e-4f;
  // Learning rate of the uncertainty weights' log-variances.
  float lr_weighting = 0.001f;
  // L2 regularisation on embeddings, applied on each update of a row.
  float l2 = 1e-5f;
  // L1 regularisation of embedding rows with embedding_optimizer = ftrl:
  // coordinates whose accumulated gradient stays within l1 are exactly 0.
  float l1 = 0.0f;
  // Rows start uniform in [-init_scale, init_scale].
  float init_scale = 0.05f;
  // Each gradient is clipped to this absolute value per coordinate.
  float grad_clip = 5.0f;
  float rating_min = 1.0f;
  float rating_max = 5.0f;
  // Loss of the rating task: squared error, or Huber with threshold
  // huber_delta (squared below it, linear above).
  RatingLoss rating_loss = RatingLoss::kSquared;
  float huber_delta = 1.0f;
  // ESMM (Ma et al. 2018): p(purchase) = p(click) * p(purchase | click), the
  // purchase head modelling the second factor; purchase events then train
  // both heads through the product.
  bool esmm = false;
  // How click and purchase events are learned (docs/interface.md section 6).
  // Explicit: each event's 0/1 label by logistic loss through the task's
  // head. Implicit, for positive-only logs (views, purchases, no record of
  // what was shown and skipped): each event ranks its item above
  // implicit_negatives items sampled in proportion to their recent
  // popularity, by a sampled softmax with the sampling-bias (logQ)
  // correction of Yi et al. (RecSys 2019), on the two-tower logit
  //   a u . v + user and item biases + history match + log(1 + n),
  // a being a learned weight per length of the user's history and per
  // kind of candidate, a history item or one new to the user
  // (Model::tower_weight), n a popularity prior (Model::Prior): the item's
  // occurrences among the last negative_window positive events plus those
  // among the newest quarter of them (following drifting popularity, the
  // newest views counted twice as a recency-decayed count would weigh
  // them), mixed with its occurrences over the last 8 windows by how much
  // the window repeats itself (a stable catalogue's popularity, estimated
  // from more events; the model learns what it does not explain), the
  // history match the learned
  // weights of "is the user's p-th latest item" and "shares a feature with
  // it" per position p (the first from log(1 + implicit_negatives): a
  // repeat starts as likely as the sampled items together; the second from
  // weights that sum to that over the positions, the latest heavier: an item
  // sharing a feature with a whole history starts as likely as a repeat). Its sigmoid, less a
  // moving average of the logits of the task's events' items (Model::implicit_shift), is the task's
  // prediction (a score in (0, 1) that orders items, not a calibrated probability). Users with no
  // history get the popular items. Items enter the ring after each Train call, in event order. auto
  // (default): a task is implicit until its first event with label 0, explicit from then on (also
  // after a restore). The rating task is always explicit. An implicit task's loss weight stays at
  // its initial value: its loss says nothing about how hard the task is compared with the others.
  Feedback feedback = Feedback::kAuto;
  // Drawn once per training chunk and shared by its events (trainer.h,
  // SharedNegatives).
  int implicit_negatives = 16;
  // Each user's latest `history` items (of positive click and purchase
  // events, consecutive repeats once) shape the user's vector in every
  // task: the mean of those items' vectors (item row plus its feature rows)
  // is added, at weight 1 for implicit tasks and at a learned weight that
  // starts at 0 for the dense layers of explicit tasks (so that a stream
  // it does not help learns as without it). The mean is an input:
  // gradients do not flow into the history's items, which learn from their
  // own events. Histories are updated after each Train call, in event
  // order, and are part of the model (snapshots, store). 0 turns it off.
  int history = 30;
  // Negative sampling for positive-only logs: after each positive click or
  // purchase event, this many items drawn from the recently seen items (so
  // in proportion to their recent popularity) are learned as negatives of the
  // same task for the same user. 0 (default) turns it off.
  int negatives = 0;
  // Item occurrences remembered for negative sampling.
  int negative_window = 10000;
  // Admission (model.admit_after): a new user or item id gets a row of its
  // own at its admit_after-th occurrence (counted in an AdmissionSketch,
  // part of the stored model). Until then its events train, and requests
  // score it through, a shared prior row of its table (the learned "new
  // user" or "new item") plus its features; its history and purchases are
  // not kept. 1 (default): every id gets a row at once, and there is no
  // prior row. Side features always get rows at once.
  int admit_after = 1;
  // Expiry (model.expire.user_s): a user row not touched by an event for
  // this many seconds of event time (the events' ts; "now" is the latest ts
  // learned, so a late event never moves it back) is removed with its
  // feature list, history and purchases: from memory (its memory is reused
  // by later ids), and from the store and replicas through the next
  // snapshot's deletions. Rows are checked incrementally after each Train
  // call, a slice of the table at a time (no pause of training or
  // serving). A removed user who returns starts afresh. A restored row
  // counts as touched when expiry first looks at it after the restore (its
  // time is not stored). 0 (default) keeps rows forever.
  int64_t expire_user_s = 0;
  // The same for item rows (model.expire.item_s: with the item's feature
  // list; users' histories and purchases drop it as expiry visits them)
  // and side-feature rows (model.expire.feature_s: lists drop them as
  // expiry visits their owners). A removed item's or feature's memory is
  // reused once every user (and, for a feature, every item) was visited
  // after the removal.
  int64_t expire_item_s = 0;
  int64_t expire_feature_s = 0;
  // Memory limit (model.memory_limit_mb, MiB; 0, the default: none). The
  // rows of users used least recently leave memory once the store holds
  // them as they are, and come back from the store when an event or a
  // request needs them (learner/residency.h), so that the model's rows stay
  // within this many MiB. Needs a RowSource (Learner::SetRowSource): the
  // service's store. Item and feature rows, the dense layers and the
  // structures the limit itself needs count against it but stay in memory.
  int64_t memory_limit_mb = 0;
  // Experience replay: after each event, this many events drawn uniformly
  // from the last replay_window events are learned again (with the side
  // features their user and item have now). More passes over recent data
  // make better use of the few events of each user, at the cost of
  // throughput. 0 turns it off. Replayed events do not count in the
  // progressive metrics.
  int replay = 0;
  int replay_window = 100000;
  // Warm start from pretrained item vectors (for example text embeddings):
  // with pretrained_dim = P > 0, an item imported with ImportPretrained()
  // has the vector v = E[item] (+ its features) + W p(item) everywhere
  // (training and scoring), W being a learned d x P dense projection. The
  // vectors p stay frozen unless pretrained_trainable, when they are updated
  // like embedding rows. 0 (default) turns it off and leaves the model's
  // shape as it was.
  int pretrained_dim = 0;
  bool pretrained_trainable = false;
  // Training threads; 0 means every core.
  int threads = 0;
  // Events per parallel chunk; dense gradients are accumulated per chunk.
  int chunk = 64;
  // CPU priority of training, 0..19 (Linux nice values): when > 0, every
  // thread while it trains (the thread calling Train, and the TBB workers of
  // the learner's arena) runs with its nice value raised by this much (at
  // most 19), so that serving threads preempt training on a busy machine.
  // Each thread gets its previous priority back afterwards where the process
  // may raise priorities (CAP_SYS_NICE or RLIMIT_NICE); otherwise it keeps
  // the lower one. 0 (default) leaves priorities alone.
  int train_nice = 0;
  uint64_t seed = 42;
  // Several trainers on one model (learner/sharing.h; docs/interface.md,
  // "Several trainers"): this learner is trainer `trainer_index` of
  // `trainer_count`. With more than one, it owns the shared rows (items,
  // side features, pretrained vectors) whose id hashes to its index, and
  // trainer 0 owns the dense blocks; TakeChanges, AddChanges and
  // FollowOwners exchange the rest. 1 (default): one trainer owns all.
  int trainer_count = 1;
  int trainer_index = 0;
  // Click and purchase: precision, recall and F1 of the progressive
  // predictions count a prediction >= this as a predicted positive.
  float decision_threshold = 0.5f;
};

// Checks ranges and consistency; InvalidArgument naming the field otherwise.
Status ValidateOptions(const LearnerOptions& options);

}  // namespace recstream::learner
