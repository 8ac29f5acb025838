# Per-ISA kernel translation units: only these files get ISA flags; the rest of the
# library is compiled for baseline x86-64 so nothing AVX runs before dispatch.
#   cpp/src/kernels/*_avx2.cpp   -> -mavx2 -mfma -mf16c -mbmi2
#   cpp/src/kernels/*_avx512.cpp -> -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -mbmi2
# (BMI2: every AVX2 CPU has it; the dispatcher checks it with the other bits.)
#   cpp/src/kernels/*_neon.cpp   -> compiled only on aarch64
include(CheckCXXCompilerFlag)
set(VPTQ_ARCH_X86 OFF)
set(VPTQ_ARCH_ARM64 OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set(VPTQ_ARCH_X86 ON)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
  set(VPTQ_ARCH_ARM64 ON)
endif()

function(vptq_apply_simd_flags out_var)
  set(_kept "")
  foreach(src IN LISTS ARGN)
    if(src MATCHES "_avx2\\.cpp$")
      if(VPTQ_ARCH_X86)
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mbmi2")
        list(APPEND _kept ${src})
      endif()
    elseif(src MATCHES "_avx512\\.cpp$")
      if(VPTQ_ARCH_X86)
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS
          "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx2;-mfma;-mf16c;-mbmi2")
        list(APPEND _kept ${src})
      endif()
    elseif(src MATCHES "_neon\\.cpp$")
      if(VPTQ_ARCH_ARM64)
        list(APPEND _kept ${src})
      endif()
    else()
      list(APPEND _kept ${src})
    endif()
  endforeach()
  set(${out_var} ${_kept} PARENT_SCOPE)
endfunction()
