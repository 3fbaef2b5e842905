/// @file safetensors_writer.hpp
/// @brief safetensors_writer: streams one .safetensors file to disk and publishes it atomically.
///
/// The writer writes the header at construction, each tensor's bytes at its
/// offset in any order, and publishes the file atomically on commit() (see atomic_file.hpp).
/// The header is padded with spaces to a multiple of 8 bytes and tensors are laid out in the data
/// section by decreasing element size (stable in declaration order), so every tensor starts at an
/// offset aligned to its element size, without gaps (the Rust safetensors reader rejects gaps).
/// The header's JSON keys keep the declaration order, which is the order tensors() reports.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/io/atomic_file.hpp"
#include "orbitq/io/dtype.hpp"
#include "orbitq/io/safetensors_header.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace orbitq::io
{
    namespace detail
    {
        /// @brief Validates declarations (non-empty unique names, not "__metadata__", sizes that
        ///        fit 64 bits) and returns each one's byte size.
        /// @throws error_kind::invalid_argument naming `target` and the tensor.
        inline std::vector<std::uint64_t> checked_decl_bytes(const std::vector<tensor_decl>& decls, const std::string& target)
        {
            std::vector<std::uint64_t> out;
            out.reserve(decls.size());
            std::set<std::string_view> seen;
            for (const auto& d : decls)
            {
                const std::string ctx = "writing '" + target + "', tensor '" + printable(d.name) + "'";
                if (d.name == "__metadata__") throw error(error_kind::invalid_argument, ctx + ": the name is reserved");
                if (!seen.insert(d.name).second) throw error(error_kind::invalid_argument, ctx + ": declared twice");
                const auto n = checked_elements(d.shape);
                const auto b = n ? checked_mul(*n, dtype_size(d.type)) : std::nullopt;
                if (!b) throw error(error_kind::invalid_argument, ctx + ": shape " + shape_string(d.shape) + " overflows 64 bits");
                out.push_back(*b);
            }
            return out;
        }
    }

    /// @brief Streams one .safetensors file to disk and publishes it atomically.
    ///
    /// The header (offsets included) is written at construction; write() each declared tensor
    /// exactly once, in any order; commit() checks that every tensor was written, fsyncs, renames
    /// the hidden temporary onto the final path and fsyncs the directory. Destroying an
    /// uncommitted writer (an exception, an early return) removes the temporary, so the final path
    /// never holds a partial file. Disk space for the whole file is reserved at construction, so a
    /// full disk is reported before any data is produced. Move-only.
    class safetensors_writer
    {
    public:
        /// @param final_path where the file appears on commit(); its directory must exist.
        /// @param decls      the tensors, in header order.
        /// @param metadata   the "__metadata__" map (omitted from the header when empty).
        /// @param overwrite  when false, throws if final_path exists (checked now and at commit).
        /// @throws error_kind::invalid_argument on bad declarations (duplicate or reserved names,
        ///         sizes overflowing 64 bits, names that are not valid UTF-8); error_kind::io if
        ///         the temporary cannot be created or the disk space reserved.
        safetensors_writer(std::filesystem::path final_path, std::vector<tensor_decl> decls,
                           std::map<std::string, std::string> metadata = {}, bool overwrite = false)
        {
            const std::string target = final_path.string();
            const std::vector<std::uint64_t> sizes = detail::checked_decl_bytes(decls, target);

            // Data layout: by decreasing element size, stable, so each tensor is aligned to its
            // element size (all sizes are powers of two) with no gaps.
            std::vector<std::size_t> order(decls.size());
            for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
            std::stable_sort(order.begin(), order.end(),
                             [&](std::size_t a, std::size_t b) { return dtype_size(decls[a].type) > dtype_size(decls[b].type); });
            std::vector<std::uint64_t> begins(decls.size());
            std::uint64_t offset = 0;
            for (std::size_t i : order)
            {
                begins[i] = offset;
                if (__builtin_add_overflow(offset, sizes[i], &offset))
                {
                    throw error(error_kind::invalid_argument, "writing '" + target + "': total size overflows 64 bits");
                }
            }

            // Assembled entry by entry (an ordered_json object looks keys up linearly, which is
            // quadratic for shards of many tensors); the text equals ordered_json's compact dump.
            std::string text = "{";
            try
            {
                if (!metadata.empty()) text += "\"__metadata__\":" + nlohmann::json(metadata).dump() + ",";
                for (std::size_t i = 0; i < decls.size(); ++i)
                {
                    const nlohmann::ordered_json entry = {{"dtype", dtype_name(decls[i].type)},
                                                          {"shape", decls[i].shape},
                                                          {"data_offsets", {begins[i], begins[i] + sizes[i]}}};
                    text += nlohmann::json(decls[i].name).dump();
                    text += ':';
                    text += entry.dump();
                    text += ',';
                }
            }
            catch (const nlohmann::json::exception& e)
            {
                throw error(error_kind::invalid_argument, "writing '" + target + "': a tensor name or metadata string is not valid UTF-8 ("
                                                              + detail::printable(e.what()) + ")");
            }
            if (text.back() == ',') text.back() = '}';
            else text += '}';
            text.append((8 - text.size() % 8) % 8, ' ');
            if (text.size() > detail::max_header_size)
            {
                throw error(error_kind::invalid_argument, "writing '" + target + "': header of " + std::to_string(text.size())
                                                              + " bytes exceeds the format's limit");
            }

            m_file.emplace(std::move(final_path), overwrite);
            std::uint64_t total = 0;
            if (__builtin_add_overflow(8 + text.size(), offset, &total))
            {
                throw error(error_kind::invalid_argument, "writing '" + target + "': total size overflows 64 bits");
            }
            m_file->reserve(total);
            std::array<std::byte, 8> len{};
            for (std::size_t i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xff);
            m_file->write_at(0, len);
            m_file->write_at(8, std::as_bytes(std::span<const char>(text.data(), text.size())));

            m_data_offset = 8 + text.size();
            for (std::size_t i = 0; i < decls.size(); ++i)
            {
                m_slots.emplace(decls[i].name, slot{begins[i], sizes[i], false});
            }
            m_decls = std::move(decls);
        }

        /// @brief The path the file will have after commit().
        const std::filesystem::path& path() const noexcept { return m_file->final_path(); }
        /// @brief The declarations, in header order.
        const std::vector<tensor_decl>& declarations() const noexcept { return m_decls; }
        /// @brief True once commit() succeeded.
        bool committed() const noexcept { return m_file && m_file->committed(); }

        /// @brief Writes the bytes of tensor `name` (little-endian, row-major).
        /// @throws error_kind::invalid_argument if `name` is not declared, was already written, or
        ///         data.size() differs from its declared byte size; error_kind::io on write errors.
        void write(std::string_view name, std::span<const std::byte> data)
        {
            const auto it = m_slots.find(name);
            const std::string ctx = "writing '" + path().string() + "', tensor '" + detail::printable(name) + "'";
            if (it == m_slots.end()) throw error(error_kind::invalid_argument, ctx + ": not declared");
            if (it->second.written) throw error(error_kind::invalid_argument, ctx + ": already written");
            if (data.size() != it->second.size)
            {
                throw error(error_kind::invalid_argument, ctx + ": got " + std::to_string(data.size()) + " bytes, declared "
                                                              + std::to_string(it->second.size));
            }
            m_file->write_at(m_data_offset + it->second.begin, data);
            it->second.written = true;
        }

        /// @brief Typed convenience: writes a span of elements as bytes.
        template <class T>
            requires std::is_trivially_copyable_v<T>
        void write(std::string_view name, std::span<const T> data)
        {
            write(name, std::as_bytes(data));
        }

        /// @brief Publishes the file (see the class brief).
        /// @throws error_kind::invalid_argument naming the first tensor not written (the
        ///         temporary is kept, so writing it and committing again works);
        ///         error_kind::io if publishing fails (the final path is then untouched, except
        ///         that a failed directory fsync happens after the rename).
        void commit()
        {
            for (const auto& d : m_decls)
            {
                if (!m_slots.find(d.name)->second.written)
                {
                    throw error(error_kind::invalid_argument,
                                "writing '" + path().string() + "': tensor '" + detail::printable(d.name) + "' was never written");
                }
            }
            m_file->commit();
        }

    private:
        struct slot
        {
            std::uint64_t begin;
            std::uint64_t size;
            bool written;
        };

        std::optional<temp_file> m_file;
        std::vector<tensor_decl> m_decls;
        std::map<std::string, slot, std::less<>> m_slots;
        std::uint64_t m_data_offset = 0;
    };
}
