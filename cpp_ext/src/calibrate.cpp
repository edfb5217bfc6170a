#include "calibrate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace layerwise {

namespace {

constexpr double kEps = 1e-4;  // the smoothing count of MXNet / TensorRT / onnxruntime
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

inline double xlogx(double v) { return v > 0.0 ? v * std::log(v) : 0.0; }

// Prefix sums of one histogram row: counts, non-zero bins, c log c.
struct Prefix {
  std::vector<double> count;
  std::vector<int64_t> nonzero;
  std::vector<double> clogc;

  Prefix(const int64_t* c, size_t bins) : count(bins + 1, 0.0), nonzero(bins + 1, 0), clogc(bins + 1, 0.0) {
    for (size_t j = 0; j < bins; ++j) {
      const double v = static_cast<double>(c[j]);
      count[j + 1] = count[j] + v;
      nonzero[j + 1] = nonzero[j] + (c[j] != 0);
      clogc[j + 1] = clogc[j] + xlogx(v);
    }
  }
};

// KL(p || q) of the TensorRT flavour for window [s, e), from prefix sums in O(levels).
double kl_tensorrt(const int64_t* c, const Prefix& px, size_t bins, int64_t s, int64_t e,
                   size_t levels) {
  const double total = px.count[bins];
  if (total <= 0.0) return kNaN;
  if (px.count[e] - px.count[s] <= 0.0) return kInf;  // q would be all zeros
  const int64_t width = e - s;
  const int64_t m = width / static_cast<int64_t>(levels);
  const double left = px.count[s];
  const double right = total - px.count[e];
  const double cs = static_cast<double>(c[s]), ce = static_cast<double>(c[e - 1]);
  const double ps = cs + left, pe = ce + right;
  double sum = 0.0, qtotal = 0.0;
  for (size_t k = 0; k < levels; ++k) {
    const int64_t a = s + static_cast<int64_t>(k) * m;
    const int64_t b = k + 1 == levels ? e : a + m;
    const double q = px.count[b] - px.count[a];
    double plogp = px.clogc[b] - px.clogc[a];
    double pk = q;
    int64_t nz = px.nonzero[b] - px.nonzero[a];
    if (a == s) {
      plogp += xlogx(ps) - xlogx(cs);
      pk += left;
      nz += (c[s] == 0 && ps > 0.0);
    }
    if (b == e) {
      plogp += xlogx(pe) - xlogx(ce);
      pk += right;
      nz += (c[e - 1] == 0 && pe > 0.0);
    }
    if (nz == 0) continue;
    const double qbin = q > 0.0 ? q / static_cast<double>(nz) : kEps;
    qtotal += q > 0.0 ? q : kEps * static_cast<double>(nz);
    sum += plogp - pk * std::log(qbin);
  }
  return sum / total + std::log(qtotal / total);
}

// numpy's float32 add.reduce: pairwise summation with 8 accumulators below 128 values.
float pairwise_sum(const float* a, int64_t n) {
  if (n < 8) {
    float res = 0.0f;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    float r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// onnxruntime's `smooth_distribution` in its float32 arithmetic, in place; false when all zero.
bool smooth_f32(float* v, int64_t n) {
  int64_t zeros = 0;
  for (int64_t j = 0; j < n; ++j) zeros += v[j] == 0.0f;
  const int64_t nonzeros = n - zeros;
  if (nonzeros == 0) return false;
  const double eps1 = kEps * static_cast<double>(zeros) / static_cast<double>(nonzeros);
  const float add_zero = static_cast<float>(kEps), add_nonzero = static_cast<float>(-eps1);
  for (int64_t j = 0; j < n; ++j) v[j] = v[j] == 0.0f ? add_zero : v[j] + add_nonzero;
  return true;
}

// KL(p || q) of the onnxruntime flavour for window [s, e), emulating its float32 arithmetic
// (numpy's pairwise sums; logf may differ from numpy's SIMD log by an ulp). p, q, t are
// scratch of size bins.
double kl_onnxruntime(const int64_t* c, const Prefix& px, size_t bins, int64_t s, int64_t e,
                      size_t levels, float* p, float* q, float* t) {
  const double total = px.count[bins];
  if (total <= 0.0) return kNaN;
  const int64_t width = e - s;
  const int64_t L = static_cast<int64_t>(levels);
  const int64_t m = width / L;
  const int64_t left = c[s] + static_cast<int64_t>(px.count[s]);
  const int64_t right = c[e - 1] + static_cast<int64_t>(total - px.count[e]);
  for (int64_t j = 0; j < width; ++j) p[j] = static_cast<float>(c[s + j]);
  p[0] = static_cast<float>(left);
  if (width > 1) p[width - 1] = static_cast<float>(right);
  std::fill(q, q + width, 0.0f);
  for (int64_t k = 0; k < L; ++k) {
    const int64_t a = k * m, b = a + m;
    double level = px.count[s + b] - px.count[s + a];
    if (k == L - 1) level += px.count[e] - px.count[s + L * m];
    int64_t norm = 0;
    for (int64_t j = a; j < b; ++j) norm += p[j] != 0.0f;
    if (norm == 0) continue;
    const float value = static_cast<float>(std::trunc(level / static_cast<double>(norm)));
    for (int64_t j = a; j < b; ++j) q[j] = value;
  }
  if (!smooth_f32(p, width) || !smooth_f32(q, width)) return kInf;
  const float psum = pairwise_sum(p, width), qsum = pairwise_sum(q, width);
  for (int64_t j = 0; j < width; ++j) {
    const float pn = p[j] / psum, qn = q[j] / qsum;
    t[j] = pn * std::log(pn / qn);
  }
  return static_cast<double>(pairwise_sum(t, width));
}

// Sum of cnt * (x - q(x))^2 with q rounding half up to the levels a + k * step, k in [0, top].
double squared_error(const double* x, const double* cnt, size_t n, double a, double step,
                     double top) {
  double err = 0.0;
#pragma omp simd reduction(+ : err)
  for (size_t j = 0; j < n; ++j) {
    double u = (x[j] - a) / step;
    u = std::min(std::max(u, 0.0), top);
    const double k = static_cast<double>(static_cast<int32_t>(u + 0.5));
    const double d = x[j] - (a + k * step);
    err += cnt[j] * d * d;
  }
  return err;
}

}  // namespace

void kl_windows(const int64_t* counts, size_t channels, size_t bins, const int64_t* starts,
                const int64_t* stops, size_t windows, size_t levels, KlFlavor flavor,
                double* out) {
  std::vector<Prefix> prefix;
  prefix.reserve(channels);
  for (size_t ch = 0; ch < channels; ++ch) prefix.emplace_back(counts + ch * bins, bins);
  const int64_t items = static_cast<int64_t>(channels * windows);
#pragma omp parallel if (items * static_cast<int64_t>(levels) >= (1 << 16))
  {
    std::vector<float> p(bins), q(bins), t(bins);
#pragma omp for schedule(dynamic, 16)
    for (int64_t it = 0; it < items; ++it) {
      const size_t ch = static_cast<size_t>(it) / windows, w = static_cast<size_t>(it) % windows;
      const int64_t* c = counts + ch * bins;
      out[it] = flavor == KlFlavor::kTensorRT
                    ? kl_tensorrt(c, prefix[ch], bins, starts[w], stops[w], levels)
                    : kl_onnxruntime(c, prefix[ch], bins, starts[w], stops[w], levels, p.data(),
                                     q.data(), t.data());
    }
  }
}

void mse_windows(const int64_t* counts, size_t channels, size_t bins, const int64_t* starts,
                 const int64_t* stops, size_t windows, size_t levels, double* out) {
  // Only non-empty bins contribute: keep their centres and counts per row.
  std::vector<std::vector<double>> centre(channels), weight(channels);
  std::vector<double> total(channels, 0.0);
  for (size_t ch = 0; ch < channels; ++ch) {
    const int64_t* c = counts + ch * bins;
    for (size_t j = 0; j < bins; ++j)
      if (c[j] != 0) {
        centre[ch].push_back(static_cast<double>(j) + 0.5);
        weight[ch].push_back(static_cast<double>(c[j]));
        total[ch] += static_cast<double>(c[j]);
      }
  }
  const double top = static_cast<double>(levels - 1);
  const int64_t items = static_cast<int64_t>(channels * windows);
#pragma omp parallel for schedule(dynamic, 16) if (items * static_cast<int64_t>(bins) >= (1 << 18))
  for (int64_t it = 0; it < items; ++it) {
    const size_t ch = static_cast<size_t>(it) / windows, w = static_cast<size_t>(it) % windows;
    if (total[ch] <= 0.0) {
      out[it] = kNaN;
      continue;
    }
    const double a = static_cast<double>(starts[w]);
    const double step = (static_cast<double>(stops[w]) - a) / top;
    out[it] = squared_error(centre[ch].data(), weight[ch].data(), centre[ch].size(), a, step,
                            top) / total[ch];
  }
}

void cumulative_search(const int64_t* counts, size_t channels, size_t bins, const double* target,
                       bool strict, int64_t* out) {
  for (size_t ch = 0; ch < channels; ++ch) {
    const int64_t* c = counts + ch * bins;
    int64_t cum = 0;
    int64_t found = static_cast<int64_t>(bins) - 1;
    for (size_t j = 0; j < bins; ++j) {
      cum += c[j];
      const double v = static_cast<double>(cum);
      if (strict ? v > target[ch] : v >= target[ch]) {
        found = static_cast<int64_t>(j);
        break;
      }
    }
    out[ch] = found;
  }
}

}  // namespace layerwise
