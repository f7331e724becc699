//! One module per `trainer` subcommand: each reads its settings, runs, and writes its run
//! directory or bundle. They share the parts in [`crate::engine`].

pub mod bench;
pub mod embed;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod pack;
pub mod pretrain;
pub mod seed_gallery;
