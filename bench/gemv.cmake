# bench_gemv: orbitq::gemv/gemm against f32 OpenBLAS sgemv/sgemm and a bf16 xsimd baseline.
# Included from bench/CMakeLists.txt. The BLAS comparison is compiled only when a BLAS library
# and <cblas.h> are found (Debian: libopenblas-dev); without them the binary still builds and runs
# the bf16 and orbitq benchmarks.
find_package(benchmark REQUIRED)
find_package(Threads REQUIRED)

set(BLA_VENDOR OpenBLAS)
find_package(BLAS QUIET)
unset(BLA_VENDOR)
set(orbitq_bench_have_cblas 0)
if(BLAS_FOUND)
  include(CheckIncludeFileCXX)
  check_include_file_cxx(cblas.h ORBITQ_HAVE_CBLAS_H)
  if(ORBITQ_HAVE_CBLAS_H)
    set(orbitq_bench_have_cblas 1)
  endif()
endif()
if(NOT orbitq_bench_have_cblas)
  message(STATUS "bench_gemv: OpenBLAS/cblas.h not found, building without the f32 BLAS baseline (apt-get install libopenblas-dev)")
endif()

add_executable(bench_gemv ${CMAKE_CURRENT_LIST_DIR}/bench_gemv.cpp)
target_link_libraries(bench_gemv PRIVATE orbitq::orbitq orbitq_build_flags orbitq_quantize_instances benchmark::benchmark Threads::Threads)
target_compile_definitions(bench_gemv PRIVATE ORBITQ_BENCH_HAVE_CBLAS=${orbitq_bench_have_cblas})
if(orbitq_bench_have_cblas)
  target_link_libraries(bench_gemv PRIVATE BLAS::BLAS)
endif()
