/// @file dispatch.hpp
/// @brief The one mapping between a run-time quant_spec and the compile-time policy types, used
///        by quantize and analyze alike: with_granularity, with_scheme, with_rounding and
///        with_quantizer call a function with the policy types the spec names; the inverse sets
///        a spec's names from a quantizer; encode_orbit gives the parameters that an orbit's
///        statistic gets under a scheme and the spec's options (as stored and as encoded).
///
/// Order of the checks: the granularity, then the bits (8 or 4), the scheme and the symmetric
/// range, then the rounding. with_quantizer instantiates its function for each of the
/// 3 x 6 x 2 combinations (per_group with a run-time group size).
#pragma once

#include "orbitq/algebra/statistics.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/kernels/reference.hpp"
#include "orbitq/policy/granularity.hpp"
#include "orbitq/policy/quant_spec.hpp"
#include "orbitq/policy/rounding.hpp"
#include "orbitq/policy/scheme.hpp"

#include <cmath>
#include <concepts>
#include <string>

namespace orbitq
{
    /// @brief A bundle of compile-time policies. Checked by concepts.
    /// @tparam G granularity (per_tensor, per_channel, per_group<N>)
    /// @tparam S scheme (symmetric<B, Range>, asymmetric<B>)
    /// @tparam R rounding (half_to_even, half_away_from_zero)
    template <granularity_policy G, scheme_policy S, rounding_policy R = half_to_even>
    struct quantizer
    {
        using granularity = G;
        using scheme = S;
        using rounding = R;
        static constexpr int bits = S::bits;
    };

    /// @brief Calls f(G{}) with the granularity policy G that spec.granularity names
    ///        (per_group<> for per_group: the group size stays a run-time value).
    /// @throws error (invalid_argument) for a value outside granularity_kind.
    template <class F>
    decltype(auto) with_granularity(const quant_spec& spec, F&& f)
    {
        switch (spec.granularity)
        {
            case granularity_kind::per_tensor: return f(per_tensor{});
            case granularity_kind::per_channel: return f(per_channel{});
            case granularity_kind::per_group: return f(per_group<>{});
            case granularity_kind::per_block: break;  // float schemes only (quantize_float.hpp)
        }
        throw error(error_kind::invalid_argument, "spec '" + spec.describe() + "': granularity " + to_string(spec.granularity)
                                                      + " has no integer policy type");
    }

    /// @brief Calls f(S{}) with the scheme policy S that spec.bits, spec.scheme and (symmetric
    ///        schemes) spec.range name.
    /// @throws error (invalid_argument) when spec.bits is not 8 or 4, or spec.scheme is a float
    ///         scheme (no integer policy type; see quantize_float.hpp).
    template <class F>
    decltype(auto) with_scheme(const quant_spec& spec, F&& f)
    {
        if (is_float_scheme(spec.scheme))
        {
            throw error(error_kind::invalid_argument, "spec '" + spec.describe() + "': a float scheme has no integer policy type");
        }
        if (spec.bits != 8 && spec.bits != 4)
        {
            throw error(error_kind::invalid_argument,
                        "spec '" + spec.describe() + "': bits must be 8 or 4, got " + std::to_string(spec.bits));
        }
        const bool eight = spec.bits == 8;
        if (spec.scheme == scheme_kind::asymmetric) return eight ? f(asymmetric<8>{}) : f(asymmetric<4>{});
        if (spec.range == symmetric_range::full)
        {
            return eight ? f(symmetric<8, symmetric_range::full>{}) : f(symmetric<4, symmetric_range::full>{});
        }
        return eight ? f(symmetric<8>{}) : f(symmetric<4>{});
    }

    /// @brief Calls f(R{}) with the rounding policy R that spec.rounding names.
    template <class F>
    decltype(auto) with_rounding(const quant_spec& spec, F&& f)
    {
        if (spec.rounding == rounding_kind::half_to_even) return f(half_to_even{});
        return f(half_away_from_zero{});
    }

    /// @brief Calls f(quantizer<G, S, R>{}) with the policies that spec names (see
    ///        with_granularity, with_scheme and with_rounding).
    /// @throws error as with_granularity and with_scheme.
    template <class F>
    decltype(auto) with_quantizer(const quant_spec& spec, F&& f)
    {
        return with_granularity(spec, [&](auto g) -> decltype(auto) {
            return with_scheme(spec, [&](auto s) -> decltype(auto) {
                return with_rounding(spec, [&](auto r) -> decltype(auto) {
                    return f(quantizer<decltype(g), decltype(s), decltype(r)>{});
                });
            });
        });
    }

    namespace detail
    {
        /// True for exactly the quantizers with_quantizer produces (those of with_granularity,
        /// with_scheme and with_rounding): a run-time group size, the six integer schemes,
        /// either rounding.
        template <class Q>
        inline constexpr bool dispatched_quantizer =
            (std::same_as<typename Q::granularity, per_tensor> || std::same_as<typename Q::granularity, per_channel>
             || std::same_as<typename Q::granularity, per_group<>>)
            && (std::same_as<typename Q::scheme, symmetric<8>> || std::same_as<typename Q::scheme, symmetric<4>>
                || std::same_as<typename Q::scheme, symmetric<8, symmetric_range::full>>
                || std::same_as<typename Q::scheme, symmetric<4, symmetric_range::full>>
                || std::same_as<typename Q::scheme, asymmetric<8>> || std::same_as<typename Q::scheme, asymmetric<4>>)
            && (std::same_as<typename Q::rounding, half_to_even> || std::same_as<typename Q::rounding, half_away_from_zero>);

        /// Sets the fields of `spec` that Q fixes (granularity, bits, scheme, range of a
        /// symmetric scheme, rounding, group size of a per_group<N>) to Q's: the inverse of
        /// with_quantizer. The other fields are kept.
        template <class Q>
        void set_policy_names(quant_spec& spec) noexcept
        {
            using G = typename Q::granularity;
            using S = typename Q::scheme;
            using R = typename Q::rounding;
            spec.bits = S::bits;
            spec.scheme = S::has_zero_point ? scheme_kind::asymmetric : scheme_kind::symmetric;
            if constexpr (!S::has_zero_point) spec.range = S::range;
            spec.rounding = std::same_as<R, half_to_even> ? rounding_kind::half_to_even : rounding_kind::half_away_from_zero;
            if constexpr (std::same_as<G, per_tensor>) spec.granularity = granularity_kind::per_tensor;
            else if constexpr (std::same_as<G, per_channel>) spec.granularity = granularity_kind::per_channel;
            else
            {
                spec.granularity = granularity_kind::per_group;
                if constexpr (G::static_size != dynamic_group) spec.group_size = G::static_size;
            }
        }

        /// The parameters as stored: the scale rounded to spec.scale_type (inverse recomputed).
        inline quant_params stored_params(const quant_params& exact, const quant_spec& spec, const std::string& name)
        {
            if (spec.scale_type == element_type::f32 || exact.scale == 0.0f) return exact;
            const float stored = round_to(spec.scale_type, exact.scale);
            if (!(stored > 0.0f) || !std::isfinite(stored))
            {
                throw error(error_kind::invalid_argument,
                            "tensor '" + name + "': scale " + std::to_string(exact.scale) + " is not representable as "
                                + std::string(element_name(spec.scale_type)) + "; store scales as F32");
            }
            return with_inverse(stored, exact.zero_point);
        }

        /// The parameters of an orbit with statistic `s` under scheme S: S::make_params, the
        /// scale as stored (stored_params), handed to keep(stored), then the parameters its codes
        /// are computed with (from the exact or the stored scale, as the spec asks), returned.
        /// `name` is the tensor's, for the error of a scale that cannot be stored.
        template <scheme_policy S, class Keep>
        inline encode_params encode_orbit(const quant_spec& spec, const min_max& s, const std::string& name, Keep&& keep)
        {
            const quant_params exact = S::make_params(s);
            // stored_params is the identity for f32 scales: the f32 case stays free of calls,
            // as this runs once per group, between vector code.
            const quant_params stored = spec.scale_type == element_type::f32 ? exact : stored_params(exact, spec, name);
            keep(stored);
            return encode_params{spec.codes_from_stored_scale ? stored : exact, S::qmin, S::qmax, spec.mode};
        }
    }
}
