//! End-to-end tests of the `server` binary: a bundle built in this process from seeded
//! random weights (`simsiam_onnx::fixture`: the real ONNX writer, probe and manifest, no
//! libtorch, no training), the real executable on a loopback port, every route and every
//! error status. That the served embeddings equal the trainer's is checked on the
//! trainer's side (`crates/trainer/tests/cli.rs`), where libtorch is.
//!
//! One integration-test binary, as ripgrep does.

use base64::Engine;
use serde_json::{json, Value};
use simsiam::bundle::Bundle;
use simsiam::runtime;
use simsiam_onnx::fixture::{self, FixtureSpec};
use simsiam_server::client::{multipart, request, Response};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SERVER: &str = env!("CARGO_BIN_EXE_server");
/// The project folder (clients, Cargo.lock).
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A 3-class bundle with a seed gallery of its 36 generated images, built once for all
/// tests.
struct Fixture {
    data: PathBuf,
    bundle: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("images");
        let images = fixture::write_image_folder(&data, 3, 12).expect("images");
        let classes = (0..3).map(|c| format!("class_{c}")).collect();
        let bundle = dir.join("bundle");
        fixture::write_bundle(&bundle, &FixtureSpec::new(classes), &images).expect("bundle");
        Fixture { data, bundle }
    })
}

/// A running server; stopped (SIGTERM, then waited for) on drop.
struct Server {
    child: Option<Child>,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn start(gallery: &Path, envs: &[(&str, &str)]) -> Server {
        let port = free_port();
        let log = gallery.with_extension(format!("{port}.log"));
        let mut cmd = Command::new(SERVER);
        // From the project folder, as users run it: `config/server.toml` is read.
        cmd.current_dir(ROOT)
            .args([
                "--model",
                fixture().bundle.to_str().expect("utf8"),
                "--port",
                &port.to_string(),
            ])
            .arg("--gallery-dir")
            .arg(gallery)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut s = Server {
            child: Some(cmd.spawn().expect("start server")),
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if request(&s.addr, "GET", "/healthz", &[], &[]).is_ok_and(|r| r.status == 200) {
                return s;
            }
            let exited = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "server did not start:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(&self.addr, method, path, headers, body).expect("HTTP request")
    }

    fn json(&self, method: &str, path: &str, body: &Value) -> Response {
        self.call(
            method,
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    fn raw(&self, path: &str, image: &[u8]) -> Response {
        self.call("POST", path, &[("Content-Type", "image/jpeg")], image)
    }

    fn form(&self, path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Response {
        let (body, ct) = multipart(parts);
        self.call("POST", path, &[("Content-Type", &ct)], &body)
    }

    /// SIGTERM (graceful shutdown), wait, and return the log.
    fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let status = c.wait().expect("wait");
            assert!(
                status.success(),
                "server exit {status}:\n{}",
                self.log_text()
            );
        }
        self.log_text()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn image_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(fixture().data.join(rel)).expect("image")
}

fn error_code(r: &Response) -> String {
    let v = r.json();
    assert!(
        v["error"]["message"].is_string(),
        "not a JSON error: {} {}",
        r.status,
        r.text()
    );
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

fn vectors(r: &Response) -> Vec<Vec<f32>> {
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_value(r.json()["embeddings"].clone()).expect("embeddings")
}

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
    let raw = vectors(&s.raw("/v1/embed", &jpeg[0]));
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

/// A PNG whose header claims `w`×`h` pixels, with almost no pixel data: a decompression
/// bomb's signature, which must be refused before any decoding.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(&body);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn every_error_has_its_status_and_a_json_body() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(
        &dir.path().join("gallery"),
        &[
            ("SIMSIAM_SERVER_AUTH__API_KEY", "s3cret"),
            ("SIMSIAM_SERVER_LIMITS__MAX_BODY_BYTES", "200000"),
            ("SIMSIAM_SERVER_LIMITS__MAX_IMAGES", "2"),
            ("SIMSIAM_SERVER_BATCHING__QUEUE_CAPACITY", "2"),
            (
                "SIMSIAM_SERVER_CORS__ALLOWED_ORIGINS",
                "https://dogs.example",
            ),
        ],
    );
    let auth = ("Authorization", "Bearer s3cret");
    let jpeg = image_bytes("class_0/1.jpg");
    let call = |method: &str, path: &str, ct: &str, body: &[u8]| {
        s.call(method, path, &[auth, ("Content-Type", ct)], body)
    };
    let expect = |r: Response, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(error_code(&r), code, "{}", r.text());
        r
    };
    // 401: no key, wrong key; health and docs stay public.
    expect(s.raw("/v1/embed", &jpeg), 401, "unauthorized");
    expect(
        s.call(
            "POST",
            "/v1/embed",
            &[
                ("Authorization", "Bearer s3creT"),
                ("Content-Type", "image/jpeg"),
            ],
            &jpeg,
        ),
        401,
        "unauthorized",
    );
    assert_eq!(s.call("GET", "/healthz", &[], &[]).status, 200);
    assert_eq!(call("POST", "/v1/embed", "image/jpeg", &jpeg).status, 200);
    // 400: not an image, truncated image, bad JSON, bad base64.
    let r = expect(
        call(
            "POST",
            "/v1/embed",
            "image/jpeg",
            b"definitely not an image",
        ),
        400,
        "bad_image",
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .expect("msg")
        .starts_with("image 0"));
    expect(
        call(
            "POST",
            "/v1/classify",
            "image/jpeg",
            &jpeg[..jpeg.len() / 2],
        ),
        400,
        "bad_image",
    );
    expect(
        call("POST", "/v1/embed", "application/json", b"{\"images\": ["),
        400,
        "bad_request",
    );
    expect(
        call(
            "POST",
            "/v1/embed",
            "application/json",
            b"{\"images\": [\"%%%\"]}",
        ),
        400,
        "bad_request",
    );
    // 404: unknown route, unknown gallery id. 405: wrong method.
    expect(call("GET", "/v2/nothing", "", b""), 404, "not_found");
    expect(
        call("DELETE", "/v1/gallery/no-such-id", "", b""),
        404,
        "not_found",
    );
    expect(call("GET", "/v1/embed", "", b""), 405, "method_not_allowed");
    // 413: body over the limit, too many images, too many pixels (checked before decoding).
    expect(
        call("POST", "/v1/embed", "image/jpeg", &vec![0u8; 300_000]),
        413,
        "too_large",
    );
    let (body, ct) = multipart(&[
        ("images", Some("a.jpg"), &jpeg),
        ("images", Some("b.jpg"), &jpeg),
        ("images", Some("c.jpg"), &jpeg),
    ]);
    expect(call("POST", "/v1/embed", &ct, &body), 413, "too_large");
    let r = expect(
        call(
            "POST",
            "/v1/embed",
            "image/png",
            &png_header(30_000, 30_000),
        ),
        413,
        "too_large",
    );
    assert!(r.text().contains("30000"), "{}", r.text());
    // 415: a content type the API does not take.
    expect(
        call("POST", "/v1/embed", "text/plain", b"hello"),
        415,
        "unsupported_media_type",
    );
    // 422: out-of-range or unknown parameters, wrong vector length, no images.
    expect(
        call("POST", "/v1/classify?top_k=0", "image/jpeg", &jpeg),
        422,
        "unprocessable",
    );
    expect(
        call("POST", "/v1/search?k=100000", "image/jpeg", &jpeg),
        422,
        "unprocessable",
    );
    expect(
        call("POST", "/v1/search?colour=red", "image/jpeg", &jpeg),
        422,
        "unprocessable",
    );
    expect(
        call(
            "POST",
            "/v1/search",
            "application/json",
            br#"{"vectors": [[1.0, 2.0]]}"#,
        ),
        422,
        "unprocessable",
    );
    expect(
        call(
            "POST",
            "/v1/embed",
            "application/json",
            br#"{"images": []}"#,
        ),
        422,
        "unprocessable",
    );
    expect(
        call("POST", "/v1/gallery", "image/jpeg", &jpeg),
        422,
        "unprocessable",
    );
    // CORS: the configured origin is allowed, others are not.
    let r = s.call(
        "GET",
        "/healthz",
        &[("Origin", "https://dogs.example")],
        &[],
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://dogs.example")
    );
    let r = s.call(
        "GET",
        "/healthz",
        &[("Origin", "https://evil.example")],
        &[],
    );
    assert!(r.header("access-control-allow-origin").is_none());
    // The server is still healthy after all of that.
    assert_eq!(call("POST", "/v1/embed", "image/jpeg", &jpeg).status, 200);
}

/// A request whose body arrives in two parts, the second when the test says so.
struct SlowUpload {
    stream: std::net::TcpStream,
    rest: Vec<u8>,
}

impl SlowUpload {
    /// Sends the headers and half of a raw JPEG body to `POST /v1/embed`.
    fn start(addr: &str, jpeg: &[u8]) -> SlowUpload {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let head = format!(
            "POST /v1/embed HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        let half = jpeg.len() / 2;
        stream.write_all(head.as_bytes()).expect("head");
        stream.write_all(&jpeg[..half]).expect("first half");
        stream.flush().expect("flush");
        SlowUpload {
            stream,
            rest: jpeg[half..].to_vec(),
        }
    }

    /// Sends the rest of the body (if `finish`) and returns the answer's status line.
    fn status(mut self, finish: bool) -> String {
        use std::io::{BufRead, Write};
        if finish {
            self.stream.write_all(&self.rest).expect("second half");
        }
        let mut line = String::new();
        std::io::BufReader::new(self.stream)
            .read_line(&mut line)
            .expect("status line");
        line
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_slow_requests_time_out() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(
        &dir.path().join("gallery"),
        &[
            // A run waits up to 3 s for requests still on their way.
            ("SIMSIAM_SERVER_BATCHING__MAX_WAIT_MS", "3000"),
            ("SIMSIAM_SERVER_BATCHING__QUEUE_CAPACITY", "2"),
            ("SIMSIAM_SERVER_LIMITS__MAX_IMAGES", "2"),
            ("SIMSIAM_SERVER_LIMITS__REQUEST_TIMEOUT_S", "2"),
        ],
    );
    let jpeg = image_bytes("class_2/3.jpg");
    // A request still uploading is on its way: the run for the next one waits for it,
    // and that one holds its queue slot meanwhile.
    let uploading = SlowUpload::start(&s.addr, &jpeg);
    std::thread::sleep(Duration::from_millis(300));
    let addr = s.addr.clone();
    let queued = {
        let jpeg = jpeg.clone();
        std::thread::spawn(move || {
            request(
                &addr,
                "POST",
                "/v1/embed",
                &[("Content-Type", "image/jpeg")],
                &jpeg,
            )
            .expect("request")
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (body, ct) = multipart(&[
        ("images", Some("a.jpg"), &jpeg),
        ("images", Some("b.jpg"), &jpeg),
    ]);
    let r = s.call("POST", "/v1/embed", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(error_code(&r), "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    // The upload completes: both requests share one run and succeed.
    let status = uploading.status(true);
    assert!(status.contains(" 200 "), "{status}");
    let r = queued.join().expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    // An upload that never completes ends with 504 after the request timeout.
    let started = Instant::now();
    let status = SlowUpload::start(&s.addr, &jpeg).status(false);
    assert!(status.contains(" 504 "), "{status}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
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
                request(
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
fn start_up_failures_end_with_one_clear_message() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tmp");
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = Command::new(SERVER);
        cmd.current_dir(ROOT)
            .args(args)
            .arg("--gallery-dir")
            .arg(dir.path().join("g"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run server");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--model", "/no/such/bundle"], &[]);
    assert!(
        err.contains("/no/such/bundle") && err.contains("manifest.json"),
        "{err}"
    );
    // A corrupt bundle: one flipped byte in the encoder.
    let bad = dir.path().join("bad-bundle");
    std::fs::create_dir_all(&bad).expect("mkdir");
    for e in std::fs::read_dir(&f.bundle).expect("bundle") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, bad.join(p.file_name().expect("name"))).expect("copy");
    }
    let onnx = bad.join("encoder.onnx");
    let mut bytes = std::fs::read(&onnx).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&onnx, bytes).expect("write");
    let err = run(&["--model", bad.to_str().expect("utf8")], &[]);
    assert!(
        err.contains("encoder.onnx") && err.contains("sha256"),
        "{err}"
    );
    let model = f.bundle.to_str().expect("utf8");
    let err = run(
        &["--model", model],
        &[("SIMSIAM_SERVER_BATCHING__MAX_BATCH", "0")],
    );
    assert!(err.contains("batching.max_batch"), "{err}");
    let err = run(&["--model", model], &[("SIMSIAM_SERVER_HTTP__PROT", "1")]);
    assert!(err.contains("prot"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let err = run(&["--model", model, "--port", &port], &[]);
    assert!(
        err.contains("cannot listen on") && err.contains(&port),
        "{err}"
    );
}

#[test]
fn the_server_binary_does_not_link_libtorch() {
    let out = Command::new("readelf")
        .args(["-d", SERVER])
        .output()
        .expect("readelf (binutils) is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(!needed.is_empty(), "{text}");
    assert!(
        needed
            .iter()
            .all(|l| !l.contains("libtorch") && !l.contains("libc10")),
        "{needed:#?}"
    );
    // No search path into a torch installation either (the trainer's build script bakes
    // one into the trainer only).
    let paths: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .collect();
    assert!(paths.iter().all(|l| !l.contains("torch")), "{paths:#?}");
}

/// Every package `simsiam-server` can reach in `Cargo.lock`, itself included. The lock
/// file lists each package's dependencies of every kind, dev-dependencies included, so
/// this is a superset of what the server binary is built from.
fn lock_closure(lock: &str, from: &str) -> std::collections::BTreeSet<String> {
    let mut deps: std::collections::HashMap<String, Vec<String>> = Default::default();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        let name = field("name = ").unwrap_or_default();
        let list = block
            .split("dependencies = [")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or("");
        let names = list
            .split(',')
            .filter_map(|d| d.trim().trim_matches('"').split(' ').next())
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        deps.entry(name).or_default().extend(names);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(deps.get(&p).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_server_crate_depends_on_no_libtorch_plotting_xml_or_mat_code() {
    let lock = std::fs::read_to_string(Path::new(ROOT).join("Cargo.lock")).expect("Cargo.lock");
    let reach = lock_closure(&lock, "simsiam-server");
    assert!(
        reach.contains("actix-web") && reach.contains("ort"),
        "{reach:?}"
    );
    for banned in [
        "tch",
        "torch-sys",
        "simsiam-trainer",
        "plotters",
        "quick-xml",
    ] {
        assert!(!reach.contains(banned), "simsiam-server reaches {banned}");
    }
    // The trainer, by contrast, reaches all of them: the walk does see through the lock.
    let trainer = lock_closure(&lock, "simsiam-trainer");
    for needed in ["tch", "torch-sys", "plotters", "quick-xml"] {
        assert!(trainer.contains(needed), "{needed}");
    }
}

#[test]
fn clients_work_against_a_real_server() {
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

    let py = |args: &[&str]| {
        let out = Command::new("python3")
            .arg(root.join("python/simsiam_client.py"))
            .args(["--url", &url, "--api-key", "k3y"])
            .args(args)
            .output()
            .expect("python3");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let img = image.to_str().expect("utf8");
    let (ok_, stdout, stderr) = py(&["classify", img, "--top-k", "2"]);
    assert!(ok_, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        v["results"][0]["predictions"].as_array().map(Vec::len),
        Some(2)
    );
    let (ok_, stdout, _) = py(&["add", img, "--id", "py/rex", "--breed", "Pug"]);
    assert!(ok_);
    assert!(stdout.contains("py/rex"));
    let (ok_, stdout, _) = py(&["search", img, "--k", "1", "--breed", "Pug"]);
    assert!(ok_ && stdout.contains("py/rex"), "{stdout}");
    let (ok_, _, _) = py(&["delete", "py/rex"]);
    assert!(ok_);
    // A server error reaches the caller as its code and message.
    let (ok_, _, stderr) = py(&["delete", "py/rex"]);
    assert!(!ok_ && stderr.contains("404 not_found"), "{stderr}");
}

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
