// config.json ingestion: every shipped config resolves as expected, 4.x and 5.x spellings agree, bad input is named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "posenc/error.hpp"
#include "posenc/model_config.hpp"
#include "posenc/rope.hpp"

namespace {

using nlohmann::json;
using posenc::ModelConfig;
using posenc::Pairing;
using posenc::RopeSpec;
using posenc::Scaling;

const std::string configs_dir = POSENC_CONFIGS_DIR;
constexpr std::int64_t limit_2_24 = std::int64_t{1} << 24;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---- expectations for every file in configs/ ---------------------------------------------------

struct ExpectedSpec {
  std::int64_t rotary;
  Pairing pairing;
  double theta;
  Scaling scaling;
  double factor = 1.0;
  std::int64_t original_max = 0;
  posenc::Numerics numerics = posenc::Numerics::hf_compatible;
  std::vector<std::int64_t> mrope_section = {};  ///< M-RoPE pairs per position stream
  bool mrope_interleaved = false;
};

struct ExpectedModel {
  std::string model_type;
  std::int64_t heads;
  std::int64_t kv_heads;
  std::int64_t head_dim;
  std::int64_t max_pos;
  std::map<std::string, ExpectedSpec> rope;
};

const std::map<std::string, ExpectedModel>& shipped() {
  using enum Pairing;
  static const std::map<std::string, ExpectedModel> table = {
      // GLM-4-9B remote code: kv_channels 128, half of it rotates, adjacent pairs, 10000 * rope_ratio 500.
      {"glm-4-9b-chat.json", {"chatglm", 32, 2, 128, 131072, {{"default", {64, interleaved, 5e6, Scaling::none}}}}},
      {"glm-4-9b-chat-hf.json", {"glm", 32, 2, 128, 131072, {{"default", {64, interleaved, 5e6, Scaling::none}}}}},
      {"glm-4-9b-0414.json", {"glm4", 32, 2, 128, 32768, {{"default", {64, interleaved, 1e4, Scaling::none}}}}},
      // GLM-4.1V: M-RoPE [8, 12, 12] over the 64 rotated dims, adjacent pairs.
      {"glm-4.1v-9b.json",
       {"glm4v", 32, 2, 128, 65536,
        {{"default", {64, interleaved, 1e4, Scaling::none, 1.0, 0, posenc::Numerics::hf_compatible, {8, 12, 12}}}}}},
      // ChatGLM-6B: position_encoding_2d, the whole head as two 64-dim half-split RoPEs.
      {"chatglm-6b.json", {"chatglm", 32, 32, 128, 2048, {{"default", {128, half_split_2d, 1e4, Scaling::none}}}}},
      // GLM-4.5: partial 0.5 but rotate_half on the first 64 dims.
      {"glm-4.5.json", {"glm4_moe", 96, 8, 128, 131072, {{"default", {64, half_split, 1e6, Scaling::none}}}}},
      {"llama-3.1-8b.json",
       {"llama", 32, 8, 128, 131072, {{"default", {128, half_split, 5e5, Scaling::llama3, 8.0, 8192}}}}},
      {"qwen3-8b-yarn.json",
       {"qwen3", 32, 8, 128, 40960, {{"default", {128, half_split, 1e6, Scaling::yarn, 4.0, 32768}}}}},
      // Phi-3.5-mini: no factor, so 131072 / 4096; the top-level original_max_position_embeddings.
      {"phi-3.5-mini.json",
       {"phi3", 32, 32, 96, 131072, {{"default", {96, half_split, 1e4, Scaling::longrope, 32.0, 4096}}}}},
      // DeepSeek-V3: the spec is the 64-dim rope part, rope_interleave (default true).
      {"deepseek-v3.json",
       {"deepseek_v3", 128, 128, 64, 163840,
        {{"default", {64, interleaved_to_half, 1e4, Scaling::yarn, 40.0, 4096}}}}},
      {"gpt-neox-20b.json", {"gpt_neox", 64, 64, 96, 2048, {{"default", {24, half_split, 1e4, Scaling::none}}}}},
      {"gpt-oss-20b.json",
       {"gpt_oss", 64, 8, 64, 131072, {{"default", {64, half_split, 1.5e5, Scaling::yarn, 32.0, 4096}}}}},
      {"gpt-j-6b.json", {"gptj", 16, 16, 256, 2048, {{"default", {64, interleaved, 1e4, Scaling::none}}}}},
      {"command-r.json",
       {"cohere", 64, 64, 128, 8192,
        {{"default", {128, interleaved, 8e6, Scaling::none, 1.0, 0, posenc::Numerics::hf_fp32_apply}}}}},
      {"qwen2-vl-7b.json",
       {"qwen2_vl", 28, 4, 128, 32768,
        {{"default", {128, half_split, 1e6, Scaling::none, 1.0, 0, posenc::Numerics::hf_compatible, {16, 24, 24}}}}}},
      // Gemma3 4B: text_config relies on class defaults (8 heads, 4 kv, head_dim 256).
      {"gemma-3-4b.json",
       {"gemma3", 8, 4, 256, 131072,
        {{"full_attention", {256, half_split, 1e6, Scaling::linear, 8.0}},
         {"sliding_attention", {256, half_split, 1e4, Scaling::none}}}}},
  };
  return table;
}

void expect_spec(const std::string& where, const RopeSpec& s, const ExpectedSpec& e, std::int64_t head_dim,
                 std::int64_t max_pos) {
  EXPECT_EQ(s.head_dim, head_dim) << where;
  EXPECT_EQ(s.rotary(), e.rotary) << where;
  EXPECT_EQ(s.rotary_offset, 0) << where;
  EXPECT_EQ(s.pairing, e.pairing) << where << ": pairing " << posenc::to_string(s.pairing);
  EXPECT_EQ(s.theta, e.theta) << where;
  EXPECT_EQ(s.scaling, e.scaling) << where << ": scaling " << posenc::to_string(s.scaling);
  EXPECT_EQ(s.numerics, e.numerics) << where;
  if (e.scaling != Scaling::none) {
    EXPECT_EQ(s.params.factor, e.factor) << where;
  }
  EXPECT_EQ(s.params.original_max_position_embeddings, e.original_max) << where;
  EXPECT_EQ(s.position_limit, std::max(limit_2_24, max_pos)) << where;
  EXPECT_EQ(s.mrope_section, e.mrope_section) << where;
  EXPECT_EQ(s.mrope_interleaved, e.mrope_interleaved) << where;
}

TEST(ModelConfigShipped, EveryConfigResolvesAsExpected) {
  std::set<std::string> seen;
  for (const auto& entry : std::filesystem::directory_iterator(configs_dir)) {
    if (entry.path().extension() != ".json") continue;
    const std::string name = entry.path().filename().string();
    seen.insert(name);
    const auto it = shipped().find(name);
    if (it == shipped().end()) {
      ADD_FAILURE() << "configs/" << name << " has no expectations in test_model_config.cpp";
      continue;
    }
    const ExpectedModel& e = it->second;
    ModelConfig mc;
    ASSERT_NO_THROW(mc = posenc::load_model_config(entry.path().string())) << name;
    EXPECT_EQ(mc.source, entry.path().string());
    EXPECT_EQ(mc.model_type, e.model_type) << name;
    EXPECT_EQ(mc.num_attention_heads, e.heads) << name;
    EXPECT_EQ(mc.num_key_value_heads, e.kv_heads) << name;
    EXPECT_EQ(mc.head_dim, e.head_dim) << name;
    EXPECT_EQ(mc.max_position_embeddings, e.max_pos) << name;
    EXPECT_EQ(mc.rope.size(), e.rope.size()) << name;
    for (const auto& [layer, spec] : e.rope) {
      ASSERT_EQ(mc.rope.count(layer), 1u) << name << " lacks layer type " << layer;
      expect_spec(name + " [" + layer + "]", mc.spec(layer), spec, e.head_dim, e.max_pos);
    }
  }
  for (const auto& [name, e] : shipped()) EXPECT_TRUE(seen.contains(name)) << "configs/" << name << " is missing";
}

TEST(ModelConfigShipped, SchemeDetails) {
  const RopeSpec phi = posenc::load_model_config(configs_dir + "/phi-3.5-mini.json").spec();
  ASSERT_EQ(phi.params.short_factor.size(), 48u);
  ASSERT_EQ(phi.params.long_factor.size(), 48u);
  EXPECT_EQ(phi.params.short_factor[1], 1.0199999809265137);
  EXPECT_EQ(phi.params.long_factor[47], 64.83999633789062);
  EXPECT_NEAR(posenc::compute_frequencies(phi).attention_factor, std::sqrt(1 + std::log(32.0) / std::log(4096.0)),
              1e-15);

  const RopeSpec ds = posenc::load_model_config(configs_dir + "/deepseek-v3.json").spec();
  EXPECT_EQ(ds.params.mscale, 1.0);
  EXPECT_EQ(ds.params.mscale_all_dim, 1.0);
  EXPECT_EQ(ds.params.beta_fast, 32.0);
  EXPECT_EQ(ds.params.beta_slow, 1.0);
  EXPECT_TRUE(ds.params.truncate);

  const RopeSpec oss = posenc::load_model_config(configs_dir + "/gpt-oss-20b.json").spec();
  EXPECT_FALSE(oss.params.truncate) << "gpt-oss sets truncate false";

  const RopeSpec llama = posenc::load_model_config(configs_dir + "/llama-3.1-8b.json").spec();
  EXPECT_EQ(llama.params.low_freq_factor, 1.0);
  EXPECT_EQ(llama.params.high_freq_factor, 4.0);
}

TEST(ModelConfigShipped, DefaultConfigIsTheGlm4File) {
  EXPECT_EQ(std::string(posenc::default_model_config_json()), read_file(configs_dir + "/glm-4-9b-chat.json"))
      << "the embedded default must be configs/glm-4-9b-chat.json verbatim";
  const ModelConfig mc = posenc::parse_model_config(posenc::default_model_config_json(), "<embedded:glm-4-9b-chat>");
  EXPECT_EQ(mc.source, "<embedded:glm-4-9b-chat>");
  EXPECT_EQ(mc.spec().theta, 5e6);
  EXPECT_EQ(mc.spec().rotary(), 64);
}

TEST(ModelConfigShipped, LayerTypedModelsHaveNoDefaultSpec) {
  const ModelConfig gemma = posenc::load_model_config(configs_dir + "/gemma-3-4b.json");
  try {
    (void)gemma.spec();
    FAIL() << "gemma3 has no 'default' spec";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::config);
    const std::string m = e.what();
    EXPECT_NE(m.find("'default'"), std::string::npos) << m;
    EXPECT_NE(m.find("full_attention, sliding_attention"), std::string::npos) << m;
  }
}

// ---- 4.x and 5.x spellings ---------------------------------------------------------------------

void expect_same_spec(const std::string& where, const RopeSpec& a, const RopeSpec& b) {
  EXPECT_EQ(a.head_dim, b.head_dim) << where;
  EXPECT_EQ(a.rotary(), b.rotary()) << where;
  EXPECT_EQ(a.rotary_offset, b.rotary_offset) << where;
  EXPECT_EQ(a.pairing, b.pairing) << where;
  EXPECT_EQ(a.theta, b.theta) << where;
  EXPECT_EQ(a.scaling, b.scaling) << where;
  EXPECT_EQ(a.numerics, b.numerics) << where;
  EXPECT_EQ(a.attention_factor, b.attention_factor) << where;
  EXPECT_EQ(a.position_limit, b.position_limit) << where;
  EXPECT_EQ(a.mrope_section, b.mrope_section) << where;
  EXPECT_EQ(a.mrope_interleaved, b.mrope_interleaved) << where;
  const posenc::ScalingParams& p = a.params;
  const posenc::ScalingParams& q = b.params;
  EXPECT_EQ(p.factor, q.factor) << where;
  EXPECT_EQ(p.original_max_position_embeddings, q.original_max_position_embeddings) << where;
  EXPECT_EQ(p.max_position_embeddings, q.max_position_embeddings) << where;
  EXPECT_EQ(p.beta_fast, q.beta_fast) << where;
  EXPECT_EQ(p.beta_slow, q.beta_slow) << where;
  EXPECT_EQ(p.mscale, q.mscale) << where;
  EXPECT_EQ(p.mscale_all_dim, q.mscale_all_dim) << where;
  EXPECT_EQ(p.truncate, q.truncate) << where;
  EXPECT_EQ(p.low_freq_factor, q.low_freq_factor) << where;
  EXPECT_EQ(p.high_freq_factor, q.high_freq_factor) << where;
  EXPECT_EQ(p.short_factor, q.short_factor) << where;
  EXPECT_EQ(p.long_factor, q.long_factor) << where;
}

/// Rewrites a 4.x config as transformers 5.x saves it: one rope_parameters dict holding rope_type,
/// rope_theta, partial_rotary_factor and (for llama3/yarn/longrope) original_max_position_embeddings.
json to_v5(json cfg) {
  json rp = cfg.contains("rope_scaling") && cfg["rope_scaling"].is_object() ? cfg["rope_scaling"] : json::object();
  cfg.erase("rope_scaling");
  const std::string type = rp.value("rope_type", rp.value("type", std::string("default")));
  rp.erase("type");
  rp["rope_type"] = type;
  for (const char* theta_key : {"rope_theta", "rotary_emb_base"}) {
    if (cfg.contains(theta_key)) {
      rp["rope_theta"] = cfg[theta_key];
      cfg.erase(theta_key);
    }
  }
  for (const char* partial_key : {"partial_rotary_factor", "rotary_pct"}) {
    if (cfg.contains(partial_key)) {
      rp["partial_rotary_factor"] = cfg[partial_key];
      cfg.erase(partial_key);
    }
  }
  if (cfg.contains("original_max_position_embeddings") && (type == "llama3" || type == "yarn" || type == "longrope")) {
    rp["original_max_position_embeddings"] = cfg["original_max_position_embeddings"];
    cfg.erase("original_max_position_embeddings");
  }
  cfg["rope_parameters"] = rp;
  return cfg;
}

TEST(ModelConfigSpellings, TransformersFiveMatchesFour) {
  for (const char* name : {"llama-3.1-8b.json", "qwen3-8b-yarn.json", "phi-3.5-mini.json", "deepseek-v3.json",
                           "gpt-neox-20b.json", "gpt-oss-20b.json", "glm-4-9b-chat-hf.json", "glm-4.5.json",
                           "qwen2-vl-7b.json", "command-r.json"}) {
    const std::string text = read_file(configs_dir + "/" + name);
    const json v5 = to_v5(json::parse(text));
    const ModelConfig a = posenc::parse_model_config(text, name);
    const ModelConfig b = posenc::parse_model_config(v5.dump(), std::string(name) + " (5.x)");
    expect_same_spec(name, a.spec(), b.spec());
    EXPECT_EQ(a.head_dim, b.head_dim) << name;
  }
}

TEST(ModelConfigSpellings, Gemma3KeyedParametersMatchLegacyKeys) {
  const std::string legacy = R"({"model_type": "gemma3_text", "num_attention_heads": 8, "head_dim": 256,
    "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0}})";
  const std::string keyed = R"({"model_type": "gemma3_text", "num_attention_heads": 8, "head_dim": 256,
    "max_position_embeddings": 131072,
    "layer_types": ["sliding_attention", "full_attention"],
    "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}})";
  const ModelConfig a = posenc::parse_model_config(legacy, "legacy");
  const ModelConfig b = posenc::parse_model_config(keyed, "keyed");
  for (const char* layer : {"full_attention", "sliding_attention"})
    expect_same_spec(layer, a.spec(layer), b.spec(layer));
  // Keyed without thetas: the per-layer-type defaults (global 1e6, local 1e4).
  const ModelConfig c = posenc::parse_model_config(R"({"model_type": "gemma3_text",
    "rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}})");
  EXPECT_EQ(c.spec("full_attention").theta, 1e6);
  EXPECT_EQ(c.spec("sliding_attention").theta, 1e4);
}

TEST(ModelConfigSpellings, LegacyAliases) {
  const auto spec_of = [](const std::string& text) { return posenc::parse_model_config(text).spec(); };
  const std::string base = R"("model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, )"
                           R"("max_position_embeddings": 4096, )";
  expect_same_spec("type vs rope_type", spec_of("{" + base + R"("rope_scaling": {"type": "linear", "factor": 4}})"),
                   spec_of("{" + base + R"("rope_scaling": {"rope_type": "linear", "factor": 4.0}})"));
  expect_same_spec("both, agreeing", spec_of("{" + base + R"("rope_scaling": {"type": "dynamic", "rope_type": "dynamic", "factor": 2}})"),
                   spec_of("{" + base + R"("rope_scaling": {"rope_type": "dynamic", "factor": 2}})"));
  // Qwen2-VL "mrope" is the default scheme; Phi-3's pre-release "su" is longrope.
  EXPECT_EQ(spec_of("{" + base + R"("rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}})").scaling,
            Scaling::none);
  const std::string ones = "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, "
                           "1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]";
  EXPECT_EQ(spec_of("{" + base + R"("rope_scaling": {"type": "su", "short_factor": )" + ones +
                    R"(, "long_factor": )" + ones + "}}")
                .scaling,
            Scaling::longrope);
}

// ---- resolution rules --------------------------------------------------------------------------

TEST(ModelConfigRules, DefaultThetaPerModel) {
  const auto theta_of = [](const std::string& type) {
    return posenc::parse_model_config(R"({"model_type": ")" + type +
                                      R"(", "hidden_size": 1024, "num_attention_heads": 8})")
        .spec()
        .theta;
  };
  EXPECT_EQ(theta_of("llama"), 1e4);
  EXPECT_EQ(theta_of("qwen2_vl"), 1e6);
  EXPECT_EQ(theta_of("cohere"), 5e5);
  EXPECT_EQ(theta_of("gpt_oss"), 1.5e5);
  EXPECT_EQ(theta_of("mixtral"), 1e6);
}

TEST(ModelConfigRules, PartialFactorPrecedenceAndGlmDefault) {
  const std::string base = R"("model_type": "llama", "head_dim": 128, "num_attention_heads": 8, )";
  // transformers 5.17: the dict's partial_rotary_factor wins over the top-level one.
  EXPECT_EQ(posenc::parse_model_config("{" + base + R"("partial_rotary_factor": 0.25,
      "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}})")
                .spec()
                .rotary(),
            64);
  EXPECT_EQ(posenc::parse_model_config("{" + base + R"("partial_rotary_factor": 0.25})").spec().rotary(), 32);
  // GLM family defaults to half the head.
  EXPECT_EQ(posenc::parse_model_config(R"({"model_type": "glm4_moe", "head_dim": 128, "num_attention_heads": 8})")
                .spec()
                .rotary(),
            64);
  // Phi-3 style int(head_dim * factor): 96 * 0.75 = 72.
  EXPECT_EQ(posenc::parse_model_config(R"({"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32,
      "partial_rotary_factor": 0.75})")
                .spec()
                .rotary(),
            72);
}

TEST(ModelConfigRules, OriginalMaxPositionsSources) {
  const std::string base = R"("model_type": "llama", "head_dim": 64, "num_attention_heads": 8, )"
                           R"("max_position_embeddings": 65536, )";
  const auto omp = [&](const std::string& rest) {
    return posenc::parse_model_config("{" + base + rest + "}").spec().params.original_max_position_embeddings;
  };
  EXPECT_EQ(omp(R"("rope_scaling": {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 8192})"),
            8192);
  EXPECT_EQ(omp(R"("rope_scaling": {"rope_type": "yarn", "factor": 4})"), 65536) << "falls back to max positions";
  EXPECT_EQ(omp(R"("original_max_position_embeddings": 4096,
                  "rope_scaling": {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 8192})"),
            4096)
      << "a top-level value (Phi-3 style) overrides the dict's";
  // Missing yarn factor: max_position_embeddings / original_max.
  const RopeSpec derived = posenc::parse_model_config(
      "{" + base + R"("rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 4096}})").spec();
  EXPECT_EQ(derived.params.factor, 16.0);
}

TEST(ModelConfigRules, RemoteCodeAndMlaDetails) {
  // ChatGLM without multi-query attention and rope_ratio: all heads are kv heads, theta 10000.
  const ModelConfig chatglm = posenc::parse_model_config(
      R"({"model_type": "chatglm", "hidden_size": 4096, "num_attention_heads": 32, "seq_length": 8192})");
  EXPECT_EQ(chatglm.num_key_value_heads, 32);
  EXPECT_EQ(chatglm.head_dim, 128);
  EXPECT_EQ(chatglm.spec().theta, 1e4);
  EXPECT_EQ(chatglm.spec().rotary(), 64);
  // DeepSeek-V3 with rope_interleave false keeps rotate_half.
  const ModelConfig ds = posenc::parse_model_config(
      R"({"model_type": "deepseek_v3", "num_attention_heads": 16, "qk_rope_head_dim": 64, "rope_interleave": false})");
  EXPECT_EQ(ds.spec().pairing, Pairing::half_split);
  EXPECT_EQ(ds.head_dim, 64);
  // Positions up to 2^24, or further for models that declare more.
  const ModelConfig big = posenc::parse_model_config(
      R"({"model_type": "llama", "head_dim": 64, "num_attention_heads": 8, "max_position_embeddings": 33554432})");
  EXPECT_EQ(big.spec().position_limit, std::int64_t{1} << 25);
  // GPT-J: rotary_dim defaults to 64 (GPTJConfig); an explicit null rotates the whole head.
  const std::string gptj = R"("model_type": "gptj", "n_embd": 4096, "n_head": 16)";
  EXPECT_EQ(posenc::parse_model_config("{" + gptj + "}").spec().rotary(), 64);
  EXPECT_EQ(posenc::parse_model_config("{" + gptj + R"(, "rotary_dim": null})").spec().rotary(), 256);
  // transformers 5.x reads yarn's `truncate` from the outer rope_parameters, so a layer-keyed dict's
  // own truncate is ignored there.
  const ModelConfig keyed = posenc::parse_model_config(
      R"({"model_type": "llama", "head_dim": 64, "num_attention_heads": 8, "max_position_embeddings": 131072,
          "rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 32, "truncate": false}}})");
  EXPECT_TRUE(keyed.spec("full_attention").params.truncate);
  // Qwen2-VL 5.x nests the language model in text_config.
  const ModelConfig vl = posenc::parse_model_config(
      R"({"model_type": "qwen2_vl", "text_config": {"model_type": "qwen2_vl_text", "hidden_size": 3584,
          "num_attention_heads": 28, "num_key_value_heads": 4}})");
  EXPECT_EQ(vl.model_type, "qwen2_vl");
  EXPECT_EQ(vl.spec().theta, 1e6);
  EXPECT_EQ(vl.num_key_value_heads, 4);
}

TEST(ModelConfigRules, MultiAxisLayouts) {
  // Qwen3-VL (5.x text_config): interleaved sections, always (transformers applies them whatever
  // mrope_interleaved says); [24, 20, 20] when the dict gives none.
  const std::string q3 = R"({"model_type": "qwen3_vl", "text_config": {"model_type": "qwen3_vl_text",
      "head_dim": 128, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
      "max_position_embeddings": 262144, "rope_theta": 5000000,
      "rope_scaling": {"rope_type": "default", "mrope_interleaved": true, "mrope_section": [24, 20, 20]}}})";
  const RopeSpec a = posenc::parse_model_config(q3).spec();
  EXPECT_EQ(a.mrope_section, (std::vector<std::int64_t>{24, 20, 20}));
  EXPECT_TRUE(a.mrope_interleaved);
  EXPECT_EQ(a.pairing, Pairing::half_split);
  EXPECT_EQ(a.theta, 5e6);
  EXPECT_EQ(a.position_streams(), 3);
  const RopeSpec d = posenc::parse_model_config(
      R"({"model_type": "qwen3_vl_text", "head_dim": 128, "num_attention_heads": 32})").spec();
  EXPECT_EQ(d.mrope_section, (std::vector<std::int64_t>{24, 20, 20}));
  EXPECT_TRUE(d.mrope_interleaved);
  EXPECT_EQ(d.theta, 5e6);
  // GLM-4.1V / GLM-4.5V: [8, 12, 12] when absent; Glm4v pairs adjacent elements, Glm4vMoe rotate_half.
  const RopeSpec g = posenc::parse_model_config(
      R"({"model_type": "glm4v_text", "hidden_size": 4096, "num_attention_heads": 32, "partial_rotary_factor": 0.5})")
                         .spec();
  EXPECT_EQ(g.mrope_section, (std::vector<std::int64_t>{8, 12, 12}));
  EXPECT_FALSE(g.mrope_interleaved);
  EXPECT_EQ(g.pairing, Pairing::interleaved);
  const RopeSpec gm = posenc::parse_model_config(
      R"({"model_type": "glm4v_moe", "text_config": {"model_type": "glm4v_moe_text", "head_dim": 128,
          "num_attention_heads": 96, "num_key_value_heads": 8}})").spec();
  EXPECT_EQ(gm.mrope_section, (std::vector<std::int64_t>{8, 12, 12}));
  EXPECT_EQ(gm.pairing, Pairing::half_split);
  EXPECT_EQ(gm.rotary(), 64);
  // Qwen2.5-VL reads its sections from rope_parameters (5.x) as from rope_scaling (4.x).
  const RopeSpec q25 = posenc::parse_model_config(
      R"({"model_type": "qwen2_5_vl", "hidden_size": 3584, "num_attention_heads": 28,
          "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24]}})").spec();
  EXPECT_EQ(q25.mrope_section, (std::vector<std::int64_t>{16, 24, 24}));
  EXPECT_EQ(q25.theta, 1e6);
  // ChatGLM-6B: 2-D RoPE, everything else of the remote-code config unchanged.
  const ModelConfig c6 = posenc::load_model_config(configs_dir + "/chatglm-6b.json");
  EXPECT_EQ(c6.spec().pairing, Pairing::half_split_2d);
  EXPECT_EQ(c6.spec().position_streams(), 2);
  EXPECT_EQ(c6.spec().frequency_dim(), 64);
  EXPECT_EQ(posenc::compute_frequencies(c6.spec()).inv_freq.size(), 32u);
  EXPECT_NE(c6.spec().describe().find("fp16"), std::string::npos) << "describe() must say the angles differ";
}

// ---- bad input ---------------------------------------------------------------------------------

struct BadConfig {
  const char* what;
  std::string json_text;
  posenc::ErrorKind kind;
  std::vector<std::string> message_parts;  // the key and the value (and what was expected)
};

TEST(ModelConfigErrors, BadInputNamesKeyAndValue) {
  const std::string llama = R"("model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, )"
                            R"("max_position_embeddings": 4096)";
  using K = posenc::ErrorKind;
  const std::vector<BadConfig> cases = {
      {"unknown rope_type", "{" + llama + R"(, "rope_scaling": {"rope_type": "ntk-by-parts", "factor": 2}})",
       K::config, {"rope_scaling.rope_type", "\"ntk-by-parts\"", "unknown rope_type"}},
      {"unknown key", "{" + llama + R"(, "rope_scaling": {"rope_type": "linear", "factor": 2, "fator": 3}})",
       K::config, {"rope_scaling.fator", "= 3", "unknown key"}},
      {"key of another scheme", "{" + llama + R"(, "rope_parameters": {"rope_type": "linear", "factor": 2, "beta_fast": 32}})",
       K::config, {"rope_parameters.beta_fast", "= 32"}},
      {"type contradicts rope_type", "{" + llama + R"(, "rope_scaling": {"type": "linear", "rope_type": "dynamic", "factor": 2}})",
       K::config, {"rope_scaling.type", "\"linear\"", "\"dynamic\""}},
      {"string theta", "{" + llama + R"(, "rope_theta": "10000"})", K::config,
       {"'rope_theta'", "\"10000\"", "expected a number"}},
      {"string factor", "{" + llama + R"(, "rope_scaling": {"rope_type": "linear", "factor": "4x"}})", K::config,
       {"rope_scaling.factor", "\"4x\"", "expected a number"}},
      {"bool factor", "{" + llama + R"(, "rope_scaling": {"rope_type": "linear", "factor": true}})", K::config,
       {"rope_scaling.factor", "true", "expected a number"}},
      {"fractional max positions", R"({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 4096.5})", K::config, {"max_position_embeddings", "4096.5", "integer"}},
      {"odd rotary dim", R"({"model_type": "llama", "head_dim": 128, "num_attention_heads": 32,
        "partial_rotary_factor": 0.4})", K::config, {"partial_rotary_factor", "0.4", "gives 51 rotary dims"}},
      {"partial factor above one", R"({"model_type": "llama", "head_dim": 128, "num_attention_heads": 32,
        "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.5}})", K::config,
       {"rope_parameters.partial_rotary_factor", "1.5", "(0, 1]"}},
      {"missing llama3 key", "{" + llama + R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8, "high_freq_factor": 4}})",
       K::config, {"rope_scaling.low_freq_factor", "missing"}},
      {"missing heads", R"({"model_type": "llama", "hidden_size": 4096})", K::config,
       {"num_attention_heads", "missing"}},
      {"indivisible hidden", R"({"model_type": "llama", "hidden_size": 4000, "num_attention_heads": 48})",
       K::config, {"hidden_size", "4000", "48"}},
      {"kv heads not dividing", "{" + llama + R"(, "num_key_value_heads": 5})", K::config,
       {"num_key_value_heads", "= 5", "divide"}},
      {"negative head_dim", R"({"model_type": "llama", "head_dim": -64, "num_attention_heads": 8})", K::config,
       {"head_dim", "-64", "> 0"}},
      {"dynamic without max positions", R"({"model_type": "llama", "head_dim": 64, "num_attention_heads": 8,
        "rope_scaling": {"type": "dynamic", "factor": 2}})", K::config, {"max_position_embeddings", "missing"}},
      {"scaling and parameters differ", "{" + llama + R"(, "rope_scaling": {"rope_type": "linear", "factor": 2},
        "rope_parameters": {"rope_type": "linear", "factor": 4}})", K::config, {"rope_parameters", "\"factor\":4"}},
      {"theta spellings differ", R"({"model_type": "gpt_neox", "hidden_size": 1024, "num_attention_heads": 8,
        "rope_theta": 10000, "rotary_emb_base": 20000})", K::config, {"rotary_emb_base", "20000", "rope_theta"}},
      {"longrope factor count", "{" + llama + R"(, "rope_scaling": {"type": "longrope", "short_factor": [1, 1, 1],
        "long_factor": [1, 1, 1]}})", K::config, {"params.short_factor.size() = 3", "rotary_dim / 2 = 64"}},
      {"factor list entry", "{" + llama + R"(, "rope_scaling": {"type": "longrope", "short_factor": [1, "x"],
        "long_factor": [1]}})", K::config, {"rope_scaling.short_factor[1]", "\"x\""}},
      {"negative factor", "{" + llama + R"(, "rope_scaling": {"rope_type": "linear", "factor": -2}})", K::config,
       {"params.factor = -2"}},
      {"layer type not in layer_types", "{" + llama + R"(, "layer_types": ["full_attention"],
        "rope_parameters": {"full_attention": {}, "chunked_attention": {}}})", K::config,
       {"rope_parameters.chunked_attention", "layer_types"}},
      {"keyed mixed with flat", "{" + llama + R"(, "rope_parameters": {"rope_type": "default",
        "full_attention": {"rope_type": "default"}}})", K::config, {"rope_parameters.full_attention", "mixed"}},
      {"group count missing", R"({"model_type": "chatglm", "kv_channels": 128, "num_attention_heads": 32,
        "multi_query_attention": true})", K::config, {"multi_query_group_num", "missing"}},
      {"rope_ratio string", R"({"model_type": "chatglm", "kv_channels": 128, "num_attention_heads": 32,
        "rope_ratio": "500"})", K::config, {"rope_ratio", "\"500\""}},
      {"mla without rope head", R"({"model_type": "deepseek_v3", "num_attention_heads": 16})", K::config,
       {"qk_rope_head_dim", "missing"}},
      {"2D RoPE with rope_ratio", R"({"model_type": "chatglm", "hidden_size": 4096, "num_attention_heads": 32,
        "position_encoding_2d": true, "rope_ratio": 500})", K::config, {"rope_ratio", "500", "10000"}},
      {"2D RoPE head not a multiple of 4", R"({"model_type": "chatglm", "hidden_size": 4160, "num_attention_heads": 32,
        "position_encoding_2d": true})", K::config, {"hidden_size", "head_dim 130"}},
      {"mrope section sum", R"({"model_type": "qwen2_vl", "hidden_size": 3584, "num_attention_heads": 28,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 20]}})", K::config,
       {"mrope_section = [16, 24, 20]", "sums to 60", "rotary_dim / 2 = 64"}},
      {"mrope section entry", R"({"model_type": "qwen2_vl", "hidden_size": 3584, "num_attention_heads": 28,
        "rope_scaling": {"type": "mrope", "mrope_section": [16.5, 24, 24]}})", K::config,
       {"rope_scaling.mrope_section", "entry 0 = 16.5"}},
      {"qwen3_vl contiguous", R"({"model_type": "qwen3_vl_text", "head_dim": 128, "num_attention_heads": 32,
        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": false}})",
       K::config, {"rope_scaling.mrope_interleaved", "false", "always interleaved"}},
      {"interleaved without sections", "{" + llama + R"(, "rope_scaling": {"rope_type": "default",
        "mrope_interleaved": true}})", K::config, {"mrope_interleaved", "needs mrope_section"}},
      {"proportional", "{" + llama + R"(, "rope_parameters": {"rope_type": "proportional"}})", K::unsupported,
       {"rope_parameters.rope_type", "\"proportional\""}},
      {"not JSON", R"({"model_type": "llama",)", K::config, {"not valid JSON"}},
      {"not an object", "[1, 2]", K::config, {"top level", "[1,2]"}},
      {"rope dict not an object", "{" + llama + R"(, "rope_scaling": "linear"})", K::config,
       {"rope_scaling", "\"linear\"", "object"}},
  };
  for (const BadConfig& c : cases) {
    try {
      (void)posenc::parse_model_config(c.json_text, "bad.json");
      ADD_FAILURE() << c.what << ": accepted";
    } catch (const posenc::Error& e) {
      EXPECT_EQ(e.kind(), c.kind) << c.what << ": " << e.what();
      const std::string m = e.what();
      EXPECT_NE(m.find("bad.json"), std::string::npos) << c.what << ": message lacks the source: " << m;
      for (const std::string& part : c.message_parts)
        EXPECT_NE(m.find(part), std::string::npos) << c.what << ": message \"" << m << "\" lacks \"" << part << "\"";
    }
  }
}

/// Parses `text`; expects posenc::Error of `kind` whose message names bad.json and holds every part.
void expect_rejected(const std::string& what, const std::string& text, posenc::ErrorKind kind,
                     const std::vector<std::string>& parts) {
  try {
    (void)posenc::parse_model_config(text, "bad.json");
    ADD_FAILURE() << what << ": accepted";
  } catch (const posenc::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.kind(), kind) << what << ": " << m.substr(0, 300);
    EXPECT_NE(m.find("bad.json"), std::string::npos) << what << ": message lacks the source: " << m.substr(0, 300);
    for (const std::string& part : parts)
      EXPECT_NE(m.find(part), std::string::npos) << what << ": message \"" << m.substr(0, 300) << "\" lacks \""
                                                 << part << "\"";
    EXPECT_LT(m.size(), 600u) << what << ": the message quotes too much";
  }
}

const std::string llama_keys = R"("model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, )"
                               R"("max_position_embeddings": 4096)";

std::string nested(const std::string& open, const std::string& close, std::size_t levels) {
  std::string s;
  s.reserve(levels * (open.size() + close.size()) + 1);
  for (std::size_t i = 0; i < levels; ++i) s += open;
  s += "1";
  for (std::size_t i = 0; i < levels; ++i) s += close;
  return s;
}

// Regression (issue 17, item 1): an 80,000-level config overflowed the stack while a message
// dumped the value (top level, an unknown rope_scaling key, rope_scaling vs rope_parameters).
TEST(ModelConfigLimits, DeepNestingIsAConfigErrorNamingTheLimit) {
  using K = posenc::ErrorKind;
  const std::size_t deep = 80000;
  const std::string objects = nested(R"({"a": )", "}", deep);
  const std::string arrays = nested("[", "]", deep);
  const std::vector<std::string> limit = {"nested deeper than the limit of 64 levels", "max_config_depth"};
  expect_rejected("deep top level", objects, K::config, limit);
  expect_rejected("deep array", arrays, K::config, limit);
  expect_rejected("deep unknown rope key",
                  "{" + llama_keys + R"(, "rope_scaling": {"rope_type": "linear", "factor": 2, "x": )" + objects + "}}",
                  K::config, limit);
  expect_rejected("deep rope_scaling vs rope_parameters",
                  "{" + llama_keys + R"(, "rope_scaling": {"x": )" + arrays + R"(}, "rope_parameters": {"x": )" +
                      arrays + "}}",
                  K::config, limit);
  // The limit itself is accepted: 64 levels in all (the top-level object is the first).
  const std::string at_limit = "{" + llama_keys + R"(, "extra": )" + nested("[", "]", 63) + "}";
  EXPECT_NO_THROW((void)posenc::parse_model_config(at_limit, "ok.json"));
  const std::string over = "{" + llama_keys + R"(, "extra": )" + nested("[", "]", 64) + "}";
  expect_rejected("65 levels", over, K::config, limit);
}

TEST(ModelConfigLimits, SizeLimitAndNumbersTooLargeForADouble) {
  using K = posenc::ErrorKind;
  std::string big = "{" + llama_keys + "}";
  big.append(static_cast<std::size_t>(posenc::max_config_bytes) + 1 - big.size(), ' ');
  expect_rejected("over the size limit", big, K::config, {"16777217 bytes exceeds the limit of 16777216 bytes"});
  // Regression (issue 17, item 3): 1e400 escaped as a JSON-library exception naming no file (exit 1).
  expect_rejected("1e400", "{" + llama_keys + R"(, "rope_theta": 1e400})", K::config, {"not valid JSON", "1e400"});
  expect_rejected("1e400 in an ignored key", "{" + llama_keys + R"(, "unused": [1e400]})", K::config,
                  {"not valid JSON"});
}

// Regression (issue 17, items 1 and 7): messages quoted keys and values whole and raw.
TEST(ModelConfigLimits, MessagesQuoteAShortEscapedExcerpt) {
  using K = posenc::ErrorKind;
  const std::string long_key(1 << 20, 'k');
  expect_rejected("megabyte key",
                  "{" + llama_keys + R"(, "rope_scaling": {"rope_type": "linear", "factor": 2, ")" + long_key + R"(": 1}})",
                  K::config, {"rope_scaling.kkkk", "...", "unknown key"});
  expect_rejected("escape sequences in a key",
                  "{" + llama_keys + R"(, "rope_scaling": {"rope_type": "linear", "factor": 2, "\u001b[2J\nx": 1}})",
                  K::config, {"\\x1b[2J\\nx", "unknown key"});
  std::string long_list = "[1";
  for (int i = 0; i < 100000; ++i) long_list += ", 1";
  expect_rejected("long value", "{" + llama_keys + R"(, "rope_theta": )" + long_list + "]}", K::config,
                  {"'rope_theta' = [1,1,1", "...", "expected a number"});
  // Invalid UTF-8 is a syntax error whose message quotes the byte escaped.
  expect_rejected("invalid UTF-8", "{" + llama_keys + ", \"rope_scaling\": {\"rope_type\": \"\xff\xfe\"}}", K::config,
                  {"not valid JSON", "UTF-8", "\\xff"});
}

// Regression (issue 17, item 7): 2^32 attention heads were accepted and `run` tried to allocate them.
TEST(ModelConfigLimits, HeadCountsAreBounded) {
  using K = posenc::ErrorKind;
  expect_rejected("2^32 heads", R"({"model_type": "llama", "head_dim": 128, "num_attention_heads": 4294967296})",
                  K::config, {"num_attention_heads", "4294967296", "exceeds the limit of 65536 heads"});
  expect_rejected("2^32 kv heads", R"({"model_type": "llama", "head_dim": 128, "num_attention_heads": 32,
      "num_key_value_heads": 4294967296})", K::config, {"num_key_value_heads", "limit of 65536"});
  expect_rejected("chatglm groups", R"({"model_type": "chatglm", "kv_channels": 128, "num_attention_heads": 32,
      "multi_query_attention": true, "multi_query_group_num": 100000})", K::config,
                  {"multi_query_group_num", "100000", "limit of 65536"});
  const ModelConfig at_limit = posenc::parse_model_config(
      R"({"model_type": "llama", "head_dim": 128, "num_attention_heads": 65536, "num_key_value_heads": 65536})");
  EXPECT_EQ(at_limit.num_attention_heads, posenc::max_heads);
}

// Regression (issue 17, item 6): parameters giving non-finite inv_freq or attention factors were
// accepted; "factor": 0 meant "derive it" for yarn/longrope but was an error for linear/dynamic.
TEST(ModelConfigLimits, ParametersGivingNonFiniteResultsAreRejected) {
  using K = posenc::ErrorKind;
  const std::string base = "{" + llama_keys + ", ";
  // LongRoPE lists of the 64 frequencies of head_dim 128, the first short factor given as `first`.
  const auto longrope_lists = [](const std::string& first) {
    std::string short_list = first;
    std::string long_list = "2";
    for (int i = 1; i < 64; ++i) {
      short_list += ", 1";
      long_list += ", 2";
    }
    return R"("short_factor": [)" + short_list + R"(], "long_factor": [)" + long_list + "]";
  };
  struct Case {
    const char* what;
    std::string text;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"tiny theta", base + R"("rope_theta": 1e-300})", {"RopeSpec.theta = 1e-300", "float32"}},
      {"huge theta", base + R"("rope_theta": 1e300})", {"RopeSpec.theta = 1e+300", "float32"}},
      {"tiny linear factor", base + R"("rope_scaling": {"rope_type": "linear", "factor": 1e-300}})",
       {"params.factor = 1e-300", "float32"}},
      {"huge yarn attention factor", base + R"("rope_scaling": {"rope_type": "yarn", "factor": 4,
        "original_max_position_embeddings": 1024, "attention_factor": 1e308}})",
       {"attention_factor = 1e+308", "65504"}},
      {"huge yarn mscale", base + R"("rope_scaling": {"rope_type": "yarn", "factor": 4,
        "original_max_position_embeddings": 1024, "mscale": 1e308, "mscale_all_dim": 1}})",
       {"params.mscale = 1e+308", "attention factor"}},
      {"huge dynamic factor", base + R"("rope_scaling": {"rope_type": "dynamic", "factor": 1e34}})",
       {"scaling dynamic", "params.factor = 1e+34", "seq_len 16777216"}},
      {"yarn betas swapped", base + R"("rope_scaling": {"rope_type": "yarn", "factor": 4,
        "original_max_position_embeddings": 1024, "beta_fast": 1, "beta_slow": 32}})",
       {"params.beta_fast = 1", "> params.beta_slow = 32"}},
      {"yarn betas equal", base + R"("rope_scaling": {"rope_type": "yarn", "factor": 4,
        "original_max_position_embeddings": 1024, "beta_fast": 8, "beta_slow": 8}})",
       {"params.beta_fast = 8", "> params.beta_slow = 8"}},
      {"longrope tiny entry", base + R"("rope_scaling": {"rope_type": "longrope", "original_max_position_embeddings": 1024, )" +
           longrope_lists("1e-300") + "}}",
       {"params.short_factor[0] = 1e-300", "float32"}},
      {"huge original max", base + R"("rope_scaling": {"rope_type": "yarn", "factor": 4,
        "original_max_position_embeddings": 9223372036854775807}})",
       {"params.original_max_position_embeddings = 9223372036854775807", "2^53"}},
  };
  for (const Case& c : cases) expect_rejected(c.what, c.text, K::config, c.parts);
  for (const char* scheme : {"linear", "dynamic", "yarn", "longrope", "llama3"}) {
    std::string dict = std::string(R"("rope_scaling": {"rope_type": ")") + scheme + R"(", "factor": 0)";
    if (std::string(scheme) == "llama3") dict += R"(, "low_freq_factor": 1, "high_freq_factor": 4)";
    if (std::string(scheme) == "longrope") dict += ", " + longrope_lists("1");
    expect_rejected(std::string("factor 0 for ") + scheme, base + dict + "}}", K::config,
                    {"rope_scaling.factor' = 0", "must be > 0", "omit the key"});
  }
  // Absent, the factor is derived for yarn and longrope (4096 / 1024).
  const ModelConfig derived = posenc::parse_model_config(
      base + R"("rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 1024}})");
  EXPECT_EQ(derived.spec().params.factor, 4.0);
}

TEST(ModelConfigErrors, UnreadableFilesAreIoErrors) {
  for (const std::string& path : {configs_dir + "/no-such-model.json", configs_dir}) {
    try {
      (void)posenc::load_model_config(path);
      ADD_FAILURE() << path << ": accepted";
    } catch (const posenc::Error& e) {
      EXPECT_EQ(e.kind(), posenc::ErrorKind::io) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  // Regression (issue 17, item 7): a symlink loop was reported as "no such file".
  const std::filesystem::path loop =
      std::filesystem::temp_directory_path() / ("posenc_config_loop_" + std::to_string(::getpid()) + ".json");
  std::filesystem::remove(loop);
  std::filesystem::create_symlink(loop, loop);
  try {
    (void)posenc::load_model_config(loop.string());
    ADD_FAILURE() << "a symlink loop was accepted";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::io) << e.what();
    EXPECT_NE(std::string(e.what()).find("symbolic links"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("no such file"), std::string::npos) << e.what();
  }
  std::filesystem::remove(loop);

  const ModelConfig mc = posenc::load_model_config(configs_dir + "/llama-3.1-8b.json");
  try {
    (void)mc.spec("sliding_attention");
    ADD_FAILURE() << "unknown layer type accepted";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::config);
    EXPECT_NE(std::string(e.what()).find("'sliding_attention'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("default"), std::string::npos) << e.what();
  }
}

}  // namespace
