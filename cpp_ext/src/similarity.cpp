#include "similarity.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace layerwise {

namespace {

constexpr size_t kParallelMin = 1 << 16;
constexpr size_t kTile = 512;  // tokens per work item when features are strided
constexpr double kPi = 3.14159265358979323846;

inline void add_token(double dot, double xx, double yy, CosineSums& s) {
  if (!std::isfinite(dot) || !std::isfinite(xx) || !std::isfinite(yy)) {
    ++s.nonfinite;
    return;
  }
  if (xx == 0.0 || yy == 0.0) {
    ++s.zero;
    return;
  }
  double c = dot / (std::sqrt(xx) * std::sqrt(yy));
  c = std::clamp(c, -1.0, 1.0);
  s.cosine += c;
  s.angular += std::acos(c) / kPi;
  ++s.count;
}

}  // namespace

CosineSums cosine_sums(const float* x, const float* y, const uint8_t* mask, Layout s) {
  const size_t F = s.channels, inner = s.inner;
  [[maybe_unused]] const size_t n = s.outer * F * inner;
  const size_t tiles_per_row = (inner + kTile - 1) / kTile;
  const int64_t items = static_cast<int64_t>(inner == 1 ? s.outer : s.outer * tiles_per_row);
  CosineSums total;
  double tc = 0.0, ta = 0.0;
  int64_t tn = 0, tz = 0, tb = 0;
#pragma omp parallel if (n >= kParallelMin) reduction(+ : tc, ta, tn, tz, tb)
  {
    CosineSums local;
    std::vector<double> dot(kTile), xx(kTile), yy(kTile);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      if (inner == 1) {
        const size_t o = static_cast<size_t>(it);
        if (mask && !mask[o]) continue;
        const float* a = x + o * F;
        const float* b = y + o * F;
        double d = 0.0, p = 0.0, q = 0.0;
#pragma omp simd reduction(+ : d, p, q)
        for (size_t f = 0; f < F; ++f) {
          const double u = a[f], v = b[f];
          d += u * v;
          p += u * u;
          q += v * v;
        }
        add_token(d, p, q, local);
        continue;
      }
      const size_t o = static_cast<size_t>(it) / tiles_per_row;
      const size_t i0 = (static_cast<size_t>(it) % tiles_per_row) * kTile;
      const size_t len = std::min(kTile, inner - i0);
      std::fill(dot.begin(), dot.end(), 0.0);
      std::fill(xx.begin(), xx.end(), 0.0);
      std::fill(yy.begin(), yy.end(), 0.0);
      for (size_t f = 0; f < F; ++f) {
        const float* a = x + (o * F + f) * inner + i0;
        const float* b = y + (o * F + f) * inner + i0;
#pragma omp simd
        for (size_t i = 0; i < len; ++i) {
          const double u = a[i], v = b[i];
          dot[i] += u * v;
          xx[i] += u * u;
          yy[i] += v * v;
        }
      }
      for (size_t i = 0; i < len; ++i) {
        if (mask && !mask[o * inner + i0 + i]) continue;
        add_token(dot[i], xx[i], yy[i], local);
      }
    }
    tc += local.cosine;
    ta += local.angular;
    tn += local.count;
    tz += local.zero;
    tb += local.nonfinite;
  }
  total.cosine = tc;
  total.angular = ta;
  total.count = tn;
  total.zero = tz;
  total.nonfinite = tb;
  return total;
}

}  // namespace layerwise
