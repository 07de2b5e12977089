//! Benchmarks for Hayloft: shared helpers for the criterion benches and binaries.
