/// @file quantize.hpp
/// @brief The generic quantization driver, the quantized_tensor it produces, and dequantize.
///
/// `params[o] = finalize(reduce(orbit o))`, then `code = encode(x, params[o])` for every x of o.
/// Granularity, scheme and rounding are template policies (see policy/); `quantize(view, spec)`
/// dispatches a run-time quant_spec to the matching instantiation (policy/dispatch.hpp).
///
/// Passes over memory: per_channel and per_group read each row once (statistics, then encode
/// while the row is in L1); per_tensor reads the tensor twice (the row statistics, combined into
/// the tensor statistic, then the encode pass).
///
/// The float-code schemes (fp8_e4m3, mxfp4, nvfp4) have their own driver (quantize_float.hpp),
/// which the run-time quantize takes for them. The layout of the codes: quantized_tensor.hpp.
#pragma once

#include "orbitq/algebra/orbits.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/kernels/reference.hpp"
#include "orbitq/kernels/scale_search.hpp"
#include "orbitq/kernels/scale_search_groups.hpp"
#include "orbitq/kernels/simd.hpp"
#include "orbitq/policy/dispatch.hpp"
#include "orbitq/policy/granularity.hpp"
#include "orbitq/policy/quant_spec.hpp"
#include "orbitq/policy/rounding.hpp"
#include "orbitq/policy/scheme.hpp"
#include "orbitq/quantize_float.hpp"
#include "orbitq/quantized_tensor.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace orbitq
{
    namespace detail
    {
        /// The group callback of the driver's fused group passes, one named type per driver
        /// instance: group g, counted from the first group of row `first_row`, gets its
        /// parameters from `record` (by orbit); a non-finite group is reported with its row.
        template <weight_element T, class Record>
        struct group_recorder
        {
            const matrix_view<T>* w;
            const Record* record;
            std::size_t first_row;
            std::size_t groups_per_row;
            encode_params operator()(std::size_t g, const min_max& stat, bool finite) const
            {
                if (!finite) throw_non_finite(*w, first_row + g / groups_per_row);
                return (*record)(first_row * groups_per_row + g, stat);
            }
        };

        template <weight_element T>
        void check_input(const matrix_view<T>& w)
        {
            if (w.rows == 0 || w.cols == 0) throw error(error_kind::empty_tensor, "tensor '" + w.name + "' is empty");
            if (w.data == nullptr) throw error(error_kind::invalid_argument, "tensor '" + w.name + "' has no data");
            if (w.stride < w.cols) throw error(error_kind::invalid_argument, "tensor '" + w.name + "': stride < cols");
        }

        /// spec.importance: none, or one finite, non-negative weight per column of w with the mse
        /// search (which alone reads it).
        template <weight_element T>
        void check_importance(const matrix_view<T>& w, const quant_spec& spec)
        {
            if (spec.importance.empty()) return;
            if (spec.scales != scale_search::mse)
            {
                throw error(error_kind::invalid_argument, "tensor '" + w.name + "': a column importance weights the mse scale search; amax scales ignore it");
            }
            if (spec.importance.size != w.cols)
            {
                throw error(error_kind::shape_mismatch, "tensor '" + w.name + "' has " + std::to_string(w.cols) + " columns, its importance "
                                                            + std::to_string(spec.importance.size) + " weights");
            }
            const auto a = spec.importance.values();
            if (const std::size_t c = first_invalid_importance(a); c < a.size())
            {
                throw error(error_kind::invalid_argument, "tensor '" + w.name + "': importance of column " + std::to_string(c) + " is "
                                                              + std::to_string(a[c]) + "; weights must be finite and >= 0");
            }
        }

        /// spec.signed_scales: with the mse search of the symmetric scheme only.
        inline void check_signed_scales(const std::string& name, const quant_spec& spec)
        {
            if (!spec.signed_scales) return;
            if (spec.scales != scale_search::mse || spec.scheme != scheme_kind::symmetric)
            {
                throw error(error_kind::invalid_argument,
                            "tensor '" + name + "': signed scales are chosen by the mse search of the symmetric scheme (" + spec.describe() + ")");
            }
        }

        template <class Q, weight_element T>
        void check_spec(const matrix_view<T>& w, const quant_spec& spec)
        {
            check_input(w);
            check_importance(w, spec);
            check_signed_scales(w.name, spec);
            if (spec.bits != Q::bits) throw error(error_kind::invalid_argument, "spec bits disagree with the scheme");
        }
    }

    namespace detail
    {
        /// quantize_into's scale_search::mse path (kernels/scale_search.hpp): q's shape, layout
        /// and storage are set. Each orbit: its statistic, the search (two passes over its
        /// values from L1), its codes. A per-tensor orbit sums its rows alone and combines them
        /// in row order, so the result does not depend on the thread count. With
        /// spec.importance, every orbit goes through search_span with its columns' weights.
        template <class S, class R, weight_element T>
        void quantize_searched_with(const matrix_view<T>& w, quantized_tensor& q, const quant_spec& spec, unsigned threads)
        {
            if (spec.mode != scale_application::multiply_inverse)
            {
                throw error(error_kind::invalid_argument, "scale search (mse) multiplies by the inverse scale; scale_application::divide is not supported with it");
            }
            const orbit_layout& L = q.layout;
            const auto keep_amax = [&](const min_max& stat, quant_params& stored) {
                return encode_orbit<S>(spec, stat, w.name, [&](const quant_params& st) { stored = st; });
            };
            const auto store = [&](std::size_t o, const quant_params& p) {
                q.scales[o] = p.scale;
                if constexpr (S::has_zero_point) q.zero_points[o] = p.zero_point;
            };
            // one instance per scheme and rounding: the granularity is the layout's, at run time
            const bool tensor_wide = L.tensor_wide;
            const bool weighted = !spec.importance.empty();
            const float* const importance = spec.importance.data.get();
            mse::choice tensor_choice{};
            if (tensor_wide)
            {
                const min_max stat = compute_statistics(w, w.cols, threads).tensor;
                quant_params stored;
                const encode_params amax = keep_amax(stat, stored);
                // one orbit: the rows' sums, each alone, combined in row order
                const auto over_rows = [&]<class V, std::size_t K>(std::type_identity<V>, const std::array<encode_params, K>& c) {
                    std::vector<candidate_sums<K, V>> rows(w.rows);
                    const auto row_sums = [&](auto a) {
                        parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                            for (std::size_t r = first; r < last; ++r)
                            {
                                if constexpr (K % kernels::simd::width == 0) rows[r] = kernels::simd::candidate_sums_span<V, R>(w.row(r), w.cols, c, a);
                                else rows[r] = kernels::reference::candidate_sums_span<V, R>(w.row(r), w.cols, c, a);
                            }
                        });
                    };
                    if (weighted) row_sums(kernels::element_weights{importance});
                    else row_sums(kernels::unit_weights{});
                    candidate_sums<K, V> total = candidate_sums<K, V>::identity();
                    for (const auto& s : rows) total = combine(total, s);
                    return total;
                };
                using V = mse::search_value<S>;
                const auto searched = [&](const auto& c) { return over_rows(std::type_identity<V>{}, c); };
                const auto exact = [&](const auto& c) { return over_rows(std::type_identity<double>{}, c); };
                tensor_choice = mse::search<S>(stat, amax, stored, spec, searched, searched, exact);
                store(0, tensor_choice.stored);
            }
            if constexpr (!S::has_zero_point)
            {
                // symmetric orbits of equal length (not the tensor, no ragged group): searched a
                // float batch of orbits at once, in the rows' order of orbits
                if (!tensor_wide && !weighted && w.cols % L.group == 0)
                {
                    parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                        constexpr std::size_t W = mse::lanes;
                        const std::size_t n = L.group, per_row = L.groups_per_row, total = (last - first) * per_row;
                        std::vector<std::int8_t> codes(S::bits == 4 ? (last - first) * w.cols : 0);
                        mse::lane_buffers buf;
                        for (std::size_t o0 = 0; o0 < total; o0 += W)
                        {
                            const std::size_t count = std::min(W, total - o0);
                            const T* p[W];
                            mse::choice chosen[W];
                            for (std::size_t l = 0; l < W; ++l)
                            {
                                const std::size_t o = o0 + (l < count ? l : 0);  // spare lanes repeat the first orbit
                                p[l] = w.row(first + o / per_row) + (o % per_row) * n;
                            }
                            const auto amax_of = [&](std::size_t l, const min_max& stat, bool finite) {
                                if (!finite) throw_non_finite(w, first + (o0 + l) / per_row);
                                quant_params stored;
                                const encode_params e = keep_amax(stat, stored);
                                return std::pair{e, stored};
                            };
                            mse::search_lanes<S, R>(p, n, count, amax_of, spec, buf, chosen);
                            for (std::size_t l = 0; l < count; ++l)
                            {
                                const std::size_t o = o0 + l, r = first + o / per_row, c0 = (o % per_row) * n;
                                store(L.orbit(r, o % per_row), chosen[l].stored);
                                std::int8_t* out = S::bits == 8 ? q.codes.data() + r * w.cols + c0 : codes.data() + (r - first) * w.cols + c0;
                                kernels::simd::quantize_span<R, false, false>(p[l], n, chosen[l].encode, out);
                            }
                        }
                        if constexpr (S::bits == 4)
                        {
                            for (std::size_t r = first; r < last; ++r)
                            {
                                kernels::simd::pack_int4(codes.data() + (r - first) * w.cols, w.cols, q.codes.data() + r * q.row_bytes());
                            }
                        }
                    });
                    return;
                }
            }
            parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                std::vector<std::int8_t> row_buf(S::bits == 4 ? w.cols : 0);
                for (std::size_t r = first; r < last; ++r)
                {
                    const T* x = w.row(r);
                    std::int8_t* out = S::bits == 8 ? q.codes.data() + r * w.cols : row_buf.data();
                    if (tensor_wide)
                    {
                        kernels::simd::quantize_span<R, false, false>(x, w.cols, tensor_choice.encode, out);
                    }
                    else
                    {
                        for (std::size_t g = 0; g < L.groups_per_row; ++g)
                        {
                            const std::size_t c0 = g * L.group;
                            const std::size_t m = std::min(L.group, w.cols - c0);
                            bool finite = true;
                            const min_max stat = kernels::simd::min_max_span(x + c0, m, finite);
                            if (!finite) throw_non_finite(w, r);
                            quant_params stored;
                            const encode_params amax = keep_amax(stat, stored);
                            const mse::choice c = weighted ? mse::search_span<S, R>(x + c0, m, stat, amax, stored, spec, kernels::element_weights{importance + c0})
                                                           : mse::search_span<S, R>(x + c0, m, stat, amax, stored, spec);
                            store(L.orbit(r, g), c.stored);
                            kernels::simd::quantize_span<R, false, false>(x + c0, m, c.encode, out + c0);
                        }
                    }
                    if constexpr (S::bits == 4) kernels::simd::pack_int4(row_buf.data(), w.cols, q.codes.data() + r * q.row_bytes());
                }
            });
        }
    }

    namespace detail
    {
        /// quantize_searched_with for the scheme and rounding that spec names: one function per
        /// element type, which the compile-time path (quantize_into<Q>) calls too, so a program
        /// compiles the search once per element type (see orbitq/quantize_extern.hpp).
        template <weight_element T>
        void quantize_searched(const matrix_view<T>& w, quantized_tensor& q, const quant_spec& spec, unsigned threads)
        {
            with_scheme(spec, [&](auto scheme) {
                with_rounding(spec, [&](auto rounding) {
                    quantize_searched_with<decltype(scheme), decltype(rounding)>(w, q, spec, threads);
                });
            });
        }
    }

    namespace detail
    {
        /// True where the program compiles the run-time dispatch quantize_into<T> once, in
        /// another translation unit (orbitq/quantize_extern.hpp sets it): quantize_into<Q> then
        /// calls that dispatch for the quantizers it covers instead of compiling their kernels
        /// again in every translation unit that names one.
        template <class T>
        inline constexpr bool dispatch_compiled_elsewhere = false;

        /// Sets q's shape, spec and layout (rows and columns from the layout), sizes its codes,
        /// scales and, where the integer scheme S has them, zero points to the layout, and
        /// clears what only the float formats set: q may have held any other tensor, and
        /// vectors that already have the capacity are not reallocated.
        template <scheme_policy S>
        void prepare_integer_tensor(quantized_tensor& q, shape_type shape, const quant_spec& spec, const orbit_layout& layout)
        {
            q.shape = std::move(shape);
            q.rows = layout.rows;
            q.cols = layout.cols;
            q.spec = spec;
            q.layout = layout;
            q.codes.resize(q.rows * q.row_bytes());
            q.scales.resize(q.layout.orbits());
            if constexpr (S::has_zero_point) q.zero_points.resize(q.layout.orbits());
            else q.zero_points.clear();
            q.scale_codes.clear();
            q.global_scale = 0.0f;
        }

        /// quantize_into<Q>'s kernels, which the run-time dispatch calls.
        template <class Q, weight_element T>
        void quantize_policy(const matrix_view<T>& w, quantized_tensor& q, quant_spec spec, unsigned threads);
    }

    template <weight_element T>
    void quantize_into(const matrix_view<T>& w, quantized_tensor& q, const quant_spec& spec, unsigned threads = 1);

    /// @brief Quantizes `w` with the compile-time policies of Q into `q`, reusing its storage:
    ///        q's vectors are not reallocated when they already have the capacity (repeated
    ///        conversions of same-shaped tensors, benchmarks); int4 codes that are not packed
    ///        tile by tile go through a buffer of one row (or 4 KiB) per thread. Same result,
    ///        options and errors as quantize<Q>; on an exception q's contents are unspecified.
    template <class Q, weight_element T>
    void quantize_into(const matrix_view<T>& w, quantized_tensor& q, quant_spec spec = {}, unsigned threads = 1)
    {
        if constexpr (detail::dispatch_compiled_elsewhere<T> && detail::dispatched_quantizer<Q>)
        {
            detail::set_policy_names<Q>(spec);
            quantize_into(w, q, spec, threads);
        }
        else detail::quantize_policy<Q>(w, q, spec, threads);
    }

    template <class Q, weight_element T>
    void detail::quantize_policy(const matrix_view<T>& w, quantized_tensor& q, quant_spec spec, unsigned threads)
    {
        using G = typename Q::granularity;
        using S = typename Q::scheme;
        using R = typename Q::rounding;
        detail::set_policy_names<Q>(spec);
        detail::check_spec<Q>(w, spec);

        detail::prepare_integer_tensor<S>(q, w.shape.empty() ? shape_type{w.rows, w.cols} : w.shape, spec,
                                          make_layout<G>(w.rows, w.cols, spec.group_size, spec.ragged_groups));

        if (spec.scales == scale_search::mse) return detail::quantize_searched(w, q, spec, threads);

        const orbit_layout& L = q.layout;
        auto record = [&](std::size_t o, const min_max& stat) {
            return detail::encode_orbit<S>(spec, stat, w.name, [&](const quant_params& stored) {
                q.scales[o] = stored.scale;
                if constexpr (S::has_zero_point) q.zero_points[o] = stored.zero_point;
            });
        };

        encode_params tensor_enc{};
        if constexpr (std::same_as<G, per_tensor>)
        {
            tensor_enc = record(0, compute_statistics(w, w.cols, threads).tensor);
        }

        // Rows are read once from memory and encoded from L1; asking for rows ~8 KiB ahead keeps
        // memory streaming while a row's encode pass runs.
        const std::size_t ahead = kernels::simd::prefetch_rows_ahead(w.cols * sizeof(T));
        // The statistic of a whole row; symmetric schemes only need max |x|, builtin asymmetric
        // ones min(min, 0) and max(max, 0) (both reduce raw bits, with no NaN test).
        auto row_stat = [&](std::size_t r, bool& finite) {
            if constexpr (!S::has_zero_point) return kernels::simd::abs_max_span(w.row(r), w.cols, finite);
            else if constexpr (is_builtin_scheme<S> && kernels::simd::has_native_int_max) return kernels::simd::zero_range_span(w.row(r), w.cols, finite);
            else return kernels::simd::min_max_span(w.row(r), w.cols, finite);
        };
        // per_group, contiguous rows, groups dividing the rows: the rows of a range are one
        // sequence of groups (orbits and codes are laid out the same way), so the fused pass runs
        // over the range without a break at each row (the tile loop prefetches within a call,
        // so short calls would leave memory idle). int4 codes are packed from
        // L1 tile by tile; that needs an even row length (rows then start on a whole byte).
        const bool vector_params = spec.scale_type == element_type::f32 && spec.mode == scale_application::multiply_inverse;
        // Codes made with a builtin scheme's own parameters (not a rounded stored scale) scale
        // every value of the orbit below 256 in magnitude, and below qmax + 1/2 for restricted
        // symmetric schemes, so they need no float clamp: the saturating narrow or a clamp of the
        // int8 codes does it (quantize_span's Bounded).
        const bool bounded = is_builtin_scheme<S> && (spec.scale_type == element_type::f32 || !spec.codes_from_stored_scale);
        const auto encode = [bounded]<bool Stream>(std::bool_constant<Stream>, const T* x, std::size_t n, const encode_params& e,
                                                   std::int8_t* out) {
            if (bounded) kernels::simd::quantize_span<R, true, Stream>(x, n, e, out);
            else kernels::simd::quantize_span<R, false, Stream>(x, n, e, out);
        };
        const bool flat_groups = detail::is_per_group<G>::value && vector_params && w.stride == w.cols && w.cols % L.group == 0
                              && (S::bits == 8 || w.cols % 2 == 0);
        // Codes of a pass larger than the caches are written with streaming stores (int8 codes,
        // and int4 codes packed by the flat group tiles; other int4 codes go to a row buffer
        // and are packed from there): the lines are not read from memory before they are
        // overwritten. Each range fences its streaming stores before it returns. The streaming
        // range is instantiated only where it can be taken.
        constexpr bool can_stream = kernels::simd::has_streaming_stores && (S::bits == 8 || detail::is_per_group<G>::value);
        const bool stream = can_stream && (S::bits == 8 || flat_groups) && kernels::simd::stream_codes(w.rows * w.cols * sizeof(T), q.codes.size());
        const auto range = [&]<bool Stream>(std::bool_constant<Stream>, std::size_t first, std::size_t last) {
            // int4 codes outside the flat group tiles are written to row_buf, never streamed
            constexpr bool stream_rows = Stream && S::bits == 8;
            constexpr std::bool_constant<stream_rows> streaming{};
            if (flat_groups)
            {
                const std::size_t gpr = L.groups_per_row;
                const detail::group_recorder<T, decltype(record)> on_group{&w, &record, first, gpr};
                float* scales = q.scales.data() + first * gpr;
                std::int32_t* zero_points = S::has_zero_point ? q.zero_points.data() + first * gpr : nullptr;
                const std::size_t n = (last - first) * w.cols;
                if constexpr (S::bits == 8)
                {
                    kernels::simd::quantize_groups_with_params<R, S, Stream>(w.row(first), n, L.group, scales, zero_points,
                                                                             q.codes.data() + first * w.cols, on_group);
                }
                else
                {
                    kernels::simd::quantize_groups_with_params_packed<R, S, Stream>(w.row(first), n, L.group, scales, zero_points,
                                                                            q.codes.data() + first * q.row_bytes(), on_group);
                }
                return;
            }
            std::vector<std::int8_t> row_buf(S::bits == 4 ? w.cols : 0);
            bool next_finite = true;
            min_max next{};
            if constexpr (std::same_as<G, per_channel>) next = row_stat(first, next_finite);
            for (std::size_t r = first; r < last; ++r)
            {
                const T* x = w.row(r);
                if (r + ahead < last) kernels::simd::prefetch(w.row(r + ahead), w.cols * sizeof(T));
                std::int8_t* out = S::bits == 8 ? q.codes.data() + r * w.cols : row_buf.data();
                if constexpr (std::same_as<G, per_tensor>)
                {
                    encode(streaming, x, w.cols, tensor_enc, out);
                }
                else if constexpr (std::same_as<G, per_channel>)
                {
                    // The statistic of row r + 1 is taken before row r is encoded, so the latency
                    // of row r's parameters (a reduction, two divisions) overlaps useful work.
                    // Parameters are still recorded, and errors raised, in row order.
                    if (!next_finite) detail::throw_non_finite(w, r);
                    const encode_params e = record(r, next);
                    if (r + 1 < last) next = row_stat(r + 1, next_finite);
                    encode(streaming, x, w.cols, e, out);
                }
                else
                {
                    const detail::group_recorder<T, decltype(record)> on_group{&w, &record, r, L.groups_per_row};
                    if (vector_params)
                    {
                        // parameters as computed: whole tiles of groups get them in vectors
                        const std::size_t o = L.orbit(r, 0);
                        kernels::simd::quantize_groups_with_params<R, S, stream_rows>(x, w.cols, L.group, q.scales.data() + o,
                                                                                 S::has_zero_point ? q.zero_points.data() + o : nullptr,
                                                                                 out, on_group);
                    }
                    else
                    {
                        kernels::simd::quantize_groups<R, !S::has_zero_point>(x, w.cols, L.group, out, kernels::simd::offset_groups(on_group, 0));
                    }
                }
                if constexpr (S::bits == 4) kernels::simd::pack_int4(row_buf.data(), w.cols, q.codes.data() + r * q.row_bytes());
            }
        };
        parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
            if constexpr (can_stream)
            {
                if (stream)
                {
                    // fenced also when a row throws, so no streamed store is left unordered
                    struct fence
                    {
                        ~fence() { kernels::simd::store_fence(); }
                    } f;
                    return range(std::true_type{}, first, last);
                }
            }
            range(std::false_type{}, first, last);
        });
    }

    /// @brief Quantizes `w` with the compile-time policies of Q into a new quantized_tensor.
    /// @param spec options not fixed by Q: group size (for per_group<dynamic_group>), ragged
    ///        groups, scale application, scale storage type. Its granularity/bits/scheme/range/
    ///        rounding fields are overwritten from Q so the result records the policy used.
    /// @param threads rows are split across this many threads (0 = hardware concurrency); the
    ///        result is identical for every thread count.
    /// @throws error on an empty tensor or a bad group size; non_finite_error naming the row and
    ///         column of a NaN or infinity.
    template <class Q, weight_element T>
    quantized_tensor quantize(const matrix_view<T>& w, quant_spec spec = {}, unsigned threads = 1)
    {
        quantized_tensor q;
        quantize_into<Q>(w, q, spec, threads);
        return q;
    }

    /// @brief Quantizes `w` with a policy chosen at run time (with_quantizer; the float schemes
    ///        through quantize_float.hpp) into `q`, reusing its storage (see quantize_into<Q>).
    /// @throws error when spec.bits is not 8 or 4, or as quantize<Q>.
    template <weight_element T>
    void quantize_into(const matrix_view<T>& w, quantized_tensor& q, const quant_spec& spec, unsigned threads)
    {
        if (is_float_scheme(spec.scheme))
        {
            detail::check_input(w);
            detail::check_importance(w, spec);
            detail::check_signed_scales(w.name, spec);
            return detail::quantize_float(w, q, spec, threads);
        }
        with_quantizer(spec, [&](auto policies) { detail::quantize_policy<decltype(policies)>(w, q, spec, threads); });
    }

    /// @brief Quantizes `w` with a policy chosen at run time.
    /// @throws error when spec.bits is not 8 or 4, or as quantize<Q>.
    template <weight_element T>
    quantized_tensor quantize(const matrix_view<T>& w, const quant_spec& spec, unsigned threads = 1)
    {
        quantized_tensor q;
        quantize_into(w, q, spec, threads);
        return q;
    }
}
