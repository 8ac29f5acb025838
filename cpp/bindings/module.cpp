// The extension module vptq._core: exception mapping, threads, SIMD level, and
// the registered binding groups of the other files in this folder.
#include <algorithm>
#include <string>
#include <vector>

#include "bind.h"
#include "vptq/simd.h"

namespace vptq::bind {

namespace {
struct Entry {
  int order;
  std::string name;
  BindFn fn;
};
std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
}  // namespace

Registration::Registration(const char* name, BindFn fn, int order) {
  registry().push_back(Entry{order, name, fn});
}

void run_registrations(py::module_& m) {
  auto r = registry();
  std::sort(r.begin(), r.end(), [](const Entry& a, const Entry& b) {
    return a.order != b.order ? a.order < b.order : a.name < b.name;
  });
  for (const Entry& e : r) e.fn(m);
}

}  // namespace vptq::bind

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "vptq C++ core (private; use the vptq package)";
  py::register_exception<vptq::NumericalError>(m, "NumericalError", PyExc_ValueError);

  m.def("set_num_threads", &vptq::set_num_threads, py::arg("n"),
        "Set the number of threads used by vptq's parallel loops.");
  m.def("get_num_threads", &vptq::get_num_threads, "Number of threads vptq's parallel loops use.");
  m.def("simd_level", []() { return std::string(vptq::simd_level_name(vptq::get_simd_level())); },
        "SIMD level the kernels currently use: 'scalar', 'avx2', 'avx512' or 'neon'.");
  m.def("set_simd_level",
        [](const std::string& name) { vptq::set_simd_level(vptq::parse_simd_level(name)); },
        py::arg("level"), "Force a SIMD level; ValueError if this CPU lacks it.");
  m.def("cpu_features", []() {
    const vptq::CpuFeatures f = vptq::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["bmi2"] = f.bmi2;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq;
    d["neon"] = f.neon;
    d["detected"] = std::string(vptq::simd_level_name(vptq::detect_simd_level()));
    d["selected"] = std::string(vptq::simd_level_name(vptq::get_simd_level()));
    return d;
  }, "CPU features seen by the dispatcher and the detected/selected SIMD level.");

  vptq::bind::run_registrations(m);
}
