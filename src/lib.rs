//! The workspace's examples and benchmarks. As a library it holds nothing
//! but the workspace README's examples, compiled and run as doctests, so
//! that no crate of the workspace depends on another only to test them.

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
