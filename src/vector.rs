//! Vector arithmetic that the probe, the gallery's search and the trainer's kNN evaluation
//! share.

/// The dot product, summed in 16 independent lanes: one running sum must add its products
/// in order, one at a time, while lanes let the compiler use vector instructions. Distances
/// are most of what an HNSW graph computes: against a single running sum, the embedded
/// gallery inserted 2.1× and searched 2.4× as fast (`gallery-bench --n 5000`, 512-d, both
/// builds side by side on one machine).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let (a, b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut lanes = [0f32; LANES];
    for (a, b) in a.zip(b) {
        for ((lane, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::dot;

    #[test]
    fn the_laned_dot_product_matches_a_plain_sum_at_every_length() {
        for len in [0, 1, 15, 16, 17, 33, 512, 515] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 9.0)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - plain).abs() < 1e-4, "length {len}");
            assert_ne!(
                len > 0,
                plain == 0.0,
                "length {len}: a zero product would make the comparison prove nothing"
            );
        }
    }
}
