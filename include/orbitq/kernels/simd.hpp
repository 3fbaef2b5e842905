/// @file simd.hpp
/// @brief xsimd kernels for the statistics and quantize passes, compiled for the instruction set
///        of the build (xsimd::default_arch: AVX-512 with -march=native on an AVX-512 machine,
///        SSE2 on a baseline x86-64 build). Bit-identical to kernels::reference, which
///        tests/test_kernels.cpp, test_kernel_tiles.cpp and test_kernel_passes.cpp check on
///        every length class (tails included) in both builds.
///
/// Every kernel works on batches of `width` float32 lanes:
/// - 16-bit inputs (bfloat16, binary16) are widened in registers as they are loaded (bf16: a
///   zero-extend and a shift, or two unpacks per 32 or 64 bytes where the encode takes pairs of
///   batches, see load_pair; f16: the F16C conversion), never through a float32 copy. Their
///   statistics need no widening at all: max |x| on the 16-bit magnitudes, min and max on
///   ordered int16 keys of the raw bits (b ^ ((b >> 15) & 0x7fff)), widened once per result.
/// - Codes are narrowed from int32 lanes to int8 in registers (AVX-512 vpmovsdb, AVX2/SSE2
///   packs); every narrow saturates, which serves as the int8 clamp where the scaled values are
///   known to be bounded (see detail::needs_clamp and quantize_span's Bounded).
/// - quantize_groups fuses the statistics and the encode pass of every group of a row: a group
///   of up to 8 batches is loaded once, reduced, and encoded from registers.
/// - quantize_groups_with_params takes groups of 1, 2, 4, 8 or 16 batches `width` at a time (a
///   tile: groups of 32 are 2 batches with AVX-512, 4 with AVX2; groups of 128 are 8 and 16):
///   their statistics go through one transposing reduction, their parameters are computed in
///   vectors, and int4 codes are packed from L1 tile by tile.
/// - int8 codes of passes larger than the caches can be written with streaming stores (the
///   `Stream` parameters; see has_streaming_stores and stream_codes).
///
/// The instruction-set specific pieces are small helpers (load, narrow, reduce, the tile
/// reduction tree), each with a generic fallback written with xsimd batches and scalar code, so
/// any arch xsimd supports compiles and stays exact; the per-arch overloads are chosen by C++20
/// constraints on the arch.
#pragma once

#include "orbitq/kernels/reference.hpp"
#include "orbitq/policy/scheme.hpp"

#include <xsimd/xsimd.hpp>

#if XSIMD_WITH_SSE2
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace orbitq::kernels::simd
{
    using arch_type = xsimd::default_arch;
    using float_batch = xsimd::batch<float, arch_type>;
    using int_batch = xsimd::batch<std::int32_t, arch_type>;

    /// @brief float32 lanes per batch.
    inline constexpr std::size_t width = float_batch::size;

    /// @brief Name of the instruction set these kernels were compiled for.
    inline const char* arch_name() noexcept { return arch_type::name(); }

    /// @brief Whether this build writes codes with streaming (non-temporal) stores when asked
    ///        (the `Stream` parameter of quantize_span and quantize_groups_with_params): full
    ///        64-byte lines of codes go to memory without first being read for ownership, so a
    ///        pass from memory moves 5 bytes per f32 value instead of 6 (read 4, write 1, no
    ///        read of the code line), and 3 per 16-bit value instead of 4. AVX-512BW stores a
    ///        line at once, AVX2 a line as two aligned halves. Where false, Stream changes
    ///        nothing.
#if XSIMD_WITH_AVX2
    inline constexpr bool has_streaming_stores = std::derived_from<arch_type, xsimd::avx512bw> || std::derived_from<arch_type, xsimd::avx2>;
#else
    inline constexpr bool has_streaming_stores = false;
#endif

    /// @brief Orders the streaming stores made so far by this thread before its later stores
    ///        (sfence): a pass that streamed codes calls it before it signals completion.
    inline void store_fence() noexcept
    {
#if XSIMD_WITH_AVX2
        if constexpr (has_streaming_stores) _mm_sfence();
#endif
    }

    /// @brief Whether a pass that reads `in_bytes` and writes `code_bytes` should stream its
    ///        codes: when the two together exceed what the caches are likely to keep (16 MiB).
    ///        Smaller passes keep their codes in cache for whoever reads them next; measured
    ///        with bench/compare on the 2-core VM (per_channel int8, 1 thread): streaming was
    ///        14-18 % faster at 34 MB of f32 input, 4 % at 17 MB of bf16, and mixed (-6 to
    ///        +5 %) for inputs of 3-12 MB that the L3 kept between runs.
    inline bool stream_codes(std::size_t in_bytes, std::size_t code_bytes) noexcept
    {
        return has_streaming_stores && in_bytes + code_bytes >= (std::size_t(16) << 20);
    }

    namespace detail
    {
        template <class A>
        using fbatch = xsimd::batch<float, A>;
        template <class A>
        using ibatch = xsimd::batch<std::int32_t, A>;

        // ------------------------------------------------------------------ load as float32
        // Generic fallbacks: exact scalar widening through a batch-sized buffer.

        template <class A>
        inline fbatch<A> load(const float* p, A) noexcept
        {
            return fbatch<A>::load_unaligned(p);
        }

        /// v, held in a register from here on. GCC folds a load into each instruction that uses
        /// it (a memory operand): a batch reduced three ways (min, max, a NaN compare) is then
        /// read three times from L1, and the load ports bound a loop that memory should bound
        /// (min_max_span over f32 rows in L2: 10 % of the quantize pass). An empty asm that
        /// takes the value in a register stops the folding; it emits no instruction.
        template <class V>
        inline V in_register(V v) noexcept
        {
#if defined(__GNUC__) || defined(__clang__)
            auto r = v.data;
            asm("" : "+v"(r));
            return V(r);
#else
            return v;
#endif
        }

        /// The bits of T's largest finite magnitude (FLT_MAX, its bf16 0x7f7f, f16's 65504):
        /// magnitude bits above it are an infinity or a NaN. With the sign bit
        /// (most_negative_finite_bits), the bits of the most negative finite value; as unsigned,
        /// only negative infinity and NaNs with the sign set lie above them.
        template <weight_element T>
        inline constexpr std::uint32_t largest_finite_bits = std::same_as<T, float>        ? 0x7f7fffffu
                                                             : std::same_as<T, bfloat16_t> ? 0x7f7fu
                                                                                           : 0x7bffu;
        template <weight_element T>
        inline constexpr std::uint32_t most_negative_finite_bits = largest_finite_bits<T> | (std::uint32_t(1) << (8 * sizeof(T) - 1));

        /// Calls f on x[first], ..., x[n - 1]: the scalar tail of a reduction after its vector
        /// loop. Walked with a pointer: GCC 12, given an index loop `for (; i < n; ++i)` after
        /// vector loops over a length it knows at compile time, warns that the loop overflows
        /// (-Waggressive-loop-optimizations, where it cannot overflow). @pre first <= n.
        template <class T, class F>
        [[gnu::always_inline]] inline void for_each_tail(const T* x, std::size_t first, std::size_t n, F&& f)
        {
            for (const T* p = x + first; p != x + n; ++p) f(*p);
        }

        template <class A, class T>
            requires std::same_as<T, bfloat16_t> || std::same_as<T, float16_t>
        inline fbatch<A> load(const T* p, A) noexcept
        {
            alignas(64) float buf[fbatch<A>::size];
            for (std::size_t k = 0; k < fbatch<A>::size; ++k) buf[k] = to_float(p[k]);
            return fbatch<A>::load_aligned(buf);
        }

#if XSIMD_WITH_AVX512F
        template <class A>
            requires std::derived_from<A, xsimd::avx512f>
        inline fbatch<A> load(const bfloat16_t* p, A) noexcept
        {
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
            return fbatch<A>(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        }

        template <class A>
            requires std::derived_from<A, xsimd::avx512f>
        inline fbatch<A> load(const float16_t* p, A) noexcept
        {
            return fbatch<A>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
        }
#endif
#if XSIMD_WITH_AVX2
        template <class A>
            requires std::derived_from<A, xsimd::avx2>
        inline fbatch<A> load(const bfloat16_t* p, A) noexcept
        {
            const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
            return fbatch<A>(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
        }
#if defined(__F16C__)
        template <class A>
            requires std::derived_from<A, xsimd::avx2>
        inline fbatch<A> load(const float16_t* p, A) noexcept
        {
            return fbatch<A>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
        }
#endif
#endif
#if XSIMD_WITH_SSE2
        template <class A>
            requires std::derived_from<A, xsimd::sse2>
        inline fbatch<A> load(const bfloat16_t* p, A) noexcept
        {
            // interleaving zeros below the 16 bits puts each bf16 in the top half of a float32
            const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
            return fbatch<A>(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
        }
#if defined(__F16C__)
        template <class A>
            requires std::derived_from<A, xsimd::sse2>
        inline fbatch<A> load(const float16_t* p, A) noexcept
        {
            return fbatch<A>(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
        }
#endif
#endif

        // ------------------------------------------------------------------ pairs of batches
        // 2 width consecutive values as two batches. In order, except bf16 on AVX2 and AVX-512BW,
        // which widen a whole 32- or 64-byte load with two unpacks (no shifts): each 128-bit
        // chunk k of the first batch holds values 8k..8k+3, of the second 8k+4..8k+7. That is the
        // order the saturating packs interleave, so store_int8_x4<true> puts the codes back in
        // order.

        /// Whether load_pair gives T's values in pack order (see above): bf16 on AVX2 and on
        /// AVX-512BW, the two load_pair specializations below.
        template <class T, class A>
        inline constexpr bool pack_ordered_pairs =
            std::same_as<T, bfloat16_t> && (std::derived_from<A, xsimd::avx2> || std::derived_from<A, xsimd::avx512bw>);

        template <class A, class T>
        inline std::array<fbatch<A>, 2> load_pair(const T* p, A) noexcept
        {
            return {load(p, A{}), load(p + fbatch<A>::size, A{})};
        }

#if XSIMD_WITH_AVX2
        template <class A>
            requires std::derived_from<A, xsimd::avx2>
        inline std::array<fbatch<A>, 2> load_pair(const bfloat16_t* p, A) noexcept
        {
            // as AVX-512BW below, on two 128-bit chunks
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
            const __m256i zero = _mm256_setzero_si256();
            return {fbatch<A>(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, h))),
                    fbatch<A>(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, h)))};
        }
#endif
#if XSIMD_WITH_AVX512BW
        template <class A>
            requires std::derived_from<A, xsimd::avx512bw>
        inline std::array<fbatch<A>, 2> load_pair(const bfloat16_t* p, A) noexcept
        {
            // zeros interleaved below each bf16 make it the top half of a float32
            const __m512i h = _mm512_loadu_si512(p);
            const __m512i zero = _mm512_setzero_si512();
            return {fbatch<A>(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, h))),
                    fbatch<A>(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, h)))};
        }
#endif

        // ------------------------------------------------------------------ narrow int32 -> int8
        // Every narrow saturates: a lane below -128 stores -128 and one above 127 stores 127, so
        // for the int8 range [-128, 127] the narrow is the clamp (see needs_clamp).

        template <class A>
        inline void store_int8(const ibatch<A>& v, std::int8_t* out, A) noexcept
        {
            alignas(64) std::int32_t buf[ibatch<A>::size];
            v.store_aligned(buf);
            for (std::size_t k = 0; k < ibatch<A>::size; ++k) out[k] = static_cast<std::int8_t>(std::clamp(buf[k], -128, 127));
        }

#if XSIMD_WITH_AVX512F
        template <class A>
            requires std::derived_from<A, xsimd::avx512f>
        inline void store_int8(const ibatch<A>& v, std::int8_t* out, A) noexcept
        {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtsepi32_epi8(v));
        }
#endif
#if XSIMD_WITH_AVX2
        template <class A>
            requires std::derived_from<A, xsimd::avx2>
        inline void store_int8(const ibatch<A>& v, std::int8_t* out, A) noexcept
        {
            const __m256i w16 = _mm256_packs_epi32(v, v);      // per 128-bit lane: a0..a3 a0..a3 | a4..a7 a4..a7
            const __m256i w8 = _mm256_packs_epi16(w16, w16);   // bytes a0..a3 repeated | a4..a7 repeated
            const __m128i lo = _mm256_castsi256_si128(w8);
            const __m128i hi = _mm256_extracti128_si256(w8, 1);
            _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi32(lo, hi));
        }
#endif
#if XSIMD_WITH_SSE2
        template <class A>
            requires std::derived_from<A, xsimd::sse2>
        inline void store_int8(const ibatch<A>& v, std::int8_t* out, A) noexcept
        {
            const __m128i w16 = _mm_packs_epi32(v, v);
            const std::int32_t bytes = _mm_cvtsi128_si32(_mm_packs_epi16(w16, w16));
            std::memcpy(out, &bytes, sizeof(bytes));
        }
#endif

        /// Zero points in the layout store_int8_x4 adds them: each int32 lane holds its zero point
        /// (within int16) in both 16-bit words. V: an int32 batch.
        template <class V>
        inline V zero_point_words(const V& zp) noexcept
        {
            return (zp & V(0xffff)) | (zp << 16);
        }

        /// Four batches at once, saturating as store_int8: the codes of two pairs (a, b) and
        /// (c, d) as load_pair gave them (PackOrdered: in pack order), stored in value order.
        /// AddZp: the zero point in zp_ab (as zero_point_words) is added to a and b, zp_cd to c
        /// and d, before the narrow saturates.
        /// @pre AddZp: every |code| + |its zero point| <= 32767 (exact in 16 bits).
        template <bool PackOrdered = false, bool AddZp = false, bool Stream = false, class A>
        inline void store_int8_x4(const ibatch<A>& a, const ibatch<A>& b, const ibatch<A>& c, const ibatch<A>& d, std::int8_t* out, A,
                                  const ibatch<A>& zp_ab = ibatch<A>(0), const ibatch<A>& zp_cd = ibatch<A>(0)) noexcept
        {
            static_assert(!PackOrdered, "pack order exists only where the packs do");
            constexpr std::size_t w = ibatch<A>::size;
            const auto add = [](const ibatch<A>& v, const ibatch<A>& words) {
                if constexpr (AddZp) return ibatch<A>(v + ((words << 16) >> 16));  // the low word, sign-extended
                else return v;
            };
            store_int8(add(a, zp_ab), out, A{});
            store_int8(add(b, zp_ab), out + w, A{});
            store_int8(add(c, zp_cd), out + 2 * w, A{});
            store_int8(add(d, zp_cd), out + 3 * w, A{});
        }

#if XSIMD_WITH_AVX512BW
        template <bool PackOrdered = false, bool AddZp = false, bool Stream = false, class A>
            requires std::derived_from<A, xsimd::avx512bw>
        inline void store_int8_x4(const ibatch<A>& a, const ibatch<A>& b, const ibatch<A>& c, const ibatch<A>& d, std::int8_t* out, A,
                                  const ibatch<A>& zp_ab = ibatch<A>(0), const ibatch<A>& zp_cd = ibatch<A>(0)) noexcept
        {
            // Saturating packs work per 128-bit lane k. In order: words [a_k, b_k] and [c_k, d_k],
            // bytes [a_k, b_k, c_k, d_k], one dword permutation puts them in order. Pack order:
            // words [a_k, b_k] are values 8k..8k+7 of the first pair in order, so the bytes hold
            // qwords (pair 1 part k, pair 2 part k), one qword permutation. Zero points are added
            // to the words: one add per pair instead of one per batch.
            __m512i ab = _mm512_packs_epi32(a, b);
            __m512i cd = _mm512_packs_epi32(c, d);
            if constexpr (AddZp)
            {
                ab = _mm512_add_epi16(ab, zp_ab);
                cd = _mm512_add_epi16(cd, zp_cd);
            }
            const __m512i abcd = _mm512_packs_epi16(ab, cd);
            __m512i v;
            if constexpr (PackOrdered)
            {
                v = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), abcd);
            }
            else
            {
                const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                v = _mm512_permutexvar_epi32(order, abcd);
            }
            if constexpr (Stream) _mm512_stream_si512(reinterpret_cast<__m512i*>(out), v);
            else _mm512_storeu_si512(out, v);
        }
#endif
#if XSIMD_WITH_AVX2
        template <bool PackOrdered = false, bool AddZp = false, bool Stream = false, class A>
            requires std::derived_from<A, xsimd::avx2>
        inline void store_int8_x4(const ibatch<A>& a, const ibatch<A>& b, const ibatch<A>& c, const ibatch<A>& d, std::int8_t* out, A,
                                  const ibatch<A>& zp_ab = ibatch<A>(0), const ibatch<A>& zp_cd = ibatch<A>(0)) noexcept
        {
            // As AVX-512BW on two 128-bit lanes: bytes [a_k, b_k, c_k, d_k] in lane k, one dword
            // permutation puts them in order; in pack order, words [a_k, b_k] are values 8k..8k+7
            // of the first pair, so the bytes hold qwords (pair 1 part k, pair 2 part k), one
            // qword permutation.
            // @pre Stream: out is 32-byte aligned (half a line; its callers stream whole lines).
            __m256i ab = _mm256_packs_epi32(a, b);
            __m256i cd = _mm256_packs_epi32(c, d);
            if constexpr (AddZp)
            {
                ab = _mm256_add_epi16(ab, zp_ab);
                cd = _mm256_add_epi16(cd, zp_cd);
            }
            const __m256i abcd = _mm256_packs_epi16(ab, cd);
            __m256i v;
            if constexpr (PackOrdered) v = _mm256_permute4x64_epi64(abcd, 0xd8);  // qwords 0, 2, 1, 3
            else v = _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            if constexpr (Stream) _mm256_stream_si256(reinterpret_cast<__m256i*>(out), v);
            else _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), v);
        }
#endif

        // ------------------------------------------------------------------ horizontal min / max
        // Lane order does not matter: min and max are exact, and a NaN lane is reported by the
        // callers' own NaN mask (the statistic of an orbit holding a NaN is never used).

        template <class A>
        inline min_max reduce(const fbatch<A>& mn, const fbatch<A>& mx, A) noexcept
        {
            alignas(64) float lo[fbatch<A>::size];
            alignas(64) float hi[fbatch<A>::size];
            mn.store_aligned(lo);
            mx.store_aligned(hi);
            min_max s = min_max::identity();
            for (std::size_t k = 0; k < fbatch<A>::size; ++k) s = combine(s, min_max{lo[k], hi[k]});
            return s;
        }

#if XSIMD_WITH_AVX512F
        template <class A>
            requires std::derived_from<A, xsimd::avx512f>
        inline min_max reduce(const fbatch<A>& mn, const fbatch<A>& mx, A) noexcept
        {
            // halving shuffles (GCC 12's _mm512_reduce_min_ps warns inside its own header)
            __m512 lo = mn;
            __m512 hi = mx;
            lo = _mm512_min_ps(lo, _mm512_shuffle_f32x4(lo, lo, 0x4e));  // swap 256-bit halves
            hi = _mm512_max_ps(hi, _mm512_shuffle_f32x4(hi, hi, 0x4e));
            lo = _mm512_min_ps(lo, _mm512_shuffle_f32x4(lo, lo, 0xb1));  // swap 128-bit quarters
            hi = _mm512_max_ps(hi, _mm512_shuffle_f32x4(hi, hi, 0xb1));
            lo = _mm512_min_ps(lo, _mm512_permute_ps(lo, 0x4e));         // swap 64-bit pairs
            hi = _mm512_max_ps(hi, _mm512_permute_ps(hi, 0x4e));
            lo = _mm512_min_ps(lo, _mm512_permute_ps(lo, 0xb1));         // swap neighbours
            hi = _mm512_max_ps(hi, _mm512_permute_ps(hi, 0xb1));
            return {_mm512_cvtss_f32(lo), _mm512_cvtss_f32(hi)};
        }
#endif
#if XSIMD_WITH_AVX
        template <class A>
            requires std::derived_from<A, xsimd::avx>
        inline min_max reduce(const fbatch<A>& mn, const fbatch<A>& mx, A) noexcept
        {
            __m256 lo = mn;
            __m256 hi = mx;
            lo = _mm256_min_ps(lo, _mm256_permute2f128_ps(lo, lo, 0x01));  // swap 128-bit halves
            hi = _mm256_max_ps(hi, _mm256_permute2f128_ps(hi, hi, 0x01));
            lo = _mm256_min_ps(lo, _mm256_permute_ps(lo, 0x4e));           // swap 64-bit pairs
            hi = _mm256_max_ps(hi, _mm256_permute_ps(hi, 0x4e));
            lo = _mm256_min_ps(lo, _mm256_permute_ps(lo, 0xb1));           // swap neighbours
            hi = _mm256_max_ps(hi, _mm256_permute_ps(hi, 0xb1));
            return {_mm256_cvtss_f32(lo), _mm256_cvtss_f32(hi)};
        }
#endif

        template <class A>
        inline float reduce_max(const fbatch<A>& mx, A) noexcept
        {
            alignas(64) float hi[fbatch<A>::size];
            mx.store_aligned(hi);
            float m = hi[0];
            for (std::size_t k = 1; k < fbatch<A>::size; ++k) m = m < hi[k] ? hi[k] : m;
            return m;
        }

#if XSIMD_WITH_AVX512F
        template <class A>
            requires std::derived_from<A, xsimd::avx512f>
        inline float reduce_max(const fbatch<A>& mx, A) noexcept
        {
            __m512 hi = mx;
            hi = _mm512_max_ps(hi, _mm512_shuffle_f32x4(hi, hi, 0x4e));
            hi = _mm512_max_ps(hi, _mm512_shuffle_f32x4(hi, hi, 0xb1));
            hi = _mm512_max_ps(hi, _mm512_permute_ps(hi, 0x4e));
            hi = _mm512_max_ps(hi, _mm512_permute_ps(hi, 0xb1));
            return _mm512_cvtss_f32(hi);
        }
#endif
#if XSIMD_WITH_AVX
        template <class A>
            requires std::derived_from<A, xsimd::avx>
        inline float reduce_max(const fbatch<A>& mx, A) noexcept
        {
            __m256 hi = mx;
            hi = _mm256_max_ps(hi, _mm256_permute2f128_ps(hi, hi, 0x01));
            hi = _mm256_max_ps(hi, _mm256_permute_ps(hi, 0x4e));
            hi = _mm256_max_ps(hi, _mm256_permute_ps(hi, 0xb1));
            return _mm256_cvtss_f32(hi);
        }
#endif

        // ------------------------------------------------------------------ non-finite lanes

        /// Lanes holding NaN or +-infinity: !(|x| <= FLT_MAX) (an unordered compare is false).
        template <class A>
        inline xsimd::batch_bool<float, A> non_finite(const fbatch<A>& x, A) noexcept
        {
            return !(xsimd::abs(x) <= fbatch<A>(std::numeric_limits<float>::max()));
        }

#if XSIMD_WITH_AVX512DQ
        template <class A>
            requires std::derived_from<A, xsimd::avx512dq>
        inline xsimd::batch_bool<float, A> non_finite(const fbatch<A>& x, A) noexcept
        {
            // one vfpclassps: QNaN (0x01) | +inf (0x08) | -inf (0x10) | SNaN (0x80)
            return xsimd::batch_bool<float, A>(_mm512_fpclass_ps_mask(x, 0x99));
        }
#endif

        /// Whether a NaN was among the values fed to it, exactly, fed two batches at a time. The
        /// generic form accumulates p += x * 0, which is NaN exactly when some x was NaN or an
        /// infinity (so it may also report an infinity; its callers reject those anyway). A
        /// product of two values (one instruction per pair) would be cheaper but is not exact:
        /// compilers may split the fused multiply-add, and finite products then overflow to both
        /// infinities, whose sum is NaN.
        template <class A>
        struct nan_guard
        {
            fbatch<A> p = fbatch<A>(0.0f);

            void add(const fbatch<A>& a, const fbatch<A>& b) noexcept
            {
                p = xsimd::fma(a, fbatch<A>(0.0f), p);
                p = xsimd::fma(b, fbatch<A>(0.0f), p);
            }

            bool any() const noexcept { return xsimd::any(xsimd::isnan(p)); }
        };

#if XSIMD_WITH_AVX512F
        /// AVX-512: one compare per pair, unordered |= unord(a, b); reports NaN only. The
        /// compares are independent and only the mask or is chained: a compare masked by the
        /// running mask would chain the compares themselves, 16 in a row in a tile's statistics.
        template <class A>
            requires std::derived_from<A, xsimd::avx512f>
        struct nan_guard<A>
        {
            __mmask16 unordered = 0;

            void add(const fbatch<A>& a, const fbatch<A>& b) noexcept
            {
                unordered = _kor_mask16(unordered, _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q));
            }

            bool any() const noexcept { return unordered != 0; }
        };
#endif
#if XSIMD_WITH_AVX
        /// AVX: the same unordered compare per pair, or-ed into a mask register (latency 1 per
        /// pair where the generic form chains two fused multiply-adds); reports NaN only.
        template <class A>
            requires std::derived_from<A, xsimd::avx>
        struct nan_guard<A>
        {
            __m256 unordered = _mm256_setzero_ps();

            void add(const fbatch<A>& a, const fbatch<A>& b) noexcept
            {
                unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
            }

            bool any() const noexcept { return _mm256_movemask_ps(unordered) != 0; }
        };
#endif

        // ------------------------------------------------------------------ rounding and encoding

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

        /// The batch form of reference::encode for one orbit's parameters.
        ///
        /// Computes code = R(clamp(v, qmin - zp, qmax - zp)) + zp in integers, which equals the
        /// reference's clamp(R(v) + zp, qmin, qmax): R is monotone and fixes integers, so clamping
        /// to integer bounds commutes with it, and where R(v) + zp is inexact in float32
        /// (|v| >= 2^24) both forms clamp to the same bound. Half-to-even rounds in the
        /// conversion itself (cvtps2dq, the current rounding mode, as std::nearbyint).
        /// With Clamp = false the float32 clamp is left out: only where quantize_span's Bounded
        /// shows it changes nothing (restricted symmetric) or the saturating narrow does it
        /// (the int8 range, with R(v) + zp exact in int32).
        /// @pre e is `vector_exact` (otherwise use the reference, see below).
        template <rounding_policy R, bool Clamp = true>
        struct encoder
        {
            float_batch inv;
            float_batch scale;
            float_batch lo;  ///< qmin - zp
            float_batch hi;  ///< qmax - zp
            int_batch zp;
            bool divide;
            bool zero_orbit;

            [[gnu::always_inline]] explicit encoder(const encode_params& e) noexcept
                : inv(e.params.inv_scale)
                , scale(e.params.scale)
                , lo(static_cast<float>(e.qmin - e.params.zero_point))
                , hi(static_cast<float>(e.qmax - e.params.zero_point))
                , zp(e.params.zero_point)
                , divide(e.mode == scale_application::divide)
                , zero_orbit(e.params.scale == 0.0f)
            {
            }

            /// False only when the reference would scale a finite value to NaN: multiplying by an
            /// infinite inverse (a subnormal scale). Such orbits are encoded by the reference.
            static bool vector_exact(const encode_params& e) noexcept
            {
                return e.mode == scale_application::divide || std::isfinite(e.params.inv_scale);
            }

            [[gnu::always_inline]] int_batch operator()(const float_batch& x) const noexcept
            {
                float_batch v = divide ? (zero_orbit ? float_batch(0.0f) : x / scale) : x * inv;
                if constexpr (Clamp) v = xsimd::min(xsimd::max(v, lo), hi);
                if constexpr (std::same_as<R, half_to_even>) return xsimd::nearbyint_as_int(v) + zp;
                else return xsimd::to_int(round<R>(v)) + zp;
            }
        };

        /// Whether the float32 clamp can be left out for a range [qmin, qmax] when the scaled
        /// values are bounded (quantize_span's Bounded, or a tile's own parameters): the
        /// restricted symmetric ranges (qmin == -qmax: |v| < qmax + 1/2 rounds inside) and the
        /// int8 range (the saturating narrow is the clamp). See needs_clamp for the proof.
        constexpr bool clamp_free_range(int qmin, int qmax) noexcept { return qmin == -qmax || (qmin == -128 && qmax == 127); }

        /// Clamps n int8 codes to [lo, hi] in place.
        inline void clamp_codes(std::int8_t* c, std::size_t n, std::int8_t lo, std::int8_t hi) noexcept
        {
            using byte_batch = xsimd::batch<std::int8_t, arch_type>;
            std::size_t i = 0;
            for (; i + byte_batch::size <= n; i += byte_batch::size)
            {
                xsimd::min(xsimd::max(byte_batch::load_unaligned(c + i), byte_batch(lo)), byte_batch(hi)).store_unaligned(c + i);
            }
            for (; i < n; ++i) c[i] = std::clamp(c[i], lo, hi);
        }

        /// Encodes n values with the vector form, the tail through the reference.
        /// @pre encoder<R>::vector_exact(e); Clamp = false only as encode_span allows it.
        /// (Adding the zero point to the narrow's 16-bit words, as the tiles do, ran faster in
        /// L2 but slower from memory here, by up to 30 % for bf16 rows: it stays in int32. With
        /// streaming stores, measured again: no change for f32 rows in L2 or from memory.)
        template <rounding_policy R, bool Clamp, bool Stream, weight_element T>
        [[gnu::always_inline]] inline void encode_vector(const T* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
        {
            constexpr bool streamed = Stream && has_streaming_stores;
            const encoder<R, Clamp> enc(e);
            std::size_t i = 0;
            if constexpr (streamed)
            {
                // codes up to the first 64-byte boundary are stored as usual, lines after it streamed
                const std::size_t head = std::min(n, (64 - reinterpret_cast<std::uintptr_t>(out) % 64) % 64);
                if (head != 0) encode_vector<R, Clamp, false>(x, head, e, out);
                i = head;
            }
            for (; i + 4 * width <= n; i += 4 * width)
            {
                const auto [a, b] = load_pair(x + i, arch_type{});
                const auto [c, d] = load_pair(x + i + 2 * width, arch_type{});
                store_int8_x4<pack_ordered_pairs<T, arch_type>, false, streamed>(enc(a), enc(b), enc(c), enc(d), out + i, arch_type{});
            }
            for (; i + width <= n; i += width) store_int8(enc(load(x + i, arch_type{})), out + i, arch_type{});
            for (; i < n; ++i) out[i] = reference::encode<R>(to_float(x[i]), e);
        }

        /// Encodes n values (any n); the tail, and orbits the vector form cannot take, go through
        /// the reference. Bounded: see simd::quantize_span; the float clamp is left out (see
        /// needs_clamp): it provably changes nothing (restricted symmetric), or the saturating
        /// narrow does it (the int8 range [-128, 127]), or a clamp of the int8 codes from L1
        /// (other ranges: int4).
        template <rounding_policy R, bool Bounded, bool Stream, weight_element T>
        [[gnu::always_inline]] inline void encode_span(const T* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
        {
            if (!encoder<R>::vector_exact(e))
            {
                for (std::size_t i = 0; i < n; ++i) out[i] = reference::encode<R>(to_float(x[i]), e);
                return;
            }
            if (!Bounded) return encode_vector<R, true, Stream>(x, n, e, out);
            if (clamp_free_range(e.qmin, e.qmax)) return encode_vector<R, false, Stream>(x, n, e, out);
            // codes clamped from L1 after the encode: not streamed, they are read back at once
            encode_vector<R, false, false>(x, n, e, out);
            clamp_codes(out, n, static_cast<std::int8_t>(e.qmin), static_cast<std::int8_t>(e.qmax));
        }

        /// The fused pass over whole groups of `NB` batches: load a group once, reduce it, ask
        /// `on_group` for its parameters, encode it from registers. With AbsMax only max |x| is
        /// reduced and reported as the statistic {-max|x|, max|x|}.
        template <rounding_policy R, bool AbsMax, std::size_t NB, weight_element T, class OnGroup>
        inline void quantize_groups_in_registers(const T* x, std::size_t groups, std::int8_t* out, OnGroup& on_group)
        {
            constexpr std::size_t group = NB * width;
            for (std::size_t g = 0; g < groups; ++g)
            {
                const T* p = x + g * group;
                float_batch b[NB];
                for (std::size_t k = 0; k < NB; ++k) b[k] = load(p + k * width, arch_type{});
                auto bad = non_finite(b[0], arch_type{});
                for (std::size_t k = 1; k < NB; ++k) bad = bad || non_finite(b[k], arch_type{});
                min_max s;
                if constexpr (AbsMax)
                {
                    float_batch a = xsimd::abs(b[0]);
                    for (std::size_t k = 1; k < NB; ++k) a = xsimd::max(a, xsimd::abs(b[k]));
                    const float m = reduce_max(a, arch_type{});
                    s = {-m, m};
                }
                else
                {
                    float_batch mn = b[0];
                    float_batch mx = b[0];
                    for (std::size_t k = 1; k < NB; ++k)
                    {
                        mn = xsimd::min(mn, b[k]);
                        mx = xsimd::max(mx, b[k]);
                    }
                    s = reduce(mn, mx, arch_type{});
                }
                const encode_params e = on_group(g, s, !xsimd::any(bad));
                std::int8_t* o = out + g * group;
                if (encoder<R>::vector_exact(e)) [[likely]]
                {
                    const encoder<R> enc(e);
                    for (std::size_t k = 0; k < NB; ++k) store_int8(enc(b[k]), o + k * width, arch_type{});
                }
                else
                {
                    reference::quantize_span<R>(p, group, e, o);
                }
            }
        }
    }

    /// @brief Asks for the cache lines of [p, p + bytes) to be brought in (a hint; no effect on
    ///        results). The row drivers call it on a row ahead of the one they encode, so memory
    ///        keeps streaming while a row's second pass runs from L1. ForWrite asks for the lines
    ///        in a writable state (prefetchw where the target has it), so that stores need not
    ///        read them for ownership on demand. The tile loop does so for 16-bit inputs, whose
    ///        codes are half as many bytes as the input (bench/compare, seed shape, both orders:
    ///        per_group32 bf16 tiles 3-5 % faster with it, f32 tiles 1-4 % slower; rows unchanged).
    template <bool ForWrite = false>
    inline void prefetch(const void* p, std::size_t bytes) noexcept
    {
#if defined(__GNUC__) || defined(__clang__)
        const char* c = static_cast<const char*>(p);
        for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, ForWrite ? 1 : 0, 3);
#else
        (void)p;
        (void)bytes;
#endif
    }

    /// @brief How many rows of `row_bytes` ahead a row-by-row pass should prefetch: at least
    ///        8 KiB ahead (measured on the seed shape, 1 thread: 8 KiB gives 0.85-0.93 of the
    ///        read/convert roofline, 6 KiB 0.77-0.84).
    inline std::size_t prefetch_rows_ahead(std::size_t row_bytes) noexcept
    {
        const std::size_t b = std::max<std::size_t>(1, row_bytes);
        return (8192 + b - 1) / b;
    }

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
            constexpr std::int16_t largest_finite = detail::largest_finite_bits<T>;
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
            all_finite = m <= largest_finite;
            const float a = to_float(T{static_cast<std::uint16_t>(m)});
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
        all_finite = m <= static_cast<std::int32_t>(detail::largest_finite_bits<float>);
        const float a = std::bit_cast<float>(m);
        return {-a, a};
    }

    /// @brief Packs n int4 codes (one per byte, each in [-8, 7]) two to a byte: code 2k in the
    ///        low nibble of out[k], code 2k + 1 in the high nibble; an odd last code takes a low
    ///        nibble alone (high nibble 0). Writes (n + 1) / 2 bytes. Written on 16-bit pairs so
    ///        the compiler vectorizes it (one shift, two masks and a narrowing per vector).
    inline void pack_int4(const std::int8_t* in, std::size_t n, std::int8_t* out) noexcept
    {
        const std::size_t pairs = n / 2;
        for (std::size_t k = 0; k < pairs; ++k)
        {
            std::uint16_t u;  // little-endian: code 2k in the low byte, code 2k+1 in the high byte
            std::memcpy(&u, in + 2 * k, sizeof(u));
            if constexpr (std::endian::native == std::endian::big) u = static_cast<std::uint16_t>((u >> 8) | (u << 8));
            out[k] = static_cast<std::int8_t>((u & 0x0fu) | ((u >> 4) & 0xf0u));
        }
        if (n % 2 != 0) out[pairs] = static_cast<std::int8_t>(in[n - 1] & 0x0f);
    }

    namespace detail
    {
        /// Clamps n int8 codes to [lo, hi] (Clamp; in place) and packs them as pack_int4 into
        /// out. Stream: whole 64-byte lines of out are written with streaming stores (where
        /// has_streaming_stores). @pre Stream: out is 64-byte aligned.
        template <bool Clamp, bool Stream, class A>
        inline void clamp_pack_int4(std::int8_t* codes, std::size_t n, std::int8_t lo, std::int8_t hi, std::int8_t* out, A) noexcept
        {
            if constexpr (Clamp) clamp_codes(codes, n, lo, hi);
            pack_int4(codes, n, out);
        }

#if XSIMD_WITH_AVX512BW
        /// AVX-512BW: 128 codes per line of out, clamped, packed and stored from registers (one
        /// pass instead of a clamp pass and a pack pass over the codes).
        template <bool Clamp, bool Stream, class A>
            requires std::derived_from<A, xsimd::avx512bw>
        inline void clamp_pack_int4(std::int8_t* codes, std::size_t n, std::int8_t lo, std::int8_t hi, std::int8_t* out, A) noexcept
        {
            const __m512i vlo = _mm512_set1_epi8(lo);
            const __m512i vhi = _mm512_set1_epi8(hi);
            const __m512i low_nibble = _mm512_set1_epi16(0x000f);
            // 64 codes -> 32 bytes: in each 16-bit word u (codes 2k, 2k + 1), the low byte of
            // (u & 0x0f) | ((u >> 4) & ~0x0f) is pack_int4's byte (one bit select); the narrow
            // keeps the low bytes
            const auto pack64 = [&](const std::int8_t* p) {
                __m512i u = _mm512_loadu_si512(p);
                if constexpr (Clamp) u = _mm512_min_epi8(_mm512_max_epi8(u, vlo), vhi);
                return _mm512_cvtepi16_epi8(_mm512_ternarylogic_epi32(low_nibble, u, _mm512_srli_epi16(u, 4), 0xca));
            };
            std::size_t i = 0;
            for (; i + 128 <= n; i += 128)
            {
                const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(pack64(codes + i)), pack64(codes + i + 64), 1);
                if constexpr (Stream) _mm512_stream_si512(reinterpret_cast<__m512i*>(out + i / 2), v);
                else _mm512_storeu_si512(out + i / 2, v);
            }
            if (i < n) clamp_pack_int4<Clamp, false>(codes + i, n - i, lo, hi, out + i / 2, xsimd::generic{});  // the tail
        }
#endif
#if XSIMD_WITH_AVX2
        /// AVX2: the same 16-bit word trick, 64 codes to 32 bytes of out per step (Stream: an
        /// aligned half line).
        template <bool Clamp, bool Stream, class A>
            requires std::derived_from<A, xsimd::avx2>
        inline void clamp_pack_int4(std::int8_t* codes, std::size_t n, std::int8_t lo, std::int8_t hi, std::int8_t* out, A) noexcept
        {
            const __m256i vlo = _mm256_set1_epi8(lo);
            const __m256i vhi = _mm256_set1_epi8(hi);
            const __m256i low_nibble = _mm256_set1_epi16(0x000f);
            const __m256i high_nibble = _mm256_set1_epi16(0x00f0);
            // 32 codes -> 16 words whose low byte is pack_int4's: (u & 0x0f) | ((u >> 4) & 0xf0)
            const auto words = [&](const std::int8_t* p) {
                __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
                if constexpr (Clamp) u = _mm256_min_epi8(_mm256_max_epi8(u, vlo), vhi);
                return _mm256_or_si256(_mm256_and_si256(u, low_nibble), _mm256_and_si256(_mm256_srli_epi16(u, 4), high_nibble));
            };
            std::size_t i = 0;
            for (; i + 64 <= n; i += 64)
            {
                // the unsigned narrow (exact: words <= 0xff) works per 128-bit lane, giving
                // qwords (first 0, second 0, first 1, second 1); one qword permutation orders them
                const __m256i v = _mm256_permute4x64_epi64(_mm256_packus_epi16(words(codes + i), words(codes + i + 32)), 0xd8);
                if constexpr (Stream) _mm256_stream_si256(reinterpret_cast<__m256i*>(out + i / 2), v);
                else _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i / 2), v);
            }
            if (i < n) clamp_pack_int4<Clamp, false>(codes + i, n - i, lo, hi, out + i / 2, xsimd::generic{});  // the tail
        }
#endif
    }

    /// @brief Encodes n values of one orbit into int8 codes; bit-identical to reference::quantize_span.
    /// @tparam Bounded the caller guarantees that e.params is exactly what a builtin scheme's
    ///         make_params (is_builtin_scheme) returned for a statistic covering all n values
    ///         (the orbit's own, or the tensor's), not a rounded stored scale. Then every scaled
    ///         value has magnitude below 256, and below qmax + 1/2 for restricted symmetric
    ///         schemes (see detail::needs_clamp): the float32 clamp (two instructions per batch)
    ///         is left out. It changes nothing for those; for the int8 range [-128, 127] the
    ///         saturating narrow clamps, for other ranges (int4) a clamp of the int8 codes.
    /// @tparam Stream whole 64-byte lines of codes are written with streaming stores (where
    ///         has_streaming_stores; the codes before the first line boundary of `out` and after
    ///         the last are stored as usual; codes that Bounded clamps as int8 afterwards, int4
    ///         ranges, are not streamed). The caller calls store_fence() before another thread
    ///         reads the codes. Worth it only for passes larger than the caches (see
    ///         stream_codes): streamed codes are not left in cache.
    template <rounding_policy R, bool Bounded = false, bool Stream = false, weight_element T>
    void quantize_span(const T* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
    {
        detail::encode_span<R, Bounded, Stream>(x, n, e, out);
    }

    /// @brief The groups of a sub-range seen by a group callback of the whole range: group g of
    ///        the sub-range is group `first + g` of `on_group`. A named type (not a lambda at
    ///        each call site), so every pass that offsets the same callback shares one
    ///        instantiation of the group kernels.
    template <class OnGroup>
    struct groups_from
    {
        const OnGroup* on_group;
        std::size_t first;
        encode_params operator()(std::size_t g, const min_max& s, bool finite) const { return (*on_group)(first + g, s, finite); }
    };

    /// @brief `on_group` offset by `first` groups; an offset callback is offset again, never
    ///        wrapped twice.
    template <class OnGroup>
    groups_from<OnGroup> offset_groups(const OnGroup& on_group, std::size_t first)
    {
        return {&on_group, first};
    }
    template <class OnGroup>
    groups_from<OnGroup> offset_groups(const groups_from<OnGroup>& on_group, std::size_t first)
    {
        return {on_group.on_group, on_group.first + first};
    }

    /// @brief The fused statistics + encode pass over one row split into groups of `group`
    ///        values (the last group may be shorter).
    ///
    /// For each group g in order: its statistic s (== reference::min_max_span) and whether its
    /// values are all finite, then `e = on_group(g, s, finite)` (which may throw, e.g. on a
    /// non-finite group), then the group's codes with parameters e (== reference::quantize_span).
    /// A group of 1 to 8 whole batches is read from memory once and encoded from registers;
    /// longer groups are reduced and then encoded while they are in L1.
    /// @tparam AbsMax false: s is the group's min_max. true (for symmetric schemes, which only use
    ///         max |x|): s may be {-max|x|, max|x|} instead, which has the same to_abs_max().
    /// @tparam OnGroup callable (std::size_t g, const min_max& s, bool finite) -> encode_params.
    /// @pre group > 0, n > 0.
    template <rounding_policy R, bool AbsMax = false, weight_element T, class OnGroup>
    void quantize_groups(const T* x, std::size_t n, std::size_t group, std::int8_t* out, OnGroup&& on_group)
    {
        const std::size_t whole = n / group;
        std::size_t done = 0;  // groups handled by the in-register kernel
        if (group % width == 0 && whole > 0)
        {
            switch (group / width)
            {
                case 1: detail::quantize_groups_in_registers<R, AbsMax, 1>(x, whole, out, on_group); done = whole; break;
                case 2: detail::quantize_groups_in_registers<R, AbsMax, 2>(x, whole, out, on_group); done = whole; break;
                case 4: detail::quantize_groups_in_registers<R, AbsMax, 4>(x, whole, out, on_group); done = whole; break;
                case 8: detail::quantize_groups_in_registers<R, AbsMax, 8>(x, whole, out, on_group); done = whole; break;
                default: break;
            }
        }
        for (std::size_t g = done; g * group < n; ++g)
        {
            const std::size_t c0 = g * group;
            const std::size_t m = std::min(group, n - c0);
            bool finite = true;
            const min_max s = AbsMax ? abs_max_span(x + c0, m, finite) : min_max_span(x + c0, m, finite);
            const encode_params e = on_group(g, s, finite);
            quantize_span<R>(x + c0, m, e, out + c0);
        }
    }

    namespace detail
    {
        // ------------------------------------------------------------------ tiles of groups
        // A tile is `width` consecutive whole groups of a row. Their statistics are reduced into
        // one batch (lane j = group j), the scheme's parameters are computed for all of them in
        // one go, then every group is encoded from L1.

        /// Reduces `width` batches into one, lane j = the op-reduction of batch j, fed four
        /// batches at a time so that only partial results stay live (a tile's asymmetric
        /// statistics are 2 x 16 batches, which would otherwise not fit in the registers).
        /// Generic form: each batch reduced through memory.
        /// @pre push4 is called width / 4 times, then finish once.
        template <class Op, class A>
        struct lane_tree
        {
            static_assert(fbatch<A>::size % 4 == 0, "tiles take 4 groups at a time");
            alignas(64) float res[fbatch<A>::size];
            std::size_t filled = 0;

            void push4(const fbatch<A>& a, const fbatch<A>& b, const fbatch<A>& c, const fbatch<A>& d, Op op) noexcept
            {
                for (const fbatch<A>* m : {&a, &b, &c, &d})
                {
                    alignas(64) float buf[fbatch<A>::size];
                    m->store_aligned(buf);
                    float r = buf[0];
                    for (std::size_t k = 1; k < fbatch<A>::size; ++k) r = op(r, buf[k]);
                    res[filled++] = r;
                }
            }

            fbatch<A> finish(Op) const noexcept { return fbatch<A>::load_aligned(res); }
        };

#if XSIMD_WITH_AVX512F
        /// AVX-512: a transposing reduction tree, 3 instructions per combine. Four batches give
        /// one partial (levels 1-2: each batch reduced to 4 lanes, one 128-bit chunk per batch);
        /// finish combines the four partials (levels 3-4) and puts batch j in lane j.
        template <class Op, class A>
            requires std::derived_from<A, xsimd::avx512f>
        struct lane_tree<Op, A>
        {
            __m512 d[4];
            std::size_t filled = 0;

            void push4(const fbatch<A>& m0, const fbatch<A>& m1, const fbatch<A>& m2, const fbatch<A>& m3, Op op) noexcept
            {
                // level 1: 256-bit halves combined -> 2 groups x 8 lanes per batch
                const fbatch<A> c0 = op(fbatch<A>(_mm512_shuffle_f32x4(m0, m1, 0x44)), fbatch<A>(_mm512_shuffle_f32x4(m0, m1, 0xee)));
                const fbatch<A> c1 = op(fbatch<A>(_mm512_shuffle_f32x4(m2, m3, 0x44)), fbatch<A>(_mm512_shuffle_f32x4(m2, m3, 0xee)));
                // level 2: 4 groups x 4 lanes (one 128-bit chunk per group)
                d[filled++] = op(fbatch<A>(_mm512_shuffle_f32x4(c0, c1, 0x88)), fbatch<A>(_mm512_shuffle_f32x4(c0, c1, 0xdd)));
            }

            fbatch<A> finish(Op op) const noexcept
            {
                // level 3: within each 128-bit chunk k: 2 lanes of group 4i+k and 2 of group 4(i+1)+k
                const fbatch<A> e0 = op(fbatch<A>(_mm512_shuffle_ps(d[0], d[1], 0x44)), fbatch<A>(_mm512_shuffle_ps(d[0], d[1], 0xee)));
                const fbatch<A> e1 = op(fbatch<A>(_mm512_shuffle_ps(d[2], d[3], 0x44)), fbatch<A>(_mm512_shuffle_ps(d[2], d[3], 0xee)));
                // level 4: chunk k = groups k, k+4, k+8, k+12 (from d0, d1, d2, d3)
                const __m512 f = op(fbatch<A>(_mm512_shuffle_ps(e0, e1, 0x88)), fbatch<A>(_mm512_shuffle_ps(e0, e1, 0xdd)));
                // lane 4k + j holds group k + 4j: gather lane g from 4 (g % 4) + g / 4
                const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                return fbatch<A>(_mm512_permutexvar_ps(idx, f));
            }
        };
#endif
#if XSIMD_WITH_AVX2
        /// AVX2: the same transposing tree on 8 lanes. Four batches give one partial (level 1:
        /// each batch reduced to 4 lanes, batches 0 and 1 sharing a register; level 2: 2 lanes
        /// per batch); finish combines the two partials (level 3) and puts batch j in lane j.
        template <class Op, class A>
            requires std::derived_from<A, xsimd::avx2>
        struct lane_tree<Op, A>
        {
            __m256 d[2];
            std::size_t filled = 0;

            void push4(const fbatch<A>& m0, const fbatch<A>& m1, const fbatch<A>& m2, const fbatch<A>& m3, Op op) noexcept
            {
                // level 1: 128-bit halves combined -> low half batch 0 (2), high half batch 1 (3)
                const fbatch<A> c0 = op(fbatch<A>(_mm256_permute2f128_ps(m0, m1, 0x20)), fbatch<A>(_mm256_permute2f128_ps(m0, m1, 0x31)));
                const fbatch<A> c1 = op(fbatch<A>(_mm256_permute2f128_ps(m2, m3, 0x20)), fbatch<A>(_mm256_permute2f128_ps(m2, m3, 0x31)));
                // level 2: low half [b0 b0 b2 b2], high half [b1 b1 b3 b3]
                d[filled++] = op(fbatch<A>(_mm256_shuffle_ps(c0, c1, 0x44)), fbatch<A>(_mm256_shuffle_ps(c0, c1, 0xee)));
            }

            fbatch<A> finish(Op op) const noexcept
            {
                // level 3: low half [g0 g2 g4 g6], high half [g1 g3 g5 g7]
                const __m256 f = op(fbatch<A>(_mm256_shuffle_ps(d[0], d[1], 0x88)), fbatch<A>(_mm256_shuffle_ps(d[0], d[1], 0xdd)));
                // group g sits in lane 4 (g % 2) + g / 2
                return fbatch<A>(_mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            }
        };
#endif

        struct min_op
        {
            template <class V>
            V operator()(const V& a, const V& b) const noexcept
            {
                if constexpr (std::same_as<V, float>) return b < a ? b : a;
                else return xsimd::min(a, b);
            }
        };

        struct max_op
        {
            template <class V>
            V operator()(const V& a, const V& b) const noexcept
            {
                if constexpr (std::same_as<V, float>) return a < b ? b : a;
                else return xsimd::max(a, b);
            }
        };

        /// Parameters of `width` orbits at once.
        struct batch_params
        {
            float_batch scale;
            float_batch inv;
            int_batch zero_point;
        };

        /// The batch form of S::make_params for orbitq's schemes (the same float32 operations in
        /// the same order, so equal lane by lane; test_kernel_tiles checks it), into bp; any other
        /// scheme goes lane by lane through S::make_params itself. bp's members are assigned one
        /// by one: GCC 12 moved a batch_params returned by value, or a pair of batches, through
        /// the stack and general registers, 16 bytes at a time, at the end of each tile's
        /// latency chain.
        template <class S>
        [[gnu::always_inline]] inline void make_batch_params(const float_batch& mn, const float_batch& mx, batch_params& bp) noexcept
        {
            const auto set_scale = [&bp](const float_batch& scale) {
                // detail::with_inverse: !(scale > 0) gives (0, 0)
                const auto pos = scale > float_batch(0.0f);
                bp.scale = xsimd::select(pos, scale, float_batch(0.0f));
                bp.inv = xsimd::select(pos, float_batch(1.0f) / scale, float_batch(0.0f));
            };
            if constexpr (is_builtin_scheme<S> && !S::has_zero_point)
            {
                // min_max::to_abs_max: a = -min; a < max ? max : a
                const float_batch a = -mn;
                const float_batch amax = xsimd::select(a < mx, mx, a);
                set_scale(amax / float_batch(S::divisor));
                bp.zero_point = int_batch(0);
            }
            else if constexpr (is_builtin_scheme<S>)
            {
                const float_batch zero(0.0f);
                const float_batch lo = xsimd::select(mn < zero, mn, zero);
                const float_batch hi = xsimd::select(mx > zero, mx, zero);
                const float_batch scale = (hi - lo) / float_batch(float(S::qmax - S::qmin));
                const auto pos = scale > zero;
                float_batch zp = float_batch(float(S::qmin)) - xsimd::nearbyint(lo / scale);
                const float_batch qmin(static_cast<float>(S::qmin));
                const float_batch qmax(static_cast<float>(S::qmax));
                zp = xsimd::select(zp < qmin, qmin, xsimd::select(zp > qmax, qmax, zp));
                set_scale(scale);
                bp.zero_point = xsimd::to_int(xsimd::select(pos, zp, zero));
            }
            else
            {
                alignas(64) float lo[width];
                alignas(64) float hi[width];
                alignas(64) float sc[width];
                alignas(64) float in[width];
                alignas(64) std::int32_t zp[width];
                mn.store_aligned(lo);
                mx.store_aligned(hi);
                for (std::size_t j = 0; j < width; ++j)
                {
                    const quant_params p = S::make_params(min_max{lo[j], hi[j]});
                    sc[j] = p.scale;
                    in[j] = p.inv_scale;
                    zp[j] = p.zero_point;
                }
                bp.scale = float_batch::load_aligned(sc);
                bp.inv = float_batch::load_aligned(in);
                bp.zero_point = int_batch::load_aligned(zp);
            }
        }

        /// The code of each lane of v (already scaled) for the range [lo, hi] = [qmin - zp, qmax - zp].
        /// Clamp = false skips the clamp: only where |v| < qmax + 1/2 is known (see needs_clamp).
        template <rounding_policy R, bool Clamp = true>
        inline int_batch to_code(float_batch v, const float_batch& lo, const float_batch& hi) noexcept
        {
            if constexpr (Clamp) v = xsimd::min(xsimd::max(v, lo), hi);
            if constexpr (std::same_as<R, half_to_even>) return xsimd::nearbyint_as_int(v);
            else return xsimd::to_int(round<R>(v));
        }

        /// Whether a tile's encode must clamp in float32 before rounding: only for user schemes.
        /// A builtin scheme's own parameters bound the scaled values, so the clamp either
        /// provably cannot change a code, or the saturating narrow does it, or a clamp of the
        /// int8 codes does (clamps_codes):
        /// - Restricted symmetric schemes: a group's values satisfy |x| <= a (its max |x|),
        ///   scale = fl(a / qmax) and, on the fast path, inv = fl(1 / scale) is finite, so
        ///   scale >= 1 / FLT_MAX and its rounding error, relative or (subnormal) at most 2^-150
        ///   absolute, is below 2^-22 relative. Hence |x * inv| <= qmax (1 + 2^-21) < qmax + 1/2,
        ///   which rounds into [-qmax, qmax].
        /// - Every other builtin scheme: the same argument bounds |x * inv| by (qmax - qmin + 1)
        ///   <= 256 (asymmetric: lo <= 0 <= hi, |x| <= max(hi, -lo) <= fl(hi - lo) = (qmax - qmin)
        ///   scale up to rounding), so y = R(x * inv) + zp is exact in int32 (and in the 16-bit
        ///   words of store_int8_x4) and the saturating narrow gives clamp(y, -128, 127). For the
        ///   int8 range that is the reference's clamp(y, qmin, qmax); for narrower ranges (int4)
        ///   that int8 code clamped to [qmin, qmax] is the reference's code (one byte operation
        ///   per code instead of two float operations per value). (No builtin asymmetric range
        ///   has qmin == -qmax, so clamp_free_range needs no scheme kind.)
        template <class S>
        inline constexpr bool needs_clamp = !is_builtin_scheme<S>;

        /// Whether a tile's int8 codes are clamped to [qmin, qmax] after the narrow (needs_clamp).
        template <class S>
        inline constexpr bool clamps_codes = is_builtin_scheme<S> && !clamp_free_range(S::qmin, S::qmax);

        /// Whether encode_tile narrows the codes of groups of NB batches four batches at a time
        /// (store_int8_x4): two groups of 2 batches, or one group of a multiple of 4 batches. Only such
        /// tiles stream.
        template <std::size_t NB>
        inline constexpr bool narrows_in_quads = NB == 2 || NB % 4 == 0;

        /// The parameters of a tile from its per-group statistics, into bp; returns whether the
        /// fast path may use them: the tile's values are finite (`finite`) and no inverse scale
        /// is infinite. The tile functions return this flag and write the parameters through a
        /// reference: a struct holding both, returned by value, is copied through the stack by
        /// GCC, and the copy's wide load of the flag waits for the flag's byte store to retire
        /// (store forwarding fails), which held up every tile. Always inlined, as is
        /// make_batch_params, which GCC left out of line in a unit holding many kernels (the
        /// bench binary), so its result went through memory too.
        template <class S>
        [[gnu::always_inline]] inline bool usable_tile_params(const float_batch& mn, const float_batch& mx, bool finite, batch_params& bp) noexcept
        {
            make_batch_params<S>(mn, mx, bp);
            return finite && !xsimd::any(xsimd::isinf(bp.inv));
        }

        /// Two reductions of a tile's width groups at once: group(j) gives group j's batch, or a
        /// pair of batches (one for each reduction); OpA and OpB reduce them (lane_tree). Returns
        /// the two results, group j's in lane j.
        template <class OpA, class OpB, class Group>
        inline std::pair<float_batch, float_batch> reduce_tile_twice(const Group& group) noexcept
        {
            lane_tree<OpA, arch_type> a;
            lane_tree<OpB, arch_type> b;
            for (std::size_t j = 0; j < width; j += 4)
            {
                // (one batch is not made a pair: GCC then built the pairs on the stack)
                if constexpr (std::same_as<std::invoke_result_t<const Group&, std::size_t>, float_batch>)
                {
                    const float_batch g0 = group(j);
                    const float_batch g1 = group(j + 1);
                    const float_batch g2 = group(j + 2);
                    const float_batch g3 = group(j + 3);
                    a.push4(g0, g1, g2, g3, OpA{});
                    b.push4(g0, g1, g2, g3, OpB{});
                }
                else
                {
                    const auto [a0, b0] = group(j);
                    const auto [a1, b1] = group(j + 1);
                    const auto [a2, b2] = group(j + 2);
                    const auto [a3, b3] = group(j + 3);
                    a.push4(a0, a1, a2, a3, OpA{});
                    b.push4(b0, b1, b2, b3, OpB{});
                }
            }
            return {a.finish(OpA{}), b.finish(OpB{})};
        }

        /// The parameters of a tile of `count` <= width groups of NB batches, into bp; false when
        /// the fast path may not use them: a value is not finite or an inverse scale is infinite
        /// (the caller then takes the tile group by group, which reports an error in order).
        /// Always inlined into the tile loop, so bp stays in registers until encode_tile's call:
        /// GCC 12 left it out of line in some units (the bench binary) and not in others.
        template <class S, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline bool compute_tile_params(const T* x, std::size_t count, batch_params& bp) noexcept
        {
            constexpr std::size_t group = NB * width;
            constexpr bool abs_only = !S::has_zero_point && is_builtin_scheme<S>;
            using bits_batch = xsimd::batch<std::int32_t, arch_type>;
            if constexpr (abs_only)
            {
                // max |x| on the magnitude bits (see abs_max_span): NaN and inf sort above
                // FLT_MAX, so the tile is finite exactly when every lane of the result is
                // at most FLT_MAX's bits (checked after the reduction, which max keeps exact).
                if constexpr (std::same_as<T, bfloat16_t> && NB % 2 == 0)
                {
                    // bf16 groups of NB width values are NB / 2 batches of raw bits: reduce the
                    // 16-bit magnitudes as int16 lanes (the tree's shuffles move 32-bit pairs, so
                    // each lane keeps an (even, odd) pair of candidates), widen once per tile.
                    using half_batch = xsimd::batch<std::int16_t, arch_type>;
                    lane_tree<max_int16_op, arch_type> tree;
                    const half_batch magnitude(0x7fff);
                    const auto group_max = [&](std::size_t j) {
                        if (j >= count) return float_batch(0.0f);  // unused lanes: zero orbits
                        const auto* p = reinterpret_cast<const std::int16_t*>(x + j * group);
                        half_batch m = half_batch::load_unaligned(p) & magnitude;
                        for (std::size_t k = 1; k < NB / 2; ++k) m = xsimd::max(m, half_batch::load_unaligned(p + 2 * k * width) & magnitude);
                        return xsimd::bitwise_cast<float_batch>(m);
                    };
                    for (std::size_t j = 0; j < width; j += 4)
                    {
                        tree.push4(group_max(j), group_max(j + 1), group_max(j + 2), group_max(j + 3), max_int16_op{});
                    }
                    const bits_batch m = max_int16_op::fold_pairs(tree.finish(max_int16_op{}));  // both halves >= 0
                    // above FLT_MAX's bf16: inf and NaN
                    if (xsimd::any(m > bits_batch(largest_finite_bits<bfloat16_t>))) return false;
                    const float_batch vmax = xsimd::bitwise_cast<float_batch>(m << 16);  // exact widening
                    return usable_tile_params<S>(-vmax, vmax, true, bp);
                }
                lane_tree<max_bits_op, arch_type> max_tree;
                const bits_batch magnitude(0x7fffffff);
                const auto group_max = [&](std::size_t j) {
                    if (j >= count) return float_batch(0.0f);  // unused lanes: zero orbits
                    const T* p = x + j * group;
                    bits_batch m = xsimd::bitwise_cast<bits_batch>(load(p, arch_type{})) & magnitude;
                    for (std::size_t k = 1; k < NB; ++k)
                    {
                        m = xsimd::max(m, xsimd::bitwise_cast<bits_batch>(load(p + k * width, arch_type{})) & magnitude);
                    }
                    return xsimd::bitwise_cast<float_batch>(m);
                };
                for (std::size_t j = 0; j < width; j += 4)
                {
                    max_tree.push4(group_max(j), group_max(j + 1), group_max(j + 2), group_max(j + 3), max_bits_op{});
                }
                const float_batch vmax = max_tree.finish(max_bits_op{});
                if (xsimd::any(xsimd::bitwise_cast<bits_batch>(vmax) > bits_batch(largest_finite_bits<float>))) return false;
                return usable_tile_params<S>(-vmax, vmax, true, bp);
            }
            else if constexpr (std::same_as<T, bfloat16_t> && NB % 2 == 0 && is_builtin_scheme<S>)
            {
                // bf16 groups of NB width values are NB / 2 batches of raw bits. A builtin asymmetric
                // scheme needs only lo = min(min, 0) and hi = max(max, 0) (make_batch_params),
                // and those come from the raw bits without ordered keys: the largest bits as
                // uint16 are the most negative value where there is one (otherwise a value >= +0,
                // which gives lo = 0 as well); as int16, the largest value >= +0 where there is
                // one (otherwise a negative value: hi = 0). NaN and infinities lie above -FLT_MAX
                // (0xff7f) and FLT_MAX (0x7f7f) in those orders. Both trees reduce 16-bit pairs;
                // each lane is widened once per tile.
                const auto [lo_words, hi_words] = reduce_tile_twice<max_uint16_op, max_int16_op>([&](std::size_t j) {
                    const float* p = reinterpret_cast<const float*>(x + j * group);
                    if constexpr (NB == 2)
                    {
                        if (j >= count) return float_batch(0.0f);  // unused lanes: zero orbits
                        return float_batch::load_unaligned(p);
                    }
                    else
                    {
                        if (j >= count) return std::pair{float_batch(0.0f), float_batch(0.0f)};
                        float_batch lo = in_register(float_batch::load_unaligned(p));
                        float_batch hi = lo;
                        for (std::size_t k = 1; k < NB / 2; ++k)
                        {
                            const float_batch b = in_register(float_batch::load_unaligned(p + k * width));
                            lo = max_uint16_op{}(lo, b);
                            hi = max_int16_op{}(hi, b);
                        }
                        return std::pair{lo, hi};
                    }
                });
                const bits_batch lo_bits = max_uint16_op::fold_pairs(lo_words);
                const bits_batch hi_bits = max_int16_op::fold_pairs(hi_words);  // sign-extended
                const bool finite = !xsimd::any(lo_bits > bits_batch(most_negative_finite_bits<bfloat16_t>))
                                    && !xsimd::any(hi_bits > bits_batch(largest_finite_bits<bfloat16_t>));
                const auto widen = [](const bits_batch& b) { return xsimd::bitwise_cast<float_batch>(b << 16); };
                return usable_tile_params<S>(widen(lo_bits), widen(hi_bits), finite, bp);
            }
            else if constexpr (std::same_as<T, bfloat16_t> && NB % 2 == 0)
            {
                // bf16 groups of NB width values are NB / 2 batches of raw bits: their ordered
                // int16 keys (ordered_key) are reduced as int16 pairs by the trees and widened
                // once per tile; the tile is finite when its keys stay within those of +-FLT_MAX.
                using half_batch = xsimd::batch<std::int16_t, arch_type>;
                const auto keys = [&](std::size_t j, std::size_t k) {
                    const auto* p = reinterpret_cast<const std::int16_t*>(x + j * group) + 2 * k * width;
                    return xsimd::bitwise_cast<float_batch>(ordered_key(half_batch::load_unaligned(p)));
                };
                const auto [min_keys, max_keys] = reduce_tile_twice<min_int16_op, max_int16_op>([&](std::size_t j) {
                    if constexpr (NB == 2)
                    {
                        if (j >= count) return float_batch(0.0f);  // unused lanes: zero orbits (key 0 = +0)
                        return keys(j, 0);
                    }
                    else
                    {
                        if (j >= count) return std::pair{float_batch(0.0f), float_batch(0.0f)};
                        float_batch lo = keys(j, 0);
                        float_batch hi = lo;
                        for (std::size_t k = 1; k < NB / 2; ++k)
                        {
                            const float_batch b = keys(j, k);
                            lo = min_int16_op{}(lo, b);
                            hi = max_int16_op{}(hi, b);
                        }
                        return std::pair{lo, hi};
                    }
                });
                // each int32 lane holds a pair of int16 keys of one group
                const bits_batch kmin = min_int16_op::fold_pairs(min_keys);
                const bits_batch kmax = max_int16_op::fold_pairs(max_keys);
                // keys of +-FLT_MAX (bf16 0x7f7f and 0xff7f): 0x7f7f and 0xff7f ^ 0x7fff = -0x7f80
                constexpr int largest = largest_finite_bits<bfloat16_t>;
                if (xsimd::any(kmax > bits_batch(largest)) || xsimd::any(kmin < bits_batch(-largest - 1))) return false;
                const auto widen = [](const bits_batch& k) {  // back to bf16 bits, then to float32
                    return xsimd::bitwise_cast<float_batch>(ordered_key(k) << 16);
                };
                return usable_tile_params<S>(widen(kmin), widen(kmax), true, bp);
            }
            else if constexpr (is_builtin_scheme<S> && has_native_int_max)
            {
                // The bf16 argument above on the float32 bits: lo = min(min, 0) is the largest
                // bits as uint32 (the most negative value, or a value >= +0 where there is none),
                // hi = max(max, 0) the largest as int32 (the largest value >= +0, or a negative
                // value where there is none). A NaN or an infinity lies above -FLT_MAX
                // (0xff7fffff) as uint32 or above FLT_MAX (0x7f7fffff) as int32, by its sign.
                // Integer maxima need no NaN test per pair of batches, as the float ones below do.
                const auto [lo_max, hi_max] = reduce_tile_twice<max_ubits_op, max_bits_op>([&](std::size_t j) {
                    if (j >= count) return std::pair{float_batch(0.0f), float_batch(0.0f)};  // unused lanes: zero orbits
                    const T* p = x + j * group;
                    float_batch lo = in_register(load(p, arch_type{}));
                    float_batch hi = lo;
                    for (std::size_t k = 1; k < NB; ++k)
                    {
                        const float_batch b = in_register(load(p + k * width, arch_type{}));
                        lo = max_ubits_op{}(lo, b);
                        hi = max_bits_op{}(hi, b);
                    }
                    return std::pair{lo, hi};
                });
                using ubits_batch = xsimd::batch<std::uint32_t, arch_type>;
                const bool finite = !xsimd::any(xsimd::bitwise_cast<ubits_batch>(lo_max) > ubits_batch(most_negative_finite_bits<float>)) &&
                                    !xsimd::any(xsimd::bitwise_cast<bits_batch>(hi_max) > bits_batch(largest_finite_bits<float>));
                return usable_tile_params<S>(lo_max, hi_max, finite, bp);
            }
            else
            {
                // non-finite values as in min_max_span: a NaN in a nan_guard fed each group's
                // batches in pairs, an infinity in the statistics. Each group is reduced as it is
                // loaded (few live registers); a whole tile, the usual case, is reduced without
                // a test per group (Full).
                const auto reduce_tile = [&]<bool Full>(std::bool_constant<Full>) -> bool {
                    lane_tree<min_op, arch_type> min_tree;
                    lane_tree<max_op, arch_type> max_tree;
                    nan_guard<arch_type> nan;
                    float_batch lo[4];
                    float_batch hi[4];
                    for (std::size_t j0 = 0; j0 < width; j0 += 4)
                    {
                        for (std::size_t i = 0; i < 4; ++i)
                        {
                            if (!Full && j0 + i >= count)  // unused lanes: zero orbits
                            {
                                lo[i] = hi[i] = float_batch(0.0f);
                                continue;
                            }
                            const T* p = x + (j0 + i) * group;
                            float_batch b[NB];
                            for (std::size_t k = 0; k < NB; ++k) b[k] = in_register(load(p + k * width, arch_type{}));
                            for (std::size_t k = 0; k < NB; k += 2) nan.add(b[k], b[k + 1 < NB ? k + 1 : k]);
                            lo[i] = b[0];
                            hi[i] = b[0];
                            for (std::size_t k = 1; k < NB; ++k)
                            {
                                lo[i] = xsimd::min(lo[i], b[k]);
                                hi[i] = xsimd::max(hi[i], b[k]);
                            }
                        }
                        min_tree.push4(lo[0], lo[1], lo[2], lo[3], min_op{});
                        max_tree.push4(hi[0], hi[1], hi[2], hi[3], max_op{});
                    }
                    const float_batch mn = min_tree.finish(min_op{});
                    const float_batch mx = max_tree.finish(max_op{});
                    // no early return on a NaN: the compiler would then move the reduction
                    // after the test and hold the whole tile in registers (spilled) until then
                    const bool finite = !nan.any() && !xsimd::any(xsimd::isinf(mn)) && !xsimd::any(xsimd::isinf(mx));
                    return usable_tile_params<S>(mn, mx, finite, bp);
                };
                return count == width ? reduce_tile(std::true_type{}) : reduce_tile(std::false_type{});
            }
        }

        /// Stores the parameters of a tile of `count` groups and encodes it (multiply_inverse).
        /// Stream: pairs of groups (NB == 2) or whole groups (NB % 4 == 0) are written with streaming
        /// stores. Packed: the codes go to an L1 buffer that clamp_pack_int4 clamps as it packs
        /// them (no clamp here). @pre Stream: out is 64-byte aligned, narrows_in_quads<NB>, !Packed and
        /// the codes need no clamp after the narrow.
        /// Never inlined: whether GCC inlined it into the tile loop depended on how many kernels
        /// the unit held, and so did the throughput of the same kernel. Out of line, the
        /// per_group kernels were as fast or faster in L2, and from memory (bench/compare) all
        /// but symmetric int4 from f32 (9 % slower there, within that tool's spread).
        template <rounding_policy R, class S, std::size_t NB, bool Stream, bool Packed, weight_element T>
        [[gnu::noinline]] inline void encode_tile(const T* x, std::size_t count, const batch_params& bp, float* scales, std::int32_t* zero_points,
                                std::int8_t* out) noexcept
        {
            static_assert(!Stream || (narrows_in_quads<NB> && !clamps_codes<S> && !Packed), "streamed codes are final as stored");
            constexpr std::size_t group = NB * width;
            alignas(64) float inv[width];
            bp.inv.store_aligned(inv);
            alignas(64) std::int32_t zp[width];
            if constexpr (S::has_zero_point) bp.zero_point.store_aligned(zp);
            if (count == width)
            {
                bp.scale.store_unaligned(scales);
                if constexpr (S::has_zero_point) bp.zero_point.store_unaligned(zero_points);
            }
            else
            {
                alignas(64) float sc[width];
                bp.scale.store_aligned(sc);
                std::copy_n(sc, count, scales);
                if constexpr (S::has_zero_point) std::copy_n(zp, count, zero_points);
            }
            // One group's encoder: its inverse scale, clamp bounds [qmin - zp, qmax - zp] (only
            // where the scheme needs the clamp) and zero point (only where it has one).
            struct group_encoder
            {
                float_batch inv;
                float_batch lo;
                float_batch hi;
                int_batch zp;

                int_batch code(const float_batch& x) const noexcept { return to_code<R, needs_clamp<S>>(x * inv, lo, hi); }

                int_batch operator()(const float_batch& x) const noexcept
                {
                    if constexpr (S::has_zero_point) return code(x) + zp;
                    else return code(x);
                }
            };
            const auto encoder_of = [&](std::size_t g) {
                group_encoder e{float_batch(inv[g]), float_batch(float(S::qmin)), float_batch(float(S::qmax)), int_batch(0)};
                if constexpr (S::has_zero_point)
                {
                    e.zp = int_batch(zp[g]);
                    if constexpr (needs_clamp<S>)
                    {
                        e.lo = float_batch(float(S::qmin - zp[g]));
                        e.hi = float_batch(float(S::qmax - zp[g]));
                    }
                }
                return e;
            };
            std::size_t j = 0;
            // Four batches are narrowed and stored together (two pairs); a builtin scheme's zero
            // points (within int8) are added to the 16-bit words of the narrow.
            constexpr bool ordered = pack_ordered_pairs<T, arch_type>;
            constexpr bool words = S::has_zero_point && is_builtin_scheme<S>;
            alignas(64) std::int32_t zp_words[width];
            if constexpr (words && narrows_in_quads<NB>) zero_point_words(bp.zero_point).store_aligned(zp_words);
            // the codes of four batches at p, encoded by e0 (first pair) and e1 (second pair), at o
            const auto quad = [&](const T* p, std::size_t g0, std::size_t g1, std::int8_t* o) {
                const group_encoder e0 = encoder_of(g0);
                const group_encoder e1 = encoder_of(g1);
                const auto [a, b] = load_pair(p, arch_type{});
                const auto [c, d] = load_pair(p + 2 * width, arch_type{});
                if constexpr (words)
                {
                    store_int8_x4<ordered, true, Stream>(e0.code(a), e0.code(b), e1.code(c), e1.code(d), o, arch_type{}, int_batch(zp_words[g0]),
                                                         int_batch(zp_words[g1]));
                }
                else
                {
                    store_int8_x4<ordered, false, Stream>(e0(a), e0(b), e1(c), e1(d), o, arch_type{});
                }
            };
            if constexpr (NB == 2)
            {
                // two groups = two pairs
                for (; j + 2 <= count; j += 2) quad(x + j * group, j, j + 1, out + j * group);
            }
            else if constexpr (NB % 4 == 0)
            {
                // one group = NB / 4 quads
                for (; j < count; ++j)
                {
                    for (std::size_t k = 0; k < NB; k += 4) quad(x + j * group + k * width, j, j, out + j * group + k * width);
                }
            }
            for (; j < count; ++j)
            {
                const T* p = x + j * group;
                const group_encoder e = encoder_of(j);
                for (std::size_t k = 0; k < NB; ++k) store_int8(e(load(p + k * width, arch_type{})), out + j * group + k * width, arch_type{});
            }
            if constexpr (clamps_codes<S> && !Packed) clamp_codes(out, count * group, S::qmin, S::qmax);  // from L1
        }

        /// Packed: out receives the codes two to a byte (pack_int4); each tile is encoded into
        /// an L1 buffer, then clamped and packed from there (clamp_pack_int4). Stream: the codes
        /// (packed: the packed bytes) are written with streaming stores (see quantize_tiles).
        template <rounding_policy R, class S, std::size_t NB, bool Packed, bool Stream, weight_element T, class OnGroup>
        inline void tile_loop(const T* x, std::size_t n, float* scales, std::int32_t* zero_points, std::int8_t* out,
                              OnGroup& on_group)
        {
            constexpr std::size_t group = NB * width;
            const std::size_t whole = n / group;
            alignas(64) std::int8_t tile_codes[Packed ? width * group : 1];
            // Software pipelined: the parameters of tile t + 1 are computed before tile t is
            // encoded, so their latency (a reduction tree, two divisions) overlaps the encoding.
            batch_params next;
            bool next_ok = false;
            // tile t + ahead is prefetched while tile t is encoded (tile t + 1 is being reduced)
            const std::size_t ahead = 1 + prefetch_rows_ahead(width * group * sizeof(T));
            if (whole > 0) next_ok = compute_tile_params<S, NB>(x, std::min(width, whole), next);
            for (std::size_t g0 = 0; g0 < whole; g0 += width)
            {
                const std::size_t count = std::min(width, whole - g0);
                const std::size_t c0 = g0 * group;
                const batch_params cur = next;
                const bool cur_ok = next_ok;
                if (g0 + (ahead + 1) * width <= whole)
                {
                    prefetch(x + (g0 + ahead * width) * group, width * group * sizeof(T));
                    if constexpr (sizeof(T) == 2 && !Stream)
                    {
                        prefetch<true>(out + (g0 + ahead * width) * group / (Packed ? 2 : 1), width * group / (Packed ? 2 : 1));
                    }
                }
                if (g0 + width < whole) next_ok = compute_tile_params<S, NB>(x + c0 + width * group, std::min(width, whole - g0 - width), next);
                std::int8_t* codes = Packed ? tile_codes : out + c0;
                if (cur_ok && count == width)
                {
                    encode_tile<R, S, NB, Stream && !Packed, Packed>(x + c0, width, cur, scales + g0, zero_points ? zero_points + g0 : nullptr, codes);
                }
                else if (cur_ok)
                {
                    encode_tile<R, S, NB, Stream && !Packed, Packed>(x + c0, count, cur, scales + g0, zero_points ? zero_points + g0 : nullptr, codes);
                }
                else
                {
                    quantize_groups<R, !S::has_zero_point>(x + c0, count * group, group, codes, offset_groups(on_group, g0));
                }
                if constexpr (Packed)
                {
                    // the slow path's codes are the reference's, already in range; clamping them again changes nothing
                    clamp_pack_int4<clamps_codes<S>, Stream>(tile_codes, count * group, S::qmin, S::qmax, out + c0 / 2, arch_type{});
                }
            }
            if (!Packed && whole * group < n)  // a ragged last group
            {
                const std::size_t c0 = whole * group;
                quantize_groups<R, !S::has_zero_point>(x + c0, n - c0, group, out + c0, offset_groups(on_group, whole));
            }
        }

        /// Calls f.template operator()<NB>() where group is NB batches of a tile shape (NB = 1, 2,
        /// 4, 8 or 16) and returns true; false for any other group size.
        template <class F>
        inline bool with_tile_shape(std::size_t group, F&& f)
        {
            const auto take = [&]<std::size_t NB>() {
                if (group != NB * width) return false;
                f.template operator()<NB>();
                return true;
            };
            return take.template operator()<1>() || take.template operator()<2>() || take.template operator()<4>() ||
                   take.template operator()<8>() || take.template operator()<16>();
        }

        /// The tile loop; Stream: see quantize_groups_with_params, taken only where the tiles can
        /// stream (out 64-byte aligned, and int8 codes of groups narrowed in quads (narrows_in_quads), no
        /// code clamp, or packed codes: a tile packs to whole lines), except 16-bit inputs on
        /// AVX2: their tiles ran 2-6 % slower streamed than stored after a write prefetch
        /// (bench/compare, seed shape, per_group32 int8 and int4, two runs), while f32 tiles
        /// ran 3-8 % faster streamed.
        template <rounding_policy R, class S, std::size_t NB, bool Packed, bool Stream, weight_element T, class OnGroup>
        inline void quantize_tiles(const T* x, std::size_t n, float* scales, std::int32_t* zero_points, std::int8_t* out,
                                   OnGroup& on_group)
        {
            constexpr bool streams_type = sizeof(T) == 4 || !std::derived_from<arch_type, xsimd::avx2>;
            constexpr bool can_stream = has_streaming_stores && streams_type && (Packed || (narrows_in_quads<NB> && !clamps_codes<S>));
            if constexpr (Stream && can_stream)
            {
                if (reinterpret_cast<std::uintptr_t>(out) % 64 == 0) return tile_loop<R, S, NB, Packed, true>(x, n, scales, zero_points, out, on_group);
            }
            tile_loop<R, S, NB, Packed, false>(x, n, scales, zero_points, out, on_group);
        }
    }

    /// @brief quantize_groups for a scheme S whose parameters are stored as computed (float32
    ///        scales, multiply_inverse scaling): groups of 1, 2, 4, 8 or 16 `width` values are taken
    ///        up to `width` groups at a time, their parameters computed together in vectors and
    ///        written to scales[g] (and zero_points[g] when S has one); other group sizes, a
    ///        ragged last group, and a tile holding a non-finite value or an infinite inverse
    ///        scale go through
    ///        `on_group` exactly as in quantize_groups. Codes, scales and zero points equal those
    ///        of quantize_groups with on_group storing S::make_params.
    /// @pre group > 0, n > 0, scales (and zero_points when S has one) hold ceil(n / group) orbits.
    /// @tparam Stream write codes with streaming stores where the tiles can (see
    ///         quantize_span); the caller calls store_fence() before the codes are read elsewhere.
    template <rounding_policy R, scheme_policy S, bool Stream = false, weight_element T, class OnGroup>
    void quantize_groups_with_params(const T* x, std::size_t n, std::size_t group, float* scales, std::int32_t* zero_points,
                                     std::int8_t* out, OnGroup&& on_group)
    {
        if (detail::with_tile_shape(group, [&]<std::size_t NB>() {
                detail::quantize_tiles<R, S, NB, false, Stream>(x, n, scales, zero_points, out, on_group);
            }))
        {
            return;
        }
        quantize_groups<R, !S::has_zero_point>(x, n, group, out, offset_groups(on_group, 0));
    }

    /// @brief quantize_groups_with_params with the codes packed two to a byte as pack_int4
    ///        lays them out: out receives n / 2 bytes, equal to pack_int4 of the int8 codes.
    ///        Tiles are packed from L1 as they are encoded (no pass over a buffer of codes).
    /// @pre S::bits == 4, n % group == 0, n even, and as quantize_groups_with_params.
    /// @tparam Stream write the packed codes of whole tiles with streaming stores where out is
    ///         64-byte aligned (as quantize_groups_with_params).
    template <rounding_policy R, scheme_policy S, bool Stream = false, weight_element T, class OnGroup>
    void quantize_groups_with_params_packed(const T* x, std::size_t n, std::size_t group, float* scales, std::int32_t* zero_points,
                                            std::int8_t* out, OnGroup&& on_group)
    {
        static_assert(S::bits == 4, "packed codes are int4");
        if (detail::with_tile_shape(group, [&]<std::size_t NB>() {
                detail::quantize_tiles<R, S, NB, true, Stream>(x, n, scales, zero_points, out, on_group);
            }))
        {
            return;
        }
        // other group sizes: whole groups, an even number of codes at a time, through a buffer
        const std::size_t chunk = std::max<std::size_t>(1, 4096 / (2 * group)) * 2 * group;
        std::vector<std::int8_t> codes(std::min(chunk, n));
        for (std::size_t c0 = 0; c0 < n; c0 += chunk)
        {
            const std::size_t m = std::min(chunk, n - c0);
            quantize_groups<R, !S::has_zero_point>(x + c0, m, group, codes.data(), offset_groups(on_group, c0 / group));
            pack_int4(codes.data(), m, out + c0 / 2);
        }
    }
}
