/// @file dtype.hpp
/// @brief The safetensors element types (dtype: names, sizes, the weight types among them) and
///        the descriptions of a tensor read (tensor_info) or to be written (tensor_decl), with
///        the checked size arithmetic and the bounded error text both sides use.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/core/view.hpp"

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace orbitq::io
{
    static_assert(std::endian::native == std::endian::little,
                  "safetensors data is little-endian; zero-copy views need a little-endian host");

    // ------------------------------------------------------------------------------------------
    // dtypes
    // ------------------------------------------------------------------------------------------

    /// @brief The safetensors element types this library accepts. Only f32, bf16 and f16 can be
    ///        viewed as weights; the others are read and copied as opaque bytes. The sub-byte
    ///        types (F4, F6_*) are rejected as unsupported.
    enum class dtype
    {
        f64,
        f32,
        f16,
        bf16,
        i64,
        i32,
        i16,
        i8,
        u8,
        boolean,
        u64,
        u32,
        u16,
        f8_e4m3,
        f8_e5m2,
        f8_e8m0,
        c64
    };

    namespace detail
    {
        using orbitq::detail::shape_string;

        struct dtype_entry
        {
            dtype type;
            std::string_view name;
            std::size_t size;
        };

        inline constexpr std::array<dtype_entry, 17> dtype_table{{
            {dtype::f64, "F64", 8},         {dtype::f32, "F32", 4},         {dtype::f16, "F16", 2},
            {dtype::bf16, "BF16", 2},       {dtype::i64, "I64", 8},         {dtype::i32, "I32", 4},
            {dtype::i16, "I16", 2},         {dtype::i8, "I8", 1},           {dtype::u8, "U8", 1},
            {dtype::boolean, "BOOL", 1},    {dtype::u64, "U64", 8},         {dtype::u32, "U32", 4},
            {dtype::u16, "U16", 2},         {dtype::f8_e4m3, "F8_E4M3", 1}, {dtype::f8_e5m2, "F8_E5M2", 1},
            {dtype::f8_e8m0, "F8_E8M0", 1}, {dtype::c64, "C64", 8},
        }};

        constexpr const dtype_entry& dtype_info(dtype t) noexcept
        {
            for (const auto& e : dtype_table)
            {
                if (e.type == t) return e;
            }
            return dtype_table[0];  // unreachable for valid enumerators
        }

        constexpr std::optional<dtype> find_dtype(std::string_view name) noexcept
        {
            for (const auto& e : dtype_table)
            {
                if (e.name == name) return e.type;
            }
            return std::nullopt;
        }

        /// @brief A printable, bounded rendering of untrusted text for error messages: control
        ///        and non-ASCII bytes as \xNN, cut after `limit` bytes.
        inline std::string printable(std::string_view s, std::size_t limit = 160)
        {
            static constexpr char hex[] = "0123456789abcdef";
            std::string out;
            for (std::size_t i = 0; i < s.size() && i < limit; ++i)
            {
                const auto c = static_cast<unsigned char>(s[i]);
                if (c >= 0x20 && c < 0x7f && c != '\\')
                {
                    out += static_cast<char>(c);
                }
                else
                {
                    out += "\\x";
                    out += hex[c >> 4];
                    out += hex[c & 15];
                }
            }
            if (s.size() > limit) out += "...(" + std::to_string(s.size()) + " bytes)";
            return out;
        }

        /// @brief Throws error_kind::format with `msg`.
        [[noreturn]] inline void format_error(const std::string& msg) { throw error(error_kind::format, msg); }

        /// @brief a * b, or nullopt on 64-bit overflow.
        constexpr std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) noexcept
        {
            std::uint64_t r = 0;
            if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
            return r;
        }

        /// @brief Product of the extents (1 for a scalar), or nullopt on overflow.
        inline std::optional<std::uint64_t> checked_elements(const shape_type& shape) noexcept
        {
            std::uint64_t n = 1;
            for (std::size_t e : shape)
            {
                const auto m = checked_mul(n, e);
                if (!m) return std::nullopt;
                n = *m;
            }
            return n;
        }
    }

    /// @brief Bytes per element.
    constexpr std::size_t dtype_size(dtype t) noexcept { return detail::dtype_info(t).size; }

    /// @brief The safetensors spelling: "F32", "BF16", "I8", "BOOL", ...
    constexpr std::string_view dtype_name(dtype t) noexcept { return detail::dtype_info(t).name; }

    /// @brief Parses a safetensors dtype name (case-sensitive, as the format requires).
    /// @throws error_kind::format on an unknown or unsupported name.
    inline dtype parse_dtype(std::string_view name)
    {
        if (const auto t = detail::find_dtype(name)) return *t;
        throw error(error_kind::format, "unknown or unsupported safetensors dtype '" + detail::printable(name) + "'");
    }

    /// @brief The weight element type of a floating-point dtype (F32, BF16, F16), else nullopt.
    constexpr std::optional<element_type> as_element_type(dtype t) noexcept
    {
        switch (t)
        {
            case dtype::f32: return element_type::f32;
            case dtype::bf16: return element_type::bf16;
            case dtype::f16: return element_type::f16;
            default: return std::nullopt;
        }
    }

    /// @brief Element i of a little-endian array of weight elements of type t, as float32.
    /// @pre p holds at least i + 1 elements of t.
    inline float element_value(element_type t, const std::byte* p, std::size_t i) noexcept
    {
        switch (t)
        {
            case element_type::f32:
            {
                float f;
                std::memcpy(&f, p + 4 * i, 4);
                return f;
            }
            case element_type::bf16:
            {
                bfloat16_t h;
                std::memcpy(&h, p + 2 * i, 2);
                return to_float(h);
            }
            default:
            {
                float16_t h;
                std::memcpy(&h, p + 2 * i, 2);
                return to_float(h);
            }
        }
    }

    /// @brief The dtype of a weight element type (inverse of as_element_type).
    constexpr dtype to_dtype(element_type t) noexcept
    {
        switch (t)
        {
            case element_type::bf16: return dtype::bf16;
            case element_type::f16: return dtype::f16;
            default: return dtype::f32;
        }
    }

    // ------------------------------------------------------------------------------------------
    // tensor descriptions
    // ------------------------------------------------------------------------------------------

    /// @brief One tensor of a safetensors file, as its header describes it.
    struct tensor_info
    {
        std::string name;
        dtype type = dtype::f32;
        shape_type shape;
        std::size_t begin = 0;  ///< first byte, relative to the data section
        std::size_t end = 0;    ///< one past the last byte, relative to the data section

        /// @brief Product of the shape (1 for a scalar). Validated not to overflow on read.
        std::size_t elements() const noexcept { return shape_elements(shape); }
        /// @brief elements() * dtype_size(type); equals end - begin for a validated tensor.
        std::size_t bytes() const noexcept { return elements() * dtype_size(type); }
    };

    /// @brief A tensor to be written: name, dtype and shape; offsets are assigned by the writer.
    struct tensor_decl
    {
        std::string name;
        dtype type = dtype::f32;
        shape_type shape;

        /// @brief Product of the shape (1 for a scalar). @pre does not overflow (the writers check).
        std::size_t elements() const noexcept { return shape_elements(shape); }
        /// @brief Bytes of data: elements() * dtype_size(type).
        std::size_t bytes() const noexcept { return elements() * dtype_size(type); }
    };
}
