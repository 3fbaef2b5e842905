/// @file int4_dot.hpp
/// @brief The integer kernel of gemv_arithmetic::int8_dot (see orbitq/gemv.hpp): int4 weight
///        codes times activations quantized to int8 per block of 32 columns, summed exactly in
///        int32 and scaled in float32.
///
/// Activations, per token: block b holds columns [32b, 32b + 32); its step is the smallest
/// float >= max|x| / 127 over the block, and qx_j is x_j / step rounded to the nearest integer
/// (an exact tie either way), so |qx_j| <= 127 and |x_j - qx_j * step| <= step / 2. A block of
/// zeros has step 0; a block holding NaN or infinity has step NaN, which makes every output NaN.
///
/// A chunk is the 4L code bytes (8L columns) one int32 batch spans, L the float lanes: lane i of
/// chunk c covers the bytes 4(cL + i) .. 4(cL + i) + 3, i.e. the 8 columns from 8(cL + i), the
/// even ones in the low nibbles and the odd ones in the high nibbles. Per row, token and chunk,
/// lane i holds
///   isum_i = sum over its 8 columns of (code - zero_point) * qx        (exact in int32)
/// computed as sum u * qx with u = nibble ^ 8 = code + 8 in [0, 15], the unsigned byte the byte
/// dot-product instructions take (AVX-512 VNNI vpdpbusd; vpmaddubsw + vpmaddwd on AVX-512BW and
/// AVX2; plain loops elsewhere), plus the correction -(8 + zero_point) * sum qx, precomputed per
/// lane for the symmetric 8 and added with one int16 multiply-add for a zero point. Then in
/// float32, chunk after chunk, where a chunk holds G = 8L / group whole orbits (groups of 32 or
/// 64 columns):  total_i = fma(float(isum_i) * step_i, scale_i, total_i), scale_i the weight
/// scale of lane i's orbit; where a chunk lies in one orbit (the row is one orbit, or the group
/// is a multiple of 8L columns): orbit_i = fma(float(isum_i), step_i, orbit_i) over the orbit's
/// chunks, then total_i = fma(scale, orbit_i, total_i) once per orbit. The output is the
/// horizontal sum of total.
#pragma once

#include "orbitq/core/float16.hpp"
#include "orbitq/kernels/isa.hpp"

#include <xsimd/xsimd.hpp>

#if defined(__AVX2__) || defined(__AVX512BW__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace orbitq::kernels::int4_dot
{
    using float_batch = simd::float_batch;
    using int_batch = simd::int_batch;
    inline constexpr std::size_t lanes = float_batch::size;
    /// Code bytes per chunk, and columns per chunk.
    inline constexpr std::size_t chunk_bytes = 4 * lanes;
    inline constexpr std::size_t chunk_cols = 8 * lanes;
    /// Columns per activation block.
    inline constexpr std::size_t block_cols = 32;
    static_assert(lanes == 4 || lanes == 8 || lanes == 16, "int4_dot: a float batch of 4, 8 or 16 lanes");

    template <class T>
    using aligned_vector = std::vector<T, xsimd::aligned_allocator<T, 64>>;

    /// @brief The step of an activation block: the smallest float >= amax / 127 (so that
    ///        |x| / step <= 127 for every x of the block), 0 for amax 0, NaN for a non-finite amax.
    inline float block_step(float amax) noexcept
    {
        if (!(amax <= std::numeric_limits<float>::max())) return std::numeric_limits<float>::quiet_NaN();
        const double exact = static_cast<double>(amax) / 127.0;
        float step = static_cast<float>(exact);
        if (static_cast<double>(step) < exact) step = std::nextafter(step, std::numeric_limits<float>::infinity());
        return step;
    }

    /// @brief Activations of a batch of tokens, quantized and laid out in chunks.
    struct activation_blocks
    {
        std::size_t cols = 0;
        std::size_t chunks = 0;       ///< chunks per token, the last one possibly partial
        std::size_t byte_stride = 0;  ///< chunks * chunk_bytes
        std::size_t lane_stride = 0;  ///< chunks * lanes
        aligned_vector<std::int8_t> even;      ///< byte k: qx[2k], the partner of low nibbles
        aligned_vector<std::int8_t> odd;       ///< byte k: qx[2k + 1], the partner of high nibbles
        aligned_vector<std::int32_t> corr;     ///< lane: -8 * sum qx over its 8 columns
        aligned_vector<std::int32_t> neg_sum;  ///< lane: -sum qx over its 8 columns in the low 16 bits, 0 above
        aligned_vector<float> step;            ///< lane: the step of its block

        activation_blocks(std::size_t cols_, std::size_t tokens)
            : cols(cols_),
              chunks((cols_ + chunk_cols - 1) / chunk_cols),
              byte_stride(chunks * chunk_bytes),
              lane_stride(chunks * lanes),
              even(tokens * byte_stride),
              odd(tokens * byte_stride),
              corr(tokens * lane_stride),
              neg_sum(tokens * lane_stride),
              step(tokens * lane_stride)
        {
        }

        /// Quantizes token t's activations x[0, cols), block by block.
        template <class X>
        void set(std::size_t t, const X* x) noexcept
        {
            std::int8_t* e = even.data() + t * byte_stride;
            std::int8_t* o = odd.data() + t * byte_stride;
            std::int32_t* c = corr.data() + t * lane_stride;
            std::int32_t* n = neg_sum.data() + t * lane_stride;
            float* st = step.data() + t * lane_stride;
            for (std::size_t b = 0; b < chunks * (chunk_cols / block_cols); ++b)
            {
                const std::size_t b0 = b * block_cols;
                const std::size_t len = b0 < cols ? std::min(block_cols, cols - b0) : 0;
                alignas(64) float v[block_cols];
                for (std::size_t j = 0; j < block_cols; ++j) v[j] = j < len ? to_float(x[b0 + j]) : 0.0f;
                float_batch mx(0.0f);
                auto bad = mx != mx;
                for (std::size_t j = 0; j < block_cols; j += lanes)
                {
                    const float_batch b = float_batch::load_aligned(v + j);
                    mx = xsimd::max(mx, xsimd::abs(b));
                    bad = bad || simd::detail::non_finite(b, simd::arch_type{});
                }
                const float amax = simd::detail::reduce_max(mx, simd::arch_type{});
                const float s = xsimd::any(bad) ? std::numeric_limits<float>::quiet_NaN() : block_step(amax);
                // x / s to the nearest integer: x times 1 / s in double is within 2^-44 of the
                // quotient, which is either a half-integer or at least 2^-26 away from one (x and
                // s are floats), so only exact ties may round either way; adding 1.5 * 2^52 rounds.
                if (!(s > 0.0f)) std::fill(v, v + block_cols, 0.0f);  // step 0 or NaN: the codes are 0
                const double inv = s > 0.0f ? 1.0 / static_cast<double>(s) : 0.0;
                alignas(64) std::int32_t q[block_cols];
                for (std::size_t j = 0; j < block_cols; ++j)
                {
                    constexpr double round = 6755399441055744.0;
                    q[j] = static_cast<std::int32_t>((static_cast<double>(v[j]) * inv + round) - round);
                }
                for (std::size_t k = 0; k < block_cols / 2; ++k)
                {
                    e[b * block_cols / 2 + k] = static_cast<std::int8_t>(q[2 * k]);
                    o[b * block_cols / 2 + k] = static_cast<std::int8_t>(q[2 * k + 1]);
                }
                for (std::size_t i = 0; i < block_cols / 8; ++i)
                {
                    std::int32_t sum = 0;
                    for (std::size_t k = 0; k < 8; ++k) sum += q[8 * i + k];
                    const std::size_t lane = b * (block_cols / 8) + i;
                    n[lane] = static_cast<std::int32_t>(static_cast<std::uint16_t>(-sum));  // |sum| <= 8 * 127
                    c[lane] = -8 * sum;
                    st[lane] = s;
                }
            }
        }
    };

    /// Plain-loop chunk operations: any arch, any lane count.
    struct generic_ops
    {
        struct codes
        {
            std::uint8_t lo[chunk_bytes];
            std::uint8_t hi[chunk_bytes];
        };
        struct ints
        {
            std::int32_t v[lanes];
        };

        static codes load_partial(const std::int8_t* p, std::size_t n) noexcept
        {
            codes c;
            for (std::size_t k = 0; k < chunk_bytes; ++k)
            {
                const std::uint8_t u = static_cast<std::uint8_t>((k < n ? static_cast<std::uint8_t>(p[k]) : 0u) ^ 0x88u);
                c.lo[k] = u & 0x0f;
                c.hi[k] = u >> 4;
            }
            return c;
        }
        static codes load(const std::int8_t* p) noexcept { return load_partial(p, chunk_bytes); }
        static ints start(const std::int32_t* corr) noexcept
        {
            ints a;
            std::memcpy(a.v, corr, sizeof a.v);
            return a;
        }
        static ints dot(ints a, const codes& c, const std::int8_t* e, const std::int8_t* o) noexcept
        {
            for (std::size_t i = 0; i < lanes; ++i)
            {
                for (std::size_t k = 4 * i; k < 4 * i + 4; ++k) a.v[i] += c.lo[k] * e[k] + c.hi[k] * o[k];
            }
            return a;
        }
        /// a + the int16 product of the low halves (vpmaddwd with zero high halves in neg_sum).
        static ints add_zero_point(ints a, const ints& zp, const std::int32_t* neg_sum) noexcept
        {
            for (std::size_t i = 0; i < lanes; ++i)
            {
                a.v[i] += static_cast<std::int16_t>(zp.v[i] & 0xffff) * static_cast<std::int16_t>(neg_sum[i] & 0xffff);
            }
            return a;
        }
        static float_batch to_float(const ints& a) noexcept { return xsimd::to_float(int_batch::load_unaligned(a.v)); }
        /// Lane i gets s[i / (L / G)], or 0 past the n valid orbits.
        template <std::size_t G, class T>
        static void spread(const T* s, std::size_t n, T* out) noexcept
        {
            for (std::size_t i = 0; i < lanes; ++i)
            {
                const std::size_t k = i / (lanes / G);
                out[i] = k < n ? s[k] : T(0);
            }
        }
        template <std::size_t G>
        static float_batch expand(const float* s, std::size_t n) noexcept
        {
            alignas(64) float v[lanes];
            spread<G>(s, n, v);
            return float_batch::load_aligned(v);
        }
        template <std::size_t G>
        static ints expand_zero_point(const std::int32_t* z, std::size_t n) noexcept
        {
            ints v;
            spread<G>(z, n, v.v);
            return v;
        }
    };

#if defined(__AVX512BW__) && defined(__AVX512VL__)
    /// AVX-512BW: a chunk is one 64-byte register; VNNI's vpdpbusd where the build has it.
    template <class FB>
    struct avx512_ops
    {
        struct codes
        {
            __m512i lo;
            __m512i hi;
        };
        using ints = __m512i;

        static codes unpack(__m512i b) noexcept
        {
            const __m512i nibble = _mm512_set1_epi8(0x0f);
            const __m512i u = _mm512_xor_si512(b, _mm512_set1_epi8(static_cast<char>(0x88)));
            return {_mm512_and_si512(u, nibble), _mm512_and_si512(_mm512_srli_epi16(u, 4), nibble)};
        }
        static codes load(const std::int8_t* p) noexcept { return unpack(_mm512_loadu_si512(p)); }
        static codes load_partial(const std::int8_t* p, std::size_t n) noexcept
        {
            return unpack(_mm512_maskz_loadu_epi8((__mmask64{1} << n) - 1, p));  // n < 64
        }
        static ints start(const std::int32_t* corr) noexcept { return _mm512_load_si512(corr); }
        static ints dot(ints a, const codes& c, const std::int8_t* e, const std::int8_t* o) noexcept
        {
            const __m512i xe = _mm512_load_si512(e);
            const __m512i xo = _mm512_load_si512(o);
#if defined(__AVX512VNNI__)
            return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a, c.lo, xe), c.hi, xo);
#else
            // |u * qx| pairs <= 2 * 15 * 127 per maddubs lane: no int16 saturation
            const __m512i pairs = _mm512_add_epi16(_mm512_maddubs_epi16(c.lo, xe), _mm512_maddubs_epi16(c.hi, xo));
            return _mm512_add_epi32(a, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
#endif
        }
        static ints add_zero_point(ints a, ints zp, const std::int32_t* neg_sum) noexcept
        {
#if defined(__AVX512VNNI__)
            return _mm512_dpwssd_epi32(a, zp, _mm512_load_si512(neg_sum));
#else
            return _mm512_add_epi32(a, _mm512_madd_epi16(zp, _mm512_load_si512(neg_sum)));
#endif
        }
        static FB to_float(ints a) noexcept { return FB(_mm512_cvtepi32_ps(a)); }
        template <std::size_t G>
        static __m512i spread_index() noexcept
        {
            if constexpr (G == 2) return _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
            else return _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        }
        template <std::size_t G>
        static FB expand(const float* s, std::size_t n) noexcept
        {
            if constexpr (G == 1) return FB(_mm512_set1_ps(*s));
            else
            {
                const __m128 v = _mm_maskz_loadu_ps(static_cast<__mmask8>((1u << std::min(n, G)) - 1), s);
                return FB(_mm512_permutexvar_ps(spread_index<G>(), _mm512_zextps128_ps512(v)));
            }
        }
        template <std::size_t G>
        static ints expand_zero_point(const std::int32_t* z, std::size_t n) noexcept
        {
            if constexpr (G == 1) return _mm512_set1_epi32(*z);
            else
            {
                const __m128i v = _mm_maskz_loadu_epi32(static_cast<__mmask8>((1u << std::min(n, G)) - 1), z);
                return _mm512_permutexvar_epi32(spread_index<G>(), _mm512_zextsi128_si512(v));
            }
        }
    };
#endif

#if defined(__AVX2__)
    /// AVX2: a chunk is one 32-byte register, summed with vpmaddubsw + vpmaddwd.
    template <class FB>
    struct avx2_ops
    {
        struct codes
        {
            __m256i lo;
            __m256i hi;
        };
        using ints = __m256i;

        static codes unpack(__m256i b) noexcept
        {
            const __m256i nibble = _mm256_set1_epi8(0x0f);
            const __m256i u = _mm256_xor_si256(b, _mm256_set1_epi8(static_cast<char>(0x88)));
            return {_mm256_and_si256(u, nibble), _mm256_and_si256(_mm256_srli_epi16(u, 4), nibble)};
        }
        static codes load(const std::int8_t* p) noexcept { return unpack(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
        static codes load_partial(const std::int8_t* p, std::size_t n) noexcept
        {
            alignas(32) std::int8_t buf[32] = {};
            std::memcpy(buf, p, n);
            return unpack(_mm256_load_si256(reinterpret_cast<const __m256i*>(buf)));
        }
        static ints start(const std::int32_t* corr) noexcept { return _mm256_load_si256(reinterpret_cast<const __m256i*>(corr)); }
        static ints dot(ints a, const codes& c, const std::int8_t* e, const std::int8_t* o) noexcept
        {
            const __m256i xe = _mm256_load_si256(reinterpret_cast<const __m256i*>(e));
            const __m256i xo = _mm256_load_si256(reinterpret_cast<const __m256i*>(o));
            const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(c.lo, xe), _mm256_maddubs_epi16(c.hi, xo));
            return _mm256_add_epi32(a, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
        }
        static ints add_zero_point(ints a, ints zp, const std::int32_t* neg_sum) noexcept
        {
            return _mm256_add_epi32(a, _mm256_madd_epi16(zp, _mm256_load_si256(reinterpret_cast<const __m256i*>(neg_sum))));
        }
        static FB to_float(ints a) noexcept { return FB(_mm256_cvtepi32_ps(a)); }
        template <std::size_t G>
        static FB expand(const float* s, std::size_t n) noexcept
        {
            if constexpr (G == 1) return FB(_mm256_set1_ps(*s));
            else return FB(_mm256_setr_m128(_mm_set1_ps(s[0]), _mm_set1_ps(n > 1 ? s[1] : 0.0f)));
        }
        template <std::size_t G>
        static ints expand_zero_point(const std::int32_t* z, std::size_t n) noexcept
        {
            if constexpr (G == 1) return _mm256_set1_epi32(*z);
            else return _mm256_setr_m128i(_mm_set1_epi32(z[0]), _mm_set1_epi32(n > 1 ? z[1] : 0));
        }
    };
#endif

    /// The chunk operations of the build's float batch.
    template <std::size_t L>
    struct ops_for
    {
        using type = generic_ops;
    };
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    template <>
    struct ops_for<16>
    {
        using type = avx512_ops<float_batch>;
    };
#endif
#if defined(__AVX2__)
    template <>
    struct ops_for<8>
    {
        using type = avx2_ops<float_batch>;
    };
#endif
    using ops = ops_for<lanes>::type;

    /// What a tile needs besides the activations.
    struct tile_args
    {
        const std::int8_t* codes;          ///< row 0
        std::size_t row_bytes;
        const float* scales;               ///< orbit (0, 0)
        const std::int32_t* zero_points;   ///< orbit (0, 0), or null
        std::size_t orbit_row_step;        ///< orbits between two rows (0 for per_tensor)
        std::size_t groups;                ///< orbits per row
        std::size_t chunks_per_orbit;      ///< G == 1: chunks in one orbit (huge for one orbit per row)
        std::size_t full_chunks;           ///< whole chunks per row
        std::size_t tail_bytes;            ///< bytes of the partial last chunk (0 if none)
        const activation_blocks* x;
        std::size_t out_rows;              ///< output row stride
        std::size_t row0;                  ///< output row 0
        std::size_t row_end;               ///< one past the last row of this thread's range
    };

    /// Rows [r0, r0 + R) times tokens [t0, t0 + T): the sequence of operations of the file brief
    /// for every (row, token), whatever R and T are. G: orbits per chunk.
    template <class Ops, std::size_t G, bool Asymmetric, std::size_t R, std::size_t T>
    inline void tile(const tile_args& a, std::size_t r0, std::size_t t0, float* y) noexcept
    {
        const activation_blocks& x = *a.x;
        // The first token tile of a row tile asks, into L2, for the code line of each chunk it
        // reads two row tiles ahead (and scale and zero-point lines every fourth chunk): one
        // line per line consumed, so the weights stream from memory while the integer work
        // stays light.
        constexpr std::size_t tiles_ahead = 2;
        const bool prefetch = t0 == 0 && r0 + tiles_ahead * R < a.row_end;
        const std::size_t ahead = tiles_ahead * R * a.row_bytes;
        const std::size_t scales_ahead = tiles_ahead * R * a.orbit_row_step;
        const std::int8_t* row[R];
        const float* scale_row[R];
        const std::int32_t* zp_row[R];
#pragma GCC unroll 16
        for (std::size_t r = 0; r < R; ++r)
        {
            row[r] = a.codes + (r0 + r) * a.row_bytes;
            scale_row[r] = a.scales + (r0 + r) * a.orbit_row_step;
            if constexpr (Asymmetric) zp_row[r] = a.zero_points + (r0 + r) * a.orbit_row_step;
        }
        float_batch total[R][T];
        float_batch orbit_sum[R][T];  // G == 1: sum of float(isum) * step over the orbit's chunks so far
#pragma GCC unroll 16
        for (std::size_t r = 0; r < R; ++r)
#pragma GCC unroll 16
            for (std::size_t t = 0; t < T; ++t) total[r][t] = orbit_sum[r][t] = float_batch(0.0f);

        const std::size_t chunks = a.full_chunks + (a.tail_bytes != 0 ? 1 : 0);
        const std::int8_t* even[T];
        const std::int8_t* odd[T];
        const std::int32_t* corr[T];
        const std::int32_t* neg_sum[T];
        const float* step[T];
#pragma GCC unroll 16
        for (std::size_t t = 0; t < T; ++t)
        {
            even[t] = x.even.data() + (t0 + t) * x.byte_stride;
            odd[t] = x.odd.data() + (t0 + t) * x.byte_stride;
            corr[t] = x.corr.data() + (t0 + t) * x.lane_stride;
            neg_sum[t] = x.neg_sum.data() + (t0 + t) * x.lane_stride;
            step[t] = x.step.data() + (t0 + t) * x.lane_stride;
        }
        auto chunk = [&](std::size_t c, auto load, auto partial) {
            const std::size_t first = G == 1 ? c / a.chunks_per_orbit : c * G;
            const std::size_t valid = decltype(partial)::value ? a.groups - first : G;  // a whole chunk holds G orbits
#pragma GCC unroll 16
            for (std::size_t r = 0; r < R; ++r)
            {
                if (prefetch)
                {
                    __builtin_prefetch(row[r] + ahead + c * chunk_bytes, 0, 2);
                    if (c % 4 == 0)
                    {
                        __builtin_prefetch(scale_row[r] + scales_ahead + first, 0, 2);
                        if constexpr (Asymmetric) __builtin_prefetch(zp_row[r] + scales_ahead + first, 0, 2);
                    }
                }
                const typename Ops::codes w = load(row[r] + c * chunk_bytes);
                typename Ops::ints zp{};
                if constexpr (Asymmetric) zp = Ops::template expand_zero_point<G>(zp_row[r] + first, valid);
                float_batch s(0.0f);
                if constexpr (G != 1) s = Ops::template expand<G>(scale_row[r] + first, valid);
#pragma GCC unroll 16
                for (std::size_t t = 0; t < T; ++t)
                {
                    typename Ops::ints acc = Ops::start(corr[t] + c * lanes);
                    acc = Ops::dot(acc, w, even[t] + c * chunk_bytes, odd[t] + c * chunk_bytes);
                    if constexpr (Asymmetric) acc = Ops::add_zero_point(acc, zp, neg_sum[t] + c * lanes);
                    const float_batch st = float_batch::load_aligned(step[t] + c * lanes);
                    if constexpr (G == 1) orbit_sum[r][t] = simd::detail::mul_add(Ops::to_float(acc), st, orbit_sum[r][t]);
                    else total[r][t] = simd::detail::mul_add(Ops::to_float(acc) * st, s, total[r][t]);
                }
            }
            if constexpr (G == 1)
            {
                if ((c + 1) % a.chunks_per_orbit != 0 && c + 1 != chunks) return;
#pragma GCC unroll 16
                for (std::size_t r = 0; r < R; ++r)
                {
                    const float_batch s = Ops::template expand<1>(scale_row[r] + first, 1);
#pragma GCC unroll 16
                    for (std::size_t t = 0; t < T; ++t)
                    {
                        total[r][t] = simd::detail::mul_add(s, orbit_sum[r][t], total[r][t]);
                        orbit_sum[r][t] = float_batch(0.0f);
                    }
                }
            }
        };
        for (std::size_t c = 0; c < a.full_chunks; ++c) chunk(c, [](const std::int8_t* p) { return Ops::load(p); }, std::false_type{});
        if (a.tail_bytes != 0)
        {
            chunk(a.full_chunks, [&](const std::int8_t* p) { return Ops::load_partial(p, a.tail_bytes); }, std::true_type{});
        }
#pragma GCC unroll 16
        for (std::size_t r = 0; r < R; ++r)
#pragma GCC unroll 16
            for (std::size_t t = 0; t < T; ++t) y[(t0 + t) * a.out_rows + (r0 + r - a.row0)] = xsimd::hadd(total[r][t]);
    }

    /// Orbits per chunk for a row of `groups` orbits of `group` columns: 1 where a chunk lies in
    /// one orbit, chunk_cols / group for groups of 32 or 64 columns, 0 where neither holds.
    inline std::size_t orbits_per_chunk(std::size_t group, std::size_t groups) noexcept
    {
        if (groups == 1 || group % chunk_cols == 0) return 1;
        if (group % block_cols == 0 && chunk_cols % group == 0) return chunk_cols / group;
        return 0;
    }
}
