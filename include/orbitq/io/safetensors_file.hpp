/// @file safetensors_file.hpp
/// @brief safetensors_file: a validated (safetensors_header.hpp), read-only, memory-mapped
///        safetensors file, with zero-copy matrix views of its float tensors.
///
/// The mapping is MAP_PRIVATE, PROT_READ: nothing is ever written to an input. As with any mmap,
/// a file truncated by another process while mapped raises SIGBUS on access; do not modify
/// checkpoints while they are being read.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/io/atomic_file.hpp"
#include "orbitq/io/dtype.hpp"
#include "orbitq/io/safetensors_header.hpp"

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace orbitq::io
{
    namespace detail
    {
        /// @brief A read-only private mapping of a whole file; unmapped on destruction.
        class mapping
        {
        public:
            mapping() = default;
            mapping(const void* p, std::size_t n) noexcept : m_ptr(p), m_size(n) {}
            mapping(mapping&& o) noexcept
                : m_ptr(std::exchange(o.m_ptr, nullptr))
                , m_size(std::exchange(o.m_size, 0))
            {
            }
            mapping& operator=(mapping&& o) noexcept
            {
                if (this != &o)
                {
                    reset();
                    m_ptr = std::exchange(o.m_ptr, nullptr);
                    m_size = std::exchange(o.m_size, 0);
                }
                return *this;
            }
            mapping(const mapping&) = delete;
            mapping& operator=(const mapping&) = delete;
            ~mapping() { reset(); }

            std::span<const std::byte> bytes() const noexcept
            {
                return {static_cast<const std::byte*>(m_ptr), m_size};
            }

        private:
            void reset() noexcept
            {
                if (m_ptr != nullptr) ::munmap(const_cast<void*>(m_ptr), m_size);
                m_ptr = nullptr;
                m_size = 0;
            }
            const void* m_ptr = nullptr;
            std::size_t m_size = 0;
        };

    }

    /// @brief A validated, read-only, memory-mapped safetensors file. Move-only; unmaps on
    ///        destruction. Every accessor is const and safe to call from several threads.
    class safetensors_file
    {
    public:
        /// @brief Maps and validates the file at `path`.
        /// @throws error_kind::io if it cannot be opened, stat'ed or mapped (or is not a regular
        ///         file); error_kind::format naming the file (and tensor) if it is malformed.
        static safetensors_file open(const std::filesystem::path& path)
        {
            detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
            if (!fd) detail::throw_io("cannot open safetensors file", path, errno);
            struct ::stat st;
            if (::fstat(fd.get(), &st) != 0) detail::throw_io("cannot stat safetensors file", path, errno);
            if (!S_ISREG(st.st_mode)) throw error(error_kind::io, "safetensors file '" + path.string() + "' is not a regular file");
            const auto size = static_cast<std::size_t>(st.st_size);
            if (size < 8)
            {
                // Parse the few bytes for the uniform "too short" message; nothing to map.
                std::array<std::byte, 8> small{};
                const ::ssize_t r = size ? ::pread(fd.get(), small.data(), size, 0) : 0;
                if (r < 0) detail::throw_io("cannot read safetensors file", path, errno);
                (void)detail::parse_safetensors(std::span<const std::byte>(small.data(), static_cast<std::size_t>(r)), path.string());
            }
            void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
            if (p == MAP_FAILED) detail::throw_io("cannot memory-map safetensors file", path, errno);
            detail::mapping map(p, size);
            safetensors_file f = parse(map.bytes(), path.string());
            f.m_map = std::move(map);
            f.m_path = path;
            return f;
        }

        /// @brief Validates an in-memory safetensors image without copying it.
        /// @param buffer the whole file; must outlive the returned object (which does not own it).
        /// @param label  the name used in error messages and returned by path().
        /// @throws error_kind::format as open().
        static safetensors_file parse(std::span<const std::byte> buffer, std::string label)
        {
            detail::parsed_header h = detail::parse_safetensors(buffer, label);
            safetensors_file f;
            f.m_path = label;
            f.m_label = std::move(label);
            f.m_buffer = buffer;
            f.m_header_size = h.header_size;
            f.m_tensors = std::move(h.tensors);
            f.m_metadata = std::move(h.metadata);
            for (std::size_t i = 0; i < f.m_tensors.size(); ++i) f.m_index.emplace(f.m_tensors[i].name, i);
            return f;
        }

        safetensors_file(safetensors_file&&) noexcept = default;
        safetensors_file& operator=(safetensors_file&&) noexcept = default;
        safetensors_file(const safetensors_file&) = delete;
        safetensors_file& operator=(const safetensors_file&) = delete;
        ~safetensors_file() = default;

        /// @brief The path given to open() (or the label given to parse()).
        const std::filesystem::path& path() const noexcept { return m_path; }
        /// @brief Tensors in header order ("__metadata__" excluded).
        const std::vector<tensor_info>& tensors() const noexcept { return m_tensors; }
        /// @brief The "__metadata__" map (empty when absent).
        const std::map<std::string, std::string>& metadata() const noexcept { return m_metadata; }
        /// @brief N, the JSON header's length in bytes.
        std::size_t header_size() const noexcept { return m_header_size; }
        /// @brief The data section's offset in the file: 8 + N.
        std::size_t data_offset() const noexcept { return 8 + m_header_size; }
        /// @brief Size of the whole file in bytes.
        std::size_t file_size() const noexcept { return m_buffer.size(); }

        /// @brief The tensor named `name`, or nullptr.
        const tensor_info* find(std::string_view name) const
        {
            const auto it = m_index.find(name);
            return it == m_index.end() ? nullptr : &m_tensors[it->second];
        }

        /// @brief The tensor named `name`. @throws error_kind::format naming file and tensor if absent.
        const tensor_info& at(std::string_view name) const
        {
            if (const tensor_info* t = find(name)) return *t;
            detail::format_error(detail::file_context(m_label) + ": no tensor named '" + detail::printable(name) + "'");
        }

        /// @brief The raw little-endian bytes of a tensor (any dtype, any alignment).
        /// @pre `t` describes this file (checked: its span must lie inside the data section).
        std::span<const std::byte> bytes(const tensor_info& t) const
        {
            if (t.begin > t.end || t.end > m_buffer.size() - data_offset())
            {
                detail::format_error(detail::tensor_context(m_label, t.name) + ": data_offsets [" + std::to_string(t.begin) + ", "
                                     + std::to_string(t.end) + "] do not lie inside this file's data section");
            }
            return m_buffer.subspan(data_offset() + t.begin, t.end - t.begin);
        }

        /// @brief The bytes of the tensor named `name`. @throws as at().
        std::span<const std::byte> bytes(std::string_view name) const { return bytes(at(name)); }

        /// @brief A zero-copy matrix view of a float tensor (shape rule of core/view.hpp).
        /// @tparam T float, bfloat16_t or float16_t; must match the tensor's dtype exactly.
        /// @pre the tensor's data is aligned to alignof(T): true for files whose header is padded
        ///      to 8 bytes (Hugging Face's and this library's writers) with size-sorted tensors.
        /// @throws error_kind::format naming file and tensor if absent, if the dtype differs, if
        ///         the data is misaligned (use bytes() and copy), or if the shape is a scalar or
        ///         has a zero extent (error_kind::invalid_argument / empty_tensor).
        template <weight_element T>
        matrix_view<T> view(std::string_view name) const
        {
            const tensor_info& t = at(name);
            const element_type want = element_type_of<T>();
            if (as_element_type(t.type) != want)
            {
                detail::format_error(detail::tensor_context(m_label, t.name) + ": dtype " + std::string(dtype_name(t.type))
                                     + " cannot be viewed as " + std::string(element_name(want)));
            }
            const std::span<const std::byte> b = bytes(t);
            if (reinterpret_cast<std::uintptr_t>(b.data()) % alignof(T) != 0)
            {
                detail::format_error(detail::tensor_context(m_label, t.name) + ": data at file offset "
                                     + std::to_string(data_offset() + t.begin) + " is not aligned to " + std::to_string(alignof(T))
                                     + " bytes, so it cannot be viewed in place; copy bytes() instead");
            }
            try
            {
                return make_view(reinterpret_cast<const T*>(b.data()), t.shape, t.name);
            }
            catch (const error& e)
            {
                throw error(e.kind(), detail::tensor_context(m_label, t.name) + ": " + e.what());
            }
        }

        /// @brief Hints the kernel to read a tensor's pages ahead (MADV_WILLNEED). No-op for
        ///        parse()d buffers; never fails.
        void prefetch(const tensor_info& t) const noexcept { advise(t, MADV_WILLNEED); }

        /// @brief Drops a tensor's pages from this process's resident set (MADV_DONTNEED on the
        ///        read-only mapping; they are re-read from the file if touched again), so that a
        ///        pass over a 50 GB checkpoint keeps its RSS near the working set. Never fails.
        void release(const tensor_info& t) const noexcept { advise(t, MADV_DONTNEED); }

    private:
        safetensors_file() = default;

        void advise(const tensor_info& t, int advice) const noexcept
        {
            const auto all = m_map.bytes();
            if (all.empty() || t.begin >= t.end || t.end > all.size() - data_offset()) return;
            const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
            const auto base = reinterpret_cast<std::uintptr_t>(all.data());
            const std::uintptr_t lo = (base + data_offset() + t.begin) / page * page;
            const std::uintptr_t hi = base + data_offset() + t.end;
            ::madvise(reinterpret_cast<void*>(lo), hi - lo, advice);
        }

        std::filesystem::path m_path;
        std::string m_label;
        detail::mapping m_map;
        std::span<const std::byte> m_buffer;
        std::size_t m_header_size = 0;
        std::vector<tensor_info> m_tensors;
        std::map<std::string, std::size_t, std::less<>> m_index;
        std::map<std::string, std::string> m_metadata;
    };
}
