//! The parts the commands are built from: the model and its loss, data and augmentation,
//! the optimiser and schedule, checkpoints and histories, kNN and probe fitting, reports
//! and plots.

pub mod amp;
pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod history;
pub mod knn;
pub mod labelled;
pub mod loader;
pub mod loss;
pub mod model;
pub mod plot;
pub mod probe_fit;
pub mod report;
pub mod schedule;
pub mod session;
pub mod sgd;
