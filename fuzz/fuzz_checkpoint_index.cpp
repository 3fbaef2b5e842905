// libFuzzer target for checkpoint::open on a directory whose model.safetensors.index.json is the
// fuzzer's input. The directory also holds two valid shards (s1.safetensors with tensors "a" and
// "b", s2.safetensors with "c"), so inputs can reach every index check: JSON, weight_map shape,
// unsafe or missing shard paths, tensors absent from their shard. Contract: checkpoint::open
// either succeeds, with every listed tensor readable, or throws orbitq::error.
#include <orbitq/io/safetensors.hpp>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include <cerrno>
#include <csignal>

#include <unistd.h>

namespace
{
    namespace fs = std::filesystem;
    using namespace orbitq::io;

    const fs::path& fixture()
    {
        static const fs::path dir = [] {
#ifdef ORBITQ_FUZZ_FIXTURE_DIR
            const fs::path base = ORBITQ_FUZZ_FIXTURE_DIR;  // the build tree: nothing left in /tmp
#else
            const fs::path base = fs::temp_directory_path();
#endif
            // libFuzzer may end without running exit handlers: reclaim fixtures of dead runs.
            std::error_code ec;
            for (fs::directory_iterator it(base, ec), end; !ec && it != end; it.increment(ec))
            {
                const std::string n = it->path().filename().string();
                if (n.rfind("orbitq_fuzz_index_", 0) != 0) continue;
                const long pid = std::strtol(n.c_str() + 18, nullptr, 10);
                if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove_all(it->path(), ec);
            }
            const fs::path d = base / ("orbitq_fuzz_index_" + std::to_string(::getpid()));
            fs::create_directories(d);
            auto shard = [&](const char* name, std::vector<tensor_decl> decls) {
                safetensors_writer w(d / name, decls, {{"format", "pt"}}, true);
                for (const auto& t : decls) w.write(t.name, std::vector<std::byte>(t.bytes(), std::byte{7}));
                w.commit();
            };
            shard("s1.safetensors", {{"a", dtype::f32, {2, 3}}, {"b", dtype::bf16, {4}}});
            shard("s2.safetensors", {{"c", dtype::i8, {5}}});
            std::atexit([] {
                std::error_code ec;
                fs::remove_all(fixture(), ec);
            });
            return d;
        }();
        return dir;
    }
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const fs::path& dir = fixture();
    {
        // A plain write: the atomic writer's fsyncs would cap the fuzzer at a few hundred runs/s.
        std::ofstream out(dir / checkpoint::index_name, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    }
    try
    {
        const auto c = checkpoint::open(dir);
        for (const auto& name : c.names())
        {
            const auto b = c.bytes(name);
            if (b.size() != c.info(name).bytes()) std::abort();
        }
    }
    catch (const orbitq::error&)
    {
    }
    return 0;
}
