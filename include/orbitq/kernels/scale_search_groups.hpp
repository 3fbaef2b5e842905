/// @file scale_search_groups.hpp
/// @brief The symmetric scale search (kernels/scale_search.hpp) for as many equal-length orbits
///        at once as a float batch has lanes: orbit l in lane l.
///
/// Each step is detail::mse::search's for one orbit, in vectors: the candidates' parameters,
/// the float sums (each lane's in element order, so bit-identical to the reference's), the
/// choice by refit error, the refit, the second pass, the exact (double) guard against amax. A lane's result equals
/// search_span's for its orbit. The orbits are read in blocks of up to `block` elements,
/// transposed into an L1 buffer (element j of every orbit in one batch); the candidates' sums
/// stay in memory between blocks.
#pragma once

#include "orbitq/kernels/scale_search.hpp"

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace orbitq::detail::mse
{
    /// Orbits searched together: one a float lane.
    inline constexpr std::size_t lanes = kernels::simd::width;

    /// Reusable buffers of search_lanes (one per thread).
    struct lane_buffers
    {
        static constexpr std::size_t block = 256;  ///< elements of each orbit transposed at once
        std::vector<float, xsimd::aligned_allocator<float, 64>> xt = std::vector<float, xsimd::aligned_allocator<float, 64>>(block * lanes);
        std::vector<double, xsimd::aligned_allocator<double, 64>> xd =
            std::vector<double, xsimd::aligned_allocator<double, 64>>(block * lanes);
    };

    namespace lane_detail
    {
        using fbatch = kernels::simd::float_batch;
        using dbatch = xsimd::batch<double, kernels::simd::arch_type>;
        inline constexpr std::size_t halves = 2;  // double batches per float batch
        /// One rounding where the target fuses, as the reference's scalar mul_add.
        using kernels::simd::detail::mul_add;
        static_assert(dbatch::size * halves == lanes);

        /// Element j (of the block starting at b0, m long) of every orbit in lane order, as
        /// floats (xt) and doubles (xd).
        template <weight_element T>
        void transpose(const T* const (&p)[lanes], std::size_t b0, std::size_t m, lane_buffers& buf)
        {
            for (std::size_t l = 0; l < lanes; ++l)
            {
                const T* x = p[l] + b0;
                for (std::size_t j = 0; j < m; ++j) buf.xt[j * lanes + l] = to_float(x[j]);
            }
            for (std::size_t j = 0; j < m; ++j)
            {
                dbatch lo, hi;
                kernels::simd::detail::widen(fbatch::load_aligned(buf.xt.data() + j * lanes), lo, hi);
                lo.store_aligned(buf.xd.data() + j * lanes);
                hi.store_aligned(buf.xd.data() + j * lanes + dbatch::size);
            }
        }

        /// The codes of inverse scales `inv` (one a lane) for transposed element j:
        /// reference::encode, R(x * inv) + 0 clamped (finite values: min/max are the clamp).
        template <rounding_policy R>
        [[gnu::always_inline]] inline fbatch codes(const lane_buffers& buf, std::size_t j, const fbatch& inv, const fbatch& lo, const fbatch& hi) noexcept
        {
            return xsimd::min(xsimd::max(kernels::simd::detail::round<R>(fbatch::load_aligned(buf.xt.data() + j * lanes) * inv), lo), hi);
        }

        /// Adds the float sums x q and q^2 over m transposed elements for the codes of `inv` to
        /// xq and qq (reference::candidate_sums_span<float>: one fused multiply-add each).
        template <rounding_policy R>
        [[gnu::always_inline]] inline void accumulate(const lane_buffers& buf, std::size_t m, const fbatch& inv, const fbatch& lo, const fbatch& hi,
                                                      fbatch& xq, fbatch& qq) noexcept
        {
            for (std::size_t j = 0; j < m; ++j)
            {
                const fbatch code = codes<R>(buf, j, inv, lo, hi);
                xq = mul_add(fbatch::load_aligned(buf.xt.data() + j * lanes), code, xq);
                qq = mul_add(code, code, qq);
            }
        }

        /// accumulate for two candidates at once (independent chains; each its own order).
        template <rounding_policy R>
        [[gnu::always_inline]] inline void accumulate2(const lane_buffers& buf, std::size_t m, const fbatch& inv_a, const fbatch& inv_b,
                                                       const fbatch& lo, const fbatch& hi, fbatch& xq_a, fbatch& qq_a, fbatch& xq_b,
                                                       fbatch& qq_b) noexcept
        {
            for (std::size_t j = 0; j < m; ++j)
            {
                const fbatch x = fbatch::load_aligned(buf.xt.data() + j * lanes);
                const fbatch a = codes<R>(buf, j, inv_a, lo, hi), b = codes<R>(buf, j, inv_b, lo, hi);
                xq_a = mul_add(x, a, xq_a);
                qq_a = mul_add(a, a, qq_a);
                xq_b = mul_add(x, b, xq_b);
                qq_b = mul_add(b, b, qq_b);
            }
        }

        /// The same sums in double (exact products), for the guard.
        template <rounding_policy R>
        [[gnu::always_inline]] inline void accumulate_exact(const lane_buffers& buf, std::size_t m, const fbatch& inv, const fbatch& lo,
                                                            const fbatch& hi, dbatch (&xq)[halves], dbatch (&qq)[halves]) noexcept
        {
            for (std::size_t j = 0; j < m; ++j)
            {
                dbatch d[halves];
                kernels::simd::detail::widen(codes<R>(buf, j, inv, lo, hi), d[0], d[1]);
                for (std::size_t h = 0; h < halves; ++h)
                {
                    const dbatch xd = dbatch::load_aligned(buf.xd.data() + j * lanes + h * dbatch::size);
                    xq[h] = mul_add(xd, d[h], xq[h]);
                    qq[h] = mul_add(d[h], d[h], qq[h]);
                }
            }
        }

        /// Float sums widened to double batches.
        inline void widen_sums(const fbatch& f, dbatch (&d)[halves]) noexcept { kernels::simd::detail::widen(f, d[0], d[1]); }

        /// The stored form of refit scales xq / qq, lane by lane (stored_scale), as doubles.
        inline void store_scales(const dbatch (&xq)[halves], const dbatch (&qq)[halves], const quant_spec& spec, float (&st)[lanes])
        {
            alignas(64) double s[lanes];
            for (std::size_t h = 0; h < halves; ++h) (xq[h] / qq[h]).store_aligned(s + h * dbatch::size);
            for (std::size_t l = 0; l < lanes; ++l) st[l] = stored_scale(s[l], spec);
        }

        /// error() with zero point 0 for the stored scales st (+inf where none is stored: 0).
        inline void errors(const float (&st)[lanes], const dbatch (&xq)[halves], const dbatch (&qq)[halves], dbatch (&err)[halves]) noexcept
        {
            alignas(64) double sd[lanes];
            for (std::size_t l = 0; l < lanes; ++l) sd[l] = st[l];
            const dbatch inf(std::numeric_limits<double>::infinity());
            for (std::size_t h = 0; h < halves; ++h)
            {
                const dbatch s = dbatch::load_aligned(sd + h * dbatch::size);
                err[h] = xsimd::select(s != dbatch(0.0), s * mul_add(s, qq[h], dbatch(-2.0) * xq[h]), inf);
            }
        }
    }

    /// search() for `lanes` orbits of n values each, orbit l at p[l] (the first `count` real,
    /// the others ignored): out[l] equals search_span's result for orbit l, given its statistic
    /// and amax's parameters, which `amax_of(l, stat, finite)` returns as a pair (encode
    /// parameters, stored parameters), called in lane order (it reports a non-finite orbit).
    /// @pre S is symmetric; n > 0; 0 < count <= lanes.
    template <scheme_policy S, rounding_policy R, weight_element T, class AmaxOf>
    void search_lanes(const T* const (&p)[lanes], std::size_t n, std::size_t count, AmaxOf&& amax_of, const quant_spec& spec, lane_buffers& buf,
                      choice (&out)[lanes])
    {
        static_assert(!S::has_zero_point, "the lane search is the symmetric one");
        using namespace lane_detail;
        constexpr std::size_t K = candidate_count;
        constexpr std::size_t H = halves;
        constexpr std::size_t D = dbatch::size;

        // 0. each orbit's statistic (from the transposed block when one block holds the orbits)
        //    and amax's parameters
        const bool one_block = n <= lane_buffers::block;
        min_max stat[lanes];
        bool finite[lanes];
        if (one_block)
        {
            transpose(p, 0, n, buf);
            fbatch mn = fbatch::load_aligned(buf.xt.data()), mx = mn;
            auto bad = kernels::simd::detail::non_finite(mn, kernels::simd::arch_type{});
            for (std::size_t j = 1; j < n; ++j)
            {
                const fbatch x = fbatch::load_aligned(buf.xt.data() + j * lanes);
                mn = xsimd::min(mn, x);
                mx = xsimd::max(mx, x);
                bad = bad || kernels::simd::detail::non_finite(x, kernels::simd::arch_type{});
            }
            alignas(64) float a[lanes], b[lanes];
            mn.store_aligned(a);
            mx.store_aligned(b);
            for (std::size_t l = 0; l < lanes; ++l)
            {
                stat[l] = min_max{a[l], b[l]};
                finite[l] = true;
            }
            if (xsimd::any(bad))
            {
                for (std::size_t l = 0; l < count; ++l) stat[l] = kernels::simd::min_max_span(p[l], n, finite[l]);
            }
        }
        else
        {
            for (std::size_t l = 0; l < count; ++l) stat[l] = kernels::simd::min_max_span(p[l], n, finite[l]);
        }
        encode_params amax_enc[lanes];
        quant_params amax_stored[lanes];
        for (std::size_t l = 0; l < lanes; ++l)
        {
            if (l >= count)
            {
                stat[l] = stat[0], amax_enc[l] = amax_enc[0], amax_stored[l] = amax_stored[0];
                continue;
            }
            const auto [e, st] = amax_of(l, stat[l], finite[l]);
            amax_enc[l] = e;
            amax_stored[l] = st;
        }

        // 1. candidates: k = 0 amax's own, k > 0 the clipped scales, negative where flipped
        //    (candidates<S>, lane by lane)
        alignas(64) float scale[K][lanes];
        alignas(64) float inv[K][lanes];
        alignas(64) float sign[lanes];
        bool searchable[lanes];
        for (std::size_t l = 0; l < lanes; ++l)
        {
            scale[0][l] = amax_enc[l].params.scale;
            inv[0][l] = amax_enc[l].params.inv_scale;
            scale[1][l] = S::make_params(stat[l]).scale;  // the exact amax scale, clipped below
            sign[l] = flipped(stat[l], spec) ? -1.0f : 1.0f;
        }
        const fbatch exact = fbatch::load_aligned(scale[1]), signs = fbatch::load_aligned(sign);
        for (std::size_t k = 1; k < K; ++k)
        {
            const fbatch sc = exact * fbatch(clip_ratio(k)) * signs;  // as candidates<S>: (exact * r) * sign
            const auto nonzero = sc != fbatch(0.0f);
            xsimd::select(nonzero, sc, fbatch(0.0f)).store_aligned(scale[k]);
            xsimd::select(nonzero, fbatch(1.0f) / sc, fbatch(0.0f)).store_aligned(inv[k]);
        }
        for (std::size_t l = 0; l < lanes; ++l)
        {
            bool ok = amax_enc[l].params.scale > 0.0f;
            for (std::size_t k = 0; k < K; ++k) ok = ok && scale[k][l] != 0.0f && std::isfinite(inv[k][l]);
            searchable[l] = ok;
        }

        // the orbits block by block, transposed (the block of step 0 is still there when it
        // holds the whole orbits): f(m) for each block of m elements
        const auto over_blocks = [&](auto&& f) {
            for (std::size_t b0 = 0; b0 < n; b0 += lane_buffers::block)
            {
                const std::size_t m = std::min(lane_buffers::block, n - b0);
                if (!one_block) transpose(p, b0, m, buf);
                f(m);
            }
        };

        // 2. the float sums of every candidate, block by block, each lane in element order
        alignas(64) float xq[K][lanes] = {};
        alignas(64) float qq[K][lanes] = {};
        const fbatch lo(static_cast<float>(search_qmin<S>)), hi(static_cast<float>(S::qmax));
        static_assert(K % 2 == 0);
        over_blocks([&](std::size_t m) {
            for (std::size_t k = 0; k < K; k += 2)
            {
                fbatch a = fbatch::load_aligned(xq[k]), b = fbatch::load_aligned(qq[k]);
                fbatch c = fbatch::load_aligned(xq[k + 1]), d = fbatch::load_aligned(qq[k + 1]);
                accumulate2<R>(buf, m, fbatch::load_aligned(inv[k]), fbatch::load_aligned(inv[k + 1]), lo, hi, a, b, c, d);
                a.store_aligned(xq[k]);
                b.store_aligned(qq[k]);
                c.store_aligned(xq[k + 1]);
                d.store_aligned(qq[k + 1]);
            }
        });

        // 3. the candidate of least refit error (fits_better, lane by lane), refit and stored
        dbatch bxq[H], bqq[H], bk[H], xq0[H], qq0[H];
        widen_sums(fbatch::load_aligned(xq[0]), xq0);
        widen_sums(fbatch::load_aligned(qq[0]), qq0);
        dbatch xqk[K][H], qqk[K][H];
        for (std::size_t k = 1; k < K; ++k)
        {
            widen_sums(fbatch::load_aligned(xq[k]), xqk[k]);
            widen_sums(fbatch::load_aligned(qq[k]), qqk[k]);
        }
        for (std::size_t h = 0; h < H; ++h)
        {
            bxq[h] = xq0[h];
            bqq[h] = qq0[h];
            bk[h] = dbatch(0.0);
            for (std::size_t k = 1; k < K; ++k)
            {
                const dbatch x = xqk[k][h], q = qqk[k][h];
                const auto better = (q > dbatch(0.0)) && ((x * x) * bqq[h] > (bxq[h] * bxq[h]) * q);
                bxq[h] = xsimd::select(better, x, bxq[h]);
                bqq[h] = xsimd::select(better, q, bqq[h]);
                bk[h] = xsimd::select(better, dbatch(static_cast<double>(k)), bk[h]);
            }
        }
        float st[lanes];
        store_scales(bxq, bqq, spec, st);
        dbatch fit_err[H], amax_err[H];
        errors(st, bxq, bqq, fit_err);
        float amax_scale[lanes];
        for (std::size_t l = 0; l < lanes; ++l) amax_scale[l] = amax_stored[l].scale;
        errors(amax_scale, xq0, qq0, amax_err);  // +inf only where amax's scale is 0: not searchable
        alignas(64) double fe[lanes], ae[lanes], best[lanes], q0[lanes];
        for (std::size_t h = 0; h < H; ++h)
        {
            fit_err[h].store_aligned(fe + h * D);
            amax_err[h].store_aligned(ae + h * D);
            bk[h].store_aligned(best + h * D);
            qq0[h].store_aligned(q0 + h * D);
        }

        // 4. the second pass where the fit beats amax: the codes of the stored refit scale
        bool use_fit[lanes];
        alignas(64) float inv2[lanes];
        bool any = false;
        for (std::size_t l = 0; l < lanes; ++l)
        {
            use_fit[l] = searchable[l] && q0[l] > 0.0 && fe[l] < ae[l];
            const quant_params fit = with_inverse(st[l]);
            inv2[l] = use_fit[l] && std::isfinite(fit.inv_scale) ? fit.inv_scale : 0.0f;
            any = any || use_fit[l];
        }
        float st2[lanes] = {};
        alignas(64) double e2[lanes];
        if (any)
        {
            fbatch fa(0.0f), fb(0.0f);
            over_blocks([&](std::size_t m) { accumulate<R>(buf, m, fbatch::load_aligned(inv2), lo, hi, fa, fb); });
            dbatch a[H], b[H];
            widen_sums(fa, a);
            widen_sums(fb, b);
            store_scales(a, b, spec, st2);
            dbatch err2[H];
            errors(st2, a, b, err2);
            for (std::size_t h = 0; h < H; ++h)
            {
                // refit: no scale where every code is 0 (sum q^2 = 0)
                xsimd::select(b[h] > dbatch(0.0), err2[h], dbatch(std::numeric_limits<double>::infinity())).store_aligned(e2 + h * D);
            }
        }

        // 5. each lane's result, then the guard: exact (double) errors of amax's codes and the
        //    result's decide
        alignas(64) float res_inv[lanes];
        for (std::size_t l = 0; l < lanes; ++l)
        {
            if (!use_fit[l])
            {
                out[l] = {amax_enc[l], amax_stored[l]};
                res_inv[l] = amax_enc[l].params.inv_scale;
                continue;
            }
            const quant_params fit = with_inverse(st[l]);
            if (inv2[l] != 0.0f && e2[l] < fe[l])
            {
                out[l] = {encode_params{fit, search_qmin<S>, S::qmax, scale_application::multiply_inverse}, with_inverse(st2[l])};
            }
            else
            {
                const auto k = static_cast<std::size_t>(best[l]);
                encode_params e = amax_enc[l];
                if (k != 0) e = encode_params{with_inverse(scale[k][l]), search_qmin<S>, S::qmax, scale_application::multiply_inverse};
                e.qmin = search_qmin<S>;
                out[l] = {e, fit};
            }
            res_inv[l] = out[l].encode.params.inv_scale;
        }
        if (!any) return;
        dbatch axq[H] = {dbatch(0.0), dbatch(0.0)}, aqq[H] = {dbatch(0.0), dbatch(0.0)};
        dbatch rxq[H] = {dbatch(0.0), dbatch(0.0)}, rqq[H] = {dbatch(0.0), dbatch(0.0)};
        over_blocks([&](std::size_t m) {
            accumulate_exact<R>(buf, m, fbatch::load_aligned(inv[0]), lo, hi, axq, aqq);
            accumulate_exact<R>(buf, m, fbatch::load_aligned(res_inv), lo, hi, rxq, rqq);
        });
        float res_st[lanes];
        for (std::size_t l = 0; l < lanes; ++l) res_st[l] = out[l].stored.scale;
        dbatch ea[H], er[H];
        errors(amax_scale, axq, aqq, ea);
        errors(res_st, rxq, rqq, er);
        alignas(64) double a_err[lanes], r_err[lanes];
        for (std::size_t h = 0; h < H; ++h)
        {
            ea[h].store_aligned(a_err + h * D);
            er[h].store_aligned(r_err + h * D);
        }
        for (std::size_t l = 0; l < lanes; ++l)
        {
            if (use_fit[l] && !(r_err[l] < a_err[l])) out[l] = {amax_enc[l], amax_stored[l]};
        }
    }
}
