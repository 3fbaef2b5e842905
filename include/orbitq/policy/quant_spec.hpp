/// @file quant_spec.hpp
/// @brief The run-time description of a quantization policy: the names of the granularity, scheme
///        and rounding policies (policy/dispatch.hpp maps them to the policy types) and quant_spec,
///        which holds them with the options that no policy type fixes.
#pragma once

#include "orbitq/core/view.hpp"
#include "orbitq/kernels/reference.hpp"
#include "orbitq/policy/scheme.hpp"

#include <cmath>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace orbitq
{
    /// @brief Run-time names of the granularity policies.
    enum class granularity_kind
    {
        per_tensor,
        per_channel,
        per_group,
        per_block  ///< 2-D tiles of block_rows x group_size (float8 checkpoints' 128 x 128)
    };

    /// @brief Run-time names of the scheme policies.
    enum class scheme_kind
    {
        symmetric,
        asymmetric,
        fp8_e4m3,  ///< E4M3FN codes, scale amax / 448 (see quantize_float.hpp)
        mxfp4,     ///< OCP MX: E2M1 codes, groups of 32, power-of-two (E8M0) scales
        nvfp4      ///< E2M1 codes, groups of 16, E4M3 scales under one float32 tensor scale
    };

    /// @brief Whether the scheme's codes are small floats (E4M3, E2M1) rather than integers.
    constexpr bool is_float_scheme(scheme_kind s) noexcept
    {
        return s == scheme_kind::fp8_e4m3 || s == scheme_kind::mxfp4 || s == scheme_kind::nvfp4;
    }

    /// @brief Run-time names of the rounding policies.
    enum class rounding_kind
    {
        half_to_even,
        half_away_from_zero
    };

    /// @brief How an orbit's scale (and zero point) is chosen.
    enum class scale_search
    {
        amax,  ///< from the orbit's range: the scheme's formula (see policy/scheme.hpp)
        mse    ///< the least squared error over a grid of clipped ranges, refit by least
               ///< squares (see kernels/scale_search.hpp); never worse than amax per orbit
    };

    /// @brief Printable names.
    constexpr const char* to_string(granularity_kind g) noexcept
    {
        switch (g)
        {
            case granularity_kind::per_tensor: return "per_tensor";
            case granularity_kind::per_channel: return "per_channel";
            case granularity_kind::per_group: return "per_group";
            case granularity_kind::per_block: return "per_block";
        }
        return "?";
    }
    constexpr const char* to_string(scheme_kind s) noexcept
    {
        switch (s)
        {
            case scheme_kind::symmetric: return "symmetric";
            case scheme_kind::asymmetric: return "asymmetric";
            case scheme_kind::fp8_e4m3: return "fp8_e4m3";
            case scheme_kind::mxfp4: return "mxfp4";
            case scheme_kind::nvfp4: return "nvfp4";
        }
        return "?";
    }
    constexpr const char* to_string(rounding_kind r) noexcept
    {
        return r == rounding_kind::half_to_even ? "half_to_even" : "half_away_from_zero";
    }
    constexpr const char* to_string(scale_search s) noexcept { return s == scale_search::amax ? "amax" : "mse"; }
    constexpr const char* to_string(symmetric_range r) noexcept { return r == symmetric_range::restricted ? "restricted" : "full"; }

    /// @brief A weight per input column of a tensor (imatrix-style: the mean squared activation
    ///        that column meets), which scale_search::mse minimizes the weighted squared error
    ///        sum a_c (x - x^)^2 under. Shared, not copied: specs and quantized tensors holding it
    ///        point at one vector (or a slice of it, such as one expert's row of an [E, cols]
    ///        table). Empty means every column weighs 1.
    struct column_importance
    {
        std::shared_ptr<const float> data;  ///< `size` weights, or null
        std::size_t size = 0;

        /// @brief Owns `v` (one weight per column).
        static column_importance of(std::vector<float> v)
        {
            auto owner = std::make_shared<const std::vector<float>>(std::move(v));
            return {std::shared_ptr<const float>(owner, owner->data()), owner->size()};
        }

        /// @brief n weights from `offset`, sharing this one's storage.
        /// @pre offset + n <= size.
        column_importance slice(std::size_t offset, std::size_t n) const { return {std::shared_ptr<const float>(data, data.get() + offset), n}; }

        bool empty() const noexcept { return size == 0; }
        std::span<const float> values() const noexcept { return {data.get(), size}; }

        /// @brief The same weights object (not an element-wise comparison).
        friend bool operator==(const column_importance& a, const column_importance& b) noexcept { return a.data == b.data && a.size == b.size; }
    };

    /// @brief The index of the first importance weight that is negative, NaN or infinite
    ///        (importance is finite and >= 0), or v.size() when there is none.
    inline std::size_t first_invalid_importance(std::span<const float> v) noexcept
    {
        for (std::size_t i = 0; i < v.size(); ++i)
        {
            if (!(v[i] >= 0.0f) || !std::isfinite(v[i])) return i;
        }
        return v.size();
    }

    /// @brief A complete, run-time description of a quantization policy and its options.
    struct quant_spec
    {
        granularity_kind granularity = granularity_kind::per_channel;
        std::size_t group_size = 0;       ///< per_group: columns per group; per_block: columns per block
        std::size_t block_rows = 0;       ///< per_block only: rows per block
        bool ragged_groups = false;       ///< allow a shorter last group when group_size does not divide cols
        int bits = 8;                     ///< 8 or 4 (fp8_e4m3: 8; mxfp4, nvfp4: 4)
        scheme_kind scheme = scheme_kind::symmetric;
        symmetric_range range = symmetric_range::restricted;  ///< symmetric only
        rounding_kind rounding = rounding_kind::half_to_even;
        scale_application mode = scale_application::multiply_inverse;
        element_type scale_type = element_type::f32;  ///< precision the scales are stored in
        /// When scales are stored in f16/bf16: compute the codes from the stored (rounded) scale
        /// (true) or from the f32 scale, as ggml Q8_0 does (false, the default). Dequantization
        /// always uses the stored scale.
        bool codes_from_stored_scale = false;
        /// amax (the scheme's formula) or mse (search; codes of symmetric schemes then use the
        /// full range [-2^(bits-1), 2^(bits-1) - 1]). Not with scale_application::divide.
        scale_search scales = scale_search::amax;
        /// scale_search::mse with the symmetric scheme only: an orbit whose value of largest
        /// magnitude is positive may get a negative scale, so that value takes the code
        /// -2^(bits-1) as a negative extreme does (ggml's Q4_0 scale, max / -8, is one such).
        /// Dequantization is code x scale either way; see the README for the engines that misread
        /// negative scales.
        bool signed_scales = false;
        /// scale_search::mse only: one finite, non-negative weight per column of the tensor
        /// quantized (cols of them), or empty (unweighted). Codes and the stored form do not
        /// change, only which scale each orbit gets.
        column_importance importance{};

        friend bool operator==(const quant_spec&, const quant_spec&) = default;

        /// @brief How the scales are chosen: "amax", "mse" or "mse_signed" (with signed_scales).
        constexpr const char* scales_name() const noexcept
        {
            return scales == scale_search::amax ? "amax" : signed_scales ? "mse_signed" : "mse";
        }

        /// @brief A short name such as "per_group:32 int4 asymmetric".
        std::string describe() const
        {
            // appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on
            // "literal" + std::string&& once that is inlined
            std::string s = to_string(granularity);
            if (granularity == granularity_kind::per_group) s.append(":").append(std::to_string(group_size));
            if (granularity == granularity_kind::per_block) s.append(":").append(std::to_string(block_rows)).append("x").append(std::to_string(group_size));
            if (is_float_scheme(scheme)) return s.append(" ").append(to_string(scheme));
            s.append(" int").append(std::to_string(bits)).append(" ").append(to_string(scheme));
            if (scheme == scheme_kind::symmetric && range == symmetric_range::full) s += " full-range";
            if (scales == scale_search::mse) s += signed_scales ? " mse signed" : " mse";
            return s;
        }
    };
}
