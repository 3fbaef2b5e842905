// compressed-tensors encoding: golden int32 words computed by hand for known 8-bit and 4-bit
// codes and zero points, the tensors of one Linear (names, dtypes, shapes, bytes), the specs
// vLLM's MoE kernels load, target matching as Python's re.match, and two writers of one output directory.
#include <doctest/doctest.h>

#include <orbitq/io/compressed_tensors.hpp>
#include <orbitq/io/staged_directory.hpp>
#include <orbitq/quantize.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>

namespace ct = orbitq::io::compressed_tensors;
using orbitq::granularity_kind;
using orbitq::quant_spec;
using orbitq::scheme_kind;
namespace io = orbitq::io;

namespace
{
    std::vector<std::uint32_t> words(const std::vector<std::byte>& b)
    {
        std::vector<std::uint32_t> w(b.size() / 4);
        std::memcpy(w.data(), b.data(), b.size());
        return w;
    }
}

TEST_CASE("pack_rows: value j of a word at bits j*b, as code + 2^(b-1); the row's tail padded with 0 bits")
{
    // 8 bits: [-128, -1, 0, 127 | 5] -> bytes 0x00 0x7f 0x80 0xff | 0x85
    const std::vector<int> c8 = {-128, -1, 0, 127, 5};
    const auto w8 = ct::pack_rows(1, 5, 8, [&](std::size_t, std::size_t c) { return c8[c]; });
    REQUIRE(w8.size() == 2);
    CHECK(w8[0] == 0xff807f00u);
    CHECK(w8[1] == 0x00000085u);

    // 4 bits: [-8, -7, -1, 0, 1, 7, 3, -2 | 4] + 8 -> nibbles 0 1 7 8 9 f b 6 | c
    const std::vector<int> c4 = {-8, -7, -1, 0, 1, 7, 3, -2, 4};
    const auto w4 = ct::pack_rows(1, 9, 4, [&](std::size_t, std::size_t c) { return c4[c]; });
    REQUIRE(w4.size() == 2);
    CHECK(w4[0] == 0x6bf98710u);
    CHECK(w4[1] == 0x0000000cu);

    // Rows are packed independently: row 1 starts a new word.
    const auto two = ct::pack_rows(2, 3, 8, [](std::size_t r, std::size_t c) { return static_cast<int>(r * 3 + c); });
    REQUIRE(two.size() == 2);
    CHECK(two[0] == 0x00828180u);
    CHECK(two[1] == 0x00858483u);
    CHECK(ct::packed_words(2816, 4) == 352);
    CHECK(ct::packed_words(704, 8) == 176);
    CHECK(ct::packed_words(9, 4) == 2);
}

TEST_CASE("pack_columns: zero points packed along the output dimension, eight 4-bit rows per word")
{
    // 9 rows x 2 groups: group 0 holds r - 4 (nibbles 4..c), group 1 holds -8 (nibble 0).
    const auto w = ct::pack_columns(9, 2, 4, [](std::size_t r, std::size_t g) { return g == 0 ? static_cast<int>(r) - 4 : -8; });
    REQUIRE(w.size() == 4);  // [ceil(9/8), 2]
    CHECK(w[0] == 0xba987654u);
    CHECK(w[1] == 0x00000000u);
    CHECK(w[2] == 0x0000000cu);
    CHECK(w[3] == 0x00000000u);
    // 8 bits: four rows per word.
    const auto w8 = ct::pack_columns(5, 1, 8, [](std::size_t r, std::size_t) { return static_cast<int>(r) * 10 - 20; });
    REQUIRE(w8.size() == 2);
    CHECK(w8[0] == 0x8a80766cu);  // -20, -10, 0, 10 + 128
    CHECK(w8[1] == 0x00000094u);  // 20 + 128
}

TEST_CASE("encode_linear: one int8 Linear, per channel and per tensor (written per channel), hand-computed bytes")
{
    // Row 0 has amax 127: scale 1, codes equal to the values. Row 1 is half of row 0.
    std::vector<float> w = {1, -2, 3, -127, 127, 0, 5, -5, 0.5f, -1, 1.5f, -63.5f, 63.5f, 0, 2.5f, -2.5f};
    const auto view = orbitq::make_view(w.data(), 2, 8, "lin.weight");
    quant_spec spec;  // per_channel int8 symmetric restricted, f32 scales
    const orbitq::quantized_tensor q = orbitq::quantize(view, spec);
    REQUIRE(q.scales[0] == 1.0f);
    REQUIRE(q.scales[1] == 0.5f);

    const auto decls = ct::linear_decls(spec, ct::format::pack_quantized, 2, 8, "lin", orbitq::io::dtype::bf16);
    REQUIRE(decls.size() == 3);
    CHECK(decls[0].name == "lin.weight_packed");
    CHECK(decls[0].type == orbitq::io::dtype::i32);
    CHECK(decls[0].shape == orbitq::shape_type{2, 2});
    CHECK(decls[1].name == "lin.weight_shape");
    CHECK(decls[1].type == orbitq::io::dtype::i64);
    CHECK(decls[2].name == "lin.weight_scale");
    CHECK(decls[2].type == orbitq::io::dtype::bf16);
    CHECK(decls[2].shape == orbitq::shape_type{2, 1});

    const auto bytes = ct::encode_linear(q, ct::format::pack_quantized, 0, 2, orbitq::io::dtype::bf16);
    REQUIRE(bytes.size() == 3);
    // [1, -2, 3, -127] + 128 = 0x81 0x7e 0x83 0x01; [127, 0, 5, -5] + 128 = 0xff 0x80 0x85 0x7b.
    // Row 1 (scale 0.5, codes 1, -2, 3, -127, 127, 0, 5, -5: the same, 2.5/0.5 = 5).
    CHECK(words(bytes[0]) == std::vector<std::uint32_t>{0x01837e81u, 0x7b8580ffu, 0x01837e81u, 0x7b8580ffu});
    std::int64_t dims[2];
    std::memcpy(dims, bytes[1].data(), 16);
    CHECK(dims[0] == 2);
    CHECK(dims[1] == 8);
    REQUIRE(bytes[2].size() == 4);
    std::uint16_t s[2];
    std::memcpy(s, bytes[2].data(), 4);
    CHECK(s[0] == 0x3f80);  // 1.0 in bf16
    CHECK(s[1] == 0x3f00);  // 0.5

    // Rows [1, 2) only: the second Linear of a stacked tensor.
    const auto tail = ct::encode_linear(q, ct::format::pack_quantized, 1, 1, orbitq::io::dtype::f32);
    CHECK(words(tail[0]) == std::vector<std::uint32_t>{0x01837e81u, 0x7b8580ffu});
    float f;
    std::memcpy(&f, tail[2].data(), 4);
    CHECK(f == 0.5f);

    // Per tensor: one scale (127/127 = 1), written on every row.
    quant_spec pt;
    pt.granularity = granularity_kind::per_tensor;
    const auto qt = orbitq::quantize(view, pt);
    const auto pb = ct::encode_linear(qt, ct::format::pack_quantized, 0, 2, orbitq::io::dtype::bf16);
    std::memcpy(s, pb[2].data(), 4);
    CHECK(s[0] == 0x3f80);
    CHECK(s[1] == 0x3f80);
    CHECK(ct::linear_decls(pt, ct::format::pack_quantized, 2, 8, "lin", orbitq::io::dtype::bf16)[2].shape == orbitq::shape_type{2, 1});
    CHECK(ct::weight_args_json(pt)["strategy"] == "channel");

    // int-quantized (W8A8): the codes as they are, I8.
    const auto w8a8 = ct::encode_linear(q, ct::format::int_quantized, 0, 2, orbitq::io::dtype::bf16);
    REQUIRE(w8a8.size() == 2);
    CHECK(static_cast<std::int8_t>(w8a8[0][3]) == -127);
    CHECK(ct::linear_decls(spec, ct::format::int_quantized, 2, 8, "lin", orbitq::io::dtype::bf16)[0].type == orbitq::io::dtype::i8);
}

TEST_CASE("encode_linear: int4 asymmetric per group, codes and zero points against quantized_tensor")
{
    std::vector<float> w(16 * 64);
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>((i * 37) % 101) / 50.0f - 0.7f + static_cast<float>(i / 64) * 0.01f;
    const auto view = orbitq::make_view(w.data(), 16, 64, "lin.weight");
    quant_spec spec;
    spec.granularity = granularity_kind::per_group;
    spec.group_size = 32;
    spec.bits = 4;
    spec.scheme = scheme_kind::asymmetric;
    const auto q = orbitq::quantize(view, spec);
    const auto decls = ct::linear_decls(spec, ct::format::pack_quantized, 16, 64, "lin", orbitq::io::dtype::f32);
    REQUIRE(decls.size() == 4);
    CHECK(decls[0].shape == orbitq::shape_type{16, 8});
    CHECK(decls[2].shape == orbitq::shape_type{16, 2});
    CHECK(decls[3].name == "lin.weight_zero_point");
    CHECK(decls[3].type == orbitq::io::dtype::i32);
    CHECK(decls[3].shape == orbitq::shape_type{2, 2});
    const auto b = ct::encode_linear(q, ct::format::pack_quantized, 0, 16, orbitq::io::dtype::f32);
    const auto codes = words(b[0]);
    const auto zps = words(b[3]);
    for (std::size_t r = 0; r < 16; ++r)
    {
        for (std::size_t c = 0; c < 64; ++c)
        {
            const int code = static_cast<int>((codes[r * 8 + c / 8] >> (4 * (c % 8))) & 0xfu) - 8;
            CHECK(code == q.code(r, c));
        }
        for (std::size_t g = 0; g < 2; ++g)
        {
            const int zp = static_cast<int>((zps[(r / 8) * 2 + g] >> (4 * (r % 8))) & 0xfu) - 8;
            CHECK(zp == q.zero_point(q.layout.orbit(r, g)));
        }
    }
}

TEST_CASE("moe_refusal: what vLLM's fused-MoE kernels load for Gemma 4's widths")
{
    const std::vector<std::size_t> widths = {2816, 704};
    auto spec = [](granularity_kind g, std::size_t group, int bits, scheme_kind s) {
        quant_spec q;
        q.granularity = g;
        q.group_size = group;
        q.bits = bits;
        q.scheme = s;
        return q;
    };
    for (int bits : {8, 4})
    {
        for (scheme_kind s : {scheme_kind::symmetric, scheme_kind::asymmetric})
        {
            CHECK_FALSE(ct::moe_refusal(spec(granularity_kind::per_channel, 0, bits, s), ct::format::pack_quantized, widths));
            CHECK_FALSE(ct::moe_refusal(spec(granularity_kind::per_tensor, 0, bits, s), ct::format::pack_quantized, widths));
            CHECK_FALSE(ct::moe_refusal(spec(granularity_kind::per_group, 32, bits, s), ct::format::pack_quantized, widths));
            CHECK_FALSE(ct::moe_refusal(spec(granularity_kind::per_group, 64, bits, s), ct::format::pack_quantized, widths));
            CHECK(ct::moe_refusal(spec(granularity_kind::per_group, 128, bits, s), ct::format::pack_quantized, widths));
            CHECK(ct::moe_refusal(spec(granularity_kind::per_group, 16, bits, s), ct::format::pack_quantized, widths));
        }
    }
    const std::vector<std::size_t> wide = {2816, 1408};
    CHECK_FALSE(ct::moe_refusal(spec(granularity_kind::per_group, 128, 4, scheme_kind::symmetric), ct::format::pack_quantized, wide));
    CHECK(*ct::moe_refusal(spec(granularity_kind::per_group, 128, 8, scheme_kind::symmetric), ct::format::pack_quantized, widths)
          == "group size 128 does not divide the input width 704");
    // W8A8: int8 symmetric per channel only.
    CHECK_FALSE(ct::moe_refusal(spec(granularity_kind::per_channel, 0, 8, scheme_kind::symmetric), ct::format::int_quantized, widths));
    CHECK(ct::moe_refusal(spec(granularity_kind::per_channel, 0, 8, scheme_kind::asymmetric), ct::format::int_quantized, widths));
    CHECK(ct::moe_refusal(spec(granularity_kind::per_group, 32, 8, scheme_kind::symmetric), ct::format::int_quantized, widths));
    CHECK(ct::moe_refusal(spec(granularity_kind::per_channel, 0, 4, scheme_kind::symmetric), ct::format::int_quantized, widths));
    CHECK(ct::moe_loadable_summary(widths).find("per_group:32, per_group:64;") != std::string::npos);
    CHECK_THROWS_AS(ct::linear_decls(spec(granularity_kind::per_channel, 0, 4, scheme_kind::symmetric), ct::format::int_quantized, 2, 8, "x",
                                     orbitq::io::dtype::bf16),
                    orbitq::error);
}

TEST_CASE("float formats: tensors, dtypes, shapes and hand-computed bytes of one Linear")
{
    using orbitq::io::dtype;
    using orbitq::shape_type;
    // FP8 per channel: row amax 448 -> scale 1, codes are the values' E4M3 bytes
    std::vector<float> w(2 * 32, 0.0f);
    w[0] = 448.0f;   // 0x7e
    w[1] = -1.0f;    // 0xb8
    w[32] = 0.5f;    // row 1: amax 0.5, scale 0.5/448; 0.5 -> 448 (0x7e)
    w[33] = -0.25f;  // -224 (0xf6)
    const auto view = orbitq::make_view(w.data(), 2, 32, "lin.weight");
    quant_spec fp8;
    fp8.scheme = scheme_kind::fp8_e4m3;
    const auto q8 = orbitq::quantize(view, fp8);
    const auto d8 = ct::linear_decls(fp8, ct::format::float_quantized, 2, 32, "lin", dtype::bf16);
    REQUIRE(d8.size() == 2);
    CHECK(d8[0].name == "lin.weight");
    CHECK(d8[0].type == dtype::f8_e4m3);
    CHECK(d8[0].shape == shape_type{2, 32});
    CHECK(d8[1].name == "lin.weight_scale");
    CHECK(d8[1].type == dtype::f32);
    CHECK(d8[1].shape == shape_type{2, 1});
    const auto b8 = ct::encode_linear(q8, ct::format::float_quantized, 0, 2, dtype::bf16);
    REQUIRE(b8.size() == 2);
    CHECK(static_cast<std::uint8_t>(b8[0][0]) == 0x7e);
    CHECK(static_cast<std::uint8_t>(b8[0][1]) == 0xb8);
    CHECK(static_cast<std::uint8_t>(b8[0][32]) == 0x7e);
    CHECK(static_cast<std::uint8_t>(b8[0][33]) == 0xf6);
    float s[2];
    std::memcpy(s, b8[1].data(), 8);
    CHECK(s[0] == 1.0f);
    CHECK(s[1] == 0.5f / 448.0f);
    CHECK(ct::weight_args_json(fp8)["type"] == "float");
    CHECK(ct::weight_args_json(fp8)["strategy"] == "channel");
    CHECK(ct::activation_args_json(fp8, ct::activations::none)["strategy"] == "token");
    CHECK(ct::activation_args_json(fp8, ct::activations::none)["dynamic"] == true);
    CHECK(ct::config_group_json(fp8, ct::activations::none, {"x"})["format"] == "float-quantized");

    // FP8 blocks of 1 x 16: scales [rows, 2]; a block of 2 rows cannot be split at row 1
    quant_spec blocks = fp8;
    blocks.granularity = granularity_kind::per_block;
    blocks.block_rows = 1;
    blocks.group_size = 16;
    const auto qb = orbitq::quantize(view, blocks);
    CHECK(ct::linear_decls(blocks, ct::format::float_quantized, 2, 32, "lin", dtype::bf16)[1].shape == shape_type{2, 2});
    CHECK(ct::weight_args_json(blocks)["block_structure"] == nlohmann::json::array({1, 16}));
    CHECK(ct::encode_linear(qb, ct::format::float_quantized, 1, 1, dtype::f32)[1].size() == 2 * 4);
    blocks.block_rows = 2;
    const auto qb2 = orbitq::quantize(view, blocks);
    CHECK_THROWS_AS(ct::encode_linear(qb2, ct::format::float_quantized, 1, 1, dtype::f32), orbitq::error);

    // NVFP4: two E2M1 codes a byte (column 0 low), E4M3 scale bytes, the global scale
    quant_spec nv;
    nv.scheme = scheme_kind::nvfp4;
    nv.bits = 4;
    nv.granularity = granularity_kind::per_group;
    nv.group_size = 16;
    std::vector<float> x(32, 0.0f);
    x[0] = 6.0f;   // tensor amax 6: global 448; group scale 448 -> 0x7e, 448 / 448 = 1
    x[1] = -3.0f;  // 0xd
    const auto qn = orbitq::quantize(orbitq::make_view(x.data(), 1, 32, "nv.weight"), nv);
    const auto dn = ct::linear_decls(nv, ct::format::nvfp4_pack_quantized, 1, 32, "nv", dtype::bf16);
    REQUIRE(dn.size() == 3);
    CHECK(dn[0].name == "nv.weight_packed");
    CHECK(dn[0].type == dtype::u8);
    CHECK(dn[0].shape == shape_type{1, 16});
    CHECK(dn[1].type == dtype::f8_e4m3);
    CHECK(dn[1].shape == shape_type{1, 2});
    CHECK(dn[2].name == "nv.weight_global_scale");
    CHECK(dn[2].shape == shape_type{1});
    const auto bn = ct::encode_linear(qn, ct::format::nvfp4_pack_quantized, 0, 1, dtype::bf16);
    CHECK(static_cast<std::uint8_t>(bn[0][0]) == 0xd7);
    CHECK(static_cast<std::uint8_t>(bn[1][0]) == 0x7e);
    CHECK(static_cast<std::uint8_t>(bn[1][1]) == 0x00);  // the zero group
    float g;
    std::memcpy(&g, bn[2].data(), 4);
    CHECK(g == 448.0f);
    CHECK(ct::weight_args_json(nv)["strategy"] == "tensor_group");
    CHECK(ct::activation_args_json(nv, ct::activations::none).is_null());

    // MXFP4: E8M0 bytes; amax 6: floor(log2 6) - 2 = 0, byte 127
    quant_spec mx = nv;
    mx.scheme = scheme_kind::mxfp4;
    mx.group_size = 32;
    const auto qm = orbitq::quantize(orbitq::make_view(x.data(), 1, 32, "mx.weight"), mx);
    const auto dm = ct::linear_decls(mx, ct::format::mxfp4_pack_quantized, 1, 32, "mx", dtype::bf16);
    REQUIRE(dm.size() == 2);
    CHECK(dm[1].type == dtype::u8);
    CHECK(dm[1].shape == shape_type{1, 1});
    const auto bm = ct::encode_linear(qm, ct::format::mxfp4_pack_quantized, 0, 1, dtype::bf16);
    CHECK(static_cast<std::uint8_t>(bm[0][0]) == 0xd7);
    CHECK(static_cast<std::uint8_t>(bm[1][0]) == 127);
    CHECK(ct::activation_args_json(mx, ct::activations::none)["group_size"] == 32);
    // a float scheme in another format is refused
    CHECK_THROWS_AS(ct::linear_decls(mx, ct::format::pack_quantized, 1, 32, "mx", dtype::bf16), orbitq::error);
}

TEST_CASE("moe_refusal: the float formats for Gemma 4's widths")
{
    const std::vector<std::size_t> in = {2816, 704}, out = {704, 2816};
    quant_spec fp8;
    fp8.scheme = scheme_kind::fp8_e4m3;
    CHECK_FALSE(ct::moe_refusal(fp8, ct::format::float_quantized, in, out));
    fp8.granularity = granularity_kind::per_tensor;
    CHECK_FALSE(ct::moe_refusal(fp8, ct::format::float_quantized, in, out));
    fp8.granularity = granularity_kind::per_block;
    fp8.block_rows = fp8.group_size = 128;  // 704 % 128 != 0: vLLM's create_weights refuses gate and up
    CHECK(ct::moe_refusal(fp8, ct::format::float_quantized, in, out)->find("rows") != std::string::npos);
    fp8.block_rows = fp8.group_size = 64;
    CHECK_FALSE(ct::moe_refusal(fp8, ct::format::float_quantized, in, out));
    fp8.granularity = granularity_kind::per_group;
    fp8.group_size = 32;
    CHECK(ct::moe_refusal(fp8, ct::format::float_quantized, in, out));
    quant_spec mx;
    mx.scheme = scheme_kind::mxfp4;
    mx.bits = 4;
    mx.granularity = granularity_kind::per_group;
    mx.group_size = 32;
    CHECK_FALSE(ct::moe_refusal(mx, ct::format::mxfp4_pack_quantized, in, out));
    CHECK(ct::moe_refusal(mx, ct::format::pack_quantized, in, out));
    const std::vector<std::size_t> odd = {2816, 700};
    CHECK(ct::moe_refusal(mx, ct::format::mxfp4_pack_quantized, odd, out));
}

TEST_CASE("entry_matches: re: entries match from the start of the name (Python re.match), others exactly")
{
    const std::string e = "re:.*\\.layers\\.(0|3)\\.(moe\\.)?experts\\.\\d+\\.(gate|up|down)_proj$";
    CHECK(ct::entry_matches(e, "model.language_model.layers.3.experts.17.gate_proj"));
    CHECK(ct::entry_matches(e, "language_model.model.layers.0.moe.experts.0.down_proj"));
    CHECK_FALSE(ct::entry_matches(e, "language_model.model.layers.30.moe.experts.0.down_proj"));
    CHECK_FALSE(ct::entry_matches(e, "language_model.model.layers.13.moe.experts.0.down_proj"));
    CHECK_FALSE(ct::entry_matches(e, "model.language_model.layers.3.experts.17.gate_proj.weight_packed"));
    CHECK_FALSE(ct::entry_matches(e, "model.language_model.layers.3.mlp.gate_proj"));
    // Anchored at the start only.
    CHECK(ct::entry_matches("re:model\\.a", "model.abc"));
    CHECK_FALSE(ct::entry_matches("re:a\\.b", "x.a.b"));
    CHECK(ct::entry_matches("lm_head", "lm_head"));
    CHECK_FALSE(ct::entry_matches("lm_head", "language_model.lm_head"));
}

TEST_CASE("staged_directory: two writers of one directory never mix; the second fails, overwrite exchanges")
{
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("orbitq_test_ct_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const fs::path out = dir / "out";
    auto write = [](const io::staged_directory& s, const std::string& text) { std::ofstream(s.path() / "config.json") << text; };
    auto read = [&] {
        std::ifstream in(out / "config.json");
        return std::string(std::istreambuf_iterator<char>(in), {});
    };
    {
        io::staged_directory a(out, false), b(out, false);
        CHECK(a.path() != b.path());
        CHECK(fs::is_directory(a.path()));
        write(a, "a");
        write(b, "b");
        a.publish();
        CHECK(read() == "a");
        CHECK_THROWS_WITH_AS(b.publish(), doctest::Contains("appeared while this conversion ran"), orbitq::error);
        CHECK(read() == "a");
    }
    // Both staging directories are gone (a's published, b's removed on destruction).
    for (const auto& e : fs::directory_iterator(dir)) CHECK_MESSAGE(e.path().filename() == "out", e.path().string());

    // A staging directory of a process that no longer runs is removed by the next writer; a
    // live one (this process) is left alone.
    const fs::path dead = dir / ".out.partial.999999999.0", legacy = dir / ".out.partial";
    fs::create_directories(dead);
    fs::create_directories(legacy);
    {
        io::staged_directory c(out, true), d(out, true);
        CHECK_FALSE(fs::exists(dead));
        CHECK_FALSE(fs::exists(legacy));
        CHECK(fs::exists(c.path()));
        write(c, "c");
        write(d, "d");
        c.publish();
        CHECK(read() == "c");
        d.publish();  // overwrite: exchanged with c's output, which is then removed
        CHECK(read() == "d");
    }
    for (const auto& e : fs::directory_iterator(dir)) CHECK_MESSAGE(e.path().filename() == "out", e.path().string());
    fs::remove_all(dir);
}
