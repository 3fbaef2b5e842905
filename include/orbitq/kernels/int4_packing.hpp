/// @file int4_packing.hpp
/// @brief int4 codes two to a byte (code 2k in the low nibble), from a buffer or clamped and
///        packed as they leave a tile.
#pragma once

#include "orbitq/kernels/statistics_spans.hpp"

namespace orbitq::kernels::simd
{
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
        /// Packs the low nibbles of an int32 batch's lanes as pack_int4 does (lane 2k in the low
        /// nibble of out[k], lane 2k + 1 in the high one) into size / 2 bytes at out.
        template <class A>
        inline void store_int4(const ibatch<A>& v, std::int8_t* out, A) noexcept
        {
            alignas(64) std::int32_t lanes[ibatch<A>::size];
            v.store_aligned(lanes);
            for (std::size_t k = 0; k < ibatch<A>::size / 2; ++k)
            {
                out[k] = static_cast<std::int8_t>((lanes[2 * k] & 0x0f) | ((lanes[2 * k + 1] & 0x0f) << 4));
            }
        }

#if XSIMD_WITH_AVX512F
        /// AVX-512: in each 64-bit word (lanes 2k, 2k + 1) the low nibble of the upper lane moves
        /// to bits 4-7 (one shift, one bit select) and the words narrow to bytes.
        template <class A>
            requires std::derived_from<A, xsimd::avx512f>
        inline void store_int4(const ibatch<A>& v, std::int8_t* out, A) noexcept
        {
            const __m512i b = _mm512_ternarylogic_epi64(_mm512_set1_epi64(0x0f), v, _mm512_srli_epi64(v, 28), 0xca);
            _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm512_cvtepi64_epi8(b));
        }
#endif
#if XSIMD_WITH_AVX2
        /// AVX2: the same 64-bit words, their low bytes gathered into 4 bytes.
        template <class A>
            requires std::derived_from<A, xsimd::avx2>
        inline void store_int4(const ibatch<A>& v, std::int8_t* out, A) noexcept
        {
            const __m256i b = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi64x(0x0f)),
                                              _mm256_and_si256(_mm256_srli_epi64(v, 28), _mm256_set1_epi64x(0xf0)));
            // bytes 0 and 8 of each 128-bit lane to its bytes 0 and 1
            const __m256i g = _mm256_shuffle_epi8(b, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                      0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
            const std::int32_t bytes = _mm_cvtsi128_si32(_mm_unpacklo_epi16(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1)));
            std::memcpy(out, &bytes, sizeof(bytes));
        }
#endif

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
}
