// Runs examples/glm_decode.rs (the original GLM position handler's use, rebuilt on posenc) and checks its positions and accuracy.
#[path = "../examples/glm_decode.rs"]
mod glm_decode;

#[test]
fn glm_handler_prefill_then_decode() {
    let reports = glm_decode::run().expect("the example runs");
    let positions: Vec<(&str, Vec<i64>)> = reports.iter().map(|r| (r.name, r.positions.clone())).collect();
    assert_eq!(
        positions,
        vec![
            ("padded prefill", vec![0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 1, 2]),
            ("padded decode 1", vec![6, 3]),
            ("padded decode 2", vec![7, 4]),
            ("prefill", vec![0, 1, 2, 3, 4, 5, 0, 1, 2]),
            ("decode 1", vec![6, 3]),
            ("decode 2", vec![7, 4]),
            ("prefill 2 + decode 3", vec![8, 5, 0, 1, 2, 3]),
            ("decode 4", vec![6, 4]),
        ]
    );
    // Causal with padding: row 0 sees 1 + .. + 6 keys; row 1's three pads see none, its tokens 1, 2, 3.
    // Each decode query sees its row's real keys: 7 + 4, then 8 + 5.
    let visible: Vec<Option<usize>> = reports.iter().map(|r| r.visible).collect();
    assert_eq!(&visible[..4], &[Some(27), Some(11), Some(13), None]);
    for r in &reports {
        // hf_compatible bf16: cos/sin and both products rounded to bf16, then the sum.
        assert!(r.max_ulps <= 4.0, "{}: {} bf16 ulps from float64", r.name, r.max_ulps);
    }
}
