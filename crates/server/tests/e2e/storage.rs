//! The embedded gallery on a small filesystem that fills up while clients add photos: a
//! 16 MB tmpfs the test mounts. Mounting needs root (and a container that allows it):
//! without it the test says why and passes without checking anything.

use super::*;
use std::fs::OpenOptions;
use std::io::Write;

/// A tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(megabytes: usize) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem to the last byte with `filler`, then frees `leave` bytes.
    fn fill(&self, leave: u64) {
        let path = self.path().join("filler");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("filler");
        let chunk = vec![1u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..4096]).is_ok() {}
        let len = f.metadata().expect("meta").len();
        f.set_len(len.saturating_sub(leave)).expect("free");
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).expect("free");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Adds one photo per request until the server has refused `refusals` in a row: the ids
/// acknowledged, and every status seen.
fn add_until_full(s: &Server, prefix: &str, refusals: usize) -> (Vec<String>, Vec<u16>) {
    let image = image_bytes("class_1/4.jpg");
    let (mut acked, mut statuses, mut in_a_row) = (Vec::new(), Vec::new(), 0);
    for n in 0..5000 {
        let id = format!("{prefix}-{n}");
        let r = s.form(
            "/v1/gallery",
            &[
                ("images", Some("a.jpg"), &image),
                ("ids", None, id.as_bytes()),
            ],
        );
        statuses.push(r.status);
        if r.status == 201 {
            acked.push(id);
            in_a_row = 0;
        } else {
            assert_eq!(
                (r.status, error_code(&r).as_str()),
                (507, "insufficient_storage"),
                "{}",
                r.text()
            );
            in_a_row += 1;
            if in_a_row == refusals {
                break;
            }
        }
    }
    (acked, statuses)
}

fn missing(s: &Server, ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter(|id| {
            s.call("DELETE", &format!("/v1/gallery/{id}"), &[], &[])
                .status
                != 200
        })
        .cloned()
        .collect()
}

#[test]
fn a_full_disk_answers_507_keeps_searching_and_readiness_returns_by_itself() {
    let fs = match Tmpfs::mount(16) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: the full-disk test mounts a tmpfs, and cannot here: {why}");
            return;
        }
    };
    let gallery = fs.path().join("gallery");
    let envs = [
        ("SIMSIAM_SERVER_GALLERY__WATCH_INTERVAL_S", "1"),
        ("SIMSIAM_SERVER_GALLERY__LOW_SPACE_WARNING_MB", "8"),
    ];
    let mut s = Server::start(&gallery, &envs);
    let image = image_bytes("class_0/2.jpg");
    assert_eq!(s.call("GET", "/readyz", &[], &[]).status, 200);

    // Full, with room for a few adds.
    fs.fill(64 << 10);
    let (first, statuses) = add_until_full(&s, "a", 3);
    let r = s.form(
        "/v1/gallery",
        &[("images", Some("a.jpg"), &image), ("ids", None, b"x")],
    );
    assert_eq!(r.status, 507, "{}", r.text());
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("No space left on device") && message.contains("gallery.log"),
        "{message}"
    );
    let r = s.raw("/v1/search?k=3", &image);
    assert_eq!(r.status, 200, "searches go on: {}", r.text());
    let r = s.call("GET", "/readyz", &[], &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("No space left on device"), "{}", r.text());
    // The watchdog's next look (every second) sees the disk low.
    let looked = Instant::now();
    let free = loop {
        let metrics = s.call("GET", "/metrics", &[], &[]).text();
        let free: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("simsiam_gallery_free_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no free-space gauge:\n{metrics}"));
        if free < 1e6 || looked.elapsed() > Duration::from_secs(10) {
            break free;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(free < 1e6, "{free} bytes free");
    assert!(
        s.log_text().contains("below gallery.low_space_warning_mb"),
        "{}",
        s.log_text()
    );

    // Space returns; readiness follows with no write in between.
    fs.free();
    let freed = Instant::now();
    while s.call("GET", "/readyz", &[], &[]).status != 200 {
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "still unready 10 s after space returned:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = freed.elapsed();

    // Full again, then SIGKILL: every acknowledged add is there after a restart.
    fs.fill(64 << 10);
    let (second, _) = add_until_full(&s, "b", 2);
    s.kill();
    fs.free();
    let mut s = Server::start(&gallery, &envs);
    let acked: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        missing(&s, &acked),
        Vec::<String>::new(),
        "acknowledged adds lost"
    );

    // Full at a clean shutdown: its compaction gives up and leaves nothing behind.
    let (third, _) = {
        fs.fill(64 << 10);
        add_until_full(&s, "c", 2)
    };
    let log = s.stop();
    assert!(
        log.contains("a compaction needs about"),
        "the shutdown's compaction was not refused:\n{log}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&gallery)
        .expect("gallery dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp") || n == ".write-probe")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fs.free();
    let s = Server::start(&gallery, &envs);
    assert_eq!(missing(&s, &third), Vec::<String>::new());
    eprintln!(
        "full disk: {} adds acknowledged then {} answered 507 (statuses {:?}); ready {:.1} s after space returned; {} + {} adds acknowledged around a SIGKILL and a full shutdown, none lost",
        first.len(),
        statuses.iter().filter(|&&c| c == 507).count(),
        statuses.iter().collect::<std::collections::BTreeSet<_>>(),
        back.as_secs_f64(),
        second.len(),
        third.len()
    );
}
