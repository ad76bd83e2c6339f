//! The few primitives every distill crate shares, so that none keeps its own copy:
//!
//! - [`atomic`]: files written atomically (temporary sibling, fsync, rename, fsync of the
//!   directory), so a crash leaves either the old file or the new one, never half of one.
//! - [`de`]: recipe values written the short way (a path for a table with `path`, one value for
//!   a list).
//! - [`guard`]: a panic in third-party code on untrusted input turned into an error.
//! - [`rng`]: SplitMix64, the small platform-independent generator behind data order,
//!   augmentation, tail sampling and generation, so a seed means the same thing everywhere.

pub mod atomic;
pub mod de;
pub mod guard;
pub mod rng;

pub use atomic::{write_atomic, write_atomic_with, write_json, AtomicWriteError};
pub use rng::SplitMix64;
