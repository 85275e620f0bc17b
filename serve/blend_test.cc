// The blended `score` of /v1/score and /v1/recommend follows the configured
// serve.blend weights (README: score = click·p(click) + purchase·p(purchase)
// + rating·(rating − rating.min)/(rating.max − rating.min)).
#include <simdjson.h>

#include <catch2/catch.hpp>

#include "serve/api.h"

namespace recstream::serve {
namespace {

struct Scored {
  double click = 0, purchase = 0, rating = 0, score = 0;
};

Scored GetScore(const Api& api, const std::string& user, const std::string& item) {
  HttpRequest req;
  req.method = "GET";
  req.path = "/v1/score";
  req.query = {{"user", user}, {"item", item}};
  HttpResponse r = api.Handle(req);
  REQUIRE(r.status == 200);
  simdjson::dom::parser parser;
  simdjson::dom::element e = parser.parse(r.body).value();
  return {e["click"].get_double().value(), e["purchase"].get_double().value(),
          e["rating"].get_double().value(), e["score"].get_double().value()};
}

TEST_CASE("The blended score follows the configured blend weights", "[blend]") {
  learner::LearnerOptions lo;
  lo.threads = 1;
  std::unique_ptr<learner::Learner> model;
  REQUIRE(learner::Learner::Create(lo, &model).ok());
  std::vector<learner::Event> events;
  for (int i = 0; i < 300; ++i) {
    learner::Event e;
    e.task = learner::Task(i % 3);
    e.user = "u" + std::to_string(i % 5);
    e.item = "i" + std::to_string(i % 4);
    e.label = e.task == learner::Task::kRating ? 2.0f + float(i % 3) : float(i % 2);
    events.push_back(e);
  }
  model->Train(events);

  struct Case {
    learner::Blend blend;
    double click, purchase, rating;  // expected coefficient of each prediction
  };
  const float range = lo.rating_max - lo.rating_min;
  for (const Case& c :
       {Case{{1, 0, 0}, 1, 0, 0}, Case{{0, 1, 0}, 0, 1, 0}, Case{{0, 0, 1}, 0, 0, 1},
        Case{{0.5f, 0.3f, 0.2f}, 0.5, 0.3, 0.2}, Case{{2, 0, 3}, 2, 0, 3}}) {
    Api api(ServeOptions(), c.blend, model.get(), nullptr);
    for (const char* item : {"i0", "i3", "unknown-item"}) {
      Scored s = GetScore(api, "u1", item);
      double expected = c.click * s.click + c.purchase * s.purchase +
                        c.rating * (s.rating - lo.rating_min) / range;
      INFO(item << " blend " << c.blend.click << "/" << c.blend.purchase << "/" << c.blend.rating);
      CHECK(s.score == Approx(expected).epsilon(1e-5).margin(1e-6));
    }
  }
}

}  // namespace
}  // namespace recstream::serve
