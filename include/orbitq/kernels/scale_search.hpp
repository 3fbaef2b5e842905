/// @file scale_search.hpp
/// @brief Error-minimizing scales (scale_search::mse): per orbit, the candidate encoding whose
///        least-squares refit has the least squared error, never worse than amax.
///
/// For an orbit with statistic s (finite, not all zero):
///  1. Candidates k = 0..15: candidate 0 is amax (the parameters, and so the codes, that
///     scale_search::amax gives the orbit); candidate k clips the range to clip_ratio(k) =
///     1 - k/30 of it (symmetric: scale r * amax / divisor; asymmetric: the scheme's formula on
///     [r * min, r * max]). Codes are the encode of policy/scheme.hpp with the candidate's scale
///     (multiply by its float32 inverse, round, add the zero point, clamp) into the full range:
///     [-2^(b-1), 2^(b-1) - 1] for symmetric schemes too. With quant_spec::signed_scales, an
///     orbit whose value of largest magnitude is positive takes the candidates k > 0 with
///     negative scales (codes of -x, negated): that value meets the code -2^(b-1), which a
///     positive scale gives only to a negative extreme. Every later step is unchanged (the
///     refit of negated codes is the negated scale).
///  2. One pass sums, per candidate, x q, q^2 and q (algebra/candidate_sums.hpp), with x = sum x
///     and n: in float for symmetric schemes (a fused multiply-add a product where the target
///     has one, element order), in double (exact products) for asymmetric ones.
///  3. Refit: for candidate k's codes the scale (symmetric) or the scale and zero point
///     (asymmetric: the line x ~ a q + b fitted by least squares, zero point round(-b / a)
///     clamped, then the best scale for that integer zero point) that minimize the squared
///     error, stored as spec.scale_type stores it. Symmetric: the candidate of least refit
///     error (sum x^2 - (sum xq)^2 / sum q^2, compared without division) wins, then its scale
///     is refit and stored; asymmetric: every candidate is refit and scored with its stored
///     scale. The first wins a tie.
///  4. A second pass encodes the orbit with the winner's refit parameters, sums again and
///     refits again; kept if its error is lower.
///  5. Guard: the result replaces amax only when its error is below amax's own (candidate 0's
///     codes with amax's stored parameters), so an orbit's squared error is never worse than
///     with amax (up to the rounding of the double sums, about 1e-12 of the error). Symmetric
///     schemes sum the two encodings again in double for it (the float sums only choose).
/// With an importance per column (quant_spec::importance), every sum weighs its element by its
/// column's importance a, and "squared error" reads sum a (x - x^)^2 throughout: the least
/// squares are weighted, the guard compares weighted errors (imatrix-style).
/// The scale stored is the refit one; the codes are those of the candidate (or the second
/// pass) it was fitted to. Errors are compared in double from the sums; sum x^2 cancels.
/// Orbits whose candidates' inverses overflow (subnormal scales) keep amax.
#pragma once

#include "orbitq/algebra/candidate_sums.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/kernels/isa.hpp"
#include "orbitq/kernels/encode.hpp"
#include "orbitq/kernels/reference.hpp"
#include "orbitq/policy/dispatch.hpp"
#include "orbitq/policy/quant_spec.hpp"
#include "orbitq/policy/scheme.hpp"

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>

namespace orbitq::kernels
{
    /// @brief Every element of an orbit weighs 1: the unweighted sums.
    struct unit_weights
    {
        static constexpr bool weighted = false;
        constexpr float operator[](std::size_t) const noexcept { return 1.0f; }
    };

    /// @brief The weight of each element of an orbit: its column's importance
    ///        (quant_spec::importance), read from `a` in element order.
    /// @pre a has as many finite, non-negative values as the orbit has elements.
    struct element_weights
    {
        static constexpr bool weighted = true;
        const float* a = nullptr;
        float operator[](std::size_t i) const noexcept { return a[i]; }
    };
}

namespace orbitq::kernels::reference
{
    /// @brief The K candidates' sums over n values in V (double or float), in element order,
    ///        each element weighted by a[i]: a x and a q are products (exact in double; in float,
    ///        rounded once), each sum takes them with one mul_add; the weight total n sums in
    ///        double. The codes are those of the unweighted values.
    template <class V, rounding_policy R, weight_element T, std::size_t K, class W = unit_weights>
    candidate_sums<K, V> candidate_sums_span(const T* x, std::size_t n, const std::array<encode_params, K>& c, W a = {}) noexcept
    {
        candidate_sums<K, V> s;
        for (std::size_t i = 0; i < n; ++i)
        {
            const float xf = to_float(x[i]);
            const V av = a[i];
            const V xv = static_cast<V>(xf) * av;
            s.x += xv;
            if constexpr (W::weighted) s.n += static_cast<double>(a[i]);
            for (std::size_t k = 0; k < K; ++k)
            {
                const V qv = encode<R>(xf, c[k]);
                const V aq = qv * av;
                s.xq[k] = simd::detail::mul_add(xv, qv, s.xq[k]);  // unweighted: exact in double
                s.qq[k] = simd::detail::mul_add(aq, qv, s.qq[k]);
                s.q[k] += aq;
            }
        }
        if constexpr (!W::weighted) s.n = static_cast<double>(n);
        return s;
    }
}

namespace orbitq::kernels::simd
{
    /// @brief candidate_sums_span with the candidates in SIMD lanes: per element, every
    ///        candidate's code at once; each candidate's sums in element order, so the result
    ///        is bit-identical to reference::candidate_sums_span.
    /// @pre K is a multiple of the float batch width; every candidate's inverse is finite and
    ///      its mode multiply_inverse.
    template <class V, rounding_policy R, weight_element T, std::size_t K, class W = unit_weights>
    candidate_sums<K, V> candidate_sums_span(const T* x, std::size_t n, const std::array<encode_params, K>& c, W a = {}) noexcept
    {
        using dbatch = xsimd::batch<double, arch_type>;
        constexpr std::size_t F = K / width;
        static_assert(F * width == K, "the candidates fill whole float batches");
        float_batch inv[F], zp[F], lo[F], hi[F];
        // reference::encode: R(x * inv) + zp, clamped (finite values: min/max are the clamp)
        const auto code_of = [&](const float_batch& xb, std::size_t f) {
            return xsimd::min(xsimd::max(detail::round<R>(xb * inv[f]) + zp[f], lo[f]), hi[f]);
        };
        for (std::size_t f = 0; f < F; ++f)
        {
            alignas(64) float a[width], z[width], l[width], h[width];
            for (std::size_t j = 0; j < width; ++j)
            {
                const encode_params& e = c[f * width + j];
                a[j] = e.params.inv_scale;
                z[j] = static_cast<float>(e.params.zero_point);
                l[j] = static_cast<float>(e.qmin);
                h[j] = static_cast<float>(e.qmax);
            }
            inv[f] = float_batch::load_aligned(a);
            zp[f] = float_batch::load_aligned(z);
            lo[f] = float_batch::load_aligned(l);
            hi[f] = float_batch::load_aligned(h);
        }
        if constexpr (std::same_as<V, float>)
        {
            float_batch fxq[F], fqq[F], fqs[F];
            for (std::size_t f = 0; f < F; ++f) fxq[f] = fqq[f] = fqs[f] = float_batch(0.0f);
            float fx = 0.0f;
            double total = 0.0;
            for (std::size_t i = 0; i < n; ++i)
            {
                const float xf = to_float(x[i]);
                const float ax = xf * a[i];  // unweighted: xf
                const float_batch xb(xf), axb(ax), ab(a[i]);
                fx += ax;
                if constexpr (W::weighted) total += static_cast<double>(a[i]);
                for (std::size_t f = 0; f < F; ++f)
                {
                    const float_batch code = code_of(xb, f);
                    const float_batch aq = W::weighted ? code * ab : code;
                    fxq[f] = detail::mul_add(axb, code, fxq[f]);
                    fqq[f] = detail::mul_add(aq, code, fqq[f]);
                    fqs[f] += aq;
                }
            }
            candidate_sums<K, float> s;
            s.n = W::weighted ? total : static_cast<double>(n);
            s.x = fx;
            for (std::size_t f = 0; f < F; ++f)
            {
                fxq[f].store_unaligned(s.xq.data() + f * width);
                fqq[f].store_unaligned(s.qq.data() + f * width);
                fqs[f].store_unaligned(s.q.data() + f * width);
            }
            return s;
        }
        else
        {
            dbatch xq[2 * F], qq[2 * F], qs[2 * F];
            for (std::size_t j = 0; j < 2 * F; ++j) xq[j] = qq[j] = qs[j] = dbatch(0.0);
            double sx = 0.0, total = 0.0;
            for (std::size_t i = 0; i < n; ++i)
            {
                const float xf = to_float(x[i]);
                const float_batch xb(xf);
                const double ad = a[i];
                const dbatch xd(static_cast<double>(xf) * ad), adb(ad);
                sx += static_cast<double>(xf) * ad;
                if constexpr (W::weighted) total += ad;
                for (std::size_t f = 0; f < F; ++f)
                {
                    dbatch d[2];
                    detail::widen(code_of(xb, f), d[0], d[1]);
                    for (std::size_t h = 0; h < 2; ++h)
                    {
                        const dbatch aq = W::weighted ? d[h] * adb : d[h];
                        xq[2 * f + h] = detail::mul_add(xd, d[h], xq[2 * f + h]);
                        qq[2 * f + h] = detail::mul_add(aq, d[h], qq[2 * f + h]);
                        qs[2 * f + h] += aq;
                    }
                }
            }
            candidate_sums<K> s;
            s.n = W::weighted ? total : static_cast<double>(n);
            s.x = sx;
            for (std::size_t j = 0; j < 2 * F; ++j)
            {
                xq[j].store_unaligned(s.xq.data() + j * dbatch::size);
                qq[j].store_unaligned(s.qq.data() + j * dbatch::size);
                qs[j].store_unaligned(s.q.data() + j * dbatch::size);
            }
            return s;
        }
    }
}

namespace orbitq::detail::mse
{
    using kernels::simd::detail::mul_add;

    /// The number of candidates.
    inline constexpr std::size_t candidate_count = 16;

    /// The clip ratio of candidate k: 1 (amax) down to 0.5.
    constexpr float clip_ratio(std::size_t k) noexcept { return 1.0f - static_cast<float>(k) / 30.0f; }

    /// The parameters an orbit is encoded with and those stored.
    struct choice
    {
        encode_params encode;
        quant_params stored;
    };

    /// The lowest code of the search: the full range of the bit width.
    template <scheme_policy S>
    inline constexpr int search_qmin = -(1 << (S::bits - 1));

    /// Whether the candidates k > 0 of an orbit with statistic s take negative scales: with
    /// quant_spec::signed_scales, where its value of largest magnitude is positive (that value
    /// then meets the code search_qmin, as a negative extreme does with a positive scale).
    inline bool flipped(const min_max& s, const quant_spec& spec) noexcept { return spec.signed_scales && s.max > -s.min; }

    /// Candidate k's parameters for an orbit with statistic s (candidate 0: amax's, `amax`; the
    /// others negative where flipped).
    template <scheme_policy S>
    std::array<encode_params, candidate_count> candidates(const min_max& s, const encode_params& amax, const quant_spec& spec) noexcept
    {
        const float sign = flipped(s, spec) ? -1.0f : 1.0f;
        std::array<encode_params, candidate_count> c;
        c[0] = amax;
        c[0].qmin = search_qmin<S>;  // codes unchanged: amax scales every value inside its own range
        const quant_params exact = S::make_params(s);
        for (std::size_t k = 1; k < candidate_count; ++k)
        {
            const float r = clip_ratio(k);
            quant_params p;
            if constexpr (S::has_zero_point) p = S::make_params(min_max{s.min * r, s.max * r});
            else p = with_inverse(exact.scale * r * sign);
            c[k] = encode_params{p, search_qmin<S>, S::qmax, scale_application::multiply_inverse};
        }
        return c;
    }

    /// Whether every candidate can be searched (finite inverses of a nonzero orbit).
    inline bool searchable(const std::array<encode_params, candidate_count>& c) noexcept
    {
        if (!(c[0].params.scale > 0.0f)) return false;
        for (const auto& e : c)
        {
            if (e.params.scale == 0.0f || !std::isfinite(e.params.inv_scale)) return false;
        }
        return true;
    }

    /// The squared error (less sum x^2) of codes with sums (xq, qq, q, x, n) dequantized with
    /// scale s and zero point z.
    inline double error(double xq, double qq, double q, double x, double n, double s, double z) noexcept
    {
        const double xu = mul_add(-z, x, xq);
        const double uu = mul_add(z * z, n, mul_add(-2.0 * z, q, qq));
        return s * mul_add(s, uu, -2.0 * xu);
    }

    /// Whether symmetric candidate a (sums xq_a, qq_a) refits to a lower error than b: the
    /// least-squares error of codes q is sum x^2 - (sum x q)^2 / sum q^2, compared without a
    /// division. @pre qq_a > 0 and qq_b > 0.
    inline bool fits_better(double xq_a, double qq_a, double xq_b, double qq_b) noexcept { return (xq_a * xq_a) * qq_b > (xq_b * xq_b) * qq_a; }

    struct scored
    {
        quant_params stored;
        double err = std::numeric_limits<double>::infinity();
    };

    /// Whether a scale can be stored and searched: nonzero and finite (negative only from
    /// flipped candidates).
    inline bool usable(float s) noexcept { return (s > 0.0f || s < 0.0f) && std::isfinite(s); }

    /// The stored form of a refit scale, or 0 when it cannot be stored (then the fit is skipped).
    inline float stored_scale(double s, const quant_spec& spec) noexcept
    {
        const float f = static_cast<float>(s);
        if (!usable(f)) return 0.0f;
        const float st = spec.scale_type == element_type::f32 ? f : round_to(spec.scale_type, f);
        return usable(st) ? st : 0.0f;
    }

    /// The least-squares refit of the codes whose sums are given, scored; nullopt-like err =
    /// +inf when no refit exists (all codes equal, a scale that cannot be stored).
    template <scheme_policy S>
    scored refit(double xq, double qq, double q, double x, double n, const quant_spec& spec) noexcept
    {
        constexpr double inf = std::numeric_limits<double>::infinity();
        double z = 0.0;
        if constexpr (S::has_zero_point)
        {
            const double var = qq - q * q / n;
            if (!(var > 0.0)) return {{}, inf};
            const double a = (xq - x * q / n) / var;
            if (!(a > 0.0)) return {{}, inf};
            const double b = (x - a * q) / n;
            z = std::nearbyint(-b / a);
            z = z < S::qmin ? S::qmin : (z > S::qmax ? S::qmax : z);
        }
        const double uu = mul_add(z * z, n, mul_add(-2.0 * z, q, qq));
        if (!(uu > 0.0)) return {{}, inf};
        const float st = stored_scale(mul_add(-z, x, xq) / uu, spec);
        if (st == 0.0f) return {{}, inf};
        return {with_inverse(st, static_cast<std::int32_t>(z)), error(xq, qq, q, x, n, st, z)};
    }

    /// The sums the search scores candidates with: float for symmetric schemes (an exact double
    /// pass then guards the result), double for asymmetric ones.
    template <scheme_policy S>
    using search_value = std::conditional_t<S::has_zero_point, double, float>;

    /// Steps 1-5 of the file brief for one orbit. pass16(c) and pass1(c) return the sums of the
    /// orbit's values, in search_value<S>, under the candidates c (16, then 1); exact2(c) in
    /// double under 2 (amax's and the result's codes). `amax_enc`/`amax_stored` are amax's.
    template <scheme_policy S, class Pass16, class Pass1, class Exact2>
    choice search(const min_max& stat, const encode_params& amax_enc, const quant_params& amax_stored, const quant_spec& spec,
                  Pass16&& pass16, Pass1&& pass1, Exact2&& exact2)
    {
        const choice amax{amax_enc, amax_stored};
        const auto cand = candidates<S>(stat, amax_enc, spec);
        if (!searchable(cand)) return amax;
        const auto s = pass16(cand);
        const double n = s.n;
        const double amax_err = error(s.xq[0], s.qq[0], s.q[0], s.x, n, amax_stored.scale, amax_stored.zero_point);
        std::size_t best = 0;
        scored fit;
        if constexpr (S::has_zero_point)
        {
            fit = refit<S>(s.xq[0], s.qq[0], s.q[0], s.x, s.n, spec);
            for (std::size_t k = 1; k < candidate_count; ++k)
            {
                const scored f = refit<S>(s.xq[k], s.qq[k], s.q[k], s.x, s.n, spec);
                if (f.err < fit.err)
                {
                    fit = f;
                    best = k;
                }
            }
        }
        else
        {
            // the least refit error before the scale is stored, then the winner refit and stored
            if (!(s.qq[0] > 0.0f)) return amax;
            for (std::size_t k = 1; k < candidate_count; ++k)
            {
                if (s.qq[k] > 0.0f && fits_better(s.xq[k], s.qq[k], s.xq[best], s.qq[best])) best = k;
            }
            fit = refit<S>(s.xq[best], s.qq[best], s.q[best], s.x, s.n, spec);
        }
        if (!(fit.err < amax_err)) return amax;
        choice result{cand[best], fit.stored};
        // the second pass: the codes of the refit parameters, refit again
        const std::array<encode_params, 1> again{encode_params{fit.stored, search_qmin<S>, S::qmax, scale_application::multiply_inverse}};
        if (std::isfinite(fit.stored.inv_scale))
        {
            const auto t = pass1(again);
            const scored f2 = refit<S>(t.xq[0], t.qq[0], t.q[0], t.x, t.n, spec);
            if (f2.err < fit.err) result = {again[0], f2.stored};
        }
        if constexpr (!S::has_zero_point)
        {
            // the guard in double: the float sums chose; the exact errors decide against amax
            const candidate_sums<2> e = exact2(std::array<encode_params, 2>{amax_enc, result.encode});
            const double en = e.n;
            const double a = error(e.xq[0], e.qq[0], e.q[0], e.x, en, amax_stored.scale, 0.0);
            const double r = error(e.xq[1], e.qq[1], e.q[1], e.x, en, result.stored.scale, 0.0);
            if (!(r < a)) return amax;
        }
        return result;
    }

    /// search() for a contiguous orbit of n values at x, weighted by a (unit_weights or the
    /// orbit's columns of quant_spec::importance). Not inlined: one body per scheme, rounding,
    /// element type and weighting, shared by the per_channel and per_group drivers.
    template <scheme_policy S, rounding_policy R, weight_element T, class W = kernels::unit_weights>
    [[gnu::noinline]] choice search_span(const T* x, std::size_t n, const min_max& stat, const encode_params& amax_enc, const quant_params& amax_stored,
                                         const quant_spec& spec, W a = {})
    {
        using V = search_value<S>;
        return search<S>(
            stat, amax_enc, amax_stored, spec,
            [&](const std::array<encode_params, candidate_count>& c) {
                if constexpr (candidate_count % kernels::simd::width == 0) return kernels::simd::candidate_sums_span<V, R>(x, n, c, a);
                else return kernels::reference::candidate_sums_span<V, R>(x, n, c, a);
            },
            [&](const std::array<encode_params, 1>& c) { return kernels::reference::candidate_sums_span<V, R>(x, n, c, a); },
            [&](const std::array<encode_params, 2>& c) { return kernels::reference::candidate_sums_span<double, R>(x, n, c, a); });
    }
}
