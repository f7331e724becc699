//! Every route answering, embeddings equal to a bare session, the gallery across a
//! restart, batching of concurrent requests, and the clients in `clients/`.

use super::*;

/// Embeddings of `jpegs` by a bare ONNX Runtime session over the fixture's encoder, from
/// the core's decoding and evaluation transform, one image per run.
fn bare_embeddings(jpegs: &[Vec<u8>]) -> Vec<Vec<f32>> {
    let b = Bundle::open(&fixture().bundle).expect("bundle");
    let t = b.manifest.eval_transform();
    let mut session = runtime::cpu_session(&b.encoder_bytes().expect("onnx"), 1).expect("session");
    let side = t.crop as usize;
    jpegs
        .iter()
        .map(|bytes| {
            let img = simsiam::decode::decode_bytes(bytes, None).expect("decode");
            let (_, row) =
                runtime::run_f32(&mut session, &t.to_vec(&img), [1, 3, side, side]).expect("run");
            row
        })
        .collect()
}

#[test]
fn every_route_answers_and_embeddings_match_a_bare_session() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(&dir.path().join("gallery"), &[]);
    assert_eq!(s.call("GET", "/healthz", &[], &[]).status, 200);
    let ready = s.call("GET", "/readyz", &[], &[]);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["gallery_items"], 36);
    let models = s.call("GET", "/v1/models", &[], &[]).json();
    assert_eq!(
        models["models"][0]["manifest"]["classes"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let provider = models["models"][0]["provider"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(provider == "cpu" || provider == "cuda", "{provider}");
    // What a client sizes its requests by, from the configuration in force.
    assert_eq!(models["limits"]["max_images"], 32);
    assert_eq!(models["limits"]["max_k"], 100);
    assert_eq!(models["batching"]["max_batch"], 32);
    let says = format!("session(s) on {}", provider.to_uppercase());
    assert!(
        s.log_text().contains(&says),
        "the log names the provider: {says}"
    );
    let page = s.call("GET", "/", &[], &[]);
    assert!(page.text().contains("<html") && page.text().contains("/openapi.json"));

    // The OpenAPI document lists exactly the routes the server has, and each answers.
    let doc = s.call("GET", "/openapi.json", &[], &[]).json();
    let mut documented: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    documented.sort();
    let mut expected: Vec<String> = [
        "/",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/readyz",
        "/v1/classify",
        "/v1/embed",
        "/v1/embeddings",
        "/v1/gallery",
        "/v1/gallery/{id}",
        "/v1/models",
        "/v1/search",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    expected.sort();
    assert_eq!(documented, expected);
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            let p = path.replace("{id}", "no-such-id");
            let r = s.call(&method.to_uppercase(), &p, &[], &[]);
            let unknown_route =
                r.status == 404 && error_code(&r) == "not_found" && !p.contains("no-such-id");
            assert!(
                !unknown_route && r.status != 405,
                "{method} {path}: {}",
                r.status
            );
        }
    }

    // One image three ways: raw body, multipart, JSON base64; all equal what a bare
    // ONNX Runtime session computes from the core's decoding and preprocessing.
    let files = ["class_0/0.jpg", "class_1/5.jpg", "class_2/11.jpg"];
    let jpeg: Vec<Vec<u8>> = files.iter().map(|f| image_bytes(f)).collect();
    let answer = s.raw("/v1/embed", &jpeg[0]);
    // Every answer says where its time went; an embedding spent some in each stage.
    let ms = |r: &Response, h: &str| -> f64 {
        r.header(h)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{h} missing or not a number: {:?}", r.headers))
    };
    for h in ["x-preprocess-time", "x-inference-time", "x-total-time"] {
        assert!(ms(&answer, h) > 0.0, "{h}");
    }
    assert!(ms(&answer, "x-queue-time") >= 0.0);
    assert!(ms(&answer, "x-total-time") >= ms(&answer, "x-inference-time"));
    let listed = s.call("GET", "/v1/gallery", &[], &[]);
    assert_eq!(ms(&listed, "x-inference-time"), 0.0, "no model run");
    let raw = vectors(&answer);
    let form = vectors(&s.form(
        "/v1/embed",
        &[
            ("images", Some("a.jpg"), &jpeg[0]),
            ("images", Some("b.jpg"), &jpeg[1]),
        ],
    ));
    let b64: Vec<String> = jpeg
        .iter()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .collect();
    let js = vectors(&s.json("POST", "/v1/embed", &json!({ "images": b64 })));
    assert_eq!(js.len(), 3);
    assert_eq!(models["models"][0]["dim"], js[0].len());
    assert_eq!(raw[0], form[0]);
    assert_eq!(form[1], js[1]);
    for (served, want) in js.iter().zip(bare_embeddings(&jpeg)) {
        let worst = want
            .iter()
            .zip(served)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "server vs bare session max |diff| {worst:e}");
    }
    assert_ne!(js[0], js[1], "different images, different embeddings");

    // Classification: top_k ranked breeds with probabilities.
    let c = s.raw("/v1/classify?top_k=2", &jpeg[1]);
    assert_eq!(c.status, 200, "{}", c.text());
    let preds = c.json()["results"][0]["predictions"]
        .as_array()
        .expect("predictions")
        .clone();
    assert_eq!(preds.len(), 2);
    let p0 = preds[0]["probability"].as_f64().expect("p");
    let p1 = preds[1]["probability"].as_f64().expect("p");
    assert!(p0 >= p1 && p0 + p1 <= 1.0 + 1e-5);
    assert!(preds[0]["breed"]
        .as_str()
        .expect("breed")
        .starts_with("class"));

    // Search: a gallery image finds itself first; vectors work; the breed filter holds.
    let r = s.raw("/v1/search?k=3", &jpeg[1]);
    assert_eq!(r.status, 200, "{}", r.text());
    let hits = r.json()["results"][0]["neighbors"].clone();
    assert_eq!(hits.as_array().map(Vec::len), Some(3));
    assert_eq!(hits[0]["id"], "class_1/5");
    assert!(hits[0]["score"].as_f64().expect("score") > 0.9999);
    assert_eq!(hits[0]["breed"], "class 1");
    assert!(hits[0]["source"]
        .as_str()
        .expect("source")
        .contains("class_1/5.jpg"));
    let r = s.json(
        "POST",
        "/v1/search",
        &json!({ "vectors": [js[2]], "k": 4, "breed": "class 0" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let hits = r.json()["results"][0]["neighbors"]
        .as_array()
        .expect("hits")
        .clone();
    assert_eq!(hits.len(), 4);
    assert!(hits.iter().all(|h| h["breed"] == "class 0"));

    let metrics = s.call("GET", "/metrics", &[], &[]).text();
    for needle in [
        "simsiam_http_requests_total{route=\"/v1/embed\",status=\"200\"}",
        "simsiam_http_request_duration_seconds_bucket{route=\"/v1/search\"",
        "simsiam_batch_size_count",
        "simsiam_queue_depth 0",
        "simsiam_stage_duration_seconds_count{stage=\"decode\"}",
        "simsiam_stage_duration_seconds_count{stage=\"inference\"}",
        "simsiam_stage_duration_seconds_count{stage=\"search\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[test]
fn gallery_changes_survive_a_restart_and_concurrent_requests_are_batched() {
    let dir = tempfile::tempdir().expect("tmp");
    let gallery = dir.path().join("gallery");
    let envs = [("SIMSIAM_SERVER_BATCHING__MAX_WAIT_MS", "100")];
    let mut s = Server::start(&gallery, &envs);
    let a = image_bytes("class_0/7.jpg");
    let b = image_bytes("class_2/8.jpg");
    let r = s.form(
        "/v1/gallery",
        &[
            ("images", Some("a.jpg"), &a),
            ("ids", None, b"user/a"),
            ("breeds", None, b"Pug"),
            ("metadata", None, br#"{"owner": "ann"}"#),
        ],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&b);
    let r = s.json(
        "POST",
        "/v1/gallery",
        &json!({"images": [b64], "ids": ["user/b"], "breeds": ["Pug"], "metadata": [{"n": 2}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["total"], 38);
    let r = s.call("DELETE", "/v1/gallery/class_0/0", &[], &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["total"], 37);

    // Sixteen simultaneous single-image requests share model runs.
    let addr = s.addr.clone();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let addr = addr.clone();
            let img = image_bytes(&format!("class_1/{}.jpg", i % 12));
            std::thread::spawn(move || {
                send(
                    &addr,
                    "POST",
                    "/v1/embed",
                    &[("Content-Type", "image/jpeg")],
                    &img,
                )
                .expect("request")
                .status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("join"), 200);
    }
    let metrics = s.call("GET", "/metrics", &[], &[]).text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let (sum, count) = (
        value("simsiam_batch_size_sum "),
        value("simsiam_batch_size_count "),
    );
    assert!(
        sum > count,
        "no model run held more than one image: sum {sum}, runs {count}"
    );
    assert!(value("simsiam_batch_size_bucket{le=\"1\"} ") < count);

    // Graceful stop flushes; a new process sees the same gallery.
    let log = s.stop();
    assert!(log.contains("flushing the gallery"), "{log}");
    let s = Server::start(&gallery, &envs);
    let counts = s.call("GET", "/v1/gallery", &[], &[]).json();
    assert_eq!(counts["total"], 37);
    assert_eq!(counts["by_breed"]["Pug"], 2);
    let r = s.json(
        "POST",
        "/v1/search",
        &json!({"images": [b64], "k": 1, "breed": "Pug"}),
    );
    let hit = r.json()["results"][0]["neighbors"][0].clone();
    assert_eq!(hit["id"], "user/b");
    assert_eq!(hit["metadata"]["n"], 2);
    let r = s.raw("/v1/search?k=36", &image_bytes("class_0/0.jpg"));
    let ids: Vec<Value> = r.json()["results"][0]["neighbors"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["id"].clone())
        .collect();
    assert!(
        !ids.contains(&json!("class_0/0")),
        "a deleted entry came back"
    );
    assert_eq!(
        s.call("DELETE", "/v1/gallery/class_0/0", &[], &[]).status,
        404
    );
}

#[test]
fn the_curl_client_works_against_a_real_server() {
    // The Python and TypeScript clients have test suites of their own (clients/*/tests),
    // which `make test` runs against the server binary.
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(
        &dir.path().join("gallery"),
        &[("SIMSIAM_SERVER_AUTH__API_KEY", "k3y")],
    );
    let url = format!("http://{}", s.addr);
    let image = fixture().data.join("class_1/2.jpg");
    let root = Path::new(ROOT).join("clients");
    let out = Command::new("bash")
        .arg(root.join("curl.sh"))
        .arg(&image)
        .arg(&url)
        .env("API_KEY", "k3y")
        .output()
        .expect("bash clients/curl.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"predictions\"") && stdout.contains("\"neighbors\""),
        "{stdout}"
    );
    assert!(stdout.contains("\"deleted\":\"curl-example\""), "{stdout}");
}

#[test]
fn the_openai_embeddings_route_gives_the_same_vectors_in_both_encodings() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(&dir.path().join("gallery"), &[]);
    let jpeg: Vec<Vec<u8>> = ["class_0/3.jpg", "class_2/9.jpg"]
        .iter()
        .map(|f| image_bytes(f))
        .collect();
    let b64: Vec<String> = jpeg
        .iter()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .collect();
    let reference = vectors(&s.json("POST", "/v1/embed", &json!({ "images": b64 })));
    let input = json!([format!("data:image/jpeg;base64,{}", b64[0]), b64[1]]);
    let float = s.json(
        "POST",
        "/v1/embeddings",
        &json!({"model": "default", "input": input, "encoding_format": "float"}),
    );
    assert_eq!(float.status, 200, "{}", float.text());
    let v = float.json();
    assert_eq!(
        (v["object"].as_str(), v["model"].as_str()),
        (Some("list"), Some("fixture@0.0.0"))
    );
    assert_eq!(v["usage"]["total_tokens"], 0);
    let as_floats: Vec<Vec<f32>> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(
                (d["object"].as_str(), d["index"].as_u64()),
                (Some("embedding"), Some(i as u64))
            );
            serde_json::from_value(d["embedding"].clone()).expect("floats")
        })
        .collect();
    let base64 = s.json(
        "POST",
        "/v1/embeddings",
        &json!({"model": "fixture", "input": input, "encoding_format": "base64", "user": "u1"}),
    );
    assert_eq!(base64.status, 200, "{}", base64.text());
    let as_base64: Vec<Vec<f32>> = base64.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(d["embedding"].as_str().expect("a string"))
                .expect("base64");
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .collect();
    for got in [&as_floats, &as_base64] {
        for (a, b) in got.iter().zip(&reference) {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-6, "{worst}");
        }
    }
    // Errors keep this API's code and message and carry OpenAI's type and param.
    for (body, status, code, param) in [
        (
            json!({"model": "gpt-4", "input": b64[0]}),
            404,
            "model_not_found",
            json!("model"),
        ),
        (
            json!({"model": "default", "input": b64[0], "encoding_format": "int8"}),
            422,
            "invalid_parameter",
            json!("encoding_format"),
        ),
        (
            json!({"model": "default", "input": [3]}),
            422,
            "invalid_parameter",
            json!("input"),
        ),
        (
            json!({"model": "default", "input": "a dog"}),
            400,
            "bad_image",
            json!(null),
        ),
    ] {
        let r = s.json("POST", "/v1/embeddings", &body);
        let e = &r.json()["error"];
        assert_eq!(
            (r.status, error_code(&r)),
            (status, code.to_string()),
            "{}",
            r.text()
        );
        assert_eq!(e["param"], param, "{}", r.text());
        assert_eq!(e["type"], "invalid_request_error", "{}", r.text());
    }
    let metrics = s.call("GET", "/metrics", &[], &[]).text();
    assert!(
        metrics.contains("simsiam_http_requests_total{route=\"/v1/embeddings\",status=\"200\"} 2"),
        "{metrics}"
    );
}
