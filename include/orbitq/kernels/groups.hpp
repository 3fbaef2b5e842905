/// @file groups.hpp
/// @brief The encode of one orbit (quantize_span) and the fused statistics + encode pass over
///        the groups of a row (quantize_groups), with the named group callbacks that let
///        every caller share one instance of it.
#pragma once

#include "orbitq/kernels/int4_packing.hpp"

namespace orbitq::kernels::simd
{
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
}
