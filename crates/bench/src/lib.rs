//! Benchmarks of the server, kept out of the server crate so that its public API is the
//! server alone: `server-bench` (a bare ONNX Runtime session against the served model,
//! latency and throughput under load, the soak) and `gallery-bench` (the embedded and
//! PostgreSQL galleries against exact search). Both talk HTTP through [`client`], which
//! the server's end-to-end tests use as well.

pub mod client;
