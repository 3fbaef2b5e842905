/// @file importance.hpp
/// @brief Column importance files for the weighted scale search (quant_spec::importance,
///        scale_search::mse), imatrix-style.
///
/// The file is a safetensors file with one tensor per weight it applies to, named as that
/// weight is named in the checkpoint (a stacked expert tensor by its stacked name), holding
/// the importance of each of the weight's input columns, typically the mean squared
/// activation that column meets over a calibration set:
///   - shape [cols]: every row, and every expert of a stacked tensor, uses it;
///   - shape [experts, cols]: expert e's rows use row e (for a stacked tensor of that many
///     experts).
/// dtype F32, BF16 or F16; every value finite and >= 0 (a zero column is free to take any
/// error). Tensors for weights that are not quantized are ignored. Written with numpy:
/// @code
///   from safetensors.numpy import save_file
///   save_file({"model.language_model.layers.0.experts.gate_up_proj": a0, ...}, "importance.safetensors")
/// @endcode
#pragma once

#include "orbitq/io/safetensors_file.hpp"
#include "orbitq/io/safetensors_writer.hpp"
#include "orbitq/policy/quant_spec.hpp"

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace orbitq::io
{
    /// @brief The importance of each weight's input columns, read from an importance file
    ///        (file brief) or built in memory.
    class importance_table
    {
    public:
        /// @brief One weight's importance: `rows` rows (1, or one per expert) of `cols` values.
        struct entry
        {
            column_importance values;
            std::size_t rows = 1;
            std::size_t cols = 0;
        };

        /// @brief Reads and checks an importance file.
        /// @throws error_kind::io / format as safetensors_file::open; error_kind::format naming
        ///         the tensor when its dtype is not F32, BF16 or F16, its rank is not 1 or 2, or a
        ///         value is negative, NaN or infinite.
        static importance_table read(const std::filesystem::path& path)
        {
            const safetensors_file f = safetensors_file::open(path);
            importance_table t;
            t.m_source = path.string();
            for (const tensor_info& info : f.tensors())
            {
                const std::string where = "importance file '" + path.string() + "', tensor '" + detail::printable(info.name) + "'";
                const auto type = as_element_type(info.type);
                if (!type) throw error(error_kind::format, where + ": dtype " + std::string(dtype_name(info.type)) + "; importance is F32, BF16 or F16");
                if (info.shape.size() != 1 && info.shape.size() != 2)
                {
                    throw error(error_kind::format, where + ": rank " + std::to_string(info.shape.size()) + "; importance is [cols] or [experts, cols]");
                }
                if (info.elements() == 0) throw error(error_kind::format, where + ": no values");
                std::vector<float> v(info.elements());
                const std::span<const std::byte> b = f.bytes(info);
                for (std::size_t i = 0; i < v.size(); ++i) v[i] = element_value(*type, b.data(), i);
                t.add(info.name, info.shape.size() == 2 ? info.shape[0] : 1, std::move(v), where);
            }
            return t;
        }

        /// @brief Adds (or replaces) the importance of weight `name`: rows x cols values.
        /// @throws error_kind::invalid_argument when values.size() != rows * cols or a value is
        ///         negative, NaN or infinite.
        void add(const std::string& name, std::size_t rows, std::vector<float> values) { add(name, rows, std::move(values), "importance of '" + name + "'"); }

        /// @brief The columns' importance of expert `expert` of weight `tensor` (of `experts`
        ///        experts; 0 and 1 for a weight that is one matrix) with `cols` columns.
        /// @throws error_kind::invalid_argument when the table has no entry for `tensor`;
        ///         error_kind::shape_mismatch when the entry is not [cols] or [experts, cols].
        column_importance columns(const std::string& tensor, std::size_t expert, std::size_t experts, std::size_t cols) const
        {
            const auto it = m_entries.find(tensor);
            if (it == m_entries.end())
            {
                throw error(error_kind::invalid_argument, source() + " has no entry for '" + tensor + "', which is quantized with mse scales ("
                                                              + std::to_string(m_entries.size()) + " entries"
                                                              + (m_entries.empty() ? std::string() : ", the first '" + m_entries.begin()->first + "'") + ")");
            }
            const entry& e = it->second;
            if (e.cols != cols || (e.rows != 1 && e.rows != experts))
            {
                throw error(error_kind::shape_mismatch, source() + ": '" + tensor + "' is [" + (e.rows == 1 ? "" : std::to_string(e.rows) + ", ")
                                                            + std::to_string(e.cols) + "]; the weight needs [" + std::to_string(cols) + "]"
                                                            + (experts > 1 ? " or [" + std::to_string(experts) + ", " + std::to_string(cols) + "]" : ""));
            }
            return e.rows == 1 ? e.values : e.values.slice(expert * cols, cols);
        }

        /// @brief The entries by weight name.
        const std::map<std::string, entry, std::less<>>& entries() const noexcept { return m_entries; }

        /// @brief Writes the table as an importance file (F32), published atomically.
        /// @throws as safetensors_writer (error_kind::io; an existing file unless overwrite).
        void write(const std::filesystem::path& path, bool overwrite = false) const
        {
            std::vector<tensor_decl> decls;
            for (const auto& [name, e] : m_entries)
            {
                decls.push_back({name, dtype::f32, e.rows == 1 ? shape_type{e.cols} : shape_type{e.rows, e.cols}});
            }
            safetensors_writer w(path, decls, {}, overwrite);
            for (const auto& [name, e] : m_entries) w.write(name, e.values.values());
            w.commit();
        }

    private:
        void add(const std::string& name, std::size_t rows, std::vector<float> values, const std::string& where)
        {
            if (rows == 0 || values.empty() || values.size() % rows != 0)
            {
                throw error(error_kind::invalid_argument, where + ": " + std::to_string(values.size()) + " values do not make " + std::to_string(rows) + " rows");
            }
            if (const std::size_t i = first_invalid_importance(values); i < values.size())
            {
                throw error(m_source.empty() ? error_kind::invalid_argument : error_kind::format,
                            where + ": value " + std::to_string(values[i]) + " at " + std::to_string(i) + "; importance is finite and >= 0");
            }
            const std::size_t cols = values.size() / rows;
            m_entries[name] = entry{column_importance::of(std::move(values)), rows, cols};
        }

        std::string source() const { return m_source.empty() ? std::string("the importance table") : "importance file '" + m_source + "'"; }

        std::map<std::string, entry, std::less<>> m_entries;
        std::string m_source;  // the file read, for messages
    };
}
