/// @file quantize_float.hpp
/// @brief The float-code schemes: FP8 E4M3, MXFP4 and NVFP4, as compressed-tensors and the OCP
///        specifications define them.
///
/// Numerical contract (float32 throughout; amax = max |x| of the orbit; codes by
/// kernels/float_codes.hpp: x / scale rounded to the nearest code, ties to even, saturating):
///
/// | scheme   | orbits                                  | scale of an orbit                                  | codes |
/// |----------|-----------------------------------------|----------------------------------------------------|-------|
/// | fp8_e4m3 | per_tensor, per_channel, per_group, per_block R x C | amax / 448 (stored in spec.scale_type) | E4M3FN |
/// | mxfp4    | groups of 32                            | 2^(floor(log2 amax) - 2), an E8M0 byte (exponent + 127), clamped to 2^±127 | E2M1 |
/// | nvfp4    | groups of 16, in one tensor orbit       | e4m3(global · (amax / 6)) / global, global = 448 · 6 / amax_tensor | E2M1 |
///
/// A zero orbit (amax = 0) gets codes 0 (mxfp4: scale byte 0, 2^-127; nvfp4: E4M3 scale 0); a
/// zero tensor gets an nvfp4 global scale of 1. The E8M0 and E4M3 scale bytes are kept in
/// quantized_tensor::scale_codes, the nvfp4 global scale in global_scale. Per-block orbits are
/// tiles of spec.block_rows x spec.group_size (the last ones shorter). Non-finite values are
/// refused as by the integer schemes; the search (scale_search::mse) and rounding half away from
/// zero are integer-scheme options and are refused here.
#pragma once

#include "orbitq/algebra/orbits.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/kernels/float_codes.hpp"
#include "orbitq/policy/dispatch.hpp"
#include "orbitq/quantized_tensor.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace orbitq
{
    /// @brief Largest nvfp4 global scale numerator: the E4M3 maximum times the E2M1 maximum.
    inline constexpr float nvfp4_global_numerator = e4m3_max * e2m1_max;

    namespace detail::float_schemes
    {
        /// An orbit's scale and, for mxfp4 / nvfp4, its scale byte.
        struct orbit_scale
        {
            float scale = 0.0f;
            std::uint8_t code = 0;
        };

        /// fp8_e4m3: amax / 448, rounded to the spec's scale type.
        inline orbit_scale fp8(float amax, const quant_spec& spec, const std::string& name)
        {
            const float s = amax / e4m3_max;
            return {stored_params(with_inverse(s), spec, name).scale, 0};
        }

        /// mxfp4: 2^(floor(log2 amax) - 2) (OCP MX v1.0, E2M1's largest exponent 2), clamped to
        /// E8M0's range 2^-127 .. 2^127.
        inline orbit_scale mxfp4(float amax) noexcept
        {
            const int e = amax > 0.0f ? std::clamp(std::ilogb(amax) - 2, -127, 127) : -127;
            return {std::ldexp(1.0f, e), static_cast<std::uint8_t>(e + 127)};
        }

        /// nvfp4's tensor scale: 448 · 6 / amax_tensor (1 for a zero tensor).
        /// @throws error (invalid_argument) when it overflows (amax_tensor below ~1.6e-35).
        inline float nvfp4_global(float amax_tensor, const std::string& name)
        {
            if (!(amax_tensor > 0.0f)) return 1.0f;
            const float g = nvfp4_global_numerator / amax_tensor;
            if (!std::isfinite(g))
            {
                throw error(error_kind::invalid_argument, "tensor '" + name + "': max |x| " + std::to_string(amax_tensor)
                                                              + " is too small for nvfp4's float32 global scale");
            }
            return g;
        }

        /// nvfp4: the group's E4M3 scale e4m3(global · (amax / 6)) and its value over global.
        inline orbit_scale nvfp4(float amax, float global) noexcept
        {
            const std::uint8_t c = to_e4m3(global * (amax / e2m1_max));
            return {e4m3_to_float(c) / global, c};
        }

        /// The orbit layout of a float spec. @throws error for a scheme/granularity the formats
        /// do not define, or as make_layout.
        inline orbit_layout layout(std::size_t rows, std::size_t cols, const quant_spec& spec)
        {
            const std::string what = "spec '" + spec.describe() + "': ";
            if (spec.scales != scale_search::amax) throw error(error_kind::invalid_argument, what + "the float schemes take amax scales (mse searches integer scales)");
            if (spec.rounding != rounding_kind::half_to_even) throw error(error_kind::invalid_argument, what + "the float schemes round half to even");
            const bool fp8 = spec.scheme == scheme_kind::fp8_e4m3;
            if (spec.bits != (fp8 ? 8 : 4)) throw error(error_kind::invalid_argument, what + "bits must be " + (fp8 ? "8" : "4"));
            if (!fp8)
            {
                const std::size_t g = spec.scheme == scheme_kind::mxfp4 ? 32 : 16;
                if (spec.granularity != granularity_kind::per_group || spec.group_size != g)
                {
                    throw error(error_kind::invalid_argument, what + to_string(spec.scheme) + " is defined on groups of " + std::to_string(g));
                }
            }
            switch (spec.granularity)
            {
                case granularity_kind::per_tensor: return make_layout<per_tensor>(rows, cols);
                case granularity_kind::per_channel: return make_layout<per_channel>(rows, cols);
                case granularity_kind::per_group: return make_layout<per_group<>>(rows, cols, spec.group_size, spec.ragged_groups);
                case granularity_kind::per_block: return make_block_layout(rows, cols, spec.block_rows, spec.group_size);
            }
            throw error(error_kind::invalid_argument, what + "unknown granularity");
        }

        /// f(std::true_type{}) when `stream` (the streamed stores fenced when f returns or throws),
        /// else f(std::false_type{}): codes of passes larger than the caches are streamed, as
        /// quantize_into does (kernels::simd::stream_codes).
        template <class F>
        void with_streaming(bool stream, F&& f)
        {
            if (!stream) return f(std::false_type{});
            struct fence
            {
                ~fence() { kernels::simd::store_fence(); }
            } fenced;
            f(std::true_type{});
        }

        /// Asks for row r + ahead while row r is encoded from L1 (as quantize_into's row passes do).
        template <weight_element T>
        void prefetch_ahead(const matrix_view<T>& w, std::size_t r, std::size_t last)
        {
            const std::size_t ahead = kernels::simd::prefetch_rows_ahead(w.cols * sizeof(T));
            if (r + ahead < last) kernels::simd::prefetch(w.row(r + ahead), w.cols * sizeof(T));
        }

        /// max |x| of every row of w (non-finite values refused).
        template <weight_element T>
        std::vector<float> row_abs_max(const matrix_view<T>& w, unsigned threads)
        {
            std::vector<float> m(w.rows);
            parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                for (std::size_t r = first; r < last; ++r)
                {
                    prefetch_ahead(w, r, last);
                    bool finite = true;
                    m[r] = kernels::simd::abs_max_span(w.row(r), w.cols, finite).max;
                    if (!finite) throw_non_finite(w, r);
                }
            });
            return m;
        }

        /// Encodes row r of w group by group with `scale_of(g, amax, finite)` into out (int8
        /// codes): the fused register pass where the groups are whole batches, spans elsewhere.
        template <kernels::float_code F, weight_element T, class ScaleOf>
        void encode_row_groups(const matrix_view<T>& w, std::size_t r, std::size_t group, std::int8_t* out, ScaleOf&& scale_of)
        {
            namespace ks = kernels::simd;
            const T* x = w.row(r);
            const std::size_t whole = w.cols / group;
            const auto on_group = [&](std::size_t g, float amax, bool finite) {
                if (!finite) throw_non_finite(w, r);
                return scale_of(g, amax);
            };
            std::size_t done = 0;
            const auto fused = [&]<std::size_t NB>(std::integral_constant<std::size_t, NB>) {
                if (group != NB * ks::width) return false;
                ks::encode_float_groups<F, NB>(x, whole, out, on_group);
                done = whole;
                return true;
            };
            fused(std::integral_constant<std::size_t, 1>{}) || fused(std::integral_constant<std::size_t, 2>{})
                || fused(std::integral_constant<std::size_t, 4>{}) || fused(std::integral_constant<std::size_t, 8>{});
            for (std::size_t g = done; g * group < w.cols; ++g)
            {
                const std::size_t c0 = g * group, n = std::min(group, w.cols - c0);
                bool finite = true;
                const float amax = ks::abs_max_span(x + c0, n, finite).max;
                ks::encode_float_span<F>(x + c0, n, on_group(g, amax, finite), out + c0);
            }
        }
    }

    namespace detail
    {
        /// quantize_into's path for the float schemes (see the file brief): q is laid out and filled.
        /// `tensor_amax` >= 0 stands for the max |x| of a per-tensor orbit that w is a row block
        /// of (the block then gets the whole tensor's scale); it is ignored otherwise.
        template <weight_element T>
        void quantize_float(const matrix_view<T>& w, quantized_tensor& q, const quant_spec& spec, unsigned threads, float tensor_amax = -1.0f)
        {
            using namespace float_schemes;
            q.shape = w.shape.empty() ? shape_type{w.rows, w.cols} : w.shape;
            q.rows = w.rows;
            q.cols = w.cols;
            q.spec = spec;
            q.layout = float_schemes::layout(w.rows, w.cols, spec);
            q.codes.resize(q.rows * q.row_bytes());
            q.scales.resize(q.layout.orbits());
            q.zero_points.clear();
            q.scale_codes.assign(spec.scheme == scheme_kind::fp8_e4m3 ? 0 : q.layout.orbits(), 0);
            q.global_scale = 0.0f;
            const orbit_layout& L = q.layout;
            const std::string& name = w.name;

            if (spec.scheme == scheme_kind::fp8_e4m3)
            {
                constexpr auto F = kernels::float_code::e4m3;
                const std::size_t gpr = L.groups_per_row;
                const bool stream = kernels::simd::stream_codes(w.rows * w.cols * sizeof(T), q.codes.size());
                // rows [first, last) encoded with their orbits' scales, codes streamed when `stream`
                const auto encode_rows = [&](std::size_t first, std::size_t last) {
                    with_streaming(stream, [&]<bool Stream>(std::bool_constant<Stream>) {
                        for (std::size_t r = first; r < last; ++r)
                        {
                            prefetch_ahead(w, r, last);
                            for (std::size_t g = 0; g < gpr; ++g)
                            {
                                const std::size_t c0 = g * L.group;
                                kernels::simd::encode_float_span<F, Stream>(w.row(r) + c0, std::min(L.group, w.cols - c0), q.scales[L.orbit(r, g)],
                                                                            q.codes.data() + r * w.cols + c0);
                            }
                        }
                    });
                };
                if (L.tensor_wide)
                {
                    // one orbit: the rows' max |x|, then the codes (two passes over memory)
                    float amax = tensor_amax;
                    if (amax < 0.0f)
                    {
                        const std::vector<float> m = row_abs_max(w, threads);
                        amax = *std::max_element(m.begin(), m.end());
                    }
                    q.scales[0] = fp8(amax, spec, name).scale;
                    parallel_rows(w.rows, threads, encode_rows);
                    return;
                }
                if (L.block_rows > 1)
                {
                    // blocks: band by band (block_rows rows, which stay in L2 between the two
                    // passes), the blocks' max |x|, then the band's codes
                    // (the band's columns folded row by row, each block's max taken once)
                    parallel_rows(L.orbit_rows(), threads, [&](std::size_t first_band, std::size_t last_band) {
                        std::vector<kernels::simd::magnitude_bits<T>> acc(w.cols);
                        for (std::size_t b = first_band; b < last_band; ++b)
                        {
                            const std::size_t r0 = b * L.block_rows, r1 = std::min(w.rows, r0 + L.block_rows);
                            std::fill(acc.begin(), acc.end(), 0);
                            for (std::size_t r = r0; r < r1; ++r)
                            {
                                prefetch_ahead(w, r, r1);
                                kernels::simd::fold_abs_bits(w.row(r), w.cols, acc.data());
                            }
                            for (std::size_t g = 0; g < gpr; ++g)
                            {
                                const std::size_t c0 = g * L.group, m = std::min(L.group, w.cols - c0);
                                bool finite = true;
                                const float amax = kernels::simd::max_folded_abs<T>(acc.data() + c0, m, finite);
                                if (!finite)
                                {
                                    for (std::size_t r = r0; r < r1; ++r)
                                    {
                                        if (kernels::reference::find_non_finite(w.row(r) + c0, m)) throw_non_finite(w, r);
                                    }
                                }
                                q.scales[b * gpr + g] = fp8(amax, spec, name).scale;
                            }
                            encode_rows(r0, r1);
                        }
                    });
                    return;
                }
                if (L.group == w.cols)
                {
                    // per channel: row r + 1's max |x| is reduced while row r is encoded
                    parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                        with_streaming(stream, [&]<bool Stream>(std::bool_constant<Stream>) {
                            bool finite = true;
                            float amax = kernels::simd::abs_max_span(w.row(first), w.cols, finite).max;
                            for (std::size_t r = first; r < last; ++r)
                            {
                                if (!finite) throw_non_finite(w, r);
                                const float scale = q.scales[r] = fp8(amax, spec, name).scale;
                                std::int8_t* out = q.codes.data() + r * w.cols;
                                if (r + 1 < last) amax = kernels::simd::encode_float_span_next<F, Stream>(w.row(r), w.cols, scale, out, w.row(r + 1), finite);
                                else kernels::simd::encode_float_span<F, Stream>(w.row(r), w.cols, scale, out);
                            }
                        });
                    });
                    return;
                }
                parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                    for (std::size_t r = first; r < last; ++r)
                    {
                        prefetch_ahead(w, r, last);
                        encode_row_groups<F>(w, r, L.group, q.codes.data() + r * w.cols, [&](std::size_t g, float amax) {
                            return q.scales[L.orbit(r, g)] = fp8(amax, spec, name).scale;
                        });
                    }
                });
                return;
            }

            constexpr auto F = kernels::float_code::e2m1;
            const bool nv = spec.scheme == scheme_kind::nvfp4;
            namespace ks = kernels::simd;
            using ks::float_batch;
            using ks::int_batch;
            // The tile form (kernels::simd::encode_float_tile): whole groups of 1, 2, 4 or 8
            // batches, rows contiguous and of an even length, so that the rows of a range are one
            // sequence of groups, orbits and packed codes alike.
            const std::size_t G = L.group, NB = G / ks::width;
            const bool tiles = G % ks::width == 0 && (NB == 1 || NB == 2 || NB == 4 || NB == 8) && w.cols % G == 0 && w.cols % 2 == 0
                            && w.stride == w.cols;
            // reports the row of the non-finite value in the tile of groups t, t + width of the
            // row range at `first`
            const auto throw_non_finite_in_tile = [&](std::size_t first, std::size_t t) {
                const std::size_t gpr = L.groups_per_row;
                for (std::size_t r = first + t / gpr; r <= first + (t + ks::width - 1) / gpr; ++r)
                {
                    if (kernels::reference::find_non_finite(w.row(r), w.cols)) throw_non_finite(w, r);
                }
            };
            // f(std::integral_constant<std::size_t, NB>{}) for the tiles' NB
            const auto with_nb = [&](const auto& f) {
                using ic = std::size_t;
                return NB == 1   ? f(std::integral_constant<ic, 1>{})
                     : NB == 2 ? f(std::integral_constant<ic, 2>{})
                     : NB == 4 ? f(std::integral_constant<ic, 4>{})
                               : f(std::integral_constant<ic, 8>{});
            };
            // nvfp4 in tiles: a first pass records every group's max |x| in q.scales (the global
            // scale is their max), so the second needs no statistic; else the rows' max |x|
            const bool stored_amax = nv && tiles;
            if (stored_amax)
            {
                std::vector<float> range_max(w.rows, 0.0f);  // at each row range's first row
                parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                    const std::size_t gpr = L.groups_per_row, total = (last - first) * gpr;
                    const T* x = w.row(first);
                    float_batch m(0.0f);
                    std::size_t t = 0;
                    for (; t + ks::width <= total; t += ks::width)
                    {
                        bool finite = true;
                        const float_batch a = with_nb([&]<std::size_t N>(std::integral_constant<std::size_t, N>) { return ks::tile_abs_max<N>(x + t * G, finite); });
                        if (!finite) throw_non_finite_in_tile(first, t);
                        a.store_unaligned(q.scales.data() + first * gpr + t);
                        m = xsimd::max(m, a);
                    }
                    float amax = ks::detail::reduce_max(m, ks::arch_type{});
                    for (; t < total; ++t)  // the last groups, fewer than a tile
                    {
                        bool finite = true;
                        const float a = q.scales[first * gpr + t] = ks::abs_max_span(x + t * G, G, finite).max;
                        if (!finite) throw_non_finite(w, first + t / gpr);
                        amax = std::max(amax, a);
                    }
                    range_max[first] = amax;
                });
                q.global_scale = nvfp4_global(w.rows == 0 ? 0.0f : *std::max_element(range_max.begin(), range_max.end()), name);
            }
            else if (nv)
            {
                const std::vector<float> m = row_abs_max(w, threads);
                q.global_scale = nvfp4_global(m.empty() ? 0.0f : *std::max_element(m.begin(), m.end()), name);
            }
            const float global = q.global_scale;
            // a tile's scales as a batch, recorded at orbit o0: the formulas of mxfp4() and nvfp4() lane by lane
            const auto tile_scales = [&](std::size_t o0, const float_batch& amax) {
                alignas(64) std::int32_t codes[ks::width];
                float_batch scale;
                if (nv)
                {
                    const int_batch c = ks::detail::float_codes<kernels::float_code::e4m3>(float_batch(global) * (amax / float_batch(e2m1_max)));
                    c.store_aligned(codes);
                    scale = ks::detail::e4m3_values(c) / float_batch(global);
                }
                else
                {
                    const int_batch e = xsimd::max((xsimd::bitwise_cast<int_batch>(amax) >> 23) - int_batch(129), int_batch(-127));
                    (e + int_batch(127)).store_aligned(codes);
                    scale = xsimd::bitwise_cast<float_batch>(xsimd::select(e >= int_batch(-126), (e + int_batch(127)) << 23, int_batch(0x00400000)));  // 2^-127
                }
                scale.store_unaligned(q.scales.data() + o0);
                for (std::size_t j = 0; j < ks::width; ++j) q.scale_codes[o0 + j] = static_cast<std::uint8_t>(codes[j]);
                return scale;
            };
            const auto group_scale = [&](std::size_t o, float amax) {
                const orbit_scale s = nv ? nvfp4(amax, global) : mxfp4(amax);
                q.scale_codes[o] = s.code;
                return q.scales[o] = s.scale;
            };
            parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                if (tiles)
                {
                    const std::size_t gpr = L.groups_per_row, total = (last - first) * gpr;
                    const std::size_t ahead = ks::width * ((8192 + ks::width * G * sizeof(T) - 1) / (ks::width * G * sizeof(T)));
                    const T* x = w.row(first);
                    std::int8_t* packed = q.codes.data() + first * q.row_bytes();
                    std::vector<std::int8_t> buf(G);
                    std::size_t t = 0;
                    for (; t + ks::width <= total; t += ks::width)
                    {
                        const std::size_t o0 = first * gpr + t;
                        // the tile 8 KiB ahead is asked for while this one is encoded from L1
                        if (t + ahead + ks::width <= total) ks::prefetch(x + (t + ahead) * G, ks::width * G * sizeof(T));
                        const auto scales = [&](const float_batch& amax) { return tile_scales(o0, amax); };
                        const bool finite = with_nb([&]<std::size_t N>(std::integral_constant<std::size_t, N>) {
                            if (!stored_amax) return ks::encode_float_tile<F, N>(x + t * G, packed + t * G / 2, scales);
                            ks::encode_float_tile_scaled<F, N>(x + t * G, packed + t * G / 2, scales(float_batch::load_unaligned(q.scales.data() + o0)));
                            return true;
                        });
                        if (!finite) throw_non_finite_in_tile(first, t);
                    }
                    for (; t < total; ++t)  // the last groups, fewer than a tile
                    {
                        bool finite = true;
                        const float amax = stored_amax ? q.scales[first * gpr + t] : ks::abs_max_span(x + t * G, G, finite).max;
                        if (!finite) throw_non_finite(w, first + t / gpr);
                        ks::encode_float_span<F>(x + t * G, G, group_scale(first * gpr + t, amax), buf.data());
                        ks::pack_int4(buf.data(), G, packed + t * G / 2);
                    }
                    return;
                }
                std::vector<std::int8_t> buf(w.cols);
                for (std::size_t r = first; r < last; ++r)
                {
                    prefetch_ahead(w, r, last);
                    encode_row_groups<F>(w, r, L.group, buf.data(), [&](std::size_t g, float amax) { return group_scale(L.orbit(r, g), amax); });
                    ks::pack_int4(buf.data(), w.cols, q.codes.data() + r * q.row_bytes());
                }
            });
        }
    }
}
