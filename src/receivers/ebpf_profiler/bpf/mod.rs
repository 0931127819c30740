//! The kernel side of the receiver, as user space sees it: loading the object and its
//! maps ([`loader`], failing with an [`error::LoadError`]), the system calls ([`sys`]), the verifier log that sizes itself
//! ([`verifier_log`]), facts read from the kernel's BTF ([`kernel`]), what each load
//! attempt leaves in metrics and files ([`outcome`]), the `ebpf-check` report
//! ([`check`]) and reading plain values out of map and ring-buffer bytes ([`pod`]).
//!
//! Owns unsafe code: this is the only module of the receiver that has any. Each block
//! has a `// SAFETY:` line; everything it exports is safe to call.

#![allow(unsafe_code)]

pub mod check;
pub mod error;
pub mod kernel;
pub mod loader;
pub mod outcome;
pub mod pod;
pub mod sys;
pub mod verifier_log;
