/// @file bench_gemv.cpp
/// @brief Google Benchmark suite for orbitq::gemv / orbitq::gemm on the Gemma 4 expert shapes
///        (gate_up 1408x2816, down 2816x704), batch 1, 8 and 64, 1 and 2 threads, against
///        - f32 cblas_sgemv / cblas_sgemm (OpenBLAS) on the dequantized matrix, when the build
///          found a CBLAS (ORBITQ_BENCH_HAVE_CBLAS);
///        - a bf16-weight baseline: a plain xsimd gemv/gemm over bfloat16 weights (widen, FMA).
///
/// Two working sets: "hot" multiplies one expert's matrix again and again (it stays in L2/L3
/// for the smaller formats); "cold" cycles through distinct experts' matrices, at least 16 and
/// enough for 128 MB (several times a typical L3), at most the 128 experts of a Gemma 4 layer,
/// which is what an MoE layer sees. The label gives the count and the working set.
///
/// Names: gemv/<shape>/<format>/batch:<T>/threads:<n>/<hot|cold>; int4 formats run with float32
/// arithmetic and, suffixed "_dot8", with gemv_arithmetic::int8_dot. "roofline_read" reads as
/// many bytes as int4_g32 (same working sets) and does nothing else: the bandwidth bound that
/// bench/gemv_report divides by.
/// Bytes processed = weight bytes read per call (codes + scales + zero points, or the f32/bf16
/// matrix), so the GB/s column compares formats by the bandwidth they draw.
#include <orbitq/core/parallel.hpp>
#include <orbitq/gemv.hpp>
#include <orbitq/quantize.hpp>

#include <benchmark/benchmark.h>
#include <xsimd/xsimd.hpp>

#if ORBITQ_BENCH_HAVE_CBLAS
#include <cblas.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace
{
    using orbitq::bfloat16_t;

    struct bench_shape
    {
        const char* name;
        std::size_t rows;
        std::size_t cols;
    };

    const bench_shape shapes[] = {{"gate_up_1408x2816", 1408, 2816}, {"down_2816x704", 2816, 704}};

    /// The cold working set: distinct experts, at least 16 and at most the 128 of a Gemma 4 layer,
    /// enough for cold_bytes of weights (several times a typical L3, so the weights come from memory).
    constexpr std::size_t min_cold_experts = 16;
    constexpr std::size_t max_cold_experts = 128;
    constexpr std::size_t cold_bytes = std::size_t{128} << 20;

    /// One weight format of one expert.
    struct expert
    {
        orbitq::quantized_tensor q;           ///< quantized formats
        std::vector<float> f32;               ///< dequantized (f32 baseline)
        std::vector<bfloat16_t> bf16;         ///< bf16 baseline
    };

    /// Weight formats; the int4 ones also run with gemv_arithmetic::int8_dot (suffix "_dot8").
    enum class format
    {
        roofline,  ///< not a format: a read-only pass over as many bytes as int4_g32 (see roofline_read)
        f32_blas,
        bf16,
        int8_per_channel,
        int8_g32,
        int8_g64,
        int4_per_channel,
        int4_g32,
        int4_g64,
        int4_g32_asym
    };

    const char* format_name(format f)
    {
        switch (f)
        {
            case format::roofline: return "roofline_read";
            case format::f32_blas: return "f32_openblas";
            case format::bf16: return "bf16_xsimd";
            case format::int8_per_channel: return "int8_per_channel";
            case format::int8_g32: return "int8_g32";
            case format::int8_g64: return "int8_g64";
            case format::int4_per_channel: return "int4_per_channel";
            case format::int4_g32: return "int4_g32";
            case format::int4_g64: return "int4_g64";
            case format::int4_g32_asym: return "int4_g32_asym";
        }
        return "?";
    }

    bool is_int4(format f)
    {
        return f == format::int4_per_channel || f == format::int4_g32 || f == format::int4_g64 || f == format::int4_g32_asym;
    }

    orbitq::quant_spec spec_of(format f)
    {
        orbitq::quant_spec s;
        s.bits = is_int4(f) || f == format::roofline ? 4 : 8;
        const bool channel = f == format::int8_per_channel || f == format::int4_per_channel;
        s.granularity = channel ? orbitq::granularity_kind::per_channel : orbitq::granularity_kind::per_group;
        s.group_size = f == format::int8_g64 || f == format::int4_g64 ? 64 : 32;
        if (f == format::int4_g32_asym) s.scheme = orbitq::scheme_kind::asymmetric;
        return s;
    }

    /// The read roofline: sums every 32-bit word of `bytes` bytes (a multiple of 64) with
    /// several independent vector accumulators; split over threads like the kernels' rows.
    std::uint32_t roofline_read(const std::int8_t* p, std::size_t bytes, unsigned threads)
    {
        using ib = xsimd::batch<std::uint32_t>;
        constexpr std::size_t step = 4 * ib::size * sizeof(std::uint32_t);
        std::atomic<std::uint32_t> sum{0};
        const std::size_t blocks = bytes / step;
        orbitq::parallel_rows(blocks, threads, [&](std::size_t first, std::size_t last) {
            ib a0(0u), a1(0u), a2(0u), a3(0u);
            for (std::size_t b = first; b < last; ++b)
            {
                const auto* q = reinterpret_cast<const std::uint32_t*>(p + b * step);
                a0 += ib::load_unaligned(q);
                a1 += ib::load_unaligned(q + ib::size);
                a2 += ib::load_unaligned(q + 2 * ib::size);
                a3 += ib::load_unaligned(q + 3 * ib::size);
            }
            sum.fetch_add(xsimd::hadd((a0 + a1) + (a2 + a3)), std::memory_order_relaxed);
        });
        return sum.load();
    }

    /// Expert e's bf16 weights: normal(0, 0.02)-like values from a fixed-seed xorshift, cheap to make.
    std::vector<float> make_weights(const bench_shape& s, std::size_t e)
    {
        std::vector<float> w(s.rows * s.cols);
        std::uint64_t state = 0x9e3779b97f4a7c15ull * (e + 1);
        for (auto& v : w)
        {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // sum of two uniforms: a cheap bell shape, scaled to std ~0.02
            const float a = static_cast<float>(state & 0xffffff) / 16777216.0f;
            const float b = static_cast<float>((state >> 24) & 0xffffff) / 16777216.0f;
            v = orbitq::round_to_bfloat16((a + b - 1.0f) * 0.05f);
        }
        return w;
    }

    std::size_t weight_bytes(const expert& e, format f)
    {
        if (f == format::f32_blas) return e.f32.size() * sizeof(float);
        if (f == format::bf16) return e.bf16.size() * sizeof(bfloat16_t);
        return e.q.codes.size() + e.q.scales.size() * sizeof(float) + e.q.zero_points.size() * sizeof(std::int32_t);
    }

    /// The experts of one (shape, format), built on first use and kept.
    const std::vector<expert>& experts_for(const bench_shape& s, format f)
    {
        static std::map<std::pair<std::string, format>, std::unique_ptr<std::vector<expert>>> cache;
        auto& slot = cache[{s.name, f}];
        if (!slot)
        {
            slot = std::make_unique<std::vector<expert>>();
            for (std::size_t e = 0, n = 1; e < n; ++e)
            {
                slot->emplace_back();
                const std::vector<float> w = make_weights(s, e);
                expert& x = (*slot)[e];
                if (f == format::bf16)
                {
                    x.bf16.resize(w.size());
                    for (std::size_t i = 0; i < w.size(); ++i) x.bf16[i] = orbitq::to_bfloat16(w[i]);
                }
                else if (f == format::f32_blas)
                {
                    x.f32 = orbitq::dequantize(orbitq::quantize(orbitq::make_view(w.data(), s.rows, s.cols), spec_of(format::int8_per_channel)));
                }
                else
                {
                    x.q = orbitq::quantize(orbitq::make_view(w.data(), s.rows, s.cols), spec_of(f));
                    if (f == format::roofline)  // the bytes of int4_g32, rounded up to whole lines
                    {
                        x.q.codes.resize((weight_bytes(x, f) + 255) / 256 * 256);
                        x.q.scales.clear();
                    }
                }
                if (e == 0)
                {
                    const std::size_t per = weight_bytes(x, f);
                    n = std::clamp((cold_bytes + per - 1) / per, min_cold_experts, max_cold_experts);
                }
            }
        }
        return *slot;
    }

    /// L bf16 values widened to float32 (exact: a bf16 is the top half of a float32). One
    /// zero-extending load on AVX-512, as orbitq's int8 widening uses, else a copy loop.
    inline xsimd::batch<float> widen_bf16(const bfloat16_t* p, std::uint32_t* wide) noexcept
    {
        using fb = xsimd::batch<float>;
        using ib = xsimd::batch<std::uint32_t>;
#if defined(__AVX512F__)
        if constexpr (fb::size == 16)
        {
            const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
            return xsimd::bitwise_cast<fb>(ib(_mm512_slli_epi32(v, 16)));
        }
#endif
        for (std::size_t k = 0; k < fb::size; ++k) wide[k] = p[k].bits;
        return xsimd::bitwise_cast<fb>(ib::load_aligned(wide) << 16);
    }

    /// The bf16 baseline: y[t, r] = sum_j bf16 w[r, j] * x[t, j]. A tile of R rows x TT tokens
    /// keeps R * TT independent FMA chains and widens each weight vector once per tile; rows
    /// split over threads with orbitq::parallel_rows. Requires cols % L == 0 (true here).
    template <std::size_t R, std::size_t TT>
    void bf16_tile(const bfloat16_t* w, std::size_t r0, std::size_t rows, std::size_t cols, const float* x, std::size_t t0,
                   float* y) noexcept
    {
        using fb = xsimd::batch<float>;
        constexpr std::size_t L = fb::size;
        alignas(64) std::uint32_t wide[L];
        fb acc[R][TT];
        for (std::size_t r = 0; r < R; ++r)
            for (std::size_t t = 0; t < TT; ++t) acc[r][t] = fb(0.0f);
        for (std::size_t j = 0; j < cols; j += L)
        {
            fb wv[R];
            for (std::size_t r = 0; r < R; ++r) wv[r] = widen_bf16(w + (r0 + r) * cols + j, wide);
            for (std::size_t t = 0; t < TT; ++t)
            {
                const fb xv = fb::load_unaligned(x + (t0 + t) * cols + j);
                for (std::size_t r = 0; r < R; ++r) acc[r][t] = xsimd::fma(wv[r], xv, acc[r][t]);
            }
        }
        for (std::size_t r = 0; r < R; ++r)
            for (std::size_t t = 0; t < TT; ++t) y[(t0 + t) * rows + r0 + r] = xsimd::hadd(acc[r][t]);
    }

    template <std::size_t R>
    void bf16_rows(const bfloat16_t* w, std::size_t r0, std::size_t rows, std::size_t cols, const float* x, std::size_t tokens,
                   float* y) noexcept
    {
        std::size_t t0 = 0;
        for (; t0 + 3 <= tokens; t0 += 3) bf16_tile<R, 3>(w, r0, rows, cols, x, t0, y);
        for (; t0 < tokens; ++t0) bf16_tile<R, 1>(w, r0, rows, cols, x, t0, y);
    }

    void bf16_gemm(const bfloat16_t* w, std::size_t rows, std::size_t cols, const float* x, std::size_t tokens, float* y,
                   unsigned threads)
    {
        orbitq::parallel_rows(rows, threads, [&](std::size_t first, std::size_t last) {
            std::size_t r = first;
            for (; r + 4 <= last; r += 4) bf16_rows<4>(w, r, rows, cols, x, tokens, y);
            for (; r < last; ++r) bf16_rows<1>(w, r, rows, cols, x, tokens, y);
        });
    }

    void run(benchmark::State& state, const bench_shape& s, format f, std::size_t tokens, unsigned threads, bool cold,
             orbitq::gemv_arithmetic arithmetic)
    {
        const std::vector<expert>& ex = experts_for(s, f);
        std::vector<float> x(tokens * s.cols);
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 1000) / 1000.0f - 0.5f;
        std::vector<float> y(tokens * s.rows);
#if ORBITQ_BENCH_HAVE_CBLAS
        openblas_set_num_threads(static_cast<int>(threads));
#endif
        std::size_t e = 0;
        for (auto _ : state)
        {
            const expert& w = ex[e];
            switch (f)
            {
                case format::f32_blas:
#if ORBITQ_BENCH_HAVE_CBLAS
                    if (tokens == 1)
                    {
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(s.rows), static_cast<int>(s.cols), 1.0f,
                                    w.f32.data(), static_cast<int>(s.cols), x.data(), 1, 0.0f, y.data(), 1);
                    }
                    else
                    {
                        // Y[T, rows] = X[T, cols] * W^T
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(s.rows),
                                    static_cast<int>(s.cols), 1.0f, x.data(), static_cast<int>(s.cols), w.f32.data(),
                                    static_cast<int>(s.cols), 0.0f, y.data(), static_cast<int>(s.rows));
                    }
#endif
                    break;
                case format::bf16: bf16_gemm(w.bf16.data(), s.rows, s.cols, x.data(), tokens, y.data(), threads); break;
                case format::roofline: y[0] = static_cast<float>(roofline_read(w.q.codes.data(), w.q.codes.size(), threads)); break;
                default:
                    if (tokens == 1) orbitq::gemv(w.q, std::span<const float>(x), std::span<float>(y), threads, arithmetic);
                    else orbitq::gemm(w.q, std::span<const float>(x), tokens, std::span<float>(y), threads, arithmetic);
            }
            benchmark::DoNotOptimize(y.data());
            benchmark::ClobberMemory();
            if (cold) e = (e + 1) % ex.size();
        }
        if (cold) state.SetLabel(std::to_string(ex.size()) + " experts, " + std::to_string(ex.size() * weight_bytes(ex[0], f) >> 20) + " MB");
        state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * weight_bytes(ex[0], f)));
        state.counters["flops"] = benchmark::Counter(2.0 * static_cast<double>(s.rows * s.cols * tokens) * static_cast<double>(state.iterations()),
                                                     benchmark::Counter::kIsRate);
    }

    void register_all()
    {
        std::vector<format> formats = {format::roofline,         format::bf16,     format::int8_per_channel, format::int8_g32,
                                       format::int8_g64,         format::int4_per_channel, format::int4_g32, format::int4_g64,
                                       format::int4_g32_asym};
#if ORBITQ_BENCH_HAVE_CBLAS
        formats.insert(formats.begin(), format::f32_blas);
#endif
        for (const bench_shape& s : shapes)
        {
            for (std::size_t tokens : {1u, 8u, 64u})
            {
                for (unsigned threads : {1u, 2u})
                {
                    for (bool cold : {false, true})
                    {
                        for (format f : formats)
                        {
                            for (orbitq::gemv_arithmetic a : {orbitq::gemv_arithmetic::float32, orbitq::gemv_arithmetic::int8_dot})
                            {
                                const bool dot = a == orbitq::gemv_arithmetic::int8_dot;
                                if (dot && !is_int4(f)) continue;
                                if (f == format::roofline && tokens != 1) continue;  // the same pass at every batch
                                const std::string name = std::string("gemv/") + s.name + "/" + format_name(f) + (dot ? "_dot8" : "")
                                                         + "/batch:" + std::to_string(tokens) + "/threads:" + std::to_string(threads)
                                                         + "/" + (cold ? "cold" : "hot");
                                benchmark::RegisterBenchmark(name.c_str(), [=, &s](benchmark::State& st) { run(st, s, f, tokens, threads, cold, a); })
                                    ->Unit(benchmark::kMicrosecond)
                                    ->UseRealTime()
                                    ->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
                            }
                        }
                    }
                }
            }
        }
    }
}

int main(int argc, char** argv)
{
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
