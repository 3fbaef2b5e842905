/// @file simd.hpp
/// @brief xsimd kernels for the statistics and quantize passes, compiled for the instruction set
///        of the build (xsimd::default_arch: AVX-512 with -march=native on this machine, SSE2 on a
///        baseline x86-64 build). Bit-identical to kernels::reference, which the tests check on
///        every length class (tails included).
///
/// 16-bit inputs are widened to float32 in blocks of `block` elements that stay in L1, never
/// through a copy of the tensor.
#pragma once

#include "orbitq/kernels/reference.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace orbitq::kernels::simd
{
    using arch_type = xsimd::default_arch;
    using float_batch = xsimd::batch<float, arch_type>;
    using int_batch = xsimd::batch<std::int32_t, arch_type>;

    /// @brief Elements widened at a time for 16-bit inputs.
    inline constexpr std::size_t block = 512;

    /// @brief Name of the instruction set these kernels were compiled for.
    inline const char* arch_name() noexcept { return arch_type::name(); }

    namespace detail
    {
        /// Widens n <= block 16-bit values into buf (f32). Exact.
        inline void widen(const bfloat16_t* x, std::size_t n, float* buf) noexcept
        {
            for (std::size_t i = 0; i < n; ++i)
            {
                buf[i] = std::bit_cast<float>(static_cast<std::uint32_t>(x[i].bits) << 16);
            }
        }

        inline void widen(const float16_t* x, std::size_t n, float* buf) noexcept
        {
#if defined(__FLT16_MAX__) && defined(__F16C__)
            for (std::size_t i = 0; i < n; ++i) buf[i] = static_cast<float>(std::bit_cast<_Float16>(x[i].bits));
#else
            for (std::size_t i = 0; i < n; ++i) buf[i] = to_float(x[i]);
#endif
        }

        /// Applies `f(const float* block_ptr, std::size_t count, std::size_t offset)` to x in blocks
        /// of float32 (16-bit inputs widened into an L1 buffer first).
        template <weight_element T, class F>
        inline void for_blocks(const T* x, std::size_t n, F&& f) noexcept
        {
            if constexpr (std::same_as<T, float>)
            {
                f(x, n, std::size_t{0});
            }
            else
            {
                alignas(64) float buf[block];
                for (std::size_t off = 0; off < n; off += block)
                {
                    const std::size_t m = std::min(block, n - off);
                    widen(x + off, m, buf);
                    f(static_cast<const float*>(buf), m, off);
                }
            }
        }

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

        template <rounding_policy R>
        inline void quantize_f32(const float* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
        {
            constexpr std::size_t w = float_batch::size;
            const float_batch inv(e.params.inv_scale);
            const float_batch scale(e.params.scale);
            const float_batch zp(static_cast<float>(e.params.zero_point));
            const float_batch lo(static_cast<float>(e.qmin));
            const float_batch hi(static_cast<float>(e.qmax));
            const bool divide = e.mode == scale_application::divide;
            const bool zero_orbit = e.params.scale == 0.0f;
            alignas(64) std::int32_t ibuf[w * 8];
            std::size_t i = 0;
            while (i + w <= n)
            {
                const std::size_t chunk = std::min<std::size_t>(w * 8, (n - i) / w * w);
                for (std::size_t k = 0; k < chunk; k += w)
                {
                    const float_batch b = float_batch::load_unaligned(x + i + k);
                    float_batch v = divide ? (zero_orbit ? float_batch(0.0f) : b / scale) : b * inv;
                    v = round<R>(v) + zp;
                    v = xsimd::min(xsimd::max(v, lo), hi);
                    xsimd::to_int(v).store_aligned(ibuf + k);
                }
                for (std::size_t k = 0; k < chunk; ++k) out[i + k] = static_cast<std::int8_t>(ibuf[k]);
                i += chunk;
            }
            for (; i < n; ++i) out[i] = reference::encode<R>(x[i], e);
        }
    }

    /// @brief min and max of n values and whether all were finite. @pre n > 0.
    template <weight_element T>
    min_max min_max_span(const T* x, std::size_t n, bool& all_finite) noexcept
    {
        constexpr std::size_t w = float_batch::size;
        float_batch vmin(std::numeric_limits<float>::infinity());
        float_batch vmax(-std::numeric_limits<float>::infinity());
        auto nan_seen = vmin != vmin;  // all false
        min_max tail = min_max::identity();
        bool tail_finite = true;
        detail::for_blocks(x, n, [&](const float* p, std::size_t m, std::size_t) {
            std::size_t i = 0;
            for (; i + w <= m; i += w)
            {
                const float_batch b = float_batch::load_unaligned(p + i);
                nan_seen = nan_seen || (b != b);
                vmin = xsimd::min(vmin, b);
                vmax = xsimd::max(vmax, b);
            }
            for (; i < m; ++i)
            {
                if (!std::isfinite(p[i])) tail_finite = false;
                tail = combine(tail, min_max::observe(p[i]));
            }
        });
        alignas(64) float lanes_min[w];
        alignas(64) float lanes_max[w];
        vmin.store_aligned(lanes_min);
        vmax.store_aligned(lanes_max);
        min_max s = tail;
        for (std::size_t k = 0; k < w; ++k) s = combine(s, min_max{lanes_min[k], lanes_max[k]});
        all_finite = tail_finite && !xsimd::any(nan_seen) && std::isfinite(s.min) && std::isfinite(s.max);
        return s;
    }

    /// @brief Encodes n values of one orbit into int8 codes; bit-identical to reference::quantize_span.
    template <rounding_policy R, weight_element T>
    void quantize_span(const T* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
    {
        detail::for_blocks(x, n, [&](const float* p, std::size_t m, std::size_t off) { detail::quantize_f32<R>(p, m, e, out + off); });
    }
}
