//! The linear-probe breed classifier: multinomial logistic regression on frozen features.
//!
//! Features are l2-normalised, then standardised with the training split's mean and std,
//! then mapped to class logits by `weight · x + bias`. This module holds inference and
//! the file format only (plain Rust, JSON), so the server can classify without libtorch;
//! the trainer fits it (`simsiam_trainer::probe_fit`).

use crate::vector::dot;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid probe file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("inconsistent probe: {0}")]
    Invalid(String),
    #[error("feature has {got} values, the probe expects {expected}")]
    Dimension { expected: usize, got: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearProbe {
    /// Class names in label order.
    pub classes: Vec<String>,
    pub feature_dim: usize,
    /// Standardisation applied after l2-normalisation: `(x − mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Row-major `classes × feature_dim`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// L2 penalty and full-batch epochs chosen on the validation slice.
    pub weight_decay: f64,
    pub epochs: usize,
}

impl LinearProbe {
    /// Checks that every array has the size the class count and dimension imply.
    pub fn validate(&self) -> Result<(), ProbeError> {
        let (c, d) = (self.classes.len(), self.feature_dim);
        let bad = |what: &str, got: usize, want: usize| {
            Err(ProbeError::Invalid(format!(
                "{what} has {got} values, expected {want}"
            )))
        };
        if c == 0 || d == 0 {
            return Err(ProbeError::Invalid(
                "no classes or zero feature dimension".into(),
            ));
        }
        if self.mean.len() != d {
            return bad("mean", self.mean.len(), d);
        }
        if self.std.len() != d {
            return bad("std", self.std.len(), d);
        }
        if self.weight.len() != c * d {
            return bad("weight", self.weight.len(), c * d);
        }
        if self.bias.len() != c {
            return bad("bias", self.bias.len(), c);
        }
        if self.std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(ProbeError::Invalid(
                "std must be positive and finite".into(),
            ));
        }
        Ok(())
    }

    /// The probe's input: l2-normalised, then standardised.
    pub fn normalise(&self, feature: &[f32]) -> Result<Vec<f32>, ProbeError> {
        if feature.len() != self.feature_dim {
            return Err(ProbeError::Dimension {
                expected: self.feature_dim,
                got: feature.len(),
            });
        }
        let norm = feature.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        Ok(feature
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((v, m), s)| (v / norm - m) / s)
            .collect())
    }

    /// Class probabilities (softmax of the logits) for one backbone feature vector.
    pub fn probabilities(&self, feature: &[f32]) -> Result<Vec<f32>, ProbeError> {
        let x = self.normalise(feature)?;
        let logits: Vec<f32> = self
            .weight
            .chunks(self.feature_dim)
            .zip(&self.bias)
            .map(|(w, b)| dot(w, &x) + b)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        Ok(exp.into_iter().map(|e| e / total).collect())
    }

    /// The `k` most probable classes, best first: `(label, probability)`.
    pub fn top_k(&self, feature: &[f32], k: usize) -> Result<Vec<(usize, f32)>, ProbeError> {
        let mut ranked: Vec<(usize, f32)> = self
            .probabilities(feature)?
            .into_iter()
            .enumerate()
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(k);
        Ok(ranked)
    }

    pub fn save(&self, path: &Path) -> Result<(), ProbeError> {
        let text = serde_json::to_string(self).map_err(|source| ProbeError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(|source| ProbeError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and validates a probe file.
    pub fn load(path: &Path) -> Result<Self, ProbeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProbeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let probe: Self = serde_json::from_str(&text).map_err(|source| ProbeError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        probe.validate()?;
        Ok(probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> LinearProbe {
        // Two classes on a 2-d feature: class 0 points along +x, class 1 along +y.
        LinearProbe {
            classes: vec!["a".into(), "b".into()],
            feature_dim: 2,
            mean: vec![0.0, 0.0],
            std: vec![1.0, 1.0],
            weight: vec![4.0, 0.0, 0.0, 4.0],
            bias: vec![0.0, 0.0],
            weight_decay: 0.0,
            epochs: 1,
        }
    }

    #[test]
    fn classifies_and_normalises_scale_away() {
        let p = probe();
        let top = p.top_k(&[10.0, 1.0], 2).expect("valid");
        assert_eq!(top[0].0, 0);
        assert!((top[0].1 + top[1].1 - 1.0).abs() < 1e-6);
        // l2-normalisation: the same direction at another scale gives the same answer.
        let a = p.probabilities(&[10.0, 1.0]).expect("ok");
        let b = p.probabilities(&[0.1, 0.01]).expect("ok");
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
            "{a:?} vs {b:?}"
        );
        assert_eq!(p.top_k(&[0.0, 3.0], 1).expect("ok")[0].0, 1);
        assert!(matches!(
            p.top_k(&[1.0], 1),
            Err(ProbeError::Dimension {
                expected: 2,
                got: 1
            })
        ));
    }

    #[test]
    fn file_round_trip_and_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("probe.json");
        probe().save(&path).expect("save");
        assert_eq!(LinearProbe::load(&path).expect("load"), probe());
        let mut broken = probe();
        broken.bias.pop();
        broken.save(&path).expect("save");
        let err = LinearProbe::load(&path).unwrap_err().to_string();
        assert!(err.contains("bias"), "{err}");
        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(
            LinearProbe::load(&path),
            Err(ProbeError::Parse { .. })
        ));
    }
}
