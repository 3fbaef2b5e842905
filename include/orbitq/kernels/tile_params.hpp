/// @file tile_params.hpp
/// @brief Tiles of groups, first half: the statistics of `width` whole groups reduced into one
///        batch (lane j = group j) and the scheme's parameters of all of them computed in
///        vectors.
#pragma once

#include "orbitq/kernels/groups.hpp"

namespace orbitq::kernels::simd
{
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
                // as detail::with_inverse on an amax scale (>= 0 or NaN): (0, 0) unless positive
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

        // The tile statistics of compute_tile_params, one strategy each, always inlined into it
        // (each is one branch of its dispatch). x holds `count` <= width groups of NB batches.

        /// Builtin symmetric schemes: max |x| of each group on the magnitude bits.
        template <class S, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline bool tile_params_abs_max(const T* x, std::size_t count, batch_params& bp) noexcept
        {
            constexpr std::size_t group = NB * width;
            using bits_batch = xsimd::batch<std::int32_t, arch_type>;
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

        /// Builtin asymmetric schemes on bf16 (NB even): min(min, 0) and max(max, 0) from the raw bits.
        template <class S, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline bool tile_params_zero_range_bf16(const T* x, std::size_t count, batch_params& bp) noexcept
        {
            constexpr std::size_t group = NB * width;
            using bits_batch = xsimd::batch<std::int32_t, arch_type>;
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

        /// Other schemes on bf16 (NB even): min and max through ordered int16 keys.
        template <class S, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline bool tile_params_ordered_bf16(const T* x, std::size_t count, batch_params& bp) noexcept
        {
            constexpr std::size_t group = NB * width;
            using bits_batch = xsimd::batch<std::int32_t, arch_type>;
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

        /// Builtin asymmetric schemes with native integer max: min(min, 0) and max(max, 0) from the float32 bits.
        template <class S, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline bool tile_params_zero_range(const T* x, std::size_t count, batch_params& bp) noexcept
        {
            constexpr std::size_t group = NB * width;
            using bits_batch = xsimd::batch<std::int32_t, arch_type>;
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

        /// Every other case: min and max as floats, NaN through a nan_guard.
        template <class S, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline bool tile_params_min_max(const T* x, std::size_t count, batch_params& bp) noexcept
        {
            constexpr std::size_t group = NB * width;
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

        /// The parameters of a tile of `count` <= width groups of NB batches, into bp; false when
        /// the fast path may not use them: a value is not finite or an inverse scale is infinite
        /// (the caller then takes the tile group by group, which reports an error in order).
        /// Always inlined into the tile loop, so bp stays in registers until encode_tile's call:
        /// GCC 12 left it out of line in some units (the bench binary) and not in others.
        template <class S, std::size_t NB, weight_element T>
        [[gnu::always_inline]] inline bool compute_tile_params(const T* x, std::size_t count, batch_params& bp) noexcept
        {
            constexpr bool bf16_pairs = std::same_as<T, bfloat16_t> && NB % 2 == 0;
            if constexpr (!S::has_zero_point && is_builtin_scheme<S>) return tile_params_abs_max<S, NB>(x, count, bp);
            else if constexpr (bf16_pairs && is_builtin_scheme<S>) return tile_params_zero_range_bf16<S, NB>(x, count, bp);
            else if constexpr (bf16_pairs) return tile_params_ordered_bf16<S, NB>(x, count, bp);
            else if constexpr (is_builtin_scheme<S> && has_native_int_max) return tile_params_zero_range<S, NB>(x, count, bp);
            else return tile_params_min_max<S, NB>(x, count, bp);
        }
    }
}
