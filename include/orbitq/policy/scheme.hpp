/// @file scheme.hpp
/// @brief Quantization schemes: how an orbit's statistic becomes (scale, zero point) and the
///        integer range the codes live in.
///
/// Numerical contract (every formula evaluated in float32, like the peers):
///
/// | scheme                          | codes          | scale                        | zero point |
/// |---------------------------------|----------------|------------------------------|------------|
/// | symmetric<8, restricted>        | [-127, 127]    | amax / 127                   | 0          |
/// | symmetric<8, full>              | [-128, 127]    | amax / 127.5                 | 0          |
/// | symmetric<4, restricted>        | [-7, 7]        | amax / 7                     | 0          |
/// | symmetric<4, full>              | [-8, 7]        | amax / 7.5                   | 0          |
/// | asymmetric<B>                   | [-2^(B-1), 2^(B-1)-1] | (max' - min') / (qmax - qmin) | qmin - nearbyint(min' / scale), clamped |
///
/// with min' = min(min, 0), max' = max(max, 0) so that 0 is always exactly representable.
/// inv_scale = 1 / scale computed once in float32 (FBGEMM, ggml); a zero orbit (amax = 0, or
/// min' = max' = 0) gets scale 0, inv_scale 0, zero point 0: its codes are 0 and it dequantizes to
/// exact zeros, never NaN. The "restricted" symmetric range is coremltools' linear_symmetric,
/// ggml Q8_0 and bitsandbytes; the "full" range is PyTorch's observers, torchao and
/// compressed-tensors. Asymmetric zero points follow PyTorch's observers.
#pragma once

#include "orbitq/algebra/statistics.hpp"

#include <cmath>
#include <concepts>
#include <cstdint>

namespace orbitq
{
    /// @brief Parameters of one orbit.
    struct quant_params
    {
        float scale = 0.0f;      ///< dequantized value = (code - zero_point) * scale
        float inv_scale = 0.0f;  ///< 1 / scale in float32, 0 when scale is 0
        std::int32_t zero_point = 0;

        friend constexpr bool operator==(const quant_params&, const quant_params&) = default;
    };

    /// @brief The integer range of a symmetric scheme.
    enum class symmetric_range
    {
        restricted,  ///< [-(2^(B-1)-1), 2^(B-1)-1]: the range is symmetric about 0
        full         ///< [-2^(B-1), 2^(B-1)-1], scale amax / (2^(B-1) - 0.5)
    };

    namespace detail
    {
        /// The parameters of `scale` and its inverse; (0, 0, 0) for a zero or NaN scale. Only
        /// the signed scale search (quant_spec::signed_scales) passes negative scales.
        inline quant_params with_inverse(float scale, std::int32_t zp = 0) noexcept
        {
            if (!(scale > 0.0f || scale < 0.0f)) return {0.0f, 0.0f, 0};
            return {scale, 1.0f / scale, zp};
        }
    }

    /// @brief Symmetric scheme: zero point 0, scale from the orbit's max |x|.
    /// @tparam Bits 8 or 4. @tparam Range restricted (default) or full.
    template <int Bits, symmetric_range Range = symmetric_range::restricted>
    struct symmetric
    {
        static_assert(Bits == 8 || Bits == 4, "orbitq supports 8- and 4-bit codes");
        static constexpr const char* name = "symmetric";
        static constexpr int bits = Bits;
        static constexpr symmetric_range range = Range;
        static constexpr bool has_zero_point = false;
        static constexpr int qmax = (1 << (Bits - 1)) - 1;
        static constexpr int qmin = Range == symmetric_range::restricted ? -qmax : -qmax - 1;
        /// @brief The divisor of amax: qmax, or qmax + 0.5 for the full range.
        static constexpr float divisor = Range == symmetric_range::restricted ? float(qmax) : float(qmax) + 0.5f;

        /// @brief Parameters of an orbit with statistic `s`. @pre s is finite and non-empty.
        static quant_params make_params(const min_max& s) noexcept { return detail::with_inverse(s.to_abs_max().value / divisor); }
    };

    /// @brief Asymmetric (affine) scheme: scale and integer zero point from min and max, with 0
    ///        forced into the range.
    template <int Bits>
    struct asymmetric
    {
        static_assert(Bits == 8 || Bits == 4, "orbitq supports 8- and 4-bit codes");
        static constexpr const char* name = "asymmetric";
        static constexpr int bits = Bits;
        static constexpr bool has_zero_point = true;
        static constexpr int qmax = (1 << (Bits - 1)) - 1;
        static constexpr int qmin = -qmax - 1;

        /// @brief Parameters of an orbit with statistic `s`. @pre s is finite and non-empty.
        static quant_params make_params(const min_max& s) noexcept
        {
            const float lo = s.min < 0.0f ? s.min : 0.0f;
            const float hi = s.max > 0.0f ? s.max : 0.0f;
            const float scale = (hi - lo) / float(qmax - qmin);
            if (!(scale > 0.0f)) return {};
            float zp = float(qmin) - std::nearbyint(lo / scale);
            zp = zp < float(qmin) ? float(qmin) : (zp > float(qmax) ? float(qmax) : zp);
            return detail::with_inverse(scale, static_cast<std::int32_t>(zp));
        }
    };

    /// @brief A scheme policy type.
    template <class S>
    concept scheme_policy = requires(const min_max& s) {
        { S::make_params(s) } -> std::same_as<quant_params>;
        { S::bits } -> std::convertible_to<int>;
        { S::qmin } -> std::convertible_to<int>;
        { S::qmax } -> std::convertible_to<int>;
        { S::has_zero_point } -> std::convertible_to<bool>;
    } && (S::qmin < 0) && (S::qmax > 0) && (S::bits == 8 || S::bits == 4);

    static_assert(scheme_policy<symmetric<8>> && scheme_policy<asymmetric<4>>);

    /// @brief Whether S is one of orbitq's own schemes (symmetric or asymmetric). Their
    ///        parameters, made from the statistic of an orbit, scale every value of the orbit to
    ///        a magnitude of at most 256 (the kernels rely on it to skip clamps), and the SIMD
    ///        kernels compute them in vectors with the same float32 operations.
    template <class S>
    inline constexpr bool is_builtin_scheme = false;
    template <int B, symmetric_range Range>
    inline constexpr bool is_builtin_scheme<symmetric<B, Range>> = true;
    template <int B>
    inline constexpr bool is_builtin_scheme<asymmetric<B>> = true;
}
