//! The GLM position handler of the Rust/HIP engine posenc replaces, rebuilt on posenc: position ids
//! for a batch of sequences, RoPE on Q and K for a prefill, then decode steps.
//!
//! The original handler (`GlmPositionHandler`) took a `RopeConfig { head_dim, max_seq_len, base }`,
//! generated `0..seq_len` position ids per sequence, and rotated Q and K through a cos/sin table it
//! gathered and uploaded on every call; its decode path restarted positions at 0 and its theta was
//! always 10000. This handler reads the model's real config (GLM-4-9B-chat: interleaved pairs over
//! the first 64 of 128 dims, theta 10000 * rope_ratio 500), keeps each sequence's length in a
//! posenc position tracker so decode tokens continue where their sequence stopped, takes Q with 32
//! heads and K with 2 (GQA), and rotates both in one call.
//!
//! `cargo run --example glm_decode` prints each step; tests/example.rs runs the same code and
//! checks it.

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

    pub fn add_sequence(&mut self, seq_id: i64) -> Result<()> {
        self.tracker.add_sequence(seq_id, SequenceState::default())
    }

    pub fn finish_sequence(&mut self, seq_id: i64) -> Result<()> {
        self.tracker.remove_sequence(seq_id)
    }

    /// The step's position ids: each entry's new tokens continue its sequence (a prefill starts at 0,
    /// a decode token sits at the sequence's length), flattened in entry order.
    pub fn position_ids(&mut self, entries: &[StepEntry]) -> Result<PositionIds> {
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

/// A prefill of two prompts (6 and 3 tokens), two decode steps, then a third sequence's prefill
/// batched with the others' decode tokens, and a last decode after sequence 0 finishes.
pub fn run() -> Result<Vec<StepReport>> {
    let config = Config::glm4_9b_chat()?;
    let mut handler = GlmPositionHandler::new(&config)?;
    handler.add_sequence(0)?;
    handler.add_sequence(1)?;
    let mut random = Random(0x2545_f491_4f6c_dd1d);
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
    let mut reports = Vec::new();
    for (name, entries) in steps.iter() {
        if *name == "prefill 2 + decode 3" {
            handler.add_sequence(2)?;
        }
        if *name == "decode 4" {
            handler.finish_sequence(0)?;
        }
        let ids = handler.position_ids(entries)?;
        let tokens = ids.tokens as usize;
        let q_in: Vec<Bf16> =
            (0..tokens * (handler.heads * handler.head_dim) as usize).map(|_| Bf16::from_f32(random.next())).collect();
        let k_in: Vec<Bf16> =
            (0..tokens * (handler.kv_heads * handler.head_dim) as usize).map(|_| Bf16::from_f32(random.next())).collect();
        let (mut q, mut k) = (q_in.clone(), k_in.clone());
        handler.apply_position_embeddings(&mut q, &mut k, &ids)?;
        let positions = ids.stream(0).to_vec();
        let max_ulps = max_error_ulps(handler.spec(), &q_in, &q, handler.heads, &positions)?
            .max(max_error_ulps(handler.spec(), &k_in, &k, handler.kv_heads, &positions)?);
        reports.push(StepReport { name, positions, max_ulps });
    }
    Ok(reports)
}

#[allow(dead_code)] // tests/example.rs includes this file for run() and has its own main
fn main() {
    match run() {
        Ok(reports) => {
            let version = posenc::version().expect("posenc version");
            println!("posenc {} (backend {}): GLM-4-9B-chat RoPE on the CPU, bf16 Q [T, 32, 128], K [T, 2, 128]", version.version, version.backend);
            for r in &reports {
                println!("{:<22} positions {:?}  max error {:.2} bf16 ulps", r.name, r.positions, r.max_ulps);
            }
        }
        Err(e) => {
            eprintln!("glm_decode: {}", e);
            std::process::exit(1);
        }
    }
}
