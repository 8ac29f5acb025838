// Internal: scoped single-threaded OpenBLAS, for code that parallelises over tiles itself
// (results then depend on the tiling only, never on the thread count).
#pragma once

#include <cblas.h>

namespace vptq::detail {

/// Runs OpenBLAS single-threaded for its lifetime and restores the previous count after.
class BlasSingleThread {
 public:
  BlasSingleThread() : prev_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~BlasSingleThread() { openblas_set_num_threads(prev_); }
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  int prev_;
};

}  // namespace vptq::detail
