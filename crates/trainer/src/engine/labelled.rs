//! Which training images carry labels in a fine-tuning or evaluation: a seeded validation
//! slice of every breed, and a seeded labelled subset (`--labels-per-breed N`) of the rest.
//!
//! Both are drawn from the training split's labels only, so nothing here can touch the
//! test split: the test split only gives the reported figures. The draw depends on the
//! seed and the class alone, so `trainer finetune` and `trainer eval` of the same run
//! select the very same images.

use crate::TrainError;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Indices into the training split: the images the model learns from, and the
/// validation slice every choice is made on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelledSplit {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Images of a class of `n` that the validation slice takes: `round(n × fraction)`, at
/// least one when the fraction is positive and the class has two images or more.
pub fn val_count(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 || n < 2 {
        return 0;
    }
    ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
}

/// Splits the training split (its labels; `classes` in label order) into a validation slice of
/// `val_fraction` of every class and, from the rest, `per_breed` images of every class
/// (all of them when `None`). The order within a class is shuffled by `seed` and the
/// class, so the slice and subset are reproducible and the subset of 10 lies inside the
/// subset of 20.
///
/// # Errors
/// [`TrainError::NoLabels`] when `per_breed` is 0, [`TrainError::LabelsPerBreed`] when
/// it is larger than what some class has left after its validation slice.
pub fn split(
    labels: &[usize],
    classes: &[String],
    seed: u64,
    val_fraction: f64,
    per_breed: Option<usize>,
) -> Result<LabelledSplit, TrainError> {
    let mut by_class = vec![Vec::new(); classes.len()];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(list) = by_class.get_mut(l) {
            list.push(i);
        }
    }
    if per_breed == Some(0) {
        return Err(TrainError::NoLabels);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (class, mut members) in by_class.into_iter().enumerate() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed ^ 0x1abe_11ed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        members.shuffle(&mut rng);
        let v = val_count(members.len(), val_fraction);
        let rest = &members[v..];
        let take = match per_breed {
            Some(n) if n > rest.len() => {
                return Err(TrainError::LabelsPerBreed {
                    asked: n,
                    class: classes[class].clone(),
                    available: rest.len(),
                })
            }
            Some(n) => n,
            None => rest.len(),
        };
        val.extend_from_slice(&members[..v]);
        train.extend_from_slice(&rest[..take]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok(LabelledSplit { train, val })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(classes: usize, per: usize) -> Vec<usize> {
        (0..classes * per).map(|i| i % classes).collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|c| format!("breed{c}")).collect()
    }

    #[test]
    fn the_subset_is_seeded_has_n_per_breed_and_is_disjoint_from_validation() {
        let y = labels(3, 20);
        let s = split(&y, &names(3), 7, 0.1, Some(5)).expect("split");
        assert_eq!(s, split(&y, &names(3), 7, 0.1, Some(5)).expect("again"));
        assert_ne!(
            s.train,
            split(&y, &names(3), 8, 0.1, Some(5)).expect("seed 8").train
        );
        for c in 0..3 {
            assert_eq!(s.train.iter().filter(|&&i| y[i] == c).count(), 5);
            assert_eq!(s.val.iter().filter(|&&i| y[i] == c).count(), 2);
        }
        assert!(s.train.iter().all(|i| !s.val.contains(i)));
        let bigger = split(&y, &names(3), 7, 0.1, Some(10)).expect("10");
        assert_eq!(
            bigger.val, s.val,
            "the validation slice does not depend on N"
        );
        assert!(s.train.iter().all(|i| bigger.train.contains(i)), "nested");
        let all = split(&y, &names(3), 7, 0.1, None).expect("all");
        assert_eq!(all.train.len() + all.val.len(), y.len());
    }

    #[test]
    fn an_impossible_n_is_a_clear_error() {
        let y = labels(2, 10);
        let err = split(&y, &names(2), 0, 0.1, Some(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10") && err.contains('9') && err.contains("breed0"),
            "{err}"
        );
        let err = split(&y, &names(2), 0, 0.1, Some(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1"), "{err}");
    }
}
