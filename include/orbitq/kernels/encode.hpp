/// @file encode.hpp
/// @brief Rounding and encoding batches of values into int8 codes (the encode of one orbit),
///        and the prefetch hints of the row passes.
#pragma once

#include "orbitq/kernels/isa.hpp"

namespace orbitq::kernels::simd
{
    namespace detail
    {
        // ------------------------------------------------------------------ rounding and encoding

        template <rounding_policy R>
        inline float_batch round(const float_batch& v) noexcept
        {
            if constexpr (std::same_as<R, half_to_even>)
            {
                return xsimd::nearbyint(v);
            }
            else
            {
                // round half away from zero, exactly: v - trunc(v) is exact in float32.
                const float_batch t = xsimd::trunc(v);
                const float_batch frac = xsimd::abs(v - t);
                const float_batch step = xsimd::copysign(float_batch(1.0f), v);
                return xsimd::select(frac >= float_batch(0.5f), t + step, t);
            }
        }

        /// The batch form of reference::encode for one orbit's parameters.
        ///
        /// Computes code = R(clamp(v, qmin - zp, qmax - zp)) + zp in integers, which equals the
        /// reference's clamp(R(v) + zp, qmin, qmax): R is monotone and fixes integers, so clamping
        /// to integer bounds commutes with it, and where R(v) + zp is inexact in float32
        /// (|v| >= 2^24) both forms clamp to the same bound. Half-to-even rounds in the
        /// conversion itself (cvtps2dq, the current rounding mode, as std::nearbyint).
        /// With Clamp = false the float32 clamp is left out: only where quantize_span's Bounded
        /// shows it changes nothing (restricted symmetric) or the saturating narrow does it
        /// (the int8 range, with R(v) + zp exact in int32).
        /// @pre e is `vector_exact` (otherwise use the reference, see below).
        template <rounding_policy R, bool Clamp = true>
        struct encoder
        {
            float_batch inv;
            float_batch scale;
            float_batch lo;  ///< qmin - zp
            float_batch hi;  ///< qmax - zp
            int_batch zp;
            bool divide;
            bool zero_orbit;

            [[gnu::always_inline]] explicit encoder(const encode_params& e) noexcept
                : inv(e.params.inv_scale)
                , scale(e.params.scale)
                , lo(static_cast<float>(e.qmin - e.params.zero_point))
                , hi(static_cast<float>(e.qmax - e.params.zero_point))
                , zp(e.params.zero_point)
                , divide(e.mode == scale_application::divide)
                , zero_orbit(e.params.scale == 0.0f)
            {
            }

            /// False only when the reference would scale a finite value to NaN: multiplying by an
            /// infinite inverse (a subnormal scale). Such orbits are encoded by the reference.
            static bool vector_exact(const encode_params& e) noexcept
            {
                return e.mode == scale_application::divide || std::isfinite(e.params.inv_scale);
            }

            [[gnu::always_inline]] int_batch operator()(const float_batch& x) const noexcept
            {
                float_batch v = divide ? (zero_orbit ? float_batch(0.0f) : x / scale) : x * inv;
                if constexpr (Clamp) v = xsimd::min(xsimd::max(v, lo), hi);
                if constexpr (std::same_as<R, half_to_even>) return xsimd::nearbyint_as_int(v) + zp;
                else return xsimd::to_int(round<R>(v)) + zp;
            }
        };

        /// Whether the float32 clamp can be left out for a range [qmin, qmax] when the scaled
        /// values are bounded (quantize_span's Bounded, or a tile's own parameters): the
        /// restricted symmetric ranges (qmin == -qmax: |v| < qmax + 1/2 rounds inside) and the
        /// int8 range (the saturating narrow is the clamp). See needs_clamp for the proof.
        constexpr bool clamp_free_range(int qmin, int qmax) noexcept { return qmin == -qmax || (qmin == -128 && qmax == 127); }

        /// Clamps n int8 codes to [lo, hi] in place.
        inline void clamp_codes(std::int8_t* c, std::size_t n, std::int8_t lo, std::int8_t hi) noexcept
        {
            using byte_batch = xsimd::batch<std::int8_t, arch_type>;
            std::size_t i = 0;
            for (; i + byte_batch::size <= n; i += byte_batch::size)
            {
                xsimd::min(xsimd::max(byte_batch::load_unaligned(c + i), byte_batch(lo)), byte_batch(hi)).store_unaligned(c + i);
            }
            for (; i < n; ++i) c[i] = std::clamp(c[i], lo, hi);
        }

        /// Encodes n values with the vector form, the tail through the reference.
        /// @pre encoder<R>::vector_exact(e); Clamp = false only as encode_span allows it.
        /// (Adding the zero point to the narrow's 16-bit words, as the tiles do, ran faster in
        /// L2 but slower from memory here, by up to 30 % for bf16 rows: it stays in int32. With
        /// streaming stores, measured again: no change for f32 rows in L2 or from memory.)
        template <rounding_policy R, bool Clamp, bool Stream, weight_element T>
        [[gnu::always_inline]] inline void encode_vector(const T* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
        {
            constexpr bool streamed = Stream && has_streaming_stores;
            const encoder<R, Clamp> enc(e);
            std::size_t i = 0;
            if constexpr (streamed)
            {
                // codes up to the first 64-byte boundary are stored as usual, lines after it streamed
                const std::size_t head = std::min(n, (64 - reinterpret_cast<std::uintptr_t>(out) % 64) % 64);
                if (head != 0) encode_vector<R, Clamp, false>(x, head, e, out);
                i = head;
            }
            for (; i + 4 * width <= n; i += 4 * width)
            {
                const auto [a, b] = load_pair(x + i, arch_type{});
                const auto [c, d] = load_pair(x + i + 2 * width, arch_type{});
                store_int8_x4<pack_ordered_pairs<T, arch_type>, false, streamed>(enc(a), enc(b), enc(c), enc(d), out + i, arch_type{});
            }
            for (; i + width <= n; i += width) store_int8(enc(load(x + i, arch_type{})), out + i, arch_type{});
            for (; i < n; ++i) out[i] = reference::encode<R>(to_float(x[i]), e);
        }

        /// Encodes n values (any n); the tail, and orbits the vector form cannot take, go through
        /// the reference. Bounded: see simd::quantize_span; the float clamp is left out (see
        /// needs_clamp): it provably changes nothing (restricted symmetric), or the saturating
        /// narrow does it (the int8 range [-128, 127]), or a clamp of the int8 codes from L1
        /// (other ranges: int4).
        template <rounding_policy R, bool Bounded, bool Stream, weight_element T>
        [[gnu::always_inline]] inline void encode_span(const T* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
        {
            if (!encoder<R>::vector_exact(e))
            {
                for (std::size_t i = 0; i < n; ++i) out[i] = reference::encode<R>(to_float(x[i]), e);
                return;
            }
            if (!Bounded) return encode_vector<R, true, Stream>(x, n, e, out);
            if (clamp_free_range(e.qmin, e.qmax)) return encode_vector<R, false, Stream>(x, n, e, out);
            // codes clamped from L1 after the encode: not streamed, they are read back at once
            encode_vector<R, false, false>(x, n, e, out);
            clamp_codes(out, n, static_cast<std::int8_t>(e.qmin), static_cast<std::int8_t>(e.qmax));
        }

        /// The fused pass over whole groups of `NB` batches: load a group once, reduce it, ask
        /// `on_group` for its parameters, encode it from registers. With AbsMax only max |x| is
        /// reduced and reported as the statistic {-max|x|, max|x|}.
        template <rounding_policy R, bool AbsMax, std::size_t NB, weight_element T, class OnGroup>
        inline void quantize_groups_in_registers(const T* x, std::size_t groups, std::int8_t* out, OnGroup& on_group)
        {
            constexpr std::size_t group = NB * width;
            for (std::size_t g = 0; g < groups; ++g)
            {
                const T* p = x + g * group;
                float_batch b[NB];
                for (std::size_t k = 0; k < NB; ++k) b[k] = load(p + k * width, arch_type{});
                auto bad = non_finite(b[0], arch_type{});
                for (std::size_t k = 1; k < NB; ++k) bad = bad || non_finite(b[k], arch_type{});
                min_max s;
                if constexpr (AbsMax)
                {
                    float_batch a = xsimd::abs(b[0]);
                    for (std::size_t k = 1; k < NB; ++k) a = xsimd::max(a, xsimd::abs(b[k]));
                    const float m = reduce_max(a, arch_type{});
                    s = {-m, m};
                }
                else
                {
                    float_batch mn = b[0];
                    float_batch mx = b[0];
                    for (std::size_t k = 1; k < NB; ++k)
                    {
                        mn = xsimd::min(mn, b[k]);
                        mx = xsimd::max(mx, b[k]);
                    }
                    s = reduce(mn, mx, arch_type{});
                }
                const encode_params e = on_group(g, s, !xsimd::any(bad));
                std::int8_t* o = out + g * group;
                if (encoder<R>::vector_exact(e)) [[likely]]
                {
                    const encoder<R> enc(e);
                    for (std::size_t k = 0; k < NB; ++k) store_int8(enc(b[k]), o + k * width, arch_type{});
                }
                else
                {
                    reference::quantize_span<R>(p, group, e, o);
                }
            }
        }
    }

    /// @brief Asks for the cache lines of [p, p + bytes) to be brought in (a hint; no effect on
    ///        results). The row drivers call it on a row ahead of the one they encode, so memory
    ///        keeps streaming while a row's second pass runs from L1. ForWrite asks for the lines
    ///        in a writable state (prefetchw where the target has it), so that stores need not
    ///        read them for ownership on demand. The tile loop does so for 16-bit inputs, whose
    ///        codes are half as many bytes as the input (bench/compare, seed shape, both orders:
    ///        per_group32 bf16 tiles 3-5 % faster with it, f32 tiles 1-4 % slower; rows unchanged).
    template <bool ForWrite = false>
    inline void prefetch(const void* p, std::size_t bytes) noexcept
    {
#if defined(__GNUC__) || defined(__clang__)
        const char* c = static_cast<const char*>(p);
        for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, ForWrite ? 1 : 0, 3);
#else
        (void)p;
        (void)bytes;
#endif
    }

    /// @brief How many rows of `row_bytes` ahead a row-by-row pass should prefetch: at least
    ///        8 KiB ahead (bench/README.md: prefetch distance).
    inline std::size_t prefetch_rows_ahead(std::size_t row_bytes) noexcept
    {
        const std::size_t b = std::max<std::size_t>(1, row_bytes);
        return (8192 + b - 1) / b;
    }
}
