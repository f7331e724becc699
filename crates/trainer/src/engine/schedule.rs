//! Learning-rate schedule: optional linear warm-up, then cosine decay, per epoch.

/// The lr of 0-based `epoch`: `peak × (e+1)/warmup` during warm-up, then
/// `peak × ½(1 + cos(π·(e − warmup)/(epochs − warmup)))`, as the SimSiam reference
/// (`adjust_learning_rate`) computes it.
pub fn lr_at(peak: f64, epoch: usize, epochs: usize, warmup: usize) -> f64 {
    if epoch < warmup {
        return peak * (epoch + 1) as f64 / warmup as f64;
    }
    let progress = (epoch - warmup) as f64 / (epochs - warmup).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The same schedule by step rather than by epoch: `progress` is the epochs done so far,
/// with a fraction for the current one (`epoch + (step + 1) / steps`). The warm-up then
/// rises step by step from near zero, which fine-tuning needs: its first steps are the
/// most violent, with a freshly initialised head on top of the encoder.
pub fn lr_at_progress(peak: f64, progress: f64, epochs: usize, warmup: usize) -> f64 {
    let warmup = warmup as f64;
    if progress < warmup {
        return peak * progress / warmup;
    }
    let span = (epochs as f64 - warmup).max(f64::MIN_POSITIVE);
    let t = ((progress - warmup) / span).clamp(0.0, 1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_step_the_warm_up_rises_and_the_decay_ends_at_zero() {
        assert!((lr_at_progress(0.1, 0.01, 10, 1) - 0.001).abs() < 1e-12);
        assert!((lr_at_progress(0.1, 0.5, 10, 1) - 0.05).abs() < 1e-12);
        assert_eq!(lr_at_progress(0.1, 1.0, 10, 1), 0.1);
        assert!((lr_at_progress(0.1, 5.5, 10, 1) - 0.05).abs() < 1e-12);
        assert!(lr_at_progress(0.1, 10.0, 10, 1) < 1e-12);
        assert_eq!(
            lr_at_progress(0.1, 0.0, 10, 0),
            0.1,
            "no warm-up: the peak at once"
        );
        let decayed = 0.1 * 0.5 * (1.0 + (std::f64::consts::PI * 0.05).cos());
        assert!(
            (lr_at_progress(0.1, 0.5, 10, 0) - decayed).abs() < 1e-12,
            "no warm-up: the decay starts with the first step"
        );
    }

    #[test]
    fn cosine_without_and_with_warmup() {
        assert_eq!(lr_at(0.05, 0, 30, 0), 0.05);
        assert!((lr_at(0.05, 15, 30, 0) - 0.025).abs() < 1e-12);
        assert!(lr_at(0.05, 29, 30, 0) < 0.0002);
        assert!((lr_at(0.1, 0, 10, 2) - 0.05).abs() < 1e-12);
        assert_eq!(lr_at(0.1, 2, 10, 2), 0.1);
        let lrs: Vec<f64> = (2..10).map(|e| lr_at(0.1, e, 10, 2)).collect();
        assert!(
            lrs.windows(2).all(|w| w[1] < w[0]),
            "decays monotonically: {lrs:?}"
        );
    }
}
