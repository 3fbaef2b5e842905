/// @file checkpoint_writer.hpp
/// @brief write_checkpoint: a sharded Hugging Face checkpoint written shard by shard, with its
///        index as the commit point; the shard naming and planning it uses.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/io/atomic_file.hpp"
#include "orbitq/io/checkpoint.hpp"
#include "orbitq/io/dtype.hpp"
#include "orbitq/io/safetensors_writer.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <unistd.h>

namespace orbitq::io
{
    /// @brief The HF shard file name: model-0000K-of-0000M.safetensors (1-based K).
    inline std::string shard_file_name(std::size_t k, std::size_t m)
    {
        auto pad5 = [](std::size_t v) {
            std::string s = std::to_string(v);
            return s.size() < 5 ? std::string(5 - s.size(), '0') + s : s;
        };
        return "model-" + pad5(k) + "-of-" + pad5(m) + ".safetensors";
    }

    /// @brief True for names of the form model-NNNNN-of-NNNNN.safetensors (five or more digits).
    inline bool is_shard_file_name(std::string_view name)
    {
        auto digits = [&](std::size_t& i) {
            const std::size_t start = i;
            while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
            return i - start >= 5;
        };
        auto literal = [&](std::size_t& i, std::string_view lit) {
            if (name.substr(i, lit.size()) != lit) return false;
            i += lit.size();
            return true;
        };
        std::size_t i = 0;
        return literal(i, "model-") && digits(i) && literal(i, "-of-") && digits(i) && literal(i, ".safetensors") && i == name.size();
    }

    /// @brief Splits declarations, in order, into shards of at most max_shard_bytes of data; a
    ///        tensor larger than that gets a shard of its own. Returns each shard's [first, last)
    ///        range of declaration indices.
    inline std::vector<std::pair<std::size_t, std::size_t>> plan_shards(const std::vector<tensor_decl>& decls,
                                                                        std::size_t max_shard_bytes)
    {
        std::vector<std::pair<std::size_t, std::size_t>> shards;
        std::uint64_t current = 0;
        for (std::size_t i = 0; i < decls.size(); ++i)
        {
            const std::uint64_t b = decls[i].bytes();
            // A new shard starts when this tensor would push a shard that already holds data past
            // the limit; empty tensors never start one.
            if (shards.empty() || (b > 0 && current > 0 && (current + b > max_shard_bytes || current + b < current)))
            {
                shards.emplace_back(i, i);
                current = 0;
            }
            shards.back().second = i + 1;
            current += b;
        }
        return shards;
    }

    /// @brief Writes a sharded Hugging Face checkpoint into `dir` (created if missing).
    ///
    /// Shards are planned by plan_shards and named by shard_file_name (a single shard is still
    /// model-00001-of-00001.safetensors); each shard is a safetensors_writer carrying `metadata`.
    /// `produce` is called once per tensor, in declaration order, with a zero-filled buffer of
    /// exactly the tensor's bytes to fill; the buffer is reused, so peak memory is the largest
    /// tensor. model.safetensors.index.json ({"metadata": {"total_size": N}, "weight_map":
    /// {name: shard}}) is written last and is the commit point: a checkpoint is complete exactly
    /// when its index exists. Hence, with overwrite=false, an existing index is refused, while
    /// shard files without an index (left by an interrupted run) are replaced, and hidden
    /// temporaries of shards or index left by a killed process are removed first (see
    /// remove_stale_temporaries). With overwrite=true, the old index is removed before the first
    /// shard is written (an interrupted rewrite leaves no index, never an old index over a mix of
    /// old and new shards) and, once the new index is written, files named
    /// like shards (model-NNNNN-of-NNNNN.safetensors) that the new index does not name are
    /// removed, so that a smaller checkpoint replacing a larger one leaves no stray shards.
    /// @throws error_kind::invalid_argument on bad declarations or max_shard_bytes == 0;
    ///         error_kind::io on write failures or a refused overwrite; whatever `produce` throws.
    ///         On any exception, no file of this call is left under a final name except shards
    ///         already committed; the index is not written.
    inline void write_checkpoint(const std::filesystem::path& dir, const std::vector<tensor_decl>& decls,
                                 const std::function<void(const tensor_decl&, std::span<std::byte>)>& produce,
                                 std::size_t max_shard_bytes = std::size_t(4) << 30, std::map<std::string, std::string> metadata = {},
                                 bool overwrite = false)
    {
        namespace fs = std::filesystem;
        const fs::path index = dir / checkpoint::index_name;
        if (max_shard_bytes == 0) throw error(error_kind::invalid_argument, "writing checkpoint '" + dir.string() + "': max_shard_bytes is 0");
        const std::vector<std::uint64_t> sizes = detail::checked_decl_bytes(decls, dir.string());
        std::uint64_t total = 0;
        for (const auto s : sizes)
        {
            if (__builtin_add_overflow(total, s, &total))
            {
                throw error(error_kind::invalid_argument, "writing checkpoint '" + dir.string() + "': total size overflows 64 bits");
            }
        }
        if (!overwrite && detail::path_exists(index))
        {
            throw error(error_kind::io, "refusing to overwrite existing checkpoint '" + dir.string() + "' (" + index.string() + " exists)");
        }
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (ec) throw error(error_kind::io, "cannot create checkpoint directory '" + dir.string() + "': " + ec.message());
        // A killed earlier run may have left (preallocated, possibly huge) temporaries.
        remove_stale_temporaries(dir, [](std::string_view name) { return name == checkpoint::index_name || is_shard_file_name(name); });
        // Replacing a checkpoint: withdraw its index first, so that an interrupted rewrite leaves
        // an incomplete checkpoint (no index), never an old index over a mix of old and new shards.
        if (overwrite && detail::path_exists(index))
        {
            if (::unlink(index.c_str()) != 0) detail::throw_io("cannot remove the old index", index, errno);
            detail::fsync_directory(dir);
        }

        const auto plan = plan_shards(decls, max_shard_bytes);
        if (plan.size() > 99999) throw error(error_kind::invalid_argument, "writing checkpoint '" + dir.string() + "': more than 99999 shards");
        nlohmann::json weight_map = nlohmann::json::object();
        std::unique_ptr<std::byte[]> buffer;
        std::size_t capacity = 0;
        for (std::size_t k = 0; k < plan.size(); ++k)
        {
            const auto [first, last] = plan[k];
            const std::string shard = shard_file_name(k + 1, plan.size());
            std::vector<tensor_decl> shard_decls(decls.begin() + static_cast<std::ptrdiff_t>(first),
                                                 decls.begin() + static_cast<std::ptrdiff_t>(last));
            safetensors_writer w(dir / shard, shard_decls, metadata, /*overwrite=*/true);
            for (std::size_t i = first; i < last; ++i)
            {
                const std::size_t n = static_cast<std::size_t>(sizes[i]);
                if (n > capacity)
                {
                    buffer = std::make_unique_for_overwrite<std::byte[]>(n);
                    capacity = n;
                }
                const std::span<std::byte> buf(buffer.get(), n);
                std::fill(buf.begin(), buf.end(), std::byte{0});
                produce(decls[i], buf);
                w.write(decls[i].name, buf);
                weight_map[decls[i].name] = shard;
            }
            w.commit();
        }
        const nlohmann::json index_json = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
        write_file_atomic(index, index_json.dump(2) + "\n", overwrite);

        // When replacing a checkpoint, shards of the old one that the new index does not name
        // would be picked up by tools that glob *.safetensors: remove them, now that the new
        // checkpoint is complete.
        if (overwrite)
        {
            std::set<std::string> current;
            for (std::size_t k = 0; k < plan.size(); ++k) current.insert(shard_file_name(k + 1, plan.size()));
            std::vector<fs::path> stale;
            for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
            {
                const std::string name = it->path().filename().string();
                if (is_shard_file_name(name) && current.count(name) == 0) stale.push_back(it->path());
            }
            for (const auto& p : stale) fs::remove(p, ec);
        }
    }
}
