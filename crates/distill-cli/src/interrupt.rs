//! The signal handler of the commands that train: the first Ctrl-C (SIGINT) or SIGTERM asks the
//! training loop to stop after its step and checkpoint ([`distill::train::interrupt`]); a second
//! one, or one outside a training loop (loading, evaluation, export), exits at once with 130.

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `on_signal` only touches atomics and calls write(2) and _exit(2), which are
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    let say = |msg: &[u8]| {
        // SAFETY: write(2) on stderr with a valid buffer; async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    };
    if distill::train::interrupt::request() {
        say(b"\nstopping after this step and writing a checkpoint (again to quit at once)\n");
    } else {
        say(b"\ninterrupted\n");
        // SAFETY: _exit(2) is async-signal-safe and ends the process.
        unsafe { libc::_exit(130) }
    }
}

/// The `--nproc` launcher: SIGINT is the ranks' to handle (a terminal sends it to the whole
/// process group); the launcher waits for them and exits with their code.
pub fn ignore_sigint() {
    // SAFETY: setting a signal's disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}
