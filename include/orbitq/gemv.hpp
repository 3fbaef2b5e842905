/// @file gemv.hpp
/// @brief Matrix-vector (gemv) and small-batch matrix-matrix (gemm, up to 64 tokens) products
///        that read a quantized_tensor's codes directly, without dequantizing the matrix.
///
/// y[r] = sum_j w[r, j] x[j] with w[r, j] = float(code(r, j) - zero_point) * scale of its orbit,
/// for int8 and int4 codes, per-tensor, per-channel and per-group layouts, symmetric and
/// asymmetric schemes; activations in float32, bfloat16 or float16; float32 accumulation. Float
/// codes (fp8_e4m3 in any layout, 128 x 128 blocks included; mxfp4, nvfp4) are summed the same
/// way with their code values (code - zero_point above stands for the E4M3 or E2M1 value), which
/// are decoded in registers exactly.
///
/// How a row is summed (the same for gemv, gemm, every thread count and every tile shape, so
/// gemm's token t is bit-identical to gemv of that token, and the result does not depend on the
/// thread count):
///   - the activations are copied once per call into a float32 buffer laid out like the codes
///     (padded per group to whole SIMD vectors; for int4, each 2L-column chunk holds its even
///     columns then its odd columns, matching the two nibbles of L packed bytes);
///   - codes are widened in registers (int8 -> int32, zero point subtracted exactly in int32,
///     -> float32); per group g, a vector accumulator collects acc_g = sum (code - zp) * x by FMA
///     in column order; then total = fma(scale_g, acc_g, total) in group order;
///   - the L lanes of total are added horizontally at the end.
///
/// The zero point is subtracted from the codes in integer arithmetic rather than by the
/// algebraically equal sum(code * x) - zp * sum(x): the integer subtraction is exact and costs one
/// instruction per vector, while the group-sum form cancels catastrophically when the codes sit
/// near the zero point (small weights of an asymmetric orbit), which would make the error bound
/// below depend on |zp| * sum|x| instead of on the weights.
///
/// Accuracy (proved by the standard floating-point summation argument, checked by the tests):
/// with u = 2^-24, L = SIMD lanes, k = f * (ceil(group / L) + groups_per_row) + L + 2 (f = 1
/// with a fused multiply-add, f = 2 without one, e.g. baseline SSE2) and
/// gamma_k = k u / (1 - k u), every output satisfies
///   |y[r] - y_ref[r]| <= gamma_k * sum_j |w_deq[r, j] * x[j]|
/// where y_ref is computed in double from dequantize(w) (w_deq) and the same activations widened
/// to float. k counts the roundings a term can meet: the FMA chain of its group, the chain over
/// groups, the horizontal sum, the rounding of w_deq in dequantize and the double reference. The
/// bound assumes no underflow (products above ~1e-38) and finite activations; NaN or infinity in
/// x propagates to y as in any float product. gemv_error_bound(w) returns gamma_k.
///
/// gemv_arithmetic::int8_dot (int4 weights, see supports_int8_dot) trades that bound for speed,
/// as ggml's Q4_0 x Q8_0 dot products do: each token's activations are quantized to int8 per
/// block of 32 columns (step_b = the smallest float >= max|x| / 127 of block b, qx_j = x_j /
/// step_b rounded to the nearest integer, x^_j = qx_j step_b, |x_j - x^_j| <= step_b / 2), the
/// codes are multiplied with them in exact int32 dot products (VNNI vpdpbusd, or vpmaddubsw +
/// vpmaddwd), and the int32 sums of 8 columns are scaled and added in float32
/// (kernels/int4_dot.hpp has the order). Every output satisfies
///   |y[r] - y_ref[r]| <= gamma_k' * sum_j |w_deq[r, j] x^_j| + sum_j |w_deq[r, j]| step_b(j) / 2
/// with gamma_k' = gemv_int8_dot_error_bound(w): k' = f * (ceil(row bytes / 4L) + groups_per_row)
/// + L + 3 (the chains over chunks and orbits, the product by the step, the horizontal sum,
/// dequantize's rounding and the reference). The first term is float rounding, the second the
/// activations' quantization: about 1/254 of the largest |x| of each block times the weights it
/// meets. gemm's tokens are bit-identical to gemv's and the result to any thread count's, as
/// with float32.
///
/// Kernels: xsimd (xsimd::default_arch: AVX-512 with -march=native on x86-64), several rows and
/// tokens per register tile for independent FMA chains (8 rows for gemv, 4 rows x 3 tokens for
/// gemm). xsimd 8.1 has no int8 -> int32 widening load, so detail::widen_int8 uses the one
/// instruction each x86 SIMD level has for it and a scalar copy elsewhere. Codes are read in
/// place when the group size and the row length are multiples of L (int8) or 2L (int4): every
/// Gemma 4 expert layout (per-channel, groups of 32..256). Other layouts (int4 rows of odd
/// length, group 6, a ragged last group) widen each tile of rows into an L1 scratch buffer first:
/// same sums, slower. At batch 1 the kernel prefetches the head of each row of the next tile.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/kernels/int4_dot.hpp"
#include "orbitq/kernels/simd.hpp"
#include "orbitq/quantize.hpp"

#include <xsimd/xsimd.hpp>

#if defined(__SSE4_1__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace orbitq
{
    /// @brief Largest token count gemm accepts.
    inline constexpr std::size_t gemm_max_tokens = 64;

    /// @brief How gemv and gemm multiply (see the file brief).
    enum class gemv_arithmetic
    {
        float32,  ///< activations widened to float32, float32 products: the tight bound of gemv_error_bound
        int8_dot  ///< int4 weights: activations quantized to int8 per block of 32, integer dot products
    };

    /// @brief Whether gemv_arithmetic::int8_dot takes the integer path for w: integer int4
    ///        codes (symmetric or asymmetric) whose orbit is the row (per_tensor, per_channel) or
    ///        a group of 32, 64 or a multiple of 128 columns. Other weights are multiplied as with
    ///        gemv_arithmetic::float32.
    inline bool supports_int8_dot(const quantized_tensor& w) noexcept
    {
        const orbit_layout& L = w.layout;
        const bool whole_rows = L.tensor_wide || L.groups_per_row == 1;
        return w.spec.bits == 4 && !is_float_scheme(w.spec.scheme) && L.block_rows == 1
               && (whole_rows || L.group == 32 || L.group == 64 || L.group % 128 == 0);
    }

    namespace detail::gemv
    {
        using float_batch = kernels::simd::float_batch;
        using int_batch = kernels::simd::int_batch;
        inline constexpr std::size_t lanes = float_batch::size;

        /// Whether kernels::simd::detail::mul_add is a fused multiply-add (one rounding) on the
        /// target.
        using kernels::simd::detail::fused_multiply_add;

        /// Roundings of one step of an FMA chain: 1, or 2 without a fused multiply-add (x86-64
        /// baseline SSE2).
        inline constexpr std::size_t roundings_per_step = fused_multiply_add ? 1 : 2;

        /// gamma_k = k u / (1 - k u) with u = 2^-24: the bound on k float32 roundings.
        inline double gamma(std::size_t k) noexcept
        {
            const double ku = static_cast<double>(k) * 0x1p-24;
            return ku / (1.0 - ku);
        }

        /// Loads int_batch::size int8 values and sign-extends them to int32 lanes.
        template <class B>
        inline B widen_int8(const std::int8_t* p) noexcept
        {
#if defined(__AVX512F__)
            if constexpr (B::size == 16)
            {
                return B(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
            }
#endif
#if defined(__AVX2__)
            if constexpr (B::size == 8)
            {
                return B(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
            }
#endif
#if defined(__SSE4_1__)
            if constexpr (B::size == 4)
            {
                std::int32_t v;
                std::memcpy(&v, p, sizeof v);
                return B(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(v)));
            }
#endif
            alignas(64) std::int32_t buf[B::size];
            for (std::size_t i = 0; i < B::size; ++i) buf[i] = p[i];
            return B::load_aligned(buf);
        }

        using kernels::simd::prefetch_range;
        using kernels::simd::prefetch_row_heads;

        /// How a tensor's rows are summed and where each activation goes in the float buffer.
        struct plan
        {
            std::size_t rows = 0;
            std::size_t cols = 0;
            std::size_t group = 0;          ///< columns per orbit within a row
            std::size_t groups = 0;         ///< groups per row
            std::size_t group_stride = 0;   ///< floats between the starts of two groups in the buffer
            std::size_t row_stride = 0;     ///< floats per token (or per scratch row): groups * group_stride
            bool int4 = false;
            bool float_codes = false;       ///< E4M3 bytes (8 bits) or E2M1 nibbles (4 bits)
            bool asymmetric = false;
            bool direct = false;            ///< codes are read in place; else widened into a scratch row first
            bool interleaved = false;       ///< int4 direct: each 2L chunk holds even then odd columns

            /// Number of SIMD vectors of group g.
            std::size_t vectors(std::size_t g) const noexcept
            {
                const std::size_t n = std::min(group, cols - g * group);
                return (n + lanes - 1) / lanes;
            }

            /// Position of column j in the buffer.
            std::size_t position(std::size_t j) const noexcept
            {
                const std::size_t g = j / group;
                const std::size_t i = j - g * group;
                if (!interleaved) return g * group_stride + i;
                const std::size_t chunk = i / (2 * lanes);
                const std::size_t k = i - chunk * 2 * lanes;
                return g * group_stride + chunk * 2 * lanes + (k % 2) * lanes + k / 2;
            }
        };

        /// Checks the tensor's internal consistency and derives the plan.
        inline plan make_plan(const quantized_tensor& w)
        {
            const orbit_layout& L = w.layout;
            if (w.spec.bits != 8 && w.spec.bits != 4)
            {
                throw error(error_kind::invalid_argument, "gemv: bits must be 8 or 4, got " + std::to_string(w.spec.bits));
            }
            if (w.rows == 0 || w.cols == 0) throw error(error_kind::empty_tensor, "gemv: the weight is empty");
            if (L.group == 0 || L.cols != w.cols || L.rows != w.rows || L.groups_per_row != (w.cols + L.group - 1) / L.group)
            {
                throw error(error_kind::invalid_argument, "gemv: the orbit layout does not match the weight's shape");
            }
            if (w.codes.size() != w.rows * w.row_bytes())
            {
                throw error(error_kind::shape_mismatch, "gemv: " + std::to_string(w.codes.size()) + " code bytes, expected "
                                                            + std::to_string(w.rows * w.row_bytes()));
            }
            if (w.scales.size() != L.orbits())
            {
                throw error(error_kind::shape_mismatch, "gemv: " + std::to_string(w.scales.size()) + " scales for "
                                                            + std::to_string(L.orbits()) + " orbits");
            }
            if (!w.zero_points.empty() && w.zero_points.size() != L.orbits())
            {
                throw error(error_kind::shape_mismatch, "gemv: " + std::to_string(w.zero_points.size())
                                                            + " zero points for " + std::to_string(L.orbits()) + " orbits");
            }
            plan p;
            p.rows = w.rows;
            p.cols = w.cols;
            p.group = L.group;
            p.groups = L.groups_per_row;
            p.int4 = w.spec.bits == 4;
            p.float_codes = is_float_scheme(w.spec.scheme);
            p.asymmetric = !w.zero_points.empty();
            const std::size_t unit = p.int4 ? 2 * lanes : lanes;
            p.direct = p.group % unit == 0 && p.cols % unit == 0;
            p.interleaved = p.direct && p.int4;
            p.group_stride = (p.group + lanes - 1) / lanes * lanes;
            p.row_stride = p.groups * p.group_stride;
            return p;
        }

        /// Writes one token's activations, widened to float32, at their plan positions; padding is 0.
        template <class X>
        void pack_activations(const plan& p, const X* x, float* out) noexcept
        {
            if (p.direct && !p.interleaved)
            {
                for (std::size_t j = 0; j < p.cols; ++j) out[j] = to_float(x[j]);
                return;
            }
            std::fill(out, out + p.row_stride, 0.0f);
            for (std::size_t j = 0; j < p.cols; ++j) out[p.position(j)] = to_float(x[j]);
        }

        /// Source of code vectors: int8 codes read in place.
        template <bool Asymmetric>
        struct int8_codes
        {
            static constexpr std::size_t per_chunk = 1;
            static constexpr bool asymmetric = Asymmetric;
            using row_pointer = const std::int8_t*;
            const std::int8_t* codes;
            std::size_t cols;

            row_pointer row(std::size_t r) const noexcept { return codes + r * cols; }
            void prefetch_rows(std::size_t first, std::size_t last) const noexcept { prefetch_row_heads(row(first), row(last), row(first + 1) - row(first)); }
            static void load(row_pointer row, std::size_t col, const int_batch& zp, float_batch* out) noexcept
            {
                int_batch v = widen_int8<int_batch>(row + col);
                if constexpr (Asymmetric) v = v - zp;
                out[0] = xsimd::to_float(v);
            }
        };

        /// Source of code vectors: int4 codes read in place, 2L columns (L bytes) per chunk,
        /// giving the even columns (low nibbles) then the odd columns (high nibbles).
        template <bool Asymmetric>
        struct int4_codes
        {
            static constexpr std::size_t per_chunk = 2;
            static constexpr bool asymmetric = Asymmetric;
            using row_pointer = const std::int8_t*;
            const std::int8_t* codes;
            std::size_t row_bytes;

            row_pointer row(std::size_t r) const noexcept { return codes + r * row_bytes; }
            void prefetch_rows(std::size_t first, std::size_t last) const noexcept { prefetch_row_heads(row(first), row(last), row(first + 1) - row(first)); }
            static void load(row_pointer row, std::size_t col, const int_batch& zp, float_batch* out) noexcept
            {
                const int_batch b = widen_int8<int_batch>(row + col / 2);
                int_batch lo = (b << 28) >> 28;  // sign-extended low nibble
                int_batch hi = b >> 4;           // b is a sign-extended byte: its arithmetic shift is the high nibble
                if constexpr (Asymmetric)
                {
                    lo = lo - zp;
                    hi = hi - zp;
                }
                out[0] = xsimd::to_float(lo);
                out[1] = xsimd::to_float(hi);
            }
        };

        using kernels::simd::detail::e2m1_values;
        using kernels::simd::detail::e4m3_values;

        /// Source of code vectors: E4M3 bytes read in place.
        struct e4m3_codes : int8_codes<false>
        {
            static void load(row_pointer row, std::size_t col, const int_batch&, float_batch* out) noexcept
            {
                out[0] = e4m3_values(widen_int8<int_batch>(row + col));
            }
        };

        /// Source of code vectors: E2M1 nibbles read in place, in int4_codes' chunk order.
        struct e2m1_codes : int4_codes<false>
        {
            static void load(row_pointer row, std::size_t col, const int_batch&, float_batch* out) noexcept
            {
                const int_batch b = widen_int8<int_batch>(row + col / 2);
                out[0] = e2m1_values(b);
                out[1] = e2m1_values(b >> 4);
            }
        };

        /// Source of code vectors: rows already widened to float32 (code - zp) in plan layout
        /// (column offsets are buffer positions here).
        struct widened_codes
        {
            static constexpr std::size_t per_chunk = 1;
            static constexpr bool asymmetric = false;
            using row_pointer = const float*;
            const float* data;  ///< row `first` at data[0]
            std::size_t first;
            std::size_t row_stride;

            row_pointer row(std::size_t r) const noexcept { return data + (r - first) * row_stride; }
            void prefetch_rows(std::size_t, std::size_t) const noexcept {}  // in L1 already
            static void load(row_pointer row, std::size_t pos, const int_batch&, float_batch* out) noexcept
            {
                out[0] = float_batch::load_aligned(row + pos);
            }
        };

        /// Widens row r's codes into `out` (plan layout, code values as float, padding 0).
        inline void widen_row(const quantized_tensor& w, const plan& p, std::size_t r, float* out) noexcept
        {
            std::fill(out, out + p.row_stride, 0.0f);
            for (std::size_t j = 0; j < p.cols; ++j) out[p.position(j)] = w.code_value(r, j);
        }

        /// What a tile needs besides the codes, hoisted out of the tile loops.
        struct tile_args
        {
            const float* scales;             ///< scales of orbit (0, 0)
            const std::int32_t* zero_points; ///< zero points of orbit (0, 0), or null
            std::size_t orbit_row_step;      ///< orbits between two rows of orbits (0 for per_tensor)
            std::size_t block_rows;          ///< rows per row of orbits (1 but for block layouts)
            std::size_t orbit_group_step;    ///< orbits between two groups of a row (0 for per_tensor)
            std::size_t groups;
            std::size_t group_advance;       ///< source offset between two groups (columns, or buffer positions)
            std::size_t group_stride;        ///< activation buffer floats between two groups
            std::size_t token_stride;        ///< activation buffer floats between two tokens
            std::size_t chunks;              ///< chunks of a full group
            std::size_t last_chunks;         ///< chunks of the last group
            std::size_t out_rows;            ///< output row stride (rows computed)
            std::size_t row0;                ///< first row computed (output row 0)
            std::size_t row_end;             ///< one past the last row of this thread's range

            /// The row of orbits that row r belongs to.
            std::size_t orbit_row(std::size_t r) const noexcept { return block_rows == 1 ? r : r / block_rows; }
        };

        /// The register tile: rows [r0, r0 + R) times tokens [t0, t0 + T). Per (row, token) the
        /// sequence of operations is the one in the file brief, whatever R and T are. K > 0 fixes
        /// the chunks per group at compile time (every group full); K == 0 reads it from `a`.
        template <std::size_t R, std::size_t T, std::size_t K, class Source>
        inline void tile(const Source& src, const tile_args& a, std::size_t r0, const float* xbuf, std::size_t t0, float* y) noexcept
        {
            constexpr std::size_t C = Source::per_chunk;
            typename Source::row_pointer row[R];
            const float* scale_row[R];
            const std::int32_t* zp_row[R];
            if (t0 == 0)
            {
                // Memory-bound at batch 1: start the next tile's row streams (the first lines of
                // each row) and its scales while this one computes. Only the first lines: a
                // whole-row prefetch spends a load slot per line, which costs more than it saves
                // when the matrix already sits in L2/L3.
                const std::size_t n0 = std::min(r0 + R, a.row_end);
                const std::size_t n1 = std::min(r0 + 2 * R, a.row_end);
                src.prefetch_rows(n0, n1);
                prefetch_range(a.scales + a.orbit_row(n0) * a.orbit_row_step, a.scales + a.orbit_row(n1) * a.orbit_row_step);
            }
#pragma GCC unroll 16
            for (std::size_t r = 0; r < R; ++r)
            {
                row[r] = src.row(r0 + r);
                scale_row[r] = a.scales + a.orbit_row(r0 + r) * a.orbit_row_step;
                if constexpr (Source::asymmetric) zp_row[r] = a.zero_points + (r0 + r) * a.orbit_row_step;
            }
            float_batch total[R][T];
#pragma GCC unroll 16
            for (std::size_t r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (std::size_t t = 0; t < T; ++t) total[r][t] = float_batch(0.0f);
            const float* xg = xbuf + t0 * a.token_stride;
            std::size_t off = 0;
            for (std::size_t g = 0; g < a.groups; ++g, off += a.group_advance, xg += a.group_stride)
            {
                int_batch zp[R];
                if constexpr (Source::asymmetric)
                {
#pragma GCC unroll 16
                    for (std::size_t r = 0; r < R; ++r) zp[r] = int_batch(zp_row[r][g * a.orbit_group_step]);
                }
                float_batch acc[R][T];
#pragma GCC unroll 16
                for (std::size_t r = 0; r < R; ++r)
#pragma GCC unroll 16
                    for (std::size_t t = 0; t < T; ++t) acc[r][t] = float_batch(0.0f);
                const std::size_t chunks = K != 0 ? K : (g + 1 == a.groups ? a.last_chunks : a.chunks);
#pragma GCC unroll 4
                for (std::size_t c = 0; c < chunks; ++c)
                {
                    float_batch cv[R][C];
#pragma GCC unroll 16
                    for (std::size_t r = 0; r < R; ++r) Source::load(row[r], off + c * C * lanes, zp[r], cv[r]);
#pragma GCC unroll 2
                    for (std::size_t i = 0; i < C; ++i)
                    {
#pragma GCC unroll 16
                        for (std::size_t t = 0; t < T; ++t)
                        {
                            const float_batch xv = float_batch::load_aligned(xg + t * a.token_stride + (c * C + i) * lanes);
#pragma GCC unroll 16
                            for (std::size_t r = 0; r < R; ++r) acc[r][t] = kernels::simd::detail::mul_add(cv[r][i], xv, acc[r][t]);
                        }
                    }
                }
#pragma GCC unroll 16
                for (std::size_t r = 0; r < R; ++r)
                {
                    const float_batch s(scale_row[r][g * a.orbit_group_step]);
#pragma GCC unroll 16
                    for (std::size_t t = 0; t < T; ++t) total[r][t] = kernels::simd::detail::mul_add(s, acc[r][t], total[r][t]);
                }
            }
#pragma GCC unroll 16
            for (std::size_t r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (std::size_t t = 0; t < T; ++t) y[(t0 + t) * a.out_rows + (r0 + r - a.row0)] = xsimd::hadd(total[r][t]);
        }

        /// Rows per tile and tokens per tile. More rows give gemv independent FMA chains; gemm
        /// trades rows for tokens so that one widened code vector feeds several FMAs.
        inline constexpr std::size_t gemv_rows = 8;
        inline constexpr std::size_t gemm_rows = 4;
        inline constexpr std::size_t gemm_tokens = 3;

        /// Covers rows [first, last) times tokens [0, tokens) with tiles of R rows x T tokens, then
        /// single rows and single tokens: calls f(rows tag, tokens tag, r0, t0), the tags being
        /// std::integral_constant of the tile's shape.
        template <std::size_t R, std::size_t T, class F>
        void for_tiles(std::size_t first, std::size_t last, std::size_t tokens, F&& f)
        {
            auto tokens_of = [&](auto rows_tag, std::size_t r0) {
                std::size_t t0 = 0;
                for (; t0 + T <= tokens; t0 += T) f(rows_tag, std::integral_constant<std::size_t, T>{}, r0, t0);
                for (; t0 < tokens; ++t0) f(rows_tag, std::integral_constant<std::size_t, 1>{}, r0, t0);
            };
            std::size_t r0 = first;
            for (; r0 + R <= last; r0 += R) tokens_of(std::integral_constant<std::size_t, R>{}, r0);
            for (; r0 < last; ++r0) tokens_of(std::integral_constant<std::size_t, 1>{}, r0);
        }

        /// Rows [first, last) times all tokens, from one code source.
        template <std::size_t R, std::size_t T, std::size_t K, class Source>
        void run_rows(const Source& src, const tile_args& a, std::size_t first, std::size_t last, const float* xbuf,
                      std::size_t tokens, float* y) noexcept
        {
            for_tiles<R, T>(first, last, tokens, [&](auto rows, auto toks, std::size_t r0, std::size_t t0) {
                tile<decltype(rows)::value, decltype(toks)::value, K>(src, a, r0, xbuf, t0, y);
            });
        }

        /// Picks the compile-time chunk count for the common group sizes.
        template <std::size_t R, std::size_t T, class Source>
        void run_rows_k(const Source& src, const tile_args& a, std::size_t first, std::size_t last, const float* xbuf,
                        std::size_t tokens, float* y) noexcept
        {
            if (a.chunks == a.last_chunks)
            {
                if (a.chunks == 1) return run_rows<R, T, 1>(src, a, first, last, xbuf, tokens, y);
                if (a.chunks == 2) return run_rows<R, T, 2>(src, a, first, last, xbuf, tokens, y);
                if (a.chunks == 4) return run_rows<R, T, 4>(src, a, first, last, xbuf, tokens, y);
            }
            run_rows<R, T, 0>(src, a, first, last, xbuf, tokens, y);
        }

        /// Widens rows through a scratch buffer (irregular layouts), one tile of rows at a time.
        template <std::size_t R, std::size_t T>
        void run_rows_widened(const quantized_tensor& w, const plan& p, const tile_args& a, std::size_t first, std::size_t last,
                              const float* xbuf, std::size_t tokens, float* y)
        {
            std::vector<float, xsimd::aligned_allocator<float>> scratch(R * p.row_stride);
            for (std::size_t r0 = first; r0 < last; r0 += R)
            {
                const std::size_t r1 = std::min(last, r0 + R);
                for (std::size_t r = r0; r < r1; ++r) widen_row(w, p, r, scratch.data() + (r - r0) * p.row_stride);
                const widened_codes src{scratch.data(), r0, p.row_stride};
                run_rows<R, T, 0>(src, a, r0, r1, xbuf, tokens, y);
            }
        }

        /// The float tiles on rows [row0, row0 + rows) for activations packed in xbuf
        /// (pack_activations): the same code for every activation type.
        template <std::size_t R, std::size_t T>
        void run(const quantized_tensor& w, const plan& p, std::size_t row0, std::size_t rows, const float* xbuf,
                 std::size_t tokens, float* y, unsigned threads)
        {
            tile_args a{};
            a.scales = w.scales.data();
            a.zero_points = w.zero_points.empty() ? nullptr : w.zero_points.data();
            a.orbit_row_step = w.layout.tensor_wide ? 0 : p.groups;
            a.block_rows = w.layout.block_rows;
            a.orbit_group_step = w.layout.tensor_wide ? 0 : 1;
            a.groups = p.groups;
            a.group_stride = p.group_stride;
            a.token_stride = p.row_stride;
            a.out_rows = rows;
            a.row0 = row0;
            const std::size_t C = p.interleaved ? 2 : 1;  // per_chunk of the source used below
            a.chunks = p.vectors(0) / C;
            a.last_chunks = p.vectors(p.groups - 1) / C;
            a.group_advance = p.direct ? p.group : p.group_stride;
            parallel_rows(rows, threads, [&](std::size_t first, std::size_t last) {
                first += row0;
                last += row0;
                tile_args ta = a;
                ta.row_end = last;
                if (!p.direct) return run_rows_widened<R, T>(w, p, ta, first, last, xbuf, tokens, y);
                const std::int8_t* codes = w.codes.data();
                if (p.float_codes)
                {
                    if (p.int4) return run_rows_k<R, T>(e2m1_codes{{codes, w.row_bytes()}}, ta, first, last, xbuf, tokens, y);
                    return run_rows_k<R, T>(e4m3_codes{{codes, p.cols}}, ta, first, last, xbuf, tokens, y);
                }
                if (p.int4)
                {
                    if (p.asymmetric) return run_rows_k<R, T>(int4_codes<true>{codes, w.row_bytes()}, ta, first, last, xbuf, tokens, y);
                    return run_rows_k<R, T>(int4_codes<false>{codes, w.row_bytes()}, ta, first, last, xbuf, tokens, y);
                }
                if (p.asymmetric) return run_rows_k<R, T>(int8_codes<true>{codes, p.cols}, ta, first, last, xbuf, tokens, y);
                return run_rows_k<R, T>(int8_codes<false>{codes, p.cols}, ta, first, last, xbuf, tokens, y);
            });
        }

        /// The integer tiles of kernels/int4_dot.hpp on rows [row0, row0 + rows), with the chunk
        /// operations Ops (the build's, or the plain loops they must equal bit for bit), for
        /// activations already quantized (xq): the same code for every activation type.
        /// @pre supports_int8_dot(w), xq holds `tokens` rows of w.cols.
        template <std::size_t R, std::size_t T, class Ops = kernels::int4_dot::ops>
        void run_int8_dot_tiles(const quantized_tensor& w, std::size_t row0, std::size_t rows, const kernels::int4_dot::activation_blocks& xq,
                                std::size_t tokens, float* y, unsigned threads)
        {
            namespace k = kernels::int4_dot;
            const orbit_layout& L = w.layout;
            k::tile_args a{};
            a.codes = w.codes.data();
            a.row_bytes = w.row_bytes();
            a.scales = w.scales.data();
            a.zero_points = w.zero_points.empty() ? nullptr : w.zero_points.data();
            a.orbit_row_step = L.tensor_wide ? 0 : L.groups_per_row;
            a.groups = L.tensor_wide ? 1 : L.groups_per_row;
            a.chunks_per_orbit = a.groups == 1 ? std::size_t(-1) : L.group / k::chunk_cols;
            a.full_chunks = a.row_bytes / k::chunk_bytes;
            a.tail_bytes = a.row_bytes % k::chunk_bytes;
            a.x = &xq;
            a.out_rows = rows;
            a.row0 = row0;
            const std::size_t G = k::orbits_per_chunk(L.group, a.groups);
            const bool asymmetric = a.zero_points != nullptr;
            parallel_rows(rows, threads, [&](std::size_t first, std::size_t last) {
                k::tile_args ta = a;
                ta.row_end = row0 + last;
                auto run_with = [&](auto orbits_tag, auto asym_tag) {
                    for_tiles<R, T>(row0 + first, row0 + last, tokens, [&](auto rs, auto ts, std::size_t r0, std::size_t t0) {
                        k::tile<Ops, decltype(orbits_tag)::value, decltype(asym_tag)::value, decltype(rs)::value, decltype(ts)::value>(
                            ta, r0, t0, y);
                    });
                };
                auto with_orbits = [&](auto asym_tag) {
                    if constexpr (k::chunk_cols >= 4 * k::block_cols)
                    {
                        if (G == 4) return run_with(std::integral_constant<std::size_t, 4>{}, asym_tag);
                    }
                    if constexpr (k::chunk_cols >= 2 * k::block_cols)
                    {
                        if (G == 2) return run_with(std::integral_constant<std::size_t, 2>{}, asym_tag);
                    }
                    run_with(std::integral_constant<std::size_t, 1>{}, asym_tag);
                };
                if (asymmetric) with_orbits(std::true_type{});
                else with_orbits(std::false_type{});
            });
        }

        /// gemv_arithmetic::int8_dot on rows [row0, row0 + rows): quantizes the activations, then
        /// runs run_int8_dot_tiles. @pre supports_int8_dot(w).
        template <std::size_t R, std::size_t T, class Ops = kernels::int4_dot::ops, class X>
        void run_int8_dot(const quantized_tensor& w, std::size_t row0, std::size_t rows, const X* x, std::size_t tokens, float* y,
                          unsigned threads)
        {
            kernels::int4_dot::activation_blocks xq(w.cols, tokens);
            for (std::size_t t = 0; t < tokens; ++t) xq.set(t, x + t * w.cols);
            run_int8_dot_tiles<R, T, Ops>(w, row0, rows, xq, tokens, y, threads);
        }

        template <class X>
        void multiply(const quantized_tensor& w, std::size_t row0, std::size_t rows, std::span<const X> x, std::size_t tokens,
                      std::span<float> y, unsigned threads, const char* who, gemv_arithmetic arithmetic)
        {
            const plan p = make_plan(w);
            const std::string name(who);
            if (tokens == 0 || tokens > gemm_max_tokens)
            {
                throw error(error_kind::invalid_argument, name + ": tokens must be in [1, 64], got " + std::to_string(tokens));
            }
            if (row0 > p.rows || rows > p.rows - row0)
            {
                throw error(error_kind::invalid_argument, name + ": rows [" + std::to_string(row0) + ", " + std::to_string(row0 + rows)
                                                              + ") outside the weight's " + std::to_string(p.rows) + " rows");
            }
            if (x.size() != tokens * p.cols)
            {
                throw error(error_kind::shape_mismatch, name + ": x has " + std::to_string(x.size()) + " elements, expected "
                                                            + std::to_string(tokens) + " x " + std::to_string(p.cols));
            }
            if (y.size() != tokens * rows)
            {
                throw error(error_kind::shape_mismatch, name + ": y has " + std::to_string(y.size()) + " elements, expected "
                                                            + std::to_string(tokens) + " x " + std::to_string(rows));
            }
            if (rows == 0) return;
            if (arithmetic == gemv_arithmetic::int8_dot && supports_int8_dot(w))
            {
                if (tokens == 1) return run_int8_dot<gemv_rows, 1>(w, row0, rows, x.data(), 1, y.data(), threads);
                return run_int8_dot<gemm_rows, gemm_tokens>(w, row0, rows, x.data(), tokens, y.data(), threads);
            }
            std::vector<float, xsimd::aligned_allocator<float>> xbuf(tokens * p.row_stride);
            for (std::size_t t = 0; t < tokens; ++t) pack_activations(p, x.data() + t * p.cols, xbuf.data() + t * p.row_stride);
            if (tokens == 1) run<gemv_rows, 1>(w, p, row0, rows, xbuf.data(), 1, y.data(), threads);
            else run<gemm_rows, gemm_tokens>(w, p, row0, rows, xbuf.data(), tokens, y.data(), threads);
        }
    }

    /// @brief Activation element types gemv and gemm accept.
    template <class X>
    concept activation_element = weight_element<X>;

    /// @brief The accumulation-error factor gamma_k of the bound in the file brief:
    ///        |y - y_ref| <= gemv_error_bound(w) * sum_j |w_deq[r, j] x[j]| for every output.
    inline double gemv_error_bound(const quantized_tensor& w) noexcept
    {
        const std::size_t L = detail::gemv::lanes;
        const std::size_t chain = (w.layout.group + L - 1) / L + w.layout.groups_per_row;
        return detail::gemv::gamma(detail::gemv::roundings_per_step * chain + L + 2);
    }

    /// @brief The accumulation-error factor of gemv_arithmetic::int8_dot (file brief):
    ///        gamma_k with k = f * (chunks + groups_per_row) + L + 3, chunks = ceil(row bytes / 4L).
    inline double gemv_int8_dot_error_bound(const quantized_tensor& w) noexcept
    {
        namespace k = kernels::int4_dot;
        const std::size_t chunks = (w.row_bytes() + k::chunk_bytes - 1) / k::chunk_bytes;
        return detail::gemv::gamma(detail::gemv::roundings_per_step * (chunks + w.layout.groups_per_row) + k::lanes + 3);
    }

    /// @brief y = W x, reading W's quantized codes directly.
    /// @tparam X activation type: float, bfloat16_t or float16_t.
    /// @param w quantized weight, rows x cols (int8 or int4, any granularity and scheme).
    /// @param x cols activations.
    /// @param y rows outputs (overwritten).
    /// @param threads rows are split over this many threads (0 = hardware concurrency); the
    ///        result is bit-identical for every thread count.
    /// @param arithmetic float32, or int8_dot for int4 weights where supports_int8_dot(w).
    /// @pre x and y do not overlap; with int8_dot, zero points in [-2^14, 2^14] (quantize writes
    ///      [-8, 7]): the int16 multiply-add of the zero-point correction and the exact
    ///      conversion of the int32 sums rely on it.
    /// @throws error (shape_mismatch) when x.size() != cols or y.size() != rows; error when the
    ///         tensor is inconsistent (codes, scales or zero points of the wrong size, bits not 4/8).
    template <activation_element X>
    void gemv(const quantized_tensor& w, std::span<const X> x, std::span<float> y, unsigned threads = 1,
              gemv_arithmetic arithmetic = gemv_arithmetic::float32)
    {
        detail::gemv::multiply(w, 0, w.rows, x, 1, y, threads, "gemv", arithmetic);
    }

    /// @brief Y = X W^T for a small batch: Y[t, r] = sum_j W[r, j] X[t, j].
    /// @tparam X activation type: float, bfloat16_t or float16_t.
    /// @param x row-major [tokens, cols].
    /// @param tokens number of tokens, in [1, gemm_max_tokens].
    /// @param y row-major [tokens, rows] (overwritten).
    /// @param threads as for gemv.
    /// Row t of Y is bit-identical to gemv(w, row t of X): both sum each (row, token) pair with
    /// the same sequence of operations.
    /// @throws error (invalid_argument) when tokens is outside [1, 64]; (shape_mismatch) when
    ///         x.size() != tokens * cols or y.size() != tokens * rows; as gemv otherwise.
    template <activation_element X>
    void gemm(const quantized_tensor& w, std::span<const X> x, std::size_t tokens, std::span<float> y, unsigned threads = 1,
              gemv_arithmetic arithmetic = gemv_arithmetic::float32)
    {
        detail::gemv::multiply(w, 0, w.rows, x, tokens, y, threads, "gemm", arithmetic);
    }

    /// @brief gemm on the row block [row0, row0 + rows) of w: Y[t, i] = sum_j W[row0 + i, j] X[t, j],
    ///        e.g. one expert's slice of a stacked [E * R, C] expert tensor. Bit-identical to the
    ///        corresponding rows of the whole-matrix gemm.
    /// @param y row-major [tokens, rows] (overwritten).
    /// @throws error (invalid_argument) when the block is not inside w's rows; as gemm otherwise.
    template <activation_element X>
    void gemm(const quantized_tensor& w, std::size_t row0, std::size_t rows, std::span<const X> x, std::size_t tokens,
              std::span<float> y, unsigned threads = 1, gemv_arithmetic arithmetic = gemv_arithmetic::float32)
    {
        detail::gemv::multiply(w, row0, rows, x, tokens, y, threads, "gemm", arithmetic);
    }
}
