#include "mutual_info.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace layerwise {

namespace {

constexpr size_t kParallelMin = 1 << 15;

inline int64_t bin_of(float v, double lo, double scale, int64_t last) {
  int64_t b = static_cast<int64_t>((static_cast<double>(v) - lo) * scale);
  b = b < 0 ? 0 : b;
  return b > last ? last : b;
}

// Number of j != i with |v_j - v| < eps (<= 0 when eps is 0) in the ascending array `sorted`.
int64_t count_within(const std::vector<double>& sorted, double v, double eps) {
  auto begin = sorted.begin(), end = sorted.end();
  std::vector<double>::const_iterator lo, hi;
  if (eps > 0.0) {
    lo = std::partition_point(begin, end, [&](double u) { return v - u >= eps; });
    hi = std::partition_point(lo, end, [&](double u) { return u - v < eps; });
  } else {
    lo = std::partition_point(begin, end, [&](double u) { return u < v; });
    hi = std::partition_point(lo, end, [&](double u) { return u <= v; });
  }
  return static_cast<int64_t>(hi - lo) - 1;
}

}  // namespace

void joint_histogram(const float* x, const float* y, size_t n, size_t bx, size_t by, double xlo,
                     double xw, double ylo, double yw, int64_t* counts) {
  const double xs = xw > 0.0 ? 1.0 / xw : 0.0, ys = yw > 0.0 ? 1.0 / yw : 0.0;
  const int64_t xlast = static_cast<int64_t>(bx) - 1, ylast = static_cast<int64_t>(by) - 1;
  const size_t cells = bx * by;
#pragma omp parallel if (n >= kParallelMin)
  {
    std::vector<int64_t> local(cells, 0);
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
      const int64_t a = bin_of(x[i], xlo, xs, xlast), b = bin_of(y[i], ylo, ys, ylast);
      ++local[a * static_cast<int64_t>(by) + b];
    }
#pragma omp critical
    for (size_t j = 0; j < cells; ++j) counts[j] += local[j];
  }
}

double mutual_information_from_counts(const int64_t* counts, size_t bx, size_t by) {
  std::vector<double> row(bx, 0.0), col(by, 0.0);
  double total = 0.0;
  for (size_t a = 0; a < bx; ++a)
    for (size_t b = 0; b < by; ++b) {
      const double v = static_cast<double>(counts[a * by + b]);
      row[a] += v;
      col[b] += v;
      total += v;
    }
  if (total <= 0.0) return 0.0;
  double mi = 0.0;
  for (size_t a = 0; a < bx; ++a)
    for (size_t b = 0; b < by; ++b) {
      const double v = static_cast<double>(counts[a * by + b]);
      if (v > 0.0) mi += v * std::log(v * total / (row[a] * col[b]));
    }
  return mi / total;
}

double mutual_information_ksg(const float* x, const float* y, size_t n, size_t k) {
  // Neighbour search on a g x g grid whose edges are quantiles of x and of y (about 2k points
  // per cell whatever the marginals): rings of cells are visited outwards until no unvisited
  // point can be nearer than the current k-th distance.
  std::vector<double> sx(x, x + n), sy(y, y + n);
  std::sort(sx.begin(), sx.end());
  std::sort(sy.begin(), sy.end());
  // Quantile edges, repeats dropped (ties, e.g. the zeros of a ReLU, share one column).
  const size_t g = std::max<size_t>(1, static_cast<size_t>(std::sqrt(n / (2.0 * k))));
  auto edges = [&](const std::vector<double>& sorted) {
    std::vector<double> e{-INFINITY};  // column c holds e[c] <= v < e[c + 1]
    for (size_t c = 1; c < g; ++c)
      if (sorted[c * n / g] > e.back()) e.push_back(sorted[c * n / g]);
    e.push_back(INFINITY);
    return e;
  };
  const std::vector<double> xe = edges(sx), ye = edges(sy);
  const size_t gx = xe.size() - 1, gy = ye.size() - 1;
  auto cell_of = [](const std::vector<double>& e, double v) {
    return static_cast<size_t>(std::upper_bound(e.begin() + 1, e.end() - 1, v) - (e.begin() + 1));
  };
  std::vector<size_t> cx(n), cy(n), start(gx * gy + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    cx[i] = cell_of(xe, x[i]);
    cy[i] = cell_of(ye, y[i]);
    ++start[cx[i] * gy + cy[i] + 1];
  }
  for (size_t c = 0; c < gx * gy; ++c) start[c + 1] += start[c];
  std::vector<double> px(n), py(n);  // coordinates in cell order
  std::vector<size_t> pcx(n), pcy(n);
  {
    std::vector<size_t> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < n; ++i) {
      const size_t p = fill[cx[i] * gy + cy[i]]++;
      px[p] = x[i];
      py[p] = y[i];
      pcx[p] = cx[i];
      pcy[p] = cy[i];
    }
  }
  // psi(m) for m = 1..n, by psi(m + 1) = psi(m) + 1 / m.
  std::vector<double> psi(n + 2);
  psi[1] = -0.57721566490153286061;
  for (size_t m = 1; m + 1 < psi.size(); ++m) psi[m + 1] = psi[m] + 1.0 / static_cast<double>(m);
  const int64_t GX = static_cast<int64_t>(gx), GY = static_cast<int64_t>(gy);
  double acc = 0.0;
#pragma omp parallel reduction(+ : acc) if (n >= 512)
  {
    std::vector<double> heap;  // max-heap of the k smallest distances so far
    heap.reserve(k + 1);
#pragma omp for schedule(dynamic, 256)
    for (int64_t pi = 0; pi < static_cast<int64_t>(n); ++pi) {
      const size_t p = static_cast<size_t>(pi);
      const double xi = px[p], yi = py[p];
      const int64_t ci = static_cast<int64_t>(pcx[p]), cj = static_cast<int64_t>(pcy[p]);
      heap.clear();
      auto visit = [&](int64_t a, int64_t b) {
        if (a < 0 || b < 0 || a >= GX || b >= GY) return;
        const size_t cell = static_cast<size_t>(a * GY + b);
        for (size_t q = start[cell]; q < start[cell + 1]; ++q) {
          if (q == p) continue;
          if (heap.size() == k && heap.front() == 0.0) return;  // k exact duplicates: done
          const double d = std::max(std::fabs(px[q] - xi), std::fabs(py[q] - yi));
          if (heap.size() < k) {
            heap.push_back(d);
            std::push_heap(heap.begin(), heap.end());
          } else if (d < heap.front()) {
            std::pop_heap(heap.begin(), heap.end());
            heap.back() = d;
            std::push_heap(heap.begin(), heap.end());
          }
        }
      };
      for (int64_t r = 0;; ++r) {
        if (r == 0) {
          visit(ci, cj);
        } else {
          for (int64_t a = ci - r; a <= ci + r; ++a) {
            visit(a, cj - r);
            visit(a, cj + r);
          }
          for (int64_t b = cj - r + 1; b <= cj + r - 1; ++b) {
            visit(ci - r, b);
            visit(ci + r, b);
          }
        }
        // Unvisited points lie in columns or rows outside the box of radius r.
        double bound = INFINITY;
        if (ci - r - 1 >= 0) bound = std::min(bound, xi - xe[ci - r]);
        if (ci + r + 1 < GX) bound = std::min(bound, xe[ci + r + 1] - xi);
        if (cj - r - 1 >= 0) bound = std::min(bound, yi - ye[cj - r]);
        if (cj + r + 1 < GY) bound = std::min(bound, ye[cj + r + 1] - yi);
        if (bound == INFINITY || (heap.size() == k && heap.front() <= bound)) break;
      }
      const double eps = heap.front();
      const int64_t nx = count_within(sx, xi, eps), ny = count_within(sy, yi, eps);
      acc += psi[nx + 1] + psi[ny + 1];
    }
  }
  return psi[k] + psi[n] - acc / static_cast<double>(n);
}

}  // namespace layerwise
