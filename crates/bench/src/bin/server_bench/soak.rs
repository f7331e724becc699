//! `server-bench --soak SECONDS`: a bounded load test on loopback.
//!
//! `clients` threads send mixed requests (embed, search, classify, gallery add and
//! delete) back to back, 5% of them malformed; `slow` connections each send a request
//! one byte a second; `/readyz` is asked every 0.25 s; the server's resident memory is
//! read every 30 s. The report gives requests by status, p50/p99 per route, the memory
//! readings and the readiness failures, and the run fails when the server answered a 5xx
//! other than 503 (overload), failed readiness, or grew its memory by more than 10%
//! after the first minute (warm-up).

use crate::server::ServerProcess;
use anyhow::{bail, Result};
use simsiam_bench::client::{multipart, request, Connection};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the clients saw: per route, the statuses (0 = no answer) and latencies.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<(&'static str, u16), usize>,
    latencies: BTreeMap<&'static str, Vec<f64>>,
}

/// What the watcher saw.
struct Watched {
    /// Readiness answers that were not 200.
    failures: Vec<String>,
    /// (seconds into the soak, resident MiB).
    memory: Vec<(u64, f64)>,
}

pub struct Soak {
    pub seconds: u64,
    pub clients: usize,
    pub slow: usize,
}

impl Soak {
    pub fn run(&self, server: &ServerProcess, jpegs: &Arc<Vec<Vec<u8>>>) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let clients: Vec<_> = (0..self.clients)
            .map(|k| {
                let (addr, jpegs, stop, tally) = (
                    server.addr.clone(),
                    jpegs.clone(),
                    stop.clone(),
                    tally.clone(),
                );
                std::thread::spawn(move || client(k, &addr, &jpegs, &stop, &tally))
            })
            .collect();
        let slow_answered = Arc::new(AtomicUsize::new(0));
        let slow: Vec<_> = (0..self.slow)
            .map(|_| {
                let (addr, stop, answered) =
                    (server.addr.clone(), stop.clone(), slow_answered.clone());
                std::thread::spawn(move || slow_client(&addr, &stop, &answered))
            })
            .collect();
        let Watched {
            failures: readiness,
            memory,
        } = self.watch(server)?;
        stop.store(true, Ordering::SeqCst);
        for c in clients.into_iter().chain(slow) {
            let _ = c.join();
        }
        let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
        report(
            &tally,
            &readiness,
            &memory,
            slow_answered.load(Ordering::SeqCst),
        )
    }

    /// Polls `/readyz` every 0.25 s and reads the server's memory every 30 s until the
    /// time is up.
    fn watch(&self, server: &ServerProcess) -> Result<Watched> {
        let start = Instant::now();
        let (mut failures, mut memory) = (Vec::new(), Vec::new());
        let mut next_reading = Duration::ZERO;
        while start.elapsed() < Duration::from_secs(self.seconds) {
            match request(&server.addr, "GET", "/readyz", &[], &[]) {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failures.push(format!(
                    "{:.0}s: {} {}",
                    start.elapsed().as_secs_f64(),
                    r.status,
                    r.text()
                )),
                Err(e) => failures.push(format!("{:.0}s: {e}", start.elapsed().as_secs_f64())),
            }
            if start.elapsed() >= next_reading {
                let rss = server.resident_mib()?;
                println!(
                    "{:>5} s: resident memory {rss:.1} MiB",
                    start.elapsed().as_secs()
                );
                memory.push((start.elapsed().as_secs(), rss));
                next_reading += Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(Watched { failures, memory })
    }
}

/// One request of the soak's mix.
struct SoakRequest {
    route: &'static str,
    method: &'static str,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

impl SoakRequest {
    /// `POST path` with `body` as a raw JPEG.
    fn raw(route: &'static str, path: &str, body: Vec<u8>) -> Self {
        SoakRequest {
            route,
            method: "POST",
            path: path.into(),
            content_type: "image/jpeg".into(),
            body,
        }
    }

    /// Client `k`'s `n`th request: a route chosen by `n`, one in twenty malformed. Adds
    /// push their ids to `live`; deletes take the oldest, so that each client's entries
    /// stay bounded and memory can settle.
    fn nth(k: usize, n: usize, jpeg: &[u8], live: &mut Vec<String>) -> Self {
        if n.is_multiple_of(20) {
            let garbage = vec![(n % 251) as u8; 64 + n % 512];
            return Self::raw("malformed", "/v1/embed", garbage);
        }
        match n % 5 {
            1 => Self::raw("search", "/v1/search?k=5", jpeg.to_vec()),
            2 => Self::raw("classify", "/v1/classify", jpeg.to_vec()),
            3 => {
                let id = format!("soak/{k}/{n}");
                let (body, content_type) = multipart(&[
                    ("images", Some("a.jpg"), jpeg),
                    ("ids", None, id.as_bytes()),
                ]);
                live.push(id);
                SoakRequest {
                    route: "gallery add",
                    method: "POST",
                    path: "/v1/gallery".into(),
                    content_type,
                    body,
                }
            }
            4 if live.len() > 8 => SoakRequest {
                route: "gallery delete",
                method: "DELETE",
                path: format!("/v1/gallery/{}", live.remove(0)),
                content_type: String::new(),
                body: Vec::new(),
            },
            _ => Self::raw("embed", "/v1/embed", jpeg.to_vec()),
        }
    }
}

/// Back-to-back requests ([`SoakRequest::nth`]) on one keep-alive connection, reopened
/// when the server drops it.
fn client(k: usize, addr: &str, jpegs: &[Vec<u8>], stop: &AtomicBool, tally: &Mutex<Tally>) {
    let mut conn = Connection::open(addr).ok();
    let mut live: Vec<String> = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let jpeg = &jpegs[(k * 7 + n) % jpegs.len()];
        let r = SoakRequest::nth(k, n, jpeg, &mut live);
        let t = Instant::now();
        let headers = [("Content-Type", r.content_type.as_str())];
        let status = match conn
            .as_mut()
            .map(|c| c.send(r.method, &r.path, &headers, &r.body))
        {
            Some(Ok(answer)) => answer.status,
            _ => {
                conn = Connection::open(addr).ok();
                0
            }
        };
        let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
        *tally.statuses.entry((r.route, status)).or_insert(0) += 1;
        tally
            .latencies
            .entry(r.route)
            .or_default()
            .push(t.elapsed().as_secs_f64());
    }
}

/// A request whose head and body trickle in one byte a second; counts the times the
/// server answered or dropped it rather than waiting for it, then starts over.
fn slow_client(addr: &str, stop: &AtomicBool, answered: &AtomicUsize) {
    let head = b"POST /v1/embed HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n";
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        for &b in head.iter().chain(std::iter::repeat(&0u8)) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if s.write_all(&[b]).is_err() {
                answered.fetch_add(1, Ordering::SeqCst);
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn report(
    tally: &Tally,
    readiness: &[String],
    memory: &[(u64, f64)],
    slow_answered: usize,
) -> Result<()> {
    println!("requests by route and status (0: no answer):");
    for ((route, status), n) in &tally.statuses {
        println!("  {route:<15} {status:>3}  {n}");
    }
    println!("latency per route:");
    for (route, lat) in &tally.latencies {
        let mut lat = lat.clone();
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        println!(
            "  {route:<15} p50 {:>7.1} ms   p99 {:>7.1} ms",
            p50 * 1e3,
            p99 * 1e3
        );
    }
    println!("slow connections answered or dropped by the server: {slow_answered}");
    println!("/readyz failures: {}", readiness.len());
    for f in readiness.iter().take(10) {
        println!("  {f}");
    }
    let server_errors: usize = tally
        .statuses
        .iter()
        .filter(|((_, s), _)| *s >= 500 && *s != 503)
        .map(|(_, n)| n)
        .sum();
    // The first reading after a minute of warm-up is the reference.
    let after_warm_up: Vec<f64> = memory
        .iter()
        .filter(|(t, _)| *t >= 60)
        .map(|(_, m)| *m)
        .collect();
    let growth = match after_warm_up.first() {
        Some(first) => after_warm_up
            .iter()
            .map(|m| m / first - 1.0)
            .fold(0.0f64, f64::max),
        None => 0.0,
    };
    println!(
        "5xx other than 503: {server_errors}; memory growth after warm-up: {:+.1}%",
        growth * 100.0
    );
    if server_errors > 0 || !readiness.is_empty() || growth > 0.10 {
        bail!(
            "the soak failed: 5xx {server_errors}, readiness failures {}, memory growth {:.1}%",
            readiness.len(),
            growth * 100.0
        );
    }
    Ok(())
}
