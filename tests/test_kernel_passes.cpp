// The xsimd kernels' streamed stores (spans at every alignment, tiles) and quantize's fast paths
// (tiles over contiguous rows, pipelined rows, int4 chunks, passes larger than the caches)
// against the scalar reference; see test_kernel_tiles.cpp for the tiles themselves.
#include "kernel_test_support.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

using namespace orbitq;
using namespace kernel_tests;

TEST_CASE_TEMPLATE_DEFINE("streamed spans equal the reference at every alignment and leave their neighbours alone", T, test_kernel_passes_1)
{
    const auto x = random_values<T>(1100, 5);
    const std::size_t sizes[] = {1, 15, 16, 47, 48, 63, 64, 65, 127, 128, 129, 200, 704, 1000};
    for (std::size_t offset = 0; offset < 64; ++offset)
    {
        for (std::size_t n : sizes)
        {
            CAPTURE(offset);
            CAPTURE(n);
            bool f = false;
            const min_max s = kernels::reference::min_max_span(x.data(), n, f);
            for (const encode_params& e : {params_for<symmetric<8>>(s, scale_application::multiply_inverse),
                                           params_for<asymmetric<8>>(s, scale_application::multiply_inverse),
                                           params_for<asymmetric<4>>(s, scale_application::multiply_inverse),
                                           params_for<symmetric<8>>(s, scale_application::divide)})
            {
                std::vector<std::int8_t> want(64 + n + 64, 99);
                kernels::reference::quantize_span<half_to_even>(x.data(), n, e, want.data() + offset);
                code_vector bounded(want.size(), 99), clamped(want.size(), 99);
                kernels::simd::quantize_span<half_to_even, true, true>(x.data(), n, e, bounded.data() + offset);
                kernels::simd::quantize_span<half_to_even, false, true>(x.data(), n, e, clamped.data() + offset);
                kernels::simd::store_fence();
                REQUIRE(std::equal(want.begin(), want.end(), bounded.begin()));
                REQUIRE(std::equal(want.begin(), want.end(), clamped.begin()));
            }
        }
    }
}
TEST_CASE_TEMPLATE_APPLY(test_kernel_passes_1, test_elements);

TEST_CASE_TEMPLATE_DEFINE("streamed tiles equal the reference; a misaligned output falls back to plain stores", T, test_kernel_passes_2)
{
    const std::size_t w = kernels::simd::width;
    for (std::size_t group : {w, 2 * w, 4 * w, 8 * w, 16 * w})
    {
        for (std::size_t n : {group * w * 3, group * (w * 2 + 3), group * 5})  // whole tiles, a partial last tile, no whole tile
        {
            for (std::size_t offset : {std::size_t{0}, std::size_t{16}, std::size_t{1}})
            {
                CAPTURE(group);
                CAPTURE(n);
                CAPTURE(offset);
                check_all_schemes_with_params<T, true>(random_values<T>(n, static_cast<unsigned>(n + group)), group, offset);
            }
        }
    }
}
TEST_CASE_TEMPLATE_APPLY(test_kernel_passes_2, test_elements);

// ---------------------------------------------------------------------------------------------
// The driver's fast paths (tiles over contiguous rows, pipelined rows, int4 chunks) against a
// scalar re-derivation from the reference kernels, on shapes large enough to use them.

namespace
{
    // Quantizes x on 1 thread and checks every scale, zero point and code against the reference,
    // then on 2 threads, which must give the same bits (each row is one thread's work).
    template <class G, class S, rounding_policy R, class T>
    void check_driver(const std::vector<T>& x, std::size_t rows, std::size_t cols, std::size_t group)
    {
        quant_spec spec;
        spec.group_size = group;
        const auto view = make_view(x.data(), rows, cols, "w");
        const quantized_tensor q = quantize<quantizer<G, S, R>>(view, spec, 1);
        const quantized_tensor q2 = quantize<quantizer<G, S, R>>(view, spec, 2);
        REQUIRE(q2.codes == q.codes);
        REQUIRE(q2.scales == q.scales);
        REQUIRE(q2.zero_points == q.zero_points);
        const std::size_t gsize = std::same_as<G, per_group<>> ? group : cols;
        std::vector<std::int8_t> codes(cols);
        std::vector<std::int8_t> packed((cols + 1) / 2);
        min_max tensor = min_max::identity();
        for (std::size_t r = 0; r < rows; ++r)
        {
            bool f = false;
            tensor = combine(tensor, kernels::reference::min_max_span(view.row(r), cols, f));
        }
        for (std::size_t r = 0; r < rows; ++r)
        {
            for (std::size_t c0 = 0; c0 < cols; c0 += gsize)
            {
                const std::size_t m = std::min(gsize, cols - c0);
                bool f = false;
                const min_max s = std::same_as<G, per_tensor> ? tensor : kernels::reference::min_max_span(view.row(r) + c0, m, f);
                const quant_params p = S::make_params(s);
                const std::size_t o = q.layout.orbit(r, c0 / q.layout.group);
                REQUIRE(q.scales[o] == p.scale);
                REQUIRE(q.zero_point(o) == p.zero_point);
                kernels::reference::quantize_span<R>(view.row(r) + c0, m, encode_params{p, S::qmin, S::qmax, spec.mode}, codes.data() + c0);
            }
            for (std::size_t c = 0; c < cols; ++c)
            {
                if (q.code(r, c) != codes[c])
                {
                    CAPTURE(r);
                    CAPTURE(c);
                    REQUIRE(q.code(r, c) == codes[c]);
                }
            }
        }
    }

    template <class T>
    void check_driver_all(std::size_t rows, std::size_t cols, std::size_t group)
    {
        CAPTURE(rows);
        CAPTURE(cols);
        CAPTURE(group);
        const auto x = random_values<T>(rows * cols, static_cast<unsigned>(rows + cols));
        check_driver<per_group<>, symmetric<8>, half_to_even>(x, rows, cols, group);
        check_driver<per_group<>, asymmetric<8>, half_to_even>(x, rows, cols, group);
        check_driver<per_group<>, symmetric<4>, half_away_from_zero>(x, rows, cols, group);
        check_driver<per_group<>, asymmetric<4>, half_to_even>(x, rows, cols, group);
        check_driver<per_channel, symmetric<8>, half_to_even>(x, rows, cols, group);
        check_driver<per_channel, asymmetric<4>, half_away_from_zero>(x, rows, cols, group);
        check_driver<per_channel, asymmetric<8>, half_away_from_zero>(x, rows, cols, group);
        check_driver<per_channel, symmetric<8, symmetric_range::full>, half_to_even>(x, rows, cols, group);
        check_driver<per_tensor, asymmetric<8>, half_to_even>(x, rows, cols, group);
        check_driver<per_tensor, symmetric<4>, half_to_even>(x, rows, cols, group);
    }
}

TEST_CASE_TEMPLATE_DEFINE("quantize's fast paths equal the reference on tile-sized shapes", T, test_kernel_passes_3)
{
    check_driver_all<T>(37, 704, 32);   // 22 groups a row: tiles span rows
    check_driver_all<T>(9, 2816, 16);   // 176 groups a row
    check_driver_all<T>(300, 64, 32);   // several rows per int4 chunk
    check_driver_all<T>(5, 99, 33);     // odd columns: general path, odd int4 rows
    check_driver_all<T>(13, 704, 64);   // groups of 8 (AVX2) or 4 (AVX-512) batches
    check_driver_all<T>(21, 1408, 128); // groups of 16 or 8 batches; tiles span rows
}
TEST_CASE_TEMPLATE_APPLY(test_kernel_passes_3, test_elements);

#if ORBITQ_TEST_ELEMENT <= 0  // the untyped cases run in the f32 executable
TEST_CASE("passes larger than the caches stream their codes and still equal the reference")
{
    // 2816 x 1408 f32: 15.9 MB in, 4.0 MB of int8 codes or 2.0 MB of int4 codes, over
    // stream_codes' 16 MiB either way
    const std::size_t rows = 2816, cols = 1408;
    REQUIRE(kernels::simd::stream_codes(rows * cols * sizeof(float), rows * cols / 2) == kernels::simd::has_streaming_stores);
    REQUIRE_FALSE(kernels::simd::stream_codes(rows * cols * sizeof(float) / 2, rows * cols / 2));
    const auto x = random_values<float>(rows * cols, 11);
    check_driver<per_channel, symmetric<8>, half_to_even>(x, rows, cols, 0);
    check_driver<per_channel, asymmetric<8>, half_away_from_zero>(x, rows, cols, 0);
    check_driver<per_group<>, symmetric<8>, half_to_even>(x, rows, cols, 32);
    check_driver<per_group<>, asymmetric<8>, half_to_even>(x, rows, cols, 32);
    check_driver<per_group<>, symmetric<8, symmetric_range::full>, half_away_from_zero>(x, rows, cols, 16);
    check_driver<per_tensor, symmetric<8>, half_to_even>(x, rows, cols, 0);
    // int4: the flat group tiles stream their packed codes, the other paths pack from a
    // row buffer that is never streamed
    check_driver<per_group<>, asymmetric<4>, half_to_even>(x, rows, cols, 32);
    check_driver<per_group<>, symmetric<4>, half_away_from_zero>(x, rows, cols, 16);
    check_driver<per_channel, asymmetric<4>, half_to_even>(x, rows, cols, 0);
    check_driver<per_tensor, symmetric<4>, half_to_even>(x, rows, cols, 0);
}

TEST_CASE("a non-finite value in a tile spanning rows names its own row and column")
{
    const std::size_t rows = 40;
    const std::size_t cols = 704;
    for (std::size_t at : {std::size_t{0}, 5 * cols + 700, 17 * cols + 33, rows * cols - 1})
    {
        for (int bits : {8, 4})
        {
            for (scheme_kind sch : {scheme_kind::symmetric, scheme_kind::asymmetric})
            {
                auto x = random_values<float>(rows * cols, 1);
                x[at] = std::numeric_limits<float>::infinity();
                quant_spec spec{.granularity = granularity_kind::per_group, .group_size = 32, .bits = bits, .scheme = sch};
                CAPTURE(at);
                CAPTURE(bits);
                for (unsigned threads : {1u, 2u})
                {
                    try
                    {
                        (void)quantize(make_view(x.data(), rows, cols, "w"), spec, threads);
                        FAIL("expected non_finite_error");
                    }
                    catch (const non_finite_error& e)
                    {
                        CHECK(e.row() == at / cols);
                        CHECK(e.col() == at % cols);
                    }
                }
            }
        }
    }
}
#endif
