// orbitq-gemma's numeric flags, in-process: each refuses 0 (where 0 means nothing), negative,
// huge and non-numeric values with exit status 1 and a message naming the flag, before any work;
// the edges of each range are taken.
#include <doctest/doctest.h>

#include "gemma_cli_support.hpp"

#include <orbitq/io/importance.hpp>
#include <orbitq/io/safetensors_writer.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

using gemma_test::cli;

namespace
{
    /// A quick valid run around `extra`: one synthetic layer of two experts, one token (each
    ///        of these defaults left out when `extra` sets that flag itself).
    std::vector<std::string> quick(std::vector<std::string> extra)
    {
        const std::vector<std::pair<std::string, std::string>> base = {
            {"--synthetic-layers", "1"}, {"--experts", "2"}, {"--tokens", "1"}, {"--compare", "per_channel"}};
        std::vector<std::string> a = {"--quiet"};
        for (const auto& [flag, value] : base)
        {
            if (std::find(extra.begin(), extra.end(), flag) == extra.end()) a.insert(a.end(), {flag, value});
        }
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }

    void refused(const std::vector<std::string>& args, const std::string& flag)
    {
        const auto r = cli(args);
        std::string shown;
        for (const auto& a : args) shown += a + " ";
        INFO(shown);
        CHECK(r.rc == 1);
        CHECK_MESSAGE(r.err.find(flag) != std::string::npos, r.err);
    }

    struct flag_case
    {
        std::string flag;
        std::vector<std::string> bad;   ///< refused with exit 1
        std::vector<std::string> good;  ///< taken (exit 0 or 2: a gate may fail)
    };
}

TEST_CASE("numeric flags: 0, negative, huge and non-numeric values are refused with exit 1 naming the flag")
{
    const std::string huge = "99999999999999999999999", nan = "nan", text = "abc", neg = "-1";
    const std::vector<flag_case> cases = {
        {"--experts", {"0", neg, "129", huge, text, "2.5"}, {"1"}},
        {"--synthetic-layers", {"0", neg, "31", huge, text}, {"1"}},
        {"--seed", {neg, huge, text, "1e3"}, {"0", "18446744073709551615"}},
        {"--bits", {"0", neg, "16", huge, text}, {"4"}},
        {"--group-size", {"0", neg, "65537", huge, text}, {"32"}},
        {"--threads", {neg, "100000", huge, text}, {"0", "1"}},
        {"--min-elements", {neg, huge, text}, {"0", "18446744073709551615"}},
        {"--tokens", {"0", neg, "4097", huge, text}, {"1"}},
        {"--gate-layer-cos", {"1.5", "-2", huge, text, nan, "inf"}, {"-1", "1"}},
        {"--gate-stack-cos", {"1.01", huge, text, nan}, {"0"}},
    };
    for (const auto& c : cases)
    {
        for (const auto& v : c.bad) refused(quick({c.flag, v}), c.flag);
        for (const auto& v : c.good)
        {
            const auto r = cli(quick({c.flag, v}));
            INFO(c.flag << " " << v);
            CHECK_MESSAGE((r.rc == 0 || r.rc == 2), r.err);
        }
    }
    // The auto targets (checked at parse time, before the auto rules).
    for (const auto& v : {std::string("1.5"), nan, text, huge})
    {
        refused(quick({"--granularity", "auto", "--target-cos", v}), "--target-cos");
    }
    for (const auto& v : {std::string("inf"), nan, text, std::string("1e9")}) refused(quick({"--granularity", "auto", "--target-sqnr", v}), "--target-sqnr");
    refused({"analyze", "--target-cos", nan, "--quiet"}, "--target-cos");
}

TEST_CASE("group sizes and layer lists: 0 and huge values are errors, never a crash")
{
    // --group-size 0 used to divide by zero (SIGFPE).
    refused(quick({"--granularity", "per_group", "--group-size", "0"}), "--group-size");
    for (const std::string g : {"per_group:0", "per_group:99999999999999", "per_group:65537", "per_group:-4", "per_group:x"})
    {
        const auto r = cli(quick({"--granularity", g}));
        CHECK(r.rc == 1);
        CHECK_MESSAGE(r.err.find("group size") != std::string::npos, r.err);
    }
    for (const std::string l : {"99999999999999999999999", "0-99999999999999999999", "5", "-1", "a"})
    {
        const auto r = cli(quick({"--layers", l}));
        CHECK(r.rc == 1);
        CHECK_MESSAGE(r.err.find("--layers") != std::string::npos, r.err);
    }
}

TEST_CASE("--scales: amax or mse; mse refused where it cannot search")
{
    refused(quick({"--scales", "bogus"}), "--scales");
    refused(quick({"--scales", "mse", "--granularity", "per_tensor"}), "--scales mse");
    const auto r = cli(quick({"--scales", "mse", "--bits", "4", "--granularity", "per_group:32", "--compare", "per_tensor,per_channel"}));
    CHECK_MESSAGE((r.rc == 0 || r.rc == 2), r.err);
    CHECK(r.out.find("mse scales") != std::string::npos);
}

TEST_CASE("--scales mse_signed: negative scales in the report's spec; refused with a zero point or float codes")
{
    refused(quick({"--scales", "mse_signed", "--scheme", "asymmetric"}), "mse_signed");
    refused(quick({"--scales", "mse_signed", "--scheme", "nvfp4"}), "mse_signed");
    refused(quick({"--scales", "mse_signed", "--granularity", "per_tensor"}), "--scales mse");
    refused({"--quiet", "--experts", "2", "--synthetic-layers", "1", "analyze", "--candidates", "per_group:32@4/asym/mse_signed"}, "/mse_signed");
    gemma_test::scratch s("orbitq_test_signed_scales");
    const std::string report = (s.dir / "report.json").string();
    const auto r = cli(quick({"--scales", "mse_signed", "--bits", "4", "--granularity", "per_group:32", "--report", report}));
    CHECK_MESSAGE((r.rc == 0 || r.rc == 2), r.err);
    CHECK(r.out.find("mse_signed scales") != std::string::npos);
    std::ifstream in(report);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(text.find("\"scales\": \"mse_signed\"") != std::string::npos);
    const auto a = cli({"--quiet", "--experts", "2", "--synthetic-layers", "1", "--layers", "0", "analyze", "--candidates",
                        "per_group:32@4/mse,per_group:32@4/mse_signed"});
    CHECK_MESSAGE(a.rc == 0, a.err);
    CHECK(a.out.find("per_group:32 int4 symmetric mse signed") != std::string::npos);
}

TEST_CASE("--scheme fp8_e4m3 | mxfp4 | nvfp4: conflicting flags are refused, the formats run")
{
    refused(quick({"--scheme", "bogus"}), "--scheme");
    refused(quick({"--scheme", "mxfp4", "--bits", "8"}), "--bits");
    refused(quick({"--scheme", "fp8_e4m3", "--bits", "4"}), "--bits");
    refused(quick({"--scheme", "nvfp4", "--granularity", "per_channel:8"}), "--granularity");
    refused(quick({"--scheme", "mxfp4", "--granularity", "per_group:16"}), "groups of 32");
    refused(quick({"--scheme", "fp8_e4m3", "--scales", "mse"}), "--scales");
    refused(quick({"--scheme", "fp8_e4m3", "--activations", "int8"}), "--activations");
    refused(quick({"--scheme", "mxfp4", "--activations", "nvfp4"}), "--activations");
    refused(quick({"--scheme", "nvfp4", "--activations", "int8"}), "nvfp4 (W4A4)");
    refused(quick({"--activations", "nvfp4"}), "--scheme nvfp4");
    refused(quick({"--activations", "fp4"}), "none, int8 or nvfp4");
    refused(quick({"--scheme", "fp8_e4m3", "--granularity", "auto", "--target-cos", "0.99"}), "auto");
    refused(quick({"--granularity", "per_block"}), "fp8_e4m3");
    for (const char* bad : {"per_block:0x4", "per_block:128", "per_block:x", "per_block:9999999x1", "per_block:-1x2"})
    {
        refused(quick({"--scheme", "fp8_e4m3", "--granularity", bad}), "per_block");
    }
    for (const char* scheme : {"fp8_e4m3", "mxfp4", "nvfp4"})
    {
        const auto r = cli(quick({"--scheme", scheme}));
        CAPTURE(scheme);
        CHECK_MESSAGE((r.rc == 0 || r.rc == 2), r.err);
        CHECK(r.out.find(std::string("verdict: ")) != std::string::npos);
        CHECK(r.out.find(" int8 ") == std::string::npos);  // the verdict names the format, not an integer width
    }
    const auto b = cli(quick({"--scheme", "fp8_e4m3", "--granularity", "per_block:64x32"}));
    CHECK_MESSAGE((b.rc == 0 || b.rc == 2), b.err);
    CHECK(b.out.find("fp8 per_block:64x32") != std::string::npos);
}

TEST_CASE("analyze --candidates: float formats by suffix; a width given with one is refused")
{
    const auto r = cli({"--quiet", "--experts", "2", "--synthetic-layers", "1", "--layers", "0", "analyze", "--candidates",
                        "per_group:32/mxfp4,per_channel/fp8_e4m3,per_block:64x64/fp8_e4m3,per_group:16/nvfp4,per_channel@8"});
    CHECK_MESSAGE(r.rc == 0, r.err);
    for (const char* name : {"per_group:32 mxfp4", "per_channel fp8_e4m3", "per_block:64x64 fp8_e4m3", "per_group:16 nvfp4", "per_channel int8"})
    {
        CHECK_MESSAGE(r.out.find(name) != std::string::npos, name);
    }
    refused({"--quiet", "--experts", "2", "--synthetic-layers", "1", "analyze", "--candidates", "per_channel@8/fp8_e4m3"}, "fixes its bits");
    // without --candidates: the float formats too
    const auto d = cli({"--quiet", "--experts", "2", "--synthetic-layers", "1", "analyze"});
    CHECK_MESSAGE(d.rc != 1, d.err);
    for (const char* name : {"per_tensor fp8_e4m3", "per_channel fp8_e4m3", "per_group:32 mxfp4", "per_group:16 nvfp4", "per_channel int8"})
    {
        CHECK_MESSAGE(d.out.find(name) != std::string::npos, name);
    }
    refused({"--quiet", "--experts", "2", "--synthetic-layers", "1", "analyze", "--candidates", "per_channel/bogus"}, "suffixes");
}

TEST_CASE("--importance: a column importance file weights the mse search; refused without mse, with analyze, or not covering a tensor")
{
    gemma_test::scratch s("orbitq_test_importance");
    const std::string L0 = "model.language_model.layers.0.experts.";
    const std::size_t H = 2816, I = 704, E = 2;
    // gate_up reads the hidden state (one row for both experts); down reads the intermediate
    // activations (a row per expert): a few heavy columns, as activations have
    std::vector<float> hidden(H, 1.0f), inter(E * I, 1.0f);
    for (std::size_t c = 0; c < H; c += 37) hidden[c] = 50.0f;
    for (std::size_t c = 0; c < E * I; c += 11) inter[c] = 20.0f;
    orbitq::io::importance_table t;
    t.add(L0 + "gate_up_proj", 1, hidden);
    t.add(L0 + "down_proj", E, inter);
    const std::string file = (s.dir / "imp.safetensors").string();
    t.write(file);

    const auto args = [&](std::vector<std::string> extra) {
        // per_tensor compared with amax scales: the gated per_group:32 alone is searched
        std::vector<std::string> a = {"--scales", "mse", "--bits", "4", "--granularity", "per_group:32", "--compare", "per_tensor"};
        a.insert(a.end(), extra.begin(), extra.end());
        return quick(a);
    };
    const std::string weighted_report = (s.dir / "w.json").string(), plain_report = (s.dir / "p.json").string();
    const auto w = cli(args({"--importance", file, "--report", weighted_report}));
    REQUIRE_MESSAGE((w.rc == 0 || w.rc == 2), w.err);
    const auto p = cli(args({"--report", plain_report}));
    REQUIRE_MESSAGE((p.rc == 0 || p.rc == 2), p.err);
    const auto read = [](const std::string& f) {
        std::ifstream in(f);
        return std::string((std::istreambuf_iterator<char>(in)), {});
    };
    const std::string wr = read(weighted_report), pr = read(plain_report);
    CHECK(wr.find("\"importance\": \"" + file + "\"") != std::string::npos);
    CHECK(wr != pr);  // other scales, so other metrics

    refused(quick({"--importance", file}), "--scales mse");
    refused(args({"--importance", (s.dir / "none.safetensors").string()}), "none.safetensors");
    refused(quick({"analyze", "--importance", file}), "--importance");
    orbitq::io::importance_table partial;
    partial.add(L0 + "gate_up_proj", 1, hidden);
    partial.write(s.dir / "partial.safetensors");
    refused(args({"--importance", (s.dir / "partial.safetensors").string()}), "has no entry for '" + L0 + "down_proj'");
    orbitq::io::importance_table misshapen;
    misshapen.add(L0 + "gate_up_proj", 3, std::vector<float>(3 * H, 1.0f));
    misshapen.add(L0 + "down_proj", 1, std::vector<float>(I, 1.0f));
    misshapen.write(s.dir / "misshapen.safetensors");
    refused(args({"--importance", (s.dir / "misshapen.safetensors").string()}), "needs [2816] or [2, 2816]");
    // a file that covers layer 0 but not layer 1: refused before layer 0 is converted
    const std::string out = (s.dir / "out").string();
    const auto two = cli(args({"--importance", file, "--synthetic-layers", "2", "--out", out}));
    CHECK(two.rc == 1);
    CHECK_MESSAGE(two.err.find("has no entry for 'model.language_model.layers.1.experts.gate_up_proj'") != std::string::npos, two.err);
    CHECK(two.out.find("    0 |") == std::string::npos);  // no layer row printed
    CHECK(!std::filesystem::exists(out));
}

TEST_CASE("--tokens-file: the residual stream of a file drives the forward tests; refused when it cannot")
{
    gemma_test::scratch s("orbitq_test_tokens_file");
    const std::size_t H = 2816;
    const auto write = [&](const std::string& name, const std::string& tensor, orbitq::io::dtype t, orbitq::shape_type shape, float fill) {
        std::size_t n = 1;
        for (std::size_t d : shape) n *= d;
        std::vector<float> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = std::sin(0.01f * static_cast<float>(i)) + (i % H == 7 ? 30.0f : 0.0f);
        if (fill != 0.0f) v[n / 2] = fill;
        const std::string path = (s.dir / name).string();
        orbitq::io::safetensors_writer w(path, {{tensor, t, shape}});
        if (t == orbitq::io::dtype::f32) w.write(tensor, std::span<const float>(v));
        else w.write(tensor, std::span<const std::byte>(std::vector<std::byte>(n * orbitq::io::dtype_size(t))));
        w.commit();
        return path;
    };
    const std::string good = write("good.safetensors", "hidden_states", orbitq::io::dtype::f32, {2, 3, H}, 0.0f);
    const std::vector<std::string> base = {"--quiet", "--synthetic-layers", "1", "--experts", "2", "--compare", "per_channel"};
    auto with = [&](std::vector<std::string> extra) {
        std::vector<std::string> a = base;
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    };
    // [batch, sequence, hidden]: all 6 tokens, or the first --tokens of them
    auto r = cli(with({"--tokens-file", good}));
    REQUIRE_MESSAGE((r.rc == 0 || r.rc == 2), r.err);
    CHECK(r.out.find("6 tokens from " + good) != std::string::npos);
    r = cli(with({"--tokens-file", good, "--tokens", "4"}));
    REQUIRE_MESSAGE((r.rc == 0 || r.rc == 2), r.err);
    CHECK(r.out.find("4 tokens from " + good) != std::string::npos);
    // other tokens, other metrics: the file's stream is the one validated
    const std::string a_json = (s.dir / "a.json").string(), b_json = (s.dir / "b.json").string();
    REQUIRE(cli(with({"--tokens-file", good, "--tokens", "4", "--report", a_json})).rc != 1);
    REQUIRE(cli(with({"--tokens", "4", "--report", b_json})).rc != 1);
    const auto read = [](const std::string& f) {
        std::ifstream in(f);
        return std::string((std::istreambuf_iterator<char>(in)), {});
    };
    const std::string ra = read(a_json), rb = read(b_json);
    CHECK(ra.find("\"tokens_file\": \"" + good + "\"") != std::string::npos);
    CHECK(rb.find("\"tokens_file\": null") != std::string::npos);

    refused(with({"--tokens-file", good, "--tokens", "7"}), "holds 6 tokens");
    refused(with({"--tokens-file", (s.dir / "none.safetensors").string()}), "none.safetensors");
    refused(with({"--tokens-file", write("name.safetensors", "hidden", orbitq::io::dtype::f32, {2, H}, 0.0f)}), "no tensor 'hidden_states'");
    refused(with({"--tokens-file", write("width.safetensors", "hidden_states", orbitq::io::dtype::f32, {2, 704}, 0.0f)}), "needs [tokens, 2816]");
    refused(with({"--tokens-file", write("rank.safetensors", "hidden_states", orbitq::io::dtype::f32, {H}, 0.0f)}), "needs [tokens, 2816]");
    refused(with({"--tokens-file", write("int.safetensors", "hidden_states", orbitq::io::dtype::i32, {2, H}, 0.0f)}), "F32, BF16 or F16");
    refused(with({"--tokens-file", write("nan.safetensors", "hidden_states", orbitq::io::dtype::f32, {2, H}, NAN)}), "token 1, element 0 is not finite");
    refused(with({"--tokens-file", write("many.safetensors", "hidden_states", orbitq::io::dtype::f32, {4097, H}, 0.0f)}), "pass --tokens N");
    refused({"--quiet", "--experts", "2", "--synthetic-layers", "1", "analyze", "--tokens-file", good}, "--tokens-file");
}
