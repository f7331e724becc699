//! Request threads step aside for the model's threads.
//!
//! With as many intra-op threads as cores, the threads that parse requests and decode
//! images share the cores with ONNX Runtime's. At equal priority a decode that lands
//! mid-run preempts an intra-op thread, and the whole run waits for it at the next
//! operator. At a lower priority the kernel runs the request threads when the model's
//! threads sleep (between runs; between operators too when they do not spin), so decoding
//! fills the model's idle moments instead of stretching its runs. Lowering one's own
//! priority needs no privileges. Threads a request thread starts inherit its priority.

use crate::config::RequestPriority;
use std::cell::Cell;

/// Puts the calling thread at `priority`, once per thread (later calls return at once).
/// A failure is logged and otherwise ignored: priority is an optimisation.
pub fn lower_this_thread(priority: RequestPriority) {
    thread_local!(static DONE: Cell<bool> = const { Cell::new(false) });
    if priority == RequestPriority::Normal || DONE.with(|d| d.replace(true)) {
        return;
    }
    if let Err(e) = set(priority) {
        log::warn!("could not lower a request thread's priority to {priority}: {e}");
    }
}

#[cfg(target_os = "linux")]
fn set(priority: RequestPriority) -> std::io::Result<()> {
    // SAFETY: both calls act on the calling thread (`0`) and only read `param`.
    let rc = unsafe {
        match priority {
            RequestPriority::Normal => 0,
            RequestPriority::Low => libc::setpriority(libc::PRIO_PROCESS, 0, 19),
            RequestPriority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
            }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_: RequestPriority) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "thread priorities are only set on Linux",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// (scheduling policy, niceness) of a fresh thread after `lower_this_thread(p)`.
    fn after(p: RequestPriority) -> (i32, i32) {
        std::thread::spawn(move || {
            lower_this_thread(p);
            // A second call is a no-op, not an error.
            lower_this_thread(p);
            // SAFETY: queries of the calling thread.
            unsafe {
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                )
            }
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn each_priority_reaches_the_kernel_for_the_calling_thread_only() {
        // SAFETY: query of the calling thread.
        let (policy, nice) = unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, 0),
            )
        };
        assert_eq!(after(RequestPriority::Normal), (policy, nice));
        assert_eq!(after(RequestPriority::Low), (policy, 19));
        assert_eq!(after(RequestPriority::Idle).0, libc::SCHED_IDLE);
        // The test thread itself is untouched.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, policy);
        assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, nice);
    }
}
