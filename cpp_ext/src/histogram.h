// Streaming activation statistics: range scan and fixed-range histogram accumulation.
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

}  // namespace layerwise
