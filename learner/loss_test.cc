#include "learner/loss.h"

#include <catch2/catch.hpp>

namespace recstream::learner {
namespace {

// dL/dy against a central difference of the loss.
template <typename F>
void CheckGradient(F loss_at, float y) {
  const float h = 1e-3f;
  const double numeric = (double(loss_at(y + h)) - double(loss_at(y - h))) / (2 * h);
  INFO("y = " << y);
  CHECK(numeric == Approx(loss_at.Dy(y)).margin(2e-3));
}

TEST_CASE("Losses give their prediction and a gradient that matches the loss", "[loss]") {
  struct Logistic {
    float label;
    float operator()(float y) const { return LogisticLoss::Forward(y, label).loss; }
    float Dy(float y) const { return LogisticLoss::Forward(y, label).dy; }
  };
  for (float label : {0.0f, 1.0f})
    for (float y : {-3.0f, -0.5f, 0.0f, 0.7f, 4.0f}) CheckGradient(Logistic{label}, y);
  CHECK(LogisticLoss::Forward(0.0f, 1.0f).prediction == 0.5f);
  CHECK(std::isfinite(LogisticLoss::Forward(200.0f, 0.0f).loss));  // saturated, still finite

  const SquaredLoss squared{1.0f, 5.0f};
  const HuberLoss huber{1.0f, 5.0f, 1.0f};
  struct Rating {
    const HuberLoss* h;
    const SquaredLoss* s;
    float label;
    float operator()(float y) const {
      return h ? h->Forward(y, label).loss : s->Forward(y, label).loss;
    }
    float Dy(float y) const { return h ? h->Forward(y, label).dy : s->Forward(y, label).dy; }
  };
  for (float y : {0.5f, 2.9f, 3.5f, 6.0f}) {
    CheckGradient(Rating{nullptr, &squared, 3.0f}, y);
    CheckGradient(Rating{&huber, nullptr, 3.0f}, y);
  }
  CHECK(squared.Forward(7.0f, 3.0f).prediction == 5.0f);  // clipped to the range
  CHECK(squared.Forward(7.0f, 3.0f).dy == 4.0f);          // the gradient is not
  CHECK(huber.Forward(7.0f, 3.0f).dy == 1.0f);            // bounded by delta
  CHECK(huber.Forward(3.5f, 3.0f).loss == squared.Forward(3.5f, 3.0f).loss);

  // ESMM: both gradients against the product's loss.
  for (float label : {0.0f, 1.0f}) {
    for (float yv : {-2.0f, 0.3f}) {
      for (float yc : {-1.0f, 1.5f}) {
        auto at = [&](float a, float b) { return EsmmProductLoss::Forward(a, b, label); };
        const float h = 1e-3f;
        const auto o = at(yv, yc);
        CHECK((at(yv + h, yc).purchase.loss - at(yv - h, yc).purchase.loss) / (2 * h) ==
              Approx(o.purchase.dy).margin(2e-3));
        CHECK((at(yv, yc + h).purchase.loss - at(yv, yc - h).purchase.loss) / (2 * h) ==
              Approx(o.dy_click).margin(2e-3));
        CHECK(o.purchase.prediction == Approx(1 / (1 + std::exp(-yv)) * (1 / (1 + std::exp(-yc)))));
      }
    }
  }

  LearnerOptions options;
  options.rating_loss = RatingLoss::kHuber;
  const TaskLosses losses(options);
  CHECK(losses.Forward(Task::kRating, 9.0f, 3.0f).dy == options.huber_delta);
  CHECK(losses.Forward(Task::kPurchase, 0.0f, 1.0f).dy == -0.5f);
}

}  // namespace
}  // namespace recstream::learner
