// Mutual information between two scalar variables given as paired samples.
#pragma once
#include <cstddef>
#include <cstdint>

namespace layerwise {

// Joint histogram of (x, y) with equal-width bins over [xlo, xlo + bx * xw) and likewise for
// y (a width of 0 puts every value in bin 0); counts is bx * by, row-major, added into.
void joint_histogram(const float* x, const float* y, size_t n, size_t bx, size_t by, double xlo,
                     double xw, double ylo, double yw, int64_t* counts);

// Plug-in mutual information (nats) of a joint count table.
double mutual_information_from_counts(const int64_t* counts, size_t bx, size_t by);

// Kraskov-Stoegbauer-Grassberger estimator 1 (nats): eps_i is the max-norm distance to the
// k-th neighbour in (x, y); n_x(i) counts j != i with |x_j - x_i| < eps_i (<= when eps_i is
// 0, i.e. k exact duplicates); MI = psi(k) + psi(n) - mean(psi(n_x + 1) + psi(n_y + 1)).
double mutual_information_ksg(const float* x, const float* y, size_t n, size_t k);

}  // namespace layerwise
