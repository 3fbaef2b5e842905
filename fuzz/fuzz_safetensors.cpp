// libFuzzer target for the safetensors reader (orbitq/io/safetensors.hpp).
//
// Every input is parsed from memory with safetensors_file::parse, the same validation that
// safetensors_file::open runs on a mapped file. The contract under test: any byte string either
// yields a file whose every tensor span lies inside the buffer and matches shape x dtype, or
// throws orbitq::error(error_kind::format). Anything else (a crash, a sanitizer report, another
// exception type escaping, an invariant violation below) is a bug.
#include <orbitq/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

namespace
{
    void check(bool ok)
    {
        if (!ok) std::abort();
    }

    template <class T>
    void try_view(const orbitq::io::safetensors_file& f, const orbitq::io::tensor_info& t)
    {
        try
        {
            const auto v = f.view<T>(t.name);
            check(v.rows * v.cols == t.elements());
            // Touch the first and last element: must be inside the buffer (ASan checks).
            volatile auto first = v.row(0)[0];
            volatile auto last = v.row(v.rows - 1)[v.cols - 1];
            (void)first;
            (void)last;
        }
        catch (const orbitq::error&)
        {
            // scalars, empty tensors and misaligned data are refused with an error: fine
        }
    }
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::span<const std::byte> buffer(reinterpret_cast<const std::byte*>(data), size);
    try
    {
        const auto f = orbitq::io::safetensors_file::parse(buffer, "fuzz-input");
        check(f.data_offset() <= size);
        for (const auto& t : f.tensors())
        {
            check(t.begin <= t.end);
            check(t.end - t.begin == t.bytes());
            check(f.find(t.name) == &t);
            const auto b = f.bytes(t);
            check(b.data() >= buffer.data() && b.data() + b.size() <= buffer.data() + buffer.size());
            volatile std::byte sink{};
            if (!b.empty()) sink = b.front() ^ b.back();
            (void)sink;
            switch (t.type)
            {
                case orbitq::io::dtype::f32: try_view<float>(f, t); break;
                case orbitq::io::dtype::bf16: try_view<orbitq::bfloat16_t>(f, t); break;
                case orbitq::io::dtype::f16: try_view<orbitq::float16_t>(f, t); break;
                default: break;
            }
        }
    }
    catch (const orbitq::error& e)
    {
        check(e.kind() == orbitq::error_kind::format);
    }
    return 0;
}
