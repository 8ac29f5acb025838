// Shared helpers for the pybind11 binding files (cpp/bindings/*.cpp).
// The core library in cpp/src knows nothing of Python; every binding file
// registers its functions through VPTQ_REGISTER_BINDINGS so that adding a
// module never means editing a central list.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "vptq/common.h"

namespace vptq::bind {

namespace py = pybind11;

using BindFn = void (*)(py::module_&);
/// A binding group; groups run in (order, name) order. Groups that define classes
/// other groups use in their signatures take a lower order, so that signatures
/// (and the generated .pyi stub) show Python types instead of C++ names.
struct Registration {
  Registration(const char* name, BindFn fn, int order);
};
void run_registrations(py::module_& m);

/// C-contiguous array of exactly T; never converted (use with py::arg().noconvert()).
template <class T>
using CArray = py::array_t<T, py::array::c_style>;

template <class T>
const char* dtype_name();
template <> inline const char* dtype_name<float>() { return "float32"; }
template <> inline const char* dtype_name<double>() { return "float64"; }
template <> inline const char* dtype_name<std::uint16_t>() { return "uint16"; }
template <> inline const char* dtype_name<std::int16_t>() { return "int16"; }
template <> inline const char* dtype_name<std::int32_t>() { return "int32"; }
template <> inline const char* dtype_name<std::uint32_t>() { return "uint32"; }
template <> inline const char* dtype_name<std::int64_t>() { return "int64"; }
template <> inline const char* dtype_name<std::uint8_t>() { return "uint8"; }

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

/// Checks ndim and (where expected[i] >= 0) each extent; throws ValueError naming `name`.
inline void check_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> expected) {
  std::string want = "(";
  std::size_t i = 0;
  for (auto e : expected) {
    if (i++) want += ", ";
    want += e < 0 ? std::string("*") : std::to_string(e);
  }
  if (expected.size() == 1) want += ",";
  want += ")";
  bool ok = a.ndim() == static_cast<py::ssize_t>(expected.size());
  i = 0;
  for (auto e : expected) {
    if (!ok) break;
    if (e >= 0 && a.shape(static_cast<py::ssize_t>(i)) != e) ok = false;
    ++i;
  }
  VPTQ_CHECK(ok, name, ": expected shape ", want, ", got ", shape_str(a));
}

/// Allocates a new C-contiguous numpy array.
template <class T>
CArray<T> empty(std::vector<py::ssize_t> shape) {
  return CArray<T>(shape);
}

}  // namespace vptq::bind

#define VPTQ_BIND_CONCAT_(a, b) a##b
#define VPTQ_BIND_CONCAT(a, b) VPTQ_BIND_CONCAT_(a, b)
/// Usage: VPTQ_REGISTER_BINDINGS_AT(hessian, 10) { m.def(...); }   (m is the py::module_&)
#define VPTQ_REGISTER_BINDINGS_AT(name, order)                                             \
  static void VPTQ_BIND_CONCAT(vptq_bind_, name)(::pybind11::module_ & m);                 \
  static ::vptq::bind::Registration VPTQ_BIND_CONCAT(vptq_bind_reg_, name)(                \
      #name, &VPTQ_BIND_CONCAT(vptq_bind_, name), order);                                  \
  static void VPTQ_BIND_CONCAT(vptq_bind_, name)(::pybind11::module_ & m)
/// Usage: VPTQ_REGISTER_BINDINGS(kmeans) { m.def(...); }   (default order 50)
#define VPTQ_REGISTER_BINDINGS(name) VPTQ_REGISTER_BINDINGS_AT(name, 50)
