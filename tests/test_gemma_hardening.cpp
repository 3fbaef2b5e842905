// orbitq-gemma, in-process, on small synthetic checkpoints: --granularity auto (per-tensor
// choice by orbitq::analyze, the converted checkpoint following it), the root-cause block of
// the first layer failing per-tensor, NaN/Inf weights (exit 1 naming the position, or
// --skip-nonfinite), --force, and --out refused inside the input.
#include <doctest/doctest.h>

#include "gemma_cli_support.hpp"

#include "gemma4.hpp"
#include <orbitq/moe/architecture.hpp>

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace
{
    /// This file's scratch directory.
    struct hardening_scratch : gemma_test::scratch
    {
        hardening_scratch() : gemma_test::scratch("orbitq_test_gemma_hardening") {}
    };
    using gemma_test::cli;
    using gemma_test::cli_result;

    using gemma_test::layer_prefix;

    /// Overwrites element `index` of BF16 tensor `name` of checkpoint `dir` with `bits`, in place
    /// (header parsed independently of orbitq's reader).
    void poke_bf16(const fs::path& dir, const std::string& name, std::size_t index, std::uint16_t bits)
    {
        const json idx = json::parse(std::ifstream(dir / "model.safetensors.index.json"));
        const fs::path shard = dir / idx.at("weight_map").at(name).get<std::string>();
        std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
        std::uint64_t n = 0;
        f.read(reinterpret_cast<char*>(&n), 8);
        std::string h(n, '\0');
        f.read(h.data(), static_cast<std::streamsize>(n));
        const json e = json::parse(h).at(name);
        REQUIRE(e.at("dtype") == "BF16");
        const std::size_t off = 8 + n + e.at("data_offsets")[0].get<std::size_t>() + 2 * index;
        f.seekp(static_cast<std::streamoff>(off));
        f.write(reinterpret_cast<const char*>(&bits), 2);
        REQUIRE(f.good());
    }

    json read_json(const fs::path& p) { return json::parse(std::ifstream(p)); }
}

TEST_CASE("--granularity auto: per layer the cheapest candidate meeting the target on every projection; the output follows it")
{
    hardening_scratch s;
    const fs::path in = s.dir / "in", out = s.dir / "out", report = s.dir / "r.json";
    REQUIRE(cli({"--write-synthetic", in.string(), "--synthetic-layers", "2", "--experts", "2", "--quiet"}).rc == 0);

    // A high target: per-tensor (any width) and int4 cannot reach it; per_channel or finer int8.
    auto r = cli({"--checkpoint", in.string(), "--granularity", "auto", "--target-cos", "0.9999", "--out", out.string(), "--report",
                  report.string(), "--tokens", "3", "--quiet"});
    REQUIRE_MESSAGE(r.rc != 1, std::string(r.err + r.out));
    CHECK(r.out.find("auto granularity (target cos >= 0.999900)") != std::string::npos);
    const json rep = read_json(report);
    REQUIRE(rep["auto"]["tensors"].size() == 4);  // 2 layers x {gate_up, down}
    // One spec per layer: gate, up and down alike (engines load a MoE layer only so).
    CHECK(rep["auto"]["tensors"][0]["chosen"] == rep["auto"]["tensors"][1]["chosen"]);
    CHECK(rep["auto"]["tensors"][2]["chosen"] == rep["auto"]["tensors"][3]["chosen"]);
    for (const auto& t : rep["auto"]["tensors"])
    {
        const std::string chosen = t["chosen"];
        // Layer 1 of the synthetic model has the outliers that make per-tensor fail (layer 0 is
        // mild enough for per-tensor int8).
        if (t["name"].get<std::string>().rfind(layer_prefix + "1.", 0) == 0) CHECK_MESSAGE(chosen.find("per_tensor") == std::string::npos, chosen);
        CHECK_MESSAGE(chosen.find("int8") != std::string::npos, chosen);
        CHECK(!t["reason"].get<std::string>().empty());
        CHECK(r.out.find(t["reason"].get<std::string>()) != std::string::npos);
    }
    CHECK(rep["config"]["granularity"] == "auto");
    // The layer report names each tensor's own granularity, equal to the choice.
    const json& t0 = rep["layers"][1]["tensors"][0];
    CHECK(t0["name"] == layer_prefix + "1.experts.gate_up_proj");
    CHECK(t0["granularity"] != "per_tensor");
    CHECK(t0["cos"].get<double>() >= 0.9999);
    // The written checkpoint's config records the choice(s); its tensors exist with those layouts.
    const json cfg = read_json(out / "config.json");
    CHECK(cfg["quantization_config"]["quant_method"] == "compressed-tensors");
    const json idx = read_json(out / "model.safetensors.index.json");
    CHECK(idx["weight_map"].contains(layer_prefix + "0.experts.1.down_proj.weight_scale"));
    CHECK(!idx["weight_map"].contains(layer_prefix + "0.experts.down_proj"));

    // --scales mse: the searched twins join the candidates; at equal bits per weight the higher
    // SQNR wins, so each layer's choice (other than per_tensor, which has no twin) is searched.
    const fs::path report_mse = s.dir / "r_mse.json";
    auto rm = cli({"--checkpoint", in.string(), "--granularity", "auto", "--bits", "4", "--scheme", "symmetric", "--scales", "mse",
                   "--target-cos", "0.99", "--layers", "1", "--report", report_mse.string(), "--tokens", "2", "--quiet"});
    REQUIRE_MESSAGE(rm.rc != 1, std::string(rm.err + rm.out));
    const json rep_mse = read_json(report_mse);
    REQUIRE(rep_mse["auto"]["tensors"].size() == 2);
    for (const auto& t : rep_mse["auto"]["tensors"])
    {
        const std::string chosen = t["chosen"];
        CHECK_MESSAGE((chosen.find(" mse") != std::string::npos || chosen.find("per_tensor") != std::string::npos), chosen);
    }

    // An impossible target with int4 only: exit status 1, a message naming the tensor; no output.
    const fs::path out2 = s.dir / "out2";
    r = cli({"--checkpoint", in.string(), "--granularity", "auto", "--bits", "4", "--target-sqnr", "80", "--out", out2.string(), "--quiet",
             "--tokens", "2"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("no candidate meets the target") != std::string::npos);
    CHECK(r.err.find("experts.gate_up_proj") != std::string::npos);
    CHECK(r.err.find("on all 2 tensors") != std::string::npos);
    CHECK(!fs::exists(out2));

    // A low target with int4: the choice is an int4 spec (fewest bits per weight first).
    const fs::path out4 = s.dir / "out4";
    r = cli({"--checkpoint", in.string(), "--granularity", "auto", "--target-cos", "0.9", "--report", report.string(), "--quiet",
             "--tokens", "2", "--layers", "0", "--out", out4.string()});
    REQUIRE_MESSAGE(r.rc != 1, r.err);
    const json auto_rep = read_json(report);  // named: a range-for keeps only its last temporary alive
    REQUIRE_FALSE(auto_rep["auto"]["tensors"].empty());
    for (const auto& t : auto_rep["auto"]["tensors"]) CHECK(t["chosen"].get<std::string>().find("int4") != std::string::npos);
    // int4 tensors are packed; layer 1 (not selected) is copied stacked.
    const json idx4 = read_json(out4 / "model.safetensors.index.json");
    CHECK(idx4["weight_map"].contains(layer_prefix + "0.experts.0.gate_proj.weight_packed"));
    CHECK(idx4["weight_map"].contains(layer_prefix + "1.experts.gate_up_proj"));
    const json qc4 = read_json(out4 / "config.json")["quantization_config"];
    REQUIRE(!qc4["config_groups"].empty());
    for (const auto& [k, g] : qc4["config_groups"].items()) CHECK(g["weights"]["num_bits"] == 4);

    // auto without a target, or a target without auto: exit 1.
    CHECK(cli({"--granularity", "auto", "--quiet", "--layers", "0"}).rc == 1);
    CHECK(cli({"--target-cos", "0.99", "--quiet", "--layers", "0"}).rc == 1);
}

TEST_CASE("root cause of the first layer failing per-tensor: rows, weights, condition number in stdout and report")
{
    hardening_scratch s;
    const fs::path report = s.dir / "r.json";
    auto r = cli({"--layers", "13", "--tokens", "3", "--quiet", "--report", report.string()});
    REQUIRE_MESSAGE(r.rc != 1, r.err);
    CHECK(r.out.find("root cause: layer 13") != std::string::npos);
    CHECK(r.out.find("rows losing most bits to the per-tensor scale: expert ") != std::string::npos);
    CHECK(r.out.find("largest weights / row RMS: expert ") != std::string::npos);
    const json rc = read_json(report)["root_cause"];
    REQUIRE(rc.is_object());
    CHECK(rc["layer"] == 13);
    REQUIRE(rc["tensors"].size() == 2);
    for (const auto& t : rc["tensors"])
    {
        CHECK(t["condition_number"].get<double>() > 1.0);
        REQUIRE(t["worst_rows"].size() == 3);
        CHECK(t["worst_rows"][0]["bits_lost"].get<double>() >= t["worst_rows"][1]["bits_lost"].get<double>());
        CHECK(t["worst_rows"][0]["expert"].get<std::size_t>() < 8);
        REQUIRE(t["largest_weights"].size() == 3);
        CHECK(t["largest_weights"][0]["ratio_to_row_rms"].get<double>() >= t["largest_weights"][1]["ratio_to_row_rms"].get<double>());
    }
    // A run where per-tensor passes has no root-cause block.
    r = cli({"--layers", "0", "--tokens", "2", "--quiet", "--report", report.string(), "--gate-layer-cos", "0.5"});
    CHECK(r.out.find("root cause") == std::string::npos);
    CHECK(read_json(report)["root_cause"].is_null());
}

TEST_CASE("NaN/Inf in an expert weight: exit 1 naming tensor and (expert, row, column); --skip-nonfinite copies it")
{
    hardening_scratch s;
    const fs::path in = s.dir / "in", out = s.dir / "out", report = s.dir / "r.json";
    REQUIRE(cli({"--write-synthetic", in.string(), "--synthetic-layers", "2", "--experts", "3", "--quiet"}).rc == 0);
    const orbitq::moe::config c = orbitq::moe::config_from_json(read_json(in / "config.json"), gemma4::default_config());
    // down_proj [E, H, I]: expert 2, row 5, column 7 := NaN (bf16 0x7fc0).
    const std::string down = layer_prefix + "1.experts.down_proj";
    poke_bf16(in, down, (2 * c.hidden + 5) * c.expert_intermediate + 7, 0x7fc0);

    auto r = cli({"--checkpoint", in.string(), "--out", out.string(), "--quiet", "--tokens", "2"});
    CHECK(r.rc == 1);
    CHECK_MESSAGE(r.err.find("'" + down + "'") != std::string::npos, r.err);
    CHECK_MESSAGE(r.err.find("expert 2, row 5, column 7") != std::string::npos, r.err);
    CHECK(r.err.find("--skip-nonfinite") != std::string::npos);
    CHECK(!fs::exists(out));

    r = cli({"--checkpoint", in.string(), "--out", out.string(), "--quiet", "--tokens", "2", "--skip-nonfinite", "--report", report.string()});
    REQUIRE_MESSAGE(r.rc != 1, r.err);
    CHECK(r.out.find("skipped (kept unquantized, --skip-nonfinite): " + down) != std::string::npos);
    const json rep = read_json(report);
    REQUIRE(rep["skipped_nonfinite"].size() == 1);
    CHECK(rep["skipped_nonfinite"][0].get<std::string>().find("expert 2, row 5, column 7") != std::string::npos);
    // The tensor is copied as it was (BF16, stacked), and so is its partner gate_up: engines load
    // a MoE layer only with gate, up and down in one scheme. The other layer is converted.
    const json idx = read_json(out / "model.safetensors.index.json");
    CHECK(idx["weight_map"].contains(down));
    CHECK(idx["weight_map"].contains(layer_prefix + "1.experts.gate_up_proj"));
    CHECK(!idx["weight_map"].contains(layer_prefix + "1.experts.0.down_proj.weight_packed"));
    CHECK(!idx["weight_map"].contains(layer_prefix + "1.experts.0.gate_proj.weight_packed"));
    CHECK(idx["weight_map"].contains(layer_prefix + "0.experts.0.down_proj.weight_packed"));
    const json& gate_up_report = rep["layers"][1]["tensors"][0];
    CHECK(gate_up_report["quantized"] == false);
    CHECK(gate_up_report["skipped"].get<std::string>().find(down) != std::string::npos);
    // The config leaves layer 1's experts to source precision: ignored, not targeted.
    const json qc = read_json(out / "config.json")["quantization_config"];
    bool ignored = false;
    for (const auto& e : qc["ignore"]) ignored = ignored || e.get<std::string>().find("layers\\.(1)\\.(moe\\.)?experts") != std::string::npos;
    CHECK_MESSAGE(ignored, qc["ignore"].dump());

    // An infinity in gate_up is named too.
    poke_bf16(in, layer_prefix + "0.experts.gate_up_proj", 3, 0x7f80);
    r = cli({"--checkpoint", in.string(), "--quiet", "--tokens", "2"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("expert 0, row 0, column 3") != std::string::npos);
}

TEST_CASE("--out: refused when it exists (unless --force, which replaces it) or lies inside the input")
{
    hardening_scratch s;
    const fs::path in = s.dir / "in", out = s.dir / "out";
    REQUIRE(cli({"--write-synthetic", in.string(), "--synthetic-layers", "1", "--experts", "2", "--quiet"}).rc == 0);
    fs::create_directories(out);
    std::ofstream(out / "model-00007-of-00009.safetensors") << "stale";
    auto r = cli({"--checkpoint", in.string(), "--out", out.string(), "--quiet", "--tokens", "2"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("already exists") != std::string::npos);
    CHECK(r.err.find("--force") != std::string::npos);
    CHECK(fs::exists(out / "model-00007-of-00009.safetensors"));

    r = cli({"--checkpoint", in.string(), "--out", out.string(), "--quiet", "--tokens", "2", "--force"});
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    CHECK(!fs::exists(out / "model-00007-of-00009.safetensors"));  // stale shard gone with the old directory
    CHECK(fs::exists(out / "model.safetensors.index.json"));
    CHECK(fs::exists(out / "config.json"));
    for (const auto& e : fs::directory_iterator(s.dir)) CHECK_MESSAGE(e.path().filename().string()[0] != '.', e.path().string());

    // Inside or equal to the input: refused, even with --force; the input is untouched.
    const auto before = fs::file_size(in / "config.json");
    for (const fs::path& bad : {in, in / "sub", in / "." / "x"})
    {
        r = cli({"--checkpoint", in.string(), "--out", bad.string(), "--quiet", "--tokens", "2", "--force"});
        CHECK(r.rc == 1);
        CHECK(r.err.find("inside or equal to the input") != std::string::npos);
    }
    CHECK(fs::file_size(in / "config.json") == before);
    CHECK(!fs::exists(in / "sub"));
}
