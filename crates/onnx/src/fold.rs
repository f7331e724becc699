//! Batch-norm folding: inference-mode batch norm merged into the convolution before it,
//! so the exported graph has no BatchNormalization nodes.

/// Folds inference-mode batch norm into the convolution before it:
/// `W' = W·γ/√(var+eps)` per output channel and `b' = β − μ·γ/√(var+eps)`.
/// Computed in f64 so folding adds no error beyond the final rounding to f32.
/// Returns the channel whose result is not finite (e.g. `var + eps ≤ 0`) as the error.
pub fn fold_batch_norm(
    w: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Result<(Vec<f32>, Vec<f32>), usize> {
    let cout = gamma.len();
    let per_channel = w.len() / cout.max(1);
    let mut wf = Vec::with_capacity(w.len());
    let mut bias = Vec::with_capacity(cout);
    for c in 0..cout {
        let denom = f64::from(var[c]) + eps;
        let scale = f64::from(gamma[c]) / denom.sqrt();
        let b = f64::from(beta[c]) - f64::from(mean[c]) * scale;
        if denom <= 0.0 || !scale.is_finite() || !(b as f32).is_finite() {
            return Err(c);
        }
        bias.push(b as f32);
        let row = &w[c * per_channel..(c + 1) * per_channel];
        for &x in row {
            let v = (f64::from(x) * scale) as f32;
            if !v.is_finite() {
                return Err(c);
            }
            wf.push(v);
        }
    }
    Ok((wf, bias))
}
