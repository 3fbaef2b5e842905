/// @file tiles.hpp
/// @brief Tiles of groups, second half: encoding a tile from L1 with its vector parameters,
///        the tile loop (software pipelined, streamed where it pays), and the public
///        quantize_groups_with_params / _packed.
#pragma once

#include "orbitq/kernels/tile_params.hpp"

namespace orbitq::kernels::simd
{
    namespace detail
    {
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
