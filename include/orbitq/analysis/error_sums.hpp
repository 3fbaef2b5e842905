/// @file error_sums.hpp
/// @brief analyze's second pass for one candidate and one row: each orbit's parameters as
///        quantize computes them (resolve), the reconstruction ŵ, and the error sums Σŵ²,
///        Σ(w − ŵ)² and max |w − ŵ| accumulated in double-precision SIMD lanes (lane_sums,
///        row_error).
#pragma once

#include "orbitq/algebra/statistics.hpp"
#include "orbitq/kernels/reference.hpp"
#include "orbitq/kernels/simd.hpp"
#include "orbitq/metrics.hpp"
#include "orbitq/policy/dispatch.hpp"
#include "orbitq/policy/quant_spec.hpp"
#include "orbitq/policy/rounding.hpp"
#include "orbitq/policy/scheme.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace orbitq
{
    namespace detail::analysis
    {
        namespace simd = kernels::simd;
        using float_batch = simd::float_batch;
        using double_batch = xsimd::batch<double, simd::arch_type>;

        /// The parameters of one orbit as the encode loop needs them. Codes are
        /// clamp(round(x / scale) + zp, qmin, qmax); code − zp = clamp(round(x / scale), lo, hi)
        /// with lo = qmin − zp, hi = qmax − zp, exactly (small integers in float32; a rounded value
        /// beyond 2^24 saturates either way).
        struct orbit_params
        {
            encode_params enc;         ///< what the codes are computed with (as quantize)
            float stored_scale = 0.0f; ///< what dequantization multiplies by (as quantize)
            float lo = 0.0f;
            float hi = 0.0f;
        };

        /// The parameters quantize() would use for an orbit with statistic `s`
        /// (orbitq::detail::encode_orbit), with the code range relative to the zero point.
        template <scheme_policy S>
        inline orbit_params resolve(const quant_spec& spec, const min_max& s, const std::string& name)
        {
            orbit_params o;
            o.enc = orbitq::detail::encode_orbit<S>(spec, s, name, [&](const quant_params& stored) { o.stored_scale = stored.scale; });
            o.lo = static_cast<float>(S::qmin - o.enc.params.zero_point);
            o.hi = static_cast<float>(S::qmax - o.enc.params.zero_point);
            return o;
        }

        /// The scheme dispatch of quantize (policy/dispatch.hpp).
        using orbitq::with_scheme;

        /// ŵ of one weight, exactly as quantize + dequantize_row compute it.
        template <rounding_policy R>
        inline float reconstruct(float x, const orbit_params& p) noexcept
        {
            const std::int8_t code = kernels::reference::encode<R>(x, p.enc);
            return static_cast<float>(code - p.enc.params.zero_point) * p.stored_scale;
        }

        /// The float -> double widening of the kernels (kernels/isa.hpp).
        using kernels::simd::detail::widen;

        /// Sum of the lanes of a and b, in a fixed order (scalar: xsimd's hadd warns on GCC 12).
        template <class DB>
        inline double lane_sum(const DB& a, const DB& b) noexcept
        {
            alignas(64) double x[DB::size];
            alignas(64) double y[DB::size];
            a.store_aligned(x);
            b.store_aligned(y);
            double s = 0.0;
            for (std::size_t k = 0; k < DB::size; ++k) s += x[k] + y[k];
            return s;
        }

        /// max(m, |d|), one instruction where the ISA has it.
        template <class DB>
        inline DB max_abs(const DB& m, const DB& d) noexcept
        {
#if defined(__AVX512DQ__)
            if constexpr (DB::size == 8 && std::derived_from<typename DB::arch_type, xsimd::avx512dq>)
            {
                // vrangepd imm 0b1011: the larger absolute value, sign cleared. m >= 0 always.
                return _mm512_range_pd(m, d, 0x0b);
            }
            else
#endif
            {
                return xsimd::max(m, xsimd::abs(d));
            }
        }

        /// One candidate's running sums over a block of rows, kept in lanes so that a row costs
        /// no horizontal reduction: Σŵ², Σ(w − ŵ)² per lane, and per lane the largest |w − ŵ|
        /// with the first row where it occurred (strictly greater replaces, so the first row wins).
        /// Scalar tails (orbits that are not whole batches) have their own lane.
        struct lane_sums
        {
            double_batch rec0 = double_batch(0.0), rec1 = double_batch(0.0);
            double_batch err0 = double_batch(0.0), err1 = double_batch(0.0);
            double_batch max0 = double_batch(0.0), max1 = double_batch(0.0);
            double_batch row0 = double_batch(0.0), row1 = double_batch(0.0);  ///< exact: rows < 2^53
            double rec = 0.0, err = 0.0, max = 0.0;
            std::size_t max_row = 0;

            /// The block's error_accumulator; ref = Σw² of the block's rows, n its element count.
            error_accumulator finish(double ref, std::size_t n, std::size_t cols) const noexcept
            {
                error_accumulator a;
                a.ref_sq = ref;
                a.rec_sq = lane_sum(rec0, rec1) + rec;
                a.err_sq = lane_sum(err0, err1) + err;
                // Σwŵ = (Σw² + Σŵ² − Σ(w − ŵ)²) / 2, exactly in real arithmetic.
                a.dot = 0.5 * (a.ref_sq + a.rec_sq - a.err_sq);
                a.count = n;
                alignas(64) double m[2 * double_batch::size];
                alignas(64) double r[2 * double_batch::size];
                max0.store_aligned(m);
                max1.store_aligned(m + double_batch::size);
                row0.store_aligned(r);
                row1.store_aligned(r + double_batch::size);
                a.max_abs_err = max;
                std::size_t row = max_row;
                for (std::size_t k = 0; k < 2 * double_batch::size; ++k)
                {
                    const auto rk = static_cast<std::size_t>(r[k]);
                    if (m[k] > a.max_abs_err || (m[k] == a.max_abs_err && m[k] > 0.0 && rk < row))
                    {
                        a.max_abs_err = m[k];
                        row = rk;
                    }
                }
                a.max_index = row * cols;  // the column is resolved at the end, for the winning row only
                return a;
            }
        };

        /// Adds one row of one candidate to its lane sums.
        /// @tparam NB when > 0: every orbit is exactly NB batches (the loop over an orbit unrolls)
        /// @param group columns per orbit; orbit j covers [j*group, min((j+1)*group, cols))
        /// @param params one per orbit of the row
        template <rounding_policy R, std::size_t NB = 0>
        void row_error(const float* x, const double* xd, std::size_t cols, std::size_t group, const orbit_params* params,
                       std::size_t r, lane_sums& acc) noexcept
        {
            constexpr std::size_t w = float_batch::size;
            constexpr std::size_t h = double_batch::size;
            double_batch r0 = acc.rec0, r1 = acc.rec1, e0 = acc.err0, e1 = acc.err1;
            double_batch m0(0.0), m1(0.0);
            double rec = 0.0, err = 0.0, mx = 0.0;
            // One batch: encode (as quantize's kernel), ŵ in f32, then the sums in f64.
            auto step = [&](std::size_t i, const float_batch& v_of_a, const float_batch& lo, const float_batch& hi, const float_batch& s) {
                const float_batch v = xsimd::min(xsimd::max(simd::detail::round<R>(v_of_a), lo), hi);
                const float_batch b = v * s;
                double_batch b0, b1;
                widen(b, b0, b1);
                const double_batch d0 = double_batch::load_unaligned(xd + i) - b0;
                const double_batch d1 = double_batch::load_unaligned(xd + i + h) - b1;
                r0 = kernels::simd::detail::mul_add(b0, b0, r0);
                r1 = kernels::simd::detail::mul_add(b1, b1, r1);
                e0 = kernels::simd::detail::mul_add(d0, d0, e0);
                e1 = kernels::simd::detail::mul_add(d1, d1, e1);
                m0 = max_abs(m0, d0);
                m1 = max_abs(m1, d1);
            };
            for (std::size_t c0 = 0, j = 0; c0 < cols; c0 += group, ++j)
            {
                const orbit_params& p = params[j];
                const std::size_t c1 = std::min(cols, c0 + group);
                const float_batch lo(p.lo);
                const float_batch hi(p.hi);
                const float_batch s(p.stored_scale);
                std::size_t i = c0;
                if (p.enc.mode == scale_application::multiply_inverse)
                {
                    const float_batch inv(p.enc.params.inv_scale);
                    if constexpr (NB > 0)
                    {
                        for (std::size_t k = 0; k < NB; ++k) step(c0 + k * w, float_batch::load_unaligned(x + c0 + k * w) * inv, lo, hi, s);
                        continue;
                    }
                    for (; i + w <= c1; i += w) step(i, float_batch::load_unaligned(x + i) * inv, lo, hi, s);
                }
                else if (p.enc.params.scale != 0.0f)  // a zero orbit in divide mode goes to the scalar loop
                {
                    const float_batch scale(p.enc.params.scale);
                    for (; i + w <= c1; i += w) step(i, float_batch::load_unaligned(x + i) / scale, lo, hi, s);
                }
                for (; i < c1; ++i)
                {
                    const double b = reconstruct<R>(x[i], p);
                    const double d = xd[i] - b;
                    rec += b * b;
                    err += d * d;
                    mx = std::max(mx, std::fabs(d));
                }
            }
            acc.rec0 = r0;
            acc.rec1 = r1;
            acc.err0 = e0;
            acc.err1 = e1;
            const double_batch row(static_cast<double>(r));
            const auto g0 = m0 > acc.max0;
            const auto g1 = m1 > acc.max1;
            acc.max0 = xsimd::select(g0, m0, acc.max0);
            acc.max1 = xsimd::select(g1, m1, acc.max1);
            acc.row0 = xsimd::select(g0, row, acc.row0);
            acc.row1 = xsimd::select(g1, row, acc.row1);
            acc.rec += rec;
            acc.err += err;
            if (mx > acc.max)
            {
                acc.max = mx;
                acc.max_row = r;
            }
        }

        /// row_error with the orbit loop unrolled where every orbit is 1, 2, 4 or 8 whole batches.
        template <rounding_policy R>
        void row_error_dispatch(const float* x, const double* xd, std::size_t cols, std::size_t group, const orbit_params* params,
                                std::size_t r, lane_sums& acc) noexcept
        {
            constexpr std::size_t w = float_batch::size;
            if (group % w == 0 && cols % group == 0)
            {
                switch (group / w)
                {
                    case 1: return row_error<R, 1>(x, xd, cols, group, params, r, acc);
                    case 2: return row_error<R, 2>(x, xd, cols, group, params, r, acc);
                    case 4: return row_error<R, 4>(x, xd, cols, group, params, r, acc);
                    case 8: return row_error<R, 8>(x, xd, cols, group, params, r, acc);
                    default: break;
                }
            }
            row_error<R>(x, xd, cols, group, params, r, acc);
        }

        /// Converts a row to double and returns Σw² in double.
        inline double widen_row(const float* x, std::size_t n, double* xd) noexcept
        {
            constexpr std::size_t w = float_batch::size;
            constexpr std::size_t h = double_batch::size;
            double_batch s0(0.0), s1(0.0);
            const std::size_t body = n - n % w;
            for (std::size_t i = 0; i < body; i += w)
            {
                double_batch a0, a1;
                widen(float_batch::load_unaligned(x + i), a0, a1);
                a0.store_unaligned(xd + i);
                a1.store_unaligned(xd + i + h);
                s0 = kernels::simd::detail::mul_add(a0, a0, s0);
                s1 = kernels::simd::detail::mul_add(a1, a1, s1);
            }
            double s = 0.0;
            for (std::size_t i = body; i < n; ++i)
            {
                xd[i] = x[i];
                s += xd[i] * xd[i];
            }
            return lane_sum(s0, s1) + s;
        }
    }
}
