// analyze over any safetensors checkpoint: which tensors, the channel rule, equality with
// analyze() on the same data, and the JSON fields.
#include <doctest/doctest.h>

#include <orbitq/io/analyze_checkpoint.hpp>

#include <unistd.h>

#include <filesystem>
#include <random>
#include <vector>

using namespace orbitq;
namespace fs = std::filesystem;

namespace
{
    std::vector<float> gaussian(std::size_t n, unsigned seed)
    {
        std::mt19937 gen(seed);
        std::normal_distribution<float> d(0.0f, 0.02f);
        std::vector<float> v(n);
        for (auto& x : v) x = d(gen);
        v[n / 3] = 0.5f;  // one outlier
        return v;
    }
}

TEST_CASE("every float tensor of rank >= 2 above the threshold is analysed, with the channel rule")
{
    const fs::path dir = fs::temp_directory_path() / ("orbitq_io_analyze_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const auto linear = gaussian(64 * 96, 1);                 // rank 2: 64 rows of 96
    const auto experts = gaussian(4 * 16 * 64, 2);            // rank 3: 4*16 rows of 64 (bf16)
    const auto conv = gaussian(8 * 3 * 4 * 4, 3);             // rank 4: 8 rows of 3*4*4
    const auto norm = gaussian(96, 4);                        // rank 1: skipped
    const auto small = gaussian(4 * 4, 5);                    // below min_elements: skipped
    std::vector<bfloat16_t> experts_bf(experts.size());
    for (std::size_t i = 0; i < experts.size(); ++i) experts_bf[i] = to_bfloat16(experts[i]);
    std::vector<std::int8_t> codes(32, 1);                    // integer: skipped
    {
        io::safetensors_writer w(dir / "model.safetensors",
                                 {{"linear.weight", io::dtype::f32, {64, 96}},
                                  {"moe.experts", io::dtype::bf16, {4, 16, 64}},
                                  {"conv.weight", io::dtype::f32, {8, 3, 4, 4}},
                                  {"norm.weight", io::dtype::f32, {96}},
                                  {"tiny.weight", io::dtype::f32, {4, 4}},
                                  {"codes", io::dtype::i8, {4, 8}}});
        w.write("linear.weight", std::span<const float>(linear));
        w.write("moe.experts", std::span<const bfloat16_t>(experts_bf));
        w.write("conv.weight", std::span<const float>(conv));
        w.write("norm.weight", std::span<const float>(norm));
        w.write("tiny.weight", std::span<const float>(small));
        w.write("codes", std::span<const std::int8_t>(codes));
        w.commit();
    }
    const auto ckpt = io::checkpoint::open(dir);
    io::checkpoint_analysis_options o;
    o.min_elements = 100;
    CHECK(io::analyzable_tensors(ckpt, o.min_elements) == std::vector<std::string>{"conv.weight", "linear.weight", "moe.experts"});

    std::vector<std::string> seen;
    const auto results = io::analyze_checkpoint(ckpt, o, [&](std::size_t i, std::size_t n, const std::string& name) {
        CHECK(i == seen.size());
        CHECK(n == 3);
        seen.push_back(name);
    });
    REQUIRE(results.size() == 3);
    CHECK(results[0].rows == 8);
    CHECK(results[0].cols == 48);
    CHECK(results[1].rows == 64);
    CHECK(results[1].cols == 96);
    CHECK(results[2].rows == 64);
    CHECK(results[2].cols == 64);

    // the same numbers as analyze() on an in-memory view of the same data
    const auto direct = analyze(make_view(linear.data(), 64, 96, "linear.weight"), default_candidates(96));
    REQUIRE(direct.candidates.size() == results[1].candidates.size());
    for (std::size_t k = 0; k < direct.candidates.size(); ++k)
    {
        CHECK(results[1].candidates[k].cosine == direct.candidates[k].cosine);
        CHECK(results[1].candidates[k].bits_per_weight == direct.candidates[k].bits_per_weight);
    }

    const nlohmann::json j = io::to_json(results[2]);
    CHECK(j["name"] == "moe.experts");
    CHECK(j["shape"] == nlohmann::json::array({4, 16, 64}));
    REQUIRE(j["candidates"].size() == results[2].candidates.size());
    for (const char* key : {"granularity", "group_size", "bits", "scheme", "scales", "bits_per_weight", "cos", "sqnr_db", "max_abs_err"})
    {
        CHECK(j["candidates"][0].contains(key));
    }
    CHECK(j["worst_rows"].size() > 0);
    CHECK(j["largest_weights"][0]["ratio_to_row_rms"].get<double>() > 5.0);

    // given candidates that do not fit a row are dropped; none fitting is an error
    io::checkpoint_analysis_options g;
    g.candidates = {quant_spec{.granularity = granularity_kind::per_group, .group_size = 32}};
    CHECK(io::analyze_checkpoint_tensor(ckpt, "linear.weight", g).candidates.size() == 1);
    CHECK_THROWS_AS((void)io::analyze_checkpoint_tensor(ckpt, "conv.weight", g), error);  // 48 % 32 != 0
    CHECK_THROWS_AS((void)io::analyze_checkpoint_tensor(ckpt, "norm.weight"), error);     // rank 1
    CHECK_THROWS_AS((void)io::analyze_checkpoint_tensor(ckpt, "codes"), error);           // integer
    fs::remove_all(dir);
}
