/// @file bench_quantize.cpp
/// @brief Google Benchmark suite: every granularity (per_group with groups of 32, 64 and 128
///        where they divide the rows) x scheme x bits x input dtype of
///        orbitq::quantize_into on a (45056, 704) matrix and two Gemma 4 expert shapes,
///        at 1 and 2 threads, next to the roofline loops (read/convert/write, the same with
///        streaming stores, read-only max|x|, memcpy) compiled with the same flags. Bytes
///        processed = input bytes.
///
/// Names: quantize/<rows>x<cols>/<granularity>/<scheme>/int<bits>/<dtype>/threads:<n> (float
///        formats: .../<scheme>/fp8 or fp4/...)
///        roofline/<rows>x<cols>/<loop>/<dtype>/threads:<n>
/// bench/report runs this binary and prints each kernel's ratio to its roofline.
#include <orbitq/quantize.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace
{
    using orbitq::bfloat16_t;
    using orbitq::element_type;
    using orbitq::float16_t;

    struct bench_shape
    {
        std::size_t rows;
        std::size_t cols;
        std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
    };

    /// A stacked down_proj (16 experts), one gate_up expert, one down expert.
    const bench_shape shapes[] = {{45056, 704}, {1408, 2816}, {2816, 704}};

    /// Weights of one shape in the three input dtypes: normal(0, 0.02) with 0.1% of the entries
    /// multiplied by 20 (outliers), fixed seed.
    struct weights
    {
        std::vector<float> f32;
        std::vector<bfloat16_t> bf16;
        std::vector<float16_t> f16;
    };

    const weights& weights_for(const bench_shape& s)
    {
        static std::map<std::pair<std::size_t, std::size_t>, std::unique_ptr<weights>> cache;
        auto& slot = cache[{s.rows, s.cols}];
        if (!slot)
        {
            slot = std::make_unique<weights>();
            const std::size_t n = s.rows * s.cols;
            std::mt19937_64 rng(0);
            std::normal_distribution<float> normal(0.0f, 0.02f);
            slot->f32.resize(n);
            for (auto& x : slot->f32) x = normal(rng);
            std::vector<bool> scaled(n);
            for (std::size_t k = 0; k < n / 1000;)
            {
                const std::size_t i = rng() % n;
                if (scaled[i]) continue;
                scaled[i] = true;
                slot->f32[i] *= 20.0f;
                ++k;
            }
            slot->bf16.resize(n);
            slot->f16.resize(n);
            for (std::size_t i = 0; i < n; ++i)
            {
                slot->bf16[i] = orbitq::to_bfloat16(slot->f32[i]);
                slot->f16[i] = orbitq::to_float16(slot->f32[i]);
            }
        }
        return *slot;
    }

    template <orbitq::weight_element T>
    const std::vector<T>& data_of(const weights& w)
    {
        if constexpr (std::same_as<T, float>) return w.f32;
        else if constexpr (std::same_as<T, bfloat16_t>) return w.bf16;
        else return w.f16;
    }

    const char* dtype_name(element_type t) { return t == element_type::f32 ? "f32" : t == element_type::bf16 ? "bf16" : "f16"; }

    /// Calls f with a typed null pointer selecting the element type.
    template <class F>
    void with_dtype(element_type t, F&& f)
    {
        switch (t)
        {
            case element_type::f32: f(static_cast<const float*>(nullptr)); break;
            case element_type::bf16: f(static_cast<const bfloat16_t*>(nullptr)); break;
            case element_type::f16: f(static_cast<const float16_t*>(nullptr)); break;
        }
    }

    // ---------------------------------------------------------------- quantize kernels

    struct kernel_case
    {
        bench_shape shape;
        orbitq::quant_spec spec;
        element_type dtype;
        unsigned threads;
    };

    void bm_quantize(benchmark::State& state, const kernel_case& c)
    {
        const weights& w = weights_for(c.shape);
        with_dtype(c.dtype, [&]<class T>(const T*) {
            const auto view = orbitq::make_view(data_of<T>(w).data(), c.shape.rows, c.shape.cols, "bench");
            orbitq::quantized_tensor q;
            orbitq::quantize_into(view, q, c.spec, c.threads);  // sizes the outputs once
            for (auto _ : state)
            {
                orbitq::quantize_into(view, q, c.spec, c.threads);
                benchmark::DoNotOptimize(q.codes.data());
                benchmark::DoNotOptimize(q.scales.data());
                benchmark::ClobberMemory();
            }
            state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * view.size() * sizeof(T)));
        });
    }

    // ---------------------------------------------------------------- roofline loops
    // Plain loops the compiler vectorizes for the build's instruction set; rows split across
    // threads with the same orbitq::parallel_rows the kernels use.

    inline float widen(float x) { return x; }
    inline float widen(bfloat16_t x) { return orbitq::to_float(x); }

    /// read T, write int8: dst[i] = (int8_t)src[i]
    template <class T>
    void convert_loop(const T* __restrict src, std::int8_t* __restrict dst, std::size_t n)
    {
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<std::int8_t>(widen(src[i]));
    }

    /// binary16 has no portable vectorizable widening in C++ (GCC 12 calls a library routine for
    /// _Float16 without AVX512-FP16), so this loop uses the F16C conversion when it is there.
    void convert_loop(const float16_t* __restrict src, std::int8_t* __restrict dst, std::size_t n)
    {
        std::size_t i = 0;
#if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16)
        {
            const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
        }
#elif defined(__F16C__) && defined(__AVX2__)
        for (; i + 8 <= n; i += 8)
        {
            const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
            const __m256i w = _mm256_cvttps_epi32(v);
            const __m128i p = _mm_packs_epi16(_mm_packs_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)), _mm_setzero_si128());
            _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i), p);
        }
#endif
        for (; i < n; ++i) dst[i] = static_cast<std::int8_t>(orbitq::to_float(src[i]));
    }

    /// convert_loop with streaming stores of whole 64-byte lines (AVX-512BW builds; elsewhere
    /// the plain loop): the lower bound for kernels that stream their codes, which skip the
    /// read for ownership of each code line that the plain loop pays.
    template <class T>
    void convert_stream_loop(const T* __restrict src, std::int8_t* __restrict dst, std::size_t n)
    {
        std::size_t i = 0;
#if defined(__AVX512BW__)
        if constexpr (!std::same_as<T, float16_t>)
        {
            const std::size_t head = std::min(n, (64 - reinterpret_cast<std::uintptr_t>(dst) % 64) % 64);
            convert_loop(src, dst, head);
            const auto widened = [](const T* p) {
                if constexpr (std::same_as<T, float>) return _mm512_loadu_ps(p);
                else
                {
                    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
                    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
                }
            };
            const auto narrow = [&](const T* p) { return _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(widened(p))); };
            for (i = head; i + 64 <= n; i += 64)
            {
                const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(narrow(src + i)), narrow(src + i + 16), 1);
                const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(narrow(src + i + 32)), narrow(src + i + 48), 1);
                _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
            }
            _mm_sfence();
        }
#endif
        convert_loop(src + i, dst + i, n - i);
    }

    /// read-only max|x|, on the bit patterns (integer max of the magnitude bits orders the same
    /// as max |x| for finite values and vectorizes without -ffast-math).
    template <class T>
    std::uint32_t max_loop(const T* __restrict src, std::size_t n)
    {
        if constexpr (std::same_as<T, float>)
        {
            const auto* u = reinterpret_cast<const std::uint32_t*>(src);
            std::uint32_t m = 0;
            for (std::size_t i = 0; i < n; ++i) m = std::max(m, u[i] & 0x7fffffffu);
            return m;
        }
        else
        {
            const auto* u = reinterpret_cast<const std::uint16_t*>(src);
            std::uint16_t m = 0;
            for (std::size_t i = 0; i < n; ++i) m = std::max<std::uint16_t>(m, u[i] & 0x7fffu);
            return m;
        }
    }

    enum class roofline_kind
    {
        convert,
        convert_stream,
        max,
        memcpy
    };

    struct roofline_case
    {
        bench_shape shape;
        roofline_kind kind;
        element_type dtype;
        unsigned threads;
    };

    void bm_roofline(benchmark::State& state, const roofline_case& c)
    {
        const weights& w = weights_for(c.shape);
        with_dtype(c.dtype, [&]<class T>(const T*) {
            const T* src = data_of<T>(w).data();
            const std::size_t cols = c.shape.cols;
            orbitq::code_vector dst(c.shape.rows * cols * (c.kind == roofline_kind::memcpy ? sizeof(T) : 1));
            std::uint32_t sink[2] = {0, 0};
            for (auto _ : state)
            {
                orbitq::parallel_rows(c.shape.rows, c.threads, [&](std::size_t first, std::size_t last) {
                    const std::size_t n = (last - first) * cols;
                    switch (c.kind)
                    {
                        case roofline_kind::convert: convert_loop(src + first * cols, dst.data() + first * cols, n); break;
                        case roofline_kind::convert_stream: convert_stream_loop(src + first * cols, dst.data() + first * cols, n); break;
                        case roofline_kind::max: sink[first == 0 ? 0 : 1] = max_loop(src + first * cols, n); break;
                        case roofline_kind::memcpy:
                            std::memcpy(dst.data() + first * cols * sizeof(T), src + first * cols, n * sizeof(T));
                            break;
                    }
                });
                benchmark::DoNotOptimize(dst.data());
                benchmark::DoNotOptimize(sink);
                benchmark::ClobberMemory();
            }
            state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * c.shape.rows * cols * sizeof(T)));
        });
    }

    const char* roofline_name(roofline_kind k)
    {
        switch (k)
        {
            case roofline_kind::convert: return "convert";
            case roofline_kind::convert_stream: return "convert_stream";
            case roofline_kind::max: return "max";
            default: return "memcpy";
        }
    }

    /// The fastest repetition: on a shared machine the least disturbed one (bench/report
    /// --stat min). Applied to times; the report derives GB/s from the time and the shape.
    double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

    /// Thread counts to run: ORBITQ_BENCH_THREADS as a comma-separated list (e.g. "1,2,8,16"
    /// on a larger machine), default 1 and 2 (bench/README.md states its targets at these counts).
    std::vector<unsigned> bench_thread_counts()
    {
        std::vector<unsigned> counts;
        const char* env = std::getenv("ORBITQ_BENCH_THREADS");
        std::string list = env && *env ? env : "1,2";
        for (std::size_t pos = 0; pos <= list.size();)
        {
            const std::size_t end = std::min(list.find(',', pos), list.size());
            const std::string item = list.substr(pos, end - pos);
            char* stop = nullptr;
            const unsigned long t = std::strtoul(item.c_str(), &stop, 10);
            if (item.empty() || *stop != '\0' || t == 0 || t > 1024)
            {
                std::fprintf(stderr, "orbitq_bench: ORBITQ_BENCH_THREADS=%s: expected thread counts 1..1024 separated by commas\n", list.c_str());
                std::exit(2);
            }
            counts.push_back(static_cast<unsigned>(t));
            pos = end + 1;
        }
        return counts;
    }

    void register_all()
    {
        using orbitq::granularity_kind;
        using orbitq::scheme_kind;
        const std::vector<unsigned> thread_counts = bench_thread_counts();
        const element_type dtypes[] = {element_type::f32, element_type::bf16, element_type::f16};
        for (const bench_shape& s : shapes)
        {
            for (unsigned t : thread_counts)
            {
                for (element_type d : dtypes)
                {
                    for (roofline_kind k : {roofline_kind::convert, roofline_kind::convert_stream, roofline_kind::max, roofline_kind::memcpy})
                    {
                        if (k == roofline_kind::memcpy && d != element_type::f32) continue;  // bytes are bytes
                        // streamed codes exist where the kernels stream them (f32 and bf16 inputs here)
                        if (k == roofline_kind::convert_stream && (!orbitq::kernels::simd::has_streaming_stores || d == element_type::f16)) continue;
                        const std::string name = "roofline/" + s.name() + "/" + roofline_name(k) + "/" + dtype_name(d)
                                                 + "/threads:" + std::to_string(t);
                        benchmark::RegisterBenchmark(name.c_str(), bm_roofline, roofline_case{s, k, d, t})
                            ->UseRealTime()
                            ->ComputeStatistics("min", min_of)
                            ->Unit(benchmark::kMillisecond);
                    }
                }
            }
            // per_group: groups of 32 (llama.cpp's blocks), 64 and 128 (GPTQ / AWQ), where they divide the rows
            const std::pair<granularity_kind, std::size_t> grans[] = {{granularity_kind::per_tensor, 0},
                                                                      {granularity_kind::per_channel, 0},
                                                                      {granularity_kind::per_group, 32},
                                                                      {granularity_kind::per_group, 64},
                                                                      {granularity_kind::per_group, 128}};
            for (const auto& [g, group] : grans)
            {
                if (group != 0 && s.cols % group != 0) continue;
                for (scheme_kind sch : {scheme_kind::symmetric, scheme_kind::asymmetric})
                {
                    for (int bits : {8, 4})
                    {
                        for (element_type d : dtypes)
                        {
                            for (unsigned t : thread_counts)
                            {
                                orbitq::quant_spec spec;
                                spec.granularity = g;
                                spec.group_size = group;
                                spec.scheme = sch;
                                spec.bits = bits;
                                const std::string gname = group != 0 ? "per_group" + std::to_string(group) : orbitq::to_string(g);
                                const std::string name = "quantize/" + s.name() + "/" + gname + "/" + orbitq::to_string(sch) + "/int"
                                                         + std::to_string(bits) + "/" + dtype_name(d)
                                                         + "/threads:" + std::to_string(t);
                                benchmark::RegisterBenchmark(name.c_str(), bm_quantize, kernel_case{s, spec, d, t})
                                    ->UseRealTime()
                                    ->ComputeStatistics("min", min_of)
                                    ->Unit(benchmark::kMillisecond);
                            }
                        }
                    }
                }
            }
            // the float formats (quantize_float.hpp): fp8_e4m3 per tensor, channel and 128 x 128
            // blocks, mxfp4 (groups of 32), nvfp4 (groups of 16), f32 and bf16 in
            struct float_case
            {
                scheme_kind scheme;
                granularity_kind granularity;
                std::size_t group, block_rows;
                const char* name;
            };
            const float_case floats[] = {{scheme_kind::fp8_e4m3, granularity_kind::per_tensor, 0, 0, "per_tensor"},
                                         {scheme_kind::fp8_e4m3, granularity_kind::per_channel, 0, 0, "per_channel"},
                                         {scheme_kind::fp8_e4m3, granularity_kind::per_block, 128, 128, "per_block128x128"},
                                         {scheme_kind::mxfp4, granularity_kind::per_group, 32, 0, "per_group32"},
                                         {scheme_kind::nvfp4, granularity_kind::per_group, 16, 0, "per_group16"}};
            for (const float_case& f : floats)
            {
                for (element_type d : {element_type::f32, element_type::bf16})
                {
                    for (unsigned t : thread_counts)
                    {
                        orbitq::quant_spec spec;
                        spec.scheme = f.scheme;
                        spec.bits = f.scheme == scheme_kind::fp8_e4m3 ? 8 : 4;
                        spec.granularity = f.granularity;
                        spec.group_size = f.group;
                        spec.block_rows = f.block_rows;
                        spec.ragged_groups = true;
                        const std::string name = "quantize/" + s.name() + "/" + f.name + "/" + orbitq::to_string(f.scheme) + "/"
                                                 + (spec.bits == 8 ? "fp8" : "fp4") + "/" + dtype_name(d) + "/threads:" + std::to_string(t);
                        benchmark::RegisterBenchmark(name.c_str(), bm_quantize, kernel_case{s, spec, d, t})
                            ->UseRealTime()
                            ->ComputeStatistics("min", min_of)
                            ->Unit(benchmark::kMillisecond);
                    }
                }
            }
            // searched scales (scale_search::mse), int4 where it helps most, 1 thread: the issue's
            // target is f32 in, per_group 32, at least 2 GB/s
            for (const auto& [g, group] : {std::pair{granularity_kind::per_channel, std::size_t(0)}, std::pair{granularity_kind::per_group, std::size_t(32)}})
            {
                for (scheme_kind sch : {scheme_kind::symmetric, scheme_kind::asymmetric})
                {
                    for (element_type d : {element_type::f32, element_type::bf16})
                    {
                        orbitq::quant_spec spec;
                        spec.granularity = g;
                        spec.group_size = group;
                        spec.scheme = sch;
                        spec.bits = 4;
                        spec.scales = orbitq::scale_search::mse;
                        const std::string gname = group != 0 ? "per_group" + std::to_string(group) : orbitq::to_string(g);
                        const std::string name = "quantize_mse/" + s.name() + "/" + gname + "/" + orbitq::to_string(sch) + "/int4/" + dtype_name(d)
                                                 + "/threads:1";
                        benchmark::RegisterBenchmark(name.c_str(), bm_quantize, kernel_case{s, spec, d, 1})
                            ->UseRealTime()
                            ->ComputeStatistics("min", min_of)
                            ->Unit(benchmark::kMillisecond);
                        if (d != element_type::f32) continue;
                        if (sch == scheme_kind::symmetric)
                        {
                            // negative scales allowed (quant_spec::signed_scales)
                            orbitq::quant_spec signed_spec = spec;
                            signed_spec.signed_scales = true;
                            benchmark::RegisterBenchmark((name + "/signed").c_str(), bm_quantize, kernel_case{s, signed_spec, d, 1})
                                ->UseRealTime()
                                ->ComputeStatistics("min", min_of)
                                ->Unit(benchmark::kMillisecond);
                        }
                        // weighted by a column importance (one orbit at a time)
                        std::vector<float> a(s.cols);
                        for (std::size_t c = 0; c < a.size(); ++c) a[c] = 0.25f + static_cast<float>((c * 2654435761u) % 1000) / 250.0f;
                        spec.importance = orbitq::column_importance::of(std::move(a));
                        benchmark::RegisterBenchmark((name + "/importance").c_str(), bm_quantize, kernel_case{s, spec, d, 1})
                            ->UseRealTime()
                            ->ComputeStatistics("min", min_of)
                            ->Unit(benchmark::kMillisecond);
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
    benchmark::AddCustomContext("orbitq_simd_arch", orbitq::kernels::simd::arch_name());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
