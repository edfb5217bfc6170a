#include "histogram.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace layerwise {

namespace {
// Below this many values a parallel region costs more than it saves on 2 cores.
constexpr size_t kParallelMin = 1 << 16;
}  // namespace

RangeStats scan_range(const float* data, size_t n) {
  double mn = std::numeric_limits<double>::infinity();
  double mx = -std::numeric_limits<double>::infinity();
  int64_t bad = 0;
#pragma omp parallel for reduction(min : mn) reduction(max : mx) reduction(+ : bad) if (n >= kParallelMin)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
    const float v = data[i];
    if (!std::isfinite(v)) {
      ++bad;
      continue;
    }
    mn = std::min(mn, static_cast<double>(v));
    mx = std::max(mx, static_cast<double>(v));
  }
  return {mn, mx, bad};
}

void accumulate_histogram(const float* data, size_t n, int64_t* counts, size_t bins,
                          double lo, double hi, bool absolute, int64_t* below, int64_t* above) {
  const double scale = static_cast<double>(bins) / (hi - lo);
  const int64_t last = static_cast<int64_t>(bins) - 1;
  int64_t n_below = 0, n_above = 0;
#pragma omp parallel if (n >= kParallelMin) reduction(+ : n_below, n_above)
  {
    std::vector<int64_t> local(bins, 0);
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
      double v = data[i];
      if (absolute) v = std::fabs(v);
      const double pos = (v - lo) * scale;
      int64_t b;
      if (pos < 0) {
        b = 0;
        ++n_below;
      } else if (pos >= static_cast<double>(bins)) {
        b = last;
        ++n_above;
      } else {
        b = static_cast<int64_t>(pos);
      }
      ++local[b];
    }
#pragma omp critical
    for (size_t b = 0; b < bins; ++b) counts[b] += local[b];
  }
  *below = n_below;
  *above = n_above;
}

}  // namespace layerwise
