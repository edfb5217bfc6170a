// nanobind bindings for layerwise's native kernels. Every kernel releases the GIL while it
// computes and takes contiguous float32 input; dtype conversion happens once in Python, and
// outputs are arrays the caller allocates. Shape checks here guard memory safety only; the
// Python wrappers raise the user-facing errors.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/tuple.h>

#include <optional>

#include "calibrate.h"
#include "histogram.h"
#include "mutual_info.h"
#include "similarity.h"

namespace nb = nanobind;
namespace lw = layerwise;

using F32 = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U8 = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64 = nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using CI64 = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F64 = nb::ndarray<double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using CF64 = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64x2 = nb::ndarray<int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using CI64x2 = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using F64x2 = nb::ndarray<double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

namespace {

void require(bool ok, const char* what) {
  if (!ok) throw nb::value_error(what);
}

lw::Layout layout(size_t size, size_t outer, size_t channels, size_t inner) {
  require(outer * channels * inner == size, "outer * channels * inner must equal data size");
  return {outer, channels, inner};
}

void check_windows(const CI64& starts, const CI64& stops, size_t bins, size_t min_width) {
  require(starts.shape(0) == stops.shape(0), "starts and stops differ in length");
  for (size_t w = 0; w < starts.shape(0); ++w) {
    const int64_t s = starts.data()[w], e = stops.data()[w];
    require(s >= 0 && e <= static_cast<int64_t>(bins) && e - s >= static_cast<int64_t>(min_width),
            "window outside the histogram or narrower than allowed");
  }
}

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "layerwise native kernels (histograms, calibration, mutual information, similarity)";

  m.def(
      "scan_range",
      [](F32 data) {
        lw::RangeStats r;
        {
          nb::gil_scoped_release release;
          r = lw::scan_range(data.data(), data.shape(0));
        }
        return std::make_tuple(r.min, r.max, r.nonfinite);
      },
      nb::arg("data"), "(min, max, nonfinite_count) of a flat float32 array.");

  m.def(
      "accumulate_histogram",
      [](F32 data, I64 counts, double lo, double hi, bool absolute) {
        require(hi > lo, "histogram range must satisfy hi > lo");
        require(counts.shape(0) > 0, "histogram needs at least one bin");
        int64_t below = 0, above = 0;
        {
          nb::gil_scoped_release release;
          lw::accumulate_histogram(data.data(), data.shape(0), counts.data(), counts.shape(0), lo,
                                   hi, absolute, &below, &above);
        }
        return std::make_tuple(below, above);
      },
      nb::arg("data"), nb::arg("counts"), nb::arg("lo"), nb::arg("hi"),
      nb::arg("absolute") = false,
      "Add data into counts (equal bins over [lo, hi)); returns (clamped_below, clamped_above).");

  m.def(
      "update_histogram",
      [](F32 data, size_t outer, size_t channels, size_t inner, I64x2 counts, F64 lo, F64 width,
         F64 vmin, F64 vmax, I64 total, I64 saturated, bool absolute, double saturation) {
        const lw::Layout shape = layout(data.shape(0), outer, channels, inner);
        require(counts.shape(0) == channels && counts.shape(1) >= 1, "counts must be (channels, bins)");
        for (size_t len : {lo.shape(0), width.shape(0), vmin.shape(0), vmax.shape(0),
                           total.shape(0), saturated.shape(0)})
          require(len == channels, "state arrays must have one entry per channel");
        lw::HistogramState st{counts.data(), lo.data(),    width.data(),     vmin.data(),
                              vmax.data(),   total.data(), saturated.data(), channels,
                              counts.shape(1), absolute};
        nb::gil_scoped_release release;
        return lw::update_histogram(data.data(), shape, st, saturation);
      },
      nb::arg("data"), nb::arg("outer"), nb::arg("channels"), nb::arg("inner"), nb::arg("counts"),
      nb::arg("lo"), nb::arg("width"), nb::arg("vmin"), nb::arg("vmax"), nb::arg("total"),
      nb::arg("saturated"), nb::arg("absolute"), nb::arg("saturation"),
      "Add a batch to a streaming histogram state in place; returns the NaN/Inf count (state "
      "untouched when non-zero).");

  m.def(
      "kl_windows",
      [](CI64x2 counts, CI64 starts, CI64 stops, size_t levels, int flavor, F64x2 out) {
        require(levels >= 2, "levels must be >= 2");
        require(flavor == 0 || flavor == 1, "flavor must be 0 (tensorrt) or 1 (onnxruntime)");
        check_windows(starts, stops, counts.shape(1), levels);
        require(out.shape(0) == counts.shape(0) && out.shape(1) == starts.shape(0),
                "out must be (channels, windows)");
        nb::gil_scoped_release release;
        lw::kl_windows(counts.data(), counts.shape(0), counts.shape(1), starts.data(), stops.data(),
                       starts.shape(0), levels, static_cast<lw::KlFlavor>(flavor), out.data());
      },
      nb::arg("counts"), nb::arg("starts"), nb::arg("stops"), nb::arg("levels"),
      nb::arg("flavor"), nb::arg("out"), "KL divergence of each window of each row into out.");

  m.def(
      "mse_windows",
      [](CI64x2 counts, CI64 starts, CI64 stops, size_t levels, F64x2 out) {
        require(levels >= 2, "levels must be >= 2");
        check_windows(starts, stops, counts.shape(1), 1);
        require(out.shape(0) == counts.shape(0) && out.shape(1) == starts.shape(0),
                "out must be (channels, windows)");
        nb::gil_scoped_release release;
        lw::mse_windows(counts.data(), counts.shape(0), counts.shape(1), starts.data(),
                        stops.data(), starts.shape(0), levels, out.data());
      },
      nb::arg("counts"), nb::arg("starts"), nb::arg("stops"), nb::arg("levels"), nb::arg("out"),
      "Quantization MSE (bin units squared) of each window of each row into out.");

  m.def(
      "cumulative_search",
      [](CI64x2 counts, CF64 target, bool strict, I64 out) {
        require(target.shape(0) == counts.shape(0) && out.shape(0) == counts.shape(0),
                "target and out need one entry per row");
        nb::gil_scoped_release release;
        lw::cumulative_search(counts.data(), counts.shape(0), counts.shape(1), target.data(),
                              strict, out.data());
      },
      nb::arg("counts"), nb::arg("target"), nb::arg("strict"), nb::arg("out"),
      "Per row, the first bin whose cumulative count reaches (or exceeds) target.");

  m.def(
      "joint_histogram",
      [](F32 x, F32 y, double xlo, double xw, double ylo, double yw, I64x2 counts) {
        require(x.shape(0) == y.shape(0), "x and y differ in length");
        nb::gil_scoped_release release;
        lw::joint_histogram(x.data(), y.data(), x.shape(0), counts.shape(0), counts.shape(1), xlo,
                            xw, ylo, yw, counts.data());
      },
      nb::arg("x"), nb::arg("y"), nb::arg("xlo"), nb::arg("xw"), nb::arg("ylo"), nb::arg("yw"),
      nb::arg("counts"), "Add the joint histogram of (x, y) into counts (bx, by).");

  m.def(
      "mutual_information_from_counts",
      [](CI64x2 counts) {
        nb::gil_scoped_release release;
        return lw::mutual_information_from_counts(counts.data(), counts.shape(0), counts.shape(1));
      },
      nb::arg("counts"), "Plug-in mutual information (nats) of a joint count table.");

  m.def(
      "mutual_information_ksg",
      [](F32 x, F32 y, size_t k) {
        require(x.shape(0) == y.shape(0), "x and y differ in length");
        require(k >= 1 && x.shape(0) > k, "need more samples than neighbours");
        nb::gil_scoped_release release;
        return lw::mutual_information_ksg(x.data(), y.data(), x.shape(0), k);
      },
      nb::arg("x"), nb::arg("y"), nb::arg("k"), "KSG (estimator 1) mutual information in nats.");

  m.def(
      "cosine_sums",
      [](F32 x, F32 y, std::optional<U8> mask, size_t outer, size_t features, size_t inner) {
        require(x.shape(0) == y.shape(0), "x and y differ in size");
        const lw::Layout shape = layout(x.shape(0), outer, features, inner);
        const uint8_t* mp = nullptr;
        if (mask) {
          require(mask->shape(0) == outer * inner, "mask needs one flag per token");
          mp = mask->data();
        }
        lw::CosineSums s;
        {
          nb::gil_scoped_release release;
          s = lw::cosine_sums(x.data(), y.data(), mp, shape);
        }
        return std::make_tuple(s.cosine, s.angular, s.count, s.zero, s.nonfinite);
      },
      nb::arg("x"), nb::arg("y"), nb::arg("mask").none(), nb::arg("outer"), nb::arg("features"),
      nb::arg("inner"),
      "(sum cos, sum arccos(cos)/pi, counted, zero_norm, nonfinite) over tokens.");
}
