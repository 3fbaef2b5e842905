/// @file bench_analyze.cpp
/// @brief Throughput of orbitq::analyze with the default candidate set on a (45056, 704) matrix
///        (16 Gemma 4 down_proj experts stacked), next to the f32 roofline loop (read f32, write
///        int8: dst[i] = (int8_t)src[i]) compiled into the same binary with the same flags.
///
/// Names: analyze/<rows>x<cols>/<dtype>/candidates:<n>/threads:<t> and roofline/<rows>x<cols>/convert/f32.
/// Bytes processed are input bytes (rows * cols * sizeof(element)) per iteration for both, so the
/// ratio of their bytes_per_second is the ratio to the roofline; the analyze benchmarks also
/// report it directly as the counter `roofline_ratio` (against a roofline timed in the same
/// process, median of 5 runs).
#include <orbitq/analyze.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace
{
    constexpr std::size_t seed_rows = 45056;
    constexpr std::size_t seed_cols = 704;

    /// Deterministic heavy-tailed weights: a sum of uniforms (roughly normal, sigma ~0.02) with
    /// one weight in 4096 scaled up 30x, like the outliers of trained expert weights.
    const std::vector<float>& seed_weights()
    {
        static const std::vector<float> w = [] {
            std::vector<float> v(seed_rows * seed_cols);
            std::uint64_t s = 0x9e3779b97f4a7c15ull;
            auto next = [&] {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                return static_cast<float>(s >> 40) * (1.0f / 16777216.0f);
            };
            for (std::size_t i = 0; i < v.size(); ++i)
            {
                const float x = (next() + next() + next() - 1.5f) * 0.04f;
                v[i] = (i % 4096 == 17) ? 30.0f * x : x;
            }
            return v;
        }();
        return w;
    }

    const std::vector<orbitq::bfloat16_t>& seed_weights_bf16()
    {
        static const std::vector<orbitq::bfloat16_t> w = [] {
            const auto& f = seed_weights();
            std::vector<orbitq::bfloat16_t> v(f.size());
            for (std::size_t i = 0; i < f.size(); ++i) v[i] = orbitq::to_bfloat16(f[i]);
            return v;
        }();
        return w;
    }

    /// The roofline loop: read f32, write int8.
    [[gnu::noinline]] void convert_loop(const float* src, std::int8_t* dst, std::size_t n)
    {
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<std::int8_t>(src[i]);
    }

    /// Seconds per roofline pass over the (45056, 704) matrix, median of 5 (after one warm-up).
    double roofline_seconds()
    {
        static const double t = [] {
            const auto& w = seed_weights();
            std::vector<std::int8_t> dst(w.size());
            std::vector<double> times;
            for (int rep = 0; rep < 6; ++rep)
            {
                const auto t0 = std::chrono::steady_clock::now();
                convert_loop(w.data(), dst.data(), w.size());
                benchmark::ClobberMemory();
                const auto t1 = std::chrono::steady_clock::now();
                if (rep > 0) times.push_back(std::chrono::duration<double>(t1 - t0).count());
            }
            std::sort(times.begin(), times.end());
            return times[times.size() / 2];
        }();
        return t;
    }

    void bm_roofline(benchmark::State& state)
    {
        const auto& w = seed_weights();
        std::vector<std::int8_t> dst(w.size());
        for (auto _ : state)
        {
            convert_loop(w.data(), dst.data(), w.size());
            benchmark::DoNotOptimize(dst.data());
            benchmark::ClobberMemory();
        }
        state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * w.size() * sizeof(float)));
    }

    template <class T>
    void bm_analyze(benchmark::State& state, const std::vector<T>& data, std::size_t rows = seed_rows, std::size_t cols = seed_cols)
    {
        const auto view = orbitq::make_view(data.data(), rows, cols, "seed");
        const auto candidates = orbitq::default_candidates(cols);
        orbitq::analyze_options o;
        o.threads = static_cast<unsigned>(state.range(0));
        const double roof = roofline_seconds();
        double seconds = 0.0;
        for (auto _ : state)
        {
            const auto t0 = std::chrono::steady_clock::now();
            orbitq::tensor_analysis a = orbitq::analyze(view, candidates, o);
            benchmark::DoNotOptimize(a);
            benchmark::ClobberMemory();
            seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * view.size() * sizeof(T)));
        // Roofline time over analyze time for the same number of elements (wall clock; analyze
        // may use threads).
        const double elements = static_cast<double>(rows * cols) / static_cast<double>(seed_rows * seed_cols);
        state.counters["roofline_ratio"] = roof * elements * static_cast<double>(state.iterations()) / seconds;
        state.counters["candidates"] = static_cast<double>(candidates.size());
    }

    const std::string shape = std::to_string(seed_rows) + "x" + std::to_string(seed_cols);

    const int registered = [] {
        benchmark::RegisterBenchmark(("roofline/" + shape + "/convert/f32").c_str(), bm_roofline)->Unit(benchmark::kMillisecond)->UseRealTime();
        const std::size_t n = orbitq::default_candidates(seed_cols).size();
        for (int t : {1, 2})
        {
            benchmark::RegisterBenchmark(("analyze/" + shape + "/f32/candidates:" + std::to_string(n)).c_str(),
                                         [](benchmark::State& s) { bm_analyze(s, seed_weights()); })
                ->Arg(t)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
            benchmark::RegisterBenchmark(("analyze/" + shape + "/bf16/candidates:" + std::to_string(n)).c_str(),
                                         [](benchmark::State& s) { bm_analyze(s, seed_weights_bf16()); })
                ->Arg(t)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
        }
        // One Gemma 4 expert's down_proj (2816, 704) and gate_up_proj (1408, 2816), bf16 as in the
        // checkpoint: the shapes orbitq-gemma analyze works on (the first rows of the (45056, 704) matrix).
        benchmark::RegisterBenchmark("analyze/2816x704/bf16/expert_down", [](benchmark::State& s) {
            bm_analyze(s, seed_weights_bf16(), 2816, 704);
        })->Arg(1)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
        benchmark::RegisterBenchmark("analyze/1408x2816/bf16/expert_gate_up", [](benchmark::State& s) {
            bm_analyze(s, seed_weights_bf16(), 1408, 2816);
        })->Arg(1)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
        return 0;
    }();
}

BENCHMARK_MAIN();
