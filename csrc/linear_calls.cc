// The eager SparseLinear path in one native call per pass: forward, and the whole
// backward (input, values and bias gradients). Arguments are raw addresses of tensors
// the Python caller has already checked (dtype, shape, contiguity), so there are no
// numpy views and no per-argument checks here. What guards memory safety is the
// pattern: each call first recomputes its checksum and compares it with the value
// recorded when the pattern was validated (check_csr at construction). A match means
// the arrays still hold the validated pattern, which is in bounds; on a mismatch the
// call does nothing and returns false, and the caller re-validates or raises. One
// O(rows + nnz) pass per call replaces the checksum plus the per-kernel bounds checks.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "csr.h"
#include "linear_ops.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace sparseprop {
namespace {

template <class T>
T* at(uintptr_t address) { return reinterpret_cast<T*>(address); }

bool unchanged(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t nnz,
               uint64_t checksum) {
  return pattern_checksum(indptr, rows + 1, indices, nnz) == checksum;
}

// Batch 1, both gradients in one pass over the nonzeros (each index loaded once):
// gx[c] += w_k gy[r] (scattered along W's rows, as spmv_transposed) and
// gv_k = gy[r] x[c]. Rows are split by nonzero count; threads past the first
// scatter into private copies of gx, summed at the end. Scalar: AVX2 has no scatter.
constexpr int64_t kMinNnzPerThread = 1 << 15;

void batch1_backward(const int64_t* indptr, const int32_t* indices, int64_t rows, int64_t cols,
                     const float* values, const float* gy, const float* x, float* gx, float* gv,
                     int num_threads) {
  const int64_t nnz = indptr[rows];
  const int n = int(std::min<int64_t>({int64_t(std::max(num_threads, 1)), int64_t(max_threads()),
                                       std::max<int64_t>(1, nnz / kMinNnzPerThread),
                                       std::max<int64_t>(rows, 1)}));
  std::vector<int64_t> bounds(size_t(n) + 1);
  balance_rows(indptr, rows, n, bounds.data());
  thread_local std::vector<float> partial;
  if (n > 1 && int64_t(partial.size()) < int64_t(n - 1) * cols) partial.resize(size_t((n - 1) * cols));
  struct Ctx {
    const int64_t* bounds;
    const int64_t* indptr;
    const int32_t* indices;
    const float *values, *gy, *x;
    float *gx, *gv, *partial;
    int64_t cols;
  } ctx{bounds.data(), indptr, indices, values, gy, x, gx, gv, partial.data(), cols};
  const TaskFn task = [](void* p, int t, int) {
    const auto* c = static_cast<const Ctx*>(p);
    float* out = !c->gx ? nullptr : t == 0 ? c->gx : c->partial + int64_t(t - 1) * c->cols;
    if (out) std::fill(out, out + c->cols, 0.0f);
    for (int64_t r = c->bounds[t]; r < c->bounds[t + 1]; ++r) {
      const float d = c->gy[r];
      const int64_t e = c->indptr[r + 1];
      if (out && c->gv) {
        for (int64_t k = c->indptr[r]; k < e; ++k) {
          const int32_t j = c->indices[k];
          out[j] += c->values[k] * d;
          c->gv[k] = d * c->x[j];
        }
      } else if (out) {
        for (int64_t k = c->indptr[r]; k < e; ++k) out[c->indices[k]] += c->values[k] * d;
      } else {
        for (int64_t k = c->indptr[r]; k < e; ++k) c->gv[k] = d * c->x[c->indices[k]];
      }
    }
  };
  if (n == 1) {
    task(&ctx, 0, 1);
  } else {
    parallel_run(n, task, &ctx);
  }
  if (gx) {
    for (int t = 1; t < n; ++t) {
      const float* part = partial.data() + int64_t(t - 1) * cols;
      for (int64_t j = 0; j < cols; ++j) gx[j] += part[j];
    }
  }
}

// yt (rows, n) = W xt (+ bias), xt (cols, n); all row-major, contiguous.
bool linear_forward(uintptr_t indptr_a, uintptr_t indices_a, int64_t rows, int64_t nnz,
                    uint64_t checksum, uintptr_t values, uintptr_t bias, uintptr_t xt,
                    uintptr_t yt, int64_t n, int num_threads) {
  const int64_t* indptr = at<const int64_t>(indptr_a);
  const int32_t* indices = at<const int32_t>(indices_a);
  if (!unchanged(indptr, rows, indices, nnz, checksum)) return false;
  SpmmArgs a{};
  a.indptr = indptr;
  a.indices = indices;
  a.values = at<const float>(values);
  a.bias = at<const float>(bias);  // 0: no bias
  a.x = at<const float>(xt);
  a.ldx = n;
  a.y = at<float>(yt);
  a.ldy = n;
  a.n = n;
  spmm(a, rows, num_threads);
  return true;
}

// From gyt (rows, n): gxt (cols, n) = W^T gyt, gvalues (nnz) = <gyt[r], xt[c]> per
// nonzero, gbias (rows) = gyt summed over the batch. A zero address skips that output.
// gxt uses the transposed pattern (t_indptr, t_indices, t_perm: derived from the
// validated pattern, private to it) when given, else the batch-1 scatter along W's rows.
bool linear_backward(uintptr_t indptr_a, uintptr_t indices_a, int64_t rows, int64_t cols,
                     int64_t nnz, uint64_t checksum, uintptr_t values, uintptr_t gyt_a,
                     uintptr_t xt, int64_t n, uintptr_t gxt, uintptr_t t_indptr,
                     uintptr_t t_indices, uintptr_t t_perm, uintptr_t gvalues, uintptr_t gbias,
                     int num_threads) {
  const int64_t* indptr = at<const int64_t>(indptr_a);
  const int32_t* indices = at<const int32_t>(indices_a);
  if (!unchanged(indptr, rows, indices, nnz, checksum)) return false;
  const float* gyt = at<const float>(gyt_a);
  if (n == 1 && (gxt || gvalues)) {
    batch1_backward(indptr, indices, rows, cols, at<const float>(values), gyt, at<const float>(xt),
                    at<float>(gxt), at<float>(gvalues), num_threads);
    gxt = gvalues = 0;
  }
  if (gxt) {
    if (t_indptr) {
      SpmmArgs a{};
      a.indptr = at<const int64_t>(t_indptr);
      a.indices = at<const int32_t>(t_indices);
      a.values = at<const float>(values);
      a.perm = at<const int64_t>(t_perm);
      a.x = gyt;
      a.ldx = n;
      a.y = at<float>(gxt);
      a.ldy = n;
      a.n = n;
      spmm(a, cols, num_threads);
    } else {  // n == 1
      spmv_transposed(indptr, indices, at<const float>(values), rows, cols, gyt, at<float>(gxt),
                      num_threads);
    }
  }
  if (gvalues) {
    SddmmArgs a{indptr, indices, gyt, n, at<const float>(xt), n, at<float>(gvalues), n};
    sddmm(a, rows, num_threads);
  }
  if (gbias) {  // the caller passes it for small outputs only (torch's sum is threaded)
    float* gb = at<float>(gbias);
    for (int64_t r = 0; r < rows; ++r) {
      float s = 0.f;
      for (int64_t j = 0; j < n; ++j) s += gyt[r * n + j];
      gb[r] = s;
    }
  }
  return true;
}

}  // namespace

void register_linear_calls(py::module_& m) {
  m.def("linear_forward", &linear_forward, py::arg("indptr"), py::arg("indices"), py::arg("rows"),
        py::arg("nnz"), py::arg("checksum"), py::arg("values"), py::arg("bias"), py::arg("xt"),
        py::arg("yt"), py::arg("n"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "yt = W xt + bias on raw addresses (checked by the caller); False, doing nothing, if "
        "the pattern's checksum no longer matches");
  m.def("linear_backward", &linear_backward, py::arg("indptr"), py::arg("indices"),
        py::arg("rows"), py::arg("cols"), py::arg("nnz"), py::arg("checksum"), py::arg("values"),
        py::arg("gyt"), py::arg("xt"), py::arg("n"), py::arg("gxt"), py::arg("t_indptr"),
        py::arg("t_indices"), py::arg("t_perm"), py::arg("gvalues"), py::arg("gbias"),
        py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "All gradients of linear_forward in one call (0 skips an output); False, doing "
        "nothing, if the pattern's checksum no longer matches");
}

}  // namespace sparseprop
