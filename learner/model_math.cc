#include "learner/model_math.h"

#include <algorithm>
#include <cmath>
#include <random>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace recstream::learner {
Forward::Forward(const ModelShape& shape)
    : u(shape.dim()),
      v(shape.dim()),
      x(shape.input()),
      z(shape.experts() * shape.hidden()),
      a(shape.experts() * shape.hidden()),
      s(shape.experts()),
      g(shape.experts()),
      h(shape.hidden()),
      dh(shape.hidden()),
      dx(shape.input()),
      dz(shape.experts() * shape.hidden()) {}

UserContext::UserContext(const ModelShape& s)
    : u(s.dim()),
      W((size_t(s.experts()) * s.hidden() + 1 + (s.mmoe() ? kNumTasks * s.experts() : 0)) *
        s.dim()),
      w(size_t(s.experts()) * s.hidden() + 1 + (s.mmoe() ? kNumTasks * s.experts() : 0)),
      z(size_t(s.experts()) * s.hidden()),
      gate(s.experts()) {}

ModelShape::ModelShape(const LearnerOptions& o)
    : d_(o.dim),
      h_(o.hidden),
      e_(o.arch == Arch::kMmoe ? o.experts : 1),
      p_(o.pretrained_dim),
      mmoe_(o.arch == Arch::kMmoe),
      ftrl_(o.embedding_optimizer == Optimizer::kFtrl),
      rating_mid_(0.5f * (o.rating_min + o.rating_max)) {
  const size_t in = 3 * d_;
  size_t off = 0;
  exp_w_ = off, off += size_t(e_) * h_ * in;
  exp_b_ = off, off += size_t(e_) * h_;
  gate_w_ = off, off += mmoe_ ? size_t(kNumTasks) * e_ * in : 0;
  gate_b_ = off, off += mmoe_ ? size_t(kNumTasks) * e_ : 0;
  head_w_ = off, off += size_t(kNumTasks) * h_;
  head_c_ = off, off += kNumTasks;
  head_a_ = off, off += kNumTasks;
  proj_ = off, off += size_t(d_) * p_;
  size_ = off;
}

std::string ModelShape::Describe() const {
  return "recstream-v1 dim=" + std::to_string(d_) + " hidden=" + std::to_string(h_) +
         " experts=" + std::to_string(e_) + " arch=" + (mmoe_ ? "mmoe" : "shared_bottom") +
         " tasks=" + std::to_string(kNumTasks) +
         (p_ > 0 ? " pretrained=" + std::to_string(p_) : std::string()) +
         (ftrl_ ? " rows=ftrl" : "");
}

void ModelShape::Init(float* dense, uint64_t seed) const {
  std::mt19937_64 rng(seed * 7919 + 17);
  const int in = input();
  std::uniform_real_distribution<float> w_exp(-std::sqrt(6.0f / (in + h_)),
                                              std::sqrt(6.0f / (in + h_)));
  std::uniform_real_distribution<float> w_head(-std::sqrt(6.0f / (h_ + 1)) * 0.1f,
                                               std::sqrt(6.0f / (h_ + 1)) * 0.1f);
  std::fill(dense, dense + size_, 0.0f);
  for (size_t i = exp_w_; i < exp_b_; ++i) dense[i] = w_exp(rng);
  for (size_t i = head_w_; i < head_c_; ++i) dense[i] = w_head(rng);
  // Priors before any event: clicks even, purchases rare, ratings mid-scale.
  dense[head_c_ + int(Task::kClick)] = 0.0f;
  dense[head_c_ + int(Task::kPurchase)] = -3.0f;
  dense[head_c_ + int(Task::kRating)] = rating_mid_;
  for (int t = 0; t < kNumTasks; ++t) dense[head_a_ + t] = 1.0f;
  if (p_ > 0) {
    // Drawn last, so that the other blocks are the same with and without.
    const float r = 0.1f * std::sqrt(6.0f / float(d_ + p_));
    std::uniform_real_distribution<float> w_proj(-r, r);
    for (size_t i = proj_; i < size_; ++i) dense[i] = w_proj(rng);
  }
}

void ModelShape::Project(const float* dense, const float* p, float* v) const {
  for (int k = 0; k < d_; ++k) v[k] += Dot(dense + proj_ + size_t(k) * p_, p, p_);
}

void ModelShape::ProjectBackward(const float* dense, const float* p, const float* dv, float* grad,
                                 float* dp) const {
  if (dp) std::fill(dp, dp + p_, 0.0f);
  for (int k = 0; k < d_; ++k) {
    const float g = dv[k];
    if (g == 0.0f) continue;
    const float* w = dense + proj_ + size_t(k) * p_;
    float* gw = grad + proj_ + size_t(k) * p_;
    for (int j = 0; j < p_; ++j) gw[j] += g * p[j];
    if (dp)
      for (int j = 0; j < p_; ++j) dp[j] += g * w[j];
  }
}

// Training kernels. The dense layers of a training step are a few small
// matrix-vector products (hidden x 3d = 32 x 96 by default) per event; they
// run with AVX2 and FMA when the CPU has them (chosen once at start-up: the
// build targets baseline x86-64) and with the portable loops otherwise. The
// two paths round differently (FMA), so a model trained on one kind of CPU is
// not bit for bit the one trained on the other; each path is deterministic.
namespace {

bool DetectAvx2Fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// Written only at start-up and by tests (SetVectorKernelsForTesting).
bool use_avx2 = DetectAvx2Fma();

// z[j] = b[j] + W_j . x and a[j] = max(z[j], 0) for the `rows` rows of the
// row-major rows x n matrix W.
void AffineReluPortable(const float* W, const float* b, const float* x, int rows, int n, float* z,
                        float* a) {
  for (int j = 0; j < rows; ++j) {
    float acc = b[j];
    acc += Dot(W + size_t(j) * n, x, n);
    z[j] = acc;
    a[j] = acc > 0.0f ? acc : 0.0f;
  }
}

// The small loops of a step, with the pointers declared unaliased so that
// they vectorise.

// x = [u*v, u, v].
void BuildInput(const float* __restrict u, const float* __restrict v, int d, float* __restrict x) {
  for (int k = 0; k < d; ++k) {
    x[k] = u[k] * v[k];
    x[d + k] = u[k];
    x[2 * d + k] = v[k];
  }
}

// acc += c * a and out = c * b.
void ScaleTwo(float c, const float* __restrict a, const float* __restrict b, int n,
              float* __restrict acc, float* __restrict out) {
  for (int j = 0; j < n; ++j) {
    acc[j] += c * a[j];
    out[j] = c * b[j];
  }
}

// dL/du and dL/dv from dL/dx for x = [u*v, u, v] and the c (u . v) term.
void InputGradients(const float* __restrict dx, const float* __restrict u,
                    const float* __restrict v, float c, int d, float* __restrict du,
                    float* __restrict dv) {
  for (int k = 0; k < d; ++k) {
    du[k] = dx[k] * v[k] + dx[d + k] + c * v[k];
    dv[k] = dx[k] * u[k] + dx[2 * d + k] + c * u[k];
  }
}

// dz[j] = z[j] > 0 ? g dh[j] : 0.
void ReluBackwardPortable(const float* z, const float* dh, float g, int n, float* dz) {
  for (int j = 0; j < n; ++j) dz[j] = z[j] > 0.0f ? g * dh[j] : 0.0f;
}

// dx += W^T dz for the row-major rows x n matrix W.
void TransposedMatVecPortable(const float* W, const float* dz, int rows, int n, float* dx) {
  for (int j = 0; j < rows; ++j) {
    const float d = dz[j];
    if (d == 0.0f) continue;
    const float* w = W + size_t(j) * n;
    for (int k = 0; k < n; ++k) dx[k] += d * w[k];
  }
}

// gW += sum_e dz_e x_e^T and gb += sum_e dz_e over `count` examples (dz_e:
// `rows` floats at dz + e * rows, x_e: n floats at x + e * n), each element
// summed in example order.
void OuterProductsPortable(const float* dz, const float* x, int count, int rows, int n, float* gW,
                           float* gb) {
  for (int j = 0; j < rows; ++j) {
    float* gw = gW + size_t(j) * n;
    for (int e = 0; e < count; ++e) {
      const float d = dz[size_t(e) * rows + j];
      if (d == 0.0f) continue;
      const float* xe = x + size_t(e) * n;
      for (int k = 0; k < n; ++k) gw[k] += d * xe[k];
      gb[j] += d;
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)

__attribute__((target("avx2,fma"))) void AffineReluAvx2(const float* W, const float* b,
                                                        const float* x, int rows, int n, float* z,
                                                        float* a) {
  const int n8 = n & ~7;
  auto finish = [&](int j, float dot) {
    for (int k = n8; k < n; ++k) dot += W[size_t(j) * n + k] * x[k];
    const float acc = b[j] + dot;
    z[j] = acc;
    a[j] = acc > 0.0f ? acc : 0.0f;
  };
  int j = 0;
  // Four rows at a time, two accumulators each: eight independent chains
  // keep both FMA units busy, and one horizontal reduction serves 4 rows.
  for (; j + 4 <= rows; j += 4) {
    const float* w0 = W + size_t(j) * n;
    const float* w1 = w0 + n;
    const float* w2 = w1 + n;
    const float* w3 = w2 + n;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 c0 = a0, c1 = a0, c2 = a0, c3 = a0;
    int k = 0;
    for (; k + 16 <= n8; k += 16) {
      const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), x0, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), x0, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), x0, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), x0, a3);
      c0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k + 8), x1, c0);
      c1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k + 8), x1, c1);
      c2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k + 8), x1, c2);
      c3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k + 8), x1, c3);
    }
    for (; k < n8; k += 8) {
      const __m256 x0 = _mm256_loadu_ps(x + k);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), x0, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), x0, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), x0, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), x0, a3);
    }
    a0 = _mm256_add_ps(a0, c0);
    a1 = _mm256_add_ps(a1, c1);
    a2 = _mm256_add_ps(a2, c2);
    a3 = _mm256_add_ps(a3, c3);
    // Lanes of s: [r0 r1 r2 r3 | r0 r1 r2 r3] partial sums of rows j..j+3.
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    if (n8 == n) {
      const __m128 out = _mm_add_ps(_mm_loadu_ps(b + j), r);
      _mm_storeu_ps(z + j, out);
      _mm_storeu_ps(a + j, _mm_max_ps(out, _mm_setzero_ps()));
    } else {
      alignas(16) float sums[4];
      _mm_store_ps(sums, r);
      for (int i = 0; i < 4; ++i) finish(j + i, sums[i]);
    }
  }
  for (; j < rows; ++j) {
    const float* w = W + size_t(j) * n;
    __m256 acc = _mm256_setzero_ps();
    for (int k = 0; k < n8; k += 8)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), acc);
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    finish(j, _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1))));
  }
}

__attribute__((target("avx2,fma"))) void ReluBackwardAvx2(const float* z, const float* dh, float g,
                                                          int n, float* dz) {
  // A mask instead of a branch: whether a unit is on is a coin flip.
  const __m256 gv = _mm256_set1_ps(g), zero = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 on = _mm256_cmp_ps(_mm256_loadu_ps(z + j), zero, _CMP_GT_OQ);
    _mm256_storeu_ps(dz + j, _mm256_and_ps(on, _mm256_mul_ps(gv, _mm256_loadu_ps(dh + j))));
  }
  for (; j < n; ++j) dz[j] = z[j] > 0.0f ? g * dh[j] : 0.0f;
}

// Columns [k, k + 8 B) of dx += W^T dz over the rows listed in `active`,
// in B registers.
template <int B>
__attribute__((target("avx2,fma"))) inline void TransposedMatVecBlock(const float* W,
                                                                      const float* dz,
                                                                      const int* active, int count,
                                                                      int n, int k, float* dx) {
  __m256 acc[B];
  for (int i = 0; i < B; ++i) acc[i] = _mm256_loadu_ps(dx + k + 8 * i);
  for (int a = 0; a < count; ++a) {
    const int j = active[a];
    const __m256 d = _mm256_set1_ps(dz[j]);
    const float* w = W + size_t(j) * n + k;
    for (int i = 0; i < B; ++i) acc[i] = _mm256_fmadd_ps(d, _mm256_loadu_ps(w + 8 * i), acc[i]);
  }
  for (int i = 0; i < B; ++i) _mm256_storeu_ps(dx + k + 8 * i, acc[i]);
}

__attribute__((target("avx2,fma"))) void TransposedMatVecAvx2(const float* W, const float* dz,
                                                              int rows, int n, float* dx) {
  // About half the units are off (dz_j = 0). Listing the others first,
  // without a branch, skips their rows; a test per row would be a coin flip
  // for the branch predictor.
  constexpr int kPiece = 256;
  int active[kPiece];
  for (int first = 0; first < rows; first += kPiece) {
    const int end = std::min(rows, first + kPiece);
    int count = 0;
    for (int j = first; j < end; ++j) {
      active[count] = j;
      count += dz[j] != 0.0f;
    }
    // Twelve accumulators (96 columns, the default 3d) cover the latency
    // of the multiply-adds; narrower blocks for what is left.
    int k = 0;
    for (; k + 96 <= n; k += 96) TransposedMatVecBlock<12>(W, dz, active, count, n, k, dx);
    for (; k + 32 <= n; k += 32) TransposedMatVecBlock<4>(W, dz, active, count, n, k, dx);
    for (; k + 8 <= n; k += 8) TransposedMatVecBlock<1>(W, dz, active, count, n, k, dx);
    for (; k < n; ++k) {
      float acc = dx[k];
      for (int a = 0; a < count; ++a) acc += dz[active[a]] * W[size_t(active[a]) * n + k];
      dx[k] = acc;
    }
  }
}

// Rows j, j + 1 and columns [k, k + 8 B) of gW += sum_e dz_e x_e^T.
template <int B>
__attribute__((target("avx2,fma"))) inline void OuterProductsBlock(const float* dz, const float* x,
                                                                   int count, int rows, int n,
                                                                   int j, int k, float* gW) {
  float* g0 = gW + size_t(j) * n + k;
  float* g1 = g0 + n;
  __m256 a0[B], a1[B];
  for (int i = 0; i < B; ++i) {
    a0[i] = _mm256_loadu_ps(g0 + 8 * i);
    a1[i] = _mm256_loadu_ps(g1 + 8 * i);
  }
  for (int e = 0; e < count; ++e) {
    const float* de = dz + size_t(e) * rows + j;
    const __m256 d0 = _mm256_set1_ps(de[0]), d1 = _mm256_set1_ps(de[1]);
    const float* xe = x + size_t(e) * n + k;
    for (int i = 0; i < B; ++i) {
      const __m256 xv = _mm256_loadu_ps(xe + 8 * i);
      a0[i] = _mm256_fmadd_ps(d0, xv, a0[i]);
      a1[i] = _mm256_fmadd_ps(d1, xv, a1[i]);
    }
  }
  for (int i = 0; i < B; ++i) {
    _mm256_storeu_ps(g0 + 8 * i, a0[i]);
    _mm256_storeu_ps(g1 + 8 * i, a1[i]);
  }
}

__attribute__((target("avx2,fma"))) void OuterProductsAvx2(const float* dz, const float* x,
                                                           int count, int rows, int n, float* gW,
                                                           float* gb) {
  int j = 0;
  for (; j + 2 <= rows; j += 2) {
    int k = 0;
    for (; k + 48 <= n; k += 48) OuterProductsBlock<6>(dz, x, count, rows, n, j, k, gW);
    for (; k + 8 <= n; k += 8) OuterProductsBlock<1>(dz, x, count, rows, n, j, k, gW);
    for (; k < n; ++k)
      for (int r = j; r < j + 2; ++r)
        for (int e = 0; e < count; ++e)
          gW[size_t(r) * n + k] += dz[size_t(e) * rows + r] * x[size_t(e) * n + k];
  }
  for (; j < rows; ++j)  // an odd last row
    for (int e = 0; e < count; ++e) {
      const float d = dz[size_t(e) * rows + j];
      for (int k = 0; k < n; ++k) gW[size_t(j) * n + k] += d * x[size_t(e) * n + k];
    }
  // Example after example, as the portable loop sums them.
  for (int e = 0; e < count; ++e) {
    const float* de = dz + size_t(e) * rows;
    for (int r = 0; r < rows; ++r) gb[r] += de[r];
  }
}

__attribute__((target("avx2,fma"))) void AdagradAvx2(float* w, float* acc, const float* grad,
                                                     size_t n, float lr, float l2, float clip) {
  const __m256 vl2 = _mm256_set1_ps(l2), vlr = _mm256_set1_ps(lr), hi = _mm256_set1_ps(clip),
               lo = _mm256_set1_ps(-clip), eps = _mm256_set1_ps(1e-8f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 wv = _mm256_loadu_ps(w + i);
    __m256 g = _mm256_fmadd_ps(vl2, wv, _mm256_loadu_ps(grad + i));
    g = _mm256_min_ps(_mm256_max_ps(g, lo), hi);
    const __m256 a = _mm256_fmadd_ps(g, g, _mm256_loadu_ps(acc + i));
    _mm256_storeu_ps(acc + i, a);
    const __m256 step = _mm256_div_ps(_mm256_mul_ps(vlr, g), _mm256_add_ps(_mm256_sqrt_ps(a), eps));
    _mm256_storeu_ps(w + i, _mm256_sub_ps(wv, step));
  }
  for (; i < n; ++i) {
    const float g = std::clamp(grad[i] + l2 * w[i], -clip, clip);
    acc[i] += g * g;
    w[i] -= lr * g / (std::sqrt(acc[i]) + 1e-8f);
  }
}

__attribute__((target("avx2,fma"))) bool AllFiniteAvx2(const float* v, size_t n) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + i), zero, a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + i + 8), zero, a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v + i + 16), zero, a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(v + i + 24), zero, a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + i), zero, a0);
  const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, a);
  float sum = 0.0f;
  for (float l : lanes) sum += l;
  for (; i < n; ++i) sum += v[i] * 0.0f;
  return sum == 0.0f;
}

#endif

void AdagradPortable(float* w, float* acc, const float* grad, size_t n, float lr, float l2,
                     float clip) {
  size_t i = 0;
#if defined(__SSE2__)
  // The scalar formula below, four lanes at a time (sqrt and division are
  // exactly rounded in SSE too, so both loops give the same bits).
  const __m128 vl2 = _mm_set1_ps(l2), vlr = _mm_set1_ps(lr), hi = _mm_set1_ps(clip),
               lo = _mm_set1_ps(-clip), eps = _mm_set1_ps(1e-8f);
  for (; i + 4 <= n; i += 4) {
    const __m128 wv = _mm_loadu_ps(w + i);
    __m128 g = _mm_add_ps(_mm_loadu_ps(grad + i), _mm_mul_ps(vl2, wv));
    g = _mm_min_ps(_mm_max_ps(g, lo), hi);
    const __m128 a = _mm_add_ps(_mm_loadu_ps(acc + i), _mm_mul_ps(g, g));
    _mm_storeu_ps(acc + i, a);
    const __m128 step = _mm_div_ps(_mm_mul_ps(vlr, g), _mm_add_ps(_mm_sqrt_ps(a), eps));
    _mm_storeu_ps(w + i, _mm_sub_ps(wv, step));
  }
#endif
  for (; i < n; ++i) {
    const float g = std::clamp(grad[i] + l2 * w[i], -clip, clip);
    acc[i] += g * g;
    w[i] -= lr * g / (std::sqrt(acc[i]) + 1e-8f);
  }
}

// x * 0 is 0 for a finite x and NaN otherwise; NaN survives the sums.
bool AllFinitePortable(const float* v, size_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) part[k] += v[i + k] * 0.0f;
  float sum = 0.0f;
  for (; i < n; ++i) sum += v[i] * 0.0f;
  for (float p : part) sum += p;
  return sum == 0.0f;
}

void AffineRelu(const float* W, const float* b, const float* x, int rows, int n, float* z,
                float* a) {
#if defined(__x86_64__) || defined(__i386__)
  if (use_avx2) return AffineReluAvx2(W, b, x, rows, n, z, a);
#endif
  AffineReluPortable(W, b, x, rows, n, z, a);
}

void ReluBackward(const float* z, const float* dh, float g, int n, float* dz) {
#if defined(__x86_64__) || defined(__i386__)
  if (use_avx2) return ReluBackwardAvx2(z, dh, g, n, dz);
#endif
  ReluBackwardPortable(z, dh, g, n, dz);
}

void TransposedMatVec(const float* W, const float* dz, int rows, int n, float* dx) {
#if defined(__x86_64__) || defined(__i386__)
  if (use_avx2) return TransposedMatVecAvx2(W, dz, rows, n, dx);
#endif
  TransposedMatVecPortable(W, dz, rows, n, dx);
}

void OuterProducts(const float* dz, const float* x, int count, int rows, int n, float* gW,
                   float* gb) {
#if defined(__x86_64__) || defined(__i386__)
  if (use_avx2) return OuterProductsAvx2(dz, x, count, rows, n, gW, gb);
#endif
  OuterProductsPortable(dz, x, count, rows, n, gW, gb);
}

}  // namespace

bool SetVectorKernelsForTesting(bool avx2) {
  const bool before = use_avx2;
  use_avx2 = avx2 && DetectAvx2Fma();
  return before;
}

void AdagradUpdate(float* w, float* acc, const float* grad, size_t n, float lr, float l2,
                   float clip) {
#if defined(__x86_64__) || defined(__i386__)
  if (use_avx2) return AdagradAvx2(w, acc, grad, n, lr, l2, clip);
#endif
  AdagradPortable(w, acc, grad, n, lr, l2, clip);
}

bool AllFinite(const float* v, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (use_avx2) return AllFiniteAvx2(v, n);
#endif
  return AllFinitePortable(v, n);
}

float ModelShape::ForwardTask(const float* dense, int t, float bias, Forward* fw) const {
  const int d = d_, in = 3 * d_;
  float* x = fw->x.data();
  const float* u = fw->u.data();
  const float* v = fw->v.data();
  BuildInput(u, v, d, x);
  const float dot = Dot(u, v, d);
  fw->dot = dot;
  AffineRelu(dense + exp_w_, dense + exp_b_, x, e_ * h_, in, fw->z.data(), fw->a.data());
  // The shared bottom's output is the layer itself; MMoE mixes into fw->h.
  float* h = mmoe_ ? fw->h.data() : fw->a.data();
  if (mmoe_) {
    float mx = -1e30f;
    for (int e = 0; e < e_; ++e) {
      const float* w = dense + gate_w_ + (size_t(t) * e_ + e) * in;
      float acc = dense[gate_b_ + t * e_ + e];
      acc += Dot(w, x, in);
      fw->s[e] = acc;
      mx = std::max(mx, acc);
    }
    float sum = 0.0f;
    for (int e = 0; e < e_; ++e) sum += (fw->g[e] = std::exp(fw->s[e] - mx));
    for (int e = 0; e < e_; ++e) fw->g[e] /= sum;
    std::fill(h, h + h_, 0.0f);
    for (int e = 0; e < e_; ++e)
      for (int j = 0; j < h_; ++j) h[j] += fw->g[e] * fw->a[e * h_ + j];
  }
  const float* w = dense + head_w_ + size_t(t) * h_;
  return dense[head_c_ + t] + dense[head_a_ + t] * dot + bias + Dot(w, h, h_);
}

ExpertGradients::ExpertGradients(const ModelShape& shape)
    : x(size_t(kCapacity) * shape.input()),
      dz(size_t(kCapacity) * shape.experts() * shape.hidden()) {}

void ModelShape::FlushExpertGradients(ExpertGradients* pending, float* grad) const {
  if (pending->count == 0) return;
  OuterProducts(pending->dz.data(), pending->x.data(), pending->count, e_ * h_, 3 * d_,
                grad + exp_w_, grad + exp_b_);
  pending->count = 0;
}

float ModelShape::BackwardTask(const float* dense, int t, float dy, Forward* fw, float* grad,
                               float* du, float* dv, ExpertGradients* pending) const {
  const int d = d_, in = 3 * d_;
  const float* x = fw->x.data();
  const float* hw = dense + head_w_ + size_t(t) * h_;
  float* gh = grad + head_w_ + size_t(t) * h_;
  float* dh = fw->dh.data();
  const float* h = mmoe_ ? fw->h.data() : fw->a.data();
  ScaleTwo(dy, h, hw, h_, gh, dh);
  const float norm2 = Dot(dh, dh, h_);
  grad[head_c_ + t] += dy;
  grad[head_a_ + t] += dy * fw->dot;
  const float alpha = dense[head_a_ + t];
  float* dx = fw->dx.data();
  std::fill(dx, dx + in, 0.0f);
  if (mmoe_) {
    // Gate: dL/dg_e = dh . a_e; softmax backward.
    float mean = 0.0f;
    for (int e = 0; e < e_; ++e) {
      float dg = 0.0f;
      for (int j = 0; j < h_; ++j) dg += dh[j] * fw->a[e * h_ + j];
      fw->s[e] = dg;  // reuse as dL/dg
      mean += fw->g[e] * dg;
    }
    for (int e = 0; e < e_; ++e) {
      float ds = fw->g[e] * (fw->s[e] - mean);
      if (ds == 0.0f) continue;
      float* gw = grad + gate_w_ + (size_t(t) * e_ + e) * in;
      const float* w = dense + gate_w_ + (size_t(t) * e_ + e) * in;
      for (int k = 0; k < in; ++k) {
        gw[k] += ds * x[k];
        dx[k] += ds * w[k];
      }
      grad[gate_b_ + t * e_ + e] += ds;
    }
  }
  // dL/dz of every expert unit (0 where the relu is off).
  float* dz = fw->dz.data();
  for (int e = 0; e < e_; ++e) {
    const float ge = mmoe_ ? fw->g[e] : 1.0f;
    ReluBackward(fw->z.data() + e * h_, dh, ge, h_, dz + e * h_);
  }
  TransposedMatVec(dense + exp_w_, dz, e_ * h_, in, dx);
  if (pending->count == ExpertGradients::kCapacity) FlushExpertGradients(pending, grad);
  std::copy(x, x + in, pending->x.begin() + size_t(pending->count) * in);
  std::copy(dz, dz + e_ * h_, pending->dz.begin() + size_t(pending->count) * e_ * h_);
  ++pending->count;
  const float* u = fw->u.data();
  const float* v = fw->v.data();
  InputGradients(dx, u, v, dy * alpha, d, du, dv);
  return std::sqrt(norm2);
}

void ModelShape::PrepareUser(const float* dense, const float* u, UserContext* ctx) const {
  const int d = d_, in = 3 * d_;
  std::copy(u, u + d, ctx->u.begin());
  auto fold = [&](const float* w, float b, float* M, float* m) {
    // Row [A | B | C]: M = A diag(u) + C, m = B . u + b (partial sums: a
    // single running sum would be a serial chain of d additions per row).
    for (int k = 0; k < d; ++k) M[k] = w[k] * u[k] + w[2 * d + k];
    *m = b + Dot(w + d, u, d);
  };
  // W stacks [M; u; N] and w [m; 0; n].
  const size_t eh = size_t(e_) * h_;
  for (size_t r = 0; r < eh; ++r)
    fold(dense + exp_w_ + r * in, dense[exp_b_ + r], &ctx->W[r * d], &ctx->w[r]);
  std::copy(u, u + d, ctx->W.begin() + eh * d);
  ctx->w[eh] = 0.0f;
  if (mmoe_)
    for (size_t r = 0; r < size_t(kNumTasks) * e_; ++r)
      fold(dense + gate_w_ + r * in, dense[gate_b_ + r], &ctx->W[(eh + 1 + r) * d],
           &ctx->w[eh + 1 + r]);
}

void ModelShape::ScoreItem(const float* dense, UserContext& ctx, const float* v,
                           std::array<float, kNumTasks>* y) const {
  const int d = d_;
  float dot = 0.0f;
  for (int k = 0; k < d; ++k) dot += ctx.u[k] * v[k];
  for (int r = 0; r < e_ * h_; ++r) {
    const float* M = &ctx.W[size_t(r) * d];
    float acc = ctx.w[r];
    acc += Dot(M, v, d);
    ctx.z[r] = acc > 0.0f ? acc : 0.0f;
  }
  for (int t = 0; t < kNumTasks; ++t) {
    const float* hw = dense + head_w_ + size_t(t) * h_;
    float out = dense[head_c_ + t] + dense[head_a_ + t] * dot;
    if (mmoe_) {
      float mx = -1e30f;
      for (int e = 0; e < e_; ++e) {
        const size_t gr = size_t(e_) * h_ + 1 + size_t(t) * e_ + e;  // gate row in W
        const float* N = &ctx.W[gr * d];
        float acc = ctx.w[gr];
        acc += Dot(N, v, d);
        ctx.gate[e] = acc;
        mx = std::max(mx, acc);
      }
      float sum = 0.0f;
      for (int e = 0; e < e_; ++e) sum += (ctx.gate[e] = std::exp(ctx.gate[e] - mx));
      for (int e = 0; e < e_; ++e) {
        float ge = ctx.gate[e] / sum, acc = 0.0f;
        for (int j = 0; j < h_; ++j) acc += hw[j] * ctx.z[e * h_ + j];
        out += ge * acc;
      }
    } else {
      for (int j = 0; j < h_; ++j) out += hw[j] * ctx.z[j];
    }
    (*y)[t] = out;
  }
}

namespace {

// Batched scoring kernels. Each works on kScoreLanes = 16 lanes as two
// 8-float vectors (GCC vector extensions: AVX registers in the x86-64-v3
// clone, SSE pairs in the default one). Every lane goes through the same
// operations in the same order, so a lane's result never depends on the
// others. FMA contraction is allowed here (and only here): it changes the
// last bits, not the arithmetic's meaning.
typedef float V8 __attribute__((vector_size(32)));
static_assert(kScoreLanes == 16, "kernels below are written for two V8 per row");

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

// Calls f.template operator()<n>() for 1 <= n <= R (a run-time size as a
// compile-time one).
template <int R, typename F>
[[gnu::always_inline]] inline void WithSize(int n, F&& f) {
  if constexpr (R > 0) {
    if (n == R) return f.template operator()<R>();
    WithSize<R - 1>(n, f);
  }
}

// R rows times the block: a[j], b[j] (lanes 0-7, 8-15) =
// bias[j] + sum_k w[j][k] * x[k]. R * 2 accumulators in registers: six rows
// (twelve) cover the FMA latency on two pipes, four rows (eight) just do;
// per k two loads of the block and R broadcasts feed 2R FMAs.
template <int R>
[[gnu::always_inline]] inline void RowSums(const float* const* w, const float* bias, int d,
                                           const V8* __restrict x, V8* __restrict a,
                                           V8* __restrict b) {
  const V8 zero = {};
  for (int j = 0; j < R; ++j) a[j] = b[j] = zero + bias[j];
  for (int k = 0; k < d; ++k) {
    const V8 xa = x[2 * k], xb = x[2 * k + 1];
    for (int j = 0; j < R; ++j) {
      const float wk = w[j][k];
      a[j] += wk * xa;
      b[j] += wk * xb;
    }
  }
}

// Rows [r, r + R) of RowsTimesBlock.
template <int R>
[[gnu::always_inline]] inline void RowGroup(const float* __restrict W, const float* __restrict bias,
                                            int r, int d, const V8* __restrict x, int relu_rows,
                                            V8* __restrict o) {
  const V8 zero = {};
  const float* w[R];
  for (int j = 0; j < R; ++j) w[j] = W + size_t(r + j) * d;
  V8 a[R], b[R];
  RowSums<R>(w, bias + r, d, x, a, b);
  for (int j = 0; j < R; ++j) {
    if (r + j < relu_rows) {
      a[j] = a[j] > zero ? a[j] : zero;
      b[j] = b[j] > zero ? b[j] : zero;
    }
    o[2 * (r + j)] = a[j];
    o[2 * (r + j) + 1] = b[j];
  }
}

// The last `left` (< 6) rows from r: RowGroup<left>.
[[gnu::always_inline]] inline void RowTail(const float* __restrict W, const float* __restrict bias,
                                           int r, int left, int d, const V8* __restrict x,
                                           int relu_rows, V8* __restrict o) {
  WithSize<5>(left, [&]<int R>() { RowGroup<R>(W, bias, r, d, x, relu_rows, o); });
}

// Heads' sums y (kNumTasks x two V8) += hw[t][j] * relu(a[j], b[j]) for
// hidden rows j = first + i, i = skip..R-1, in order.
template <int R>
[[gnu::always_inline]] inline void AddToHeads(V8* __restrict a, V8* __restrict b, int skip,
                                              int first, const float* __restrict hw, int h,
                                              V8* __restrict y) {
  const V8 zero = {};
  for (int i = skip; i < R; ++i) {
    a[i] = a[i] > zero ? a[i] : zero;
    b[i] = b[i] > zero ? b[i] : zero;
    for (int t = 0; t < kNumTasks; ++t) {
      const float w = hw[size_t(t) * h + first + i - skip];
      y[2 * t] += w * a[i];
      y[2 * t + 1] += w * b[i];
    }
  }
}

// out[r][lane] = bias[r] + sum_k W[r * d + k] * block[k][lane] for r < rows,
// clamped at 0 for r < relu_rows. W row-major; block and out 32-byte
// aligned. Six rows at a time: twelve accumulators (enough to cover the FMA
// latency on two pipes), and per k two loads of the block and six
// broadcasts feed twelve FMAs.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void RowsTimesBlock(
    const float* __restrict W, const float* __restrict bias, int rows, int d,
    const float* __restrict block, int relu_rows, float* __restrict out) {
  const V8* x = reinterpret_cast<const V8*>(block);
  V8* o = reinterpret_cast<V8*>(out);
  int r = 0;
  for (; r + 6 <= rows; r += 6) RowGroup<6>(W, bias, r, d, x, relu_rows, o);
  RowTail(W, bias, r, rows - r, d, x, relu_rows, o);
}

// The shared bottom and its heads in one pass, without storing the hidden
// layer: W's rows 0..h-1 are the hidden units (relu), row h is u (for
// dot[lane] = u . v), and
//   y[t][lane] = c[t] + alpha[t] * dot[lane] + sum_j hw[t * h + j] * z[j][lane]
// summed in that order, as the separate heads pass it replaces did. The
// dot row shares the first group with hidden rows, and
// groups are 4 to 6 rows where h allows: a lone row would wait on FMA
// latency for its whole length.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void BottomAndHeads(
    const float* __restrict W, const float* __restrict bias, int h, int d,
    const float* __restrict block, const float* __restrict hw, const float* __restrict c,
    const float* __restrict alpha, float* __restrict y) {
  const V8* x = reinterpret_cast<const V8*>(block);
  const V8 zero = {};
  V8 acc[2 * kNumTasks] = {};  // set with the dot row below
  // The dot row and hidden rows [0, first).
  const int first = std::min(h, 5);
  WithSize<6>(first + 1, [&]<int R>() {
    const float* w[R];
    float b0[R];
    w[0] = W + size_t(h) * d, b0[0] = bias[h];
    for (int j = 1; j < R; ++j) w[j] = W + size_t(j - 1) * d, b0[j] = bias[j - 1];
    V8 a[R], b[R];
    RowSums<R>(w, b0, d, x, a, b);
    for (int t = 0; t < kNumTasks; ++t) {
      acc[2 * t] = zero + c[t];
      acc[2 * t + 1] = zero + c[t];
      acc[2 * t] += alpha[t] * a[0];
      acc[2 * t + 1] += alpha[t] * b[0];
    }
    AddToHeads<R>(a, b, 1, 0, hw, h, acc);
  });
  // The other hidden rows, six at a time; 7-9 left: 3-5 then 4.
  for (int r = first; r < h;) {
    const int left = h - r;
    const int n = left <= 6 ? left : left >= 10 ? 6 : left - 4;
    WithSize<6>(n, [&]<int R>() {
      const float* w[R];
      for (int j = 0; j < R; ++j) w[j] = W + size_t(r + j) * d;
      V8 a[R], b[R];
      RowSums<R>(w, bias + r, d, x, a, b);
      AddToHeads<R>(a, b, 0, r, hw, h, acc);
    });
    r += n;
  }
  V8* yv = reinterpret_cast<V8*>(y);
  for (int i = 0; i < 2 * kNumTasks; ++i) yv[i] = acc[i];
}

#pragma GCC pop_options

}  // namespace

void ModelShape::ScoreBlock(const float* dense, const UserContext& ctx, const float* block,
                            float* scratch, float* y) const {
  // ctx.W stacks the expert rows, u (for u . v) and the gate rows.
  if (!mmoe_) {  // no scratch needed: the hidden layer stays in registers
    BottomAndHeads(ctx.W.data(), ctx.w.data(), h_, d_, block, dense + head_w_, dense + head_c_,
                   dense + head_a_, y);
    return;
  }
  constexpr int L = kScoreLanes;
  const int rows = e_ * h_;
  float* z = scratch;         // rows x L, after relu
  float* dot = z + rows * L;  // L: u . v
  float* gates = dot + L;     // kNumTasks * e_ rows x L: gate logits
  RowsTimesBlock(ctx.W.data(), ctx.w.data(), int(ctx.w.size()), d_, block, rows, z);
  std::vector<float> g(e_);
  for (int i = 0; i < L; ++i) {
    for (int t = 0; t < kNumTasks; ++t) {
      const float* hw = dense + head_w_ + size_t(t) * h_;
      float out = dense[head_c_ + t] + dense[head_a_ + t] * dot[i];
      float mx = -1e30f;
      for (int e = 0; e < e_; ++e) mx = std::max(mx, g[e] = gates[(t * e_ + e) * L + i]);
      float sum = 0.0f;
      for (int e = 0; e < e_; ++e) sum += (g[e] = std::exp(g[e] - mx));
      for (int e = 0; e < e_; ++e) {
        float acc = 0.0f;
        for (int j = 0; j < h_; ++j) acc += hw[j] * z[(e * h_ + j) * L + i];
        out += g[e] / sum * acc;
      }
      y[t * L + i] = out;
    }
  }
}

}  // namespace recstream::learner
