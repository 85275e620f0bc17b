// ImplicitGenerator: a positive-only event stream of the kind real shops log
// (`recstream gen --implicit`), to develop implicit-feedback learning
// against. Calibrated to the public description of Taobao's UserBehavior
// log (page views 89.5%, carts 5.5%, favourites 2.9%, purchases 2.0%; about
// 447 items per category; most items seen once or twice); EVAL.md compares.
//
// The world.
//  - Categories have Zipf-like popularity. Each user prefers 1-3 of them.
//  - Items are created as the stream goes (new items arrive all the time),
//    each in one category, written as `item_features: ["category=cK"]`.
//  - Users arrive too. A session belongs to a new user with some
//    probability, else to an earlier user drawn in proportion to that
//    user's sessions so far, so activity is heavy-tailed: most users are
//    seen once or twice, a few have long histories.
//
// A session is a burst of 1-8 events (1.8 on average) of one user.
// Each event is, in turn:
//  - a repeat view of one of the user's own recent items (repeat views are
//    common in real logs);
//  - or a view of an item of one of the user's preferred categories (now
//    and then of any category): a new item, or an existing item of that
//    category drawn in proportion to its recent views (popularity that
//    drifts with the stream).
// Views, carts and favourites are click events with label 1; a purchase
// (rare) is a purchase event with label 1 of an item the user viewed in the
// session. There are no events with label 0 and no `truth`.
//
// Users are JSON numbers, items strings ("t123"). `ts` spans `days` days.
// The output depends only on the options.
#pragma once

#include <cstdint>
#include <ostream>

#include "common/status.h"

namespace recstream::eval {

struct ImplicitGeneratorOptions {
  uint64_t events = 0;
  uint64_t seed = 1;
  // Item categories; 0 (default): one per 640 events (about 447 items per
  // category, as in Taobao's log, at the default new-item share).
  int categories = 0;
  // Share of sessions that belong to a user never seen before; a returning
  // session's user is drawn in proportion to their sessions so far.
  double new_user_share = 0.7;
  // > 0: instead, a fixed population of this many users, each session's
  // user drawn uniformly: deep histories (events / users each), like the
  // held-out user slice of issue #28 (114 users, ~88 events each).
  int users = 0;
  // Share of views of a category that go to an item never seen before.
  double new_item_share = 0.8;
  // Share of events that view one of the user's own recent items again.
  double repeat_share = 0.12;
  // Share of events that are purchases (of an item viewed in the session).
  double purchase_share = 0.02;
  // Days the stream spans (event time).
  int days = 9;
};

// InvalidArgument naming the field when an option is out of range.
Status ValidateImplicitOptions(const ImplicitGeneratorOptions& options);

// Writes options.events JSONL lines to *out. IOError when writing fails.
Status WriteImplicitStream(const ImplicitGeneratorOptions& options, std::ostream* out);

}  // namespace recstream::eval
