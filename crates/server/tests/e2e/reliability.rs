//! Reliability: readiness under load, bundles whose parts disagree, galleries of another
//! model, and acknowledged gallery writes across SIGKILLs.

use super::*;
use simsiam::bundle::{self, Manifest};
use simsiam::probe::LinearProbe;
use simsiam_bench::client::request;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn readiness_stays_200_under_full_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(&dir.path().join("gallery"), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // 16 clients, each sending 32 images per request: more than the queue holds, so some
    // are refused with 503 overloaded, which is the server shedding load, not failing.
    let images: Vec<Vec<u8>> = (0..32)
        .map(|i| image_bytes(&format!("class_{}/{}.jpg", i % 3, i % 12)))
        .collect();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (addr, stop, images) = (s.addr.clone(), stop.clone(), images.clone());
            std::thread::spawn(move || {
                let parts: Vec<(&str, Option<&str>, &[u8])> = images
                    .iter()
                    .map(|b| ("images", Some("x.jpg"), b.as_slice()))
                    .collect();
                let (body, ct) = multipart(&parts);
                let mut statuses = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) {
                    // Load, counted and not examined: unchecked, so that checking does not
                    // take the CPU the server under test needs.
                    let r = request(&addr, "POST", "/v1/embed", &[("Content-Type", &ct)], &body);
                    *statuses.entry(r.map_or(0, |r| r.status)).or_insert(0) += 1;
                }
                statuses
            })
        })
        .collect();
    let (mut ready, mut not_ready) = (0, Vec::new());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        let r = s.call("GET", "/readyz", &[], &[]);
        if r.status == 200 {
            ready += 1;
        } else {
            not_ready.push((r.status, r.text()));
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/readyz took {:?} under load",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    let mut statuses = BTreeMap::new();
    for c in clients {
        for (k, v) in c.join().expect("client") {
            *statuses.entry(k).or_insert(0) += v;
        }
    }
    eprintln!("readyz 200 × {ready}; client statuses {statuses:?}");
    assert!(
        not_ready.is_empty(),
        "/readyz failed under load: {not_ready:?}"
    );
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(
        statuses.keys().all(|k| *k == 200 || *k == 503),
        "only 200 and 503 overloaded: {statuses:?}"
    );
    let idle = s.call("GET", "/readyz", &[], &[]);
    assert_eq!(idle.status, 200, "{}", idle.text());
}

/// A copy of the fixture bundle in `dir`, changed by `change` (probe, manifest), with the
/// manifest's hashes written again so the checksum check passes.
fn altered_bundle(dir: &Path, change: impl FnOnce(&mut LinearProbe, &mut Manifest)) -> PathBuf {
    let out = dir.join("bundle");
    std::fs::create_dir_all(&out).expect("mkdir");
    for e in std::fs::read_dir(&fixture().bundle).expect("bundle") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, out.join(p.file_name().expect("name"))).expect("copy");
    }
    let b = Bundle::open(&out).expect("bundle");
    let mut probe = LinearProbe::load(&out.join(bundle::PROBE)).expect("probe");
    let mut manifest = b.manifest.clone();
    change(&mut probe, &mut manifest);
    probe.save(&out.join(bundle::PROBE)).expect("save probe");
    let files: Vec<&str> = b.manifest.files.keys().map(String::as_str).collect();
    bundle::write_manifest(&out, &mut manifest, &files).expect("manifest");
    out
}

/// Starts the server on `bundle` and expects it to stop at start-up; its error output.
fn start_fails(bundle: &Path, gallery: &Path, envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(SERVER);
    cmd.current_dir(ROOT)
        .arg("--model")
        .arg(bundle)
        .arg("--gallery-dir")
        .arg(gallery);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run server");
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bundle_whose_parts_disagree_stops_start_up_naming_both_values() {
    let dir = tempfile::tempdir().expect("tmp");
    let g = dir.path().join("gallery");
    // A probe with a fourth class (the fault that indexed out of range in classify).
    let four = altered_bundle(&dir.path().join("a"), |p, _| {
        p.classes.push("class_3".into());
        p.bias.push(0.0);
        p.weight.extend(vec![0.0; p.feature_dim]);
    });
    let err = start_fails(&four, &g, &[]);
    assert!(
        err.contains("the probe has 4 classes, the manifest 3"),
        "{err}"
    );
    // A manifest that promises 256-d embeddings from a 512-d encoder (probe to match).
    let narrow = altered_bundle(&dir.path().join("b"), |p, m| {
        m.embedding.dim = 256;
        p.feature_dim = 256;
        p.mean.truncate(256);
        p.std.truncate(256);
        let classes = p.classes.len();
        p.weight = vec![0.0; classes * 256];
    });
    let err = start_fails(&narrow, &g, &[]);
    assert!(
        err.contains(
            "the manifest says 256-d embeddings, but encoder.onnx gives outputs of shape [1, 512]"
        ),
        "{err}"
    );
}

#[test]
fn a_gallery_of_another_model_is_refused_or_reseeded_when_configured() {
    let dir = tempfile::tempdir().expect("tmp");
    let gallery = dir.path().join("gallery");
    let mut s = Server::start(&gallery, &[]);
    let r = s.form(
        "/v1/gallery",
        &[
            ("images", Some("a.jpg"), &image_bytes("class_0/1.jpg")),
            ("ids", None, b"mine"),
        ],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    s.stop();
    // The same classes and files, another encoder (another seed): another model.
    let images = fixture::write_image_folder(&dir.path().join("images"), 3, 2).expect("images");
    let other = dir.path().join("other");
    let mut spec = FixtureSpec::new((0..3).map(|c| format!("class_{c}")).collect());
    spec.seed = 8;
    fixture::write_bundle(&other, &spec, &images).expect("bundle");
    let err = start_fails(&other, &gallery, &[]);
    assert!(
        err.contains("was embedded by model fixture@0.0.0 (encoder")
            && err.contains("but this server runs fixture@0.0.0 (encoder")
            && err.contains("on_model_change"),
        "{err}"
    );
    let s = Server::start_with(
        &other,
        &gallery,
        &[("SIMSIAM_SERVER_GALLERY__ON_MODEL_CHANGE", "reseed")],
    );
    let counts = s.call("GET", "/v1/gallery", &[], &[]).json();
    assert_eq!(
        counts["total"], 6,
        "re-seeded from the other bundle: {counts}"
    );
    assert!(gallery.join("gallery.bin.previous-model").is_file());
    assert!(s.log_text().contains("re-seeded"));
}

/// One client's gallery operations and whether the server acknowledged each.
pub(super) struct Log {
    pub(super) ops: Vec<(String, bool, bool)>,
}

/// Adds and deletes on ids of its own until `stop`, through kills and restarts: an
/// operation counts as acknowledged only when its 201/200 arrived.
fn gallery_client(k: usize, addr: Arc<std::sync::Mutex<String>>, stop: Arc<AtomicBool>) -> Log {
    let image = image_bytes(&format!("class_{}/{}.jpg", k % 3, k));
    let mut log = Log { ops: Vec::new() };
    let mut live: Vec<String> = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let addr = addr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        n += 1;
        // Two adds for each delete, so the gallery grows and deletes have targets.
        if n.is_multiple_of(3) && !live.is_empty() {
            let id = live.remove(n % live.len());
            let r = send(&addr, "DELETE", &format!("/v1/gallery/{id}"), &[], &[]);
            let acked = r.as_ref().is_ok_and(|r| r.status == 200);
            log.ops.push((id, false, acked));
        } else {
            let id = format!("c{k}/{n}");
            let (body, ct) = multipart(&[
                ("images", Some("a.jpg"), &image),
                ("ids", None, id.as_bytes()),
            ]);
            let r = send(
                &addr,
                "POST",
                "/v1/gallery",
                &[("Content-Type", &ct)],
                &body,
            );
            let acked = r.as_ref().is_ok_and(|r| r.status == 201);
            if acked {
                live.push(id.clone());
            }
            log.ops.push((id, true, acked));
        }
        if !log.ops.last().is_some_and(|o| o.2) {
            std::thread::sleep(Duration::from_millis(20)); // the server is down
        }
    }
    log
}

/// Whether each id must be present (`Some(true)`), absent (`Some(false)`), or either: an
/// unacknowledged operation may or may not have happened.
fn expected(logs: &[Log]) -> BTreeMap<String, Option<bool>> {
    let mut state = BTreeMap::new();
    for log in logs {
        for (id, add, acked) in &log.ops {
            state.insert(id.clone(), acked.then_some(*add));
        }
    }
    state
}

/// `clients` gallery writers on `server` while it is SIGKILLed `kills` times at random
/// moments (the seed is printed) and replaced by `restart()`; the last server and the
/// writers' logs.
pub(super) fn write_through_kills(
    mut server: Server,
    clients: usize,
    kills: usize,
    restart: impl Fn() -> Server,
) -> (Server, Vec<Log>) {
    let addr = Arc::new(std::sync::Mutex::new(server.addr.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..clients)
        .map(|k| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || gallery_client(k, addr, stop))
        })
        .collect();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64 | 1);
    eprintln!("kill delays from seed {seed}");
    for _ in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 600));
        server.kill();
        server = restart();
        *addr.lock().unwrap_or_else(|e| e.into_inner()) = server.addr.clone();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let logs = writers
        .into_iter()
        .map(|c| c.join().expect("writer"))
        .collect();
    (server, logs)
}

/// Checks through `server` that every acknowledged write of `logs` holds (each id is
/// deleted, whose answer says whether it was there): panics naming the lost ones.
pub(super) fn assert_no_write_lost(logs: &[Log], server: &Server, what: &str) {
    let acked = logs.iter().flat_map(|l| &l.ops).filter(|o| o.2).count();
    let mut lost = Vec::new();
    for (id, want) in expected(logs) {
        let Some(present) = want else { continue };
        let status = server
            .call("DELETE", &format!("/v1/gallery/{id}"), &[], &[])
            .status;
        if (status == 200) != present {
            lost.push((id, present, status));
        }
    }
    eprintln!("{what}, {acked} acknowledged writes, {} lost", lost.len());
    assert!(acked > 0, "no write was acknowledged");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[test]
fn acknowledged_gallery_writes_survive_sigkill() {
    let kills: usize = std::env::var("SIMSIAM_TEST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("tmp");
    let gallery = dir.path().join("gallery");
    let s = Server::start(&gallery, &[]);
    let (s, logs) = write_through_kills(s, 4, kills, || Server::start(&gallery, &[]));
    assert_no_write_lost(&logs, &s, &format!("{kills} kills"));
}
