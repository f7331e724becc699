//! Vector arithmetic that the probe, the gallery's search and the trainer's kNN evaluation
//! share.

/// The dot product, summed in 16 independent lanes: one running sum must add its products
/// in order, one at a time, while lanes let the compiler use vector instructions. Distances
/// are most of what an HNSW graph computes: against a single running sum, the embedded
/// gallery inserted 2.1× and searched 2.4× as fast (`gallery-bench --n 5000`, 512-d, both
/// builds side by side on one machine).
///
/// On x86-64 CPUs with AVX2 the same lanes run in 256-bit registers (the baseline target
/// has 128-bit SSE2 only); the sums are added in the same order, so both give the same bits.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: `dot_avx2` needs AVX2, which this CPU was just found to have.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
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
    use super::{dot, dot_lanes};

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
            // Whichever path this CPU takes, the bits are the portable lanes' bits.
            assert_eq!(
                dot(&a, &b).to_bits(),
                dot_lanes(&a, &b).to_bits(),
                "length {len}"
            );
            assert_ne!(
                len > 0,
                plain == 0.0,
                "length {len}: a zero product would make the comparison prove nothing"
            );
        }
    }
}
