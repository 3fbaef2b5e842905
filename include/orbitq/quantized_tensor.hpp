/// @file quantized_tensor.hpp
/// @brief The result of quantization (codes, per-orbit parameters, shape and policy) and its
///        dequantization.
///
/// Code layout: 8-bit codes are one byte per weight, row-major, rows x cols (int8 codes, or the
/// E4M3FN bit patterns of fp8_e4m3). 4-bit codes are packed two per byte along the row: column
/// 2k in the low nibble, column 2k+1 in the high nibble (int4: a two's complement integer;
/// mxfp4, nvfp4: an E2M1 sign-magnitude code); a row of odd length ends with a byte whose high
/// nibble is 0. Each row starts on a byte boundary (row_bytes = ceil(cols / 2)).
///
/// Dequantization: integer codes (code - zero_point) * scale; float codes value(code) * scale,
/// with `scales` holding the float32 scale each orbit's codes are multiplied by (for nvfp4 its
/// E4M3 scale divided by the tensor's global scale, as compressed-tensors dequantizes).
#pragma once

#include "orbitq/core/minifloat.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/policy/granularity.hpp"
#include "orbitq/policy/quant_spec.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace orbitq
{
    /// @brief Storage of codes: starts on a 64-byte line, so that the kernels' whole-line stores
    ///        (streaming stores among them) do not split lines.
    using code_vector = std::vector<std::int8_t, xsimd::aligned_allocator<std::int8_t, 64>>;

    /// @brief The result of quantization: codes, per-orbit parameters, shape, and the policy.
    struct quantized_tensor
    {
        shape_type shape;                       ///< original tensor shape
        std::size_t rows = 0;                   ///< matrix rows (see core/view.hpp)
        std::size_t cols = 0;                   ///< matrix columns
        quant_spec spec;                        ///< the policy used
        orbit_layout layout;                    ///< orbits of the matrix
        code_vector codes;                      ///< 8-bit: rows*cols; 4-bit: rows*row_bytes() packed
        std::vector<float> scales;              ///< per orbit, the value dequantization multiplies by
        std::vector<std::int32_t> zero_points;  ///< per orbit when asymmetric, else empty
        /// mxfp4: each orbit's E8M0 scale byte; nvfp4: each orbit's E4M3 scale byte; else empty.
        std::vector<std::uint8_t> scale_codes;
        /// nvfp4: the tensor's float32 global scale (scales[o] = e4m3(scale_codes[o]) / global_scale); else 0.
        float global_scale = 0.0f;

        /// @brief Bytes of codes per row.
        std::size_t row_bytes() const noexcept { return spec.bits == 8 ? cols : (cols + 1) / 2; }

        /// @brief The raw code of element (r, c): int8 and int4 codes sign-extended; float
        ///        schemes' bit patterns (E4M3 byte 0..255, E2M1 nibble 0..15) unsigned.
        std::int32_t code(std::size_t r, std::size_t c) const noexcept
        {
            const bool float_codes = is_float_scheme(spec.scheme);
            if (spec.bits == 8)
            {
                const std::int8_t b = codes[r * cols + c];
                return float_codes ? static_cast<std::int32_t>(static_cast<std::uint8_t>(b)) : b;
            }
            const auto byte = static_cast<std::uint8_t>(codes[r * row_bytes() + c / 2]);
            const int nib = (c % 2 == 0) ? (byte & 0x0f) : (byte >> 4);
            return float_codes || nib < 8 ? nib : nib - 16;
        }

        /// @brief The value of element (r, c)'s code before scaling: code - zero_point for
        ///        integer codes, the E4M3 or E2M1 value for float codes.
        float code_value(std::size_t r, std::size_t c) const noexcept
        {
            const std::int32_t k = code(r, c);
            if (!is_float_scheme(spec.scheme)) return static_cast<float>(k - zero_point(orbit(r, c)));
            return spec.bits == 8 ? e4m3_to_float(static_cast<std::uint8_t>(k)) : e2m1_to_float(static_cast<std::uint8_t>(k));
        }

        /// @brief Orbit of element (r, c).
        std::size_t orbit(std::size_t r, std::size_t c) const noexcept { return layout.orbit(r, c / layout.group); }

        /// @brief Zero point of orbit o (0 for symmetric and float schemes).
        std::int32_t zero_point(std::size_t o) const noexcept { return zero_points.empty() ? 0 : zero_points[o]; }

        /// @brief Storage cost in bits per weight: codes plus scales (in spec.scale_type, or one
        ///        byte for E8M0 / E4M3 scales) plus zero points (stored in the code width) plus a
        ///        global scale (float32).
        double bits_per_weight() const noexcept
        {
            const double n = static_cast<double>(rows * cols);
            const double scale_bits = scale_codes.empty() ? 8.0 * static_cast<double>(element_size(spec.scale_type)) : 8.0;
            const double zp_bits = zero_points.empty() ? 0.0 : spec.bits;
            const double global_bits = spec.scheme == scheme_kind::nvfp4 ? 32.0 : 0.0;
            return spec.bits + (static_cast<double>(scales.size()) * (scale_bits + zp_bits) + global_bits) / n;
        }
    };

    /// @brief Dequantizes row r of q into out[0, q.cols): code value times its orbit's scale, in
    ///        float32. @pre r < q.rows, out has q.cols elements.
    inline void dequantize_row(const quantized_tensor& q, std::size_t r, float* out) noexcept
    {
        const orbit_layout& L = q.layout;
        const bool float_codes = is_float_scheme(q.spec.scheme);
        for (std::size_t g = 0; g < L.groups_per_row; ++g)
        {
            const std::size_t o = L.orbit(r, g);
            const float scale = q.scales[o];
            const std::int32_t zp = q.zero_point(o);
            const std::size_t c0 = g * L.group;
            const std::size_t c1 = std::min(q.cols, c0 + L.group);
            if (float_codes)
            {
                for (std::size_t j = c0; j < c1; ++j) out[j] = q.code_value(r, j) * scale;
            }
            else if (q.spec.bits == 8)
            {
                const std::int8_t* c = q.codes.data() + r * q.cols;
                for (std::size_t j = c0; j < c1; ++j) out[j] = static_cast<float>(c[j] - zp) * scale;
            }
            else
            {
                for (std::size_t j = c0; j < c1; ++j) out[j] = static_cast<float>(q.code(r, j) - zp) * scale;
            }
        }
    }

    /// @brief Dequantizes the whole tensor to a row-major float32 vector of rows * cols values.
    inline std::vector<float> dequantize(const quantized_tensor& q)
    {
        std::vector<float> out(q.rows * q.cols);
        for (std::size_t r = 0; r < q.rows; ++r) dequantize_row(q, r, out.data() + r * q.cols);
        return out;
    }
}
