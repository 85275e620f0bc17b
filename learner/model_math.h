// ModelShape: the dense part of the model and its forward and backward passes.
// Private to learner/.
//
// Input x = [u*v, u, v] (3d) for user vector u and item vector v. E experts
// (E = 1 for the shared bottom) compute a_e = relu(W_e x + b_e) of width H.
// With MMoE each task t mixes the experts with a softmax gate
// g_t = softmax(G_t x + c_t); with the shared bottom h = a_0. Task t's output
// is y_t = w_t . h_t + c_t + alpha_t (u . v) (+ user and item biases, added
// by the caller).
//
// All dense parameters live in one flat float vector; offsets below.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "learner/learner.h"

namespace recstream::learner {

class ModelShape;

// a . b with eight independent partial sums, so the compiler can keep the
// additions in vector registers (a single running sum is a serial chain:
// floats are not reassociated without -ffast-math).
inline float Dot(const float* a, const float* b, int n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int i = 0; i < 8; ++i) part[i] += a[k + i] * b[k + i];
  float sum =
      ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// Scratch buffers of one forward/backward pass. h (the mixed experts) is
// used by MMoE only; the shared bottom's output is a.
struct Forward {
  explicit Forward(const ModelShape& shape);
  std::vector<float> u, v, x, z, a, s, g, h, dh, dx, dz;
  float dot = 0.0f;
};

// The expert layers' gradient of a run of examples, deferred: BackwardTask
// records each example's input x and dL/dz here, and FlushExpertGradients
// adds sum_e dz_e x_e^T (and sum_e dz_e) to the gradient as one matrix
// product, much cheaper than a rank-1 update of the whole layer per example.
// Flushes itself when full; flush before reading the gradient.
struct ExpertGradients {
  static constexpr int kCapacity = 64;
  explicit ExpertGradients(const ModelShape& shape);
  std::vector<float> x, dz;  // kCapacity rows of input() and experts() * hidden()
  int count = 0;
};

// Per-request precomputation for scoring many items for one user:
// W_e x + b_e = M_e v + m_e with M_e = A_e diag(u) + C_e, m_e = B_e u + b_e
// (and likewise N, n for the MMoE gates).
struct UserContext {
  explicit UserContext(const ModelShape& shape);
  std::vector<float> u;
  // The rows of M (E*H x d), then u (for u . v), then the rows of N (MMoE:
  // T*E x d); w holds their offsets m, 0, n.
  std::vector<float> W, w;
  std::vector<float> z, gate;  // ScoreItem's scratch
};

// Batched scoring works on blocks of kScoreLanes items stored coordinate-
// major: value k of the item in lane i is at block[k * kScoreLanes + i].
// A block holds d + kNumTasks rows: the item vector, then its biases.
inline constexpr int kScoreLanes = 16;

// A float buffer aligned to 64 bytes (one cache line, two AVX registers).
class AlignedFloats {
 public:
  AlignedFloats() = default;
  explicit AlignedFloats(size_t n) { Resize(n); }
  // Discards the contents; the new floats are zero.
  void Resize(size_t n) {
    if (n > capacity_) {
      data_.reset(static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t(64))));
      capacity_ = n;
    }
    size_ = n;
    std::fill(data_.get(), data_.get() + n, 0.0f);
  }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<float[], Free> data_;
  size_t size_ = 0, capacity_ = 0;
};

class ModelShape {
 public:
  explicit ModelShape(const LearnerOptions& o);

  int dim() const { return d_; }
  int hidden() const { return h_; }
  int experts() const { return e_; }
  bool mmoe() const { return mmoe_; }
  int input() const { return 3 * d_; }
  size_t dense_size() const { return size_; }
  std::string Describe() const;

  void Init(float* dense, uint64_t seed) const;

  // Forward pass of task t from fw->u and fw->v; returns y_t without the
  // user and item biases, which the caller adds as `bias`.
  float ForwardTask(const float* dense, int t, float bias, Forward* fw) const;
  // Backward pass for dL/dy = dy after ForwardTask: adds dense gradients to
  // `grad` (the expert layers' through `pending`, see ExpertGradients) and
  // writes dL/du, dL/dv (d floats each). Returns |dL/dh|.
  float BackwardTask(const float* dense, int t, float dy, Forward* fw, float* grad, float* du,
                     float* dv, ExpertGradients* pending) const;
  // Adds the pending expert gradients to `grad` and empties `pending`.
  void FlushExpertGradients(ExpertGradients* pending, float* grad) const;

  // Pretrained item vectors (P = pretrained() floats, 0 = off): the item
  // vector gains W p for the d x P projection W, a dense block at the end.
  int pretrained() const { return p_; }
  // v += W p.
  void Project(const float* dense, const float* p, float* v) const;
  // For dL/dv = dv: adds dv p^T to the W block of `grad` and, when dp is not
  // null, writes dL/dp = W^T dv (P floats).
  void ProjectBackward(const float* dense, const float* p, const float* dv, float* grad,
                       float* dp) const;

  void PrepareUser(const float* dense, const float* u, UserContext* ctx) const;
  // y for all tasks, without biases; v points at d floats.
  void ScoreItem(const float* dense, UserContext& ctx, const float* v,
                 std::array<float, kNumTasks>* y) const;

  // Floats of one item block (see kScoreLanes) and of ScoreBlock's scratch.
  size_t block_floats() const { return size_t(d_ + kNumTasks) * kScoreLanes; }
  size_t score_scratch_floats() const {
    return size_t(e_ * h_ + 1 + (mmoe_ ? kNumTasks * e_ : 0)) * kScoreLanes;
  }
  // ScoreItem for the kScoreLanes items of `block` at once (vectorised; AVX2
  // and FMA when the CPU has them): y[t * kScoreLanes + i] is y_t of lane i,
  // without biases. Reads only ctx's user-side values, so one UserContext
  // may serve several threads, each with its own `scratch`
  // (score_scratch_floats(), 64-byte aligned like `block`). A lane's result
  // depends on that lane's values alone, never on its position or
  // neighbours: the same item scores bit-identically in any block. It may
  // differ from ScoreItem in the last bits (another summation order).
  void ScoreBlock(const float* dense, const UserContext& ctx, const float* block, float* scratch,
                  float* y) const;

 private:
  int d_, h_, e_, p_;
  bool mmoe_;
  bool ftrl_;  // rows carry FTRL-Proximal's state (a different row width)
  float rating_mid_;
  size_t exp_w_, exp_b_, gate_w_, gate_b_, head_w_, head_c_, head_a_, proj_, size_;
};

// Adagrad with L2 on n values, as the embedding rows and the dense layers
// use it: g = clamp(grad + l2 w, -clip, clip); acc += g^2;
// w -= lr g / (sqrt(acc) + 1e-8). Vectorised (AVX2 when the CPU has it).
void AdagradUpdate(float* w, float* acc, const float* grad, size_t n, float lr, float l2,
                   float clip);

// Tests only, with no training running: selects the AVX2/FMA kernels (when
// the CPU has them) or the portable ones; returns the previous choice.
bool SetVectorKernelsForTesting(bool avx2);

// True when no value is infinite or NaN.
bool AllFinite(const float* v, size_t n);

}  // namespace recstream::learner
