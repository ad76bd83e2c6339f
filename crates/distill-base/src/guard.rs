//! Third-party parsers must not take the process down: [`catch`] runs a closure and turns a
//! panic inside it into an error message. The binary's panic hook asks [`guarded`] and stays
//! silent for a panic that [`catch`] will report, so the user sees one error line, not a
//! backtrace; any other panic is a bug in distill and is reported as such, also on one line.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// True while this thread runs inside [`catch`].
pub fn guarded() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked".to_string()
    }
}

/// Runs `f`; a panic inside it becomes `Err(its message)`. Use around calls into third-party
/// code on untrusted input (a tokenizer.json's pre-tokenizers and decoders, say).
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let out = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    out.map_err(|p| panic_message(p.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_the_guard_is_released() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        assert_eq!(catch(|| 7), Ok(7));
        let v: Vec<u8> = Vec::new();
        let idx = v.len() + 3;
        let err = catch(|| v[idx]).unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
        assert_eq!(catch(|| -> u8 { panic!("bad {}", 1) }), Err("bad 1".to_string()));
        assert!(!guarded());
        std::panic::set_hook(prev);
    }
}
