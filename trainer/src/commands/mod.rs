//! The bodies of the `trainer` subcommands that are more than a few lines.

pub(crate) mod bench;
pub(crate) mod demo;
pub(crate) mod eval;
pub(crate) mod plot;
pub(crate) mod predict;
pub(crate) mod ridge;
pub(crate) mod tasks;
pub(crate) mod train;
pub(crate) mod windows;
