/// @file error.hpp
/// @brief The one exception type orbitq throws, with a machine-readable kind.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace orbitq
{
    /// @brief What went wrong, for callers that react differently to different failures.
    enum class error_kind
    {
        invalid_argument,  ///< a parameter outside its documented domain
        shape_mismatch,    ///< two shapes that must agree do not
        empty_tensor,      ///< a tensor with no elements where one is required
        non_finite,        ///< a NaN or infinity in the input
        bad_group_size,    ///< a group size of 0, or one that does not divide the row
        io,                ///< a file could not be read or written
        format             ///< a file is not what its format says it must be
    };

    /// @brief Exception thrown by orbitq on any precondition that is checked at run time.
    class error : public std::runtime_error
    {
    public:
        error(error_kind kind, const std::string& what)
            : std::runtime_error(what)
            , m_kind(kind)
        {
        }

        /// @brief The category of the failure.
        error_kind kind() const noexcept { return m_kind; }

    private:
        error_kind m_kind;
    };

    /// @brief Thrown when the input holds a NaN or an infinity; names its position.
    class non_finite_error : public error
    {
    public:
        non_finite_error(const std::string& tensor, std::size_t row, std::size_t col, float value)
            : error(error_kind::non_finite,
                    "non-finite value " + std::to_string(value) + " in tensor '"
                        + (tensor.empty() ? std::string("<unnamed>") : tensor) + "' at row "
                        + std::to_string(row) + ", column " + std::to_string(col))
            , m_row(row)
            , m_col(col)
        {
        }

        /// @brief Row (output channel) of the first non-finite value found.
        std::size_t row() const noexcept { return m_row; }
        /// @brief Column of the first non-finite value found.
        std::size_t col() const noexcept { return m_col; }

    private:
        std::size_t m_row;
        std::size_t m_col;
    };
}
