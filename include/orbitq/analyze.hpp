/// @file analyze.hpp
/// @brief Know before you convert: what every candidate quantization policy would cost a weight,
///        measured in two passes over the data without writing any codes; automatic selection of
///        the cheapest policy that meets a target; outlier diagnostics.
///
/// Passes over memory:
/// 1. The statistics pyramid (algebra/orbits.hpp, `compute_statistics`) at the finest group size
///    all candidates share (the gcd of their group sizes). Every coarser orbit's statistic is the
///    `combine` of the finer ones it contains: a per_group:64 orbit is two per_group:32 orbits,
///    a row is all its groups, the tensor all its rows. Combining min_max is exact, so each
///    candidate gets exactly the parameters `quantize` would compute.
/// 2. Row by row, while the row is in L1: Σw² (shared by all candidates), the outlier scan, and
///    for each candidate the codes of every orbit of the row (same parameters, same encode
///    function as `quantize`: S::make_params, detail::stored_params, kernels::reference::encode
///    semantics, SIMD-identical), their dequantized values ŵ = (code − zp)·scale in float32 and
///    the error sums Σŵ², Σ(w − ŵ)², max |w − ŵ| in double. Nothing is written to memory.
///
/// Numerical contract: the cosine, relative error, SQNR and max abs error of each candidate equal
/// those of `measure(w, quantize(w, spec))` up to double rounding (relative difference <= 1e-9,
/// tested), and bits_per_weight equals quantized_tensor::bits_per_weight(). Σwŵ is derived per
/// block of rows as (Σw² + Σŵ² − Σ(w − ŵ)²) / 2: its absolute error is a few ulps of Σw², negligible next
/// to Σwŵ unless nearly all of the tensor's energy is lost (tested with a 10^4 outlier under
/// per-tensor int4, where every other code is 0).
///
/// Cost: per candidate, about 16 AVX-512 operations per 16 weights (encode in f32, widen ŵ to
/// f64, subtract, two FMAs, one vrangepd), plus the parameters of each orbit. The double-precision
/// error sums that the 1e-9 contract needs make analyze compute-bound, not memory-bound: with the
/// 16 default candidates it runs well below the f32 roofline loop (bench/bench_analyze.cpp).
///
/// Determinism: rows are processed in fixed blocks of analyze_options::block_rows rows; each block
/// accumulates its rows in row order (per SIMD lane, reduced once at the end of the block into an
/// error_accumulator) and the blocks' accumulators are combined in block order, so the results do
/// not depend on the thread count.
#pragma once

#include "orbitq/algebra/orbits.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/kernels/reference.hpp"
#include "orbitq/kernels/simd.hpp"
#include "orbitq/metrics.hpp"
#include "orbitq/quantize.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace orbitq
{
    /// @brief A candidate policy for analysis is a complete run-time quantization spec.
    using candidate = quant_spec;

    /// @brief What one candidate would cost the tensor.
    struct candidate_result
    {
        quant_spec spec;               ///< the candidate
        double bits_per_weight = 0.0;  ///< codes + scales + zero points, per weight
        double cosine = 1.0;           ///< flat cosine of W and its reconstruction
        double relative_error = 0.0;   ///< ‖W − Ŵ‖ / ‖W‖
        double sqnr_db = std::numeric_limits<double>::infinity();  ///< −20 log10 relative_error
        double max_abs_err = 0.0;      ///< max |w − ŵ|
        std::size_t max_row = 0;       ///< where max_abs_err occurs (first in row-major order)
        std::size_t max_col = 0;
    };

    /// @brief A weight that is large relative to the RMS of its row.
    struct outlier
    {
        std::size_t row = 0;
        std::size_t col = 0;
        float value = 0.0f;             ///< the weight (as float32)
        double ratio_to_row_rms = 0.0;  ///< |value| / RMS(row)
    };

    /// @brief How much precision a row loses when it shares the per-tensor scale.
    struct row_loss
    {
        std::size_t row = 0;
        float row_amax = 0.0f;  ///< max |w| of the row
        double bits_lost = 0.0; ///< log2(tensor amax / row amax); +inf for an all-zero row
    };

    /// @brief Options of analyze().
    struct analyze_options
    {
        std::size_t top_rows = 10;     ///< rows kept in tensor_analysis::worst_rows
        std::size_t top_weights = 10;  ///< weights kept in tensor_analysis::largest_weights
        unsigned threads = 1;          ///< rows split across this many threads (0 = hardware concurrency)
        std::size_t block_rows = 64;   ///< rows per deterministic accumulation block (> 0)
    };

    /// @brief Everything analyze() finds out about one tensor.
    struct tensor_analysis
    {
        std::string name;                          ///< the view's name
        shape_type shape;                          ///< original tensor shape
        std::size_t rows = 0;                      ///< matrix rows (channel rule of core/view.hpp)
        std::size_t cols = 0;                      ///< matrix columns
        double condition_number = 0.0;             ///< max|W| / RMS(W) (0 for an all-zero tensor)
        std::vector<candidate_result> candidates;  ///< one per candidate, in the order given
        std::vector<row_loss> worst_rows;          ///< most bits lost first (ties: lower row first)
        std::vector<outlier> largest_weights;      ///< largest |w| / row RMS first (ties: row-major order)
    };

    /// @brief The choice made by select_candidate().
    struct selection
    {
        std::optional<std::size_t> index;  ///< into tensor_analysis::candidates; empty when none meets the target
        std::string reason;                ///< what was chosen and why, for people
    };

    /// @brief Storage cost of quantizing a rows x cols matrix with `spec`, in bits per weight:
    ///        the same formula as quantized_tensor::bits_per_weight() (codes, plus one scale in
    ///        spec.scale_type and, when asymmetric, one zero point in the code width per orbit).
    /// @throws error (bad_group_size) as make_layout for a per_group spec that does not fit.
    inline double bits_per_weight(const quant_spec& spec, std::size_t rows, std::size_t cols)
    {
        std::size_t orbits = 1;
        if (spec.granularity == granularity_kind::per_channel) orbits = rows;
        else if (spec.granularity == granularity_kind::per_group)
        {
            orbits = make_layout<per_group<>>(rows, cols, spec.group_size, spec.ragged_groups).orbits();
        }
        const double n = static_cast<double>(rows * cols);
        const double scale_bits = 8.0 * static_cast<double>(element_size(spec.scale_type));
        const double zp_bits = spec.scheme == scheme_kind::asymmetric ? spec.bits : 0.0;
        return spec.bits + static_cast<double>(orbits) * (scale_bits + zp_bits) / n;
    }

    /// @brief The default candidate set for rows of `cols` weights: per_tensor, per_channel and
    ///        per_group 32, 64 and 128 where the group size divides cols and is smaller than it; each
    ///        as int8 and int4, symmetric (restricted range) and asymmetric; half-to-even rounding,
    ///        f32 scales. Order: granularity (coarsest first), then bits (8 first), then scheme
    ///        (symmetric first).
    inline std::vector<quant_spec> default_candidates(std::size_t cols)
    {
        std::vector<std::pair<granularity_kind, std::size_t>> grains{{granularity_kind::per_tensor, 0},
                                                                     {granularity_kind::per_channel, 0}};
        for (std::size_t g : {32u, 64u, 128u})
        {
            if (cols > g && cols % g == 0) grains.emplace_back(granularity_kind::per_group, g);
        }
        std::vector<quant_spec> out;
        for (const auto& [kind, g] : grains)
        {
            for (int bits : {8, 4})
            {
                for (scheme_kind s : {scheme_kind::symmetric, scheme_kind::asymmetric})
                {
                    quant_spec q;
                    q.granularity = kind;
                    q.group_size = g;
                    q.bits = bits;
                    q.scheme = s;
                    out.push_back(q);
                }
            }
        }
        return out;
    }

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

        /// A candidate resolved for the loops.
        struct plan
        {
            quant_spec spec;
            std::size_t span = 0;  ///< base statistic groups per orbit (per_group), 0 otherwise
            orbit_params tensor;   ///< per_tensor: the one orbit
        };

        /// Calls f(S{}) with the scheme policy type S of `spec` (the same dispatch as quantize).
        /// @throws error (invalid_argument) when spec.bits is not 8 or 4.
        template <class F>
        decltype(auto) with_scheme(const quant_spec& spec, F&& f)
        {
            if (spec.bits != 8 && spec.bits != 4)
            {
                throw error(error_kind::invalid_argument, "candidate '" + spec.describe() + "': bits must be 8 or 4");
            }
            const bool eight = spec.bits == 8;
            if (spec.scheme == scheme_kind::asymmetric) return eight ? f(asymmetric<8>{}) : f(asymmetric<4>{});
            if (spec.range == symmetric_range::full)
            {
                return eight ? f(symmetric<8, symmetric_range::full>{}) : f(symmetric<4, symmetric_range::full>{});
            }
            return eight ? f(symmetric<8>{}) : f(symmetric<4>{});
        }

        /// The parameters quantize() would use for an orbit with statistic `s`: S::make_params,
        /// then the scale as stored (detail::stored_params), codes from the exact or the stored
        /// scale as the spec asks.
        template <scheme_policy S>
        inline orbit_params resolve(const quant_spec& spec, const min_max& s, const std::string& name)
        {
            const quant_params exact = S::make_params(s);
            // stored_params is the identity for f32 scales: skip the call on the hot path.
            const quant_params stored = spec.scale_type == element_type::f32 ? exact : orbitq::detail::stored_params(exact, spec, name);
            orbit_params o;
            o.enc = encode_params{spec.codes_from_stored_scale ? stored : exact, S::qmin, S::qmax, spec.mode};
            o.stored_scale = stored.scale;
            o.lo = static_cast<float>(S::qmin - o.enc.params.zero_point);
            o.hi = static_cast<float>(S::qmax - o.enc.params.zero_point);
            return o;
        }

        /// ŵ of one weight, exactly as quantize + dequantize_row compute it.
        template <rounding_policy R>
        inline float reconstruct(float x, const orbit_params& p) noexcept
        {
            const std::int8_t code = kernels::reference::encode<R>(x, p.enc);
            return static_cast<float>(code - p.enc.params.zero_point) * p.stored_scale;
        }

        /// Widens a float batch into its low and high halves as double batches. The halves are
        /// taken with vector-extension shuffles and converted with the masked (explicit source)
        /// intrinsics: GCC 12's unmasked forms read an undefined source and warn under -Wall.
        template <class FB, class DB>
        inline void widen(const FB& f, DB& lo, DB& hi) noexcept
        {
            static_assert(2 * DB::size == FB::size, "a double batch must hold half a float batch");
#if defined(__AVX512F__) && defined(__GNUC__)  // GCC and Clang: vector extensions
            if constexpr (FB::size == 16 && std::derived_from<typename FB::arch_type, xsimd::avx512f>)
            {
                using v16 = float __attribute__((vector_size(64)));
                const v16 v = static_cast<__m512>(f);
                const __m256 l = reinterpret_cast<__m256>(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7));
                const __m256 h = reinterpret_cast<__m256>(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
                lo = _mm512_mask_cvtps_pd(_mm512_setzero_pd(), 0xff, l);
                hi = _mm512_mask_cvtps_pd(_mm512_setzero_pd(), 0xff, h);
                return;
            }
            else
#endif
#if defined(__AVX__) && defined(__GNUC__)
            if constexpr (FB::size == 8 && std::derived_from<typename FB::arch_type, xsimd::avx>)
            {
                using v8 = float __attribute__((vector_size(32)));
                const v8 v = static_cast<__m256>(f);
                lo = _mm256_cvtps_pd(reinterpret_cast<__m128>(__builtin_shufflevector(v, v, 0, 1, 2, 3)));
                hi = _mm256_cvtps_pd(reinterpret_cast<__m128>(__builtin_shufflevector(v, v, 4, 5, 6, 7)));
                return;
            }
            else
#endif
            {
                alignas(64) float fb[FB::size];
                alignas(64) double db[FB::size];
                f.store_aligned(fb);
                for (std::size_t k = 0; k < FB::size; ++k) db[k] = fb[k];
                lo = DB::load_aligned(db);
                hi = DB::load_aligned(db + DB::size);
            }
        }

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
                r0 = xsimd::fma(b0, b0, r0);
                r1 = xsimd::fma(b1, b1, r1);
                e0 = xsimd::fma(d0, d0, e0);
                e1 = xsimd::fma(d1, d1, e1);
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
                s0 = xsimd::fma(a0, a0, s0);
                s1 = xsimd::fma(a1, a1, s1);
            }
            double s = 0.0;
            for (std::size_t i = body; i < n; ++i)
            {
                xd[i] = x[i];
                s += xd[i] * xd[i];
            }
            return lane_sum(s0, s1) + s;
        }

        /// Orders outliers: larger ratio first, then row-major position.
        inline bool outlier_before(const outlier& a, const outlier& b) noexcept
        {
            if (a.ratio_to_row_rms != b.ratio_to_row_rms) return a.ratio_to_row_rms > b.ratio_to_row_rms;
            return a.row != b.row ? a.row < b.row : a.col < b.col;
        }

        /// Inserts o into the sorted top-n list `top`.
        inline void keep_top(std::vector<outlier>& top, const outlier& o, std::size_t n)
        {
            if (n == 0) return;
            if (top.size() == n && !outlier_before(o, top.back())) return;
            const auto at = std::upper_bound(top.begin(), top.end(), o, outlier_before);
            top.insert(at, o);
            if (top.size() > n) top.pop_back();
        }

        /// The results of one block of rows.
        struct block_result
        {
            std::vector<error_accumulator> acc;  ///< per candidate
            std::vector<outlier> top;            ///< this block's largest weights
        };

        /// Statistic of orbit j (span base groups) of row r.
        inline min_max group_stat(const statistics_pyramid& P, std::size_t r, std::size_t j, std::size_t span) noexcept
        {
            const std::size_t first = j * span;
            const std::size_t last = std::min(first + span, P.groups_per_row);
            const auto base = P.groups.begin() + static_cast<std::ptrdiff_t>(r * P.groups_per_row);
            return reduce_nonempty(base + static_cast<std::ptrdiff_t>(first), base + static_cast<std::ptrdiff_t>(last));
        }

        /// The parameters of every orbit of row r under plan p, written to out (resized as
        ///        needed); returns the columns per orbit. The scheme is a template parameter so
        ///        make_params inlines into the loop over the row's groups.
        template <scheme_policy S>
        std::size_t row_params(const plan& p, const statistics_pyramid& P, std::size_t r, const std::string& name,
                               std::vector<orbit_params>& out)
        {
            switch (p.spec.granularity)
            {
                case granularity_kind::per_tensor:
                    out.assign(1, p.tensor);
                    return P.cols;
                case granularity_kind::per_channel:
                    out.assign(1, resolve<S>(p.spec, P.row_stats[r], name));
                    return P.cols;
                case granularity_kind::per_group: break;
            }
            const std::size_t g = p.spec.group_size;
            const std::size_t groups = (P.cols + g - 1) / g;
            out.resize(groups);
            for (std::size_t j = 0; j < groups; ++j) out[j] = resolve<S>(p.spec, group_stat(P, r, j, p.span), name);
            return g;
        }

        /// The parameters of every orbit of row r under plan p (into params); returns the columns
        /// per orbit.
        inline std::size_t candidate_params(const plan& p, const statistics_pyramid& P, std::size_t r, const std::string& name,
                                            std::vector<orbit_params>& params)
        {
            return with_scheme(p.spec, [&](auto scheme) { return row_params<decltype(scheme)>(p, P, r, name, params); });
        }

        /// Adds row r under plan p to acc, with the row's orbit parameters from candidate_params.
        inline void candidate_row(const plan& p, std::size_t r, const float* x, const double* xd, std::size_t cols, std::size_t group,
                                  const std::vector<orbit_params>& params, lane_sums& acc) noexcept
        {
            if (p.spec.rounding == rounding_kind::half_to_even) row_error_dispatch<half_to_even>(x, xd, cols, group, params.data(), r, acc);
            else row_error_dispatch<half_away_from_zero>(x, xd, cols, group, params.data(), r, acc);
        }

        /// The first column of row r where |w − ŵ| equals m under plan p (0 if none does).
        template <rounding_policy R>
        std::size_t find_max_col(const std::vector<orbit_params>& params, std::size_t group, std::size_t cols, const float* x, double m)
        {
            for (std::size_t c = 0; c < cols; ++c)
            {
                const double d = static_cast<double>(x[c]) - static_cast<double>(reconstruct<R>(x[c], params[c / group]));
                if (std::fabs(d) == m) return c;
            }
            return 0;
        }

        /// Row r as float32: the data itself, or widened into buf.
        template <weight_element T>
        const float* row_f32(const matrix_view<T>& w, std::size_t r, float* buf) noexcept
        {
            if constexpr (std::same_as<T, float>)
            {
                (void)buf;
                return w.row(r);
            }
            else
            {
                const T* x = w.row(r);
                for (std::size_t c = 0; c < w.cols; ++c) buf[c] = to_float(x[c]);
                return buf;
            }
        }

        /// Checks the candidates against the matrix and returns their plans.
        inline std::vector<plan> make_plans(const std::vector<quant_spec>& candidates, std::size_t rows, std::size_t cols)
        {
            if (candidates.empty()) throw error(error_kind::invalid_argument, "analyze needs at least one candidate");
            std::vector<plan> plans;
            for (const quant_spec& c : candidates)
            {
                with_scheme(c, [](auto) {});  // checks the bits
                plan p;
                p.spec = c;
                plans.push_back(p);
                if (c.granularity == granularity_kind::per_group)
                {
                    (void)make_layout<per_group<>>(rows, cols, c.group_size, c.ragged_groups);  // throws on a bad size
                }
            }
            return plans;
        }

        /// The finest group size every per_group candidate's orbits are unions of.
        inline std::size_t base_group(const std::vector<quant_spec>& candidates, std::size_t cols) noexcept
        {
            std::size_t g = 0;
            for (const quant_spec& c : candidates)
            {
                if (c.granularity == granularity_kind::per_group) g = std::gcd(g, c.group_size);
            }
            return g == 0 ? cols : g;
        }

        inline std::string format_double(const char* fmt, double v)
        {
            char buf[64];
            std::snprintf(buf, sizeof buf, fmt, v);
            return buf;
        }
    }

    /// @brief Analyses what each candidate policy would cost `w`, without quantizing it.
    /// @param w the weight (f32, bf16 or f16), seen as a matrix by the channel rule of core/view.hpp
    /// @param candidates the policies to evaluate (for example default_candidates(w.cols)); every
    ///        field of quant_spec is honoured (range, rounding, scale application, scale storage)
    /// @param options how many worst rows and largest weights to keep; threads
    /// @return per-candidate metrics equal to measure(w, quantize(w, spec)) (relative difference
    ///         <= 1e-9), worst rows under the per-tensor scale, largest weights relative to their
    ///         row RMS, condition number. Identical for every thread count.
    /// @pre every group_size of a per_group candidate divides w.cols unless it asks for ragged groups
    /// @throws error (invalid_argument) for an empty candidate list, bits other than 8 or 4, a
    ///         block_rows of 0, no data, stride < cols; (empty_tensor) for an empty tensor;
    ///         (bad_group_size) for a group size of 0 or one that does not divide the row (not
    ///         ragged); non_finite_error naming the row and column of a NaN or infinity.
    template <weight_element T>
    tensor_analysis analyze(const matrix_view<T>& w, const std::vector<quant_spec>& candidates, const analyze_options& options = {})
    {
        namespace A = detail::analysis;
        if (w.rows == 0 || w.cols == 0) throw error(error_kind::empty_tensor, "tensor '" + w.name + "' is empty");
        if (w.data == nullptr) throw error(error_kind::invalid_argument, "tensor '" + w.name + "' has no data");
        if (w.stride < w.cols) throw error(error_kind::invalid_argument, "tensor '" + w.name + "': stride < cols");
        if (options.block_rows == 0) throw error(error_kind::invalid_argument, "analyze: block_rows must be > 0");
        std::vector<A::plan> plans = A::make_plans(candidates, w.rows, w.cols);
        const std::size_t C = plans.size();

        // Pass 1: the statistics pyramid at the base group size.
        const std::size_t g0 = A::base_group(candidates, w.cols);
        const statistics_pyramid P = compute_statistics(w, g0, options.threads);
        for (A::plan& p : plans)
        {
            if (p.spec.granularity == granularity_kind::per_group) p.span = p.spec.group_size / g0;
            if (p.spec.granularity == granularity_kind::per_tensor)
            {
                p.tensor = A::with_scheme(p.spec, [&](auto s) { return A::resolve<decltype(s)>(p.spec, P.tensor, w.name); });
            }
        }

        // Pass 2: per row, Σw², outliers and every candidate's error sums.
        const std::size_t blocks = (w.rows + options.block_rows - 1) / options.block_rows;
        std::vector<A::block_result> results(blocks);
        parallel_rows(blocks, options.threads, [&](std::size_t first, std::size_t last) {
            std::vector<float> fbuf(std::same_as<T, float> ? 0 : w.cols);
            std::vector<double> xd(w.cols);
            std::vector<std::vector<A::orbit_params>> params(C);
            std::vector<std::size_t> groups(C);
            std::vector<A::lane_sums> lanes(C);
            for (std::size_t b = first; b < last; ++b)
            {
                A::block_result& out = results[b];
                lanes.assign(C, A::lane_sums{});
                double block_ref = 0.0;
                const std::size_t r0 = b * options.block_rows;
                const std::size_t r1 = std::min(w.rows, (b + 1) * options.block_rows);
                for (std::size_t r = r0; r < r1; ++r)
                {
                    const float* x = A::row_f32(w, r, fbuf.data());
                    const double ref = A::widen_row(x, w.cols, xd.data());
                    block_ref += ref;

                    // Outliers: only rows, and within them base groups, whose largest weight can
                    // enter the top list are scanned (a cheap float prefilter, then the exact ratio).
                    const double rms = std::sqrt(ref / static_cast<double>(w.cols));
                    const std::size_t n_top = options.top_weights;
                    if (rms > 0.0 && n_top > 0)
                    {
                        auto limit = [&] {
                            return out.top.size() < n_top ? 0.0f
                                                          : static_cast<float>(out.top.back().ratio_to_row_rms * rms * (1.0 - 1e-6));
                        };
                        float lim = limit();
                        if (P.row_stats[r].to_abs_max().value >= lim)
                        {
                            for (std::size_t g = 0; g < P.groups_per_row; ++g)
                            {
                                if (P.group_stat(r, g).to_abs_max().value < lim) continue;
                                const std::size_t c1 = std::min(w.cols, (g + 1) * P.group);
                                for (std::size_t c = g * P.group; c < c1; ++c)
                                {
                                    if (std::fabs(x[c]) < lim) continue;
                                    const double ratio = std::fabs(xd[c]) / rms;
                                    if (out.top.size() < n_top || ratio >= out.top.back().ratio_to_row_rms)
                                    {
                                        A::keep_top(out.top, outlier{r, c, x[c], ratio}, n_top);
                                        lim = limit();
                                    }
                                }
                            }
                        }
                    }

                    // All candidates' parameters first, so their divisions overlap one another
                    // instead of each stalling the start of its candidate's loop.
                    for (std::size_t k = 0; k < C; ++k) groups[k] = A::candidate_params(plans[k], P, r, w.name, params[k]);
                    for (std::size_t k = 0; k < C; ++k) A::candidate_row(plans[k], r, x, xd.data(), w.cols, groups[k], params[k], lanes[k]);
                }
                out.acc.resize(C);
                for (std::size_t k = 0; k < C; ++k) out.acc[k] = lanes[k].finish(block_ref, (r1 - r0) * w.cols, w.cols);
            }
        });

        tensor_analysis t;
        t.name = w.name;
        t.shape = w.shape.empty() ? shape_type{w.rows, w.cols} : w.shape;
        t.rows = w.rows;
        t.cols = w.cols;

        std::vector<float> fbuf(std::same_as<T, float> ? 0 : w.cols);
        std::vector<A::orbit_params> params;
        std::vector<outlier> top;
        for (std::size_t k = 0; k < C; ++k)
        {
            error_accumulator total;
            for (const A::block_result& b : results) total = combine(total, b.acc[k]);
            if (total.max_abs_err > 0.0)
            {
                const std::size_t r = total.max_index / w.cols;
                const float* x = A::row_f32(w, r, fbuf.data());
                const std::size_t group = A::with_scheme(plans[k].spec, [&](auto scheme) {
                    return A::row_params<decltype(scheme)>(plans[k], P, r, w.name, params);
                });
                const std::size_t c = plans[k].spec.rounding == rounding_kind::half_to_even
                    ? A::find_max_col<half_to_even>(params, group, w.cols, x, total.max_abs_err)
                    : A::find_max_col<half_away_from_zero>(params, group, w.cols, x, total.max_abs_err);
                total.max_index = r * w.cols + c;
            }
            const error_metrics m = finish(total, w.cols);
            t.candidates.push_back({candidates[k], bits_per_weight(candidates[k], w.rows, w.cols), m.cosine, m.relative_error,
                                    m.sqnr_db, m.max_abs_err, m.max_row, m.max_col});
            if (k == 0)
            {
                const double rms = std::sqrt(total.ref_sq / static_cast<double>(w.size()));
                t.condition_number = rms == 0.0 ? 0.0 : static_cast<double>(P.tensor.to_abs_max().value) / rms;
            }
        }

        for (const A::block_result& b : results)
        {
            for (const outlier& o : b.top) A::keep_top(top, o, options.top_weights);
        }
        t.largest_weights = std::move(top);

        const std::vector<double> lost = bits_lost_per_row(P);
        std::vector<std::size_t> order(w.rows);
        std::iota(order.begin(), order.end(), std::size_t{0});
        const std::size_t n_rows = std::min(options.top_rows, w.rows);
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n_rows), order.end(),
                          [&](std::size_t a, std::size_t b) { return lost[a] != lost[b] ? lost[a] > lost[b] : a < b; });
        for (std::size_t i = 0; i < n_rows; ++i)
        {
            const std::size_t r = order[i];
            t.worst_rows.push_back({r, P.row_stats[r].to_abs_max().value, lost[r]});
        }
        return t;
    }

    /// @brief Picks the candidate with the fewest bits per weight that meets the target(s); among
    ///        equally cheap ones, the higher SQNR (then the earlier one).
    /// @param target_cos minimum flat cosine, if given
    /// @param target_sqnr_db minimum SQNR in dB, if given (both given: both must hold)
    /// @return the index into a.candidates, or none, and a sentence saying what was chosen and why
    ///         (or, when none meets the target, which candidate came closest).
    /// @throws error (invalid_argument) when neither target is given or the analysis has no candidates.
    inline selection select_candidate(const tensor_analysis& a, std::optional<double> target_cos, std::optional<double> target_sqnr_db)
    {
        namespace A = detail::analysis;
        if (!target_cos && !target_sqnr_db) throw error(error_kind::invalid_argument, "select_candidate needs a cosine or SQNR target");
        if (a.candidates.empty()) throw error(error_kind::invalid_argument, "select_candidate: '" + a.name + "' has no candidates");
        auto meets = [&](const candidate_result& c) {
            return (!target_cos || c.cosine >= *target_cos) && (!target_sqnr_db || c.sqnr_db >= *target_sqnr_db);
        };
        std::string target;
        if (target_cos) target = "cos >= " + A::format_double("%.6g", *target_cos);
        if (target_sqnr_db) target += (target.empty() ? "" : " and ") + std::string("SQNR >= ") + A::format_double("%.4g dB", *target_sqnr_db);
        auto describe = [](const candidate_result& c) {
            return c.spec.describe() + " (" + A::format_double("%.4f", c.bits_per_weight) + " bits/weight, cos "
                + A::format_double("%.7f", c.cosine) + ", SQNR " + A::format_double("%.2f dB", c.sqnr_db) + ")";
        };

        std::optional<std::size_t> best;
        std::size_t meeting = 0;
        for (std::size_t i = 0; i < a.candidates.size(); ++i)
        {
            const candidate_result& c = a.candidates[i];
            if (!meets(c)) continue;
            ++meeting;
            if (!best) best = i;
            else
            {
                const candidate_result& b = a.candidates[*best];
                if (c.bits_per_weight < b.bits_per_weight || (c.bits_per_weight == b.bits_per_weight && c.sqnr_db > b.sqnr_db)) best = i;
            }
        }
        // The closest miss: highest SQNR among those that fail (the most informative alternative).
        auto best_miss = [&](double below_bits) -> std::optional<std::size_t> {
            std::optional<std::size_t> m;
            for (std::size_t i = 0; i < a.candidates.size(); ++i)
            {
                const candidate_result& c = a.candidates[i];
                if (meets(c) || c.bits_per_weight >= below_bits) continue;
                if (!m || c.sqnr_db > a.candidates[*m].sqnr_db) m = i;
            }
            return m;
        };

        selection s;
        if (!best)
        {
            const auto m = best_miss(std::numeric_limits<double>::infinity());
            s.reason = "no candidate of " + std::to_string(a.candidates.size()) + " meets " + target + " for '" + a.name + "'";
            if (m) s.reason += "; the closest is " + describe(a.candidates[*m]);
            return s;
        }
        s.index = best;
        const candidate_result& b = a.candidates[*best];
        s.reason = describe(b) + ": the fewest bits per weight of the " + std::to_string(meeting) + " of "
            + std::to_string(a.candidates.size()) + " candidates meeting " + target;
        if (const auto m = best_miss(b.bits_per_weight)) s.reason += "; the best cheaper one, " + describe(a.candidates[*m]) + ", misses it";
        return s;
    }

    /// @brief The one candidate for several tensors that must share a spec (the projections of
    ///        a MoE layer): the fewest bits over all of them (bits per weight weighted by each
    ///        tensor's size) among the candidates meeting the target on every tensor; ties go
    ///        to the higher worst SQNR.
    /// @pre every analysis evaluated the same candidate specs in the same order (scale_type
    ///      may differ).
    /// @throws error (invalid_argument) without a target, without analyses or candidates, or
    ///         when the analyses' candidate lists differ.
    inline selection select_common_candidate(const std::vector<tensor_analysis>& analyses, std::optional<double> target_cos,
                                             std::optional<double> target_sqnr_db)
    {
        namespace A = detail::analysis;
        if (!target_cos && !target_sqnr_db) throw error(error_kind::invalid_argument, "select_common_candidate needs a cosine or SQNR target");
        if (analyses.empty() || analyses.front().candidates.empty())
        {
            throw error(error_kind::invalid_argument, "select_common_candidate: no analyses or no candidates");
        }
        const std::size_t C = analyses.front().candidates.size();
        for (const auto& a : analyses)
        {
            bool same = a.candidates.size() == C;
            for (std::size_t i = 0; same && i < C; ++i)
            {
                quant_spec x = a.candidates[i].spec, y = analyses.front().candidates[i].spec;
                x.scale_type = y.scale_type;
                same = x == y;
            }
            if (!same) throw error(error_kind::invalid_argument, "select_common_candidate: '" + a.name + "' evaluated other candidates");
        }
        std::string target;
        if (target_cos) target = "cos >= " + A::format_double("%.6g", *target_cos);
        if (target_sqnr_db) target += (target.empty() ? "" : " and ") + std::string("SQNR >= ") + A::format_double("%.4g dB", *target_sqnr_db);
        auto meets = [&](const candidate_result& c) {
            return (!target_cos || c.cosine >= *target_cos) && (!target_sqnr_db || c.sqnr_db >= *target_sqnr_db);
        };
        double weights = 0.0;
        for (const auto& a : analyses) weights += static_cast<double>(a.rows * a.cols);
        struct summary
        {
            double bits = 0.0, worst_cos = 1.0, worst_sqnr = std::numeric_limits<double>::infinity();
            std::string missed;  // the first tensor it misses the target on
        };
        std::vector<summary> sums(C);
        for (std::size_t i = 0; i < C; ++i)
        {
            for (const auto& a : analyses)
            {
                const candidate_result& c = a.candidates[i];
                sums[i].bits += c.bits_per_weight * static_cast<double>(a.rows * a.cols) / weights;
                sums[i].worst_cos = std::min(sums[i].worst_cos, c.cosine);
                sums[i].worst_sqnr = std::min(sums[i].worst_sqnr, c.sqnr_db);
                if (sums[i].missed.empty() && !meets(c)) sums[i].missed = a.name;
            }
        }
        auto describe = [&](std::size_t i) {
            return analyses.front().candidates[i].spec.describe() + " (" + A::format_double("%.4f", sums[i].bits) + " bits/weight, worst cos "
                + A::format_double("%.7f", sums[i].worst_cos) + ", worst SQNR " + A::format_double("%.2f dB", sums[i].worst_sqnr) + ")";
        };
        std::optional<std::size_t> best, miss;
        std::size_t meeting = 0;
        for (std::size_t i = 0; i < C; ++i)
        {
            if (!sums[i].missed.empty()) continue;
            ++meeting;
            if (!best || sums[i].bits < sums[*best].bits || (sums[i].bits == sums[*best].bits && sums[i].worst_sqnr > sums[*best].worst_sqnr)) best = i;
        }
        const double below = best ? sums[*best].bits : std::numeric_limits<double>::infinity();
        for (std::size_t i = 0; i < C; ++i)
        {
            if (sums[i].missed.empty() || sums[i].bits >= below) continue;
            if (!miss || sums[i].worst_sqnr > sums[*miss].worst_sqnr) miss = i;
        }
        selection s;
        const std::string of = std::to_string(analyses.size()) + " tensors";
        if (!best)
        {
            s.reason = "no candidate of " + std::to_string(C) + " meets " + target + " on all " + of;
            if (miss) s.reason += "; the closest is " + describe(*miss) + ", missing it on '" + sums[*miss].missed + "'";
            return s;
        }
        s.index = best;
        s.reason = describe(*best) + ": the fewest bits per weight of the " + std::to_string(meeting) + " of " + std::to_string(C)
            + " candidates meeting " + target + " on all " + of;
        if (miss) s.reason += "; the best cheaper one, " + describe(*miss) + ", misses it on '" + sums[*miss].missed + "'";
        return s;
    }
}
