//! Builder-level tests: hand-made graphs run through ONNX Runtime and checked against
//! values computed here, and the batch-norm folding against a naive reference.

use crate::builder::{attr_int, attr_ints, Dim, GraphBuilder, ModelMeta};
use crate::graph::Exporter;
use crate::{fold_batch_norm, OnnxError};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simsiam::arch::ConvBn;
use simsiam::runtime::{self, RuntimeError};
use std::collections::HashMap;

/// ONNX Runtime must be installed (`make test` runs `make setup` first): fail loudly
/// with the loader's explanation rather than skip.
pub(super) fn require_ort() {
    if let Err(e) = runtime::init() {
        panic!("these tests need ONNX Runtime, which did not load: {e}");
    }
}

pub(super) fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn batch() -> Dim {
    Dim::Symbolic("batch".into())
}

/// input [N,1,3,3] → Conv(2 filters 2×2, bias) → Relu → GlobalAveragePool → Flatten.
fn tiny_model() -> Result<Vec<u8>, OnnxError> {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[batch(), Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(3)])?;
    // filter 0: top-left + bottom-right; filter 1: −top-left, bias 3.5
    let w = g.initializer_f32("w", &[2, 1, 2, 2], &[1., 0., 0., 1., -1., 0., 0., 0.])?;
    let b = g.initializer_f32("b", &[2], &[0.0, 3.5])?;
    let conv = g.node(
        "Conv",
        "conv",
        &[&x, &w, &b],
        vec![attr_ints("kernel_shape", &[2, 2])],
    )?;
    let relu = g.node("Relu", "relu", &[&conv], vec![])?;
    let pool = g.node("GlobalAveragePool", "pool", &[&relu], vec![])?;
    let y = g.node("Flatten", "y", &[&pool], vec![attr_int("axis", 1)])?;
    g.output(&y, &[batch(), Dim::Fixed(2)])?;
    Ok(g.finish("tiny", ModelMeta::default()).encode_to_vec())
}

#[test]
fn hand_made_graph_matches_values_computed_by_hand() {
    require_ort();
    let bytes = tiny_model().expect("build");
    let mut session = runtime::cpu_session(&bytes, 1).expect("session");
    // image 1 = 1..9 row-major, image 2 = its negation
    let mut input: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    input.extend((1..=9).map(|v| -(v as f32)));
    let (shape, out) = runtime::run_f32(&mut session, &input, [2, 1, 3, 3]).expect("run");
    assert_eq!(shape, [2, 2]);
    // image 1, filter 0: windows give 1+5, 2+6, 4+8, 5+9 = 6, 8, 12, 14 → mean 10
    // image 1, filter 1: 3.5 − {1, 2, 4, 5} = 2.5, 1.5, −0.5, −1.5 → relu → mean 1
    // image 2, filter 0: all negative → 0
    // image 2, filter 1: 3.5 + {1, 2, 4, 5} = 4.5, 5.5, 7.5, 8.5 → mean 6.5
    let expected = [10.0, 1.0, 0.0, 6.5];
    for (o, e) in out.iter().zip(expected) {
        assert!((o - e).abs() < 1e-6, "{out:?} vs {expected:?}");
    }
}

#[test]
fn run_f32_rejects_an_input_of_the_wrong_length() {
    require_ort();
    let mut session = runtime::cpu_session(&tiny_model().expect("build"), 1).expect("session");
    let err = runtime::run_f32(&mut session, &[0.0; 8], [1, 1, 3, 3]).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::InputLength {
                expected: 9,
                found: 8,
                ..
            }
        ),
        "{err}"
    );
    // and the session still works afterwards
    let (shape, _) = runtime::run_f32(&mut session, &[0.0; 9], [1, 1, 3, 3]).expect("run");
    assert_eq!(shape, [1, 2]);
}

/// Naive conv (stride, zero padding k/2) → inference BN → ReLU, in f64, NCHW.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    (n, cin, h): (usize, usize, usize),
    w: &[f32],
    (cout, k, stride): (usize, usize, usize),
    bn: &HashMap<&str, Vec<f32>>,
    eps: f64,
) -> Vec<f32> {
    let pad = k / 2;
    let ho = (h + 2 * pad - k) / stride + 1;
    let mut out = Vec::with_capacity(n * cout * ho * ho);
    let p = |name: &str, c: usize| f64::from(bn[name][c]);
    for b in 0..n {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..ho {
                    let mut acc = 0.0f64;
                    for ci in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= h as isize {
                                    continue;
                                }
                                let xi = ((b * cin + ci) * h + iy as usize) * h + ix as usize;
                                let wi = ((co * cin + ci) * k + ky) * k + kx;
                                acc += f64::from(x[xi]) * f64::from(w[wi]);
                            }
                        }
                    }
                    let y = (acc - p("running_mean", co)) / (p("running_var", co) + eps).sqrt()
                        * p("weight", co)
                        + p("bias", co);
                    out.push(y.max(0.0) as f32);
                }
            }
        }
    }
    out
}

#[test]
fn folded_conv_bn_relu_matches_an_unfolded_reference() {
    require_ort();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let eps = 1e-5;
    // (cin, cout, k, stride, side): a strided 3×3, a 1×1 and a 7×7 stem-like unit
    for (cin, cout, k, stride, h) in [(3, 4, 3, 2, 9), (5, 3, 1, 1, 6), (3, 2, 7, 2, 11)] {
        let n = 2;
        let w = uniform(&mut rng, cout * cin * k * k, -0.5, 0.5);
        let mut bn = HashMap::new();
        bn.insert("weight", uniform(&mut rng, cout, 0.5, 1.5));
        bn.insert("bias", uniform(&mut rng, cout, -0.5, 0.5));
        bn.insert("running_mean", uniform(&mut rng, cout, -0.3, 0.3));
        bn.insert("running_var", uniform(&mut rng, cout, 0.05, 2.0));
        let (cin_, cout_, k_) = (cin as i64, cout as i64, k as i64);
        let lookup = |name: &str| -> Option<(Vec<i64>, Vec<f32>)> {
            match name.strip_prefix("u.bn.") {
                Some(p) => Some((vec![cout_], bn.get(p)?.clone())),
                None => (name == "u.conv.weight").then(|| (vec![cout_, cin_, k_, k_], w.clone())),
            }
        };
        let unit = ConvBn {
            conv: "u.conv".into(),
            bn: "u.bn".into(),
            cin: cin_,
            cout: cout_,
            kernel: k_,
            stride: stride as i64,
            zero_init: false,
        };
        let mut ex = Exporter::new(&lookup, eps, false);
        let side = Dim::Fixed(h as i64);
        let x =
            ex.g.input("x", &[batch(), Dim::Fixed(cin_), side.clone(), side])
                .expect("input");
        let conv = ex.conv_bn(&x, &unit).expect("conv_bn");
        let y = ex.g.node("Relu", "y", &[&conv], vec![]).expect("relu");
        let ho = (h + 2 * (k / 2) - k) / stride + 1;
        let o = Dim::Fixed(ho as i64);
        ex.g.output(&y, &[batch(), Dim::Fixed(cout_), o.clone(), o])
            .expect("output");
        let bytes = ex.g.finish("unit", ModelMeta::default()).encode_to_vec();

        let input = uniform(&mut rng, n * cin * h * h, -1.0, 1.0);
        let mut session = runtime::cpu_session(&bytes, 1).expect("session");
        let (shape, got) = runtime::run_f32(&mut session, &input, [n, cin, h, h]).expect("run");
        let want = reference(&input, (n, cin, h), &w, (cout, k, stride), &bn, eps);
        assert_eq!(shape, [n, cout, ho, ho]);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "k={k}: max |ORT − reference| = {worst}");
        assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.1));
    }
}

#[test]
fn folding_rejects_a_non_positive_variance_and_names_the_channel() {
    let w = [1.0; 6];
    let ok = fold_batch_norm(&w, &[2.0, 1.0], &[0.5, 0.0], &[1.0, 1.0], &[3.0, 1.0], 1.0);
    let (wf, b) = ok.expect("valid");
    // channel 0: scale = 2/√4 = 1 → W' = 1, b' = 0.5 − 1·1 = −0.5
    // channel 1: scale = 1/√2 → W' = 0.7071, b' = 0 − 1·0.7071
    assert_eq!(&wf[..3], &[1.0; 3]);
    let r = std::f32::consts::FRAC_1_SQRT_2;
    assert!(wf[3..].iter().all(|v| (v - r).abs() < 1e-7), "{wf:?}");
    assert_eq!(b[0], -0.5);
    assert!((b[1] + r).abs() < 1e-7, "{b:?}");
    let bad = fold_batch_norm(&w, &[1.0, 1.0], &[0.0; 2], &[0.0; 2], &[1.0, -1.0], 1e-5);
    assert_eq!(bad, Err(1));
}

#[test]
fn builder_rejects_duplicates_undefined_values_and_wrong_lengths() {
    let mut g = GraphBuilder::new();
    g.input("x", &[batch()]).expect("input");
    assert!(matches!(g.input("x", &[]), Err(OnnxError::DuplicateName(n)) if n == "x"));
    assert!(matches!(
        g.node("Relu", "r", &["nope"], vec![]),
        Err(OnnxError::UndefinedValue(n)) if n == "nope"
    ));
    assert!(matches!(
        g.initializer_f32("w", &[2, 3], &[0.0; 5]),
        Err(OnnxError::Length { found: 5, .. })
    ));
    assert!(matches!(
        g.initializer_f16("h", &[1], &[1e5]),
        Err(OnnxError::Fp16Overflow { .. })
    ));
    g.node("Relu", "r", &["x"], vec![]).expect("relu");
    assert!(matches!(
        g.node("Relu", "r", &["x"], vec![]),
        Err(OnnxError::DuplicateName(_))
    ));
    assert!(matches!(
        g.output("missing", &[]),
        Err(OnnxError::UndefinedValue(_))
    ));
    assert_eq!(g.node_count(), 1);
}
