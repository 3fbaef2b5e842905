// Tests of orbitq/analyze.hpp: the analysis equals real quantization + measure for every
// candidate, hand-computed values, selection, outlier diagnostics and error paths.
#include <doctest/doctest.h>

#include <orbitq/analyze.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace
{
    using namespace orbitq;

    /// Gaussian weights with a few planted outliers (|w| up to ~40 sigma) and some exact zeros.
    std::vector<float> make_weights(std::size_t rows, std::size_t cols, unsigned seed)
    {
        std::mt19937 gen(seed);
        std::normal_distribution<float> normal(0.0f, 0.02f);
        std::uniform_int_distribution<std::size_t> pos(0, rows * cols - 1);
        std::vector<float> w(rows * cols);
        for (float& v : w) v = normal(gen);
        for (std::size_t k = 0; k < rows / 3 + 1; ++k) w[pos(gen)] = (k % 2 ? -1.0f : 1.0f) * 0.1f * float(1 + k % 8);
        for (std::size_t k = 0; k < cols / 5 + 1; ++k) w[pos(gen)] = 0.0f;
        return w;
    }

    double rel_diff(double a, double b)
    {
        if (a == b) return 0.0;  // includes +inf == +inf
        return std::fabs(a - b) / std::max(std::fabs(a), std::fabs(b));
    }

    /// Checks one candidate result against quantize + measure.
    template <weight_element T>
    void check_against_quantize(const matrix_view<T>& w, const candidate_result& r)
    {
        CAPTURE(r.spec.describe());
        const quantized_tensor q = quantize(w, r.spec);
        const error_metrics m = measure(w, q);
        CHECK(r.bits_per_weight == q.bits_per_weight());
        CHECK(rel_diff(r.cosine, m.cosine) <= 1e-9);
        CHECK(rel_diff(r.relative_error, m.relative_error) <= 1e-9);
        CHECK(rel_diff(r.sqnr_db, m.sqnr_db) <= 1e-9);
        CHECK(rel_diff(r.max_abs_err, m.max_abs_err) <= 1e-9);
        CHECK(r.max_row == m.max_row);
        CHECK(r.max_col == m.max_col);
    }

    template <weight_element T>
    void check_all(const matrix_view<T>& w, const std::vector<quant_spec>& candidates, unsigned threads = 1)
    {
        analyze_options o;
        o.threads = threads;
        const tensor_analysis a = analyze(w, candidates, o);
        REQUIRE(a.candidates.size() == candidates.size());
        for (std::size_t i = 0; i < candidates.size(); ++i)
        {
            CHECK(a.candidates[i].spec == candidates[i]);
            check_against_quantize(w, a.candidates[i]);
        }
    }
}

TEST_CASE("float_format_candidates: fp8 per tensor and per channel always, the fp4 formats where their group divides the row")
{
    const auto c = float_format_candidates(704);
    REQUIRE(c.size() == 4);
    CHECK(c[0].scheme == scheme_kind::fp8_e4m3);
    CHECK(c[0].granularity == granularity_kind::per_tensor);
    CHECK(c[1].granularity == granularity_kind::per_channel);
    CHECK(c[1].scale_type == element_type::f32);  // FP8 scales are written float32
    CHECK((c[2].scheme == scheme_kind::mxfp4 && c[2].group_size == 32 && c[2].bits == 4));
    CHECK((c[3].scheme == scheme_kind::nvfp4 && c[3].group_size == 16 && c[3].bits == 4));
    CHECK(float_format_candidates(48).size() == 3);   // 16 divides 48, 32 does not
    CHECK(float_format_candidates(100).size() == 2);  // neither
    // bits per weight count the scales: E8M0 bytes per 32, E4M3 bytes per 16 and the global scale
    CHECK(bits_per_weight(c[2], 64, 704) == doctest::Approx(4.25));
    CHECK(bits_per_weight(c[3], 64, 704) == doctest::Approx(4.5 + 32.0 / (64 * 704)));
    CHECK(bits_per_weight(c[0], 64, 704) == doctest::Approx(8.0 + 32.0 / (64 * 704)));
    // with the defaults: the integer candidates first, then these
    const auto all = default_candidates(704, true), integers = default_candidates(704);
    REQUIRE(all.size() == integers.size() + c.size());
    for (std::size_t i = 0; i < all.size(); ++i)
    {
        CAPTURE(i);
        CHECK(all[i].describe() == (i < integers.size() ? integers[i] : c[i - integers.size()]).describe());
    }
    CHECK(default_candidates(704, false).size() == integers.size());
}

TEST_CASE("default_candidates: granularities that divide the row, int8 and int4, both schemes")
{
    const auto c704 = default_candidates(704);  // 32 and 64 divide 704, 128 does not
    CHECK(c704.size() == 4 * 4);
    std::size_t groups = 0;
    for (const quant_spec& s : c704)
    {
        if (s.granularity == granularity_kind::per_group)
        {
            CHECK(704 % s.group_size == 0);
            CHECK(s.group_size != 128);
            ++groups;
        }
        CHECK((s.bits == 8 || s.bits == 4));
        CHECK(s.range == symmetric_range::restricted);
    }
    CHECK(groups == 8);
    CHECK(c704[0].granularity == granularity_kind::per_tensor);
    CHECK(c704[0].bits == 8);
    CHECK(c704[0].scheme == scheme_kind::symmetric);
    CHECK(c704[1].scheme == scheme_kind::asymmetric);
    CHECK(default_candidates(2816).size() == 5 * 4);
    CHECK(default_candidates(100).size() == 2 * 4);
    CHECK(default_candidates(32).size() == 2 * 4);  // a group as long as the row is per_channel
}

TEST_CASE("analyze equals quantize + measure for every default candidate (f32, outliers)")
{
    const std::size_t rows = 48, cols = 256;
    const auto data = make_weights(rows, cols, 1);
    const auto w = make_view(data.data(), rows, cols, "w");
    auto cands = default_candidates(cols);
    CHECK(cands.size() == 5 * 4);
    check_all(w, cands);
}

TEST_CASE("analyze with searched (mse) candidates: each equals quantize + measure, in the order given, never below its amax twin")
{
    const std::size_t rows = 48, cols = 256;
    const auto data = make_weights(rows, cols, 3);
    const auto w = make_view(data.data(), rows, cols, "w");
    std::vector<quant_spec> cands;
    for (quant_spec q : default_candidates(cols))
    {
        cands.push_back(q);
        q.scales = scale_search::mse;
        cands.push_back(q);
    }
    check_all(w, cands, 2);
    const tensor_analysis a = analyze(w, cands);
    for (std::size_t i = 0; i + 1 < a.candidates.size(); i += 2)
    {
        CAPTURE(a.candidates[i + 1].spec.describe());
        CHECK(a.candidates[i + 1].bits_per_weight == a.candidates[i].bits_per_weight);
        CHECK(a.candidates[i + 1].sqnr_db >= a.candidates[i].sqnr_db - 1e-9);
    }
    // only searched candidates: still the outliers, worst rows and condition number of the passes
    const std::vector<quant_spec> only_mse(cands.begin() + 1, cands.begin() + 2);
    const tensor_analysis b = analyze(w, only_mse);
    REQUIRE(b.candidates.size() == 1);
    CHECK(b.candidates[0].spec.scales == scale_search::mse);
    CHECK(b.condition_number == a.condition_number);
    CHECK(b.largest_weights.size() == a.largest_weights.size());
    CHECK(b.worst_rows.size() == a.worst_rows.size());
}

TEST_CASE("analyze with float-format candidates: each equals quantize + measure, bits per weight as quantized")
{
    const std::size_t rows = 64, cols = 256;
    const auto data = make_weights(rows, cols, 5);
    const auto w = make_view(data.data(), rows, cols, "w");
    std::vector<quant_spec> cands;
    const auto add = [&](scheme_kind s, granularity_kind g, std::size_t group, std::size_t block_rows) {
        quant_spec q;
        q.scheme = s;
        q.bits = s == scheme_kind::fp8_e4m3 ? 8 : 4;
        q.granularity = g;
        q.group_size = group;
        q.block_rows = block_rows;
        cands.push_back(q);
    };
    add(scheme_kind::fp8_e4m3, granularity_kind::per_channel, 0, 0);
    cands.push_back(default_candidates(cols).front());  // integers in between keep their places
    add(scheme_kind::fp8_e4m3, granularity_kind::per_block, 128, 32);
    add(scheme_kind::mxfp4, granularity_kind::per_group, 32, 0);
    add(scheme_kind::nvfp4, granularity_kind::per_group, 16, 0);
    check_all(w, cands, 2);
    const tensor_analysis a = analyze(w, cands);
    REQUIRE(a.candidates.size() == cands.size());
    for (std::size_t i = 0; i < cands.size(); ++i)
    {
        CAPTURE(cands[i].describe());
        CHECK(a.candidates[i].spec == cands[i]);
        CHECK(a.candidates[i].bits_per_weight == quantize(w, cands[i]).bits_per_weight());
    }
    CHECK(a.candidates[3].bits_per_weight == 4.25);
    // only float candidates: the diagnostics still come from the passes
    const tensor_analysis b = analyze(w, std::vector<quant_spec>{cands[3]});
    CHECK(b.condition_number == a.condition_number);
    CHECK(b.worst_rows.size() == a.worst_rows.size());
}

TEST_CASE("analyze equals quantize + measure on bf16 and f16 input")
{
    const std::size_t rows = 33, cols = 192;  // 32 and 64 divide 192, 128 does not
    const auto data = make_weights(rows, cols, 2);
    std::vector<bfloat16_t> b(data.size());
    std::vector<float16_t> h(data.size());
    for (std::size_t i = 0; i < data.size(); ++i)
    {
        b[i] = to_bfloat16(data[i]);
        h[i] = to_float16(data[i]);
    }
    const auto cands = default_candidates(cols);
    SUBCASE("bf16") { check_all(make_view(b.data(), rows, cols, "wb"), cands); }
    SUBCASE("f16") { check_all(make_view(h.data(), rows, cols, "wh"), cands); }
}

TEST_CASE("analyze equals quantize + measure on an odd shape with ragged groups and SIMD tails")
{
    const std::size_t rows = 37, cols = 101;
    const auto data = make_weights(rows, cols, 3);
    const auto w = make_view(data.data(), rows, cols, "odd");
    auto cands = default_candidates(cols);
    for (std::size_t g : {16u, 32u, 48u})
    {
        for (int bits : {8, 4})
        {
            quant_spec s;
            s.granularity = granularity_kind::per_group;
            s.group_size = g;
            s.ragged_groups = true;
            s.bits = bits;
            s.scheme = bits == 8 ? scheme_kind::symmetric : scheme_kind::asymmetric;
            cands.push_back(s);
        }
    }
    check_all(w, cands);
}

TEST_CASE("analyze honours every quant_spec option")
{
    const std::size_t rows = 20, cols = 96;
    const auto data = make_weights(rows, cols, 4);
    const auto w = make_view(data.data(), rows, cols, "opts");
    std::vector<quant_spec> cands;
    for (granularity_kind g : {granularity_kind::per_tensor, granularity_kind::per_channel, granularity_kind::per_group})
    {
        quant_spec s;
        s.granularity = g;
        s.group_size = g == granularity_kind::per_group ? 32 : 0;
        s.range = symmetric_range::full;
        cands.push_back(s);
        s.range = symmetric_range::restricted;
        s.rounding = rounding_kind::half_away_from_zero;
        cands.push_back(s);
        s.mode = scale_application::divide;
        s.bits = 4;
        cands.push_back(s);
        s.mode = scale_application::multiply_inverse;
        s.scale_type = element_type::f16;
        cands.push_back(s);
        s.codes_from_stored_scale = true;
        s.scale_type = element_type::bf16;
        s.scheme = scheme_kind::asymmetric;
        cands.push_back(s);
    }
    check_all(w, cands);
}

TEST_CASE("analyze: results do not depend on the thread count or block size")
{
    const std::size_t rows = 203, cols = 128;
    const auto data = make_weights(rows, cols, 5);
    const auto w = make_view(data.data(), rows, cols, "threads");
    const auto cands = default_candidates(cols);
    analyze_options o1;
    o1.block_rows = 16;
    const tensor_analysis a = analyze(w, cands, o1);
    for (unsigned t : {2u, 3u})
    {
        analyze_options o;
        o.threads = t;
        o.block_rows = 16;
        const tensor_analysis b = analyze(w, cands, o);
        for (std::size_t i = 0; i < cands.size(); ++i)
        {
            CHECK(a.candidates[i].cosine == b.candidates[i].cosine);
            CHECK(a.candidates[i].sqnr_db == b.candidates[i].sqnr_db);
            CHECK(a.candidates[i].max_abs_err == b.candidates[i].max_abs_err);
            CHECK(a.candidates[i].max_row == b.candidates[i].max_row);
            CHECK(a.candidates[i].max_col == b.candidates[i].max_col);
        }
        REQUIRE(a.largest_weights.size() == b.largest_weights.size());
        for (std::size_t i = 0; i < a.largest_weights.size(); ++i)
        {
            CHECK(a.largest_weights[i].row == b.largest_weights[i].row);
            CHECK(a.largest_weights[i].col == b.largest_weights[i].col);
        }
        CHECK(a.condition_number == b.condition_number);
    }
    // A different block size only regroups double sums.
    const tensor_analysis c = analyze(w, cands);
    for (std::size_t i = 0; i < cands.size(); ++i)
    {
        CHECK(rel_diff(a.candidates[i].cosine, c.candidates[i].cosine) <= 1e-12);
        CHECK(a.candidates[i].max_row == c.candidates[i].max_row);
    }
    check_all(w, cands, 2);
}

TEST_CASE("analyze: hand-computed 2 x 4 case")
{
    // Row 0: amax 127, so the int8 scale is exactly 1 (inverse 1): codes 127, -64, 2, 0 (2.25 rounds
    // to 2; 0.5 rounds half to even to 0). Row 1: amax 31.75, per-channel scale 0.25 (inverse 4):
    // codes -127, 32, 4, 1, reconstructed exactly; under the per-tensor scale 1 it loses
    // log2(127 / 31.75) = 2 bits: codes -32, 8, 1, 0.
    const std::vector<float> data{127.0f, -64.0f, 2.25f, 0.5f, -31.75f, 8.0f, 1.0f, 0.25f};
    const auto w = make_view(data.data(), 2, 4, "hand");
    quant_spec tensor;
    tensor.granularity = granularity_kind::per_tensor;
    quant_spec channel;
    channel.granularity = granularity_kind::per_channel;
    const tensor_analysis a = analyze(w, {tensor, channel});

    const double ref = 127.0 * 127 + 64 * 64 + 2.25 * 2.25 + 0.25 + 31.75 * 31.75 + 64 + 1 + 0.0625;  // 21303.4375
    CHECK(ref == 21303.4375);
    {
        const candidate_result& t = a.candidates[0];
        const double rec = 127.0 * 127 + 64 * 64 + 4 + 32 * 32 + 64 + 1;    // 21318
        const double dot = 127.0 * 127 + 64 * 64 + 4.5 + 31.75 * 32 + 64 + 1;  // 21310.5
        CHECK(t.cosine == doctest::Approx(dot / std::sqrt(ref * rec)).epsilon(1e-15));
        CHECK(t.relative_error == doctest::Approx(std::sqrt(0.4375 / ref)).epsilon(1e-15));
        CHECK(t.sqnr_db == doctest::Approx(-20.0 * std::log10(std::sqrt(0.4375 / ref))).epsilon(1e-14));
        CHECK(t.max_abs_err == 0.5);
        CHECK(t.max_row == 0);
        CHECK(t.max_col == 3);
        CHECK(t.bits_per_weight == 8.0 + 32.0 / 8.0);
    }
    {
        const candidate_result& c = a.candidates[1];
        const double rec = 127.0 * 127 + 64 * 64 + 4 + 31.75 * 31.75 + 64 + 1 + 0.0625;
        const double dot = 127.0 * 127 + 64 * 64 + 4.5 + 31.75 * 31.75 + 64 + 1 + 0.0625;
        CHECK(c.cosine == doctest::Approx(dot / std::sqrt(ref * rec)).epsilon(1e-15));
        CHECK(c.relative_error == doctest::Approx(std::sqrt(0.3125 / ref)).epsilon(1e-15));
        CHECK(c.max_abs_err == 0.5);
        CHECK(c.bits_per_weight == 8.0 + 2 * 32.0 / 8.0);
    }
    CHECK(a.condition_number == doctest::Approx(127.0 / std::sqrt(ref / 8.0)).epsilon(1e-15));
    REQUIRE(a.worst_rows.size() == 2);
    CHECK(a.worst_rows[0].row == 1);
    CHECK(a.worst_rows[0].bits_lost == 2.0);
    CHECK(a.worst_rows[0].row_amax == 31.75f);
    CHECK(a.worst_rows[1].row == 0);
    CHECK(a.worst_rows[1].bits_lost == 0.0);
    // Largest weight relative to its row RMS: row 0 RMS = sqrt(20230.3125 / 4).
    REQUIRE(!a.largest_weights.empty());
    const double rms1 = std::sqrt((31.75 * 31.75 + 64 + 1 + 0.0625) / 4.0);
    CHECK(a.largest_weights[0].row == 1);
    CHECK(a.largest_weights[0].col == 0);
    CHECK(a.largest_weights[0].value == -31.75f);
    CHECK(a.largest_weights[0].ratio_to_row_rms == doctest::Approx(31.75 / rms1).epsilon(1e-15));
    CHECK(a.largest_weights.size() == 8);  // top 10 of 8 weights: all of them, sorted
    for (std::size_t i = 1; i < a.largest_weights.size(); ++i)
    {
        CHECK(a.largest_weights[i - 1].ratio_to_row_rms >= a.largest_weights[i].ratio_to_row_rms);
    }
}

TEST_CASE("analyze equals quantize + measure when almost every weight rounds to zero")
{
    // One weight 10^4 times the others: under per-tensor int4 every other weight's code is 0, so
    // Σwŵ is small next to Σw² and Σ(w − ŵ)² (the derived dot product is then least accurate).
    for (float big : {1e2f, 1e4f})
    {
        CAPTURE(big);
        const std::size_t rows = 24, cols = 64;
        auto data = make_weights(rows, cols, 9);
        data[5 * cols + 3] = big;
        const auto w = make_view(data.data(), rows, cols, "degenerate");
        check_all(w, default_candidates(cols));
    }
}

TEST_CASE("analyze equals quantize + measure on a strided sub-matrix view")
{
    const std::size_t rows = 20, stride = 100, cols = 64;
    const auto data = make_weights(rows, stride, 10);
    matrix_view<float> w{data.data() + 7, rows, cols, stride, {rows, cols}, "strided"};
    check_all(w, default_candidates(cols));
}

TEST_CASE("analyze: an all-zero tensor reconstructs exactly")
{
    const std::vector<float> data(64, 0.0f);
    const auto w = make_view(data.data(), 4, 16, "zeros");
    const tensor_analysis a = analyze(w, default_candidates(16));
    for (const candidate_result& c : a.candidates)
    {
        CHECK(c.cosine == 1.0);
        CHECK(c.relative_error == 0.0);
        CHECK(c.sqnr_db == std::numeric_limits<double>::infinity());
        CHECK(c.max_abs_err == 0.0);
    }
    CHECK(a.condition_number == 0.0);
    CHECK(a.largest_weights.empty());
    check_all(w, default_candidates(16));
}

TEST_CASE("analyze: planted outlier row and weight are found")
{
    const std::size_t rows = 64, cols = 128;
    std::mt19937 gen(7);
    std::normal_distribution<float> normal(0.0f, 0.01f);
    std::vector<float> data(rows * cols);
    for (float& v : data) v = normal(gen);
    data[41 * cols + 17] = 2.0f;     // the outlier: dominates the per-tensor scale
    for (std::size_t c = 0; c < cols; ++c) data[9 * cols + c] *= 1e-3f;  // a quiet row: loses the most bits
    const auto w = make_view(data.data(), rows, cols, "planted");
    analyze_options o;
    o.top_rows = 3;
    o.top_weights = 4;
    const tensor_analysis a = analyze(w, default_candidates(cols), o);
    REQUIRE(a.worst_rows.size() == 3);
    CHECK(a.worst_rows[0].row == 9);
    const float amax9 = [&] {
        float m = 0.0f;
        for (std::size_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(data[9 * cols + c]));
        return m;
    }();
    CHECK(a.worst_rows[0].bits_lost == doctest::Approx(std::log2(2.0 / amax9)));
    CHECK(a.worst_rows[1].bits_lost >= a.worst_rows[2].bits_lost);
    // Row 41 holds the tensor maximum: it loses nothing.
    for (const row_loss& r : a.worst_rows) CHECK(r.row != 41);
    REQUIRE(a.largest_weights.size() == 4);
    CHECK(a.largest_weights[0].row == 41);
    CHECK(a.largest_weights[0].col == 17);
    CHECK(a.largest_weights[0].value == 2.0f);
    CHECK(a.largest_weights[0].ratio_to_row_rms > 10.0);
    CHECK(a.largest_weights[1].ratio_to_row_rms < 5.0);
    CHECK(a.condition_number > 50.0);
    // Per-tensor int8 is the worst int8 candidate; finer orbits are better.
    CHECK(a.candidates[0].spec.granularity == granularity_kind::per_tensor);
    CHECK(a.candidates[0].sqnr_db < a.candidates[4].sqnr_db);  // per_channel int8 symmetric
}

TEST_CASE("select_candidate: fewest bits meeting the target, ties to higher SQNR, none when impossible")
{
    tensor_analysis a;
    a.name = "t";
    auto add = [&](granularity_kind g, std::size_t group, int bits, scheme_kind s, double bpw, double cos, double sqnr) {
        candidate_result r;
        r.spec.granularity = g;
        r.spec.group_size = group;
        r.spec.bits = bits;
        r.spec.scheme = s;
        r.bits_per_weight = bpw;
        r.cosine = cos;
        r.sqnr_db = sqnr;
        a.candidates.push_back(r);
    };
    add(granularity_kind::per_tensor, 0, 8, scheme_kind::symmetric, 8.0001, 0.96, 11.0);       // 0
    add(granularity_kind::per_channel, 0, 8, scheme_kind::symmetric, 8.05, 0.9995, 30.0);      // 1
    add(granularity_kind::per_channel, 0, 8, scheme_kind::asymmetric, 8.06, 0.9996, 31.0);     // 2
    add(granularity_kind::per_group, 32, 4, scheme_kind::symmetric, 5.0, 0.995, 20.0);         // 3
    add(granularity_kind::per_group, 32, 4, scheme_kind::asymmetric, 5.0, 0.996, 21.0);        // 4 (tie in bits, better SQNR)
    add(granularity_kind::per_group, 32, 8, scheme_kind::symmetric, 9.0, 0.99999, 50.0);       // 5

    auto s = select_candidate(a, 0.99, std::nullopt);
    REQUIRE(s.index);
    CHECK(*s.index == 4);
    CHECK(s.reason.find("per_group:32 int4 asymmetric") != std::string::npos);

    s = select_candidate(a, 0.999, std::nullopt);
    REQUIRE(s.index);
    CHECK(*s.index == 1);
    CHECK(s.reason.find("misses") != std::string::npos);  // names the cheaper ones that fail

    s = select_candidate(a, std::nullopt, 40.0);
    REQUIRE(s.index);
    CHECK(*s.index == 5);

    s = select_candidate(a, 0.9995, 30.5);  // both must hold
    REQUIRE(s.index);
    CHECK(*s.index == 2);

    s = select_candidate(a, 0.999999, std::nullopt);
    CHECK(!s.index);
    CHECK(s.reason.find("no candidate") != std::string::npos);
    CHECK(s.reason.find("per_group:32 int8 symmetric") != std::string::npos);  // the closest

    CHECK_THROWS_AS(select_candidate(a, std::nullopt, std::nullopt), orbitq::error);
}

TEST_CASE("select_candidate on a real analysis picks a candidate that meets the target")
{
    const std::size_t rows = 32, cols = 128;
    const auto data = make_weights(rows, cols, 8);
    const auto w = make_view(data.data(), rows, cols, "real");
    const tensor_analysis a = analyze(w, default_candidates(cols));
    const selection s = select_candidate(a, 0.999, std::nullopt);
    REQUIRE(s.index);
    const candidate_result& c = a.candidates[*s.index];
    CHECK(c.cosine >= 0.999);
    for (const candidate_result& o : a.candidates)
    {
        if (o.cosine >= 0.999) CHECK(o.bits_per_weight >= c.bits_per_weight);
    }
}

TEST_CASE("analyze: error paths")
{
    std::vector<float> data(4 * 64, 0.5f);
    const auto w = make_view(data.data(), 4, 64, "err");
    CHECK_THROWS_AS(analyze(w, std::vector<quant_spec>{}), orbitq::error);

    quant_spec g48;
    g48.granularity = granularity_kind::per_group;
    g48.group_size = 48;  // does not divide 64
    try
    {
        (void)analyze(w, {g48});
        FAIL("a group size that does not divide the row must be rejected");
    }
    catch (const orbitq::error& e)
    {
        CHECK(e.kind() == error_kind::bad_group_size);
    }
    g48.ragged_groups = true;
    CHECK_NOTHROW((void)analyze(w, {g48}));

    quant_spec g0;
    g0.granularity = granularity_kind::per_group;
    CHECK_THROWS_AS(analyze(w, {g0}), orbitq::error);

    quant_spec bad_bits;
    bad_bits.bits = 5;
    CHECK_THROWS_AS(analyze(w, {bad_bits}), orbitq::error);

    data[2 * 64 + 7] = std::numeric_limits<float>::quiet_NaN();
    try
    {
        (void)analyze(w, default_candidates(64));
        FAIL("NaN must be rejected");
    }
    catch (const orbitq::non_finite_error& e)
    {
        CHECK(e.row() == 2);
        CHECK(e.col() == 7);
    }
}
