//! The `server` binary as a child process, and its metrics page.

use anyhow::{bail, Context, Result};
use simsiam_server::config::ServerConfig;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    child: Child,
    pub addr: String,
}

impl ServerProcess {
    pub fn start(
        cfg: &ServerConfig,
        config: Option<&Path>,
        gallery: &Path,
        log: &str,
    ) -> Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(&exe);
        cmd.arg("--model")
            .arg(&cfg.model.dir)
            .arg("--port")
            .arg(port.to_string())
            .arg("--host")
            .arg("127.0.0.1");
        cmd.arg("--gallery-dir").arg(gallery);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut s = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = simsiam_bench::client::request(&s.addr, "GET", "/readyz", &[], &[]) {
                if r.status == 200 {
                    return Ok(s);
                }
            }
            if let Some(status) = s.child.try_wait()? {
                bail!("the server exited during start-up: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        s.stop();
        bail!("the server did not become ready within 60 s")
    }

    /// The server's resident memory (VmRSS) in MiB.
    pub fn resident_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS for the server process"))?;
        Ok(kb / 1024.0)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server's `/metrics` page.
pub fn metrics_text(addr: &str) -> Result<String> {
    Ok(simsiam_bench::client::request(addr, "GET", "/metrics", &[], &[])?.text())
}

/// The value of the Prometheus series `name` (with its labels) in `text`; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// (sum, count) of the server's batch-size histogram.
pub fn batch_stats(addr: &str) -> Result<(f64, f64)> {
    let text = metrics_text(addr)?;
    Ok((
        metric(&text, "simsiam_batch_size_sum"),
        metric(&text, "simsiam_batch_size_count"),
    ))
}
