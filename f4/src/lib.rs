//! f4 (table of contents; filled in by its issue).
