/// @file granularity.hpp
/// @brief Granularities: partitions of a rows x cols weight into orbits (weights sharing a scale).
///
/// - per_tensor: one orbit.
/// - per_channel: one orbit per row (output channel; per (expert, row) for stacked experts).
/// - per_group<G>: G consecutive weights of a row; per_group<> takes G at run time.
/// - per-block layouts (make_block_layout, for the float schemes): tiles of block_rows rows by
///   `group` columns, the last ones shorter where they do not divide the matrix.
///
/// Orbits are numbered row-major: orbit (r, g) of a grouped layout has index r * groups + g, of
/// a block layout (r / block_rows) * groups + g.
#pragma once

#include "orbitq/core/error.hpp"

#include <concepts>
#include <cstddef>
#include <string>

namespace orbitq
{
    /// @brief Marks a group size chosen at run time.
    inline constexpr std::size_t dynamic_group = 0;

    /// @brief One scale for the whole tensor.
    struct per_tensor
    {
        static constexpr const char* name = "per_tensor";
    };

    /// @brief One scale per output row.
    struct per_channel
    {
        static constexpr const char* name = "per_channel";
    };

    /// @brief One scale per G consecutive weights of a row.
    /// @tparam G the group size, or dynamic_group to take it at run time.
    template <std::size_t G = dynamic_group>
    struct per_group
    {
        static constexpr const char* name = "per_group";
        static constexpr std::size_t static_size = G;
    };

    namespace detail
    {
        template <class T>
        struct is_per_group : std::false_type {};
        template <std::size_t G>
        struct is_per_group<per_group<G>> : std::true_type {};
    }

    /// @brief A granularity policy type.
    template <class G>
    concept granularity_policy = std::same_as<G, per_tensor> || std::same_as<G, per_channel> || detail::is_per_group<G>::value;

    /// @brief The orbit layout of one matrix under one granularity, resolved at run time.
    ///
    /// `group` is the number of columns per orbit within a row (cols for per_tensor and
    /// per_channel); `groups_per_row` is ceil(cols / group). A ragged last group (cols % group != 0)
    /// exists only when asked for; otherwise such a group size is an error.
    struct orbit_layout
    {
        std::size_t rows = 0;
        std::size_t cols = 0;
        std::size_t group = 0;
        std::size_t groups_per_row = 0;
        bool tensor_wide = false;  ///< per_tensor: every row shares orbit 0
        std::size_t block_rows = 1;  ///< rows sharing each orbit of a column range (1 but for blocks)

        /// @brief Rows of orbits: ceil(rows / block_rows).
        std::size_t orbit_rows() const noexcept { return block_rows == 1 ? rows : (rows + block_rows - 1) / block_rows; }
        /// @brief Number of orbits (scales).
        std::size_t orbits() const noexcept { return tensor_wide ? 1 : orbit_rows() * groups_per_row; }
        /// @brief Orbit index of the group g of row r.
        std::size_t orbit(std::size_t r, std::size_t g) const noexcept
        {
            return tensor_wide ? 0 : (block_rows == 1 ? r : r / block_rows) * groups_per_row + g;
        }
    };

    /// @brief The layout of block_rows x block_cols tiles over a rows x cols matrix (the last
    ///        tiles of a row or column shorter where the size does not divide).
    /// @throws error (bad_group_size) when a block size is 0.
    inline orbit_layout make_block_layout(std::size_t rows, std::size_t cols, std::size_t block_rows, std::size_t block_cols)
    {
        if (block_rows == 0 || block_cols == 0) throw error(error_kind::bad_group_size, "per_block needs block sizes > 0");
        return {rows, cols, block_cols, (cols + block_cols - 1) / block_cols, false, block_rows};
    }

    /// @brief Builds the layout of granularity G over a rows x cols matrix.
    /// @param group_size used only by per_group<dynamic_group>; must be > 0.
    /// @param allow_ragged accept a group size that does not divide cols (last group shorter).
    /// @throws error (bad_group_size) when the group size is 0 or does not divide cols and
    ///         allow_ragged is false.
    template <granularity_policy G>
    orbit_layout make_layout(std::size_t rows, std::size_t cols, std::size_t group_size = 0, bool allow_ragged = false)
    {
        orbit_layout l{rows, cols, cols, 1, false};
        if constexpr (std::same_as<G, per_tensor>)
        {
            l.tensor_wide = true;
        }
        else if constexpr (detail::is_per_group<G>::value)
        {
            const std::size_t g = G::static_size != dynamic_group ? G::static_size : group_size;
            if (g == 0)
            {
                throw error(error_kind::bad_group_size, "per_group needs a group size > 0");
            }
            if (cols % g != 0 && !allow_ragged)
            {
                throw error(error_kind::bad_group_size,
                            "group size " + std::to_string(g) + " does not divide the row length " + std::to_string(cols)
                                + " (ask for ragged groups to allow a shorter last group)");
            }
            l.group = g;
            l.groups_per_row = (cols + g - 1) / g;
        }
        return l;
    }
}
