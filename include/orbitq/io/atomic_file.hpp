/// @file atomic_file.hpp
/// @brief Crash-safe file output on POSIX: write under a hidden temporary name in the target's
///        directory, fsync, rename onto the final name, fsync the directory.
///
/// The guarantee: at every instant, the final path either does not exist (or still holds its
/// previous contents) or holds the complete new contents. A process killed mid-write leaves at
/// most a hidden temporary file named `.<final name>.tmp.<pid>.<n>`, never a truncated file under
/// the final name. Temporaries of a killed process are not reclaimed automatically (another
/// process may own them); they are safe to delete.
#pragma once

#include "orbitq/core/error.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

namespace orbitq::io
{
    namespace detail
    {
        /// @brief The text of an errno value (thread-safe, unlike strerror).
        inline std::string errno_text(int e) { return std::error_code(e, std::generic_category()).message(); }

        /// @brief Throws error_kind::io: "<what> '<path>': <errno text>".
        [[noreturn]] inline void throw_io(std::string_view what, const std::filesystem::path& p, int e)
        {
            throw error(error_kind::io, std::string(what) + " '" + p.string() + "': " + errno_text(e));
        }

        /// @brief An owned POSIX file descriptor; closed (errors ignored) on destruction.
        class unique_fd
        {
        public:
            unique_fd() = default;
            explicit unique_fd(int fd) noexcept : m_fd(fd) {}
            unique_fd(unique_fd&& o) noexcept : m_fd(std::exchange(o.m_fd, -1)) {}
            unique_fd& operator=(unique_fd&& o) noexcept
            {
                if (this != &o)
                {
                    reset();
                    m_fd = std::exchange(o.m_fd, -1);
                }
                return *this;
            }
            unique_fd(const unique_fd&) = delete;
            unique_fd& operator=(const unique_fd&) = delete;
            ~unique_fd() { reset(); }

            int get() const noexcept { return m_fd; }
            explicit operator bool() const noexcept { return m_fd >= 0; }
            int release() noexcept { return std::exchange(m_fd, -1); }
            void reset() noexcept
            {
                if (m_fd >= 0) ::close(m_fd);
                m_fd = -1;
            }

        private:
            int m_fd = -1;
        };

        /// @brief Writes all of `data` at `offset`, retrying on short writes and EINTR.
        /// @throws error_kind::io naming `file` (disk full shows as "No space left on device").
        inline void pwrite_all(int fd, std::span<const std::byte> data, std::uint64_t offset,
                               const std::filesystem::path& file)
        {
            const std::byte* p = data.data();
            std::size_t left = data.size();
            while (left > 0)
            {
                const std::size_t chunk = left < (std::size_t(1) << 30) ? left : (std::size_t(1) << 30);
                const ::ssize_t w = ::pwrite(fd, p, chunk, static_cast<::off_t>(offset));
                if (w < 0)
                {
                    if (errno == EINTR) continue;
                    throw_io("cannot write", file, errno);
                }
                if (w == 0) throw_io("cannot write", file, EIO);
                p += w;
                left -= static_cast<std::size_t>(w);
                offset += static_cast<std::uint64_t>(w);
            }
        }

        /// @brief fsyncs a directory so that a rename inside it is durable.
        /// @throws error_kind::io; filesystems that cannot sync directories (EINVAL) are accepted.
        inline void fsync_directory(const std::filesystem::path& dir)
        {
            const std::filesystem::path d = dir.empty() ? std::filesystem::path(".") : dir;
            unique_fd fd(::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            if (!fd) throw_io("cannot open directory", d, errno);
            if (::fsync(fd.get()) != 0 && errno != EINVAL) throw_io("cannot fsync directory", d, errno);
        }

        /// @brief True when something (even a dangling symlink) exists at `p`.
        inline bool path_exists(const std::filesystem::path& p)
        {
            struct ::stat st;
            return ::lstat(p.c_str(), &st) == 0;
        }
    }

    /// @brief A file being written under a hidden temporary name next to its final path.
    ///
    /// Create it, write at any offsets, then commit(): fsync, publish under the final name
    /// (atomically refusing an existing one unless overwrite), fsync the directory. Destroying an
    /// uncommitted temp_file removes the temporary. Move-only.
    class temp_file
    {
    public:
        /// @brief Creates the temporary file (mode 0666 & ~umask) in final_path's directory.
        /// @param overwrite when false, refuses now (and again at commit) if final_path exists.
        /// @throws error_kind::io if the final path exists and !overwrite, if the directory is
        ///         missing or unwritable.
        temp_file(std::filesystem::path final_path, bool overwrite)
            : m_final(std::move(final_path))
            , m_overwrite(overwrite)
        {
            if (m_final.filename().empty())
            {
                throw error(error_kind::io, "cannot write '" + m_final.string() + "': not a file name");
            }
            if (!m_overwrite && detail::path_exists(m_final))
            {
                throw error(error_kind::io, "refusing to overwrite existing file '" + m_final.string() + "'");
            }
            static std::atomic<unsigned long> counter{0};
            std::string base = m_final.filename().string();
            if (base.size() > 200) base.resize(200);  // stay under NAME_MAX with the suffix
            for (int attempt = 0;; ++attempt)
            {
                m_temp = m_final.parent_path()
                         / ("." + base + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++));
                const int fd = ::open(m_temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
                if (fd >= 0)
                {
                    m_fd = detail::unique_fd(fd);
                    break;
                }
                if (errno != EEXIST || attempt > 100) detail::throw_io("cannot create temporary file", m_temp, errno);
            }
        }

        temp_file(temp_file&& o) noexcept
            : m_final(std::move(o.m_final))
            , m_temp(std::move(o.m_temp))
            , m_fd(std::move(o.m_fd))
            , m_overwrite(o.m_overwrite)
            , m_done(std::exchange(o.m_done, true))
            , m_committed(o.m_committed)
        {
        }
        temp_file& operator=(temp_file&& o) noexcept
        {
            if (this != &o)
            {
                discard();
                m_final = std::move(o.m_final);
                m_temp = std::move(o.m_temp);
                m_fd = std::move(o.m_fd);
                m_overwrite = o.m_overwrite;
                m_done = std::exchange(o.m_done, true);
                m_committed = o.m_committed;
            }
            return *this;
        }
        temp_file(const temp_file&) = delete;
        temp_file& operator=(const temp_file&) = delete;
        ~temp_file() { discard(); }

        /// @brief The path the file gets on commit.
        const std::filesystem::path& final_path() const noexcept { return m_final; }
        /// @brief The hidden temporary path written until commit.
        const std::filesystem::path& temp_path() const noexcept { return m_temp; }
        /// @brief True once commit() succeeded.
        bool committed() const noexcept { return m_committed; }

        /// @brief Reserves `size` bytes of disk up front so that a full disk fails now, not after
        ///        hours of work. Falls back to setting the length where the filesystem cannot
        ///        allocate (the writes then report ENOSPC themselves).
        /// @throws error_kind::io on ENOSPC and other real failures.
        void reserve(std::uint64_t size)
        {
            check_open();
            if (size == 0) return;
            int rc = ::posix_fallocate(m_fd.get(), 0, static_cast<::off_t>(size));
            if (rc == EINVAL || rc == EOPNOTSUPP)
            {
                rc = ::ftruncate(m_fd.get(), static_cast<::off_t>(size)) == 0 ? 0 : errno;
            }
            if (rc != 0)
            {
                throw error(error_kind::io, "cannot reserve " + std::to_string(size) + " bytes for '" + m_final.string()
                                                + "': " + detail::errno_text(rc));
            }
        }

        /// @brief Writes `data` at byte `offset` of the temporary file.
        /// @throws error_kind::io naming the final path.
        void write_at(std::uint64_t offset, std::span<const std::byte> data)
        {
            check_open();
            detail::pwrite_all(m_fd.get(), data, offset, m_final);
        }

        /// @brief fsync, close, publish under the final name, fsync the directory.
        /// @throws error_kind::io; on failure before publishing, the temporary is removed and the
        ///         final path is untouched.
        void commit()
        {
            check_open();
            try
            {
                if (::fsync(m_fd.get()) != 0) detail::throw_io("cannot fsync", m_final, errno);
                if (::close(m_fd.release()) != 0) detail::throw_io("cannot close", m_final, errno);
                publish();
            }
            catch (...)
            {
                discard();
                throw;
            }
            m_done = true;
            m_committed = true;
            detail::fsync_directory(m_final.parent_path());
        }

        /// @brief Removes the temporary file if not committed. Never throws.
        void discard() noexcept
        {
            if (m_done) return;
            m_fd.reset();
            if (!m_temp.empty()) ::unlink(m_temp.c_str());
            m_done = true;
        }

    private:
        void check_open() const
        {
            if (m_done || !m_fd)
            {
                throw error(error_kind::io, "file '" + m_final.string() + "' is already committed or discarded");
            }
        }

        void publish()
        {
            if (m_overwrite)
            {
                if (::rename(m_temp.c_str(), m_final.c_str()) != 0) detail::throw_io("cannot rename temporary file to", m_final, errno);
                return;
            }
            // link() fails with EEXIST instead of replacing: no window in which an existing file
            // created by someone else since construction could be clobbered.
            if (::link(m_temp.c_str(), m_final.c_str()) == 0)
            {
                ::unlink(m_temp.c_str());
                return;
            }
            const int e = errno;
            if (e == EEXIST) throw error(error_kind::io, "refusing to overwrite existing file '" + m_final.string() + "'");
            // Filesystems without hard links: check, then rename (a small race is unavoidable).
            if (detail::path_exists(m_final)) throw error(error_kind::io, "refusing to overwrite existing file '" + m_final.string() + "'");
            if (::rename(m_temp.c_str(), m_final.c_str()) != 0) detail::throw_io("cannot rename temporary file to", m_final, errno);
        }

        std::filesystem::path m_final;
        std::filesystem::path m_temp;
        detail::unique_fd m_fd;
        bool m_overwrite = false;
        bool m_done = false;
        bool m_committed = false;
    };

    /// @brief Writes a small file (config.json, a report) atomically: temporary in the same
    ///        directory, fsync, rename, fsync of the directory.
    /// @param overwrite when false, throws error_kind::io if `path` exists.
    /// @throws error_kind::io naming `path`.
    inline void write_file_atomic(const std::filesystem::path& path, std::string_view contents, bool overwrite = true)
    {
        temp_file f(path, overwrite);
        f.reserve(contents.size());
        f.write_at(0, std::as_bytes(std::span<const char>(contents.data(), contents.size())));
        f.commit();
    }

    /// @brief Removes temporaries that a killed writer left in `dir`: hidden files named
    ///        `.<final>.tmp.<pid>.<n>` (as temp_file names them) whose `<final>` satisfies
    ///        `is_ours` and whose process no longer exists on this machine. Temporaries of live
    ///        processes, and every other file, are left alone. Never throws.
    /// @return the number of files removed.
    /// @pre no process on another machine writes into `dir` (a pid is only meaningful locally).
    template <class Predicate>
    std::size_t remove_stale_temporaries(const std::filesystem::path& dir, Predicate is_ours) noexcept
    {
        std::size_t removed = 0;
        std::error_code ec;
        for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
        {
            const std::string name = it->path().filename().string();
            const auto tmp = name.rfind(".tmp.");
            if (name.size() < 2 || name[0] != '.' || tmp == std::string::npos || tmp < 1) continue;
            const std::string final_name = name.substr(1, tmp - 1);
            const std::string rest = name.substr(tmp + 5);  // "<pid>.<n>"
            const auto dot = rest.find('.');
            if (dot == std::string::npos || dot == 0 || dot + 1 >= rest.size()) continue;
            if (rest.find_first_not_of("0123456789.") != std::string::npos) continue;
            long pid = 0;
            try
            {
                pid = std::stol(rest.substr(0, dot));
            }
            catch (...)
            {
                continue;
            }
            if (pid <= 0 || pid == static_cast<long>(::getpid())) continue;
            if (::kill(static_cast<::pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or unknown
            try
            {
                if (!is_ours(std::string_view(final_name))) continue;
            }
            catch (...)
            {
                continue;
            }
            if (::unlink(it->path().c_str()) == 0) ++removed;
        }
        return removed;
    }

    /// @brief True when `p` is `dir` or lies inside it, after resolving symlinks, "." and ".."
    ///        of the parts that exist (std::filesystem::weakly_canonical). Use it to refuse an
    ///        output directory equal to or inside an input checkpoint.
    /// @throws error_kind::io if a path cannot be resolved.
    inline bool path_is_within(const std::filesystem::path& p, const std::filesystem::path& dir)
    {
        std::error_code ec;
        const auto a = std::filesystem::weakly_canonical(std::filesystem::absolute(p, ec), ec);
        if (ec) throw error(error_kind::io, "cannot resolve path '" + p.string() + "': " + ec.message());
        const auto b = std::filesystem::weakly_canonical(std::filesystem::absolute(dir, ec), ec);
        if (ec) throw error(error_kind::io, "cannot resolve path '" + dir.string() + "': " + ec.message());
        auto ai = a.begin();
        for (auto bi = b.begin(); bi != b.end(); ++bi, ++ai)
        {
            if (bi->empty()) continue;  // a trailing separator yields an empty last element
            if (ai == a.end() || *ai != *bi) return false;
        }
        return true;
    }
}
