//! End-to-end tests of the `server` binary: a bundle built in this process from seeded
//! random weights (`simsiam_onnx::fixture`: the real ONNX writer, probe and manifest, no
//! libtorch, no training), the real executable on a loopback port, every route and every
//! error status. That the served embeddings equal the trainer's is checked on the
//! trainer's side (`crates/trainer/tests/cli.rs`), where libtorch is.
//!
//! One integration-test binary, as ripgrep does.

use base64::Engine;
use schema::send;
use serde_json::{json, Value};
use simsiam::bundle::Bundle;
use simsiam::runtime;
use simsiam_bench::client::{multipart, Response};
use simsiam_onnx::fixture::{self, FixtureSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod errors;
mod hostile;
mod linkage;
mod postgres;
mod providers;
mod reliability;
mod routes;
mod schema;
mod storage;

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
    /// The server on the fixture bundle, its gallery in `gallery`.
    fn start(gallery: &Path, envs: &[(&str, &str)]) -> Server {
        Self::start_with(&fixture().bundle, gallery, envs)
    }

    /// The server on `bundle`; returns once it answers `/healthz`.
    fn start_with(bundle: &Path, gallery: &Path, envs: &[(&str, &str)]) -> Server {
        let port = free_port();
        // Not beside the gallery: a test may fill the gallery's disk.
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("server-{port}.log"));
        let mut cmd = Command::new(SERVER);
        // From the project folder, as users run it: `config/server.toml` is read.
        cmd.current_dir(ROOT)
            .arg("--model")
            .arg(bundle)
            .args(["--port", &port.to_string()])
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
            if send(&s.addr, "GET", "/healthz", &[], &[]).is_ok_and(|r| r.status == 200) {
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

    /// SIGKILL: no shutdown, no flush.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        send(&self.addr, method, path, headers, body).expect("HTTP request")
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

/// Whatever a test did, no input may reach a panic: every server's log is checked when
/// it goes (unless the test already failed).
impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let log = self.log_text();
        if !std::thread::panicking() {
            assert!(!log.contains("panicked"), "the server panicked:\n{log}");
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
