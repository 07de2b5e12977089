//! haystack (table of contents; filled in by its issue).
pub mod api;
pub mod client;
