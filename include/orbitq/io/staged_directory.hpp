/// @file staged_directory.hpp
/// @brief A directory written in full under a staging name of its own and then published
///        onto its final name in one step, or not at all.
///
/// The staging directory (`.NAME.partial.PID.N` next to NAME, created exclusively) belongs to
/// one writer; publish() renames it onto NAME only if nothing holds that name then
/// (renameat2 RENAME_NOREPLACE), so NAME appears complete or not at all and two writers of the
/// same NAME never mix their files: the second to publish fails. With `overwrite`, an existing
/// NAME is swapped with the staging directory in one atomic step (RENAME_EXCHANGE) and the old
/// contents, now under the staging name, are then removed: no stale file survives. An
/// unpublished staging directory is removed by its destructor; one left by a killed process
/// (its PID gone) is removed by the next writer for the same NAME.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/io/atomic_file.hpp"

#include <atomic>
#include <filesystem>
#include <string>
#include <system_error>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace orbitq::io
{
    /// @brief A staging directory for `dir` (see the file brief).
    class staged_directory
    {
    public:
        /// @brief Creates this writer's staging directory (after removing stale ones).
        /// @throws error (io) when it cannot be created.
        staged_directory(std::filesystem::path dir, bool overwrite)
            : m_dir(std::move(dir))
            , m_stage(make_stage(m_dir))
            , m_overwrite(overwrite)
        {
        }
        staged_directory(const staged_directory&) = delete;
        staged_directory& operator=(const staged_directory&) = delete;
        ~staged_directory()
        {
            if (!m_finished)
            {
                std::error_code ec;
                std::filesystem::remove_all(m_stage, ec);
            }
        }

        /// @brief Where the contents are written until publish().
        const std::filesystem::path& path() const noexcept { return m_stage; }
        /// @brief The final name.
        const std::filesystem::path& target() const noexcept { return m_dir; }

        /// @brief fsyncs the staging directory, renames it onto the target, fsyncs the parent.
        /// @throws error (io) when the target appeared meanwhile (without overwrite) or cannot be
        ///         replaced; the staging directory is then removed by the destructor.
        void publish()
        {
            detail::fsync_directory(m_stage);
            publish_now();
            detail::fsync_directory(m_dir.has_parent_path() ? m_dir.parent_path() : std::filesystem::path("."));
        }

    private:
        /// Removes staging directories of `dir` whose writer is gone (its PID does not run, or
        /// the name carries no PID, which no writer uses), then creates this writer's own.
        static std::filesystem::path make_stage(const std::filesystem::path& dir)
        {
            namespace fs = std::filesystem;
            const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
            std::string base = ".";  // appended piece by piece: GCC 12 misreports "." + string&& (-Wrestrict)
            base.append(dir.filename().string()).append(".partial");
            std::error_code ec;
            for (const auto& e : fs::directory_iterator(parent, ec))
            {
                const std::string n = e.path().filename().string();
                if (n.rfind(base, 0) != 0) continue;
                const std::string rest = n.substr(base.size());  // "" or ".PID.N"
                bool stale = rest.empty();
                if (!stale && rest[0] == '.')
                {
                    const std::string pid = rest.substr(1, rest.find('.', 1) - 1);
                    if (!pid.empty() && pid.find_first_not_of("0123456789") == std::string::npos)
                    {
                        stale = ::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH;
                    }
                }
                if (stale) fs::remove_all(e.path(), ec);
            }
            static std::atomic<unsigned> counter{0};
            for (int attempt = 0;; ++attempt)
            {
                const fs::path p = parent / (base + "." + std::to_string(::getpid()) + "." + std::to_string(counter++));
                if (::mkdir(p.c_str(), 0755) == 0) return p;
                if (errno != EEXIST || attempt > 1000) detail::throw_io("cannot create the staging directory", p, errno);
            }
        }

        /// Renames the staging directory onto `dir`: only if nothing holds that name, or, with
        /// overwrite, by exchanging the two atomically.
        void publish_now()
        {
            std::error_code ec;
            // With overwrite, a `dir` that appears or vanishes meanwhile (another writer) is
            // met by the other of the two renames; a few rounds settle any such race.
            for (int round = 0; round < (m_overwrite ? 8 : 1); ++round)
            {
                if (m_overwrite && std::filesystem::exists(std::filesystem::symlink_status(m_dir, ec)))
                {
                    if (::renameat2(AT_FDCWD, m_stage.c_str(), AT_FDCWD, m_dir.c_str(), RENAME_EXCHANGE) == 0)
                    {
                        // The old output now sits under the staging name.
                        m_finished = true;
                        std::filesystem::remove_all(m_stage, ec);
                        return;
                    }
                    if (errno == ENOENT) continue;
                    detail::throw_io("cannot exchange the new output with the existing", m_dir, errno);
                }
                if (::renameat2(AT_FDCWD, m_stage.c_str(), AT_FDCWD, m_dir.c_str(), RENAME_NOREPLACE) == 0)
                {
                    m_finished = true;
                    return;
                }
                if (errno == EEXIST || errno == ENOTEMPTY) continue;
                if (errno != EINVAL) detail::throw_io("cannot rename the staging directory to", m_dir, errno);
                // A file system without RENAME_NOREPLACE: a plain rename, which also refuses a
                // non-empty directory.
                if (!std::filesystem::exists(std::filesystem::symlink_status(m_dir, ec)))
                {
                    if (::rename(m_stage.c_str(), m_dir.c_str()) != 0) detail::throw_io("cannot rename the staging directory to", m_dir, errno);
                    m_finished = true;
                    return;
                }
            }
            throw error(error_kind::io, "--out '" + m_dir.string()
                                            + "' appeared while this conversion ran (another conversion writing there?); it is left as it is and "
                                              "nothing of this run was written; pass --force to replace it");
        }

        std::filesystem::path m_dir;
        std::filesystem::path m_stage;
        bool m_overwrite;
        bool m_finished = false;
    };
}
