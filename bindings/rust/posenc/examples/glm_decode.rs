//! The GLM position handler of the Rust/HIP engine posenc replaces, rebuilt on posenc: position ids
//! for a batch of sequences, attention masks, RoPE on Q and K for a prefill, then decode steps.
//!
//! The original handler (`GlmPositionHandler`) took a `RopeConfig { head_dim, max_seq_len, base }`,
//! generated `0..seq_len` position ids repeated per batch row (`generate_position_ids`), built a
//! dense `[seq_len, seq_len]` mask per pattern (`get_attention_mask`) and rotated Q and K through a
//! cos/sin table it gathered and uploaded on every call (`apply_position_embeddings`); its decode
//! path restarted positions at 0 and its theta was always 10000. This handler keeps that public
//! shape but takes every id and mask from posenc's own builders: the model's real config
//! (GLM-4-9B-chat: interleaved pairs over the first 64 of 128 dims, theta 10000 * rope_ratio 500),
//! GLM-4's tokenizer padding for a batch of prompts of different lengths, Hugging Face's decode
//! ids from the growing attention mask, causal masks that see padding and the KV offset, and a
//! position tracker for continuous batching (prefill chunks and decode tokens of many sequences in
//! one call). Q has 32 heads and K 2 (GQA); both are rotated in one call.
//!
//! `cargo run --example glm_decode` prints each step; tests/example.rs runs the same code and
//! checks it.

use posenc::glm::{self, AttentionPattern, EmptyRows, GlmPositions, Mask, MaskGeometry};
use posenc::{
    Bf16, Config, CpuEngine, Element, Pairing, PositionIds, PositionTracker, Result, RopeArgs, SequenceState, Spec,
    StepEntry, TensorMut,
};

/// One per model: the spec, the engine built from it, and the per-sequence positions.
pub struct GlmPositionHandler {
    spec: Spec,
    engine: CpuEngine,
    tracker: PositionTracker,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
}

impl GlmPositionHandler {
    pub fn new(config: &Config) -> Result<GlmPositionHandler> {
        let info = config.info()?;
        let spec = config.spec(None)?;
        let spec_info = spec.info()?;
        Ok(GlmPositionHandler {
            engine: CpuEngine::new(&spec)?,
            tracker: PositionTracker::new(spec_info.position_streams, spec_info.position_limit)?,
            spec,
            heads: info.num_attention_heads,
            kv_heads: info.num_key_value_heads,
            head_dim: info.head_dim,
        })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// `generate_position_ids` for a padded batch: prompts of `lengths` tokens, left-padded to the
    /// longest as GLM-4's tokenizer pads them (real tokens 0 .. n-1, padding 0, with its validity).
    pub fn generate_position_ids(&self, lengths: &[i64]) -> Result<GlmPositions> {
        glm::left_padded_arange(lengths, 0)
    }

    /// The decode ids of a padded batch: each row's next position after its real tokens
    /// (`attention_mask` is `[batch, length]`, 1 = real token).
    pub fn decode_position_ids(&self, attention_mask: &[u8], batch: i64, length: i64) -> Result<GlmPositions> {
        glm::next_positions_from_attention_mask(attention_mask, batch, length, 1)
    }

    /// `get_attention_mask`: `pattern` for `q_len` queries (the last of `k_len` key slots) of each
    /// row, with the batch's padding (`valid`, `[batch, k_len]`) masked.
    pub fn get_attention_mask(&self, pattern: AttentionPattern<'_>, q_len: i64, valid: &[u8], batch: i64) -> Result<Mask> {
        let k_len = valid.len() as i64 / batch;
        let geometry = MaskGeometry { batch, q_len, k_len, valid: Some(valid), empty_rows: EmptyRows::Masked };
        Mask::new(&[pattern], &geometry)
    }

    pub fn add_sequence(&mut self, seq_id: i64) -> Result<()> {
        self.tracker.add_sequence(seq_id, SequenceState::default())
    }

    pub fn finish_sequence(&mut self, seq_id: i64) -> Result<()> {
        self.tracker.remove_sequence(seq_id)
    }

    /// Continuous batching: each entry's new tokens continue its sequence (a prefill starts at 0, a
    /// decode token sits at the sequence's length), flattened in entry order.
    pub fn step_position_ids(&mut self, entries: &[StepEntry]) -> Result<PositionIds> {
        self.tracker.step(entries)
    }

    /// RoPE in place on Q `[tokens, heads, head_dim]` and K `[tokens, kv_heads, head_dim]`.
    pub fn apply_position_embeddings<T: Element>(&self, q: &mut [T], k: &mut [T], ids: &PositionIds) -> Result<()> {
        let tokens = ids.tokens;
        let q_view = TensorMut::new(q, tokens, self.heads, self.head_dim)?;
        let k_view = TensorMut::new(k, tokens, self.kv_heads, self.head_dim)?;
        self.engine.apply(&mut RopeArgs::new(q_view, ids.positions()).k(k_view))
    }
}

/// One step of the demonstration, as checked by tests/example.rs.
#[derive(Debug)]
pub struct StepReport {
    pub name: &'static str,
    pub positions: Vec<i64>,
    /// Padded batch steps: the (query, key) pairs the step's mask lets attend.
    pub visible: Option<usize>,
    /// Largest error against a float64 rotation, in bfloat16 ulps at each pair's magnitude.
    pub max_ulps: f64,
}

/// Deterministic inputs in [-1, 1) (xorshift64).
struct Random(u64);
impl Random {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    }
    fn bf16(&mut self, n: i64) -> Vec<Bf16> {
        (0..n).map(|_| Bf16::from_f32(self.next())).collect()
    }
}

/// Worst error of `out` (bf16) against a float64 rotation of `input` (bf16) by the spec's
/// frequencies, in bf16 ulps at the pair's magnitude.
fn max_error_ulps(spec: &Spec, input: &[Bf16], out: &[Bf16], heads: i64, positions: &[i64]) -> Result<f64> {
    let info = spec.info()?;
    let inv_freq = spec.inv_freq()?;
    let (head_dim, half) = (info.head_dim as usize, (info.rotary_dim / 2) as usize);
    let offset = info.rotary_offset as usize;
    let mut worst: f64 = 0.0;
    for (t, &p) in positions.iter().enumerate() {
        for h in 0..heads as usize {
            let base = (t * heads as usize + h) * head_dim;
            for i in 0..half {
                let (ia, ib) = match info.pairing {
                    Pairing::Interleaved => (offset + 2 * i, offset + 2 * i + 1),
                    Pairing::HalfSplit => (offset + i, offset + i + half),
                    other => panic!("the example's float64 check covers half_split and interleaved, not {:?}", other),
                };
                let angle = inv_freq[i] as f64 * p as f64;
                let (c, s) = (angle.cos() * info.attention_factor, angle.sin() * info.attention_factor);
                let (a, b) = (input[base + ia].to_f32() as f64, input[base + ib].to_f32() as f64);
                let ulp = (a.abs() + b.abs()) / 256.0 + 1e-30;
                let ea = (out[base + ia].to_f32() as f64 - (a * c - b * s)).abs() / ulp;
                let eb = (out[base + ib].to_f32() as f64 - (b * c + a * s)).abs() / ulp;
                worst = worst.max(ea).max(eb);
            }
            // Dims outside the rotary window pass through bit for bit.
            for d in (0..offset).chain(offset + 2 * half..head_dim) {
                if out[base + d] != input[base + d] {
                    return Ok(f64::INFINITY);
                }
            }
        }
    }
    Ok(worst)
}

/// Rotates random bf16 Q and K at `ids` and reports the step.
fn rotate(
    handler: &GlmPositionHandler,
    random: &mut Random,
    name: &'static str,
    ids: &PositionIds,
    visible: Option<usize>,
) -> Result<StepReport> {
    let q_in = random.bf16(ids.tokens * handler.heads * handler.head_dim);
    let k_in = random.bf16(ids.tokens * handler.kv_heads * handler.head_dim);
    let (mut q, mut k) = (q_in.clone(), k_in.clone());
    handler.apply_position_embeddings(&mut q, &mut k, ids)?;
    let positions = ids.stream(0).to_vec();
    let max_ulps = max_error_ulps(handler.spec(), &q_in, &q, handler.heads, &positions)?
        .max(max_error_ulps(handler.spec(), &k_in, &k, handler.kv_heads, &positions)?);
    Ok(StepReport { name, positions, visible, max_ulps })
}

/// Part 1, the original handler's use: a padded batch of two prompts (6 and 3 tokens) with its
/// causal mask, then two decode steps, each with its ids from the grown attention mask and a mask
/// of one query over every cached key. Part 2, continuous batching: a prefill of two prompts, two
/// decode steps, a third sequence's prefill batched with the others' decode tokens, and a last
/// decode after sequence 0 finishes.
pub fn run() -> Result<Vec<StepReport>> {
    let config = Config::glm4_9b_chat()?;
    let mut handler = GlmPositionHandler::new(&config)?;
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    let mut reports = Vec::new();

    let batch = 2;
    let prefill = handler.generate_position_ids(&[6, 3])?;
    let mut attention_mask = prefill.valid.clone().expect("a padded batch has its validity");
    let mut length = prefill.length;
    let mask = handler.get_attention_mask(AttentionPattern::Causal, length, &attention_mask, batch)?;
    reports.push(rotate(&handler, &mut random, "padded prefill", &prefill.ids, Some(count_visible(&mask)?))?);
    for name in ["padded decode 1", "padded decode 2"] {
        let ids = handler.decode_position_ids(&attention_mask, batch, length)?;
        // The new token of each row is real: the mask grows by a column of ones.
        attention_mask = attention_mask
            .chunks(length as usize)
            .flat_map(|row| row.iter().copied().chain(std::iter::once(1)))
            .collect();
        length += 1;
        let mask = handler.get_attention_mask(AttentionPattern::Causal, 1, &attention_mask, batch)?;
        reports.push(rotate(&handler, &mut random, name, &ids.ids, Some(count_visible(&mask)?))?);
    }

    handler.add_sequence(0)?;
    handler.add_sequence(1)?;
    let steps: [(&'static str, Vec<StepEntry>); 5] = [
        ("prefill", vec![StepEntry { seq_id: 0, new_tokens: 6 }, StepEntry { seq_id: 1, new_tokens: 3 }]),
        ("decode 1", vec![StepEntry { seq_id: 0, new_tokens: 1 }, StepEntry { seq_id: 1, new_tokens: 1 }]),
        ("decode 2", vec![StepEntry { seq_id: 0, new_tokens: 1 }, StepEntry { seq_id: 1, new_tokens: 1 }]),
        (
            "prefill 2 + decode 3",
            vec![
                StepEntry { seq_id: 0, new_tokens: 1 },
                StepEntry { seq_id: 1, new_tokens: 1 },
                StepEntry { seq_id: 2, new_tokens: 4 },
            ],
        ),
        ("decode 4", vec![StepEntry { seq_id: 1, new_tokens: 1 }, StepEntry { seq_id: 2, new_tokens: 1 }]),
    ];
    for (name, entries) in steps.iter() {
        if *name == "prefill 2 + decode 3" {
            handler.add_sequence(2)?;
        }
        if *name == "decode 4" {
            handler.finish_sequence(0)?;
        }
        let ids = handler.step_position_ids(entries)?;
        reports.push(rotate(&handler, &mut random, name, &ids, None)?);
    }
    Ok(reports)
}

/// The (query, key) pairs a mask lets attend, from its dense form.
fn count_visible(mask: &Mask) -> Result<usize> {
    Ok(mask.dense()?.iter().filter(|v| **v == 0.0).count())
}

#[allow(dead_code)] // tests/example.rs includes this file for run() and has its own main
fn main() {
    match run() {
        Ok(reports) => {
            let version = posenc::version().expect("posenc version");
            println!("posenc {} (backend {}): GLM-4-9B-chat RoPE on the CPU, bf16 Q [T, 32, 128], K [T, 2, 128]", version.version, version.backend);
            for r in &reports {
                let visible = r.visible.map_or(String::new(), |n| format!("  mask: {} visible pairs", n));
                println!("{:<22} positions {:?}  max error {:.2} bf16 ulps{}", r.name, r.positions, r.max_ulps, visible);
            }
        }
        Err(e) => {
            eprintln!("glm_decode: {}", e);
            std::process::exit(1);
        }
    }
}
