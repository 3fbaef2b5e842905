/// @file statistics.hpp
/// @brief Orbit statistics as semigroups, and the reductions that fold them.
///
/// A statistic S has `observe(x)` (the statistic of the one-element orbit {x}) and an
/// associative `combine(a, b)`: combine(combine(a, b), c) == combine(a, combine(b, c)).
/// Where an identity e exists (combine(e, a) == a == combine(a, e)), S is a monoid and
/// `S::identity()` returns it. Because orbits nest (group within row within tensor), the
/// statistic of a row is the combine of its groups' statistics and that of the tensor is the
/// combine of its rows': one pass over the data yields every granularity.
///
/// Associativity is exact for abs_max and min_max (max/min are exact in floating point). For
/// sum_squares the sum is in double and associativity holds up to rounding (|error| <= n * eps);
/// orbitq always combines in a fixed order, so results never depend on thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <iterator>
#include <limits>

namespace orbitq
{
    /// @brief A semigroup statistic: `observe` maps a value to a statistic, `combine` is associative.
    template <class S>
    concept semigroup_statistic = std::regular<S> && requires(const S& a, const S& b, float x) {
        { S::observe(x) } -> std::same_as<S>;
        { combine(a, b) } -> std::same_as<S>;
    };

    /// @brief A semigroup statistic with a two-sided identity `S::identity()`.
    template <class S>
    concept monoid_statistic = semigroup_statistic<S> && requires {
        { S::identity() } -> std::same_as<S>;
    };

    /// @brief max |x| over the orbit. Monoid with identity 0 (|x| >= 0).
    struct abs_max
    {
        float value = 0.0f;

        static constexpr abs_max identity() noexcept { return {0.0f}; }
        static abs_max observe(float x) noexcept { return {std::fabs(x)}; }
        friend constexpr abs_max combine(abs_max a, abs_max b) noexcept { return {a.value < b.value ? b.value : a.value}; }
        friend constexpr bool operator==(abs_max, abs_max) = default;
    };

    /// @brief (min x, max x) over the orbit. Monoid with identity (+inf, -inf).
    ///
    /// Maps homomorphically onto abs_max: to_abs_max(combine(a, b)) == combine(to_abs_max(a),
    /// to_abs_max(b)), so kernels compute min_max once and serve both schemes.
    struct min_max
    {
        float min = std::numeric_limits<float>::infinity();
        float max = -std::numeric_limits<float>::infinity();

        static constexpr min_max identity() noexcept { return {}; }
        static constexpr min_max observe(float x) noexcept { return {x, x}; }
        friend constexpr min_max combine(min_max a, min_max b) noexcept
        {
            return {b.min < a.min ? b.min : a.min, a.max < b.max ? b.max : a.max};
        }
        friend constexpr bool operator==(min_max, min_max) = default;

        /// @brief The abs_max of the same orbit. @pre the orbit is non-empty (min <= max).
        constexpr abs_max to_abs_max() const noexcept
        {
            const float a = -min;
            return {a < max ? max : a};
        }
    };

    /// @brief (sum of x^2 in double, count). Commutative monoid with identity (0, 0).
    struct sum_squares
    {
        double sum = 0.0;
        std::size_t count = 0;

        static constexpr sum_squares identity() noexcept { return {}; }
        static constexpr sum_squares observe(float x) noexcept
        {
            const double d = x;
            return {d * d, 1};
        }
        friend constexpr sum_squares combine(sum_squares a, sum_squares b) noexcept { return {a.sum + b.sum, a.count + b.count}; }
        friend constexpr bool operator==(sum_squares, sum_squares) = default;

        /// @brief Root mean square; 0 for the empty orbit.
        double rms() const noexcept { return count ? std::sqrt(sum / static_cast<double>(count)) : 0.0; }
    };

    /// @brief Folds a non-empty range of statistics with `combine`, left to right (EoP's
    ///        reduce_nonempty). @pre first != last.
    template <std::input_iterator I>
        requires semigroup_statistic<std::iter_value_t<I>>
    std::iter_value_t<I> reduce_nonempty(I first, I last)
    {
        auto acc = *first;
        for (++first; first != last; ++first) acc = combine(acc, *first);
        return acc;
    }

    /// @brief Folds a possibly empty range of statistics of a monoid; the empty range gives the identity.
    template <std::input_iterator I>
        requires monoid_statistic<std::iter_value_t<I>>
    std::iter_value_t<I> reduce(I first, I last)
    {
        using S = std::iter_value_t<I>;
        return first == last ? S::identity() : reduce_nonempty(first, last);
    }

    /// @brief The statistic of an orbit of values: combine of observe over a non-empty range
    ///        of values convertible to float (use orbitq::to_float for 16-bit types first).
    /// @pre first != last unless S is a monoid.
    template <semigroup_statistic S, std::input_iterator I>
    S observe_all(I first, I last)
    {
        if constexpr (monoid_statistic<S>)
        {
            if (first == last) return S::identity();
        }
        S acc = S::observe(static_cast<float>(*first));
        for (++first; first != last; ++first) acc = combine(acc, S::observe(static_cast<float>(*first)));
        return acc;
    }

    static_assert(monoid_statistic<abs_max> && monoid_statistic<min_max> && monoid_statistic<sum_squares>);
}
