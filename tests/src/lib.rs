//! End-to-end tests of walvault against real PostgreSQL 15, real zfs-fuse pools and the real
//! `walvault-server` / `walvault` binaries. The tests live in `tests/`; this library is their
//! harness.

pub mod harness;
