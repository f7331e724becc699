//! Whole-encoder tests: ResNets with seeded random weights (random BN statistics included)
//! exported, decoded and run through ONNX Runtime.

use crate::fixture::{random_weights, Weights};
use crate::proto::{tensor_shape_proto::dimension::Value as DimValue, type_proto, ModelProto};
use crate::tests::{require_ort, uniform};
use crate::{export_encoder_with_info, EncoderSpec, ExportInfo, OnnxError};
use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use simsiam::arch::Backbone;
use simsiam::runtime;
use std::collections::HashSet;

fn export(spec: &EncoderSpec, w: &Weights) -> Result<(Vec<u8>, ExportInfo), OnnxError> {
    export_encoder_with_info(spec, &|name| w.get(name).cloned())
}

fn run(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> (Vec<usize>, Vec<f32>) {
    let mut session = runtime::cpu_session(bytes, 2).expect("session");
    runtime::run_f32(&mut session, input, shape).expect("run")
}

fn images(n: usize, side: usize, seed: u64) -> Vec<f32> {
    uniform(
        &mut ChaCha8Rng::seed_from_u64(seed),
        n * 3 * side * side,
        -2.0,
        2.0,
    )
}

#[test]
fn resnet18_has_symbolic_batch_independent_rows_and_unit_norm() {
    require_ort();
    let w = random_weights(Backbone::Resnet18, false, 1);
    let mut spec = EncoderSpec::new(Backbone::Resnet18, 32);
    spec.metadata = vec![("image_size".into(), "32".into())];
    let (bytes, info) = export(&spec, &w).expect("export");
    assert_eq!(info.output_dim, 512);

    let x = images(7, 32, 2);
    let (shape, out) = run(&bytes, &x, [7, 3, 32, 32]);
    assert_eq!(shape, [7, 512]);
    assert!(out.iter().all(|v| v.is_finite()));
    for row in out.chunks(512) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    assert!(
        out[..512] != out[512..1024],
        "different images, different embeddings"
    );

    // Image 3 alone (batch 1) gives the same row as inside the batch of 7.
    let one = &x[3 * 3 * 32 * 32..4 * 3 * 32 * 32];
    let (shape1, out1) = run(&bytes, one, [1, 3, 32, 32]);
    assert_eq!(shape1, [1, 512]);
    let diff = out1
        .iter()
        .zip(&out[3 * 512..4 * 512])
        .map(|(a, b)| (a - b).abs());
    assert!(diff.fold(0.0, f32::max) < 1e-5);

    // ONNX Runtime sees the metadata and the producer.
    let session = runtime::cpu_session(&bytes, 1).expect("session");
    let meta = session.metadata().expect("metadata");
    assert_eq!(meta.custom("image_size").as_deref(), Some("32"));
    assert_eq!(meta.producer().as_deref(), Some("simsiam"));
}

#[test]
fn fp16_weights_halve_the_file_and_stay_close() {
    require_ort();
    let w = random_weights(Backbone::Resnet18, false, 3);
    let mut spec = EncoderSpec::new(Backbone::Resnet18, 32);
    spec.l2_normalize = false;
    let (full, info32) = export(&spec, &w).expect("fp32");
    spec.fp16_weights = true;
    let (half, info16) = export(&spec, &w).expect("fp16");
    eprintln!(
        "ResNet-18 export: fp32 {} bytes, {} nodes; fp16 {} bytes, {} nodes; {} parameters",
        full.len(),
        info32.nodes,
        half.len(),
        info16.nodes,
        info32.parameters
    );
    let ratio = half.len() as f64 / full.len() as f64;
    assert!(
        (0.49..0.52).contains(&ratio),
        "fp16/fp32 size ratio {ratio}"
    );
    assert_eq!(info16.nodes, info32.nodes + 20, "one Cast per convolution");

    let x = images(3, 32, 4);
    let (_, a) = run(&full, &x, [3, 3, 32, 32]);
    let (_, b) = run(&half, &x, [3, 3, 32, 32]);
    let err = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f32>()
        .sqrt();
    let scale = a.iter().map(|p| p * p).sum::<f32>().sqrt();
    eprintln!("fp16 vs fp32 relative L2 error: {:.2e}", err / scale);
    assert!(err / scale < 1e-2, "relative error {}", err / scale);
    assert!(err > 0.0, "fp16 rounding must change something");
}

#[test]
fn decoded_model_has_ir8_opset17_symbolic_batch_and_metadata() {
    let w = random_weights(Backbone::Resnet18, false, 5);
    let mut spec = EncoderSpec::new(Backbone::Resnet18, 64);
    spec.producer = "simsiam-test".into();
    spec.metadata = vec![
        ("run".into(), "abc".into()),
        ("mean".into(), "0.485".into()),
    ];
    let (bytes, info) = export(&spec, &w).expect("export");
    let m = ModelProto::decode(bytes.as_slice()).expect("decode");
    assert_eq!((m.ir_version, info.ir_version, info.opset), (8, 8, 17));
    assert_eq!(m.opset_import.len(), 1);
    assert_eq!(
        (m.opset_import[0].domain.as_str(), m.opset_import[0].version),
        ("", 17)
    );
    assert_eq!(m.producer_name, "simsiam-test");
    let meta: Vec<_> = m
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    assert_eq!(meta, spec.metadata);

    let g = m.graph.expect("graph");
    let dims = |vi: &crate::proto::ValueInfoProto| -> Vec<DimValue> {
        match vi.r#type.as_ref().and_then(|t| t.value.clone()) {
            Some(type_proto::Value::TensorType(t)) => t
                .shape
                .expect("shape")
                .dim
                .into_iter()
                .filter_map(|d| d.value)
                .collect(),
            None => panic!("no type"),
        }
    };
    let batch = DimValue::DimParam("batch".into());
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, "images");
    let fixed = |v| DimValue::DimValue(v);
    assert_eq!(
        dims(&g.input[0]),
        [batch.clone(), fixed(3), fixed(64), fixed(64)]
    );
    assert_eq!(g.output[0].name, "embedding");
    assert_eq!(dims(&g.output[0]), [batch, fixed(512)]);

    // BN folded away; structure as in simsiam::arch; nodes in topological order.
    assert_eq!(g.node.len(), info.nodes);
    let ops = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(ops("BatchNormalization"), 0);
    assert_eq!(
        (ops("Conv"), ops("Relu"), ops("Add"), ops("MaxPool")),
        (20, 17, 8, 1)
    );
    assert_eq!((ops("ReduceL2"), ops("Div")), (1, 1));
    let mut known: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    known.insert("images");
    for n in &g.node {
        for i in &n.input {
            assert!(
                known.contains(i.as_str()),
                "{} reads {i} before it exists",
                n.name
            );
        }
        known.extend(n.output.iter().map(String::as_str));
    }
    assert_eq!(
        g.node.last().map(|n| n.output[0].as_str()),
        Some("embedding")
    );
}

#[test]
fn resnet50_small_stem_gives_2048_wide_embeddings() {
    require_ort();
    let w = random_weights(Backbone::Resnet50, true, 6);
    let mut spec = EncoderSpec::new(Backbone::Resnet50, 16);
    spec.small_stem = true;
    let (bytes, info) = export(&spec, &w).expect("export");
    let m = ModelProto::decode(bytes.as_slice()).expect("decode");
    let g = m.graph.expect("graph");
    let ops = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!((ops("Conv"), ops("Add"), ops("MaxPool")), (53, 16, 0));
    assert_eq!(info.output_dim, 2048);

    let (shape, out) = run(&bytes, &images(2, 16, 7), [2, 3, 16, 16]);
    assert_eq!(shape, [2, 2048]);
    for row in out.chunks(2048) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn bad_weights_are_reported_by_name() {
    let mut w = random_weights(Backbone::Resnet18, true, 8);
    let spec = EncoderSpec::new(Backbone::Resnet18, 32);
    // The spec wants the ImageNet stem: the 3×3 small-stem weight has the wrong shape.
    match export(&spec, &w) {
        Err(OnnxError::Shape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "conv1.weight");
            assert_eq!((expected, found), (vec![64, 3, 7, 7], vec![64, 3, 3, 3]));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    let mut small = spec.clone();
    small.small_stem = true;
    w.remove("layer4.1.bn2.running_mean");
    let err = export(&small, &w).unwrap_err();
    assert!(
        err.to_string().contains("layer4.1.bn2.running_mean"),
        "{err}"
    );

    // A zero variance with a large scale overflows float16 after folding (w·γ/√eps).
    let mut w = random_weights(Backbone::Resnet18, true, 9);
    w.get_mut("layer1.0.bn1.running_var").expect("var").1[0] = 0.0;
    w.get_mut("layer1.0.bn1.weight").expect("gamma").1[0] = 1e5;
    small.fp16_weights = true;
    assert!(
        matches!(export(&small, &w), Err(OnnxError::Fp16Overflow { name, .. }) if name == "layer1.0.conv1.weight_fp16")
    );
    w.get_mut("layer1.0.bn1.running_var").expect("var").1[0] = -1.0;
    assert!(matches!(
        export(&small, &w),
        Err(OnnxError::NonFinite { name, channel: 0 }) if name == "layer1.0.bn1"
    ));
}
