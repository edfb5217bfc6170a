// Per-token similarity between a block's input and output, reduced in one pass.
#pragma once
#include <cstddef>
#include <cstdint>

#include "histogram.h"

namespace layerwise {

struct CosineSums {
  double cosine = 0.0;   // sum over counted tokens of cos(x_t, y_t)
  double angular = 0.0;  // sum of arccos(cos) / pi
  int64_t count = 0;     // tokens counted
  int64_t zero = 0;      // tokens skipped because x_t or y_t has zero norm
  int64_t nonfinite = 0; // tokens whose values hold NaN / Inf (nothing else is valid then)
};

// Tokens are the (outer, inner) positions of a (outer, features, inner) layout; mask, when not
// null, holds outer * inner flags and only tokens with a non-zero flag are counted.
CosineSums cosine_sums(const float* x, const float* y, const uint8_t* mask, Layout shape);

}  // namespace layerwise
