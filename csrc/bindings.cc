// pybind11 layer: checks buffers, releases the GIL, calls the core. No math here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu_features.h"
#include "csr.h"
#include "dispatch.h"
#include "linear_ops.h"
#include "pattern_edit.h"
#include "thread_pool.h"

namespace py = pybind11;
using namespace sparseprop;

namespace sparseprop {
void register_linear_calls(py::module_& m);  // linear_calls.cc
}

namespace {

template <class T>
const char* dtype_name();
template <>
const char* dtype_name<float>() { return "float32"; }
template <>
const char* dtype_name<int32_t>() { return "int32"; }
template <>
const char* dtype_name<int64_t>() { return "int64"; }
template <>
const char* dtype_name<uint8_t>() { return "uint8"; }

// Checks dtype, C-contiguity and rank of an argument; returns it as a typed array.
template <class T>
py::array_t<T> checked(const py::handle& obj, const char* name, int ndim, bool writable = false) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array");
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(arr.dtype())));
  if (arr.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(arr.ndim()) + "-D");
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (writable && !arr.writeable()) throw py::value_error(std::string(name) + " must be writable");
  return py::reinterpret_borrow<py::array_t<T>>(arr);
}

void expect(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

// Consistency checks of the O(1) kind; the full pattern check is check_csr().
void expect_pattern(const py::array_t<int64_t>& indptr, const py::array_t<int32_t>& indices) {
  expect(indptr.shape(0) >= 1, "indptr must have at least one entry");
  const int64_t* p = indptr.data();
  const int64_t rows = indptr.shape(0) - 1;
  expect(p[0] == 0 && p[rows] == indices.shape(0),
         "indptr does not match indices (indptr[0] must be 0 and indptr[-1] must equal len(indices))");
}

struct PatternArrays {
  py::array_t<int64_t> indptr;
  py::array_t<int32_t> indices;
  int64_t rows;
};

// The linear form's (indptr, indices) as typed arrays, with the O(1) checks.
PatternArrays checked_pattern(const py::handle& indptr_o, const py::handle& indices_o) {
  PatternArrays p{checked<int64_t>(indptr_o, "indptr", 1), checked<int32_t>(indices_o, "indices", 1), 0};
  expect_pattern(p.indptr, p.indices);
  p.rows = p.indptr.shape(0) - 1;
  return p;
}

// Every perm entry must index values: one branch-free pass, one check.
void expect_perm_in_range(const int64_t* perm, int64_t nnz, int64_t n_values) {
  bool ok = true;
  for (int64_t k = 0; k < nnz; ++k) ok &= perm[k] >= 0 && perm[k] < n_values;
  expect(ok, "perm points outside values");
}

// What the kernels need to stay inside their buffers: indptr never decreasing
// and every index below `cols`. O(rows + nnz) per call, small next to the
// O(nnz * batch) kernel; it turns a pattern corrupted behind the validation's
// back (through .data or a numpy view) into an error instead of a crash.
void expect_in_bounds(const py::array_t<int64_t>& indptr, const py::array_t<int32_t>& indices,
                      int64_t cols) {
  std::string problem;
  {
    py::gil_scoped_release unlocked;
    problem = check_bounds(indptr.data(), indptr.shape(0) - 1, indices.data(), indices.shape(0), cols);
  }
  if (!problem.empty()) throw py::value_error("invalid sparsity pattern: " + problem);
}

void spmm_py(py::handle indptr_o, py::handle indices_o, py::handle values_o, py::handle perm_o,
             py::handle bias_o, py::handle x_o, py::handle y_o, int num_threads) {
  auto [indptr, indices, rows] = checked_pattern(indptr_o, indices_o);
  auto values = checked<float>(values_o, "values", 1);
  auto x = checked<float>(x_o, "x", 2);
  auto y = checked<float>(y_o, "out", 2, true);
  const int64_t nnz = indices.shape(0);
  SpmmArgs a{};
  a.indptr = indptr.data();
  a.indices = indices.data();
  a.values = values.data();
  expect(values.shape(0) == nnz, "values has " + std::to_string(values.shape(0)) +
                                     " entries but the pattern has " + std::to_string(nnz) + " nonzeros");
  py::array_t<int64_t> perm;
  if (!perm_o.is_none()) {
    perm = checked<int64_t>(perm_o, "perm", 1);
    expect(perm.shape(0) == nnz, "perm must have one entry per nonzero");
    a.perm = perm.data();
  }
  py::array_t<float> bias;
  if (!bias_o.is_none()) {
    bias = checked<float>(bias_o, "bias", 1);
    expect(bias.shape(0) == rows, "bias has " + std::to_string(bias.shape(0)) + " entries, expected " +
                                      std::to_string(rows));
    a.bias = bias.data();
  }
  expect(y.shape(0) == rows, "out must have one row per pattern row");
  expect(y.shape(1) == x.shape(1), "x and out must have the same batch length");
  expect_in_bounds(indptr, indices, x.shape(0));
  if (a.perm) expect_perm_in_range(a.perm, nnz, nnz);
  a.x = x.data();
  a.ldx = x.shape(1);
  a.y = y.mutable_data();
  a.ldy = y.shape(1);
  a.n = x.shape(1);
  py::gil_scoped_release unlocked;
  spmm(a, rows, num_threads);
}

void sddmm_py(py::handle indptr_o, py::handle indices_o, py::handle dy_o, py::handle x_o,
              py::handle out_o, int num_threads) {
  auto [indptr, indices, rows] = checked_pattern(indptr_o, indices_o);
  auto dy = checked<float>(dy_o, "dy", 2);
  auto x = checked<float>(x_o, "x", 2);
  auto out = checked<float>(out_o, "out", 1, true);
  expect(dy.shape(0) == rows, "dy must have one row per pattern row");
  expect(dy.shape(1) == x.shape(1), "dy and x must have the same batch length");
  expect(out.shape(0) == indices.shape(0), "out must have one entry per nonzero");
  expect_in_bounds(indptr, indices, x.shape(0));
  SddmmArgs a{indptr.data(), indices.data(), dy.data(), dy.shape(1), x.data(), x.shape(1),
              out.mutable_data(), x.shape(1)};
  py::gil_scoped_release unlocked;
  sddmm(a, rows, num_threads);
}

void spmv_transposed_py(py::handle indptr_o, py::handle indices_o, py::handle values_o,
                        py::handle x_o, py::handle y_o, int num_threads) {
  auto [indptr, indices, rows] = checked_pattern(indptr_o, indices_o);
  auto values = checked<float>(values_o, "values", 1);
  auto x = checked<float>(x_o, "x", 1);
  auto y = checked<float>(y_o, "out", 1, true);
  expect(values.shape(0) == indices.shape(0), "values must have one entry per nonzero");
  expect(x.shape(0) == rows, "x must have one entry per pattern row");
  expect_in_bounds(indptr, indices, y.shape(0));
  py::gil_scoped_release unlocked;
  spmv_transposed(indptr.data(), indices.data(), values.data(), rows, y.shape(0), x.data(),
                  y.mutable_data(), num_threads);
}

// The offset form has no column indices to bound, but a row range past the
// offsets would still read outside them: indptr must start at 0, never
// decrease and end at nnz (O(rows), next to the O(nnz * n) kernel).
void expect_indptr(const py::array_t<int64_t>& indptr, int64_t nnz) {
  expect(indptr.shape(0) >= 1, "indptr must have at least one entry");
  const int64_t* p = indptr.data();
  const int64_t rows = indptr.shape(0) - 1;
  bool monotone = p[0] == 0 && p[rows] == nnz;
  for (int64_t r = 0; r < rows; ++r) monotone &= p[r] <= p[r + 1];
  expect(monotone, "indptr does not match offsets (it must start at 0, never decrease and end at "
                   "their count)");
}

// Shared checks of the offset form used by convolutions: every operand window
// [offsets[k] + seg * stride, ... + n) of every segment must lie inside x.
void expect_windows(const py::array_t<int64_t>& offsets, int64_t x_size, int64_t segments,
                    int64_t x_stride, int64_t n) {
  expect(segments >= 0 && n >= 0 && x_stride >= 0, "segments, n and strides must be non-negative");
  if (segments == 0 || n == 0 || offsets.shape(0) == 0) return;
  const int64_t* o = offsets.data();
  int64_t lo = o[0], hi = o[0];
  for (int64_t k = 1; k < offsets.shape(0); ++k) {
    lo = std::min(lo, o[k]);
    hi = std::max(hi, o[k]);
  }
  expect(lo >= 0 && hi + (segments - 1) * x_stride + n <= x_size,
         "operand offsets reach outside x (offsets in [" + std::to_string(lo) + ", " +
             std::to_string(hi) + "], x has " + std::to_string(x_size) + " elements)");
}

void spmm_offsets_py(py::handle indptr_o, py::handle offsets_o, py::handle values_o, py::handle perm_o,
                     py::handle bias_o, py::handle x_o, py::handle y_o, int64_t ldy, int64_t n,
                     int64_t segments, int64_t x_segment_stride, int64_t y_segment_stride,
                     int num_threads) {
  auto indptr = checked<int64_t>(indptr_o, "indptr", 1);
  auto offsets = checked<int64_t>(offsets_o, "offsets", 1);
  auto values = checked<float>(values_o, "values", 1);
  auto x = checked<float>(x_o, "x", 1);
  auto y = checked<float>(y_o, "out", 1, true);
  const int64_t rows = indptr.shape(0) - 1, nnz = offsets.shape(0);
  expect_indptr(indptr, nnz);
  expect(ldy >= 0 && y_segment_stride >= 0, "ldy and y_segment_stride must be non-negative");
  expect(rows == 0 || segments == 0 || n == 0 ||
             (rows - 1) * ldy + (segments - 1) * y_segment_stride + n <= y.shape(0),
         "rows and segments reach outside out");
  expect_windows(offsets, x.shape(0), segments, x_segment_stride, n);
  SpmmArgs a{};
  a.indptr = indptr.data();
  a.values = values.data();
  py::array_t<int64_t> perm;
  if (!perm_o.is_none()) {
    perm = checked<int64_t>(perm_o, "perm", 1);
    expect(perm.shape(0) == nnz, "perm must have one entry per nonzero");
    expect_perm_in_range(perm.data(), nnz, values.shape(0));
    a.perm = perm.data();
  } else {
    expect(values.shape(0) == nnz, "values must have one entry per nonzero");
  }
  py::array_t<float> bias;
  if (!bias_o.is_none()) {
    bias = checked<float>(bias_o, "bias", 1);
    expect(bias.shape(0) == rows, "bias must have one entry per row");
    a.bias = bias.data();
  }
  a.x = x.data();
  a.y = y.mutable_data();
  a.ldy = ldy;
  a.n = n;
  a.offsets = offsets.data();
  a.segments = segments;
  a.x_segment_stride = x_segment_stride;
  a.y_segment_stride = y_segment_stride;
  py::gil_scoped_release unlocked;
  spmm(a, rows, num_threads);
}

void sddmm_offsets_py(py::handle indptr_o, py::handle offsets_o, py::handle dy_o, int64_t dy_offset,
                      int64_t lddy, py::handle x_o, py::handle out_o, int64_t n, int64_t segments,
                      int64_t x_segment_stride, int64_t dy_segment_stride, int num_threads) {
  auto indptr = checked<int64_t>(indptr_o, "indptr", 1);
  auto offsets = checked<int64_t>(offsets_o, "offsets", 1);
  auto dy = checked<float>(dy_o, "dy", 1);
  auto x = checked<float>(x_o, "x", 1);
  auto out = checked<float>(out_o, "out", 1, true);
  const int64_t rows = indptr.shape(0) - 1, nnz = offsets.shape(0);
  expect_indptr(indptr, nnz);
  expect(out.shape(0) == nnz, "out must have one entry per nonzero");
  expect(dy_offset >= 0 && lddy >= 0, "dy_offset and lddy must be non-negative");
  expect(rows == 0 || segments == 0 || n == 0 ||
             dy_offset + (rows - 1) * lddy + (segments - 1) * dy_segment_stride + n <= dy.shape(0),
         "rows and segments reach outside dy");
  expect_windows(offsets, x.shape(0), segments, x_segment_stride, n);
  SddmmArgs a{};
  a.indptr = indptr.data();
  a.dy = dy.data() + dy_offset;
  a.lddy = lddy;
  a.x = x.data();
  a.out = out.mutable_data();
  a.n = n;
  a.offsets = offsets.data();
  a.segments = segments;
  a.x_segment_stride = x_segment_stride;
  a.dy_segment_stride = dy_segment_stride;
  py::gil_scoped_release unlocked;
  sddmm(a, rows, num_threads);
}

void transpose_py(py::handle src_o, py::handle dst_o, int num_threads) {
  auto src = checked<float>(src_o, "src", 2);
  auto dst = checked<float>(dst_o, "dst", 2, true);
  expect(dst.shape(0) == src.shape(1) && dst.shape(1) == src.shape(0),
         "dst must have the transposed shape of src");
  TransposeArgs a{src.data(), src.shape(0), src.shape(1), src.shape(1), dst.mutable_data(), dst.shape(1)};
  py::gil_scoped_release unlocked;
  transpose(a, num_threads);
}

void to_phase_layout_py(py::handle src_o, py::handle dst_o, int64_t sh, int64_t sw, int64_t top,
                        int64_t left, int num_threads) {
  auto src = checked<float>(src_o, "src", 4);
  auto dst = checked<float>(dst_o, "dst", 6, true);
  const int64_t n = src.shape(0), c = src.shape(1), h = src.shape(2), w = src.shape(3);
  const int64_t hs = dst.shape(3), ws = dst.shape(4);
  expect(sh >= 1 && sw >= 1 && top >= 0 && left >= 0, "strides must be >= 1 and padding >= 0");
  expect(dst.shape(0) == c && dst.shape(1) == sh && dst.shape(2) == sw && dst.shape(5) == n,
         "dst must have shape (C, sh, sw, Hs, Ws, N)");
  expect(h == 0 || (h - 1 + top) / sh < hs, "the padded rows do not fit in Hs");
  expect(w == 0 || (w - 1 + left) / sw < ws, "the padded columns do not fit in Ws");
  py::gil_scoped_release unlocked;
  to_phase_layout(src.data(), n, c, h, w, sh, sw, top, left, hs, ws, dst.mutable_data(), num_threads);
}

void from_phase_layout_py(py::handle src_o, int64_t top, int64_t left, py::handle dst_o,
                          int num_threads) {
  auto src = checked<float>(src_o, "src", 6);
  auto dst = checked<float>(dst_o, "dst", 4, true);
  const int64_t n = dst.shape(0), c = dst.shape(1), h = dst.shape(2), w = dst.shape(3);
  const int64_t sh = src.shape(1), sw = src.shape(2), hs = src.shape(3), ws = src.shape(4);
  expect(src.shape(0) == c && src.shape(5) == n && top >= 0 && left >= 0,
         "src must have shape (C, sh, sw, Hs, Ws, N) matching dst (N, C, H, W)");
  expect(h == 0 || (h - 1 + top) / sh < hs, "the window's rows do not fit in Hs");
  expect(w == 0 || (w - 1 + left) / sw < ws, "the window's columns do not fit in Ws");
  py::gil_scoped_release unlocked;
  from_phase_layout(src.data(), sh, sw, top, left, hs, ws, dst.mutable_data(), n, c, h, w, num_threads);
}

void split_phases_py(py::handle src_o, py::handle dst_o, int64_t top, int64_t left,
                     int num_threads) {
  auto src = checked<float>(src_o, "src", 3);
  auto dst = checked<float>(dst_o, "dst", 5, true);
  expect(src.shape(0) == dst.shape(0), "src and dst must hold the same number of planes");
  expect(dst.shape(1) >= 1 && dst.shape(2) >= 1, "strides must be >= 1");
  py::gil_scoped_release unlocked;
  split_phases(src.data(), src.shape(0), src.shape(1), src.shape(2), dst.shape(1), dst.shape(2),
               top, left, dst.mutable_data(), dst.shape(3), dst.shape(4), num_threads);
}

void merge_phases_py(py::handle src_o, py::handle dst_o, int64_t top, int64_t left,
                     int num_threads) {
  auto src = checked<float>(src_o, "src", 5);
  auto dst = checked<float>(dst_o, "dst", 3, true);
  const int64_t sh = src.shape(1), sw = src.shape(2), h = dst.shape(1), w = dst.shape(2);
  expect(src.shape(0) == dst.shape(0), "src and dst must hold the same number of planes");
  expect(sh >= 1 && sw >= 1 && top >= 0 && left >= 0, "strides must be >= 1 and top, left >= 0");
  expect(h == 0 || (h - 1 + top) / sh < src.shape(3), "the window's rows do not fit in src");
  expect(w == 0 || (w - 1 + left) / sw < src.shape(4), "the window's columns do not fit in src");
  py::gil_scoped_release unlocked;
  merge_phases(src.data(), src.shape(0), sh, sw, src.shape(3), src.shape(4), top, left,
               dst.mutable_data(), h, w, num_threads);
}

void check_csr_py(py::handle indptr_o, py::handle indices_o, int64_t rows, int64_t cols) {
  auto indptr = checked<int64_t>(indptr_o, "indptr", 1);
  auto indices = checked<int32_t>(indices_o, "indices", 1);
  expect(rows >= 0 && cols >= 0, "shape must be non-negative");
  expect(indptr.shape(0) == rows + 1, "indptr has " + std::to_string(indptr.shape(0)) +
                                          " entries, expected rows + 1 = " + std::to_string(rows + 1));
  std::string problem;
  {
    py::gil_scoped_release unlocked;
    problem = check_csr(indptr.data(), rows, indices.data(), indices.shape(0), cols);
  }
  if (!problem.empty()) throw py::value_error("invalid sparsity pattern: " + problem);
}

uint64_t pattern_checksum_py(py::handle indptr_o, py::handle indices_o) {
  auto indptr = checked<int64_t>(indptr_o, "indptr", 1);
  auto indices = checked<int32_t>(indices_o, "indices", 1);
  return pattern_checksum(indptr.data(), indptr.shape(0), indices.data(), indices.shape(0));
}

py::tuple transpose_csr_py(py::handle indptr_o, py::handle indices_o, int64_t cols, int num_threads) {
  auto indptr = checked<int64_t>(indptr_o, "indptr", 1);
  auto indices = checked<int32_t>(indices_o, "indices", 1);
  expect_pattern(indptr, indices);
  const int64_t rows = indptr.shape(0) - 1, nnz = indices.shape(0);
  py::array_t<int64_t> t_indptr(cols + 1);
  py::array_t<int32_t> t_indices(nnz);
  py::array_t<int64_t> perm(nnz);
  {
    py::gil_scoped_release unlocked;
    transpose_csr(indptr.data(), rows, indices.data(), cols, t_indptr.mutable_data(),
                  t_indices.mutable_data(), perm.mutable_data(), num_threads);
  }
  return py::make_tuple(t_indptr, t_indices, perm);
}

// --- pruners' pattern edits (pattern_edit.h) ---------------------------------------------

const uint8_t* optional_mask(const py::handle& allowed_o, int64_t n, py::array_t<uint8_t>* keep) {
  if (allowed_o.is_none()) return nullptr;
  *keep = checked<uint8_t>(allowed_o, "allowed", 1);
  expect(keep->shape(0) == n, "allowed has " + std::to_string(keep->shape(0)) +
                                  " entries, scores have " + std::to_string(n));
  return keep->data();
}

py::object top_k_threshold_py(py::handle scores_o, py::handle allowed_o, int64_t k, int num_threads) {
  auto scores = checked<float>(scores_o, "scores", 1);
  py::array_t<uint8_t> allowed;
  const uint8_t* a = optional_mask(allowed_o, scores.shape(0), &allowed);
  expect(k >= 1, "k must be at least 1");
  TopK top{};
  SelectStatus status;
  {
    py::gil_scoped_release unlocked;
    status = top_k_threshold(scores.data(), a, scores.shape(0), k, std::max(1, num_threads), &top);
  }
  if (status == SelectStatus::kNaN) return py::none();  // the caller decides what NaN means
  expect(status == SelectStatus::kSelected,
         "k = " + std::to_string(k) + " exceeds the number of scores considered");
  return py::make_tuple(top.threshold, top.ties_kept);
}

void top_k_fill_py(py::handle scores_o, py::handle allowed_o, float threshold, int64_t ties_kept,
                   int num_threads, py::handle mask_o) {
  auto scores = checked<float>(scores_o, "scores", 1);
  auto mask = checked<uint8_t>(mask_o, "mask", 1, true);
  expect(mask.shape(0) == scores.shape(0), "mask and scores differ in length");
  py::array_t<uint8_t> allowed;
  const uint8_t* a = optional_mask(allowed_o, scores.shape(0), &allowed);
  py::gil_scoped_release unlocked;
  top_k_fill(scores.data(), a, scores.shape(0), TopK{threshold, ties_kept}, std::max(1, num_threads),
             mask.mutable_data());
}

// The outputs are the caller's (torch.empty): numpy would back them with huge pages, whose
// first touch costs about twice as much here as torch's small pages.
void mask_row_pointer_py(py::handle mask_o, int num_threads, py::handle indptr_o) {
  auto mask = checked<uint8_t>(mask_o, "mask", 2);
  auto indptr = checked<int64_t>(indptr_o, "indptr", 1, true);
  expect(indptr.shape(0) == mask.shape(0) + 1, "indptr must have rows + 1 entries");
  py::gil_scoped_release unlocked;
  mask_row_pointer(mask.data(), mask.shape(0), mask.shape(1), std::max(1, num_threads),
                   indptr.mutable_data());
}

void mask_column_indices_py(py::handle mask_o, py::handle indptr_o, int num_threads,
                            py::handle indices_o) {
  auto mask = checked<uint8_t>(mask_o, "mask", 2);
  auto indptr = checked<int64_t>(indptr_o, "indptr", 1);
  auto indices = checked<int32_t>(indices_o, "indices", 1, true);
  const int64_t rows = mask.shape(0), cols = mask.shape(1);
  expect(cols <= (int64_t(1) << 31), "a mask row is too long for int32 column indices");
  expect(indptr.shape(0) == rows + 1, "indptr must have rows + 1 entries");
  const int64_t* p = indptr.data();
  expect(p[0] == 0 && p[rows] == indices.shape(0), "indptr does not match indices");
  for (int64_t r = 0; r < rows; ++r) expect(p[r] <= p[r + 1], "indptr must be non-decreasing");
  bool matches;
  {
    py::gil_scoped_release unlocked;
    matches = mask_column_indices(mask.data(), rows, cols, p, std::max(1, num_threads),
                                  indices.mutable_data());
  }
  expect(matches, "indptr is not this mask's row pointer (a row's count differs)");
}

void gather_pattern_py(py::handle dense_o, py::handle indptr_o, py::handle indices_o,
                       int num_threads, py::handle out_o) {
  if (!py::isinstance<py::array>(dense_o) || !py::isinstance<py::array>(out_o))
    throw py::type_error("dense and out must be numpy arrays");
  py::array dense = py::reinterpret_borrow<py::array>(dense_o);
  py::array out = py::reinterpret_borrow<py::array>(out_o);
  expect(dense.ndim() == 2, "dense must be 2-D");
  expect((dense.flags() & py::array::c_style) != 0, "dense must be C-contiguous");
  const int size = int(dense.itemsize());
  expect(size == 2 || size == 4 || size == 8, "dense elements must be 2, 4 or 8 bytes");
  PatternArrays p = checked_pattern(indptr_o, indices_o);
  expect(p.rows == dense.shape(0), "indptr does not match the rows of dense");
  expect(out.ndim() == 1 && out.shape(0) == p.indices.shape(0) && out.itemsize() == size &&
             (out.flags() & py::array::c_style) && out.writeable(),
         "out must be a writable 1-D array of nnz elements of dense's size");
  const int64_t cols = dense.shape(1);
  const std::string problem = check_bounds(p.indptr.data(), p.rows, p.indices.data(),
                                           p.indices.shape(0), cols);
  if (!problem.empty()) throw py::value_error("invalid sparsity pattern: " + problem);
  py::gil_scoped_release unlocked;
  gather_pattern(dense.data(), size, p.rows, cols, p.indptr.data(), p.indices.data(),
                 std::max(1, num_threads), out.mutable_data());
}

py::dict build_info() {
  py::dict d;
  d["compiler"] = SPARSEPROP_COMPILER;
  d["flags"] = SPARSEPROP_FLAGS;
  d["arch"] = SPARSEPROP_ARCH;
  d["compiled_isas"] = compiled_isas();
  return d;
}

// One dict per compiled ISA (best last): its name, whether this CPU runs it, and the
// block parameters of its kernels, read from its kernel table.
py::list kernel_info_py() {
  const std::vector<std::string> runnable = available_isas();
  py::list out;
  for (const std::string& name : compiled_isas()) {
    const KernelTable* t = compiled_table(name);
    py::dict d;
    d["isa"] = name;
    d["available"] = std::find(runnable.begin(), runnable.end(), name) != runnable.end();
    d["vector_width"] = t->vector_width;
    d["spmm_block"] = t->spmm_block;
    d["sddmm_block"] = t->sddmm_block;
    out.append(d);
  }
  return out;
}

py::dict cpu_features_py() {
  const CpuFeatures& f = cpu_features();
  py::dict d;
  d["avx2"] = f.avx2;
  d["avx512f"] = f.avx512f;
  d["neon"] = f.neon;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparseprop native core: CSR kernels with runtime ISA dispatch";
  m.def("spmm", &spmm_py, py::arg("indptr"), py::arg("indices"), py::arg("values"),
        py::arg("perm"), py::arg("bias"), py::arg("x"), py::arg("out"), py::arg("num_threads"),
        "out[r, :] = bias[r] + sum over row r's nonzeros k of values[perm[k] or k] * x[indices[k], :]");
  m.def("sddmm", &sddmm_py, py::arg("indptr"), py::arg("indices"), py::arg("dy"), py::arg("x"),
        py::arg("out"), py::arg("num_threads"),
        "out[k] = dot(dy[r, :], x[indices[k], :]) for every nonzero k of every row r");
  m.def("spmv_transposed", &spmv_transposed_py, py::arg("indptr"), py::arg("indices"),
        py::arg("values"), py::arg("x"), py::arg("out"), py::arg("num_threads"),
        "out = W^T x for W = (indptr, indices, values) with len(out) columns: batch-1 input "
        "gradient without the transposed pattern");
  m.def("spmm_offsets", &spmm_offsets_py, py::arg("indptr"), py::arg("offsets"), py::arg("values"),
        py::arg("perm"), py::arg("bias"), py::arg("x"), py::arg("out"), py::arg("ldy"),
        py::arg("n"), py::arg("segments"), py::arg("x_segment_stride"), py::arg("y_segment_stride"),
        py::arg("num_threads"),
        "out[r*ldy + s*ys + t] = bias[r] + sum_k values[perm[k] or k] * x[offsets[k] + s*xs + t], "
        "t < n");
  m.def("sddmm_offsets", &sddmm_offsets_py, py::arg("indptr"), py::arg("offsets"), py::arg("dy"),
        py::arg("dy_offset"), py::arg("lddy"), py::arg("x"), py::arg("out"), py::arg("n"),
        py::arg("segments"), py::arg("x_segment_stride"), py::arg("dy_segment_stride"),
        py::arg("num_threads"),
        "out[k] = sum_s sum_t dy[dy_offset + r*lddy + s*dys + t] * x[offsets[k] + s*xs + t], t < n");
  m.def("transpose", &transpose_py, py::arg("src"), py::arg("dst"), py::arg("num_threads"),
        "dst = src.T for C-contiguous float32 matrices, cache-blocked and threaded");
  m.def("to_phase_layout", &to_phase_layout_py, py::arg("src"), py::arg("dst"), py::arg("sh"),
        py::arg("sw"), py::arg("top"), py::arg("left"), py::arg("num_threads"),
        "dst (C, sh, sw, Hs, Ws, N) = src (N, C, H, W) padded by (top, left), split into stride "
        "phases, batch innermost, zeros elsewhere");
  m.def("from_phase_layout", &from_phase_layout_py, py::arg("src"), py::arg("top"), py::arg("left"),
        py::arg("dst"), py::arg("num_threads"), "The inverse of to_phase_layout on real pixels");
  m.def("split_phases", &split_phases_py, py::arg("src"), py::arg("dst"), py::arg("top"),
        py::arg("left"), py::arg("num_threads"),
        "dst[p, a, b, i, j] = src[p, i*sh + a - top, j*sw + b - left] where that is inside src, "
        "else 0; src (P, H, W), dst (P, sh, sw, Hs, Ws)");
  m.def("merge_phases", &merge_phases_py, py::arg("src"), py::arg("dst"), py::arg("top"),
        py::arg("left"), py::arg("num_threads"),
        "dst[p, y, x] = src[p, (y+top) % sh, (x+left) % sw, (y+top) // sh, (x+left) // sw]");
  m.def("check_csr", &check_csr_py, py::arg("indptr"), py::arg("indices"), py::arg("rows"),
        py::arg("cols"), "Raise ValueError naming the first problem of an invalid CSR pattern");
  m.def("pattern_checksum", &pattern_checksum_py, py::arg("indptr"), py::arg("indices"),
        "A cheap position-dependent checksum of a CSR pattern, to notice in-place edits");
  m.def("transpose_csr", &transpose_csr_py, py::arg("indptr"), py::arg("indices"), py::arg("cols"),
        py::arg("num_threads") = 1,
        "Return (t_indptr, t_indices, perm): the transposed pattern and where each value comes from");
  m.def("top_k_threshold", &top_k_threshold_py, py::arg("scores"), py::arg("allowed"), py::arg("k"),
        py::arg("num_threads"),
        "(threshold, ties_kept) of the k highest scores (among allowed), or None if one is NaN");
  m.def("top_k_fill", &top_k_fill_py, py::arg("scores"), py::arg("allowed"), py::arg("threshold"),
        py::arg("ties_kept"), py::arg("num_threads"), py::arg("mask"),
        "Write the top-k mask that top_k_threshold chose into mask (uint8)");
  m.def("mask_row_pointer", &mask_row_pointer_py, py::arg("mask"), py::arg("num_threads"),
        py::arg("indptr"), "Write the CSR row pointer of a 2-D uint8 mask's nonzeros into indptr");
  m.def("mask_column_indices", &mask_column_indices_py, py::arg("mask"), py::arg("indptr"),
        py::arg("num_threads"), py::arg("indices"),
        "Write the column indices of a 2-D uint8 mask's nonzeros, at indptr's offsets");
  m.def("gather_pattern", &gather_pattern_py, py::arg("dense"), py::arg("indptr"), py::arg("indices"),
        py::arg("num_threads"), py::arg("out"),
        "Write dense's entries at the pattern's positions into out, in CSR order");
  m.def("available_isas", &available_isas, "ISAs this build and CPU can run, best last");
  m.def("compiled_isas", &compiled_isas, "ISAs compiled into this build");
  m.def("known_isas", &known_isas, "every ISA name the dispatcher knows, on any platform");
  m.def("kernel_info", &kernel_info_py, "per compiled ISA: availability and block parameters");
  m.def("active_isa", [] { return std::string(active_kernels().isa); });
  m.def("set_isa", [](const std::string& name) {
    try {
      set_isa(name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("name"), "Force an ISA by name, or 'auto' for the best available");
  m.def("max_threads", &max_threads);
  m.def("use_openmp_runtime", [](uintptr_t parallel, uintptr_t thread_num, uintptr_t num_threads) {
    use_openmp_runtime(reinterpret_cast<void*>(parallel), reinterpret_cast<void*>(thread_num),
                       reinterpret_cast<void*>(num_threads));
  }, py::arg("gomp_parallel"), py::arg("omp_get_thread_num"), py::arg("omp_get_num_threads"),
        "Run the kernels' threads on an already-loaded libgomp (addresses of its entry points); 0s = own pool");
  m.def("using_openmp_runtime", &using_openmp_runtime);
  m.def("cpu_features", &cpu_features_py);
  m.def("build_info", &build_info);
  register_linear_calls(m);
}
