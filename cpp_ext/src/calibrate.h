// Calibration objectives over histogram windows: KL divergence (entropy calibration) and
// quantization MSE, each evaluated for many candidate clipping windows at once.
//
// A window [start, stop) is a range of bins; values outside it are clipped into its end bins.
// Counts are `channels` rows of `bins` int64 each; windows are shared by all rows; results are
// channels x windows, row-major.
#pragma once
#include <cstddef>
#include <cstdint>

namespace layerwise {

enum class KlFlavor {
  // TensorRT / MXNet: q spreads each level's count over the bins where p is non-zero, the
  // last level absorbs the remainder bins; a level whose only mass is clipped outliers gets
  // q = 1e-4 per bin instead of 0; a window holding no count of its own scores +inf (MXNet's
  // smoothing fails on an all-zero q). Exact KL, O(levels) per window from prefix sums.
  kTensorRT = 0,
  // onnxruntime 1.32 `HistogramCollector.get_entropy_threshold`: q truncated to integers and
  // spread over all bins of its level, remainder bins get q = 0, p and q both smoothed with
  // eps = 1e-4, all in its float32 arithmetic (numpy pairwise sums). O(window) per window.
  kOnnxRuntime = 1,
};

void kl_windows(const int64_t* counts, size_t channels, size_t bins, const int64_t* starts,
                const int64_t* stops, size_t windows, size_t levels, KlFlavor flavor,
                double* out);

// Mean squared error, in bin-width units squared, of representing each bin by its centre
// quantized to `levels` uniform levels spanning the window's edges [start, stop] (round half
// up, clamp to the end levels).
void mse_windows(const int64_t* counts, size_t channels, size_t bins, const int64_t* starts,
                 const int64_t* stops, size_t windows, size_t levels, double* out);

// For each row, the first bin index whose cumulative count reaches target[row] (a count, not
// a fraction); `strict` asks for the first bin whose cumulative count exceeds it instead.
void cumulative_search(const int64_t* counts, size_t channels, size_t bins, const double* target,
                       bool strict, int64_t* out);

}  // namespace layerwise
