/// @file checkpoint.hpp
/// @brief checkpoint: a Hugging Face checkpoint directory (an index and its shards, or a single
///        model.safetensors) or one .safetensors file, opened and validated as one set of tensors.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/io/atomic_file.hpp"
#include "orbitq/io/dtype.hpp"
#include "orbitq/io/safetensors_file.hpp"
#include "orbitq/io/strict_json.hpp"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace orbitq::io
{
    /// @brief A Hugging Face checkpoint: a directory with model.safetensors.index.json and its
    ///        shards, a directory with a single model.safetensors, or one .safetensors file.
    ///
    /// With an index, the tensors are exactly those of "weight_map" (each checked to exist in its
    /// shard with open()'s full validation); tensors present in a shard but not in the map are
    /// ignored, as transformers ignores them. Shard names must be relative paths without "..".
    class checkpoint
    {
    public:
        /// @brief Name of the index file of a sharded checkpoint.
        static constexpr std::string_view index_name = "model.safetensors.index.json";
        /// @brief Name of the single file of an unsharded checkpoint.
        static constexpr std::string_view single_name = "model.safetensors";

        /// @brief Opens and validates a checkpoint (see the class brief).
        /// @throws error_kind::io if the path, index or a shard cannot be read; error_kind::format
        ///         on a malformed index (no weight_map, non-string entries, unsafe shard names), a
        ///         tensor missing from its shard, or a malformed shard.
        static checkpoint open(const std::filesystem::path& path)
        {
            namespace fs = std::filesystem;
            checkpoint c;
            std::error_code ec;
            const auto st = fs::status(path, ec);
            if (ec || !fs::exists(st)) throw error(error_kind::io, "checkpoint path '" + path.string() + "' does not exist");
            if (fs::is_regular_file(st))
            {
                c.m_directory = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
                c.add_all(safetensors_file::open(path));
                return c;
            }
            if (!fs::is_directory(st)) throw error(error_kind::io, "checkpoint path '" + path.string() + "' is neither a file nor a directory");
            c.m_directory = path;
            const fs::path index = path / index_name;
            if (fs::exists(index, ec))
            {
                c.open_index(index);
                return c;
            }
            const fs::path single = path / single_name;
            if (fs::exists(single, ec))
            {
                c.add_all(safetensors_file::open(single));
                return c;
            }
            throw error(error_kind::io, "checkpoint directory '" + path.string() + "' holds neither " + std::string(index_name)
                                            + " nor " + std::string(single_name));
        }

        /// @brief The directory holding the checkpoint's files.
        const std::filesystem::path& directory() const noexcept { return m_directory; }
        /// @brief The opened files (shards in first-use order of the weight map's sorted names).
        const std::vector<safetensors_file>& files() const noexcept { return m_files; }

        /// @brief All tensor names, sorted.
        std::vector<std::string> names() const
        {
            std::vector<std::string> out;
            out.reserve(m_entries.size());
            for (const auto& [name, e] : m_entries) out.push_back(name);
            return out;
        }
        /// @brief Number of tensors.
        std::size_t size() const noexcept { return m_entries.size(); }
        /// @brief True if a tensor of that name exists.
        bool contains(std::string_view name) const { return m_entries.find(name) != m_entries.end(); }

        /// @brief The tensor's description. @throws error_kind::format naming the checkpoint if absent.
        const tensor_info& info(std::string_view name) const
        {
            const entry& e = lookup(name);
            return m_files[e.file].tensors()[e.tensor];
        }
        /// @brief The shard holding the tensor. @throws as info().
        const safetensors_file& file_of(std::string_view name) const { return m_files[lookup(name).file]; }
        /// @brief The tensor's raw bytes. @throws as info().
        std::span<const std::byte> bytes(std::string_view name) const { return file_of(name).bytes(info(name)); }
        /// @brief Zero-copy matrix view, as safetensors_file::view. @throws as info() and view().
        template <weight_element T>
        matrix_view<T> view(std::string_view name) const
        {
            return file_of(name).template view<T>(name);
        }
        /// @brief See safetensors_file::prefetch.
        void prefetch(std::string_view name) const { file_of(name).prefetch(info(name)); }
        /// @brief See safetensors_file::release.
        void release(std::string_view name) const { file_of(name).release(info(name)); }

    private:
        struct entry
        {
            std::size_t file;
            std::size_t tensor;
        };

        checkpoint() = default;

        const entry& lookup(std::string_view name) const
        {
            const auto it = m_entries.find(name);
            if (it == m_entries.end())
            {
                detail::format_error("checkpoint '" + m_directory.string() + "': no tensor named '" + detail::printable(name) + "'");
            }
            return it->second;
        }

        void add_all(safetensors_file f)
        {
            const std::size_t fi = m_files.size();
            for (std::size_t i = 0; i < f.tensors().size(); ++i) m_entries.emplace(f.tensors()[i].name, entry{fi, i});
            m_files.push_back(std::move(f));
        }

        void open_index(const std::filesystem::path& index)
        {
            const std::string ctx = "checkpoint index '" + index.string() + "'";
            std::string text;
            {
                detail::unique_fd fd(::open(index.c_str(), O_RDONLY | O_CLOEXEC));
                if (!fd) detail::throw_io("cannot open checkpoint index", index, errno);
                char buf[65536];
                for (;;)
                {
                    const ::ssize_t r = ::read(fd.get(), buf, sizeof buf);
                    if (r < 0)
                    {
                        if (errno == EINTR) continue;
                        detail::throw_io("cannot read checkpoint index", index, errno);
                    }
                    if (r == 0) break;
                    text.append(buf, static_cast<std::size_t>(r));
                    if (text.size() > std::size_t(1) << 30) detail::format_error(ctx + ": larger than 1 GiB");
                }
            }
            const nlohmann::json j = detail::parse_json_strict(text, ctx, "index");
            if (!j.is_object()) detail::format_error(ctx + ": not a JSON object");
            const auto wm = j.find("weight_map");
            if (wm == j.end()) detail::format_error(ctx + ": missing \"weight_map\"");
            if (!wm->is_object()) detail::format_error(ctx + ": \"weight_map\" is " + detail::json_type_text(*wm) + ", not an object");

            std::map<std::string, std::size_t> shard_index;
            for (auto it = wm->begin(); it != wm->end(); ++it)
            {
                const std::string& name = it.key();
                if (!it->is_string())
                {
                    detail::format_error(ctx + ": weight_map entry for tensor '" + detail::printable(name) + "' is "
                                         + detail::json_type_text(*it) + ", not a file name");
                }
                const std::string& shard = it->get_ref<const std::string&>();
                auto s = shard_index.find(shard);
                if (s == shard_index.end())
                {
                    const std::filesystem::path rel(shard);
                    bool safe = !shard.empty() && rel.is_relative();
                    for (const auto& part : rel) safe = safe && part != "..";
                    if (!safe)
                    {
                        detail::format_error(ctx + ": tensor '" + detail::printable(name) + "' maps to unsafe shard path '"
                                             + detail::printable(shard) + "' (must be relative, without '..')");
                    }
                    const std::filesystem::path shard_path = m_directory / rel;
                    std::error_code ec;
                    if (!std::filesystem::exists(shard_path, ec))
                    {
                        throw error(error_kind::io, ctx + ": shard '" + shard_path.string() + "' (for tensor '" + detail::printable(name)
                                                        + "') does not exist (incomplete download?)");
                    }
                    s = shard_index.emplace(shard, m_files.size()).first;
                    m_files.push_back(safetensors_file::open(shard_path));
                }
                const safetensors_file& f = m_files[s->second];
                const tensor_info* t = f.find(name);
                if (t == nullptr)
                {
                    detail::format_error(ctx + ": tensor '" + detail::printable(name) + "' is listed in weight_map but not found in shard '"
                                         + f.path().string() + "'");
                }
                m_entries.emplace(name, entry{s->second, static_cast<std::size_t>(t - f.tensors().data())});
            }
        }

        std::filesystem::path m_directory;
        std::vector<safetensors_file> m_files;
        std::map<std::string, entry, std::less<>> m_entries;
    };
}
