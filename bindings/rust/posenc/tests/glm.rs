// posenc::glm end to end: each generation's worked example (docs/GLM.md), decode through the tracker from a prompt's state, engine calls on the ids, masks, and errors.
use posenc::glm::{
    self, AttentionPattern, EmptyRows, Mask, MaskGeometry, MaskTokenRule, MropeSegment, NextTextStart, SpecialTokens,
    VideoLayout, VisionFamily, VisionGrid, VisionTokens, Vocabulary, NO_TOKEN,
};
use posenc::{reference_apply, Config, CpuEngine, PositionTracker, RopeArgs, SequenceState, Status, StepEntry, TensorMut};

mod common;
use common::assert_error;

const CONFIGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../configs");

/// The engine and the reference rotate random f32 Q [T, 2, head_dim] at the builder's ids alike,
/// and the rotation changed the data.
fn engine_matches_reference(config: &str, ids: &posenc::PositionIds) {
    let spec = Config::load(format!("{}/{}", CONFIGS, config)).unwrap().spec(None).unwrap();
    let head_dim = spec.info().unwrap().head_dim;
    let n = (ids.tokens * 2 * head_dim) as usize;
    let input: Vec<f32> = (0..n).map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0).collect();
    let (mut q, mut q_ref) = (input.clone(), input.clone());
    let engine = CpuEngine::new(&spec).unwrap();
    engine.apply(&mut RopeArgs::new(TensorMut::new(&mut q, ids.tokens, 2, head_dim).unwrap(), ids.positions())).unwrap();
    reference_apply(&spec, &mut RopeArgs::new(TensorMut::new(&mut q_ref, ids.tokens, 2, head_dim).unwrap(), ids.positions()))
        .unwrap();
    assert_eq!(q, q_ref);
    assert_ne!(q, input);
}

#[test]
fn vocabularies() {
    let glm4 = SpecialTokens::of(Vocabulary::Glm4).unwrap();
    assert_eq!((glm4.mask, glm4.gmask, glm4.sop, glm4.begin_of_image), (151330, 151331, 151333, 151339));
    assert_eq!(SpecialTokens::of(Vocabulary::ChatGlm2).unwrap().begin_of_image, NO_TOKEN);
    assert_eq!(VisionTokens::of(VisionFamily::Glm4v).unwrap(), VisionTokens { image: 151343, video: 151344 });
}

#[test]
fn chatglm6b_prompt_then_decode_through_the_tracker() {
    let sp = SpecialTokens::of(Vocabulary::ChatGlm6b).unwrap();
    let prompt = [11, 12, 13, sp.gmask, sp.sop];
    let p = glm::chatglm6b_positions(&prompt, None, MaskTokenRule::MaskFirst).unwrap();
    assert_eq!(p.ids.stream(0), &[0, 1, 2, 3, 3]);
    assert_eq!(p.ids.stream(1), &[0, 0, 0, 0, 1]);
    assert_eq!((p.prefix_len, p.mask_position, p.mask_token), (4, 3, sp.gmask));
    assert_eq!((p.next_position, p.next_block), (3, 2));
    let state = p.tracker_state.unwrap();
    assert_eq!(state, SequenceState { length: 5, rope_delta: 0, pin_from: Some(4), pin_value: 3 });
    engine_matches_reference("chatglm-6b.json", &p.ids);

    let mut tracker = PositionTracker::new(2, 2048).unwrap();
    tracker.add_sequence(0, state).unwrap();
    for block in 2..5 {
        let step = tracker.step(&[StepEntry { seq_id: 0, new_tokens: 1 }]).unwrap();
        assert_eq!(step.values, vec![3, block]);
    }

    let batch = glm::chatglm6b_batch(&[&prompt[2..], &prompt[..]], Some(&sp), MaskTokenRule::MaskFirst).unwrap();
    assert_eq!((batch.batch, batch.length), (2, 5));
    assert_eq!(batch.ids.stream(0), &[0, 0, 0, 1, 1, 0, 1, 2, 3, 3]);
    assert_eq!(batch.valid.as_deref(), Some(&[0u8, 0, 1, 1, 1, 1, 1, 1, 1, 1][..]));
    assert_eq!((batch.mask_positions.clone(), batch.pad_counts.clone(), batch.prefix_lens.clone()), (vec![1, 3], vec![2, 0], vec![4, 4]));
    assert_eq!(batch.tracker_state, None);

    assert_error(glm::chatglm6b_positions(&prompt[..3], None, MaskTokenRule::GmaskFirst), Status::InvalidArgument, &["<sop>", "130004"]);
}

#[test]
fn glm130b_and_blank_infilling() {
    let sp = SpecialTokens::of(Vocabulary::Glm130b).unwrap();
    let p = glm::glm130b_positions(&[11, 12, sp.mask, 14, sp.sop, 15, 16], None).unwrap();
    assert_eq!(p.ids.values, vec![0, 1, 2, 3, 2, 2, 2]);
    assert!(p.pinned);
    assert_eq!((p.prefix_len, p.mask_position, p.next_position), (4, 2, 2));
    assert_eq!(p.tracker_state.unwrap().pin_from, Some(4));

    let six = SpecialTokens::of(Vocabulary::ChatGlm6b).unwrap();
    let context = glm::blank_infilling_context(&[11, 12, six.mask, 14, six.gmask], &six).unwrap();
    assert_eq!((context.prefix_len, context.mask_positions.clone()), (5, vec![2, 4]));
    let generation = glm::blank_infilling_generation(2, 1, 3).unwrap();
    assert_eq!(generation.ids.values, vec![2, 2, 2, 1, 2, 3]);
    assert_eq!(generation.next_block, 4);
    assert_error(glm::blank_infilling_generation(2, 0, 1), Status::InvalidArgument, &["first_block is 0"]);
}

#[test]
fn padded_batches() {
    let mask = [0u8, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    let p = glm::positions_from_attention_mask(&mask, 2, 5, 1).unwrap();
    assert_eq!(p.ids.values, vec![1, 1, 0, 1, 2, 0, 1, 2, 3, 4]);
    assert_eq!(p.valid.as_deref(), Some(&mask[..]));
    assert_eq!(glm::next_positions_from_attention_mask(&mask, 2, 5, 1).unwrap().ids.values, vec![3, 5]);
    let padded = glm::left_padded_arange(&[2, 4], 0).unwrap();
    assert_eq!(padded.ids.values, vec![0, 0, 0, 1, 0, 1, 2, 3]);
    assert_eq!(glm::arange(7, 3).unwrap().ids.values, vec![7, 8, 9]);
    // The slice must hold batch x length entries: refused before the library reads it.
    assert_error(glm::positions_from_attention_mask(&mask, 3, 5, 1), Status::InvalidArgument, &["10 entries", "needs 15"]);
    assert_error(glm::positions_from_attention_mask(&[1, 2], 1, 2, 1), Status::InvalidArgument, &["mask value 2 at [0, 1]"]);
}

#[test]
fn mrope_glm41v_prefill_then_decode() {
    // 3 text tokens, a 1x4x4 image (2x2 after the merge), 2 text tokens.
    let vt = VisionTokens::of(VisionFamily::Glm4v).unwrap();
    let tokens = [11, 12, 13, vt.image, vt.image, vt.image, vt.image, 14, 15];
    let grid = VisionGrid::new(1, 4, 4);
    let p = glm::mrope_positions_from_tokens(&tokens, &vt, &[grid], &[], NextTextStart::SpatialExtent, VideoLayout::PerFrame)
        .unwrap();
    assert_eq!(p.ids.stream(0), &[0, 1, 2, 3, 3, 3, 3, 5, 6]);
    assert_eq!(p.ids.stream(1), &[0, 1, 2, 3, 3, 4, 4, 5, 6]);
    assert_eq!(p.ids.stream(2), &[0, 1, 2, 3, 4, 3, 4, 5, 6]);
    assert_eq!((p.rope_delta, p.next_position), (-2, 7));
    let segments = [MropeSegment::Text(3), MropeSegment::Vision(grid), MropeSegment::Text(2)];
    assert_eq!(glm::mrope_positions(&segments, NextTextStart::SpatialExtent).unwrap(), p);
    engine_matches_reference("glm-4.1v-9b.json", &p.ids);

    // Decode: the tracker from the prompt's state and the decode builder agree.
    let mut tracker = PositionTracker::new(3, 65536).unwrap();
    tracker.add_sequence(5, p.tracker_state.unwrap()).unwrap();
    let step = tracker.step(&[StepEntry { seq_id: 5, new_tokens: 2 }]).unwrap();
    let decode = glm::mrope_decode_positions(9, p.rope_delta, 2).unwrap();
    assert_eq!(step, decode.ids);
    assert_eq!(decode.ids.values, vec![7, 8, 7, 8, 7, 8]);
    engine_matches_reference("glm-4.1v-9b.json", &decode.ids);

    assert_error(
        glm::mrope_positions_from_tokens(&tokens[..6], &vt, &[grid], &[], NextTextStart::SpatialExtent, VideoLayout::Whole),
        Status::InvalidArgument,
        &["image grid 0 needs 4 tokens"],
    );
    let odd = VisionGrid::new(1, 3, 4);
    assert_error(glm::mrope_positions(&[MropeSegment::Vision(odd)], NextTextStart::MaxPlusOne), Status::InvalidArgument, &["h 3"]);
}

#[test]
fn glm4v_remote_image() {
    let sp = SpecialTokens::of(Vocabulary::Glm4).unwrap();
    let tokens = [11, 12, 13, 14, 15, sp.begin_of_image, 0, sp.end_of_image, 16, 17];
    let p = glm::glm4v_remote_positions(&tokens, 4, None).unwrap();
    assert_eq!(p.ids.values, vec![0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 7, 8, 9]);
    assert_eq!((p.rope_delta, p.boi_index, p.num_patches, p.next_position), (-3, 5, 4, 10));
}

#[test]
fn masks() {
    // Causal over a left-padded batch, padding from the builder.
    let padded = glm::left_padded_arange(&[2, 4], 0).unwrap();
    let valid = padded.valid.clone().unwrap();
    let geometry = MaskGeometry { batch: 2, q_len: 4, k_len: 4, valid: Some(&valid), empty_rows: EmptyRows::Masked };
    let mask = Mask::new(&[AttentionPattern::Causal], &geometry).unwrap();
    assert_eq!(mask.row(0, 0).unwrap(), &[]);
    assert!(mask.visible(0, 3, 2) && !mask.visible(0, 3, 1) && mask.visible(1, 3, 0));
    let dense = mask.dense().unwrap();
    assert_eq!(dense.len(), 32);
    assert_eq!(dense.iter().filter(|v| **v == 0.0).count(), 3 + 10);
    assert!(dense[1].is_infinite() && dense[1] < 0.0);

    // Per sequence: prefix-LM and a closure.
    let even = |q: i64, k: i64| (q - k) % 2 == 0;
    let geometry = MaskGeometry { batch: 2, q_len: 4, k_len: 4, valid: None, empty_rows: EmptyRows::Masked };
    let mask = Mask::new(&[AttentionPattern::PrefixLm(3), AttentionPattern::Custom(&even)], &geometry).unwrap();
    assert!(mask.visible(0, 0, 2) && !mask.visible(0, 0, 3));
    assert_eq!(mask.row(1, 3).unwrap(), &[glm::KeyRange { begin: 1, end: 2 }, glm::KeyRange { begin: 3, end: 4 }]);

    // A window with a global slot, as the original module's GlobalLocal meant it (causal).
    let single = MaskGeometry::new(6, 6);
    let mask = Mask::new(&[AttentionPattern::GlobalLocal { global_positions: vec![0], window: 2 }], &single).unwrap();
    assert_eq!(mask.row(0, 5).unwrap(), &[glm::KeyRange { begin: 0, end: 1 }, glm::KeyRange { begin: 4, end: 6 }]);

    assert_error(Mask::new(&[AttentionPattern::LocalWindow(0)], &single), Status::InvalidArgument, &["window 0"]);
    assert_error(
        Mask::new(&[AttentionPattern::GlobalLocal { global_positions: vec![9], window: 2 }], &single),
        Status::OutOfRange,
        &["global_positions[0] = 9", "[0, 6)"],
    );
    let short = MaskGeometry { batch: 2, q_len: 4, k_len: 4, valid: Some(&valid[..7]), empty_rows: EmptyRows::Masked };
    assert_error(Mask::new(&[AttentionPattern::Causal], &short), Status::InvalidArgument, &["valid has 7 entries"]);
}

#[test]
fn a_panicking_predicate_unwinds_through_rust_only() {
    let boom = |q: i64, _k: i64| -> bool {
        if q == 2 {
            panic!("predicate refuses row 2");
        }
        true
    };
    let result = std::panic::catch_unwind(|| Mask::new(&[AttentionPattern::Custom(&boom)], &MaskGeometry::new(4, 4)));
    let payload = result.err().expect("the panic is resumed");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"predicate refuses row 2"));
}
