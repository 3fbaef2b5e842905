/// @file statistics_spans.hpp
/// @brief The statistics of a span of values: min and max, the zero-including range that
///        builtin asymmetric schemes use, and max |x|, with 16-bit inputs reduced on their
///        raw bits; each also says whether every value was finite.
#pragma once

#include "orbitq/kernels/encode.hpp"

#include <bit>
#include <limits>
#include <type_traits>

namespace orbitq::kernels::simd
{
    namespace detail
    {
        /// Ordered key of 16-bit sign-magnitude bits (bf16, f16): k = b ^ ((b >> 15) & 0x7fff)
        /// flips the magnitude bits of negative values, so keys order as the values do (-0
        /// just below +0) and NaN keys lie beyond those of +-inf. The map is its own inverse,
        /// and works unchanged on keys sign-extended to int32 lanes. B: int16 or int32 (a batch
        /// or a scalar).
        template <class B>
        inline B ordered_key(const B& b) noexcept
        {
            return static_cast<B>(b ^ ((b >> 15) & B(0x7fff)));
        }

        /// min or max of float batches on their bits as lanes of W: std::int16_t or std::uint16_t
        /// (pairs of 16-bit values per float lane), std::int32_t or std::uint32_t (one value).
        /// As int32, max over sign-cleared floats is max |x| with every NaN and infinity pattern
        /// above FLT_MAX (a float max could drop a NaN); over raw floats it is the largest value
        /// >= +0 where there is one, as uint32 the most negative value where there is one.
        template <class W, bool Max>
        struct word_op
        {
            static_assert(sizeof(W) == 2 || sizeof(W) == 4, "16-bit pairs or 32-bit lanes");

            float operator()(float a, float b) const noexcept
            {
                using lanes = std::array<W, sizeof(float) / sizeof(W)>;
                const auto x = std::bit_cast<lanes>(a);
                const auto y = std::bit_cast<lanes>(b);
                lanes r;
                for (std::size_t i = 0; i < r.size(); ++i) r[i] = Max ? std::max(x[i], y[i]) : std::min(x[i], y[i]);
                return std::bit_cast<float>(r);
            }
            float_batch operator()(const float_batch& a, const float_batch& b) const noexcept
            {
                using half_batch = xsimd::batch<W, arch_type>;
                const half_batch u = xsimd::bitwise_cast<half_batch>(a);
                const half_batch v = xsimd::bitwise_cast<half_batch>(b);
                return xsimd::bitwise_cast<float_batch>(Max ? xsimd::max(u, v) : xsimd::min(u, v));
            }
            /// The op over the two 16-bit lanes of each 32-bit lane of v (a pair a tree of this
            /// op left), as an int32 lane: W's value, sign-extended (int16) or zero-extended
            /// (uint16).
            static int_batch fold_pairs(const float_batch& v) noexcept
                requires(sizeof(W) == 2)
            {
                const int_batch p = xsimd::bitwise_cast<int_batch>(v);
                const int_batch low = std::is_signed_v<W> ? int_batch((p << 16) >> 16) : int_batch(p & int_batch(0xffff));
                const int_batch high = std::is_signed_v<W> ? int_batch(p >> 16) : int_batch((p >> 16) & int_batch(0xffff));
                return Max ? xsimd::max(low, high) : xsimd::min(low, high);
            }
        };
        using max_int16_op = word_op<std::int16_t, true>;
        using min_int16_op = word_op<std::int16_t, false>;
        using max_uint16_op = word_op<std::uint16_t, true>;
        using max_bits_op = word_op<std::int32_t, true>;
        using max_ubits_op = word_op<std::uint32_t, true>;
    }

    /// @brief min and max of n values and whether all were finite. Equal (==) to
    ///        reference::min_max_span. @pre n > 0.
    ///
    /// Non-finite values without a per-value test: an infinity shows in the min or the max, a NaN
    /// in a detail::nan_guard fed each pair of batches.
    template <weight_element T>
    min_max min_max_span(const T* x, std::size_t n, bool& all_finite) noexcept
    {
        if constexpr (!std::same_as<T, float>)
        {
            // 16-bit inputs: reduce ordered int16 keys of the raw bits (detail::ordered_key),
            // twice the lanes per batch and no widening; -0 sorts below +0, which == does not see.
            using half_batch = xsimd::batch<std::int16_t, arch_type>;
            constexpr std::size_t hw = half_batch::size;
            constexpr std::int16_t largest_finite = detail::largest_finite_bits<T>;
            const auto key = [](const half_batch& b) { return detail::ordered_key(b); };
            half_batch lo0(std::numeric_limits<std::int16_t>::max()), lo1 = lo0;
            half_batch hi0(std::numeric_limits<std::int16_t>::min()), hi1 = hi0;
            const auto* u = reinterpret_cast<const std::int16_t*>(x);
            std::size_t i = 0;
            for (; i + 2 * hw <= n; i += 2 * hw)
            {
                const half_batch k0 = key(half_batch::load_unaligned(u + i));
                const half_batch k1 = key(half_batch::load_unaligned(u + i + hw));
                lo0 = xsimd::min(lo0, k0);
                hi0 = xsimd::max(hi0, k0);
                lo1 = xsimd::min(lo1, k1);
                hi1 = xsimd::max(hi1, k1);
            }
            for (; i + hw <= n; i += hw)
            {
                const half_batch k0 = key(half_batch::load_unaligned(u + i));
                lo0 = xsimd::min(lo0, k0);
                hi0 = xsimd::max(hi0, k0);
            }
            alignas(64) std::int16_t los[hw];
            alignas(64) std::int16_t his[hw];
            xsimd::min(lo0, lo1).store_aligned(los);
            xsimd::max(hi0, hi1).store_aligned(his);
            std::int16_t kmin = std::numeric_limits<std::int16_t>::max();
            std::int16_t kmax = std::numeric_limits<std::int16_t>::min();
            for (std::size_t k = 0; k < hw; ++k)
            {
                kmin = std::min(kmin, los[k]);
                kmax = std::max(kmax, his[k]);
            }
            const auto scalar_key = [](std::uint16_t b) { return detail::ordered_key(static_cast<std::int16_t>(b)); };
            detail::for_each_tail(x, i, n, [&](const T& v) {
                kmin = std::min(kmin, scalar_key(v.bits));
                kmax = std::max(kmax, scalar_key(v.bits));
            });
            all_finite = kmax <= largest_finite && kmin >= -largest_finite - 1;
            // keys back to bits (the same map), then exact widening
            return {to_float(T{std::bit_cast<std::uint16_t>(scalar_key(std::bit_cast<std::uint16_t>(kmin)))}),
                    to_float(T{std::bit_cast<std::uint16_t>(scalar_key(std::bit_cast<std::uint16_t>(kmax)))})};
        }
        constexpr float inf = std::numeric_limits<float>::infinity();
        float_batch mn0(inf), mn1(inf);
        float_batch mx0(-inf), mx1(-inf);
        detail::nan_guard<arch_type> nan;
        std::size_t i = 0;
        for (; i + 2 * width <= n; i += 2 * width)
        {
            const float_batch a = detail::in_register(detail::load(x + i, arch_type{}));
            const float_batch b = detail::in_register(detail::load(x + i + width, arch_type{}));
            nan.add(a, b);
            mn0 = xsimd::min(mn0, a);
            mx0 = xsimd::max(mx0, a);
            mn1 = xsimd::min(mn1, b);
            mx1 = xsimd::max(mx1, b);
        }
        if (i + width <= n)
        {
            const float_batch a = detail::load(x + i, arch_type{});
            nan.add(a, a);
            mn0 = xsimd::min(mn0, a);
            mx0 = xsimd::max(mx0, a);
            i += width;
        }
        min_max s = detail::reduce(xsimd::min(mn0, mn1), xsimd::max(mx0, mx1), arch_type{});
        bool tail_finite = true;
        detail::for_each_tail(x, i, n, [&](const T& t) {
            const float v = to_float(t);
            if (!std::isfinite(v)) tail_finite = false;
            s = combine(s, min_max::observe(v));
        });
        all_finite = tail_finite && !nan.any() && std::isfinite(s.min) && std::isfinite(s.max);
        return s;
    }

    /// @brief Whether the build has max instructions for int32, uint32 and uint16 lanes
    ///        (SSE4.1 and later). Where it does, the rows of builtin asymmetric schemes take
    ///        zero_range_span and their tiles of float32 values (or of values widened to it)
    ///        reduce raw bits; where not, both take the float min and max. (The bf16 tiles of
    ///        two batches per group reduce 16-bit words on every build.)
    inline constexpr bool has_native_int_max = std::derived_from<arch_type, xsimd::sse4_1> || std::derived_from<arch_type, xsimd::avx2> ||
                                               std::derived_from<arch_type, xsimd::avx512f>;

    /// @brief {min(min, 0), max(max, 0)} of n values (the only part of the statistic a builtin
    ///        asymmetric scheme's make_params uses, so its parameters equal those from
    ///        min_max_span) and whether all were finite. Works on the raw bits as integers: the
    ///        largest bits as unsigned are the most negative value where there is one (a value
    ///        >= +0 otherwise, which gives 0 as well), the largest as signed are the largest
    ///        value >= +0 where there is one (a negative value otherwise: 0). A NaN or an
    ///        infinity lies above the largest finite magnitude of its sign in that order, so two
    ///        integer maxima give both answers, with no NaN test.
    /// @pre n > 0.
    template <weight_element T>
    min_max zero_range_span(const T* x, std::size_t n, bool& all_finite) noexcept
    {
        using word = std::conditional_t<sizeof(T) == 2, std::int16_t, std::int32_t>;
        using uword = std::make_unsigned_t<word>;
        using word_batch = xsimd::batch<word, arch_type>;
        using uword_batch = xsimd::batch<uword, arch_type>;
        constexpr std::size_t hw = word_batch::size;
        const word* w = reinterpret_cast<const word*>(x);
        // The accumulators are float batches holding the integer lanes (detail::word_op): per
        // channel asym f32 rows in L2 ran 6 % faster than with integer-typed accumulators.
        // GCC copies each accumulator to another register after its max either way (vmovaps
        // here, vmovdqa64 there).
        constexpr detail::word_op<word, true> max_signed{};
        constexpr detail::word_op<uword, true> max_unsigned{};
        float_batch hi0 = xsimd::bitwise_cast<float_batch>(word_batch(std::numeric_limits<word>::min())), hi1 = hi0;  // -0: gives 0
        float_batch lo0(0.0f), lo1(0.0f);                                                                             // +0: gives 0
        std::size_t i = 0;
        for (; i + 2 * hw <= n; i += 2 * hw)
        {
            // each batch is loaded once (in_register), not once per max
            const float_batch a = detail::in_register(float_batch::load_unaligned(reinterpret_cast<const float*>(w + i)));
            const float_batch b = detail::in_register(float_batch::load_unaligned(reinterpret_cast<const float*>(w + i + hw)));
            hi0 = max_signed(hi0, a);
            hi1 = max_signed(hi1, b);
            lo0 = max_unsigned(lo0, a);
            lo1 = max_unsigned(lo1, b);
        }
        if (i + hw <= n)
        {
            const float_batch a = detail::in_register(float_batch::load_unaligned(reinterpret_cast<const float*>(w + i)));
            hi0 = max_signed(hi0, a);
            lo0 = max_unsigned(lo0, a);
            i += hw;
        }
        alignas(64) word his[hw];
        alignas(64) uword los[hw];
        xsimd::bitwise_cast<word_batch>(max_signed(hi0, hi1)).store_aligned(his);
        xsimd::bitwise_cast<uword_batch>(max_unsigned(lo0, lo1)).store_aligned(los);
        word hi = std::numeric_limits<word>::min();
        uword lo = 0;
        for (std::size_t k = 0; k < hw; ++k)
        {
            hi = std::max(hi, his[k]);
            lo = std::max(lo, los[k]);
        }
        detail::for_each_tail(w, i, n, [&](word v) {
            hi = std::max(hi, v);
            lo = std::max(lo, static_cast<uword>(v));
        });
        all_finite = hi <= static_cast<word>(detail::largest_finite_bits<T>) && lo <= detail::most_negative_finite_bits<T>;
        const auto value = [](uword bits) {
            if constexpr (std::same_as<T, float>) return std::bit_cast<float>(bits);
            else return to_float(T{bits});
        };
        const float lo_v = value(lo);
        const float hi_v = value(static_cast<uword>(hi));
        return {lo_v < 0.0f ? lo_v : 0.0f, hi_v > 0.0f ? hi_v : 0.0f};
    }

    /// @brief The magnitude bits of T: its bits without the sign, as a signed integer whose
    ///        order is that of |x| (every NaN and infinity above the largest finite value).
    template <weight_element T>
    using magnitude_bits = std::conditional_t<std::same_as<T, float>, std::int32_t, std::int16_t>;

    namespace detail
    {
        /// The |x| whose magnitude bits are m, and whether it is finite.
        template <weight_element T>
        float magnitude_value(magnitude_bits<T> m, bool& finite) noexcept
        {
            finite = static_cast<std::uint32_t>(m) <= largest_finite_bits<T>;
            if constexpr (std::same_as<T, float>) return std::bit_cast<float>(m);
            else return to_float(T{static_cast<std::uint16_t>(m)});
        }
    }

    /// @brief max |x| of n values, reported as the statistic {-max|x|, max|x|} (what symmetric
    ///        schemes use: its to_abs_max() equals that of min_max_span), and whether all were
    ///        finite. Works on the magnitude bits as integers: |x| orders as its bits & 0x7fffffff,
    ///        and every NaN and infinity sorts above FLT_MAX, so one max gives both answers.
    /// @pre n > 0.
    template <weight_element T>
    min_max abs_max_span(const T* x, std::size_t n, bool& all_finite) noexcept
    {
        if constexpr (!std::same_as<T, float>)
        {
            // 16-bit inputs: the same on their own magnitude bits, twice the lanes per batch and
            // no widening; NaN and inf sort above the largest finite pattern of either format.
            using half_batch = xsimd::batch<std::int16_t, arch_type>;
            constexpr std::size_t hw = half_batch::size;
            const half_batch magnitude(0x7fff);
            half_batch m0(0), m1(0);
            const auto* u = reinterpret_cast<const std::int16_t*>(x);
            std::size_t i = 0;
            for (; i + 2 * hw <= n; i += 2 * hw)
            {
                m0 = xsimd::max(m0, half_batch::load_unaligned(u + i) & magnitude);
                m1 = xsimd::max(m1, half_batch::load_unaligned(u + i + hw) & magnitude);
            }
            for (; i + hw <= n; i += hw) m0 = xsimd::max(m0, half_batch::load_unaligned(u + i) & magnitude);
            alignas(64) std::int16_t lanes[hw];
            xsimd::max(m0, m1).store_aligned(lanes);
            std::int16_t m = 0;
            for (std::size_t k = 0; k < hw; ++k) m = std::max(m, lanes[k]);
            detail::for_each_tail(x, i, n, [&](const T& v) { m = std::max(m, static_cast<std::int16_t>(v.bits & 0x7fff)); });
            const float a = detail::magnitude_value<T>(m, all_finite);
            return {-a, a};
        }
        using bits_batch = xsimd::batch<std::int32_t, arch_type>;
        const bits_batch magnitude(0x7fffffff);
        bits_batch m0(0), m1(0);
        std::size_t i = 0;
        for (; i + 2 * width <= n; i += 2 * width)
        {
            m0 = xsimd::max(m0, xsimd::bitwise_cast<bits_batch>(detail::load(x + i, arch_type{})) & magnitude);
            m1 = xsimd::max(m1, xsimd::bitwise_cast<bits_batch>(detail::load(x + i + width, arch_type{})) & magnitude);
        }
        if (i + width <= n)
        {
            m0 = xsimd::max(m0, xsimd::bitwise_cast<bits_batch>(detail::load(x + i, arch_type{})) & magnitude);
            i += width;
        }
        alignas(64) std::int32_t lanes[width];
        xsimd::max(m0, m1).store_aligned(lanes);
        std::int32_t m = 0;
        for (std::size_t k = 0; k < width; ++k) m = std::max(m, lanes[k]);
        detail::for_each_tail(x, i, n, [&](const T& v) { m = std::max(m, static_cast<std::int32_t>(std::bit_cast<std::uint32_t>(to_float(v)) & 0x7fffffffu)); });
        const float a = detail::magnitude_value<float>(m, all_finite);
        return {-a, a};
    }


    /// @brief Folds one row of n values into a column-wise statistic: acc[i] = max(acc[i],
    ///        magnitude bits of x[i]). Rows folded this way give each column's max |x| over a
    ///        band of rows with one pass and no reduction per row (block orbits' statistic).
    /// @pre acc holds n values, 0 before the first row.
    template <weight_element T>
    void fold_abs_bits(const T* x, std::size_t n, magnitude_bits<T>* acc) noexcept
    {
        using M = magnitude_bits<T>;
        using batch = xsimd::batch<M, arch_type>;
        constexpr std::size_t w = batch::size;
        const batch magnitude(std::numeric_limits<M>::max());
        const auto* u = reinterpret_cast<const M*>(x);
        std::size_t i = 0;
        for (; i + w <= n; i += w) xsimd::max(batch::load_unaligned(acc + i), batch::load_unaligned(u + i) & magnitude).store_unaligned(acc + i);
        for (; i < n; ++i) acc[i] = std::max(acc[i], static_cast<M>(u[i] & std::numeric_limits<M>::max()));
    }

    /// @brief The largest |x| that acc[0..n) (fold_abs_bits) holds, and whether it is finite.
    /// @pre n > 0.
    template <weight_element T>
    float max_folded_abs(const magnitude_bits<T>* acc, std::size_t n, bool& finite) noexcept
    {
        using M = magnitude_bits<T>;
        using batch = xsimd::batch<M, arch_type>;
        constexpr std::size_t w = batch::size;
        batch m(0);
        std::size_t i = 0;
        for (; i + w <= n; i += w) m = xsimd::max(m, batch::load_unaligned(acc + i));
        alignas(64) M lanes[w];
        m.store_aligned(lanes);
        M r = 0;
        for (std::size_t k = 0; k < w; ++k) r = std::max(r, lanes[k]);
        for (; i < n; ++i) r = std::max(r, acc[i]);
        return detail::magnitude_value<T>(r, finite);
    }
}
