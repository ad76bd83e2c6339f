//! Ctrl-C (SIGINT) and SIGTERM keep the work: the command's signal handler asks the running
//! training loop to stop after its current step ([`request`]); [`super::fit`] then writes a
//! checkpoint at that step and returns [`crate::Error::Interrupted`], and `--resume` continues
//! from it exactly. Outside a training loop, and on a second signal, the handler exits at once.
//!
//! Only atomics: the handler runs in signal context.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static TRAINING: AtomicBool = AtomicBool::new(false);

/// Asks the running training loop to stop after its step; returns false when none runs (or a
/// stop was asked already): the caller should exit at once then. Async-signal-safe.
pub fn request() -> bool {
    TRAINING.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst)
}

/// Whether a stop was asked.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Marks a training loop as running while the guard lives.
pub(crate) struct Training;

impl Training {
    pub(crate) fn start() -> Training {
        TRAINING.store(true, Ordering::SeqCst);
        Training
    }
}

impl Drop for Training {
    fn drop(&mut self) {
        TRAINING.store(false, Ordering::SeqCst);
    }
}
