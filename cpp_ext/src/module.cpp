// nanobind bindings for layerwise's native kernels. Every kernel releases the GIL while it
// computes and takes contiguous float32 input; dtype conversion happens once in Python.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>

#include "histogram.h"

namespace nb = nanobind;

using F32 = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64 = nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

NB_MODULE(_native, m) {
  m.doc() = "layerwise native kernels (histograms and statistics)";

  m.def(
      "scan_range",
      [](F32 data) {
        layerwise::RangeStats r;
        {
          nb::gil_scoped_release release;
          r = layerwise::scan_range(data.data(), data.shape(0));
        }
        return std::make_tuple(r.min, r.max, r.nonfinite);
      },
      nb::arg("data"), "(min, max, nonfinite_count) of a flat float32 array.");

  m.def(
      "accumulate_histogram",
      [](F32 data, I64 counts, double lo, double hi, bool absolute) {
        if (!(hi > lo)) throw nb::value_error("histogram range must satisfy hi > lo");
        if (counts.shape(0) == 0) throw nb::value_error("histogram needs at least one bin");
        int64_t below = 0, above = 0;
        {
          nb::gil_scoped_release release;
          layerwise::accumulate_histogram(data.data(), data.shape(0), counts.data(),
                                          counts.shape(0), lo, hi, absolute, &below, &above);
        }
        return std::make_tuple(below, above);
      },
      nb::arg("data"), nb::arg("counts"), nb::arg("lo"), nb::arg("hi"),
      nb::arg("absolute") = false,
      "Add data into counts (equal bins over [lo, hi)); returns (clamped_below, clamped_above).");
}
