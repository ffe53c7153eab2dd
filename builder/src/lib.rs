//! imgbuild: immutable, reproducible per-role netboot images (kernel, initrd, squashfs root) and per-host
//! layers, built from `recipes/` and `overlays/` into a lectern-store.

pub mod build;
pub mod commands;
pub mod context;
pub mod data_dir;
pub mod disk;
pub mod lock;
pub mod mirror;
pub mod progress;
pub mod recipe;
pub mod render;
pub mod scratch;
pub mod step;
pub mod tools;
pub mod tree;
