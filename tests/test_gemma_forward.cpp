// The MoE FFN forward pass on Gemma 4's table, its pieces, the synthetic generator and the
// validator, on hand-checked values and on a tiny configuration.
#include <doctest/doctest.h>

#include "gemma4.hpp"
#include "gemma4_synthetic.hpp"
#include "orbitq/moe/forward.hpp"
#include "orbitq/moe/validate.hpp"

#include <cmath>
#include <memory>
#include <vector>

using namespace orbitq;
using namespace orbitq::moe;

TEST_CASE("gelu_tanh on hand-computed values")
{
    CHECK(gelu_tanh(0.0f) == 0.0f);
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    CHECK(gelu_tanh(1.0f) == doctest::Approx(0.8411919906).epsilon(1e-6));
    CHECK(gelu_tanh(-1.0f) == doctest::Approx(-0.1588080094).epsilon(1e-6));
    CHECK(gelu_tanh(3.0f) == doctest::Approx(2.9963625).epsilon(1e-6));
}

TEST_CASE("rms_norm uses the weight as-is, not 1 + w")
{
    const std::vector<float> v = {3.0f, -4.0f};  // mean square 12.5
    std::vector<float> out(2);
    rms_norm(v.data(), 2, {2.0f, 0.5f}, 0.0, out.data());
    CHECK(out[0] == doctest::Approx(3.0 / std::sqrt(12.5) * 2.0));
    CHECK(out[1] == doctest::Approx(-4.0 / std::sqrt(12.5) * 0.5));
    rms_norm(v.data(), 2, {}, 1e-6, out.data());
    CHECK(out[0] == doctest::Approx(3.0 / std::sqrt(12.5 + 1e-6)));
}

TEST_CASE("softmax, top-k, renormalisation and per_expert_scale")
{
    std::vector<float> p = {0.0f, std::log(3.0f), std::log(2.0f), std::log(4.0f)};  // 1:3:2:4
    softmax(p);
    CHECK(p[0] == doctest::Approx(0.1));
    CHECK(p[3] == doctest::Approx(0.4));
    const token_route r = top_k_route(p, 2, {1.0f, 1.0f, 1.0f, 0.5f});
    REQUIRE(r.experts.size() == 2);
    CHECK(r.experts[0] == 3);
    CHECK(r.experts[1] == 1);
    CHECK(r.weights[0] == doctest::Approx(4.0 / 7.0 * 0.5));  // renormalised over the chosen, then scaled
    CHECK(r.weights[1] == doctest::Approx(3.0 / 7.0));
    // Ties go to the lower index.
    const token_route t = top_k_route({0.25f, 0.25f, 0.25f, 0.25f}, 2, {1, 1, 1, 1});
    CHECK(t.experts == std::vector<std::size_t>{0, 1});
}

namespace
{
    /// A tiny layer: H = 16, E = 4 (top 2), I = 8, dense 12. Matrix entries are k · 2^-6 with
    /// integer k in [-127, 127] and every row holding a ±127, so INT8 symmetric per-channel
    /// represents them exactly.
    struct tiny_layer
    {
        config c;
        std::vector<float> gate_up, down, dg, du, dd, router;
        layer_weights w;

        /// expert_i, dense_i: the experts' and the dense MLP's intermediate widths.
        explicit tiny_layer(std::size_t expert_i = 8, std::size_t dense_i = 12)
        {
            c = gemma4::default_config();
            c.hidden = 16;
            c.layers = 2;
            c.experts = 4;
            c.top_k = 2;
            c.expert_intermediate = expert_i;
            c.dense_intermediate = dense_i;
            std::uint64_t s = 12345;
            auto fill = [&](std::vector<float>& v, std::size_t rows, std::size_t cols) {
                v.resize(rows * cols);
                for (std::size_t r = 0; r < rows; ++r)
                {
                    for (std::size_t k = 0; k < cols; ++k)
                    {
                        s = s * 6364136223846793005ull + 1442695040888963407ull;
                        const int code = static_cast<int>((s >> 33) % 255) - 127;
                        v[r * cols + k] = static_cast<float>(k == r % cols ? 127 : code) / 64.0f;
                    }
                }
            };
            const std::size_t H = c.hidden, E = c.experts, I = c.expert_intermediate, D = c.dense_intermediate;
            fill(gate_up, E * 2 * I, H);
            fill(down, E * H, I);
            fill(dg, D, H);
            fill(du, D, H);
            fill(dd, H, D);
            fill(router, E, H);
            w.experts = stacked_experts(c, make_view<float>(gate_up.data(), shape_type{E, 2 * I, H}, "gate_up"),
                                        make_view<float>(down.data(), shape_type{E, H, I}, "down"));
            w.dense = {make_view<float>(dg.data(), D, H, "dg"), make_view<float>(du.data(), D, H, "du"),
                       make_view<float>(dd.data(), H, D, "dd")};
            w.router = make_view<float>(router.data(), E, H, "router");
            w.router_scale.assign(H, 1.0f);
            w.per_expert_scale = {1.0f, 0.5f, 2.0f, 1.0f};
            for (norm_weight* n : {&w.expert_input_norm, &w.expert_output_norm, &w.dense_input_norm, &w.dense_output_norm, &w.ffn_output_norm})
            {
                *n = std::vector<float>(H, 1.0f);
            }
            w.layer_scalar = 0.75f;
        }

        std::vector<float> tokens(std::size_t T) const
        {
            std::vector<float> x(T * c.hidden);
            for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i) + 0.1f);
            return x;
        }
    };
}

TEST_CASE("expert-by-expert forward equals a direct dense computation")
{
    tiny_layer t;
    const auto& c = t.c;
    const std::size_t H = c.hidden, I = c.expert_intermediate, D = c.dense_intermediate, T = 3;
    const auto x = t.tokens(T);
    std::vector<float> y(T * H);
    view_operators ops(t.w, 2);
    ffn_forward(c, t.w, ops, x.data(), T, y.data(), nullptr, 2);

    // Direct, token by token, in double.
    auto rms = [&](const float* v, std::vector<double>& o) {
        double ss = 0;
        for (std::size_t i = 0; i < H; ++i) ss += double(v[i]) * v[i];
        const double inv = 1.0 / std::sqrt(ss / H + c.rms_eps);
        o.assign(H, 0);
        for (std::size_t i = 0; i < H; ++i) o[i] = v[i] * inv;
    };
    auto rmsd = [&](std::vector<double> v) {
        double ss = 0;
        for (double a : v) ss += a * a;
        const double inv = 1.0 / std::sqrt(ss / v.size() + c.rms_eps);
        for (double& a : v) a *= inv;
        return v;
    };
    auto gelu = [](double v) { return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); };
    for (std::size_t tk = 0; tk < T; ++tk)
    {
        const float* xt = x.data() + tk * H;
        std::vector<double> h;
        rms(xt, h);
        std::vector<double> a(D), d(H, 0.0);
        for (std::size_t j = 0; j < D; ++j)
        {
            double g = 0, u = 0;
            for (std::size_t i = 0; i < H; ++i)
            {
                g += t.dg[j * H + i] * h[i];
                u += t.du[j * H + i] * h[i];
            }
            a[j] = gelu(g) * u;
        }
        for (std::size_t i = 0; i < H; ++i)
        {
            for (std::size_t j = 0; j < D; ++j) d[i] += t.dd[i * D + j] * a[j];
        }
        const auto b1 = rmsd(d);
        // router
        std::vector<double> logits(c.experts, 0.0);
        for (std::size_t e = 0; e < c.experts; ++e)
        {
            for (std::size_t i = 0; i < H; ++i) logits[e] += t.router[e * H + i] * h[i] / std::sqrt(double(H));
        }
        std::vector<float> p(logits.begin(), logits.end());
        softmax(p);
        const token_route r = top_k_route(p, c.top_k, t.w.per_expert_scale);
        std::vector<double> acc(H, 0.0);
        for (std::size_t k = 0; k < r.experts.size(); ++k)
        {
            const std::size_t e = r.experts[k];
            std::vector<double> act(I);
            for (std::size_t j = 0; j < I; ++j)
            {
                double g = 0, u = 0;
                for (std::size_t i = 0; i < H; ++i)
                {
                    g += t.gate_up[(e * 2 * I + j) * H + i] * h[i];
                    u += t.gate_up[(e * 2 * I + I + j) * H + i] * h[i];
                }
                act[j] = gelu(g) * u;
            }
            for (std::size_t i = 0; i < H; ++i)
            {
                double s = 0;
                for (std::size_t j = 0; j < I; ++j) s += t.down[(e * H + i) * I + j] * act[j];
                acc[i] += r.weights[k] * s;
            }
        }
        auto b2 = rmsd(acc);
        for (std::size_t i = 0; i < H; ++i) b2[i] += b1[i];
        const auto f = rmsd(b2);
        for (std::size_t i = 0; i < H; ++i)
        {
            CHECK(y[tk * H + i] == doctest::Approx((xt[i] + f[i]) * 0.75).epsilon(1e-4));
        }
    }
}

TEST_CASE("quantized forward (gemm on codes) matches the source forward when the weights are exactly representable")
{
    tiny_layer t;
    quant_spec spec;
    spec.granularity = granularity_kind::per_channel;
    auto gu = quantize(std::get<matrix_view<float>>(*t.w.experts[0].stacked), spec);
    auto dn = quantize(std::get<matrix_view<float>>(*t.w.experts[1].stacked), spec);
    const auto m = measure(std::get<matrix_view<float>>(*t.w.experts[0].stacked), gu);
    CHECK(m.max_abs_err == 0.0);
    const std::size_t T = 5, H = t.c.hidden;
    const auto x = t.tokens(T);
    std::vector<float> y0(T * H), y1(T * H);
    view_operators src(t.w, 1);
    // Expert by expert, as the validator does for per-channel.
    std::vector<quantized_tensor> gue(4), dne(4);
    for (std::size_t e = 0; e < 4; ++e)
    {
        const auto& g = std::get<matrix_view<float>>(*t.w.experts[0].stacked);
        const auto& d = std::get<matrix_view<float>>(*t.w.experts[1].stacked);
        gue[e] = quantize(row_block(g, e * 16, 16, "gu"), spec);
        dne[e] = quantize(row_block(d, e * 16, 16, "dn"), spec);
        CHECK(gue[e].codes == orbitq::code_vector(gu.codes.begin() + e * 16 * 16, gu.codes.begin() + (e + 1) * 16 * 16));
    }
    quantized_operators q(
        t.w, [&](std::size_t e) { return expert_slices{{&gue[e], &dne[e]}}; }, {}, 2);
    ffn_forward(t.c, t.w, src, x.data(), T, y0.data(), nullptr, 1);
    ffn_forward(t.c, t.w, q, x.data(), T, y1.data(), nullptr, 2);
    // Same values, summed in a different order by gemm: equal to float rounding.
    for (std::size_t i = 0; i < y0.size(); ++i) CHECK(y1[i] == doctest::Approx(y0[i]).epsilon(1e-5));

    // The validator reports cos 1, full router agreement and passes both gates.
    validate_options o;
    o.tokens = T;
    o.threads = 2;
    const auto rep = validate(t.c, [&](std::size_t l) -> const layer_weights& { t.w.layer = l; return t.w; }, x, o);
    REQUIRE(rep.layers.size() == 2);
    const auto& pc = rep.layers[1].by_spec[1];
    CHECK(pc.hidden_cos_min == doctest::Approx(1.0).epsilon(1e-10));
    CHECK(pc.stack_cos_min == doctest::Approx(1.0).epsilon(1e-10));
    CHECK(pc.router_agreement == 1.0);
    CHECK(pc.tensors[0].total.max_abs_err == 0.0);
    REQUIRE(pc.tensors[0].experts.size() == 4);
    CHECK(rep.passed);
}

TEST_CASE("a coarse per-tensor scale costs accuracy the validator sees, and the gate fails")
{
    tiny_layer t;
    // One outlier 50x the largest weight in expert 2 of gate_up.
    t.gate_up[2 * 16 * 16 + 5] = 127.0f * 50.0f / 64.0f;
    const std::size_t T = 4;
    validate_options o;
    o.tokens = T;
    o.layers = {0};
    o.gated = 0;  // gate per_tensor
    const auto rep = validate(t.c, [&](std::size_t) -> const layer_weights& { return t.w; }, t.tokens(T), o);
    const auto& pt = rep.layers[0].by_spec[0];
    const auto& pc = rep.layers[0].by_spec[1];
    CHECK(pt.tensors[0].total.sqnr_db < pc.tensors[0].total.sqnr_db);
    CHECK(pt.tensors[0].total.bits_lost_max >= std::log2(50.0) - 1e-9);
    CHECK(pc.tensors[0].total.bits_lost_max == 0.0);
    CHECK(pt.hidden_cos_min < pc.hidden_cos_min);
    CHECK(rep.stack[0].predicted_amplification_from_cosine == doctest::Approx(amplification_from_cosine(pt.hidden_cos_min, 1)));
    CHECK_FALSE(rep.stack[0].layer_gate_passed);
    CHECK_FALSE(rep.passed);
}

TEST_CASE("quantize_block_per_tensor equals the rows of the whole per-tensor quantization")
{
    tiny_layer t;
    t.gate_up[3 * 16 * 16 + 7] = 9.0f;  // the stacked amax lies in the last expert
    const auto& g = std::get<matrix_view<float>>(*t.w.experts[0].stacked);
    quant_spec a, b, c;
    a.granularity = b.granularity = c.granularity = granularity_kind::per_tensor;
    b.bits = 4;
    b.scheme = scheme_kind::asymmetric;
    b.scale_type = element_type::bf16;
    b.codes_from_stored_scale = true;
    c.range = symmetric_range::full;
    c.rounding = rounding_kind::half_away_from_zero;
    for (const quant_spec& spec : {a, b, c})
    {
        const auto whole = quantize(g, spec);
        const min_max st = compute_statistics(g, g.cols).tensor;
        for (std::size_t e = 0; e < 4; ++e)
        {
            quantized_tensor q;
            quantize_block_per_tensor(row_block(g, e * 16, 16, "gu"), st, spec, q, 2);
            CHECK(q.scales == whole.scales);
            CHECK(q.zero_points == whole.zero_points);
            const std::size_t rb = whole.row_bytes();
            CHECK(q.codes == orbitq::code_vector(whole.codes.begin() + e * 16 * rb, whole.codes.begin() + (e + 1) * 16 * rb));
        }
    }
    quantized_tensor q;
    CHECK_THROWS_AS(quantize_block_per_tensor(g, min_max{}, quant_spec{}, q, 1), orbitq::error);
}

TEST_CASE("the matrix products do not depend on the thread count")
{
    tiny_layer t;
    const auto x = t.tokens(7);
    std::vector<float> a(7 * 64), b(7 * 64);
    apply(*t.w.experts[0].stacked, x.data(), 7, a.data(), 1);
    apply(*t.w.experts[0].stacked, x.data(), 7, b.data(), 3);
    CHECK(a == b);
}

TEST_CASE("the synthetic generator is deterministic, thread-independent and has its documented law")
{
    gemma4::synthetic_options so;
    so.experts = 2;
    so.layers = 3;
    gemma4::synthetic_model m(so);
    CHECK(m.cfg().top_k == 2);
    const std::string name = names::stacked_experts(m.cfg(), 1, 1);
    const std::size_t n = 2 * 2816 * 704;
    std::vector<bfloat16_t> a(n), b(n);
    m.fill(name, 1, a.data(), n, 1);
    m.fill(name, 1, b.data(), n, 2);
    CHECK(std::equal(a.begin(), a.end(), b.begin(), [](auto p, auto q) { return p.bits == q.bits; }));
    // Bulk RMS near sigma = 1/sqrt(704); the outliers reach K_L sigma (0.75 .. 1.25).
    double ss = 0, amax = 0;
    for (auto v : a)
    {
        ss += double(to_float(v)) * to_float(v);
        amax = std::max(amax, double(std::fabs(to_float(v))));
    }
    const double sigma = 1.0 / std::sqrt(704.0);
    CHECK(std::sqrt(ss / n) == doctest::Approx(sigma).epsilon(0.15));
    CHECK(amax >= 0.74 * m.severity(1) * sigma);
    CHECK(amax <= 1.26 * std::max(m.severity(1), 8.0) * sigma);
    // Severities span [k_min, k_max].
    double lo = 1e9, hi = 0;
    for (std::size_t l = 0; l < 3; ++l)
    {
        lo = std::min(lo, m.severity(l));
        hi = std::max(hi, m.severity(l));
    }
    CHECK(lo == doctest::Approx(so.k_min));
    CHECK(hi == doctest::Approx(so.k_max));
    CHECK_THROWS_AS(m.fill("no.such.tensor", 0, a.data(), 1, 1), orbitq::error);
}

TEST_CASE("NVFP4 activations: hand-computed groups of 16 under a static global scale")
{
    // global 1: the group of max 6 takes the E4M3 scale 1, so codes are the values rounded to
    // E2M1 (ties to even: 0.25 -> 0, 0.75 -> 1, 2.5 -> 2, 5 -> 4); a zero group stays zero
    std::vector<float> x(32, 0.0f);
    const float g0[] = {6.0f, 3.0f, 1.2f, -0.3f, 0.25f, 0.75f, -5.0f, 2.5f};
    std::copy(std::begin(g0), std::end(g0), x.begin());
    quantize_activations(activation_quantization::nvfp4_per_group16, x.data(), 1, 32, 1.0f);
    const float want0[] = {6.0f, 3.0f, 1.0f, -0.5f, 0.0f, 1.0f, -4.0f, 2.0f};
    for (std::size_t i = 0; i < 8; ++i) CHECK(x[i] == want0[i]);
    for (std::size_t i = 8; i < 32; ++i) CHECK(x[i] == 0.0f);

    // max 1.5: scale e4m3(1.5 / 6) = 0.25, so x / 0.25 is coded: 6, 2.8 -> 3, -0.8 -> -1
    std::vector<float> y = {1.5f, 0.7f, -0.2f};
    y.resize(16, 0.0f);
    quantize_activations(activation_quantization::nvfp4_per_group16, y.data(), 1, 16, 1.0f);
    CHECK(y[0] == 1.5f);
    CHECK(y[1] == 0.75f);
    CHECK(y[2] == -0.25f);

    // a group beyond the calibrated range: its scale saturates at 448 and the values clip to
    // 6 / o, o = 1 / (448 / global); a ragged last group (20 = 16 + 4) is its own group
    std::vector<float> z(20, 0.0f);
    z[0] = 6.0f;
    z[1] = 1.0f;
    z[16] = 0.1f;
    const float global = 10000.0f;
    quantize_activations(activation_quantization::nvfp4_per_group16, z.data(), 1, 20, global);
    const float o = 1.0f / (448.0f * (1.0f / global));
    CHECK(z[0] == 6.0f / o);
    CHECK(z[1] == 6.0f / o);
    // its scale: e4m3(10000 · 0.1 / 6 = 166.7) = 160, o = 62.5, 0.1 · o = 6.25 clipped to 6: 0.096
    CHECK(z[16] == 6.0f / (1.0f / (160.0f * (1.0f / global))));
    CHECK(z[16] == doctest::Approx(0.096f).epsilon(1e-6));

    for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    {
        CHECK_THROWS_AS(quantize_activations(activation_quantization::nvfp4_per_group16, x.data(), 1, 32, bad), error);
    }
}

namespace
{
    /// Records every input of every product (after the products, by the inner operators).
    struct input_spy : ffn_operators
    {
        explicit input_spy(const layer_weights& w)
            : src(w, 1)
            , layer(w)
        {
        }
        void dense(std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            for (std::size_t i = 0; i < tokens * cols_of(layer.dense.at(k)); ++i) dense_max[k] = std::max(dense_max[k], std::fabs(x[i]));
            src.dense(k, x, tokens, y);
        }
        void expert(std::size_t e, std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            for (std::size_t i = 0; i < tokens * layer.experts.at(k).cols; ++i) expert_max[k] = std::max(expert_max[k], std::fabs(x[i]));
            src.expert(e, k, x, tokens, y);
        }
        view_operators src;
        const layer_weights& layer;
        mutable std::vector<float> dense_max = std::vector<float>(3, 0.0f), expert_max = std::vector<float>(2, 0.0f);
    };

    /// A conversion sink that records the order of its calls and the scales it is given.
    struct call_log : conversion_sink
    {
        void begin_layer(const layer_weights&, bool, bool, const quant_spec&) override { calls.push_back("begin"); }
        void expert(const layer_weights&, std::size_t, const expert_slices&) override {}
        void end_layer(const layer_weights&, const std::vector<const quantized_tensor*>&) override { calls.push_back("end"); }
        void activation_scales(const layer_weights&, const input_global_scales& g) override
        {
            calls.push_back("scales");
            scales.push_back(g);
        }
        std::vector<std::string> calls;
        std::vector<input_global_scales> scales;
    };
}

namespace
{
    double layer0_cos(const validation_report& r) { return r.layers[0].by_spec[0].hidden_cos_min; }
}

TEST_CASE("NVFP4 activations: calibrated per layer on the original stream, simulated in the gated forward, given to the sink first; activations_for per spec")
{
    tiny_layer t(16, 16);  // NVFP4 groups of 16 divide every input
    const std::size_t T = 6;
    const auto x = t.tokens(T);
    std::vector<float> y0(T * t.c.hidden), y1(T * t.c.hidden);
    const input_spy spy(t.w);
    const input_amax_recorder rec(t.w, spy);
    ffn_forward(t.c, t.w, rec, x.data(), T, y1.data(), nullptr, 1);
    ffn_forward(t.c, t.w, view_operators(t.w, 1), x.data(), T, y0.data(), nullptr, 1);
    CHECK(y0 == y1);  // the recorder only looks
    const input_global_scales g = rec.global_scales("tiny");
    REQUIRE(g.experts.size() == 2);
    REQUIRE(g.dense.size() == 3);
    for (std::size_t k = 0; k < 2; ++k)
    {
        REQUIRE(spy.expert_max[k] > 0.0f);
        CHECK(g.experts[k] == 2688.0f / spy.expert_max[k]);
    }
    for (std::size_t k = 0; k < 3; ++k) CHECK(g.dense[k] == 2688.0f / spy.dense_max[k]);
    CHECK(g.dense[0] == g.dense[1]);  // gate and up read the same input

    quant_spec nv;
    nv.scheme = scheme_kind::nvfp4;
    nv.bits = 4;
    nv.granularity = granularity_kind::per_group;
    nv.group_size = 16;
    validate_options o;
    o.specs = {nv};
    o.gated = 0;
    o.tokens = T;
    o.threads = 1;
    o.include_dense = true;
    const auto load = [&](std::size_t l) -> const layer_weights& {
        t.w.layer = l;
        return t.w;
    };
    const auto weight_only = validate(t.c, load, x, o);
    o.activations = activation_quantization::nvfp4_per_group16;
    call_log log;
    const auto w4a4 = validate(t.c, load, x, o, &log);
    CHECK(log.calls == std::vector<std::string>{"scales", "begin", "end", "scales", "begin", "end"});
    REQUIRE(log.scales.size() == 2);
    CHECK(log.scales[0].experts == g.experts);  // layer 0 sees the tokens the recorder saw
    CHECK(log.scales[0].dense == g.dense);
    // activations_for decides per layer from the spec (here the gated one) in place of activations
    o.activations = activation_quantization::none;
    std::vector<quant_spec> asked;
    o.activations_for = [&](const quant_spec& q) {
        asked.push_back(q);
        return activation_quantization::mxfp4_per_group32;
    };
    const auto per_spec = validate(t.c, load, x, o);
    REQUIRE(asked.size() == 2);
    CHECK(asked[0] == nv);
    CHECK(per_spec.layers[0].by_spec[0].hidden_cos_min < layer0_cos(weight_only));
    // the same weights, the activations quantized too: a different, lower cosine
    const double c16 = weight_only.layers[0].by_spec[0].hidden_cos_min, c4 = w4a4.layers[0].by_spec[0].hidden_cos_min;
    CHECK(c4 < c16);
    CHECK(c4 > 0.9);
}
