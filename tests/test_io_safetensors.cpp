// Tests of orbitq/io/safetensors.hpp and orbitq/io/atomic_file.hpp: byte-exact writer output,
// round trips through safetensors_writer and write_checkpoint, every validation error of the
// reader (each must name the file and, where there is one, the tensor), atomicity and refusal to
// overwrite.
//
// Set ORBITQ_DUMP_CORPUS=<dir> to also write every malformed file built here into <dir> (this is
// how fuzz/corpus/ is produced).
#include <doctest/doctest.h>

#include <orbitq/io/importance.hpp>
#include <orbitq/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include <csignal>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace orbitq;
using namespace orbitq::io;

namespace
{
    /// A fresh, empty directory under the system temp dir, removed at the end of the test.
    struct scratch_dir
    {
        fs::path path;
        scratch_dir()
        {
            static int counter = 0;
            std::random_device rd;
            path = fs::temp_directory_path()
                   / ("orbitq_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + std::to_string(rd()));
            fs::create_directories(path);
        }
        ~scratch_dir()
        {
            std::error_code ec;
            fs::remove_all(path, ec);
        }
        std::vector<std::string> listing() const
        {
            std::vector<std::string> out;
            for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
            std::sort(out.begin(), out.end());
            return out;
        }
    };

    std::vector<std::byte> to_bytes(std::string_view s)
    {
        std::vector<std::byte> out(s.size());
        if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
        return out;
    }

    std::string read_all(const fs::path& p)
    {
        std::ifstream in(p, std::ios::binary);
        std::ostringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }

    void write_raw(const fs::path& p, std::string_view contents)
    {
        std::ofstream out(p, std::ios::binary);
        out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    }

    /// Little-endian u64 as 8 chars.
    std::string le64(std::uint64_t v)
    {
        std::string s(8, '\0');
        for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
        return s;
    }

    /// A safetensors image: length prefix + header + data.
    std::string image(std::string_view header, std::string_view data = {}) { return le64(header.size()) + std::string(header) + std::string(data); }

    /// Also writes `contents` to $ORBITQ_DUMP_CORPUS/name when that variable is set.
    void dump_corpus(const std::string& name, std::string_view contents)
    {
        if (const char* corpus = std::getenv("ORBITQ_DUMP_CORPUS"))
        {
            write_raw(fs::path(corpus) / name, contents);
        }
    }

    /// Writes `contents` to dir/name (and to $ORBITQ_DUMP_CORPUS/malformed-name), opens it and
    /// checks that a format error is thrown whose message contains the file name and every string
    /// in `needles`.
    void expect_format_error(const scratch_dir& dir, const std::string& name, std::string_view contents,
                             std::initializer_list<std::string_view> needles)
    {
        CAPTURE(name);
        const fs::path p = dir.path / (name + ".safetensors");
        write_raw(p, contents);
        dump_corpus("malformed-" + name, contents);
        bool thrown = false;
        try
        {
            (void)safetensors_file::open(p);
        }
        catch (const orbitq::error& e)
        {
            thrown = true;
            const std::string msg = e.what();
            CAPTURE(msg);
            CHECK(e.kind() == error_kind::format);
            CHECK(msg.find(p.string()) != std::string::npos);
            for (std::string_view n : needles) CHECK(msg.find(n) != std::string::npos);
        }
        CHECK(thrown);
        // parse() of the same bytes must agree.
        const auto bytes = to_bytes(contents);
        CHECK_THROWS_AS((void)safetensors_file::parse(bytes, name), orbitq::error);
    }

    /// A minimal independent reader: returns (header json, data section) without orbitq.
    std::pair<nlohmann::json, std::string> independent_read(const fs::path& p)
    {
        const std::string all = read_all(p);
        REQUIRE(all.size() >= 8);
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(all[static_cast<std::size_t>(i)]);
        REQUIRE(8 + n <= all.size());
        return {nlohmann::json::parse(all.substr(8, n)), all.substr(8 + n)};
    }

    std::vector<std::byte> pattern(std::size_t n, unsigned seed)
    {
        std::vector<std::byte> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 7 + (i >> 8)) & 0xff);
        return v;
    }

    bool same(std::span<const std::byte> a, std::span<const std::byte> b)
    {
        return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
    }
}

TEST_CASE("dtype names, sizes and element types")
{
    CHECK(dtype_size(dtype::f64) == 8);
    CHECK(dtype_size(dtype::f32) == 4);
    CHECK(dtype_size(dtype::bf16) == 2);
    CHECK(dtype_size(dtype::f16) == 2);
    CHECK(dtype_size(dtype::i8) == 1);
    CHECK(dtype_size(dtype::boolean) == 1);
    CHECK(dtype_size(dtype::f8_e4m3) == 1);
    CHECK(dtype_size(dtype::c64) == 8);
    CHECK(dtype_name(dtype::bf16) == "BF16");
    CHECK(dtype_name(dtype::boolean) == "BOOL");
    CHECK(dtype_name(dtype::f8_e5m2) == "F8_E5M2");
    for (const auto& e : io::detail::dtype_table)
    {
        CHECK(parse_dtype(e.name) == e.type);
        CHECK(dtype_name(e.type) == e.name);
    }
    CHECK_THROWS_AS(parse_dtype("f32"), orbitq::error);  // case-sensitive
    CHECK_THROWS_AS(parse_dtype("F4"), orbitq::error);   // sub-byte: unsupported
    CHECK(as_element_type(dtype::f32) == element_type::f32);
    CHECK(as_element_type(dtype::bf16) == element_type::bf16);
    CHECK(as_element_type(dtype::f16) == element_type::f16);
    CHECK(!as_element_type(dtype::i8).has_value());
    CHECK(to_dtype(element_type::bf16) == dtype::bf16);
}

TEST_CASE("writer output is byte-for-byte the hand-built file")
{
    scratch_dir dir;
    const fs::path p = dir.path / "hand.safetensors";
    // Declared in the order w (F32), i (I8), b (BF16); data is laid out by element size: w, b, i.
    safetensors_writer w(p, {{"w", dtype::f32, {2, 2}}, {"i", dtype::i8, {3}}, {"b", dtype::bf16, {3}}}, {{"format", "pt"}});
    const std::vector<float> wv = {1.0f, -2.0f, 0.5f, 3.0f};
    const std::vector<std::uint16_t> bv = {0x3f80, 0xc000, 0x0001};
    const std::vector<std::int8_t> iv = {-1, 0, 127};
    w.write("i", std::span<const std::int8_t>(iv));
    w.write("w", std::span<const float>(wv));
    w.write("b", std::span<const std::uint16_t>(bv));
    w.commit();

    const std::string header = R"({"__metadata__":{"format":"pt"},)"
                               R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("i":{"dtype":"I8","shape":[3],"data_offsets":[22,25]},)"
                               R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}})";
    std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
    std::string data;
    data.append(reinterpret_cast<const char*>(wv.data()), 16);
    data.append(reinterpret_cast<const char*>(bv.data()), 6);
    data.append(reinterpret_cast<const char*>(iv.data()), 3);
    const std::string expected = image(padded, data);
    const std::string got = read_all(p);
    dump_corpus("valid-hand", got);
    CHECK(got.size() == expected.size());
    CHECK(got == expected);
    CHECK((8 + padded.size()) % 8 == 0);

    // The independent reader agrees with the header we meant to write.
    const auto [j, section] = independent_read(p);
    CHECK(j["w"]["data_offsets"] == nlohmann::json::array({0, 16}));
    CHECK(j["b"]["dtype"] == "BF16");
    CHECK(j["__metadata__"]["format"] == "pt");
    CHECK(section == data);

    // And orbitq reads the hand-built image identically, from memory.
    const auto bytes = to_bytes(expected);
    const auto f = safetensors_file::parse(bytes, "in-memory");
    REQUIRE(f.tensors().size() == 3);
    CHECK(f.tensors()[0].name == "w");
    CHECK(f.tensors()[1].name == "i");
    CHECK(f.tensors()[2].name == "b");
    CHECK(f.at("b").begin == 16);
    CHECK(f.at("b").end == 22);
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.data_offset() == 8 + padded.size());
    const auto v = f.view<float>("w");
    CHECK(v.rows == 2);
    CHECK(v.cols == 2);
    CHECK(v.row(1)[0] == 0.5f);
    const auto bvw = f.view<bfloat16_t>("b");
    CHECK(to_float(bvw.row(0)[1]) == -2.0f);
}

TEST_CASE("round trip: every dtype, header order, metadata, views")
{
    scratch_dir dir;
    const fs::path p = dir.path / "rt.safetensors";
    std::vector<tensor_decl> decls;
    unsigned k = 0;
    for (const auto& e : io::detail::dtype_table)
    {
        std::string name = "t";  // built by appends: GCC 12 warns falsely (-Wrestrict) on a + chain here
        name += std::to_string(k++);
        name += '.';
        name += e.name;
        decls.push_back({name, e.type, {3, 5}});
    }
    decls.push_back({"scalar", dtype::f32, {}});
    decls.push_back({"empty", dtype::bf16, {0, 4}});
    decls.push_back({"z.last", dtype::i8, {7}});
    std::reverse(decls.begin(), decls.end());  // header order is declaration order, not sorted

    const std::map<std::string, std::string> meta = {{"format", "pt"}, {"quantized_by", "orbitq \xc3\xa9"}};
    {
        safetensors_writer w(p, decls, meta);
        for (std::size_t i = decls.size(); i-- > 0;)  // any order
        {
            w.write(decls[i].name, pattern(decls[i].bytes(), static_cast<unsigned>(i)));
        }
        w.commit();
        CHECK(w.committed());
    }
    const auto f = safetensors_file::open(p);
    CHECK(f.path() == p);
    CHECK(f.metadata() == meta);
    REQUIRE(f.tensors().size() == decls.size());
    for (std::size_t i = 0; i < decls.size(); ++i)
    {
        const tensor_info& t = f.tensors()[i];
        CHECK(t.name == decls[i].name);
        CHECK(t.type == decls[i].type);
        CHECK(t.shape == decls[i].shape);
        CHECK(t.bytes() == decls[i].bytes());
        CHECK(t.end - t.begin == t.bytes());
        CHECK((f.data_offset() + t.begin) % dtype_size(t.type) == 0);  // writer keeps alignment
        CHECK(same(f.bytes(t), pattern(decls[i].bytes(), static_cast<unsigned>(i))));
        CHECK(f.find(t.name) == &t);
    }
    CHECK(f.find("nope") == nullptr);
    CHECK(f.at("scalar").elements() == 1);
    CHECK(f.at("empty").bytes() == 0);
    CHECK(f.bytes(f.at("empty")).empty());

    // Views: dtype must match T; bf16/f16/f32 zero-copy.
    const auto vf = f.view<float>("t1.F32");
    CHECK(vf.rows == 3);
    CHECK(vf.cols == 5);
    CHECK(reinterpret_cast<const std::byte*>(vf.data) == f.bytes(f.at("t1.F32")).data());
    CHECK(f.view<bfloat16_t>("t3.BF16").size() == 15);
    CHECK(f.view<float16_t>("t2.F16").size() == 15);
    CHECK_THROWS_AS(f.view<float>("t3.BF16"), orbitq::error);
    CHECK_THROWS_AS(f.view<float>("t7.I8"), orbitq::error);

    // prefetch / release are hints: data stays readable afterwards.
    f.prefetch(f.at("t0.F64"));
    f.release(f.at("t0.F64"));
    CHECK(same(f.bytes(f.at("t0.F64")), pattern(decls[decls.size() - 1].bytes(), static_cast<unsigned>(decls.size() - 1))));

    // Move keeps the mapping valid.
    safetensors_file g = std::move(const_cast<safetensors_file&>(f));
    CHECK(g.view<float>("t1.F32").data == vf.data);
}

TEST_CASE("lookup errors name the file and the tensor")
{
    scratch_dir dir;
    const fs::path p = dir.path / "lk.safetensors";
    safetensors_writer w(p, {{"a.weight", dtype::f32, {2}}, {"s", dtype::f32, {}}});
    w.write("a.weight", pattern(8, 1));
    w.write("s", pattern(4, 2));
    w.commit();
    const auto f = safetensors_file::open(p);
    auto message = [](auto&& fn) -> std::string {
        try
        {
            fn();
        }
        catch (const orbitq::error& e)
        {
            return e.what();
        }
        return "";
    };
    const std::string m1 = message([&] { (void)f.at("missing.tensor"); });
    CHECK(m1.find(p.string()) != std::string::npos);
    CHECK(m1.find("missing.tensor") != std::string::npos);
    const std::string m2 = message([&] { (void)f.view<bfloat16_t>("a.weight"); });
    CHECK(m2.find(p.string()) != std::string::npos);
    CHECK(m2.find("a.weight") != std::string::npos);
    CHECK(m2.find("F32") != std::string::npos);
    const std::string m3 = message([&] { (void)f.view<float>("s"); });  // a scalar is not a matrix
    CHECK(m3.find("'s'") != std::string::npos);
    CHECK(m3.find(p.string()) != std::string::npos);
}

TEST_CASE("misaligned data: bytes() works, view() refuses with a clear error")
{
    // Header of odd length: the F32 tensor starts at an odd file offset.
    const std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    REQUIRE(header.size() % 4 != 0);
    const std::vector<float> xs = {1.5f, -2.5f};
    const std::string img = image(header, std::string(reinterpret_cast<const char*>(xs.data()), 8));
    // Place the image at an aligned address so the misalignment comes from the header alone.
    std::vector<std::byte> buf(img.size());
    std::memcpy(buf.data(), img.data(), img.size());
    const auto f = safetensors_file::parse(buf, "odd.safetensors");
    const auto b = f.bytes(f.at("x"));
    REQUIRE(b.size() == 8);
    float back[2];
    std::memcpy(back, b.data(), 8);
    CHECK(back[0] == 1.5f);
    CHECK(back[1] == -2.5f);
    try
    {
        (void)f.view<float>("x");
        FAIL("expected an alignment error");
    }
    catch (const orbitq::error& e)
    {
        const std::string msg = e.what();
        CHECK(msg.find("odd.safetensors") != std::string::npos);
        CHECK(msg.find("'x'") != std::string::npos);
        CHECK(msg.find("aligned") != std::string::npos);
    }
}

TEST_CASE("valid edge cases the specification allows")
{
    scratch_dir dir;
    auto open_ok = [&](const std::string& name, const std::string& img) {
        write_raw(dir.path / name, img);
        dump_corpus("valid-" + name, img);
        return safetensors_file::open(dir.path / name);
    };
    SUBCASE("no tensors, only metadata")
    {
        const auto f = open_ok("meta.safetensors", image(R"({"__metadata__":{"a":"b"}})"));
        CHECK(f.tensors().empty());
        CHECK(f.metadata().at("a") == "b");
    }
    SUBCASE("empty object")
    {
        CHECK(open_ok("empty.safetensors", image("{}")).tensors().empty());
    }
    SUBCASE("holes between tensors, trailing bytes, trailing spaces in header")
    {
        const auto f = open_ok("holes.safetensors", image(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}   )", "0123456789"));
        CHECK(f.bytes(f.at("a"))[0] == std::byte{'4'});
    }
    SUBCASE("zero-size tensors may share offsets")
    {
        const auto f = open_ok("zeros.safetensors",
                               image(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"c":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                                     "x"));
        CHECK(f.tensors().size() == 3);
    }
    SUBCASE("unknown keys in an entry are ignored, even nested ones; F8 types are opaque")
    {
        const auto f = open_ok("extra.safetensors",
                               image(R"({"a":{"note":[1,{"k":[2,{"k":3}]}],"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2],"z":{"dtype":"F32"}}})", "xy"));
        CHECK(f.at("a").type == dtype::f8_e4m3);
        CHECK(f.at("a").shape == shape_type{2});
    }
    SUBCASE("nesting up to the limit is fine")
    {
        const auto f = open_ok("nested.safetensors",
                               image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)" + std::string(60, '[') + std::string(60, ']') + "}}", "x"));
        CHECK(f.tensors().size() == 1);
    }
}

TEST_CASE("every malformed file is rejected with a clear error naming the file (and tensor)")
{
    scratch_dir dir;
    const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    const std::string eight(8, 'd');

    expect_format_error(dir, "empty", "", {"shorter than the 8-byte"});
    expect_format_error(dir, "short", "abc", {"3 bytes"});
    expect_format_error(dir, "header_len_zero", le64(0) + "{}", {"header length is 0"});
    expect_format_error(dir, "header_len_absurd", le64(100'000'001) + "{}", {"exceeds the limit"});
    expect_format_error(dir, "header_len_huge", le64(~std::uint64_t(0)) + "{}", {"exceeds the limit"});
    expect_format_error(dir, "header_past_end", le64(50) + R"({"a":1})", {"runs past the end"});
    expect_format_error(dir, "truncated_header", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})").substr(0, 30), {"runs past the end"});
    expect_format_error(dir, "json_invalid", image(R"({"a":)"), {"not valid JSON"});
    expect_format_error(dir, "json_trailing_garbage", image(R"({} x)"), {"not valid JSON"});
    expect_format_error(dir, "json_not_utf8", image("{\"a\xff\":1}"), {"not valid JSON"});
    expect_format_error(dir, "json_overlong_utf8", image("{\"\xc0\xaf\":1}"), {"not valid JSON"});
    expect_format_error(dir, "json_nul_padding", image(std::string("{}\0\0\0\0\0\0", 8)), {"not valid JSON"});
    expect_format_error(dir, "json_array", image("[1,2]"), {"not an object"});
    expect_format_error(dir, "json_string", image("\"hello\""), {"not an object"});
    expect_format_error(dir, "entry_not_object", image(R"({"t":[1]})"), {"'t'", "not an object"});
    expect_format_error(dir, "missing_dtype", image(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", eight), {"'t'", "missing \"dtype\""});
    expect_format_error(dir, "missing_shape", image(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", eight), {"'t'", "missing \"shape\""});
    expect_format_error(dir, "missing_offsets", image(R"({"t":{"dtype":"F32","shape":[2]}})", eight), {"'t'", "missing \"data_offsets\""});
    expect_format_error(dir, "dtype_not_string", image(R"({"t":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", eight), {"'t'", "not a string"});
    expect_format_error(dir, "shape_not_array", image(R"({"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", eight), {"'t'", "not an array"});
    expect_format_error(dir, "offsets_not_array", image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":"0,8"}})", eight), {"'t'", "[begin, end]"});
    expect_format_error(dir, "offsets_three", image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", eight), {"'t'", "[begin, end]"});
    expect_format_error(dir, "offsets_negative", image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", eight), {"'t'", "non-negative"});
    expect_format_error(dir, "offsets_float", image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})", eight), {"'t'", "non-negative"});
    expect_format_error(dir, "dtype_unknown", image(R"({"t":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", eight), {"'t'", "dtype 'F33'"});
    expect_format_error(dir, "dtype_lowercase", image(R"({"t":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", eight), {"'t'", "dtype 'f32'"});
    expect_format_error(dir, "dtype_subbyte", image(R"({"t":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", eight), {"'t'", "unsupported"});
    expect_format_error(dir, "shape_negative", image(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight), {"'t'", "-2", "non-negative integer"});
    expect_format_error(dir, "shape_float", image(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight), {"'t'", "non-negative integer"});
    expect_format_error(dir, "shape_string", image(R"({"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", eight), {"'t'", "non-negative integer"});
    expect_format_error(dir, "shape_beyond_u64", image(R"({"t":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})", eight), {"'t'", "non-negative integer"});
    expect_format_error(dir, "shape_product_overflow", image(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"), {"'t'", "more than 2^64 elements"});
    expect_format_error(dir, "shape_bytes_overflow", image(R"({"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})"), {"'t'", "overflows 2^64 bytes"});
    // Product wraps to exactly 0 mod 2^64: a naive multiply would accept it with offsets [0,0].
    expect_format_error(dir, "shape_product_wraps_to_zero", image(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,0]}})"), {"'t'", "2^64"});
    expect_format_error(dir, "offsets_reversed", image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight), {"'t'", "begin > end"});
    expect_format_error(dir, "offsets_past_data", image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", eight), {"'t'", "beyond the data section"});
    expect_format_error(dir, "offsets_huge", image(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}})", eight), {"'t'"});
    expect_format_error(dir, "bytes_mismatch", image(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight), {"'t'", "hold 8 bytes", "needs 12"});
    expect_format_error(dir, "bytes_mismatch_dtype", image(R"({"t":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", eight), {"'t'", "needs 4"});
    expect_format_error(dir, "overlap", image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", eight), {"'a'", "'b'", "overlap"});
    expect_format_error(dir, "overlap_contained", image(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},"c":{"dtype":"U8","shape":[1],"data_offsets":[6,7]}})", eight), {"'a'", "overlap"});
    expect_format_error(dir, "overlap_same", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight), {"overlap"});
    expect_format_error(dir, "duplicate_name", image(R"({"t":)" + ok_entry + R"(,"t":)" + ok_entry + "}", eight), {"duplicate tensor name 't'"});
    expect_format_error(dir, "duplicate_inner_key", image(R"({"t":{"dtype":"F32","dtype":"I8","shape":[2],"data_offsets":[0,8]}})", eight), {"duplicate JSON key 'dtype'"});
    expect_format_error(dir, "duplicate_metadata", image(R"({"__metadata__":{"a":"1"},"__metadata__":{"a":"2"}})"), {"duplicate tensor name '__metadata__'"});
    expect_format_error(dir, "metadata_not_object", image(R"({"__metadata__":["a"]})"), {"__metadata__", "not an object"});
    expect_format_error(dir, "metadata_number_value", image(R"({"__metadata__":{"step":5}})"), {"__metadata__", "'step'"});
    expect_format_error(dir, "metadata_nested", image(R"({"__metadata__":{"a":{"b":"c"}}})"), {"__metadata__", "'a'"});
    expect_format_error(dir, "nesting_too_deep", image(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)" + std::string(100, '[') + std::string(100, ']') + "}}", eight), {"deeper than 64"});
    expect_format_error(dir, "nesting_too_deep_shape", image(R"({"t":{"dtype":"U8","shape":)" + std::string(80, '[') + std::string(80, ']') + R"(,"data_offsets":[0,1]}})", eight), {"deeper than 64"});
    expect_format_error(dir, "duplicate_unknown_field", image(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":[1,{"y":2}],"x":3}})", eight), {"duplicate JSON key 'x'"});
    // A name with control bytes is shown escaped, not raw.
    expect_format_error(dir, "name_escaped", image("{\"bad\\u0001name\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", eight), {"bad\\x01name"});
}

TEST_CASE("open: io errors")
{
    scratch_dir dir;
    try
    {
        (void)safetensors_file::open(dir.path / "absent.safetensors");
        FAIL("expected an error");
    }
    catch (const orbitq::error& e)
    {
        CHECK(e.kind() == error_kind::io);
        CHECK(std::string(e.what()).find("absent.safetensors") != std::string::npos);
    }
    CHECK_THROWS_AS((void)safetensors_file::open(dir.path), orbitq::error);  // a directory
}

TEST_CASE("safetensors_writer: atomicity, misuse and overwrite")
{
    scratch_dir dir;
    const fs::path p = dir.path / "out.safetensors";
    const std::vector<tensor_decl> decls = {{"a", dtype::f32, {4}}, {"b", dtype::u8, {3}}};

    SUBCASE("an uncommitted writer leaves neither the file nor a temporary")
    {
        {
            safetensors_writer w(p, decls);
            w.write("a", pattern(16, 0));
            CHECK(dir.listing().size() == 1);  // the hidden temporary exists while writing
            CHECK(dir.listing()[0].front() == '.');
            CHECK(!fs::exists(p));
        }
        CHECK(dir.listing().empty());
    }
    SUBCASE("commit with a missing tensor throws naming it; the file can still be completed")
    {
        safetensors_writer w(p, decls);
        w.write("a", pattern(16, 0));
        try
        {
            w.commit();
            FAIL("expected an error");
        }
        catch (const orbitq::error& e)
        {
            CHECK(std::string(e.what()).find("'b'") != std::string::npos);
        }
        CHECK(!fs::exists(p));
        w.write("b", pattern(3, 0));
        w.commit();
        CHECK(fs::exists(p));
        CHECK(dir.listing() == std::vector<std::string>{"out.safetensors"});
    }
    SUBCASE("write misuse")
    {
        safetensors_writer w(p, decls);
        CHECK_THROWS_AS(w.write("zz", pattern(16, 0)), orbitq::error);  // undeclared
        CHECK_THROWS_AS(w.write("a", pattern(15, 0)), orbitq::error);   // wrong size
        w.write("a", pattern(16, 0));
        CHECK_THROWS_AS(w.write("a", pattern(16, 0)), orbitq::error);  // twice
    }
    SUBCASE("bad declarations")
    {
        CHECK_THROWS_AS(safetensors_writer(p, {{"a", dtype::f32, {1}}, {"a", dtype::f32, {1}}}), orbitq::error);
        CHECK_THROWS_AS(safetensors_writer(p, {{"__metadata__", dtype::f32, {1}}}), orbitq::error);
        CHECK_THROWS_AS(safetensors_writer(p, {{"a", dtype::f64, {std::size_t(1) << 62, 4}}}), orbitq::error);
        CHECK_THROWS_AS(safetensors_writer(p, {{"bad\xff", dtype::f32, {1}}}), orbitq::error);
        CHECK(dir.listing().empty());
    }
    SUBCASE("refuses to overwrite unless asked")
    {
        write_raw(p, "precious");
        try
        {
            safetensors_writer w(p, decls);
            FAIL("expected a refusal");
        }
        catch (const orbitq::error& e)
        {
            CHECK(e.kind() == error_kind::io);
            CHECK(std::string(e.what()).find(p.string()) != std::string::npos);
        }
        CHECK(read_all(p) == "precious");
        // A file appearing between construction and commit is not clobbered either.
        fs::remove(p);
        {
            safetensors_writer w(p, decls);
            w.write("a", pattern(16, 0));
            w.write("b", pattern(3, 0));
            write_raw(p, "raced");
            CHECK_THROWS_AS(w.commit(), orbitq::error);
        }
        CHECK(read_all(p) == "raced");
        CHECK(dir.listing() == std::vector<std::string>{"out.safetensors"});
        safetensors_writer w(p, decls, {}, /*overwrite=*/true);
        w.write("a", pattern(16, 0));
        w.write("b", pattern(3, 0));
        w.commit();
        CHECK(safetensors_file::open(p).tensors().size() == 2);
    }
    SUBCASE("missing directory is an io error naming it")
    {
        try
        {
            safetensors_writer w(dir.path / "no" / "such" / "x.safetensors", decls);
            FAIL("expected an error");
        }
        catch (const orbitq::error& e)
        {
            CHECK(e.kind() == error_kind::io);
            CHECK(std::string(e.what()).find("no/such") != std::string::npos);
        }
    }
    SUBCASE("unwritable directory is an io error, nothing left behind")
    {
        const fs::path ro = dir.path / "ro";
        fs::create_directory(ro);
        fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
        if (::access(ro.c_str(), W_OK) == 0)
        {
            MESSAGE("running as root: permission test skipped");
        }
        else
        {
            CHECK_THROWS_AS(safetensors_writer(ro / "x.safetensors", decls), orbitq::error);
            CHECK(fs::is_empty(ro));
        }
        fs::permissions(ro, fs::perms::owner_all);
    }
}

namespace
{
    /// Lowers RLIMIT_FSIZE (a stand-in for a full disk: writes and allocations past it fail with
    /// EFBIG) and ignores SIGXFSZ, restoring both on destruction.
    struct file_size_limit
    {
        ::rlimit old{};
        void (*old_handler)(int) = nullptr;
        explicit file_size_limit(std::uint64_t bytes)
        {
            ::getrlimit(RLIMIT_FSIZE, &old);
            old_handler = std::signal(SIGXFSZ, SIG_IGN);
            ::rlimit lim = old;
            lim.rlim_cur = bytes;
            ::setrlimit(RLIMIT_FSIZE, &lim);
        }
        ~file_size_limit()
        {
            ::setrlimit(RLIMIT_FSIZE, &old);
            std::signal(SIGXFSZ, old_handler);
        }
    };
}

TEST_CASE("no space (file-size limit): a clear io error before any data is produced, nothing partial left")
{
    scratch_dir dir;
    SUBCASE("safetensors_writer")
    {
        std::string msg;
        {
            file_size_limit limit(1 << 20);
            try
            {
                safetensors_writer w(dir.path / "big.safetensors", {{"a", dtype::u8, {2 << 20}}});
            }
            catch (const orbitq::error& e)
            {
                CHECK(e.kind() == error_kind::io);
                msg = e.what();
            }
        }
        CAPTURE(msg);
        CHECK(msg.find("big.safetensors") != std::string::npos);
        CHECK(msg.find("reserve") != std::string::npos);
        CHECK(dir.listing().empty());
    }
    SUBCASE("write_checkpoint")
    {
        int produced = 0;
        bool thrown = false;
        {
            file_size_limit limit(1 << 20);
            try
            {
                write_checkpoint(dir.path, {{"a", dtype::u8, {1000}}, {"b", dtype::u8, {2 << 20}}},
                                 [&](const tensor_decl&, std::span<std::byte>) { ++produced; }, 1 << 20);
            }
            catch (const orbitq::error& e)
            {
                thrown = true;
                CHECK(e.kind() == error_kind::io);
            }
        }
        CHECK(thrown);
        CHECK(produced == 1);  // "b" was never produced: its shard could not be reserved
        CHECK(dir.listing() == std::vector<std::string>{"model-00001-of-00002.safetensors"});
    }
}

TEST_CASE("write_file_atomic")
{
    scratch_dir dir;
    const fs::path p = dir.path / "config.json";
    write_file_atomic(p, "{\"a\": 1}\n");
    CHECK(read_all(p) == "{\"a\": 1}\n");
    write_file_atomic(p, "second");
    CHECK(read_all(p) == "second");
    CHECK_THROWS_AS(write_file_atomic(p, "third", /*overwrite=*/false), orbitq::error);
    CHECK(read_all(p) == "second");
    write_file_atomic(dir.path / "empty.txt", "");
    CHECK(fs::file_size(dir.path / "empty.txt") == 0);
    CHECK(dir.listing() == std::vector<std::string>{"config.json", "empty.txt"});
    // Mode follows the umask like an ordinary file, not mkstemp's 0600.
    const mode_t mask = ::umask(022);
    ::umask(mask);
    CHECK((fs::status(p).permissions() & fs::perms::others_read) == ((mask & 04) ? fs::perms::none : fs::perms::others_read));
}

TEST_CASE("plan_shards and shard names")
{
    CHECK(shard_file_name(1, 1) == "model-00001-of-00001.safetensors");
    CHECK(shard_file_name(12, 345) == "model-00012-of-00345.safetensors");
    const std::vector<tensor_decl> d = {{"a", dtype::u8, {40}}, {"b", dtype::u8, {40}}, {"c", dtype::u8, {30}},
                                        {"big", dtype::u8, {250}}, {"d", dtype::u8, {10}}, {"e", dtype::u8, {0}}};
    using ranges = std::vector<std::pair<std::size_t, std::size_t>>;
    CHECK(plan_shards(d, 100) == ranges{{0, 2}, {2, 3}, {3, 4}, {4, 6}});
    CHECK(plan_shards(d, 1000) == ranges{{0, 6}});
    CHECK(plan_shards(d, 1) == ranges{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 6}});
    CHECK(plan_shards({}, 100).empty());
}

TEST_CASE("write_checkpoint: shards, index, round trip through checkpoint::open")
{
    scratch_dir dir;
    const fs::path out = dir.path / "ckpt";
    std::vector<tensor_decl> decls = {
        {"model.layers.0.w", dtype::bf16, {4, 8}},  // 64 bytes
        {"model.layers.0.b", dtype::f32, {8}},      // 32
        {"model.layers.1.w", dtype::bf16, {4, 8}},  // 64
        {"model.big", dtype::f32, {64}},            // 256: own shard
        {"model.norm", dtype::f32, {4}},            // 16
    };
    std::vector<std::string> produced;
    auto produce = [&](const tensor_decl& d, std::span<std::byte> buf) {
        REQUIRE(buf.size() == d.bytes());
        CHECK(std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{0}; }));
        const auto p = pattern(buf.size(), static_cast<unsigned>(d.name.size()));
        std::copy(p.begin(), p.end(), buf.begin());
        produced.push_back(d.name);
    };
    write_checkpoint(out, decls, produce, 100, {{"format", "pt"}});
    CHECK(produced == std::vector<std::string>{"model.layers.0.w", "model.layers.0.b", "model.layers.1.w", "model.big", "model.norm"});

    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(out)) files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    CHECK(files == std::vector<std::string>{"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                            "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                            "model.safetensors.index.json"});

    const auto index = nlohmann::json::parse(read_all(out / "model.safetensors.index.json"));
    CHECK(index["metadata"]["total_size"] == 64 + 32 + 64 + 256 + 16);
    CHECK(index["weight_map"]["model.layers.0.w"] == "model-00001-of-00004.safetensors");
    CHECK(index["weight_map"]["model.layers.0.b"] == "model-00001-of-00004.safetensors");
    CHECK(index["weight_map"]["model.layers.1.w"] == "model-00002-of-00004.safetensors");
    CHECK(index["weight_map"]["model.big"] == "model-00003-of-00004.safetensors");
    CHECK(index["weight_map"]["model.norm"] == "model-00004-of-00004.safetensors");
    CHECK(index["weight_map"].size() == 5);

    // The independent reader sees each shard's tensors, metadata and bytes.
    {
        const auto [j, data] = independent_read(out / "model-00001-of-00004.safetensors");
        CHECK(j["__metadata__"]["format"] == "pt");
        CHECK(j.size() == 3);
        const auto o = j["model.layers.0.b"]["data_offsets"];
        const auto p = pattern(32, static_cast<unsigned>(std::string("model.layers.0.b").size()));
        CHECK(data.substr(o[0].get<std::size_t>(), 32) == std::string(reinterpret_cast<const char*>(p.data()), 32));
    }

    const auto c = checkpoint::open(out);
    CHECK(c.directory() == out);
    auto sorted = std::vector<std::string>{"model.big", "model.layers.0.b", "model.layers.0.w", "model.layers.1.w", "model.norm"};
    CHECK(c.names() == sorted);
    CHECK(c.contains("model.norm"));
    CHECK(!c.contains("model.nope"));
    for (const auto& d : decls)
    {
        CHECK(c.info(d.name).shape == d.shape);
        CHECK(c.info(d.name).type == d.type);
        CHECK(same(c.bytes(d.name), pattern(d.bytes(), static_cast<unsigned>(d.name.size()))));
    }
    CHECK(c.file_of("model.big").path() == out / "model-00003-of-00004.safetensors");
    CHECK(c.view<bfloat16_t>("model.layers.1.w").rows == 4);
    CHECK(c.view<float>("model.big").cols == 64);
    try
    {
        (void)c.info("model.nope");
        FAIL("expected an error");
    }
    catch (const orbitq::error& e)
    {
        CHECK(std::string(e.what()).find("model.nope") != std::string::npos);
        CHECK(std::string(e.what()).find(out.string()) != std::string::npos);
    }

    // Refuses to overwrite a complete checkpoint; overwrite=true replaces it.
    CHECK_THROWS_AS(write_checkpoint(out, decls, produce, 100), orbitq::error);
    // An overwrite that fails half-way leaves no index: never the old index over mixed shards.
    CHECK_THROWS_AS(write_checkpoint(out, decls,
                                     [](const tensor_decl& d, std::span<std::byte>) {
                                         if (d.name == "model.big") throw orbitq::error(error_kind::io, "interrupted");
                                     },
                                     100, {}, true),
                    orbitq::error);
    CHECK(!fs::exists(out / "model.safetensors.index.json"));
    CHECK_THROWS_AS(checkpoint::open(out), orbitq::error);
    write_checkpoint(out, {{"only", dtype::u8, {3}}}, [](const tensor_decl&, std::span<std::byte> b) { b[0] = std::byte{9}; }, 100, {}, true);
    const auto c2 = checkpoint::open(out);
    CHECK(c2.names() == std::vector<std::string>{"only"});
    CHECK(c2.bytes("only")[0] == std::byte{9});
    CHECK(fs::exists(out / "model-00001-of-00001.safetensors"));
    // The four shards of the replaced checkpoint are gone.
    std::vector<std::string> after;
    for (const auto& e : fs::directory_iterator(out)) after.push_back(e.path().filename().string());
    std::sort(after.begin(), after.end());
    CHECK(after == std::vector<std::string>{"model-00001-of-00001.safetensors", "model.safetensors.index.json"});
}

TEST_CASE("path_is_within")
{
    scratch_dir dir;
    fs::create_directories(dir.path / "in" / "sub");
    fs::create_directory_symlink(dir.path / "in", dir.path / "link");
    CHECK(path_is_within(dir.path / "in", dir.path / "in"));
    CHECK(path_is_within(dir.path / "in" / "sub", dir.path / "in"));
    CHECK(path_is_within(dir.path / "in" / "sub" / "new" / "deeper", dir.path / "in"));  // need not exist
    CHECK(path_is_within(dir.path / "link" / "sub", dir.path / "in"));                    // through a symlink
    CHECK(path_is_within(dir.path / "in" / "sub" / ".." / "x", dir.path / "in" / ""));
    CHECK(!path_is_within(dir.path / "in" / ".." / "out", dir.path / "in"));
    CHECK(!path_is_within(dir.path / "inner", dir.path / "in"));  // a prefix of the name is not inside
    CHECK(!path_is_within(dir.path, dir.path / "in"));
}

TEST_CASE("write_checkpoint: a failing producer leaves no index and no temporaries; a rerun completes")
{
    scratch_dir dir;
    const std::vector<tensor_decl> decls = {{"a", dtype::u8, {10}}, {"b", dtype::u8, {10}}, {"c", dtype::u8, {10}}};
    int calls = 0;
    CHECK_THROWS_AS(write_checkpoint(dir.path, decls,
                                     [&](const tensor_decl& d, std::span<std::byte>) {
                                         ++calls;
                                         if (d.name == "c") throw orbitq::error(error_kind::non_finite, "boom");
                                     },
                                     15),
                    orbitq::error);
    CHECK(calls == 3);
    // Shards 1 and 2 were committed; the third never reached its final name; no index.
    CHECK(dir.listing() == std::vector<std::string>{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors"});
    CHECK_THROWS_AS(checkpoint::open(dir.path), orbitq::error);
    // Without an index the directory is an incomplete checkpoint, so a rerun may replace it.
    write_checkpoint(dir.path, decls, [](const tensor_decl&, std::span<std::byte>) {}, 15);
    CHECK(checkpoint::open(dir.path).names().size() == 3);
}

TEST_CASE("kill -9 during write_checkpoint: no incomplete file under a final name; a rerun completes and cleans up")
{
    std::vector<tensor_decl> decls;
    for (int i = 0; i < 40; ++i)
    {
        std::string name = "t";  // appended: GCC 12 warns falsely (-Wrestrict) on "t" + to_string(i)
        name += std::to_string(i);
        decls.push_back({name, dtype::f32, {128, 128}});  // 64 KiB each
    }
    auto fill = [](const tensor_decl& d, std::span<std::byte> b) {
        const auto p = pattern(b.size(), static_cast<unsigned>(std::stoi(d.name.substr(1))));
        std::copy(p.begin(), p.end(), b.begin());
    };
    for (const int kill_after_ms : {15, 70, 140})
    {
        CAPTURE(kill_after_ms);
        scratch_dir dir;
        const pid_t child = ::fork();
        REQUIRE(child >= 0);
        if (child == 0)
        {
            try
            {
                write_checkpoint(dir.path, decls,
                                 [&](const tensor_decl& d, std::span<std::byte> b) {
                                     fill(d, b);
                                     ::usleep(5000);
                                 },
                                 std::size_t(256) << 10);
            }
            catch (...)
            {
                ::_exit(1);
            }
            ::_exit(0);
        }
        ::usleep(static_cast<useconds_t>(kill_after_ms) * 1000);
        ::kill(child, SIGKILL);
        int status = 0;
        ::waitpid(child, &status, 0);
        // Killed mid-run (the usual case: the child sleeps 200 ms in all), or finished cleanly.
        CHECK((WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0)));

        // Whatever carries a final name is complete.
        bool index_present = false;
        std::size_t hidden = 0;
        for (const auto& e : fs::directory_iterator(dir.path))
        {
            const std::string name = e.path().filename().string();
            if (name.front() == '.')
            {
                ++hidden;
                continue;
            }
            if (name == "model.safetensors.index.json")
            {
                index_present = true;
                continue;
            }
            CHECK(is_shard_file_name(name));
            CHECK_NOTHROW((void)safetensors_file::open(e.path()));
        }
        CHECK(hidden <= 1);  // at most the shard being written when the signal came
        if (index_present) CHECK(checkpoint::open(dir.path).size() == decls.size());

        // A rerun (no overwrite needed: without an index the checkpoint is incomplete) finishes
        // and removes the dead writer's temporary.
        if (!index_present)
        {
            write_checkpoint(dir.path, decls, fill, std::size_t(256) << 10);
        }
        for (const auto& e : fs::directory_iterator(dir.path)) CHECK(e.path().filename().string().front() != '.');
        const auto c = checkpoint::open(dir.path);
        REQUIRE(c.size() == decls.size());
        for (const auto& d : decls) CHECK(same(c.bytes(d.name), pattern(d.bytes(), static_cast<unsigned>(std::stoi(d.name.substr(1))))));
    }
}

TEST_CASE("remove_stale_temporaries only removes dead writers' temporaries of matching names")
{
    scratch_dir dir;
    const pid_t dead = ::fork();
    if (dead == 0) ::_exit(0);
    ::waitpid(dead, nullptr, 0);
    // Names built by appends: GCC 12 warns falsely (-Wrestrict) on "lit" + string + "lit" chains.
    auto tmp = [](std::string_view final_name, const std::string& pid, char n) {
        std::string s = ".";
        s += final_name;
        s += ".tmp.";
        s += pid;
        s += '.';
        s += n;
        return s;
    };
    const std::string d = std::to_string(dead);
    const std::string live = std::to_string(::getppid());
    const std::string shard = "model-00001-of-00002.safetensors";
    for (const std::string& n : {tmp(shard, d, '0'), tmp(shard, live, '3'), tmp("other.json", d, '1'), tmp(shard, "x", '1'),
                                 std::string("model-00002-of-00002.safetensors")})
    {
        write_raw(dir.path / n, "x");
    }
    CHECK(remove_stale_temporaries(dir.path, [](std::string_view n) { return is_shard_file_name(n); }) == 1);
    CHECK(dir.listing() == std::vector<std::string>{tmp(shard, live, '3'), tmp(shard, "x", '1'), tmp("other.json", d, '1'),
                                                    "model-00002-of-00002.safetensors"});
}

TEST_CASE("checkpoint::open: single file layouts")
{
    scratch_dir dir;
    {
        safetensors_writer w(dir.path / "model.safetensors", {{"x", dtype::f16, {2, 3}}, {"y", dtype::i32, {1}}});
        w.write("x", pattern(12, 1));
        w.write("y", pattern(4, 2));
        w.commit();
    }
    const auto c = checkpoint::open(dir.path);
    CHECK(c.names() == std::vector<std::string>{"x", "y"});
    CHECK(c.view<float16_t>("x").cols == 3);
    CHECK(same(c.bytes("y"), pattern(4, 2)));

    const auto single = checkpoint::open(dir.path / "model.safetensors");
    CHECK(single.directory() == dir.path);
    CHECK(single.contains("x"));

    scratch_dir empty;
    try
    {
        (void)checkpoint::open(empty.path);
        FAIL("expected an error");
    }
    catch (const orbitq::error& e)
    {
        CHECK(std::string(e.what()).find("model.safetensors.index.json") != std::string::npos);
    }
    CHECK_THROWS_AS(checkpoint::open(empty.path / "nothing"), orbitq::error);
}

TEST_CASE("checkpoint::open: malformed index")
{
    scratch_dir dir;
    {
        safetensors_writer w(dir.path / "s1.safetensors", {{"a", dtype::u8, {1}}});
        w.write("a", pattern(1, 0));
        w.commit();
    }
    const fs::path index = dir.path / "model.safetensors.index.json";
    auto expect = [&](const std::string& json, std::initializer_list<std::string_view> needles) {
        CAPTURE(json);
        write_file_atomic(index, json);
        try
        {
            (void)checkpoint::open(dir.path);
            FAIL("expected an error");
        }
        catch (const orbitq::error& e)
        {
            const std::string msg = e.what();
            CAPTURE(msg);
            CHECK(msg.find(dir.path.string()) != std::string::npos);
            for (auto n : needles) CHECK(msg.find(n) != std::string::npos);
        }
    };
    expect("{", {"not valid JSON"});
    expect("[]", {"not a JSON object"});
    expect(std::string("{}\0{\"x\":1}", 10), {"NUL byte"});
    expect(R"({"metadata":{}})", {"missing \"weight_map\""});
    expect(R"({"weight_map":[]})", {"weight_map", "not an object"});
    expect(R"({"weight_map":{"a":3}})", {"'a'", "not a file name"});
    expect(R"({"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}})", {"duplicate", "'a'"});
    expect(R"({"weight_map":{"a":"missing.safetensors"}})", {"missing.safetensors", "does not exist", "'a'"});
    expect(R"({"weight_map":{"b":"s1.safetensors"}})", {"'b'", "not found in shard", "s1.safetensors"});
    expect(R"({"weight_map":{"a":"../s1.safetensors"}})", {"unsafe"});
    expect(R"({"weight_map":{"a":"/etc/passwd"}})", {"unsafe"});
    write_raw(dir.path / "bad.safetensors", le64(3) + "{}");
    expect(R"({"weight_map":{"a":"bad.safetensors"}})", {"bad.safetensors", "runs past the end"});

    write_file_atomic(index, R"({"metadata":{"total_size":1},"weight_map":{"a":"s1.safetensors"}})");
    CHECK(checkpoint::open(dir.path).names() == std::vector<std::string>{"a"});
}

TEST_CASE("committed fuzz seeds: malformed-* are rejected with a format error, valid-* open")
{
    // The seeds live next to this file's directory: <repo>/fuzz/corpus.
    const fs::path corpus = fs::path(__FILE__).parent_path().parent_path() / "fuzz" / "corpus";
    if (!fs::is_directory(corpus))
    {
        MESSAGE("no fuzz/corpus next to the sources; skipped");
        return;
    }
    std::size_t seen = 0;
    for (const auto& e : fs::directory_iterator(corpus))
    {
        const std::string name = e.path().filename().string();
        CAPTURE(name);
        if (name.rfind("malformed-", 0) == 0)
        {
            ++seen;
            try
            {
                (void)safetensors_file::open(e.path());
                FAIL("accepted a malformed seed");
            }
            catch (const orbitq::error& err)
            {
                CHECK(err.kind() == error_kind::format);
                CHECK(std::string(err.what()).find(e.path().string()) != std::string::npos);
            }
        }
        else if (name.rfind("valid-", 0) == 0)
        {
            ++seen;
            CHECK_NOTHROW((void)safetensors_file::open(e.path()));
        }
    }
    CHECK(seen > 40);
}

TEST_CASE("importance files: written and read back, [cols] and [experts, cols], 16-bit dtypes, bad files refused")
{
    scratch_dir d;
    importance_table t;
    t.add("a.weight", 1, {1.0f, 2.0f, 0.0f});
    t.add("b.experts", 2, {1.0f, 2.0f, 3.0f, 4.0f});
    const fs::path p = d.path / "imp.safetensors";
    t.write(p);
    const importance_table r = importance_table::read(p);
    REQUIRE(r.entries().size() == 2);
    const auto a = r.columns("a.weight", 0, 1, 3);
    CHECK(std::vector<float>(a.values().begin(), a.values().end()) == std::vector<float>{1.0f, 2.0f, 0.0f});
    // one row: every expert; [experts, cols]: expert e's row
    CHECK(r.columns("a.weight", 5, 8, 3).data == a.data);
    const auto b1 = r.columns("b.experts", 1, 2, 2);
    CHECK(std::vector<float>(b1.values().begin(), b1.values().end()) == std::vector<float>{3.0f, 4.0f});
    CHECK_THROWS_WITH_AS(r.columns("c", 0, 1, 3), doctest::Contains("has no entry for 'c'"), error);
    CHECK_THROWS_WITH_AS(r.columns("a.weight", 0, 1, 4), doctest::Contains("'a.weight' is [3]; the weight needs [4]"), error);
    CHECK_THROWS_WITH_AS(r.columns("b.experts", 0, 3, 2), doctest::Contains("needs [2] or [3, 2]"), error);
    CHECK_THROWS_AS(t.add("x", 2, {1.0f, 2.0f, 3.0f}), error);
    CHECK_THROWS_WITH_AS(t.add("x", 1, {1.0f, -2.0f}), doctest::Contains("value -2"), error);

    // BF16 values widen exactly
    {
        const std::vector<bfloat16_t> h = {to_bfloat16(0.5f), to_bfloat16(3.0f)};
        safetensors_writer w(d.path / "bf16.safetensors", {{"w", dtype::bf16, {2}}});
        w.write("w", std::span<const bfloat16_t>(h));
        w.commit();
        const column_importance c = importance_table::read(d.path / "bf16.safetensors").columns("w", 0, 1, 2);  // shares the storage
        const auto v = c.values();
        CHECK(v[0] == 0.5f);
        CHECK(v[1] == 3.0f);
    }
    // refused: integer dtype, rank 3, a negative or NaN value
    const auto refused = [&](const char* file, tensor_decl decl, std::span<const std::byte> bytes, const char* says) {
        {
            safetensors_writer w(d.path / file, {decl});
            w.write(decl.name, bytes);
            w.commit();
        }
        CHECK_THROWS_WITH_AS(importance_table::read(d.path / file), doctest::Contains(says), error);
    };
    const std::vector<float> f4 = {1.0f, 1.0f, 1.0f, 1.0f};
    refused("i8.safetensors", {"w", dtype::i8, {4}}, std::as_bytes(std::span<const float>(f4)).first(4), "dtype I8");
    refused("rank3.safetensors", {"w", dtype::f32, {1, 2, 2}}, std::as_bytes(std::span<const float>(f4)), "rank 3");
    for (const float bad : {-1.0f, std::nanf("")})
    {
        std::vector<float> v = f4;
        v[2] = bad;
        refused(bad < 0 ? "neg.safetensors" : "nan.safetensors", {"w", dtype::f32, {4}}, std::as_bytes(std::span<const float>(v)), "at 2");
    }
    CHECK_THROWS_AS(importance_table::read(d.path / "missing.safetensors"), error);
}
