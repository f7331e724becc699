//! Weighted k-nearest-neighbour classification on embeddings (the InstDisc/MoCo monitor).
//!
//! Features are l2-normalised, so the dot product is the cosine similarity. Each of the
//! k most similar bank items votes for its label with weight `exp(sim / t)`; the label
//! with the largest total wins. No training, so it measures the embedding alone.

use rayon::prelude::*;
use simsiam::vector::dot;

/// Top-1 and top-5 accuracy in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
}

/// Scales every `dim`-long row of `x` to unit l2 norm (zero rows stay zero).
pub fn l2_normalize_rows(x: &mut [f32], dim: usize) {
    x.par_chunks_mut(dim).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
}

/// Summed vote weight per class for each query row (rows must be l2-normalised).
pub fn knn_scores(
    bank: &[f32],
    bank_labels: &[usize],
    queries: &[f32],
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f32,
) -> Vec<Vec<f32>> {
    assert_eq!(
        bank.len(),
        bank_labels.len() * dim,
        "bank rows and labels disagree"
    );
    let k = k.min(bank_labels.len());
    queries
        .par_chunks(dim)
        .map(|q| {
            let mut sims: Vec<(f32, usize)> = bank
                .chunks(dim)
                .zip(bank_labels)
                .map(|(b, &l)| (dot(q, b), l))
                .collect();
            if k < sims.len() {
                sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                sims.truncate(k);
            }
            let mut scores = vec![0.0f32; classes];
            for (sim, label) in sims {
                scores[label] += (sim / temperature).exp();
            }
            scores
        })
        .collect()
}

/// Top-1 / top-5 accuracy of per-class `scores` against `labels`.
pub fn accuracy(scores: &[Vec<f32>], labels: &[usize]) -> Accuracy {
    let n = labels.len().max(1) as f64;
    let (mut top1, mut top5) = (0usize, 0usize);
    for (s, &label) in scores.iter().zip(labels) {
        // rank = number of classes scoring strictly higher than the true one
        let rank = s.iter().filter(|&&v| v > s[label]).count();
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
    }
    Accuracy {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
    }
}

/// Normalises copies of both feature sets and returns the weighted-kNN accuracy.
#[allow(clippy::too_many_arguments)]
pub fn knn_accuracy(
    bank: &[f32],
    bank_labels: &[usize],
    queries: &[f32],
    query_labels: &[usize],
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f32,
) -> Accuracy {
    let (mut b, mut q) = (bank.to_vec(), queries.to_vec());
    l2_normalize_rows(&mut b, dim);
    l2_normalize_rows(&mut q, dim);
    accuracy(
        &knn_scores(&b, bank_labels, &q, dim, classes, k, temperature),
        query_labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_are_weighted_by_similarity() {
        // Bank on the unit circle: two class-0 points near the query, three class-1 points
        // further away. With k = 5, class 1 has more votes but less weight at t = 0.1.
        let at = |deg: f32| [deg.to_radians().cos(), deg.to_radians().sin()];
        let bank: Vec<f32> = [10.0, -10.0, 60.0, -60.0, 70.0]
            .iter()
            .flat_map(|&d| at(d))
            .collect();
        let labels = [0, 0, 1, 1, 1];
        let q = at(0.0);
        let s = knn_scores(&bank, &labels, &q, 2, 2, 5, 0.1);
        let w = |deg: f32| (deg.to_radians().cos() / 0.1).exp();
        assert!((s[0][0] - 2.0 * w(10.0)).abs() / s[0][0] < 1e-5);
        assert!((s[0][1] - (2.0 * w(60.0) + w(70.0))).abs() / s[0][1] < 1e-5);
        assert!(s[0][0] > s[0][1]);
        // At a high temperature the three class-1 votes win.
        let s = knn_scores(&bank, &labels, &q, 2, 2, 5, 100.0);
        assert!(s[0][1] > s[0][0]);
        // k = 2 keeps only the two nearest.
        let s = knn_scores(&bank, &labels, &q, 2, 2, 2, 0.1);
        assert_eq!(s[0][1], 0.0);
    }

    #[test]
    fn clustered_features_are_classified_and_top5_counts_ranks() {
        // 3 well-separated clusters along the axes, unnormalised.
        let mut bank = Vec::new();
        let mut labels = Vec::new();
        for c in 0..3 {
            for i in 0..4 {
                let mut v = [0.05 * i as f32; 3];
                v[c] = 2.0 + i as f32;
                bank.extend(v);
                labels.push(c);
            }
        }
        let queries = [1.0, 0.1, 0.0, 0.0, 0.0, 5.0];
        let acc = knn_accuracy(&bank, &labels, &queries, &[0, 2], 3, 3, 3, 0.1);
        assert_eq!(
            acc,
            Accuracy {
                top1: 1.0,
                top5: 1.0
            }
        );
        let acc = knn_accuracy(&bank, &labels, &queries, &[1, 1], 3, 3, 3, 0.1);
        assert_eq!(acc.top1, 0.0);
        assert_eq!(
            accuracy(&[vec![0.3, 0.2, 0.5]], &[1]),
            Accuracy {
                top1: 0.0,
                top5: 1.0
            }
        );
    }
}
