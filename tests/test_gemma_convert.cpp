// orbitq-gemma end to end, in-process: write a small synthetic checkpoint, convert it with --out,
// read the output back with an independent minimal safetensors parser (nlohmann directly, no
// orbitq I/O code) and check names, shapes, dtypes, and that the dequantized weights reproduce
// the reported metrics. Also the error paths (malformed checkpoints, --out inside the input).
#include <doctest/doctest.h>

#include "gemma_cli_support.hpp"

#include <orbitq/core/error.hpp>
#include <orbitq/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace
{
    /// This file's scratch directory.
    struct convert_scratch : gemma_test::scratch
    {
        convert_scratch() : gemma_test::scratch("orbitq_test_gemma") {}
    };
    using gemma_test::cli;
    using gemma_test::cli_result;

    /// An independent safetensors reader: whole file in memory, header parsed with nlohmann.
    struct st_file
    {
        std::string bytes;
        json header;
        std::size_t data = 0;

        explicit st_file(const fs::path& p)
        {
            std::ifstream in(p, std::ios::binary);
            bytes.assign(std::istreambuf_iterator<char>(in), {});
            REQUIRE(bytes.size() >= 8);
            std::uint64_t n = 0;
            std::memcpy(&n, bytes.data(), 8);
            header = json::parse(bytes.substr(8, n));
            data = 8 + n;
        }
        const char* ptr(const std::string& name) const
        {
            return bytes.data() + data + header.at(name).at("data_offsets")[0].get<std::size_t>();
        }
    };

    /// All tensors of a checkpoint directory: name -> (file, header entry).
    struct st_dir
    {
        std::map<std::string, std::shared_ptr<st_file>> files;
        std::map<std::string, std::string> where;

        explicit st_dir(const fs::path& d)
        {
            const json idx = json::parse(std::ifstream(d / "model.safetensors.index.json"));
            for (auto& [name, shard] : idx.at("weight_map").items())
            {
                auto& f = files[shard.get<std::string>()];
                if (!f) f = std::make_shared<st_file>(d / shard.get<std::string>());
                where[name] = shard.get<std::string>();
                REQUIRE(f->header.contains(name));
            }
        }
        const json& entry(const std::string& n) const { return files.at(where.at(n))->header.at(n); }
        const char* ptr(const std::string& n) const { return files.at(where.at(n))->ptr(n); }
        bool has(const std::string& n) const { return where.count(n) != 0; }
    };

    float bf16(const char* p, std::size_t i)
    {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
    }

    using gemma_test::layer_prefix;
}

TEST_CASE("write a synthetic checkpoint, convert it, read the output back independently")
{
    convert_scratch s;
    const fs::path in = s.dir / "in", out = s.dir / "out", report = s.dir / "report.json";
    auto w = cli({"--write-synthetic", in.string(), "--synthetic-layers", "2", "--experts", "4", "--quiet"});
    REQUIRE_MESSAGE(w.rc == 0, w.err);
    auto r = cli({"--checkpoint", in.string(), "--out", out.string(), "--report", report.string(), "--plot",
                  (s.dir / "p.svg").string(), "--tokens", "3", "--quiet"});
    REQUIRE_MESSAGE(r.rc == 0, std::string(r.err + r.out));
    CHECK(r.out.find("verdict: per_channel int8 PASSES") != std::string::npos);
    {
        // Two panels (each layer alone, the stack), each with its gate; the legend below them.
        std::ifstream svg_in(s.dir / "p.svg");
        const std::string svg((std::istreambuf_iterator<char>(svg_in)), {});
        CHECK(svg.find(">each layer alone<") != std::string::npos);
        CHECK(svg.find(">the stack<") != std::string::npos);
        CHECK(svg.find(">layer gate 0.997<") != std::string::npos);
        CHECK(svg.find(">stack gate 0.970<") != std::string::npos);
        CHECK(svg.find(">per_channel<") != std::string::npos);
    }
    for (const auto& e : fs::directory_iterator(s.dir)) CHECK_FALSE(e.path().filename().string().starts_with(".out.partial"));

    const st_dir src(in), dst(out);
    {
        // A source of expert layers only leaves nothing for a last shard: no empty file, and
        // every shard named "of" the real count is in the index.
        std::set<std::string> shards;
        for (const auto& e : fs::directory_iterator(out))
            if (e.path().extension() == ".safetensors") shards.insert(e.path().filename().string());
        CHECK(shards == std::set<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"});
        CHECK(dst.files.size() == shards.size());
    }
    const std::size_t E = 4, I = 704, H = 2816;
    // Stacked expert tensors are gone; per-expert Linears replace them; the rest is copied.
    for (int layer = 0; layer < 2; ++layer)
    {
        const std::string p = layer_prefix + std::to_string(layer) + ".";
        CHECK_FALSE(dst.has(p + "experts.gate_up_proj"));
        CHECK_FALSE(dst.has(p + "experts.down_proj"));
        for (std::size_t e = 0; e < E; ++e)
        {
            const std::string b = p + "experts." + std::to_string(e) + ".";
            for (auto [proj, rows, cols] : {std::tuple{"gate_proj", I, H}, std::tuple{"up_proj", I, H}, std::tuple{"down_proj", H, I}})
            {
                // compressed-tensors pack-quantized: four 8-bit codes per int32 word
                CHECK_FALSE(dst.has(b + proj + ".weight"));
                const json& wgt = dst.entry(b + proj + ".weight_packed");
                CHECK(wgt["dtype"] == "I32");
                CHECK(wgt["shape"] == json::array({rows, cols / 4}));
                CHECK(dst.entry(b + proj + ".weight_shape")["dtype"] == "I64");
                std::int64_t dims[2];
                std::memcpy(dims, dst.ptr(b + proj + ".weight_shape"), 16);
                CHECK(dims[0] == static_cast<std::int64_t>(rows));
                CHECK(dims[1] == static_cast<std::int64_t>(cols));
                const json& sc = dst.entry(b + proj + ".weight_scale");
                CHECK(sc["dtype"] == "BF16");
                CHECK(sc["shape"] == json::array({rows, 1}));
                CHECK_FALSE(dst.has(b + proj + ".weight_zero_point"));
            }
        }
        for (const char* n : {"router.proj.weight", "router.scale", "router.per_expert_scale", "mlp.gate_proj.weight", "layer_scalar",
                              "pre_feedforward_layernorm.weight"})
        {
            const std::string name = p + n;
            REQUIRE(dst.has(name));
            CHECK(dst.entry(name)["dtype"] == src.entry(name)["dtype"]);
            CHECK(dst.entry(name)["shape"] == src.entry(name)["shape"]);
            const auto& o = src.entry(name)["data_offsets"];
            const std::size_t nbytes = o[1].get<std::size_t>() - o[0].get<std::size_t>();
            CHECK(std::memcmp(src.ptr(name), dst.ptr(name), nbytes) == 0);
        }
    }

    // Dequantize layer 0's gate_up (gate and up of every expert) and compare with the report.
    const json rep = json::parse(std::ifstream(report));
    CHECK(rep["gates"]["layer"]["passed"] == true);
    CHECK(rep["config"]["granularity"] == "per_channel");
    const json& t0 = rep["layers"][0]["tensors"][0];
    REQUIRE(t0["name"] == layer_prefix + "0.experts.gate_up_proj");
    CHECK(t0["shape"] == json::array({E, 2 * I, H}));
    CHECK(t0["granularity"] == "per_channel");
    CHECK(t0["bits"] == 8);
    double ref2 = 0, err2 = 0, dot = 0, rec2 = 0, maxerr = 0;
    std::size_t beyond_half_step = 0;
    const char* stacked = src.ptr(layer_prefix + "0.experts.gate_up_proj");
    for (std::size_t e = 0; e < E; ++e)
    {
        for (std::size_t half = 0; half < 2; ++half)
        {
            const std::string b = layer_prefix + "0.experts." + std::to_string(e) + (half ? ".up_proj" : ".gate_proj");
            // Little-endian words holding 8-bit values at bits 8j: byte c of a row is column c,
            // stored as code + 128.
            const auto* packed = reinterpret_cast<const std::uint8_t*>(dst.ptr(b + ".weight_packed"));
            const char* scales = dst.ptr(b + ".weight_scale");
            for (std::size_t r = 0; r < I; ++r)
            {
                const float scale = bf16(scales, r);
                for (std::size_t c = 0; c < H; ++c)
                {
                    const double wv = bf16(stacked, ((e * 2 * I) + half * I + r) * H + c);
                    const double q = static_cast<float>(static_cast<int>(packed[r * H + c]) - 128) * scale;
                    ref2 += wv * wv;
                    rec2 += q * q;
                    dot += wv * q;
                    err2 += (wv - q) * (wv - q);
                    maxerr = std::max(maxerr, std::fabs(wv - q));
                    // Inside the range every weight is within half a step of its reconstruction.
                    if (std::fabs(wv - q) > 0.5 * scale * (1 + 1e-2)) ++beyond_half_step;
                }
            }
        }
    }
    CHECK(beyond_half_step == 0);
    CHECK(dot / std::sqrt(ref2 * rec2) == doctest::Approx(t0["cos"].get<double>()).epsilon(1e-9));
    CHECK(-10 * std::log10(err2 / ref2) == doctest::Approx(t0["sqnr_db"].get<double>()).epsilon(1e-6));
    CHECK(maxerr == doctest::Approx(t0["max_abs_err"].get<double>()).epsilon(1e-6));

    // The config: quantization_config for compressed-tensors.
    const json cfg = json::parse(std::ifstream(out / "config.json"));
    const json& qc = cfg["quantization_config"];
    CHECK(qc["quant_method"] == "compressed-tensors");
    CHECK(qc["format"] == "pack-quantized");
    CHECK(qc["config_groups"]["group_0"]["format"] == "pack-quantized");
    CHECK(qc["config_groups"]["group_0"]["weights"]["strategy"] == "channel");
    CHECK(qc["config_groups"]["group_0"]["weights"]["num_bits"] == 8);
    CHECK(cfg["text_config"]["num_experts"] == 4);

    // Refusals: an existing --out, an --out inside the input.
    auto again = cli({"--checkpoint", in.string(), "--out", out.string(), "--quiet", "--layers", "0"});
    CHECK(again.rc == 1);
    CHECK(again.err.find("already exists") != std::string::npos);
    auto inside = cli({"--checkpoint", in.string(), "--out", (in / "q").string(), "--quiet", "--layers", "0"});
    CHECK(inside.rc == 1);
    CHECK(inside.err.find("inside or equal to the input") != std::string::npos);
    CHECK_FALSE(fs::exists(in / "q"));

    // INT4 asymmetric per-group: packed layout, zero points, group scales.
    const fs::path out4 = s.dir / "out4";
    auto r4 = cli({"--checkpoint", in.string(), "--out", out4.string(), "--bits", "4", "--granularity", "per_group:32", "--scheme",
                   "asymmetric", "--compare", "per_group:32", "--layers", "1", "--tokens", "2", "--quiet"});
    CHECK((r4.rc == 0 || r4.rc == 2));
    const st_dir d4(out4);
    const std::string b4 = layer_prefix + "1.experts.3.down_proj";
    CHECK(d4.entry(b4 + ".weight_packed")["dtype"] == "I32");
    CHECK(d4.entry(b4 + ".weight_packed")["shape"] == json::array({H, I / 8}));
    CHECK(d4.entry(b4 + ".weight_shape")["shape"] == json::array({2}));
    CHECK(d4.entry(b4 + ".weight_scale")["shape"] == json::array({H, I / 32}));
    // zero points packed along the output dimension: eight rows per int32 word
    CHECK(d4.entry(b4 + ".weight_zero_point")["dtype"] == "I32");
    CHECK(d4.entry(b4 + ".weight_zero_point")["shape"] == json::array({H / 8, I / 32}));
    CHECK(d4.has(layer_prefix + "0.experts.gate_up_proj"));  // layer 0 not selected: copied unchanged
    const json cfg4 = json::parse(std::ifstream(out4 / "config.json"));
    CHECK(cfg4["quantization_config"]["format"] == "pack-quantized");
    CHECK(cfg4["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] == 32);
    // Unpack one row and check it against the source within a step.
    {
        const auto* packed = reinterpret_cast<const std::uint8_t*>(d4.ptr(b4 + ".weight_packed"));
        const char* sc = d4.ptr(b4 + ".weight_scale");
        const char* zpw = d4.ptr(b4 + ".weight_zero_point");
        const char* srcd = src.ptr(layer_prefix + "1.experts.down_proj");
        const std::size_t row = 5;
        for (std::size_t c = 0; c < I; ++c)
        {
            const std::uint32_t word = static_cast<std::uint32_t>(packed[row * I / 2 + c / 2]);
            const int nib = (c % 2 ? word >> 4 : word) & 0xf;
            const int code = nib - 8;  // offset binary
            const float scale = bf16(sc, row * (I / 32) + c / 32);
            std::uint32_t zword;
            std::memcpy(&zword, zpw + 4 * ((row / 8) * (I / 32) + c / 32), 4);
            const int zp = static_cast<int>((zword >> (4 * (row % 8))) & 0xfu) - 8;
            const double q = (code - zp) * double(scale);
            const double wv = bf16(srcd, (3 * H + row) * I + c);
            // within half a step, or a step and a bit at the clamped ends of an asymmetric range
            // (the zero point is an integer, the scale rounded to BF16)
            CHECK(std::fabs(wv - q) <= ((code == -8 || code == 7) ? 1.1 : 0.55) * scale + 1e-12);
        }
    }
}

TEST_CASE("NVFP4 W4A4: every expert Linear carries its layer's input_global_scale; the config declares NVFP4 activations")
{
    convert_scratch s;
    const fs::path in = s.dir / "in", out = s.dir / "out";
    auto w = cli({"--write-synthetic", in.string(), "--synthetic-layers", "2", "--experts", "2", "--quiet"});
    REQUIRE_MESSAGE(w.rc == 0, w.err);
    auto r = cli({"--checkpoint", in.string(), "--out", out.string(), "--scheme", "nvfp4", "--activations", "nvfp4", "--tokens", "3", "--quiet"});
    REQUIRE_MESSAGE((r.rc == 0 || r.rc == 2), std::string(r.err + r.out));
    CHECK(r.err.find("calibrated on 3 synthetic sample tokens") != std::string::npos);  // a checkpoint: the tokens are not real text
    CHECK(r.out.find("activations: nvfp4 per group of 16 (W4A4)") != std::string::npos);
    const st_dir dst(out);
    for (int layer = 0; layer < 2; ++layer)
    {
        std::map<std::string, float> first;  // per projection: expert 0's value
        for (int e = 0; e < 2; ++e)
        {
            for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
            {
                const std::string n = layer_prefix + std::to_string(layer) + ".experts." + std::to_string(e) + "." + proj + ".input_global_scale";
                REQUIRE_MESSAGE(dst.has(n), n);
                CHECK(dst.entry(n).at("dtype") == "F32");
                CHECK(dst.entry(n).at("shape") == json::array({1}));
                float v = 0;
                std::memcpy(&v, dst.ptr(n), 4);
                CHECK((std::isfinite(v) && v > 0.0f));
                if (e == 0) first[proj] = v;
                else CHECK(v == first[proj]);  // one per layer and input: every backend reduces them alike
            }
        }
        CHECK(first["gate_proj"] == first["up_proj"]);  // the same input
        CHECK(first["gate_proj"] != first["down_proj"]);
    }
    const json qc = json::parse(std::ifstream(out / "config.json")).at("quantization_config");
    const json& a = qc.at("config_groups").at("group_0").at("input_activations");
    CHECK(a.at("type") == "float");
    CHECK(a.at("num_bits") == 4);
    CHECK(a.at("strategy") == "tensor_group");
    CHECK(a.at("group_size") == 16);
    CHECK(a.at("dynamic") == "local");

    // weight-only NVFP4 writes no input_global_scale and no input_activations
    const fs::path out16 = s.dir / "out16";
    r = cli({"--checkpoint", in.string(), "--out", out16.string(), "--scheme", "nvfp4", "--tokens", "3", "--quiet"});
    REQUIRE_MESSAGE((r.rc == 0 || r.rc == 2), r.err);
    CHECK_FALSE(st_dir(out16).has(layer_prefix + "0.experts.0.gate_proj.input_global_scale"));
    CHECK(json::parse(std::ifstream(out16 / "config.json")).at("quantization_config").at("config_groups").at("group_0").at("input_activations").is_null());
}

TEST_CASE("--granularity auto: the float formats are candidates; a layer may take FP8 while another stays integer")
{
    convert_scratch s;
    const fs::path in = s.dir / "in", out = s.dir / "out";
    auto w = cli({"--write-synthetic", in.string(), "--synthetic-layers", "2", "--experts", "2", "--quiet"});
    REQUIRE_MESSAGE(w.rc == 0, w.err);
    // cos >= 0.999: layer 1's outliers take int8 per tensor below it, FP8's exponent keeps it
    // above at the same 8 bits a weight; layer 0 keeps int8 per tensor (higher SQNR at a tie)
    auto r = cli({"--checkpoint", in.string(), "--out", out.string(), "--granularity", "auto", "--target-cos", "0.999", "--tokens", "2", "--quiet"});
    REQUIRE_MESSAGE(r.rc == 0, std::string(r.err + r.out));
    CHECK(r.out.find("layers.0.experts.gate_up_proj: per_tensor int8 symmetric") != std::string::npos);
    CHECK(r.out.find("layers.1.experts.gate_up_proj: per_tensor fp8_e4m3") != std::string::npos);
    const json qc = json::parse(std::ifstream(out / "config.json")).at("quantization_config");
    CHECK(qc.at("format") == "mixed-precision");
    std::set<std::string> formats;
    for (const auto& [name, g] : qc.at("config_groups").items())
    {
        formats.insert(g.at("format").get<std::string>());
        // FP8 weights come with vLLM's dynamic FP8 activations; the integer group is weight-only
        if (g.at("format") == "float-quantized") CHECK(g.at("input_activations").at("type") == "float");
        else CHECK(g.at("input_activations").is_null());
    }
    CHECK(formats == std::set<std::string>{"float-quantized", "pack-quantized"});
    const st_dir dst(out);
    CHECK(dst.entry(layer_prefix + "1.experts.0.gate_proj.weight").at("dtype") == "F8_E4M3");
    CHECK(dst.entry(layer_prefix + "0.experts.0.gate_proj.weight_packed").at("dtype") == "I32");

    // --bits 4: only 4-bit candidates, float ones included (mxfp4, nvfp4) in the count
    r = cli({"--checkpoint", in.string(), "--granularity", "auto", "--target-cos", "0.99", "--bits", "4", "--tokens", "2", "--quiet"});
    REQUIRE_MESSAGE(r.rc == 0, std::string(r.err + r.out));
    CHECK(r.out.find(" of 10 candidates meeting") != std::string::npos);  // 8 integer (per_tensor, per_channel, g32, g64 x sym/asym) + 2
}

TEST_CASE("malformed checkpoints and bad options: exit status 1 with a message saying what to do")
{
    convert_scratch s;
    // A truncated header.
    const fs::path bad = s.dir / "bad";
    fs::create_directories(bad);
    {
        std::ofstream f(bad / "model.safetensors", std::ios::binary);
        const std::uint64_t n = 1000;
        f.write(reinterpret_cast<const char*>(&n), 8);
        f << "{\"a\":";
    }
    auto r = cli({"--checkpoint", bad.string(), "--quiet"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("model.safetensors") != std::string::npos);

    // A valid safetensors file that is not a Gemma 4 checkpoint.
    const fs::path other = s.dir / "other";
    fs::create_directories(other);
    {
        const std::string h = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
        std::ofstream f(other / "model.safetensors", std::ios::binary);
        const std::uint64_t n = h.size();
        f.write(reinterpret_cast<const char*>(&n), 8);
        f << h;
        const float v[2] = {1, 2};
        f.write(reinterpret_cast<const char*>(v), 8);
    }
    r = cli({"--checkpoint", other.string(), "--quiet"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("experts.gate_up_proj") != std::string::npos);

    // A Gemma config that promises a layer the shards lack.
    const fs::path in = s.dir / "in";
    REQUIRE(cli({"--write-synthetic", in.string(), "--synthetic-layers", "1", "--experts", "2", "--quiet"}).rc == 0);
    json cfg = json::parse(std::ifstream(in / "config.json"));
    cfg["text_config"]["num_hidden_layers"] = 2;
    std::ofstream(in / "config.json") << cfg.dump();
    r = cli({"--checkpoint", in.string(), "--quiet"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("lacks tensor 'model.language_model.layers.1.") != std::string::npos);

    CHECK(cli({"--layers", "40", "--quiet"}).rc == 1);
    CHECK(cli({"--granularity", "per_block", "--quiet"}).rc == 1);
    CHECK(cli({"--granularity", "per_group:128", "--quiet", "--layers", "0"}).err.find("does not divide") != std::string::npos);
    CHECK(cli({"--bits", "3", "--quiet"}).rc == 1);
    CHECK(cli({"--no-such-flag"}).rc == 1);
    CHECK(cli({"--help"}).rc == 0);
}

TEST_CASE("analyze subcommand: per-candidate costs and selection on a small synthetic checkpoint")
{
    convert_scratch s;
    const fs::path in = s.dir / "in", report = s.dir / "a.json";
    REQUIRE(cli({"--write-synthetic", in.string(), "--synthetic-layers", "2", "--experts", "2", "--quiet"}).rc == 0);
    auto r = cli({"analyze", "--checkpoint", in.string(), "--layers", "1", "--candidates", "per_tensor,per_channel,per_group:32@4/asym",
                  "--target-cos", "0.999", "--report", report.string(), "--quiet"});
    REQUIRE_MESSAGE(r.rc == 0, std::string(r.err + r.out));
    const json a = json::parse(std::ifstream(report));
    REQUIRE(a["tensors"].size() == 2);
    const json& t = a["tensors"][0];
    CHECK(t["name"] == layer_prefix + "1.experts.gate_up_proj");
    REQUIRE(t["candidates"].size() == 3);
    // On this layer's outliers, per-channel beats per-tensor, and the selection is per_channel int8.
    CHECK(t["candidates"][1]["sqnr_db"].get<double>() > t["candidates"][0]["sqnr_db"].get<double>());
    CHECK(t["selection"]["index"] == 1);
    CHECK(t["largest_weights"].size() == 3);
    CHECK(cli({"analyze", "--candidates", "per_channel@3", "--quiet", "--layers", "0"}).rc == 1);
    CHECK(cli({"analyze", "--candidates", "per_channel/fast", "--quiet", "--layers", "0"}).rc == 1);

    // searched scales: the /mse suffix, its JSON "scales", never below its amax twin
    r = cli({"analyze", "--checkpoint", in.string(), "--layers", "1", "--candidates", "per_group:32@4/asym,per_group:32@4/asym/mse",
             "--report", report.string(), "--quiet"});
    REQUIRE_MESSAGE(r.rc == 0, std::string(r.err + r.out));
    const json m = json::parse(std::ifstream(report))["tensors"][0]["candidates"];
    REQUIRE(m.size() == 2);
    CHECK(m[0]["scales"] == "amax");
    CHECK(m[1]["scales"] == "mse");
    CHECK(m[1]["scheme"] == "asymmetric");
    CHECK(m[1]["sqnr_db"].get<double>() >= m[0]["sqnr_db"].get<double>());
    CHECK(r.out.find("per_group:32 int4 asymmetric mse") != std::string::npos);
}

TEST_CASE("analyze PATH: any safetensors file, not only Gemma's names")
{
    convert_scratch s;
    const fs::path file = s.dir / "other.safetensors", report = s.dir / "any.json";
    std::vector<float> conv(16 * 3 * 3 * 3), proj(24 * 64), bias(24);
    for (std::size_t i = 0; i < conv.size(); ++i) conv[i] = 0.01f * float(int(i % 19) - 9);
    for (std::size_t i = 0; i < proj.size(); ++i) proj[i] = 0.02f * float(int(i % 23) - 11);
    proj[100] = 3.0f;  // an outlier in row 1
    {
        orbitq::io::safetensors_writer w(file, {{"encoder.conv.weight", orbitq::io::dtype::f32, {16, 3, 3, 3}},
                                                {"encoder.proj.weight", orbitq::io::dtype::f32, {24, 64}},
                                                {"encoder.proj.bias", orbitq::io::dtype::f32, {24}}});
        w.write("encoder.conv.weight", std::span<const float>(conv));
        w.write("encoder.proj.weight", std::span<const float>(proj));
        w.write("encoder.proj.bias", std::span<const float>(bias));
        w.commit();
    }
    auto r = cli({"analyze", file.string(), "--target-sqnr", "30", "--report", report.string(), "--quiet"});
    REQUIRE_MESSAGE(r.rc == 0, std::string(r.err + r.out));
    const json a = json::parse(std::ifstream(report));
    REQUIRE(a["tensors"].size() == 2);  // the rank-1 bias is not a weight matrix
    const json& c = a["tensors"][0];
    CHECK(c["name"] == "encoder.conv.weight");
    CHECK(c["rows"] == 16);  // [O, I, kh, kw]: O rows of I*kh*kw
    CHECK(c["cols"] == 27);
    const json& p = a["tensors"][1];
    CHECK(p["rows"] == 24);
    CHECK(p["worst_rows"][0]["row"] != 1);              // row 1 holds the tensor's max: it loses no bits
    CHECK(p["largest_weights"][0]["row"] == 1);
    CHECK(p["largest_weights"][0]["col"] == 36);
    for (const char* key : {"granularity", "group_size", "bits", "scheme", "scales", "bits_per_weight", "cos", "sqnr_db", "max_abs_err"})
    {
        CHECK(p["candidates"][0].contains(key));
    }
    CHECK(p["selection"]["index"].is_number());
    // by default the integer candidates that fit and the float formats: fp8 on any row, the
    // fp4 formats where their group divides it (64: both; 27: neither)
    const auto count = [](const json& t, const std::string& scheme) {
        return std::count_if(t["candidates"].begin(), t["candidates"].end(), [&](const json& k) { return k["scheme"] == scheme; });
    };
    CHECK(p["candidates"].size() == 16);
    CHECK(count(p, "fp8_e4m3") == 2);
    CHECK(count(p, "mxfp4") == 1);
    CHECK(count(p, "nvfp4") == 1);
    CHECK(c["candidates"].size() == 10);
    CHECK(count(c, "fp8_e4m3") == 2);
    CHECK(count(c, "nvfp4") == 0);
    CHECK(r.out.find("encoder.proj.weight") != std::string::npos);
    CHECK(cli({"analyze", file.string(), "--min-elements", "100000", "--quiet"}).rc == 1);  // nothing left to analyse
}

TEST_CASE("parse_layers")
{
    using orbitq::gemma_cli::parse_layers;
    CHECK(parse_layers("0-3", 30) == std::vector<std::size_t>{0, 1, 2, 3});
    CHECK(parse_layers("5,1,7-8", 30) == std::vector<std::size_t>{5, 1, 7, 8});
    CHECK_THROWS_AS(parse_layers("3-1", 30), orbitq::error);
    CHECK_THROWS_AS(parse_layers("30", 30), orbitq::error);
    CHECK_THROWS_AS(parse_layers("a", 30), orbitq::error);
}
