// Streaming activation statistics: range scan, fixed-range histogram accumulation, and the
// streaming per-tensor / per-channel histogram update whose range grows without losing counts.
#pragma once
#include <cstddef>
#include <cstdint>

namespace layerwise {

struct RangeStats {
  double min;
  double max;
  int64_t nonfinite;  // count of NaN or +-Inf values (excluded from min / max)
};

// Min and max of the finite values; counts the non-finite ones.
RangeStats scan_range(const float* data, size_t n);

// Adds |x| (absolute=true) or x into `bins` equal bins over [lo, hi).
// Values below lo go to bin 0 and values at or above hi to the last bin; the
// numbers of such clamped values are returned through below / above.
void accumulate_histogram(const float* data, size_t n, int64_t* counts, size_t bins,
                          double lo, double hi, bool absolute, int64_t* below, int64_t* above);

// A tensor viewed as (outer, channels, inner): channel c of element (o, i) is at
// data[(o * channels + c) * inner + i]. A per-tensor histogram is channels = 1.
struct Layout {
  size_t outer;
  size_t channels;
  size_t inner;
};

// Histogram state of `channels` histograms with `bins` bins each, all arrays owned by the
// caller. Bin b of channel c covers [lo[c] + b * width[c], lo[c] + (b + 1) * width[c]); the
// last bin also holds its upper edge. width[c] == 0 marks a channel that has seen no value.
struct HistogramState {
  int64_t* counts;    // channels * bins
  double* lo;         // channels
  double* width;      // channels
  double* vmin;       // channels: smallest binned value (signed, even when absolute)
  double* vmax;       // channels: largest binned value
  int64_t* total;     // channels: binned values
  int64_t* saturated; // channels: values with |x| >= saturation, counted but not binned
  size_t channels;
  size_t bins;
  bool absolute;      // bin |x| over [0, hi) instead of x over [lo, hi)
};

// Adds one batch. NaN / Inf values make it return their count and leave the state untouched.
// Values with |x| >= saturation are counted in `saturated` only. The range grows to cover the
// batch by multiplying the width by the smallest integer factor that fits and shifting the
// lower edge by whole old bins, merging old bins exactly (old bin j goes to new bin
// floor((j + shift) / factor)), so no count is lost or split.
int64_t update_histogram(const float* data, Layout shape, HistogramState& st, double saturation);

}  // namespace layerwise
