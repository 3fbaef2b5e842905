/// @file isa.hpp
/// @brief The instruction-set layer of the SIMD kernels: the build's arch and batch types,
///        streaming stores, loads that widen bf16/f16 to float32, pairs of batches, the int32
///        to int8 narrows, horizontal min/max and non-finite lanes, each with a generic
///        fallback so that any arch xsimd supports compiles and stays exact.
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

    /// @brief Asks for the cache lines of [first, last) to be loaded (a hint; no effect elsewhere).
    inline void prefetch_range(const void* first, const void* last) noexcept
    {
#if defined(__GNUC__)
        for (auto p = static_cast<const char*>(first); p < static_cast<const char*>(last); p += 64) __builtin_prefetch(p);
#else
        (void)first;
        (void)last;
#endif
    }

    /// @brief Asks for the first lines of each row in [first, last) (rows `stride` bytes apart): enough
    /// to start the hardware prefetcher on every row stream of the next tile, without spending a
    /// load slot per line when the data is already cached.
    inline void prefetch_row_heads(const std::int8_t* first, const std::int8_t* last, std::ptrdiff_t stride) noexcept
    {
        constexpr std::ptrdiff_t head = 4 * 64;
        if (stride <= head) return prefetch_range(first, last);
        for (const std::int8_t* p = first; p < last; p += stride) prefetch_range(p, p + head);
    }

    namespace detail
    {
        /// Whether the target has a fused multiply-add, so that mul_add rounds once (else twice:
        /// x86-64 baseline SSE2).
#if defined(__FMA__) || defined(__AVX512F__) || defined(__aarch64__)
        inline constexpr bool fused_multiply_add = true;
#else
        inline constexpr bool fused_multiply_add = false;
#endif

        /// a * b + c for scalars, rounded as the batch mul_add below rounds on this target
        /// (std::fma where it fuses), so scalar references and vector kernels agree to the bit
        /// whatever the compiler's contraction of a * b + c.
        template <std::floating_point V>
        inline V mul_add(V a, V b, V c) noexcept
        {
            if constexpr (fused_multiply_add) return std::fma(a, b, c);
            else return a * b + c;
        }

        /// a * b + c for batches, rounded once where the target has a fused multiply-add (its
        /// instruction: xsimd 8's fma on AVX-512 is a multiply and an add, which the compiler
        /// contracts or not depending on the optimization level) and twice where it has not (a
        /// multiply and an add, nothing to contract them into). Every kernel whose results must not
        /// depend on the compiler's choices (bit-identical paths, error bounds) uses it.
        template <class V, class A>
        inline xsimd::batch<V, A> mul_add(const xsimd::batch<V, A>& a, const xsimd::batch<V, A>& b, const xsimd::batch<V, A>& c) noexcept
        {
#if XSIMD_WITH_AVX512F
            if constexpr (std::derived_from<A, xsimd::avx512f>)
            {
                if constexpr (std::same_as<V, float>) return _mm512_fmadd_ps(a, b, c);
                else return _mm512_fmadd_pd(a, b, c);
            }
            else
#endif
#if defined(__FMA__) && XSIMD_WITH_AVX
            if constexpr (std::derived_from<A, xsimd::avx>)
            {
                if constexpr (std::same_as<V, float>) return _mm256_fmadd_ps(a, b, c);
                else return _mm256_fmadd_pd(a, b, c);
            }
            else
#endif
#if defined(__FMA__) && XSIMD_WITH_SSE2
            if constexpr (std::derived_from<A, xsimd::sse2>)
            {
                if constexpr (std::same_as<V, float>) return _mm_fmadd_ps(a, b, c);
                else return _mm_fmadd_pd(a, b, c);
            }
            else
#endif
#if defined(__aarch64__)
            if constexpr (std::derived_from<A, xsimd::neon64>)
            {
                return xsimd::fma(a, b, c);  // vfmaq_f32 / vfmaq_f64
            }
            else
#endif
            {
                static_assert(!fused_multiply_add || sizeof(V) == 0, "a fused multiply-add target needs its instruction here");
                return a * b + c;
            }
        }

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

        // ------------------------------------------------------------------ float -> double

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
#if XSIMD_WITH_SSE2
            if constexpr (FB::size == 4 && std::derived_from<typename FB::arch_type, xsimd::sse2>)
            {
                const __m128 v = f;
                lo = _mm_cvtps_pd(v);
                hi = _mm_cvtps_pd(_mm_movehl_ps(v, v));
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
                p = mul_add(a, fbatch<A>(0.0f), p);
                p = mul_add(b, fbatch<A>(0.0f), p);
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

    }
}
