//! coding (table of contents; filled in by its issue).
