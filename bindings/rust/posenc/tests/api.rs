// The safe API end to end on libposenc: configs, specs, CPU engine (against the reference and float64), append, cos/sin cache, tracker, errors.
use posenc::{
    gpu_info, reference_append, reference_apply, version, AppendArgs, Bf16, CacheLayout, Config, CosSinCache, Fp8E4m3,
    CpuEngine, GpuEngine, GpuPositionTracker, HfArithmetic, KvCacheMut, Numerics, Pairing, Positions, PositionTracker, QkNorm, RopeArgs, Scaling,
    SequenceState, Spec, SpecDesc, Status, StepEntry, Tensor, TensorMut,
};

mod common;
use common::assert_error;

const CONFIGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../configs");

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn plain_spec(numerics: Numerics, limit: i64) -> Spec {
    let mut desc = SpecDesc::new(64);
    desc.numerics = numerics;
    desc.position_limit = Some(limit);
    Spec::new(&desc).expect("spec")
}

#[test]
fn version_and_backend() {
    let v = version().unwrap();
    assert_eq!((v.major, v.minor, v.patch, v.abi), (0, 1, 0, 1));
    assert_eq!(v.version, "0.1.0");
    let gpu = gpu_info().unwrap();
    assert_eq!(gpu.backend, v.backend);
    assert_eq!(gpu.available, gpu.unavailable_reason.is_empty());
}

#[test]
fn configs_and_specs() {
    let glm = Config::glm4_9b_chat().unwrap();
    let info = glm.info().unwrap();
    assert_eq!((info.model_type.as_str(), info.num_attention_heads, info.num_key_value_heads), ("chatglm", 32, 2));
    assert_eq!(glm.layer_types().unwrap(), vec!["default".to_string()]);
    let spec = glm.spec(None).unwrap().info().unwrap();
    assert_eq!((spec.head_dim, spec.rotary_dim, spec.pairing, spec.theta), (128, 64, Pairing::Interleaved, 5.0e6));

    let gemma = Config::load(format!("{}/gemma-3-4b.json", CONFIGS)).unwrap();
    assert_eq!(gemma.layer_types().unwrap(), vec!["full_attention", "sliding_attention"]);
    assert_eq!(gemma.spec(Some("full_attention")).unwrap().info().unwrap().scaling, Scaling::Linear);
    assert_error(gemma.spec(None), Status::Config, &["posenc_config_spec", "default", "sliding_attention"]);

    let vl = Config::load(format!("{}/qwen2-vl-7b.json", CONFIGS)).unwrap().spec(None).unwrap();
    assert_eq!(vl.mrope_section().unwrap(), vec![16, 24, 24]);
    assert_eq!(vl.info().unwrap().position_streams, 3);

    assert_error(Config::load("/nonexistent.json"), Status::Io, &["/nonexistent.json"]);
    assert_error(Config::parse("{\"model_type\": ", "cut"), Status::Config, &["cut"]);
    assert_error(Config::parse("{}", "with\0nul"), Status::InvalidArgument, &["NUL byte at index 4"]);

    let desc = SpecDesc::new(64);
    let s = Spec::new(&desc).unwrap();
    assert_eq!(s.inv_freq().unwrap().len(), 32);
    assert_eq!(s.inv_freq().unwrap()[0], 1.0);
    assert!(s.describe().unwrap().contains("half_split"));
    assert_eq!(s.with_numerics(Numerics::Accurate).unwrap().info().unwrap().numerics, Numerics::Accurate);
    assert_eq!(s.with_position_limit(77).unwrap().info().unwrap().position_limit, 77);
    assert_error(Spec::new(&SpecDesc::new(63)), Status::InvalidArgument, &["posenc_spec_create", "63"]);
    let mut zero = SpecDesc::new(64);
    zero.theta = 0.0;
    assert_error(Spec::new(&zero), Status::InvalidArgument, &["theta 0"]);
}

/// hf_arithmetic reaches the library: kept by the spec, refused by the CPU engine where it cannot
/// reproduce it (torch_cuda), and torch_cpu and exact give other bits where their pow and cos/sin do.
/// The QK-norm stage: a Qwen3 config's spec has it, a spec can be made with it, the CPU engine
/// equals the reference with the weights, and a call without them is refused with nothing written.
#[test]
fn qk_norm_from_config_and_through_the_engine() {
    let qwen3 = Config::load(std::path::Path::new(&format!("{}/qwen3-8b-yarn.json", CONFIGS))).unwrap();
    let info = qwen3.spec(None).unwrap().info().unwrap();
    assert_eq!(info.qk_norm, QkNorm::Rms);
    assert_eq!(info.qk_norm_epsilon, 1e-6);
    assert!(!info.qk_norm_rotary_only);

    let (t, d) = (9usize, 64usize);
    let mut desc = SpecDesc::new(d as i64);
    desc.qk_norm = QkNorm::RmsOnePlus;
    let spec = Spec::new(&desc).unwrap();
    assert_eq!(spec.info().unwrap().qk_norm, QkNorm::RmsOnePlus);
    let positions: Vec<i64> = (0..t as i64).map(|i| i * 977).collect();
    let (q_in, k_in) = (random(t * 2 * d, 21), random(t * d, 22));
    let (wq, wk) = (random(d, 23), random(d, 24));
    let (mut q, mut k, mut q_ref, mut k_ref) = (q_in.clone(), k_in.clone(), q_in.clone(), k_in.clone());
    let engine = CpuEngine::new(&spec).unwrap();
    engine
        .apply(
            &mut RopeArgs::new(TensorMut::new(&mut q, t as i64, 2, d as i64).unwrap(), Positions::new(&positions))
                .k(TensorMut::new(&mut k, t as i64, 1, d as i64).unwrap())
                .norm(&wq, Some(&wk)),
        )
        .unwrap();
    reference_apply(
        &spec,
        &mut RopeArgs::new(TensorMut::new(&mut q_ref, t as i64, 2, d as i64).unwrap(), Positions::new(&positions))
            .k(TensorMut::new(&mut k_ref, t as i64, 1, d as i64).unwrap())
            .norm(&wq, Some(&wk)),
    )
    .unwrap();
    assert_eq!(q, q_ref);
    assert_eq!(k, k_ref);
    assert_ne!(q, q_in);

    let mut untouched = q_in.clone();
    assert_error(
        engine.apply(&mut RopeArgs::new(TensorMut::new(&mut untouched, t as i64, 2, d as i64).unwrap(), Positions::new(&positions))),
        Status::InvalidArgument,
        &["norm.q is absent"],
    );
    assert_eq!(untouched, q_in);
}

#[test]
fn hf_arithmetic_reaches_the_engine() {
    let plain = Spec::new(&SpecDesc::new(64)).unwrap();
    assert_eq!(plain.info().unwrap().hf_arithmetic, HfArithmetic::Engine);
    assert_eq!(plain.with_hf_arithmetic(HfArithmetic::Exact).unwrap().info().unwrap().hf_arithmetic, HfArithmetic::Exact);

    let mut desc = SpecDesc::new(64);
    desc.hf_arithmetic = HfArithmetic::TorchCuda;
    let cuda = Spec::new(&desc).unwrap();
    assert_eq!(cuda.info().unwrap().hf_arithmetic, HfArithmetic::TorchCuda);
    assert_error(CpuEngine::new(&cuda), Status::Unsupported, &["posenc_cpu_engine_create", "torch_cuda", "NVIDIA GPU"]);
    assert_error(
        reference_apply(&cuda, &mut RopeArgs::new(TensorMut::new(&mut random(64, 9), 1, 1, 64).unwrap(), Positions::new(&[1i64]))),
        Status::Unsupported,
        &["torch_cuda"],
    );
    // accurate numerics never read the arithmetic.
    CpuEngine::new(&cuda.with_numerics(Numerics::Accurate).unwrap()).unwrap();

    // head_dim 80, theta 1e7: torch's CPU table (SLEEF/glibc powf) and the correctly rounded one
    // differ in an entry; the rotations differ wherever that or MKL's cos/sin does.
    let (t, d) = (64usize, 80usize);
    let mut desc = SpecDesc::new(d as i64);
    desc.theta = 1e7;
    desc.hf_arithmetic = HfArithmetic::TorchCpu;
    let torch_cpu = Spec::new(&desc).unwrap();
    let exact = torch_cpu.with_hf_arithmetic(HfArithmetic::Exact).unwrap();
    let (table_cpu, table_exact) = (torch_cpu.inv_freq().unwrap(), exact.inv_freq().unwrap());
    assert_eq!(table_cpu.len(), d / 2);
    assert!(table_cpu.iter().zip(&table_exact).any(|(a, b)| a.to_bits() != b.to_bits()), "the tables are equal");

    let q_in = random(t * d, 11);
    let positions: Vec<i64> = (0..t as i64).map(|i| i * 15_551 + 7).collect();
    let rotate = |spec: &Spec| -> posenc::Result<Vec<f32>> {
        let engine = CpuEngine::new(spec)?;
        let (mut q, mut q_ref) = (q_in.clone(), q_in.clone());
        engine.apply(&mut RopeArgs::new(TensorMut::new(&mut q, t as i64, 1, d as i64)?, Positions::new(&positions)))?;
        reference_apply(spec, &mut RopeArgs::new(TensorMut::new(&mut q_ref, t as i64, 1, d as i64)?, Positions::new(&positions)))?;
        assert_eq!(q, q_ref, "the engine and the reference disagree");
        assert_ne!(q, q_in);
        Ok(q)
    };
    let q_exact = rotate(&exact).unwrap();
    match rotate(&torch_cpu) {
        Ok(q_cpu) => assert_ne!(q_cpu, q_exact, "torch_cpu and exact gave the same bits"),
        // A build without Intel MKL (POSENC_MKL=OFF) cannot reproduce torch's CPU cos/sin.
        Err(error) => assert_error::<()>(Err(error), Status::Unsupported, &["torch_cpu", "POSENC_MKL=OFF"]),
    }
}

/// f32, accurate numerics, GQA: float64 within 4 float32 ulps; the engine equals the reference.
#[test]
fn cpu_engine_against_float64_and_reference() {
    let (t, hq, hk, d) = (5usize, 4usize, 2usize, 64usize);
    let spec = plain_spec(Numerics::Accurate, 4096);
    let engine = CpuEngine::with_threads(&spec, 2).unwrap();
    assert_eq!(engine.threads().unwrap(), 2);
    let q_in = random(t * hq * d, 1);
    let k_in = random(t * hk * d, 2);
    let positions: Vec<i32> = vec![0, 17, 4095, 300, 1];
    let (mut q, mut k) = (q_in.clone(), k_in.clone());
    {
        let qv = TensorMut::new(&mut q, t as i64, hq as i64, d as i64).unwrap();
        let kv = TensorMut::new(&mut k, t as i64, hk as i64, d as i64).unwrap();
        engine.apply(&mut RopeArgs::new(qv, Positions::new(&positions)).k(kv)).unwrap();
    }
    let inv_freq = spec.inv_freq().unwrap();
    for (input, output, heads) in [(&q_in, &q, hq), (&k_in, &k, hk)] {
        for ti in 0..t {
            for h in 0..heads {
                let base = (ti * heads + h) * d;
                for i in 0..d / 2 {
                    let angle = inv_freq[i] as f64 * positions[ti] as f64;
                    let (a, b) = (input[base + i] as f64, input[base + i + d / 2] as f64);
                    let ulp = (a.abs() + b.abs()) * f32::EPSILON as f64;
                    assert!((output[base + i] as f64 - (a * angle.cos() - b * angle.sin())).abs() <= 4.0 * ulp);
                    assert!((output[base + i + d / 2] as f64 - (b * angle.cos() + a * angle.sin())).abs() <= 4.0 * ulp);
                }
            }
        }
    }

    // bf16, hf_compatible: engine == reference, bit for bit.
    let hf = plain_spec(Numerics::HfCompatible, 4096);
    let hf_engine = CpuEngine::new(&hf).unwrap();
    let qb_in: Vec<Bf16> = q_in.iter().map(|&x| Bf16::from_f32(x)).collect();
    let (mut qb, mut qb_ref) = (qb_in.clone(), qb_in.clone());
    hf_engine
        .apply(&mut RopeArgs::new(TensorMut::new(&mut qb, 5, 4, 64).unwrap(), Positions::new(&positions)))
        .unwrap();
    reference_apply(&hf, &mut RopeArgs::new(TensorMut::new(&mut qb_ref, 5, 4, 64).unwrap(), Positions::new(&positions)))
        .unwrap();
    assert_eq!(qb, qb_ref);
    assert_ne!(qb, qb_in);

    // Out of place into a poisoned destination: every element written, same bits as in place.
    let mut out = vec![f32::NAN; t * hq * d];
    engine
        .apply(
            &mut RopeArgs::new(TensorMut::new(&mut out, 5, 4, 64).unwrap(), Positions::new(&positions))
                .q_src(Tensor::new(&q_in, 5, 4, 64).unwrap()),
        )
        .unwrap();
    assert_eq!(out, q);
}

#[test]
fn apply_errors_leave_data_untouched() {
    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    let q_in = random(5 * 4 * 64, 3);
    let mut q = q_in.clone();
    let bad: Vec<i64> = vec![0, 1, 2, 5000, 4];
    let result = engine.apply(&mut RopeArgs::new(TensorMut::new(&mut q, 5, 4, 64).unwrap(), Positions::new(&bad)));
    assert_error(result, Status::OutOfRange, &["posenc_cpu_engine_apply", "position 5000", "token index 3", "[0, 1000)"]);
    let good: Vec<i64> = vec![0, 1, 2, 3, 4];
    let result = engine.apply(&mut RopeArgs::new(TensorMut::strided(&mut q, 5, 4, 32, 128, 32).unwrap(), Positions::new(&good)));
    assert_error(result, Status::InvalidArgument, &["head_dim", "32", "64"]);
    assert_eq!(q, q_in);

    // Views are checked against their slices before the library sees them.
    assert_error(TensorMut::new(&mut q, 6, 4, 64), Status::InvalidArgument, &["spans 1536 elements", "holds 1280"]);
    assert_error(TensorMut::strided(&mut q, 5, 4, 64, -256, 64), Status::InvalidArgument, &["negative"]);
    assert_error(TensorMut::strided(&mut q, 2, 2, 2, i64::MAX, 1), Status::Overflow, &["2^63"]);
    assert_error(Positions::streams(&good, 2, 5), Status::InvalidArgument, &["2 streams of 5 tokens need 10 ids"]);
}

#[test]
fn counters() {
    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    let mut q = random(2 * 64, 4);
    let positions: Vec<i64> = vec![3, 4];
    assert_eq!(engine.counters().unwrap().calls, 0);
    engine.set_counters(true).unwrap();
    for _ in 0..3 {
        engine.apply(&mut RopeArgs::new(TensorMut::new(&mut q, 2, 1, 64).unwrap(), Positions::new(&positions))).unwrap();
    }
    let c = engine.counters().unwrap();
    assert_eq!((c.calls, c.tokens, c.bytes), (3, 6, 3 * 2 * 2 * 64 * 4));
    engine.reset_counters().unwrap();
    assert_eq!(engine.counters().unwrap().calls, 0);
}

/// A caller's cos/sin cache built in float64 from the spec's frequencies: the engine equals the
/// reference bit for bit and the spec path within float32 rounding.
#[test]
fn cos_sin_cache() {
    let spec = plain_spec(Numerics::Accurate, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    let inv_freq = spec.inv_freq().unwrap();
    let rows = 32usize;
    let mut cache = vec![0.0f32; rows * 64];
    for p in 0..rows {
        for i in 0..32 {
            cache[p * 64 + i] = (inv_freq[i] as f64 * p as f64).cos() as f32;
            cache[p * 64 + 32 + i] = (inv_freq[i] as f64 * p as f64).sin() as f32;
        }
    }
    let q_in = random(3 * 2 * 64, 5);
    let positions: Vec<i64> = vec![31, 0, 9];
    let (mut q, mut q_ref, mut q_spec) = (q_in.clone(), q_in.clone(), q_in.clone());
    let table = CosSinCache::new(&cache, rows as i64, 64).unwrap();
    engine
        .apply(&mut RopeArgs::new(TensorMut::new(&mut q, 3, 2, 64).unwrap(), Positions::new(&positions)).cos_sin(table))
        .unwrap();
    reference_apply(
        &spec,
        &mut RopeArgs::new(TensorMut::new(&mut q_ref, 3, 2, 64).unwrap(), Positions::new(&positions)).cos_sin(table),
    )
    .unwrap();
    engine.apply(&mut RopeArgs::new(TensorMut::new(&mut q_spec, 3, 2, 64).unwrap(), Positions::new(&positions))).unwrap();
    assert_eq!(q, q_ref);
    for (a, b) in q.iter().zip(q_spec.iter()) {
        assert!((a - b).abs() <= 4.0 * f32::EPSILON * 2.0, "{} vs {}", a, b);
    }
    let outside: Vec<i64> = vec![32, 0, 9];
    let mut q2 = q_in.clone();
    let result = engine.apply(
        &mut RopeArgs::new(TensorMut::new(&mut q2, 3, 2, 64).unwrap(), Positions::new(&outside)).cos_sin(table),
    );
    assert_error(result, Status::OutOfRange, &["position 32", "token index 0", "[0, 32)"]);
    assert_eq!(q2, q_in);
    assert_error(CosSinCache::new(&cache, 33, 64), Status::InvalidArgument, &["spans 2112 elements"]);
}

/// Fused append into a paged bf16 cache: engine == reference; slot -1 writes nothing.
#[test]
fn append_into_paged_cache() {
    const T: i64 = 3;
    const HQ: i64 = 4;
    const HK: i64 = 2;
    const D: i64 = 64;
    const BLOCKS: i64 = 2;
    const PAGE: i64 = 4;
    /// Q [T, HQ, D], K and V [T, HK, D] appended at `slots` into a paged HND cache (K `ck`, V `cv`).
    fn args<'a>(
        q: &'a mut [f32],
        kv: (&'a [f32], &'a [f32]),
        positions: &'a [i64],
        slots: &'a [i64],
        cache: (&'a mut [Bf16], &'a mut [Bf16]),
    ) -> posenc::Result<AppendArgs<'a, f32, Bf16>> {
        AppendArgs::new(
            TensorMut::new(q, T, HQ, D).unwrap(),
            Tensor::new(kv.0, T, HK, D).unwrap(),
            Tensor::new(kv.1, T, HK, D).unwrap(),
            Positions::new(positions),
            slots,
            KvCacheMut::new(cache.0, cache.1, CacheLayout::PagedHnd, BLOCKS, PAGE, HK, D).unwrap(),
        )
    }

    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    let q_in: Vec<f32> = random((T * HQ * D) as usize, 6);
    let k: Vec<f32> = random((T * HK * D) as usize, 7);
    let v: Vec<f32> = random((T * HK * D) as usize, 8);
    let positions: Vec<i64> = vec![10, 11, 12];
    let slots: Vec<i64> = vec![5, -1, 2];
    let cells = (BLOCKS * PAGE * HK * D) as usize;
    let poison = Bf16(0x7fc1);
    let (mut ck, mut cv, mut ck_ref, mut cv_ref) = (vec![poison; cells], vec![poison; cells], vec![poison; cells], vec![poison; cells]);
    let (mut q, mut q_ref) = (q_in.clone(), q_in.clone());
    assert_eq!(KvCacheMut::new(&mut ck, &mut cv, CacheLayout::PagedHnd, BLOCKS, PAGE, HK, D).unwrap().slots(), 8);
    engine.append(&mut args(&mut q, (&k, &v), &positions, &slots, (&mut ck, &mut cv)).unwrap()).unwrap();
    reference_append(&spec, &mut args(&mut q_ref, (&k, &v), &positions, &slots, (&mut ck_ref, &mut cv_ref)).unwrap())
        .unwrap();
    assert_eq!(q, q_ref);
    assert_eq!(ck, ck_ref);
    assert_eq!(cv, cv_ref);
    // Two slots of 2 heads x 64 dims written in K and in V; every other cell still poisoned.
    assert_eq!(ck.iter().filter(|&&x| x != poison).count(), 2 * 2 * 64);
    assert_eq!(cv.iter().filter(|&&x| x != poison).count(), 2 * 2 * 64);

    let bad_slots: Vec<i64> = vec![5, 8, 2];
    let mut bad = args(&mut q, (&k, &v), &positions, &bad_slots, (&mut ck, &mut cv)).unwrap();
    assert_error(engine.append(&mut bad), Status::OutOfRange, &["posenc_cpu_engine_append", "8", "token index 1"]);
    assert_eq!(q, q_ref);
    assert_eq!(ck, ck_ref);

    let short: Vec<i64> = vec![1, 2];
    let mut small = vec![poison; 4];
    let mut small_v = vec![poison; 4];
    assert_error(
        KvCacheMut::new(&mut small, &mut small_v, CacheLayout::Contiguous, 1, 4, 2, 64),
        Status::InvalidArgument,
        &["need 512 elements"],
    );
    assert_error(
        args(&mut q, (&k, &v), &positions, &short, (&mut ck, &mut cv)),
        Status::InvalidArgument,
        &["2 slots for 3 tokens"],
    );
}

/// Per-head fp8 scales: every head at the per-tensor scales of a plain call gives the same bytes;
/// a wrong-length slice is refused before the call, a bad value by the call, naming the head.
#[test]
fn append_with_per_head_scales() {
    const T: i64 = 3;
    const HQ: i64 = 4;
    const HK: i64 = 2;
    const D: i64 = 64;
    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    let q: Vec<f32> = random((T * HQ * D) as usize, 26);
    let k: Vec<f32> = random((T * HK * D) as usize, 27);
    let v: Vec<f32> = random((T * HK * D) as usize, 28);
    let positions: Vec<i64> = vec![3, 40, 999];
    let slots: Vec<i64> = vec![6, -1, 1];
    let cells = (2 * 4 * HK * D) as usize;
    let poison = Fp8E4m3(0x5a);
    let run = |per_head: Option<(&[f32], &[f32], &[f32])>| -> posenc::Result<(Vec<Fp8E4m3>, Vec<Fp8E4m3>, Vec<Fp8E4m3>)> {
        let (mut qq, mut ck, mut cv) = (q.clone(), vec![poison; cells], vec![poison; cells]);
        let mut out = vec![poison; (T * HQ * D) as usize];
        let (tensor_scale, q_scale) = if per_head.is_some() { (1.0, 1.0) } else { (0.5, 0.125) };
        let mut args = AppendArgs::new(
            TensorMut::new(&mut qq, T, HQ, D).unwrap(),
            Tensor::new(&k, T, HK, D).unwrap(),
            Tensor::new(&v, T, HK, D).unwrap(),
            Positions::new(&positions),
            &slots,
            KvCacheMut::new(&mut ck, &mut cv, CacheLayout::PagedNhd, 2, 4, HK, D)
                .unwrap()
                .with_scales(tensor_scale, tensor_scale),
        )?
        .q_out(&mut out, HQ * D, D, q_scale)?;
        if let Some((ks, vs, qs)) = per_head {
            args = args.head_scales(ks, vs)?.q_out_head_scales(qs)?;
        }
        engine.append(&mut args)?;
        drop(args);
        Ok((out, ck, cv))
    };
    let plain = run(None).unwrap();
    let (ks, vs, qs) = (vec![0.5f32; HK as usize], vec![0.5f32; HK as usize], vec![0.125f32; HQ as usize]);
    assert_eq!(run(Some((&ks, &vs, &qs))).unwrap(), plain);
    let short = vec![0.5f32; 1];
    let e = run(Some((&short, &vs, &qs))).unwrap_err();
    assert!(e.message().contains("1 scales for 2 KV heads"), "{}", e.message());
    let mut bad = vs.clone();
    bad[1] = f32::NAN;
    let e = run(Some((&ks, &bad, &qs))).unwrap_err();
    assert!(e.message().contains("cache.v_head_scales[1]"), "{}", e.message());
}

/// fp8 serving: Q written as fp8 into q_out (its own scale) beside an fp8 cache; q only read;
/// engine == reference; every value the rotated Q / scale within the e4m3 rounding.
#[test]
fn append_with_fp8_q_out() {
    const T: i64 = 3;
    const HQ: i64 = 4;
    const HK: i64 = 2;
    const D: i64 = 64;
    const SCALE: f32 = 0.125;
    /// The append of `q` with q_out into `out`, K and V into the fp8 cache (ck, cv).
    fn args<'a>(
        q: &'a mut [f32],
        kv: (&'a [f32], &'a [f32]),
        positions: &'a [i64],
        slots: &'a [i64],
        cache: (&'a mut [Fp8E4m3], &'a mut [Fp8E4m3]),
        out: &'a mut [Fp8E4m3],
    ) -> posenc::Result<AppendArgs<'a, f32, Fp8E4m3>> {
        AppendArgs::new(
            TensorMut::new(q, T, HQ, D).unwrap(),
            Tensor::new(kv.0, T, HK, D).unwrap(),
            Tensor::new(kv.1, T, HK, D).unwrap(),
            Positions::new(positions),
            slots,
            KvCacheMut::new(cache.0, cache.1, CacheLayout::PagedNhd, 2, 4, HK, D).unwrap().with_scales(0.5, 0.5),
        )?
        .q_out(out, HQ * D, D, SCALE)
    }

    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    let q_in: Vec<f32> = random((T * HQ * D) as usize, 16);
    let k: Vec<f32> = random((T * HK * D) as usize, 17);
    let v: Vec<f32> = random((T * HK * D) as usize, 18);
    let positions: Vec<i64> = vec![3, 40, 999];
    let slots: Vec<i64> = vec![6, -1, 1];
    let cells = (2 * 4 * HK * D) as usize;
    let poison = Fp8E4m3(0x5a);
    let (mut q, mut q_ref) = (q_in.clone(), q_in.clone());
    let (mut out, mut out_ref) = (vec![poison; (T * HQ * D) as usize], vec![poison; (T * HQ * D) as usize]);
    let (mut ck, mut cv, mut ck_ref, mut cv_ref) =
        (vec![poison; cells], vec![poison; cells], vec![poison; cells], vec![poison; cells]);
    engine.append(&mut args(&mut q, (&k, &v), &positions, &slots, (&mut ck, &mut cv), &mut out).unwrap()).unwrap();
    reference_append(
        &spec,
        &mut args(&mut q_ref, (&k, &v), &positions, &slots, (&mut ck_ref, &mut cv_ref), &mut out_ref).unwrap(),
    )
    .unwrap();
    assert_eq!(q, q_in, "q is only read with q_out");
    assert_eq!(out, out_ref);
    assert_eq!(ck, ck_ref);
    assert_eq!(cv, cv_ref);
    // The rotated Q (the crate's own apply) divided by the scale, within e4m3's rounding.
    let mut rotated = q_in.clone();
    engine.apply(&mut RopeArgs::new(TensorMut::new(&mut rotated, T, HQ, D).unwrap(), Positions::new(&positions))).unwrap();
    for (x, y) in rotated.iter().zip(&out) {
        let want = x / SCALE;
        assert!((y.to_f32() - want).abs() <= want.abs() / 16.0 + 2f32.powi(-10), "{} vs {}", y.to_f32(), want);
    }
    // Strides that reach past q_out are refused before any call.
    let mut short = vec![poison; (T * HQ * D - 1) as usize];
    assert_error(
        args(&mut q, (&k, &v), &positions, &slots, (&mut ck, &mut cv), &mut short),
        Status::InvalidArgument,
        &["q_out", "do not fit its 767 elements"],
    );
}

/// Append into DeepSeek-V3's MLA cache: each written row is `[c_kv latent | rotated k_pe]`, the
/// latent copied as given and k_pe bit for bit as this crate's apply rotates it; Q's rope slices
/// rotated in place, their nope parts untouched; engine == reference.
#[test]
fn append_into_mla_cache() {
    const T: i64 = 3;
    const HQ: i64 = 2;
    const NOPE: i64 = 32;
    const D: i64 = 64; // rope dim (the spec's head_dim)
    const L: i64 = 128; // latent (kv_lora_rank)
    const ROW: i64 = L + D;
    const BLOCKS: i64 = 2;
    const PAGE: i64 = 4;
    /// Q's rope slices in [T, HQ, NOPE + D]; k_pe and c_kv from one [T, L + D] projection.
    fn args<'a>(
        q: &'a mut [f32],
        ckv: &'a [f32],
        positions: &'a [i64],
        slots: &'a [i64],
        cache: &'a mut [f32],
    ) -> posenc::Result<AppendArgs<'a, f32, f32>> {
        AppendArgs::new(
            TensorMut::strided(&mut q[NOPE as usize..], T, HQ, D, HQ * (NOPE + D), NOPE + D).unwrap(),
            Tensor::strided(&ckv[L as usize..], T, 1, D, ROW, D).unwrap(),
            Tensor::strided(ckv, T, 1, L, ROW, L).unwrap(),
            Positions::new(positions),
            slots,
            KvCacheMut::mla(cache, BLOCKS, PAGE, L, D).unwrap(),
        )
    }

    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    let q_in: Vec<f32> = random((T * HQ * (NOPE + D)) as usize, 21);
    let ckv: Vec<f32> = random((T * ROW) as usize, 22);
    let positions: Vec<i64> = vec![7, 8, 900];
    let slots: Vec<i64> = vec![5, -1, 2];
    let poison = -1234.5f32;
    let cells = (BLOCKS * PAGE * ROW) as usize;
    let (mut cache, mut cache_ref) = (vec![poison; cells], vec![poison; cells]);
    let (mut q, mut q_ref) = (q_in.clone(), q_in.clone());
    assert_eq!(KvCacheMut::mla(&mut cache, BLOCKS, PAGE, L, D).unwrap().slots(), 8);
    engine.append(&mut args(&mut q, &ckv, &positions, &slots, &mut cache).unwrap()).unwrap();
    reference_append(&spec, &mut args(&mut q_ref, &ckv, &positions, &slots, &mut cache_ref).unwrap()).unwrap();
    assert_eq!(q, q_ref);
    assert_eq!(cache, cache_ref);

    // k_pe as apply rotates it (out of place from the projection into `k_rot`).
    let mut k_rot = vec![0f32; (T * D) as usize];
    engine
        .apply(
            &mut RopeArgs::new(TensorMut::new(&mut k_rot, T, 1, D).unwrap(), Positions::new(&positions))
                .q_src(Tensor::strided(&ckv[L as usize..], T, 1, D, ROW, D).unwrap()),
        )
        .unwrap();
    let (row, l, d) = (ROW as usize, L as usize, D as usize);
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let cached = &cache[slot as usize * row..(slot as usize + 1) * row];
        assert_eq!(&cached[..l], &ckv[t * row..t * row + l], "token {}: the latent is copied", t);
        let (got, want): (Vec<u32>, Vec<u32>) = (
            cached[l..].iter().map(|x| x.to_bits()).collect(),
            k_rot[t * d..(t + 1) * d].iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(got, want, "token {}: k_pe as apply rotates it, bit for bit", t);
        assert_ne!(&cached[l..], &ckv[t * row + l..(t + 1) * row], "token {}: k_pe was rotated", t);
    }
    // Slots 5 and 2 written, every other cell still poisoned.
    assert_eq!(cache.iter().filter(|&&x| x != poison).count(), 2 * row);
    // The nope part of every Q head untouched, the rope part rotated.
    let head = (NOPE + D) as usize;
    for h in 0..(T * HQ) as usize {
        let (got, was) = (&q[h * head..(h + 1) * head], &q_in[h * head..(h + 1) * head]);
        assert_eq!(&got[..NOPE as usize], &was[..NOPE as usize]);
        assert_ne!(&got[NOPE as usize..], &was[NOPE as usize..]);
    }

    // Errors: a slice too small, the two-tensor constructor, a latent the library refuses.
    let mut small = vec![poison; cells - 1];
    assert_error(KvCacheMut::mla(&mut small, BLOCKS, PAGE, L, D), Status::InvalidArgument, &["need 1536 elements", "1535"]);
    assert_error(KvCacheMut::mla(&mut small, BLOCKS, PAGE, -1, D), Status::InvalidArgument, &["KvCacheMut::mla"]);
    let mut other = vec![poison; cells];
    assert_error(
        KvCacheMut::new(&mut cache, &mut other, CacheLayout::Mla, BLOCKS, PAGE, 1, D),
        Status::InvalidArgument,
        &["KvCacheMut::mla"],
    );
    let mut odd = vec![poison; (BLOCKS * PAGE * (100 + D)) as usize];
    let ckv_odd: Vec<f32> = random((T * (100 + D)) as usize, 23);
    let mut bad = AppendArgs::new(
        TensorMut::strided(&mut q[NOPE as usize..], T, HQ, D, HQ * (NOPE + D), NOPE + D).unwrap(),
        Tensor::strided(&ckv_odd[100..], T, 1, D, 100 + D, D).unwrap(),
        Tensor::strided(&ckv_odd, T, 1, 100, 100 + D, 100).unwrap(),
        Positions::new(&positions),
        &slots,
        KvCacheMut::mla(&mut odd, BLOCKS, PAGE, 100, D).unwrap(),
    )
    .unwrap();
    assert_error(engine.append(&mut bad), Status::InvalidArgument, &["posenc_cpu_engine_append", "100"]);
    assert_eq!(q, q_ref);
    assert!(odd.iter().all(|&x| x == poison));
}

#[test]
fn position_tracker() {
    let mut tracker = PositionTracker::new(1, 100).unwrap();
    tracker.add_sequence(7, SequenceState::default()).unwrap();
    tracker.add_sequence(9, SequenceState { length: 5, ..SequenceState::default() }).unwrap();
    assert_eq!(tracker.len().unwrap(), 2);
    let prefill = [StepEntry { seq_id: 7, new_tokens: 3 }, StepEntry { seq_id: 9, new_tokens: 1 }];
    assert_eq!(tracker.peek(&prefill).unwrap().values, vec![0, 1, 2, 5]);
    assert_eq!(tracker.state(7).unwrap().length, 0);
    let ids = tracker.step(&prefill).unwrap();
    assert_eq!((ids.streams, ids.tokens, ids.values.clone()), (1, 4, vec![0, 1, 2, 5]));
    assert_eq!(ids.positions().count(), 4);
    let decode = [StepEntry { seq_id: 7, new_tokens: 1 }, StepEntry { seq_id: 9, new_tokens: 1 }];
    assert_eq!(tracker.step(&decode).unwrap().values, vec![3, 6]);

    assert_error(tracker.step(&[StepEntry { seq_id: 8, new_tokens: 1 }]), Status::InvalidArgument, &["8", "not tracked"]);
    assert_error(tracker.step(&[StepEntry { seq_id: 9, new_tokens: 200 }]), Status::OutOfRange, &["100"]);
    assert_error(tracker.step(&[StepEntry { seq_id: 9, new_tokens: 0 }]), Status::InvalidArgument, &["new_tokens 0"]);
    assert_eq!(tracker.state(9).unwrap().length, 7);
    assert_error(tracker.add_sequence(7, SequenceState::default()), Status::InvalidArgument, &["7"]);
    assert_eq!(tracker.slot(9).unwrap(), 1);
    tracker.remove_sequence(7).unwrap();
    assert!(!tracker.contains(7).unwrap());
    assert_eq!(tracker.slot(9).unwrap(), 0, "the last slot's sequence moved into the freed one");
    assert_error(tracker.slot(7), Status::InvalidArgument, &["posenc_position_tracker_slot", "7", "not tracked"]);

    // ChatGLM-6B 2-D: positions pinned at the mask from <sop> on, block positions counting up.
    let mut two = PositionTracker::new(2, 100).unwrap();
    two.add_sequence(1, SequenceState { pin_from: Some(3), pin_value: 2, ..SequenceState::default() }).unwrap();
    let ids = two.step(&[StepEntry { seq_id: 1, new_tokens: 5 }]).unwrap();
    assert_eq!(ids.stream(0), &[0, 1, 2, 2, 2]);
    assert_eq!(ids.stream(1), &[0, 0, 0, 1, 2]);
    assert_error(PositionTracker::new(4, 100), Status::InvalidArgument, &["4"]);
}

#[test]
fn gpu_engine_says_why_not() {
    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let gpu = gpu_info().unwrap();
    match GpuEngine::new(&spec, 0) {
        Ok(engine) => {
            assert!(gpu.available);
            engine.set_counters(true, false).unwrap();
            assert_eq!(engine.counters().unwrap().calls, 0);
        }
        Err(error) => {
            assert!(!gpu.available);
            assert_eq!(error.status(), Status::Unsupported, "{}", error);
            assert!(error.message().contains(&gpu.unavailable_reason), "{}", error);
        }
    }
    assert_error(GpuEngine::new(&spec, -1), Status::InvalidArgument, &["device is -1"]);
}

/// The device position tracker: created from a host tracker where a GPU can be used, else the
/// GPU engine's Unsupported error with the same reason.
#[test]
fn gpu_position_tracker_says_why_not() {
    let mut host = PositionTracker::new(2, 100).unwrap();
    host.add_sequence(7, SequenceState::default()).unwrap();
    host.add_sequence(9, SequenceState { length: 5, ..SequenceState::default() }).unwrap();
    assert_error(GpuPositionTracker::new(&host, -1, 16), Status::InvalidArgument, &["device is -1"]);
    let gpu = gpu_info().unwrap();
    match GpuPositionTracker::new(&host, 0, 16) {
        Ok(tracker) => {
            assert!(gpu.available);
            assert_eq!((tracker.streams().unwrap(), tracker.slots().unwrap(), tracker.max_tokens().unwrap()), (2, 2, 16));
            assert_eq!(unsafe { tracker.lengths(std::ptr::null_mut()) }.unwrap(), vec![0, 5]);
            let buffer = [0i64; 32];
            let view = tracker.positions_raw(buffer.as_ptr(), 3).unwrap();
            assert_eq!((view.streams, view.count, view.stream_stride), (2, 3, 16));
            assert_error(tracker.positions_raw(buffer.as_ptr(), 17), Status::InvalidArgument, &["total_tokens 17", "[0, 16]"]);
            unsafe { tracker.check(std::ptr::null_mut()) }.unwrap();
            drop(host); // the device tracker is a copy: it outlives its host tracker
            assert_eq!(tracker.slots().unwrap(), 2);
        }
        Err(error) => {
            assert!(!gpu.available);
            assert_eq!(error.status(), Status::Unsupported, "{}", error);
            assert!(error.message().starts_with("posenc_gpu_position_tracker_create: no GPU can be used"), "{}", error);
            assert!(error.message().contains(&gpu.unavailable_reason), "{}", error);
        }
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<Config>();
    both::<Spec>();
    both::<CpuEngine>();
    both::<GpuEngine>();
    both::<GpuPositionTracker>();
    both::<PositionTracker>();
    // One engine shared by threads.
    let spec = plain_spec(Numerics::HfCompatible, 1000);
    let engine = CpuEngine::new(&spec).unwrap();
    std::thread::scope(|scope| {
        for seed in 0..2u64 {
            let engine = &engine;
            scope.spawn(move || {
                let mut q = random(64, 10 + seed);
                let positions: Vec<i64> = vec![seed as i64];
                engine.apply(&mut RopeArgs::new(TensorMut::new(&mut q, 1, 1, 64).unwrap(), Positions::new(&positions))).unwrap();
            });
        }
    });
}
