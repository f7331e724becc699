//! The CUDA execution provider: parity with the CPU provider, and a clear failure where
//! it is absent.

use super::*;

/// Up to `n` real Stanford Dogs JPEGs from `../shared/data`, one per breed, or the
/// fixture's generated images when the shared data is absent.
fn real_images(n: usize) -> Vec<Vec<u8>> {
    let root = Path::new(ROOT).join("../shared/data/stanford-dogs/Images");
    let mut out = Vec::new();
    if let Ok(breeds) = std::fs::read_dir(&root) {
        let mut breeds: Vec<PathBuf> = breeds.filter_map(|e| e.ok().map(|e| e.path())).collect();
        breeds.sort();
        for dir in breeds.iter().take(n) {
            let first = std::fs::read_dir(dir)
                .ok()
                .and_then(|files| files.filter_map(|f| f.ok().map(|f| f.path())).min());
            out.extend(first.and_then(|f| std::fs::read(f).ok()));
        }
    }
    if out.is_empty() {
        eprintln!("../shared/data is absent: parity on the fixture's generated images");
        out = ["class_0/0.jpg", "class_1/3.jpg", "class_2/7.jpg"]
            .iter()
            .map(|f| image_bytes(f))
            .collect();
    }
    out
}

#[test]
fn cuda_and_cpu_providers_agree_on_real_images() {
    use simsiam_server::config::{InferenceConfig, Provider};
    use simsiam_server::encoder::{self, ActiveProvider};
    let b = Bundle::open(&fixture().bundle).expect("bundle");
    let t = b.manifest.eval_transform();
    let jpegs = real_images(8);
    let metrics = simsiam_server::metrics::Metrics::default();
    let images =
        simsiam_server::pipeline::preprocess(&jpegs, &t, u64::MAX, &metrics).expect("decode");
    let model = b.encoder_bytes().expect("onnx");
    let dim = b.manifest.embedding.dim;
    let cpu = |threads| InferenceConfig {
        provider: Provider::Cpu,
        threads,
        ..Default::default()
    };
    let parity = |other: &InferenceConfig| {
        encoder::provider_parity(&model, t.crop, dim, &images, jpegs.len(), &cpu(1), other)
            .expect("both sessions run")
    };
    // The comparison itself, CPU against CPU with another thread count: the same numbers
    // up to summation order.
    let same = parity(&cpu(2));
    assert!(same.max_abs_diff < 1e-5, "{same:?}");
    if !encoder::cuda_available().expect("ONNX Runtime loads") {
        eprintln!(
            "skipped the CUDA side: the loaded ONNX Runtime has no CUDA provider \
             (`SIMSIAM_CUDA=1 make setup` installs onnxruntime-gpu)"
        );
        return;
    }
    let cuda = InferenceConfig {
        provider: Provider::Cuda,
        ..Default::default()
    };
    let p = parity(&cuda);
    eprintln!(
        "CUDA vs CPU on {} real images: max |diff| {:.2e}",
        jpegs.len(),
        p.max_abs_diff
    );
    assert_eq!(p.candidate, ActiveProvider::Cuda);
    assert!(p.max_abs_diff <= 1e-3, "{p:?}");
}

#[test]
fn asking_for_cuda_where_there_is_none_fails_at_start_with_a_clear_message() {
    if simsiam_server::encoder::cuda_available().expect("ONNX Runtime loads") {
        eprintln!("skipped: this ONNX Runtime has the CUDA provider");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(SERVER)
        .current_dir(ROOT)
        .arg("--model")
        .arg(&fixture().bundle)
        .arg("--gallery-dir")
        .arg(dir.path().join("g"))
        .env("SIMSIAM_SERVER_INFERENCE__PROVIDER", "cuda")
        .output()
        .expect("run server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CUDA execution provider was asked for")
            && err.contains("libonnxruntime")
            && err.contains("onnxruntime-gpu"),
        "{err}"
    );
}
