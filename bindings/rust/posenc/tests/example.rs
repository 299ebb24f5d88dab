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
            ("prefill", vec![0, 1, 2, 3, 4, 5, 0, 1, 2]),
            ("decode 1", vec![6, 3]),
            ("decode 2", vec![7, 4]),
            ("prefill 2 + decode 3", vec![8, 5, 0, 1, 2, 3]),
            ("decode 4", vec![6, 4]),
        ]
    );
    for r in &reports {
        // hf_compatible bf16: cos/sin and both products rounded to bf16, then the sum.
        assert!(r.max_ulps <= 4.0, "{}: {} bf16 ulps from float64", r.name, r.max_ulps);
    }
}
