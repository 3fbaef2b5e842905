# orbitq_bench_analyze: orbitq::analyze with the default candidate set on the seed's (45056, 704)
# matrix, with its own f32 roofline loop in the same binary (same flags). Included from
# bench/CMakeLists.txt, which provides the benchmark package.
find_package(benchmark REQUIRED)
find_package(Threads REQUIRED)
add_executable(orbitq_bench_analyze ${CMAKE_CURRENT_LIST_DIR}/bench_analyze.cpp)
target_link_libraries(orbitq_bench_analyze PRIVATE orbitq::orbitq orbitq_build_flags orbitq_quantize_instances benchmark::benchmark Threads::Threads)
