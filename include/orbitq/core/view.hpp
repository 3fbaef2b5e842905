/// @file view.hpp
/// @brief Zero-copy, row-major views of weight matrices, in any supported element type.
///
/// A weight of any rank is seen as a matrix of `rows` output channels by `cols` inputs:
/// rank 1 [C] is one row; rank 2 [R, C] is R rows; rank 3 stacked experts [E, R, C] are E*R rows
/// of C (so per-channel means per (expert, row)); rank >= 4 [O, ...] is O rows of the product of
/// the rest (convolutions). The view does not own its data: a memory-mapped file can be quantized
/// in place.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace orbitq
{
    /// @brief Floating-point element types orbitq reads (and writes scales in).
    enum class element_type
    {
        f32,
        bf16,
        f16
    };

    /// @brief Size in bytes of one element.
    constexpr std::size_t element_size(element_type t) noexcept { return t == element_type::f32 ? 4 : 2; }

    /// @brief The safetensors spelling of an element type: "F32", "BF16", "F16".
    constexpr std::string_view element_name(element_type t) noexcept
    {
        switch (t)
        {
            case element_type::f32: return "F32";
            case element_type::bf16: return "BF16";
            case element_type::f16: return "F16";
        }
        return "?";
    }

    /// @brief Element types a weight view may hold.
    template <class T>
    concept weight_element = std::same_as<T, float> || std::same_as<T, bfloat16_t> || std::same_as<T, float16_t>;

    /// @brief The runtime tag of a compile-time element type.
    template <weight_element T>
    constexpr element_type element_type_of() noexcept
    {
        if constexpr (std::same_as<T, float>) return element_type::f32;
        else if constexpr (std::same_as<T, bfloat16_t>) return element_type::bf16;
        else return element_type::f16;
    }

    /// @brief Rounds a float to what an element type can hold and back (identity for f32).
    constexpr float round_to(element_type t, float v) noexcept
    {
        switch (t)
        {
            case element_type::bf16: return round_to_bfloat16(v);
            case element_type::f16: return round_to_float16(v);
            default: return v;
        }
    }

    /// @brief A tensor shape; the product of its extents is the element count.
    using shape_type = std::vector<std::size_t>;

    /// @brief Product of the extents (1 for a scalar). @pre the product does not overflow.
    constexpr std::size_t shape_elements(const shape_type& shape) noexcept
    {
        std::size_t n = 1;
        for (std::size_t e : shape) n *= e;
        return n;
    }

    namespace detail
    {
        inline std::string shape_string(const shape_type& s)
        {
            std::string out = "[";
            for (std::size_t i = 0; i < s.size(); ++i)
            {
                out += (i ? ", " : "") + std::to_string(s[i]);
            }
            return out + "]";
        }
    }

    /// @brief Splits a shape into (rows, cols) by the channel rule stated in this file's brief.
    /// @pre `shape` is non-empty; throws error_kind::empty_tensor when any extent is 0.
    inline std::pair<std::size_t, std::size_t> matrix_extents(const shape_type& shape)
    {
        if (shape.empty())
        {
            throw error(error_kind::invalid_argument, "a weight needs rank >= 1, got a scalar");
        }
        std::size_t rows = 1;
        std::size_t cols = 1;
        if (shape.size() == 1)
        {
            cols = shape[0];
        }
        else if (shape.size() <= 3)
        {
            for (std::size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
            cols = shape.back();
        }
        else
        {
            rows = shape[0];
            for (std::size_t i = 1; i < shape.size(); ++i) cols *= shape[i];
        }
        if (rows == 0 || cols == 0)
        {
            throw error(error_kind::empty_tensor, "empty tensor of shape " + detail::shape_string(shape));
        }
        return {rows, cols};
    }

    /// @brief A non-owning row-major view of a weight as `rows` x `cols` elements of T.
    /// @tparam T float, bfloat16_t or float16_t.
    ///
    /// Rows are `stride` elements apart (stride >= cols), so a sub-block of a larger matrix can be
    /// viewed too. `shape` keeps the tensor's original shape for reporting and for the result.
    template <weight_element T>
    struct matrix_view
    {
        using value_type = T;

        const T* data = nullptr;    ///< first element of row 0
        std::size_t rows = 0;       ///< output channels
        std::size_t cols = 0;       ///< elements per row
        std::size_t stride = 0;     ///< elements between the starts of consecutive rows
        shape_type shape;           ///< original tensor shape (product == rows*cols)
        std::string name;           ///< tensor name used in error messages (may be empty)

        /// @brief Pointer to the first element of row `r`. @pre r < rows
        const T* row(std::size_t r) const noexcept { return data + r * stride; }
        /// @brief rows * cols.
        std::size_t size() const noexcept { return rows * cols; }
    };

    /// @brief Views `shape`-shaped contiguous row-major data as a matrix (channel rule above).
    /// @pre `data` points to product(shape) elements; checked: shape non-empty, no zero extent,
    ///      data not null.
    template <weight_element T>
    matrix_view<T> make_view(const T* data, const shape_type& shape, std::string name = {})
    {
        const auto [rows, cols] = matrix_extents(shape);
        if (data == nullptr)
        {
            throw error(error_kind::invalid_argument, "null data pointer for tensor '" + name + "'");
        }
        return matrix_view<T>{data, rows, cols, cols, shape, std::move(name)};
    }

    /// @brief Views a rows x cols contiguous row-major buffer.
    template <weight_element T>
    matrix_view<T> make_view(const T* data, std::size_t rows, std::size_t cols, std::string name = {})
    {
        return make_view(data, shape_type{rows, cols}, std::move(name));
    }

    /// @brief Views a span holding rows x cols elements; checks the span's size.
    template <weight_element T>
    matrix_view<T> make_view(std::span<const T> data, std::size_t rows, std::size_t cols, std::string name = {})
    {
        if (data.size() != rows * cols)
        {
            throw error(error_kind::shape_mismatch,
                        "tensor '" + name + "': span of " + std::to_string(data.size()) + " elements cannot be viewed as "
                            + std::to_string(rows) + " x " + std::to_string(cols));
        }
        return make_view(data.data(), rows, cols, std::move(name));
    }
}
