// Shared basics of the vptq core: index type, error types, checking macros,
// thread control and an exception-safe OpenMP parallel loop.
#pragma once

#include <cstdint>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace vptq {

using idx_t = std::int64_t;

/// A numerical failure (matrix not positive definite after the allowed damping, ...).
/// The Python binding maps it to vptq.NumericalError, a subclass of ValueError.
class NumericalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream s;
  (s << ... << std::forward<Args>(args));
  return s.str();
}
}  // namespace detail

/// Bad argument (shape, config, range): std::invalid_argument -> Python ValueError.
#define VPTQ_CHECK(cond, ...)                                                  \
  do {                                                                         \
    if (!(cond)) throw std::invalid_argument(::vptq::detail::cat(__VA_ARGS__)); \
  } while (0)

/// Numerical failure: vptq::NumericalError -> Python vptq.NumericalError (ValueError).
#define VPTQ_CHECK_NUMERIC(cond, ...)                                          \
  do {                                                                         \
    if (!(cond)) throw ::vptq::NumericalError(::vptq::detail::cat(__VA_ARGS__)); \
  } while (0)

/// Number of threads used by vptq's OpenMP regions (default: omp_get_max_threads()).
void set_num_threads(int n);
int get_num_threads();

/// Below this many (rough) scalar operations a loop runs on the calling thread:
/// waking a team costs more than it saves, and far more on a loaded machine,
/// where a barrier can wait a whole scheduler time slice for a descheduled thread.
inline constexpr double kMinParallelWork = 2e6;

/// Runs fn(i) for i in [0, n) on get_num_threads() threads (static schedule).
/// `work` is an estimate of the total operations of the loop (default: large);
/// small loops run serially. An exception thrown in any iteration is caught and
/// the first one is rethrown after the parallel region; remaining iterations of
/// other threads still run.
template <class F>
void parallel_for(idx_t n, F&& fn, double work = 1e300) {
  std::exception_ptr err = nullptr;
  std::mutex mu;
  const int nt = get_num_threads();
#pragma omp parallel for schedule(static) num_threads(nt) if (n > 1 && nt > 1 && work >= kMinParallelWork)
  for (idx_t i = 0; i < n; ++i) {
    try {
      fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

/// Same as parallel_for but with dynamic scheduling (uneven per-iteration cost).
template <class F>
void parallel_for_dynamic(idx_t n, F&& fn, double work = 1e300) {
  std::exception_ptr err = nullptr;
  std::mutex mu;
  const int nt = get_num_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (n > 1 && nt > 1 && work >= kMinParallelWork)
  for (idx_t i = 0; i < n; ++i) {
    try {
      fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

/// Sets the thread count of the linked OpenBLAS (vptq calls BLAS with 1 thread
/// inside its own parallel regions and with get_num_threads() outside them).
void set_blas_threads(int n);

/// Deterministic, platform-independent 64-bit PRNG (splitmix64 seeding + xoshiro256**).
class Rng {
 public:
  explicit Rng(std::uint64_t seed);
  std::uint64_t next();
  /// Uniform integer in [0, bound), bound > 0 (Lemire's unbiased method).
  std::uint64_t below(std::uint64_t bound);
  /// Uniform double in [0, 1).
  double uniform();

 private:
  std::uint64_t s_[4];
};

}  // namespace vptq
