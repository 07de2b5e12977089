//! Conformance suite every [`Directory`](super::Directory) backend must pass.
