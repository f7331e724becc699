//! Every error status with its JSON body, overload and timeouts, and start-up failures.

use super::*;

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
            send(
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
fn the_read_key_reads_and_only_the_admin_key_writes() {
    let dir = tempfile::tempdir().expect("tmp");
    let admin_file = dir.path().join("admin.key");
    std::fs::write(&admin_file, "adm1n\n").expect("key file");
    let s = Server::start(
        &dir.path().join("gallery"),
        &[
            ("SIMSIAM_SERVER_AUTH__READ_KEY", "r3ad"),
            (
                "SIMSIAM_SERVER_AUTH__ADMIN_KEY_FILE",
                admin_file.to_str().expect("utf8"),
            ),
        ],
    );
    let jpeg = image_bytes("class_1/4.jpg");
    let with = |key: &str| format!("Bearer {key}");
    let classify = |key: Option<&str>| {
        let auth = key.map(with);
        let mut h = vec![("Content-Type", "image/jpeg")];
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        s.call("POST", "/v1/classify", &h, &jpeg).status
    };
    assert_eq!(classify(None), 401);
    assert_eq!(classify(Some("wrong")), 401);
    assert_eq!(classify(Some("r3ad")), 200);
    assert_eq!(classify(Some("adm1n")), 200, "the admin key reads too");
    let add = |key: &str| {
        let (body, ct) = multipart(&[("images", Some("a.jpg"), &jpeg), ("ids", None, b"k")]);
        let auth = with(key);
        s.call(
            "POST",
            "/v1/gallery",
            &[("Content-Type", &ct), ("Authorization", &auth)],
            &body,
        )
    };
    let r = add("r3ad");
    assert_eq!((r.status, error_code(&r)), (403, "forbidden".to_string()));
    assert_eq!(add("adm1n").status, 201);
    let metrics = |key: &str| {
        let auth = with(key);
        s.call("GET", "/metrics", &[("Authorization", &auth)], &[])
            .status
    };
    assert_eq!((metrics("r3ad"), metrics("adm1n")), (403, 200));
    let counts = s.call(
        "GET",
        "/v1/gallery",
        &[("Authorization", "Bearer r3ad")],
        &[],
    );
    assert_eq!(counts.status, 200, "gallery counts are a read");
    for public in ["/healthz", "/readyz", "/openapi.json", "/"] {
        assert_eq!(s.call("GET", public, &[], &[]).status, 200, "{public}");
    }
    // Every documented operation asks for the key its security scope names: the scopes in
    // the annotations and the `auth::read` / `auth::admin` wrappers agree.
    let doc = s.call("GET", "/openapi.json", &[], &[]).json();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let scopes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|requirement| requirement["bearer"].as_array())
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let (m, p) = (method.to_uppercase(), path.replace("{id}", "no-such-id"));
            let status = |key: Option<&str>| {
                let auth = key.map(with);
                let headers: Vec<(&str, &str)> =
                    auth.iter().map(|a| ("Authorization", a.as_str())).collect();
                s.call(&m, &p, &headers, &[]).status
            };
            let (none, read) = (status(None), status(Some("r3ad")));
            let agrees = match scopes.as_slice() {
                [] => none != 401 && read != 403,
                ["read"] => none == 401 && read != 401 && read != 403,
                ["admin"] => none == 401 && read == 403,
                other => panic!("{method} {path}: unexpected scopes {other:?}"),
            };
            assert!(
                agrees,
                "{method} {path} {scopes:?}: no key {none}, read key {read}"
            );
        }
    }
}
