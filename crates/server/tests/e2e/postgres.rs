//! The PostgreSQL gallery against a real PostgreSQL with pgvector: PyPI's `pgserver`
//! (installed into `.venv` by `scripts/setup.sh`) starts a throwaway server in a temporary
//! directory. One replica's schema, seed, searches and refusals; two replicas sharing
//! one table, one of them SIGKILLed mid-write.

use super::reliability::{assert_no_write_lost, write_through_kills};
use super::*;

/// A PostgreSQL server in a temporary directory, stopped (SIGQUIT: immediate) on drop.
pub(super) struct Postgres {
    dir: tempfile::TempDir,
    pub(super) url: String,
}

impl Postgres {
    pub(super) fn start() -> Postgres {
        let python = Path::new(ROOT).join(".venv/bin/python");
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("pgdata");
        let out = Command::new(&python)
            .args([
                "-c",
                "import sys, pgserver; print(pgserver.get_server(sys.argv[1], cleanup_mode=None).get_uri())",
            ])
            .arg(&data)
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => panic!(
                "PostgreSQL did not start through pgserver (is it installed? `make setup` puts it in .venv): {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("{} not runnable ({e}): run `make setup` first", python.display()),
        };
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(url.starts_with("postgresql://"), "pgserver gave {url:?}");
        Postgres { dir, url }
    }

    /// The postmaster's process id, from its pid file.
    fn pid(&self) -> Option<i32> {
        let pidfile = self.dir.path().join("pgdata/postmaster.pid");
        std::fs::read_to_string(pidfile)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Environment of a server replica using table `table` of this database.
    pub(super) fn env(&self, table: &str) -> Vec<(String, String)> {
        vec![
            ("SIMSIAM_SERVER_GALLERY__BACKEND".into(), "postgres".into()),
            (
                "SIMSIAM_SERVER_GALLERY__POSTGRES_URL".into(),
                self.url.clone(),
            ),
            (
                "SIMSIAM_SERVER_GALLERY__POSTGRES_TABLE".into(),
                table.into(),
            ),
        ]
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: a signal to the postmaster this test started.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
            }
        }
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn total(s: &Server) -> u64 {
    let r = s.call("GET", "/v1/gallery", &[], &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["total"].as_u64().expect("total")
}

fn add(s: &Server, id: &str, image: &[u8], breed: &str) -> Response {
    s.form(
        "/v1/gallery",
        &[
            ("images", Some("a.jpg"), image),
            ("ids", None, id.as_bytes()),
            ("breeds", None, breed.as_bytes()),
        ],
    )
}

fn neighbour_ids(r: &Response) -> Vec<String> {
    r.json()["results"][0]["neighbors"]
        .as_array()
        .expect("neighbors")
        .iter()
        .map(|h| h["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_postgres_backend_seeds_once_searches_filters_and_refuses_another_model() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tmp");
    let env = pg.env("dogs");
    let mut s = Server::start(&dir.path().join("g"), &env_refs(&env));
    assert!(
        s.log_text().contains("seeded with 36 items"),
        "{}",
        s.log_text()
    );
    assert_eq!(total(&s), 36);
    let ready = s.call("GET", "/readyz", &[], &[]);
    assert_eq!(
        (ready.status, ready.json()["gallery_items"].as_u64()),
        (200, Some(36))
    );

    // A gallery image finds itself first, with its breed and source.
    let jpeg = image_bytes("class_1/5.jpg");
    let r = s.raw("/v1/search?k=3", &jpeg);
    assert_eq!(r.status, 200, "{}", r.text());
    let hit = &r.json()["results"][0]["neighbors"][0];
    assert_eq!(
        (hit["id"].as_str(), hit["breed"].as_str()),
        (Some("class_1/5"), Some("class 1"))
    );
    assert!(hit["score"].as_f64().expect("score") > 0.9999);

    // A rare breed (one entry of 38) still answers k: its rows are ranked exactly.
    assert_eq!(add(&s, "rare/1", &jpeg, "Otterhound").status, 201);
    assert_eq!(
        add(&s, "rare/2", &image_bytes("class_2/1.jpg"), "otterhound").status,
        201
    );
    let r = s.raw("/v1/search?k=5&breed=OTTERHOUND", &jpeg);
    assert_eq!(
        neighbour_ids(&r),
        ["rare/1", "rare/2"],
        "all of the breed, nearest first"
    );
    let r = s.raw("/v1/search?k=4&breed=class_0", &jpeg);
    assert_eq!(neighbour_ids(&r).len(), 4);

    // Replace keeps the count; delete drops it; an unknown id is 404.
    let replaced = add(&s, "rare/2", &jpeg, "Otterhound");
    assert_eq!(replaced.json()["total"], 38);
    assert_eq!(
        s.call("DELETE", "/v1/gallery/rare/1", &[], &[]).json()["total"],
        37
    );
    assert_eq!(s.call("DELETE", "/v1/gallery/rare/1", &[], &[]).status, 404);
    let counts = s.call("GET", "/v1/gallery", &[], &[]).json();
    assert_eq!(counts["by_breed"]["Otterhound"], 1);

    // A restart finds the table as it was: no second seed.
    s.stop();
    let mut s = Server::start(&dir.path().join("g"), &env_refs(&env));
    assert_eq!(total(&s), 37);
    assert!(!s.log_text().contains("seeded with"), "seeded once only");
    s.stop();

    // Another model on the same table is refused at start, naming both and the fix.
    let other = dir.path().join("other");
    let images = fixture::write_image_folder(&other.join("images"), 3, 4).expect("images");
    let mut spec = FixtureSpec::new((0..3).map(|c| format!("class_{c}")).collect());
    spec.seed = 99;
    fixture::write_bundle(&other.join("bundle"), &spec, &images).expect("bundle");
    let out = Command::new(SERVER)
        .current_dir(ROOT)
        .arg("--model")
        .arg(other.join("bundle"))
        .args(["--port", &free_port().to_string()])
        .envs(env.iter().cloned())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("table dogs was embedded by model") && err.contains("gallery.postgres_table"),
        "{err}"
    );
    // Its own table works beside it.
    let env2 = pg.env("dogs_v2");
    let mut s2 = Server::start_with(
        &other.join("bundle"),
        &dir.path().join("g2"),
        &env_refs(&env2),
    );
    assert_eq!(total(&s2), 12);
    s2.stop();
}

#[test]
fn two_replicas_share_one_gallery_and_a_killed_one_loses_no_acknowledged_write() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tmp");
    let env = pg.env("shared");
    // Both start at once: the table is created and seeded exactly once.
    let (a, b) = std::thread::scope(|scope| {
        let start = |name: &'static str| {
            let (dir, env) = (dir.path(), &env);
            scope.spawn(move || Server::start(&dir.join(name), &env_refs(env)))
        };
        let (a, b) = (start("a"), start("b"));
        (a.join().expect("a"), b.join().expect("b"))
    });
    let seeds = [&a, &b]
        .iter()
        .filter(|s| s.log_text().contains("seeded with 36 items"))
        .count();
    assert_eq!(seeds, 1, "exactly one replica seeded");
    assert_eq!((total(&a), total(&b)), (36, 36));

    // An add through one is found through the other; a delete likewise.
    let jpeg = image_bytes("class_2/7.jpg");
    assert_eq!(add(&a, "pug/rex", &jpeg, "Pug").status, 201);
    let r = b.raw("/v1/search?k=1&breed=pug", &jpeg);
    assert_eq!(neighbour_ids(&r), ["pug/rex"]);
    assert_eq!(
        b.call("DELETE", "/v1/gallery/pug/rex", &[], &[]).status,
        200
    );
    let r = a.raw("/v1/search?k=1&breed=pug", &jpeg);
    assert!(
        neighbour_ids(&r).is_empty(),
        "deleted through b, gone through a"
    );

    // Writers on replica a while it is SIGKILLed at random moments and restarted;
    // checked through replica b, which was never killed.
    let restart = || Server::start(&dir.path().join("a"), &env_refs(&env));
    let (_a, logs) = write_through_kills(a, 3, 3, restart);
    assert_no_write_lost(&logs, &b, "3 kills of one replica");
    // The count kept beside the table agrees with the rows.
    let ready = b.call("GET", "/readyz", &[], &[]).json();
    assert_eq!(ready["gallery_items"].as_u64(), Some(total(&b)));
}

#[test]
fn an_unreachable_database_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(SERVER)
        .current_dir(ROOT)
        .arg("--model")
        .arg(&fixture().bundle)
        .args(["--port", &free_port().to_string()])
        .arg("--gallery-dir")
        .arg(dir.path())
        .env("SIMSIAM_SERVER_GALLERY__BACKEND", "postgres")
        .env(
            "SIMSIAM_SERVER_GALLERY__POSTGRES_URL",
            "postgresql://ann:s3cret@127.0.0.1:9/none",
        )
        .env("SIMSIAM_SERVER_GALLERY__POSTGRES_TIMEOUT_S", "1")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("gallery database unavailable"), "{err}");
    assert!(
        err.contains("ann:***@127.0.0.1:9") && !err.contains("s3cret"),
        "{err}"
    );
}
