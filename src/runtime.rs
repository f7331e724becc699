//! Finding, loading and using the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`: nothing is linked at build time (its default
//! download of a prebuilt runtime cannot work here), and the library installed by
//! `make setup` (from PyPI's `onnxruntime` wheel) is opened at run time. This module decides
//! which file, loads it once per process, and keeps the one ONNX Runtime environment that
//! `ort` allows per process alive for every session.

use ort::environment::Environment;
use ort::ep::ExecutionProviderDispatch;
pub use ort::session::Session;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Environment variable that names the library explicitly (checked first).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// Where `make setup` puts (a link to) the library, relative to the project folder.
pub const PROJECT_LIB: &str = ".onnxruntime/libonnxruntime.so";

/// Errors while loading ONNX Runtime or running a model with it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found; tried: {}. Run `make setup` to install it, or set \
         {DYLIB_ENV} to a libonnxruntime.so",
        .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { tried: Vec<PathBuf> },
    #[error("cannot load ONNX Runtime from {path}: {source}")]
    Load {
        path: PathBuf,
        source: ort::LoadDynamicError,
    },
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    #[error("the {provider} execution provider was asked for, but the ONNX Runtime loaded from {} was built without it: {hint}", .library.display())]
    NoProvider {
        provider: &'static str,
        library: PathBuf,
        hint: &'static str,
    },
    #[error("input shape {shape:?} needs {expected} values, got {found}")]
    InputLength {
        shape: [usize; 4],
        expected: usize,
        found: usize,
    },
    #[error("model has {0} inputs; run_f32 needs exactly one")]
    InputCount(usize),
    #[error("model has no outputs")]
    NoOutput,
    #[error("model output has shape {found:?}, expected {expected:?}")]
    OutputShape {
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

struct Runtime {
    path: PathBuf,
    env: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises first-time initialisation: `ort` refuses a second environment, so two
/// threads racing through `init` must not both build one.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// The candidate library paths, in the order they are tried: `$ORT_DYLIB_PATH`; the
/// project folder seen from a binary in `target/<profile>/` and from one placed at the
/// project root; the project folder this crate was compiled in.
pub fn candidates(env_value: Option<PathBuf>, exe: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    out.extend(env_value.filter(|p| !p.as_os_str().is_empty()));
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join("../..").join(PROJECT_LIB));
        out.push(dir.join(PROJECT_LIB));
    }
    out.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.onnxruntime/libonnxruntime.so"
    )));
    out
}

/// The first candidate that exists, or an error that lists every path tried.
pub fn locate(candidates: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound {
            tried: candidates.to_vec(),
        })
}

/// Loads ONNX Runtime once per process and returns the library path used. Later calls
/// return the same path without touching the file system. A failed attempt is not
/// cached, so a caller may retry after fixing the installation.
pub fn init() -> Result<PathBuf, RuntimeError> {
    runtime().map(|rt| rt.path.clone())
}

fn runtime() -> Result<&'static Runtime, RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // A poisoned lock only means another thread panicked mid-way; the state it guards is
    // the OnceLock, which is still consistent.
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let env_value = std::env::var_os(DYLIB_ENV).map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let tried = candidates(env_value.clone(), exe.as_deref());
    let path = locate(&tried)?;
    if let Some(wanted) = env_value.filter(|p| *p != path) {
        log::warn!(
            "{DYLIB_ENV}={} does not exist; using {}",
            wanted.display(),
            path.display()
        );
    }
    let env = ort::init_from(&path)
        .map_err(|source| RuntimeError::Load {
            path: path.clone(),
            source,
        })?
        .with_name("simsiam")
        .build()?;
    log::info!("ONNX Runtime loaded from {}", path.display());
    Ok(RUNTIME.get_or_init(|| Runtime { path, env }))
}

/// A CPU session for a model held in memory, with ONNX Runtime's defaults otherwise.
/// `threads` sets the intra-op thread count (0 lets ONNX Runtime choose: one per physical
/// core).
pub fn cpu_session(model_bytes: &[u8], threads: usize) -> Result<Session, RuntimeError> {
    session(model_bytes, threads, Spin::Always, &[])
}

/// How idle intra-op threads wait for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spin {
    /// Busy-wait, also between runs (ONNX Runtime's default): best for back-to-back runs.
    Always,
    /// Busy-wait while a run is on (fast hand-offs between operators), sleep when it ends,
    /// so that idle threads do not burn cores that other work (decoding) needs.
    DuringRuns,
    /// Always sleep.
    Never,
}

/// A session for a model held in memory on the given execution providers (none: CPU).
/// A provider registered with `error_on_failure()` that cannot start is an error here.
pub fn session(
    model_bytes: &[u8],
    threads: usize,
    spin: Spin,
    providers: &[ExecutionProviderDispatch],
) -> Result<Session, RuntimeError> {
    let rt = runtime()?;
    // Builder errors carry the builder back (`Error<SessionBuilder>`, not Send/Sync):
    // convert them to plain `ort::Error` before `?`.
    let mut builder = Session::builder(&rt.env)?
        .with_intra_threads(threads)
        .map_err(ort::Error::from)?
        .with_intra_op_spinning(spin != Spin::Never)
        .map_err(ort::Error::from)?;
    if spin == Spin::DuringRuns {
        builder = builder
            .with_config_entry("session.force_spinning_stop", "1")
            .map_err(ort::Error::from)?;
    }
    if !providers.is_empty() {
        builder = builder
            .with_execution_providers(providers)
            .map_err(ort::Error::from)?;
    }
    Ok(builder.commit_from_memory(model_bytes)?)
}

/// Runs a model with one float input of `shape` and returns its first output as
/// `(shape, row-major values)`. Takes `&mut Session` because `ort` does (ONNX Runtime
/// internals are not thread-safe): use one session per worker or a `Mutex`.
pub fn run_f32(
    session: &mut Session,
    input: &[f32],
    shape: [usize; 4],
) -> Result<(Vec<usize>, Vec<f32>), RuntimeError> {
    let expected: usize = shape.iter().product();
    if input.len() != expected {
        return Err(RuntimeError::InputLength {
            shape,
            expected,
            found: input.len(),
        });
    }
    if session.inputs().len() != 1 {
        return Err(RuntimeError::InputCount(session.inputs().len()));
    }
    if session.outputs().is_empty() {
        return Err(RuntimeError::NoOutput);
    }
    let tensor = TensorRef::from_array_view((shape, input))?;
    let outputs = session.run(ort::inputs![tensor])?;
    let (out_shape, values) = outputs[0].try_extract_tensor::<f32>()?;
    let dims = out_shape.iter().map(|&d| d.max(0) as usize).collect();
    Ok((dims, values.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_documented_order() {
        let exe = Path::new("/proj/target/release/server");
        let c = candidates(Some(PathBuf::from("/opt/ort.so")), Some(exe));
        assert_eq!(c[0], PathBuf::from("/opt/ort.so"));
        assert_eq!(
            c[1],
            PathBuf::from("/proj/target/release/../../.onnxruntime/libonnxruntime.so")
        );
        assert_eq!(
            c[2],
            PathBuf::from("/proj/target/release/.onnxruntime/libonnxruntime.so")
        );
        assert!(c[3].starts_with(env!("CARGO_MANIFEST_DIR")));
        assert_eq!(c.len(), 4);
        // An empty variable counts as unset.
        assert_eq!(candidates(Some(PathBuf::new()), None).len(), 1);
    }

    #[test]
    fn locate_takes_the_first_existing_file_and_lists_all_when_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("a.so");
        let present = dir.path().join("b.so");
        std::fs::write(&present, b"x").expect("write");
        let later = dir.path().join("c.so");
        std::fs::write(&later, b"x").expect("write");
        let found = locate(&[missing.clone(), present.clone(), later]).expect("found");
        assert_eq!(found, present);

        let err = locate(&[missing.clone(), dir.path().join("d.so")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("a.so") && msg.contains("d.so"), "{msg}");
        assert!(msg.contains("make setup"), "{msg}");
        // A directory is not a library.
        assert!(locate(&[dir.path().to_path_buf()]).is_err());
    }

    #[test]
    fn init_is_idempotent_and_loads_the_project_library() {
        let first = init().unwrap_or_else(|e| panic!("ONNX Runtime is required: {e}"));
        let second = init().expect("second init");
        assert_eq!(first, second);
        assert!(first.is_file());
    }

    #[test]
    fn a_bad_model_is_an_error_not_a_panic() {
        init().unwrap_or_else(|e| panic!("ONNX Runtime is required: {e}"));
        let err = cpu_session(b"not an onnx model", 1).unwrap_err();
        assert!(matches!(err, RuntimeError::Ort(_)), "{err}");
    }
}
