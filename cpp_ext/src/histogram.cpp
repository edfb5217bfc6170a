#include "histogram.h"

#include <algorithm>
#include <cfloat>
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
// Thread-local uint32 sub-histograms are flushed before they could overflow.
constexpr size_t kFlushEvery = size_t(1) << 30;
constexpr float kInf = std::numeric_limits<float>::infinity();

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int thread_count() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Min / max of the finite, unsaturated values of one contiguous run, plus the counts of
// non-finite and saturated values. A value is saturated when |x| >= satf.
struct Scan {
  float mn = kInf;
  float mx = -kInf;
  int64_t bad = 0;
  int64_t sat = 0;
  int64_t ok = 0;

  void merge(const Scan& o) {
    mn = std::min(mn, o.mn);
    mx = std::max(mx, o.mx);
    bad += o.bad;
    sat += o.sat;
    ok += o.ok;
  }
};

Scan scan_run(const float* d, size_t n, float satf) {
  float mn = kInf, mx = -kInf;
  int64_t bad = 0, sat = 0;
#pragma omp simd reduction(min : mn) reduction(max : mx) reduction(+ : bad, sat)
  for (size_t i = 0; i < n; ++i) {
    // Branch-free (bitwise, not short-circuit) so the loop vectorises.
    const float x = d[i];
    const float a = std::fabs(x);
    const int fin = a <= FLT_MAX;  // 0 for NaN and +-Inf
    const int s = fin & (a >= satf);
    const int keep = fin & (s ^ 1);
    bad += fin ^ 1;
    sat += s;
    mn = std::min(mn, keep ? x : kInf);
    mx = std::max(mx, keep ? x : -kInf);
  }
  Scan r;
  r.mn = mn;
  r.mx = mx;
  r.bad = bad;
  r.sat = sat;
  r.ok = static_cast<int64_t>(n) - bad - sat;
  return r;
}

// Bin of x (|x| when absolute) in a grid starting at lo with 1/width = scale; clamps to the
// grid so values that rounding puts just outside land in the end bins.
inline int64_t bin_of(float x, double lo, double scale, int64_t last, bool absolute) {
  double v = static_cast<double>(x);
  if (absolute) v = std::fabs(v);
  int64_t b = static_cast<int64_t>((v - lo) * scale);
  b = b < 0 ? 0 : b;
  return b > last ? last : b;
}

// Grows a channel's grid to cover [bottom, top]: the width grows by the smallest integer factor
// that fits the union of the old range and the batch, the lower edge moves by whole old bins
// (none for |x| histograms, else centring the union), and old bin j merges into new bin
// floor((j + shift) / factor), so every old bin lies inside exactly one new bin.
void regrid(int64_t* counts, size_t bins, double& lo, double& width, bool absolute, double bottom,
            double top, std::vector<int64_t>& scratch) {
  const double nb = static_cast<double>(bins);
  if (width == 0.0) {
    double span = top - bottom;
    if (!(span > 0.0)) span = top != 0.0 ? std::fabs(top) : 1.0;
    lo = bottom;
    width = span / nb;
    return;
  }
  const double hi = lo + nb * width;
  if (bottom >= lo && top <= hi) return;
  const double low = std::min(bottom, lo), high = std::max(top, hi);
  double factor = std::max(1.0, std::ceil((high - low) / (nb * width)));
  double shift = 0.0;
  while (true) {
    // Shifts (in old bins) that keep `low` inside: [min_shift, max_shift].
    const double min_shift = low < lo ? std::ceil((lo - low) / width) : 0.0;
    const double max_shift = std::floor((lo + nb * width * factor - high) / width);
    if (absolute ? min_shift == 0.0 && max_shift >= 0.0 : min_shift <= max_shift) {
      if (!absolute) {
        const double centre = 0.5 * (low + high) - 0.5 * nb * width * factor;
        shift = std::clamp(std::floor((lo - centre) / width + 0.5), min_shift, max_shift);
      }
      break;
    }
    factor = factor < 4.5e15 ? factor + 1.0 : factor * 2.0;
  }
  std::fill(scratch.begin(), scratch.end(), 0);
  const int64_t last = static_cast<int64_t>(bins) - 1;
  for (size_t j = 0; j < bins; ++j) {
    int64_t b = static_cast<int64_t>(std::floor((static_cast<double>(j) + shift) / factor));
    b = std::clamp<int64_t>(b, 0, last);
    scratch[b] += counts[j];
  }
  std::copy(scratch.begin(), scratch.end(), counts);
  lo -= shift * width;
  width *= factor;
}

// Per-channel scan; channel c of every element goes to out[c].
int64_t scan_channels(const float* data, Layout s, float satf, std::vector<Scan>& out) {
  const size_t n = s.outer * s.channels * s.inner;
  if (s.channels == 1) {
    Scan total;
    const int64_t blocks = static_cast<int64_t>((n + kParallelMin - 1) / kParallelMin);
#pragma omp parallel if (n >= 2 * kParallelMin)
    {
      Scan local;
#pragma omp for schedule(static) nowait
      for (int64_t b = 0; b < blocks; ++b) {
        const size_t begin = static_cast<size_t>(b) * kParallelMin;
        local.merge(scan_run(data + begin, std::min(kParallelMin, n - begin), satf));
      }
#pragma omp critical
      total.merge(local);
    }
    out[0] = total;
    return total.bad;
  }
#pragma omp parallel if (n >= kParallelMin)
  {
    const size_t nth = static_cast<size_t>(thread_count());
    const size_t tid = static_cast<size_t>(thread_id());
    const size_t c0 = s.channels * tid / nth, c1 = s.channels * (tid + 1) / nth;
    if (s.inner == 1) {
      // Channels are contiguous within a row: keep per-channel extremes and vectorise over c.
      const size_t width = c1 - c0;
      std::vector<float> mn(width, kInf), mx(width, -kInf);
      std::vector<int64_t> bad(width, 0), sat(width, 0);
      for (size_t o = 0; o < s.outer; ++o) {
        const float* row = data + o * s.channels + c0;
#pragma omp simd
        for (size_t c = 0; c < width; ++c) {
          const float x = row[c];
          const float a = std::fabs(x);
          const bool fin = a <= FLT_MAX;
          const bool st = fin && a >= satf;
          const bool keep = fin && !st;
          bad[c] += !fin;
          sat[c] += st;
          mn[c] = std::min(mn[c], keep ? x : kInf);
          mx[c] = std::max(mx[c], keep ? x : -kInf);
        }
      }
      for (size_t c = 0; c < width; ++c) {
        Scan& r = out[c0 + c];
        r.mn = mn[c];
        r.mx = mx[c];
        r.bad = bad[c];
        r.sat = sat[c];
        r.ok = static_cast<int64_t>(s.outer) - bad[c] - sat[c];
      }
    } else {
      for (size_t o = 0; o < s.outer; ++o) {
        const float* row = data + o * s.channels * s.inner;
        for (size_t c = c0; c < c1; ++c) out[c].merge(scan_run(row + c * s.inner, s.inner, satf));
      }
    }
  }
  int64_t bad = 0;
  for (const Scan& sc : out) bad += sc.bad;
  return bad;
}

// Bin indices of a block of values, vectorised: clamped to [0, bins - 1] in double before the
// truncating conversion (the same result as floor-then-clamp); saturated values get `sink`.
constexpr size_t kBlock = 256;

template <bool Absolute>
void bin_block(const float* d, size_t n, float satf, double lo, double scale, double last,
               int32_t sink, int32_t* idx) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const float x = d[i];
    double v = static_cast<double>(x);
    if (Absolute) v = std::fabs(v);
    double pos = (v - lo) * scale;
    pos = std::min(std::max(pos, 0.0), last);
    const int32_t b = static_cast<int32_t>(pos);
    idx[i] = std::fabs(x) >= satf ? sink : b;
  }
}

// Adds a contiguous run of one channel into a thread's four interleaved sub-histograms of
// bins + 1 counters (four copies break the store-to-load chain when neighbouring values share
// a bin; the extra counter is the sink of saturated values).
template <bool Absolute>
void bin_run(const float* d, size_t n, float satf, double lo, double scale, size_t bins,
             uint32_t* sub) {
  const size_t stride = bins + 1;
  int32_t idx[kBlock];
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t len = std::min(kBlock, n - start);
    bin_block<Absolute>(d + start, len, satf, lo, scale, static_cast<double>(bins - 1),
                        static_cast<int32_t>(bins), idx);
    size_t i = 0;
    for (; i + 4 <= len; i += 4) {
      ++sub[idx[i]];
      ++sub[stride + idx[i + 1]];
      ++sub[2 * stride + idx[i + 2]];
      ++sub[3 * stride + idx[i + 3]];
    }
    for (; i < len; ++i) ++sub[idx[i]];
  }
}

void accumulate_tensor(const float* data, size_t n, float satf, HistogramState& st) {
  const size_t bins = st.bins, stride = bins + 1;
  const double lo = st.lo[0], scale = 1.0 / st.width[0];
#pragma omp parallel if (n >= kParallelMin)
  {
    std::vector<uint32_t> sub(4 * stride, 0);
    std::vector<int64_t> local(bins, 0);
    const size_t nth = static_cast<size_t>(thread_count());
    const size_t tid = static_cast<size_t>(thread_id());
    const size_t begin = n * tid / nth, end = n * (tid + 1) / nth;
    for (size_t start = begin; start < end; start += kFlushEvery) {
      const size_t len = std::min(kFlushEvery, end - start);
      if (st.absolute)
        bin_run<true>(data + start, len, satf, lo, scale, bins, sub.data());
      else
        bin_run<false>(data + start, len, satf, lo, scale, bins, sub.data());
      for (size_t k = 0; k < 4; ++k)
        for (size_t b = 0; b < bins; ++b) local[b] += sub[k * stride + b];
      std::fill(sub.begin(), sub.end(), 0);
    }
#pragma omp critical
    for (size_t b = 0; b < bins; ++b) st.counts[b] += local[b];
  }
}

void accumulate_channels(const float* data, Layout s, float satf, HistogramState& st) {
  const size_t bins = st.bins;
  const int64_t last = static_cast<int64_t>(bins) - 1;
  [[maybe_unused]] const size_t n = s.outer * s.channels * s.inner;
  std::vector<double> scale(s.channels);
  for (size_t c = 0; c < s.channels; ++c) scale[c] = 1.0 / st.width[c];
#pragma omp parallel if (n >= kParallelMin)
  {
    const size_t nth = static_cast<size_t>(thread_count());
    const size_t tid = static_cast<size_t>(thread_id());
    const size_t c0 = s.channels * tid / nth, c1 = s.channels * (tid + 1) / nth;
    const double lastd = static_cast<double>(last);
    const int32_t sink = static_cast<int32_t>(bins);
    int32_t idx[kBlock];
    for (size_t o = 0; o < s.outer; ++o) {
      const float* row = data + o * s.channels * s.inner;
      for (size_t c = c0; c < c1; ++c) {
        int64_t* counts = st.counts + c * bins;
        const float* run = row + c * s.inner;
        if (s.inner == 1) {
          if (std::fabs(run[0]) < satf) ++counts[bin_of(run[0], st.lo[c], scale[c], last,
                                                        st.absolute)];
          continue;
        }
        for (size_t start = 0; start < s.inner; start += kBlock) {
          const size_t len = std::min(kBlock, s.inner - start);
          if (st.absolute)
            bin_block<true>(run + start, len, satf, st.lo[c], scale[c], lastd, sink, idx);
          else
            bin_block<false>(run + start, len, satf, st.lo[c], scale[c], lastd, sink, idx);
          for (size_t i = 0; i < len; ++i)
            if (idx[i] != sink) ++counts[idx[i]];
        }
      }
    }
  }
}

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

int64_t update_histogram(const float* data, Layout shape, HistogramState& st, double saturation) {
  const float satf = static_cast<float>(saturation);  // +inf when saturation >= FLT_MAX
  std::vector<Scan> scans(shape.channels);
  const int64_t bad = scan_channels(data, shape, satf, scans);
  if (bad) return bad;
  std::vector<int64_t> scratch(st.bins);
  bool any = false;
  for (size_t c = 0; c < shape.channels; ++c) {
    const Scan& sc = scans[c];
    st.saturated[c] += sc.sat;
    if (sc.ok == 0) continue;
    any = true;
    const double mn = sc.mn, mx = sc.mx;
    const double bottom = st.absolute ? 0.0 : mn;
    const double top = st.absolute ? std::max(std::fabs(mn), std::fabs(mx)) : mx;
    regrid(st.counts + c * st.bins, st.bins, st.lo[c], st.width[c], st.absolute, bottom, top,
           scratch);
    if (st.total[c] == 0) {
      st.vmin[c] = mn;
      st.vmax[c] = mx;
    } else {
      st.vmin[c] = std::min(st.vmin[c], mn);
      st.vmax[c] = std::max(st.vmax[c], mx);
    }
    st.total[c] += sc.ok;
  }
  if (!any) return 0;
  const size_t n = shape.outer * shape.channels * shape.inner;
  if (shape.channels == 1)
    accumulate_tensor(data, n, satf, st);
  else
    accumulate_channels(data, shape, satf, st);
  return 0;
}

}  // namespace layerwise
