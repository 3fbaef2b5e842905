// bench/compare's driver: times two builds of the same kernels (run_a: the base revision, run_b:
// the working tree) in one process on the same input and parameter buffers, alternating A and B
// every round. Each timed run follows an untimed run of the same kernel (the first run after
// another kernel is measurably faster or slower, depending on what ran before), and the table
// gives the minimum of each side and the median of the per-round ratios B / A.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

double run_a(int, const float*, const void*, std::size_t, std::size_t, std::vector<float>&, std::vector<int>&);
double run_b(int, const float*, const void*, std::size_t, std::size_t, std::vector<float>&, std::vector<int>&);

namespace
{
    template <class T>
    __attribute__((noinline)) void convert(const T* __restrict src, signed char* __restrict dst, std::size_t n)
    {
        for (std::size_t i = 0; i < n; ++i)
        {
            float f;
            if constexpr (sizeof(T) == 4) f = src[i];
            else
            {
                const std::uint32_t u = std::uint32_t(src[i]) << 16;
                std::memcpy(&f, &u, 4);
            }
            dst[i] = static_cast<signed char>(f);
        }
    }
}

int main(int argc, char** argv)
{
    // usage: compare ROWS ROUNDS [KERNEL...]; ROWS 45056 = the seed (from memory), 64 = in L2
    const std::size_t cols = 704, all_rows = 45056;
    const std::size_t rows = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : all_rows;
    const int rounds = argc > 2 ? std::atoi(argv[2]) : 9;
    if (rows == 0 || rows > all_rows || rounds < 1)
    {
        std::fprintf(stderr, "usage: %s ROWS(1..45056) ROUNDS(>=1) [KERNEL(0..25)...]\n", argv[0]);
        return 2;
    }
    std::vector<int> kernels;
    for (int i = 3; i < argc; ++i)
    {
        const int k = std::atoi(argv[i]);
        if (k < 0 || k > 25)
        {
            std::fprintf(stderr, "kernel %d: 0..25\n", k);
            return 2;
        }
        kernels.push_back(k);
    }
    if (kernels.empty()) kernels = {0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15};
    const std::size_t repeats = all_rows / rows;  // the same bytes per timing whatever the rows
    std::vector<float> x(all_rows * cols);
    std::mt19937 gen(0);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (float& v : x) v = normal(gen);
    std::vector<std::uint16_t> xb(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
    {
        std::uint32_t u;
        std::memcpy(&u, &x[i], 4);
        xb[i] = static_cast<std::uint16_t>(u >> 16);  // truncation: any bf16 data will do
    }
    std::vector<signed char> dst(all_rows * cols, 1);
    std::vector<float> scales;
    std::vector<int> zero_points;
    const auto timed = [&](auto run, int k) {
        double t = 0;
        for (std::size_t r = 0; r < repeats; ++r) t += run(k, x.data(), xb.data(), rows, cols, scales, zero_points);
        return t;
    };
    const auto timed_convert = [&](const auto* src) {
        const auto t0 = std::chrono::steady_clock::now();
        for (std::size_t r = 0; r < repeats; ++r) convert(src, dst.data(), rows * cols);
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    double roof_f32 = 1e30, roof_bf16 = 1e30;
    std::vector<double> best_a(26, 1e30), best_b(26, 1e30);
    std::vector<std::vector<double>> ratios(26);
    for (int round = 0; round < rounds; ++round)
    {
        timed_convert(x.data());
        roof_f32 = std::min(roof_f32, timed_convert(x.data()));
        timed_convert(xb.data());
        roof_bf16 = std::min(roof_bf16, timed_convert(xb.data()));
        for (int k : kernels)
        {
            timed(run_a, k);
            const double a = timed(run_a, k);
            timed(run_b, k);
            const double b = timed(run_b, k);
            best_a[k] = std::min(best_a[k], a);
            best_b[k] = std::min(best_b[k], b);
            ratios[k].push_back(b / a);
        }
    }
    const double per16 = 16e9 / double(rows * cols * repeats);  // seconds -> ns per 16 values
    std::printf("rows %zu x %zu, %d rounds; convert roofline f32 %.3f, bf16 %.3f ns per 16 values\n", rows, cols, rounds, roof_f32 * per16,
                roof_bf16 * per16);
    std::printf("%-5s %-4s %-4s %-4s %8s %8s %9s %8s %8s\n", "gran", "sch", "bits", "in", "A ns/16", "B ns/16", "med B/A", "roof/A", "roof/B");
    for (int k : kernels)
    {
        std::vector<double> r = ratios[k];
        std::sort(r.begin(), r.end());
        const double roof = (k & 1) ? roof_bf16 : roof_f32;
        static const char* const formats[] = {"fp8 pc", "nvfp4", "mxfp4", "fp8 pt", "fp8 b128"};
        if (k >= 16)
        {
            std::printf("%-14s %-4s %8.3f %8.3f %9.3f %8.3f %8.3f\n", formats[(k - 16) / 2], (k & 1) ? "bf16" : "f32", best_a[k] * per16,
                        best_b[k] * per16, r[r.size() / 2], roof / best_a[k], roof / best_b[k]);
            continue;
        }
        std::printf("%-5s %-4s %-4s %-4s %8.3f %8.3f %9.3f %8.3f %8.3f\n", (k & 8) ? "pg32" : "pc", (k & 2) ? "asym" : "sym", (k & 4) ? "int4" : "int8",
                    (k & 1) ? "bf16" : "f32", best_a[k] * per16, best_b[k] * per16, r[r.size() / 2], roof / best_a[k], roof / best_b[k]);
    }
}
