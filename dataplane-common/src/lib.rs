//! Everything the eBPF programs and the userspace agent must agree on: map names, the
//! layouts of map keys and values, counter indices, and the packet parser.
//!
//! The crate is `no_std` so that the eBPF programs can use it; the parser and checksum
//! helpers are pure functions over a [`parse::Frame`], which lets userspace unit-test and
//! fuzz them with plain byte slices.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod ct;
// Before `layout`, which uses its `aya_pod!`.
#[macro_use]
pub mod maps;
pub mod layout;
pub mod parse;
pub mod stats;

pub use maps::*;
