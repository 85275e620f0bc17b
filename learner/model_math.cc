#include "learner/model_math.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace recstream::learner {
namespace {

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

}  // namespace

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
      da(shape.hidden()) {}

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
         (p_ > 0 ? " pretrained=" + std::to_string(p_) : std::string());
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

float ModelShape::ForwardTask(const float* dense, int t, float bias, Forward* fw) const {
  const int d = d_, in = 3 * d_;
  float* x = fw->x.data();
  float dot = 0.0f;
  for (int k = 0; k < d; ++k) {
    x[k] = fw->u[k] * fw->v[k];
    x[d + k] = fw->u[k];
    x[2 * d + k] = fw->v[k];
    dot += x[k];
  }
  fw->dot = dot;
  for (int e = 0; e < e_; ++e) {
    for (int j = 0; j < h_; ++j) {
      const float* w = dense + exp_w_ + (size_t(e) * h_ + j) * in;
      float acc = dense[exp_b_ + e * h_ + j];
      acc += Dot(w, x, in);
      fw->z[e * h_ + j] = acc;
      fw->a[e * h_ + j] = acc > 0.0f ? acc : 0.0f;
    }
  }
  float* h = fw->h.data();
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
  } else {
    std::copy(fw->a.begin(), fw->a.begin() + h_, h);
  }
  const float* w = dense + head_w_ + size_t(t) * h_;
  float y = dense[head_c_ + t] + dense[head_a_ + t] * dot + bias;
  for (int j = 0; j < h_; ++j) y += w[j] * h[j];
  return y;
}

float ModelShape::BackwardTask(const float* dense, int t, float dy, Forward* fw, float* grad,
                               float* du, float* dv) const {
  const int d = d_, in = 3 * d_;
  const float* x = fw->x.data();
  const float* hw = dense + head_w_ + size_t(t) * h_;
  float* dh = fw->dh.data();
  float norm2 = 0.0f;
  for (int j = 0; j < h_; ++j) {
    grad[head_w_ + t * h_ + j] += dy * fw->h[j];
    dh[j] = dy * hw[j];
    norm2 += dh[j] * dh[j];
  }
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
  for (int e = 0; e < e_; ++e) {
    const float ge = mmoe_ ? fw->g[e] : 1.0f;
    for (int j = 0; j < h_; ++j) {
      float dz = fw->z[e * h_ + j] > 0.0f ? ge * dh[j] : 0.0f;
      if (dz == 0.0f) continue;
      float* gw = grad + exp_w_ + (size_t(e) * h_ + j) * in;
      const float* w = dense + exp_w_ + (size_t(e) * h_ + j) * in;
      for (int k = 0; k < in; ++k) {
        gw[k] += dz * x[k];
        dx[k] += dz * w[k];
      }
      grad[exp_b_ + e * h_ + j] += dz;
    }
  }
  for (int k = 0; k < d; ++k) {
    du[k] = dx[k] * fw->v[k] + dx[d + k] + dy * alpha * fw->v[k];
    dv[k] = dx[k] * fw->u[k] + dx[2 * d + k] + dy * alpha * fw->u[k];
  }
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

// Rows [r, r + R) of RowsTimesBlock, R * 2 accumulators in registers.
template <int R>
[[gnu::always_inline]] inline void RowGroup(const float* __restrict W, const float* __restrict bias,
                                            int r, int d, const V8* __restrict x, int relu_rows,
                                            V8* __restrict o) {
  const V8 zero = {};
  V8 a[R], b[R];
  for (int j = 0; j < R; ++j) a[j] = b[j] = zero + bias[r + j];
  const float* w = W + size_t(r) * d;
  for (int k = 0; k < d; ++k) {
    const V8 xa = x[2 * k], xb = x[2 * k + 1];
    for (int j = 0; j < R; ++j) {
      const float wk = w[size_t(j) * d + k];
      a[j] += wk * xa;
      b[j] += wk * xb;
    }
  }
  for (int j = 0; j < R; ++j) {
    if (r + j < relu_rows) {
      a[j] = a[j] > zero ? a[j] : zero;
      b[j] = b[j] > zero ? b[j] : zero;
    }
    o[2 * (r + j)] = a[j];
    o[2 * (r + j) + 1] = b[j];
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
  switch (rows - r) {
    case 5:
      RowGroup<5>(W, bias, r, d, x, relu_rows, o);
      break;
    case 4:
      RowGroup<4>(W, bias, r, d, x, relu_rows, o);
      break;
    case 3:
      RowGroup<3>(W, bias, r, d, x, relu_rows, o);
      break;
    case 2:
      RowGroup<2>(W, bias, r, d, x, relu_rows, o);
      break;
    case 1:
      RowGroup<1>(W, bias, r, d, x, relu_rows, o);
      break;
    default:
      break;
  }
}

// Shared-bottom heads: y[t][lane] = c[t] + alpha[t] * dot[lane]
//                                  + sum_j hw[t * h + j] * z[j][lane].
__attribute__((target_clones("arch=x86-64-v3", "default"))) void HeadsOfBlock(
    const float* __restrict hw, const float* __restrict c, const float* __restrict alpha, int h,
    const float* __restrict z, const float* __restrict dot, float* __restrict y) {
  const V8* zv = reinterpret_cast<const V8*>(z);
  const V8* dv = reinterpret_cast<const V8*>(dot);
  V8* yv = reinterpret_cast<V8*>(y);
  const V8 zero = {};
  for (int t = 0; t < kNumTasks; ++t) {
    const float* w = hw + size_t(t) * h;
    V8 a = zero + c[t], b = a;
    a += alpha[t] * dv[0], b += alpha[t] * dv[1];
    for (int j = 0; j < h; ++j) a += w[j] * zv[2 * j], b += w[j] * zv[2 * j + 1];
    yv[2 * t] = a, yv[2 * t + 1] = b;
  }
}

#pragma GCC pop_options

}  // namespace

void ModelShape::ScoreBlock(const float* dense, const UserContext& ctx, const float* block,
                            float* scratch, float* y) const {
  constexpr int L = kScoreLanes;
  const int rows = e_ * h_;
  // ctx.W stacks the expert rows, u (for u . v) and the gate rows.
  float* z = scratch;         // rows x L, after relu
  float* dot = z + rows * L;  // L: u . v
  float* gates = dot + L;     // kNumTasks * e_ rows x L (MMoE): gate logits
  RowsTimesBlock(ctx.W.data(), ctx.w.data(), int(ctx.w.size()), d_, block, rows, z);
  if (!mmoe_) {
    HeadsOfBlock(dense + head_w_, dense + head_c_, dense + head_a_, h_, z, dot, y);
    return;
  }
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
