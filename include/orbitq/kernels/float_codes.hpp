/// @file float_codes.hpp
/// @brief Encoding values into small-float codes (E4M3FN bytes, E2M1 nibbles): the scalar
///        reference and the SIMD kernels that match it bit for bit.
///
/// Encoding of one value x of an orbit with scale s (float32): v = x / s (s = 0: the code of 0),
/// then the nearest code, ties to even, saturating (core/minifloat.hpp). Codes leave as int8:
/// an E4M3 byte's bit pattern, or an E2M1 nibble read as a two's complement int4 (sign-magnitude
/// 1.mmm becomes mmm - 8, so kernels::simd::pack_int4 packs the nibble itself).
///
/// The SIMD form rounds in integers on the float32 bits, as minifloat.hpp's encoders do: below
/// the smallest normal the magnitude times 2^(bias - 1 + M) is rounded by the conversion to
/// int32 (ties to even); above it, the mantissa is rounded to M bits by an integer addition and
/// the exponent rebased. Where the scale is a power of two (MX scales) it multiplies by the
/// inverse, which is exact and so equal to the division.
#pragma once

#include "orbitq/core/minifloat.hpp"
#include "orbitq/kernels/int4_packing.hpp"
#include "orbitq/kernels/tile_params.hpp"

#include <cstring>

namespace orbitq::kernels
{
    /// @brief The small-float code formats.
    enum class float_code
    {
        e4m3,  ///< OCP E4M3FN, one byte a value
        e2m1   ///< OCP E2M1, a nibble a value
    };

    namespace reference
    {
        /// @brief The int8 form of the code of v in format F (see the file brief).
        template <float_code F>
        inline std::int8_t encode_float(float v) noexcept
        {
            if constexpr (F == float_code::e4m3) return static_cast<std::int8_t>(to_e4m3(v));
            else
            {
                const std::uint8_t n = to_e2m1(v);
                return static_cast<std::int8_t>(n < 8 ? n : static_cast<int>(n) - 16);
            }
        }

        /// @brief Encodes n values of one orbit with scale `scale` into n int8 codes of format F.
        /// @pre the values are finite.
        template <float_code F, weight_element T>
        void encode_float_span(const T* x, std::size_t n, float scale, std::int8_t* out) noexcept
        {
            for (std::size_t i = 0; i < n; ++i) out[i] = encode_float<F>(scale != 0.0f ? to_float(x[i]) / scale : 0.0f);
        }
    }

    namespace simd
    {
        namespace detail
        {
            /// The int8 form of the codes of a batch (reference::encode_float for each lane).
            template <float_code F>
            [[gnu::always_inline]] inline int_batch float_codes(const float_batch& v) noexcept
            {
                constexpr int M = F == float_code::e4m3 ? 3 : 1, B = F == float_code::e4m3 ? 7 : 1, drop = 23 - M;
                constexpr std::int32_t max_bits = F == float_code::e4m3 ? 0x43e00000 : 0x40c00000;  // 448, 6
                constexpr std::int32_t min_normal_bits = (127 + 1 - B) << 23;
                const int_batch bits = xsimd::bitwise_cast<int_batch>(v);
                const int_batch u = xsimd::min(bits & int_batch(0x7fffffff), int_batch(max_bits));
                const int_batch sub = xsimd::nearbyint_as_int(xsimd::bitwise_cast<float_batch>(u) * float_batch(float(1 << (B - 1 + M))));
                const int_batch normal = ((u + int_batch((1 << (drop - 1)) - 1) + ((u >> drop) & int_batch(1))) >> drop) - int_batch((127 - B) << M);
                const int_batch m = xsimd::select(u < int_batch(min_normal_bits), sub, normal);
                if constexpr (F == float_code::e4m3) return xsimd::select(bits < int_batch(0), m - int_batch(128), m);
                else return xsimd::select((bits < int_batch(0)) && (m != int_batch(0)), m - int_batch(8), m);
            }

            /// The float32 values of E4M3FN bytes held in int32 lanes (NaN bytes excepted): the
            /// magnitude bits placed at float32's exponent-mantissa boundary give 2^(e - 127)(1 + m/8),
            /// or the subnormal m 2^-129 for e = 0, so one exact product by 2^120 rebases both to
            /// E4M3's bias 7; the sign bit moves to bit 31.
            inline float_batch e4m3_values(const int_batch& b) noexcept
            {
                const float_batch m = xsimd::bitwise_cast<float_batch>((b & int_batch(0x7f)) << 20) * float_batch(0x1p120f);
                return xsimd::bitwise_cast<float_batch>(xsimd::bitwise_cast<int_batch>(m) | ((b & int_batch(0x80)) << 24));
            }

            /// The float32 values of E2M1 nibbles held in int32 lanes (bits 0-3): as e4m3_values,
            /// with the magnitude at bit 22 and the product 2^126.
            inline float_batch e2m1_values(const int_batch& n) noexcept
            {
                const float_batch m = xsimd::bitwise_cast<float_batch>((n & int_batch(7)) << 22) * float_batch(0x1p126f);
                return xsimd::bitwise_cast<float_batch>(xsimd::bitwise_cast<int_batch>(m) | ((n & int_batch(8)) << 28));
            }

            /// The batch whose first half of lanes holds a and second half b.
            template <class A>
            inline fbatch<A> halves(float a, float b, A) noexcept
            {
                alignas(64) float h[fbatch<A>::size];
                for (std::size_t k = 0; k < fbatch<A>::size; ++k) h[k] = k < fbatch<A>::size / 2 ? a : b;
                return fbatch<A>::load_aligned(h);
            }

#if XSIMD_WITH_AVX512F
            template <class A>
                requires std::derived_from<A, xsimd::avx512f>
            inline fbatch<A> halves(float a, float b, A) noexcept
            {
                const __m512d lo = _mm512_castps_pd(_mm512_set1_ps(a));
                return fbatch<A>(_mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_set1_ps(b)), 1)));
            }
#endif

            /// x / scale as the reference computes it: a division, or a multiplication by the
            /// inverse where that is exact (a power-of-two scale).
            struct float_scaler
            {
                float_batch scale;
                float_batch inv;
                bool multiply;

                explicit float_scaler(float s) noexcept
                    : float_scaler(s, 1.0f / s)
                {
                }
                /// @pre i == 1.0f / s in float32.
                float_scaler(float s, float i) noexcept
                    : scale(s)
                    , inv(i)
                    , multiply(s > 0.0f && std::isfinite(i) && (std::bit_cast<std::uint32_t>(s) & 0x7fffffu) == 0
                               && std::bit_cast<std::uint32_t>(s) >= 0x00800000u)
                {
                }
                [[gnu::always_inline]] float_batch operator()(const float_batch& x) const noexcept { return multiply ? x * inv : x / scale; }
            };
        }

        /// @brief reference::encode_float_span, bit for bit. Stream: the codes' whole 64-byte
        ///        lines are written with streaming stores (where has_streaming_stores).
        template <float_code F, bool Stream = false, weight_element T>
        void encode_float_span(const T* x, std::size_t n, float scale, std::int8_t* out) noexcept
        {
            if (scale == 0.0f)
            {
                std::memset(out, 0, n);
                return;
            }
            constexpr bool streamed = Stream && has_streaming_stores;
            const detail::float_scaler scaled(scale);
            const auto code = [&](const float_batch& v) { return detail::float_codes<F>(scaled(v)); };
            const auto codes = [&](std::size_t i) { return code(detail::load(x + i, arch_type{})); };
            std::size_t i = 0;
            if constexpr (streamed)
            {
                i = std::min(n, (64 - reinterpret_cast<std::uintptr_t>(out) % 64) % 64);
                reference::encode_float_span<F>(x, i, scale, out);
            }
            // pairs of batches as load_pair gives them (bf16: in pack order, without shifts)
            for (; i + 4 * width <= n; i += 4 * width)
            {
                const auto [a, b] = detail::load_pair(x + i, arch_type{});
                const auto [c, d] = detail::load_pair(x + i + 2 * width, arch_type{});
                detail::store_int8_x4<detail::pack_ordered_pairs<T, arch_type>, false, streamed>(code(a), code(b), code(c), code(d), out + i,
                                                                                                 arch_type{});
            }
            for (; i + width <= n; i += width) detail::store_int8(codes(i), out + i, arch_type{});
            if (i < n) reference::encode_float_span<F>(x + i, n - i, scale, out + i);
        }

        /// @brief encode_float_span of x, which also reduces the n values of `next` (the next
        ///        row, read from memory while x's codes are computed from L1): returns their max
        ///        |x|, `next_finite` whether all were finite. Stream: the codes' whole 64-byte
        ///        lines are written with streaming stores (where has_streaming_stores).
        template <float_code F, bool Stream, weight_element T>
        float encode_float_span_next(const T* x, std::size_t n, float scale, std::int8_t* out, const T* next, bool& next_finite) noexcept
        {
            constexpr bool streamed = Stream && has_streaming_stores;
            const detail::float_scaler scaled(scale != 0.0f ? scale : 1.0f);
            const int_batch keep(scale != 0.0f ? -1 : 0);  // a zero orbit encodes zeros
            float_batch m(0.0f);
            auto bad = detail::non_finite(m, arch_type{});
            const auto reduce = [&](const float_batch& y) {
                bad = bad || detail::non_finite(y, arch_type{});
                m = xsimd::max(m, xsimd::abs(y));
            };
            const auto code = [&](const float_batch& v) { return detail::float_codes<F>(scaled(v)) & keep; };
            const auto codes = [&](std::size_t i) {
                reduce(detail::load(next + i, arch_type{}));
                return code(detail::load(x + i, arch_type{}));
            };
            std::size_t i = 0;
            std::size_t head = 0;
            if constexpr (streamed) head = std::min(n, (64 - reinterpret_cast<std::uintptr_t>(out) % 64) % 64);
            float amax = 0.0f;
            next_finite = true;
            const auto scalar = [&](std::size_t first, std::size_t last) {
                if (scale == 0.0f) std::memset(out + first, 0, last - first);
                else reference::encode_float_span<F>(x + first, last - first, scale, out + first);
                for (std::size_t k = first; k < last; ++k)
                {
                    const float v = to_float(next[k]);
                    next_finite = next_finite && std::isfinite(v);
                    amax = std::max(amax, std::fabs(v));
                }
            };
            scalar(0, head);
            // pairs of batches as load_pair gives them (bf16: in pack order, without shifts)
            for (i = head; i + 4 * width <= n; i += 4 * width)
            {
                for (std::size_t k = 0; k < 4 * width; k += 2 * width)
                {
                    const auto [y0, y1] = detail::load_pair(next + i + k, arch_type{});
                    reduce(y0);
                    reduce(y1);
                }
                const auto [a, b] = detail::load_pair(x + i, arch_type{});
                const auto [c, d] = detail::load_pair(x + i + 2 * width, arch_type{});
                detail::store_int8_x4<detail::pack_ordered_pairs<T, arch_type>, false, streamed>(code(a), code(b), code(c), code(d), out + i,
                                                                                                 arch_type{});
            }
            for (; i + width <= n; i += width) detail::store_int8(codes(i), out + i, arch_type{});
            amax = std::max(amax, detail::reduce_max(m, arch_type{}));
            next_finite = next_finite && !xsimd::any(bad);
            scalar(i, n);
            return amax;
        }

        /// @brief The max |x| of each of `width` whole groups of NB batches at x (group j at
        ///        x + j * NB * width) as one batch (lane j = group j), reduced by a transposing
        ///        tree; `finite` false when a value is not finite (the batch is then meaningless).
        template <std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline float_batch tile_abs_max(const T* x, bool& finite) noexcept
        {
            constexpr std::size_t G = NB * width;
            detail::lane_tree<detail::max_op, arch_type> tree;
            auto bad = detail::non_finite(float_batch(0.0f), arch_type{});
            for (std::size_t j = 0; j < width; j += 4)
            {
                float_batch m[4];
                for (std::size_t k = 0; k < 4; ++k)
                {
                    const T* p = x + (j + k) * G;
                    const float_batch b0 = detail::load(p, arch_type{});
                    bad = bad || detail::non_finite(b0, arch_type{});
                    m[k] = xsimd::abs(b0);
                    for (std::size_t nb = 1; nb < NB; ++nb)
                    {
                        const float_batch b = detail::load(p + nb * width, arch_type{});
                        bad = bad || detail::non_finite(b, arch_type{});
                        m[k] = xsimd::max(m[k], xsimd::abs(b));
                    }
                }
                tree.push4(m[0], m[1], m[2], m[3], detail::max_op{});
            }
            finite = !xsimd::any(bad);
            return tree.finish(detail::max_op{});
        }

        /// @brief Encodes `width` whole groups of NB batches at x (as tile_abs_max) with the
        ///        scales sc (lane j: group j's; 0: a zero orbit, codes 0) and packs them two codes
        ///        a byte (as pack_int4) from registers into out + j * NB * width / 2.
        /// @pre the values are finite.
        template <float_code F, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline void encode_float_tile_scaled(const T* x, std::int8_t* out, const float_batch& sc) noexcept
        {
            static_assert(F == float_code::e2m1, "the tile packs E2M1 nibbles");
            constexpr std::size_t G = NB * width;
            // a zero orbit (codes 0) divides by 1 and has its bytes zeroed
            const float_batch sd = xsimd::select(sc == float_batch(0.0f), float_batch(1.0f), sc);
            const float_batch iv = float_batch(1.0f) / sd;
            // float_scaler's choice made once for the tile: when every scale is zero or a normal
            // power of two (MX scales; the inverse is then exact), every group multiplies
            const int_batch bits = xsimd::bitwise_cast<int_batch>(sc);
            const bool multiply = xsimd::all((bits == int_batch(0)) || (((bits & int_batch(0x7fffff)) == int_batch(0)) && bits >= int_batch(0x00800000)));
            alignas(64) float s0[width], s[width], inv[width];
            sc.store_aligned(s0);
            sd.store_aligned(s);
            iv.store_aligned(inv);
            const auto encode = [&]<bool Multiply>(std::bool_constant<Multiply>) {
                for (std::size_t j = 0; j < width; ++j)
                {
                    std::int8_t* o = out + j * G / 2;
                    if (s0[j] == 0.0f)
                    {
                        std::memset(o, 0, G / 2);
                        continue;
                    }
                    const float_batch sj(s[j]), ij(inv[j]);
                    for (std::size_t nb = 0; nb < NB; ++nb)
                    {
                        const float_batch v = detail::load(x + j * G + nb * width, arch_type{});
                        detail::store_int4(detail::float_codes<F>(Multiply ? v * ij : v / sj), o + nb * width / 2, arch_type{});
                    }
                }
            };
            // bf16: each int32 lane holds two neighbouring values, so a shift and a mask give
            // the even- and the odd-indexed values as float32 without a shuffle, and their codes
            // are the low and high nibbles of the packed bytes. A chunk of 2 * width values is one
            // group (NB even) or the halves of two (NB = 1, the first width / 2 bytes the first
            // group's).
            const auto encode_pairs = [&]<bool Multiply>(std::bool_constant<Multiply>) {
                for (std::size_t c = 0; c < G / 2; ++c)
                {
                    float_batch sj, ij;
                    if constexpr (NB == 1)
                    {
                        sj = detail::halves(s[2 * c], s[2 * c + 1], arch_type{});
                        ij = detail::halves(inv[2 * c], inv[2 * c + 1], arch_type{});
                    }
                    else
                    {
                        sj = float_batch(s[2 * width * c / G]);
                        ij = float_batch(inv[2 * width * c / G]);
                    }
                    const int_batch u = int_batch::load_unaligned(reinterpret_cast<const std::int32_t*>(x + 2 * width * c));
                    const float_batch even = xsimd::bitwise_cast<float_batch>(u << 16);
                    const float_batch odd = xsimd::bitwise_cast<float_batch>(u & int_batch(-65536));
                    const int_batch ce = detail::float_codes<F>(Multiply ? even * ij : even / sj);
                    const int_batch co = detail::float_codes<F>(Multiply ? odd * ij : odd / sj);
                    // the byte ce | co << 4 as an int8 in [-128, 127]: the saturating narrow is exact
                    std::int8_t* o = out + width * c;
                    detail::store_int8((ce & int_batch(0x0f)) | (co << 4), o, arch_type{});
                    if constexpr (NB == 1)
                    {
                        if (s0[2 * c] == 0.0f) std::memset(o, 0, width / 2);
                        if (s0[2 * c + 1] == 0.0f) std::memset(o + width / 2, 0, width / 2);
                    }
                    else if (s0[2 * width * c / G] == 0.0f) std::memset(o, 0, width);
                }
            };
            const auto with_quotient = [&](const auto& f) {
                if (multiply) f(std::true_type{});
                else f(std::false_type{});
            };
            if constexpr (std::is_same_v<T, bfloat16_t> && std::endian::native == std::endian::little) with_quotient(encode_pairs);
            else with_quotient(encode);
        }

        /// @brief The E2M1 tile pass: the groups' max |x| (tile_abs_max), `scales(amax)` gives
        ///        the batch of their scales (and records what it must), and the groups are encoded
        ///        from L1 (encode_float_tile_scaled). Returns false, encoding nothing, when a value
        ///        is not finite (the caller reports it).
        template <float_code F, std::size_t NB, weight_element T, class Scales>
        bool encode_float_tile(const T* x, std::int8_t* out, Scales&& scales)
        {
            bool finite = true;
            const float_batch amax = tile_abs_max<NB>(x, finite);
            if (!finite) return false;
            encode_float_tile_scaled<F, NB>(x, out, scales(amax));
            return true;
        }

        /// @brief The fused pass over whole groups of NB batches of one row range: each group is
        ///        loaded once, its max |x| reduced, `on_group(g, amax, finite)` gives its scale
        ///        (0: a zero orbit), and its codes are encoded from registers into out + g * group.
        template <float_code F, std::size_t NB, weight_element T, class OnGroup>
        void encode_float_groups(const T* x, std::size_t groups, std::int8_t* out, OnGroup&& on_group)
        {
            constexpr std::size_t group = NB * width;
            for (std::size_t g = 0; g < groups; ++g)
            {
                const T* p = x + g * group;
                float_batch b[NB];
                for (std::size_t k = 0; k < NB; ++k) b[k] = detail::load(p + k * width, arch_type{});
                auto bad = detail::non_finite(b[0], arch_type{});
                float_batch a = xsimd::abs(b[0]);
                for (std::size_t k = 1; k < NB; ++k)
                {
                    bad = bad || detail::non_finite(b[k], arch_type{});
                    a = xsimd::max(a, xsimd::abs(b[k]));
                }
                const float scale = on_group(g, detail::reduce_max(a, arch_type{}), !xsimd::any(bad));
                std::int8_t* o = out + g * group;
                if (scale == 0.0f)
                {
                    std::memset(o, 0, group);
                    continue;
                }
                const detail::float_scaler scaled(scale);
                for (std::size_t k = 0; k < NB; ++k) detail::store_int8(detail::float_codes<F>(scaled(b[k])), o + k * width, arch_type{});
            }
        }
    }
}
