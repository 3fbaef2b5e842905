/// @file candidate_sums.hpp
/// @brief The sums that score K candidate encodings of one orbit: a vector monoid over the
///        orbit's elements.
///
/// For candidate k, with codes q_k(x) (integers) of each element x of the orbit and weights a
/// (1 unless the columns carry an importance, quant_spec::importance):
///   xq[k] = sum a x q_k(x),   qq[k] = sum a q_k(x)^2,   q[k] = sum a q_k(x);  x = sum a x,
///   n = sum a (the element count when unweighted).
/// The weighted squared error of dequantizing candidate k's codes with (scale s, zero point z) is
///   E = sum a x^2 - 2 s (xq - z x) + s^2 (qq - 2 z q + z^2 n),
/// so the scale and zero point that minimize it for those codes (a least-squares refit) and
/// the error differences between candidates follow from the sums alone (sum x^2 is common to
/// every candidate and cancels). Sums over disjoint parts of an orbit combine by addition:
/// rows of a per-tensor orbit are summed alone and combined in row order, which keeps the
/// result independent of the thread count. Unweighted, in double, products x * q are exact
/// (24 + 9 bits); qq, q and n are integers, exact in any order below 2^53 (float: 2^24); xq and
/// x round, and are summed in element order. Weighted sums round, always in element order.
#pragma once

#include <array>
#include <cstddef>

namespace orbitq
{
    /// @brief The monoid of the K candidates' sums over part of an orbit, in V (double: the
    ///        exact products above; float: products rounded once, for a cheaper search whose
    ///        result an exact double pass then checks).
    template <std::size_t K, class V = double>
    struct candidate_sums
    {
        std::array<V, K> xq{};
        std::array<V, K> qq{};
        std::array<V, K> q{};
        V x = 0;
        double n = 0;  ///< the weight total: the element count when unweighted

        /// @brief The identity: the sums of no element.
        static constexpr candidate_sums identity() noexcept { return {}; }

        /// @brief The sums of a followed by b (elementwise addition).
        friend constexpr candidate_sums combine(const candidate_sums& a, const candidate_sums& b) noexcept
        {
            candidate_sums c;
            for (std::size_t k = 0; k < K; ++k)
            {
                c.xq[k] = a.xq[k] + b.xq[k];
                c.qq[k] = a.qq[k] + b.qq[k];
                c.q[k] = a.q[k] + b.q[k];
            }
            c.x = a.x + b.x;
            c.n = a.n + b.n;
            return c;
        }
    };
}
