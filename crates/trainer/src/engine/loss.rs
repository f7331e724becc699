//! The SimSiam objective and the collapse monitor.

use tch::{Kind, Tensor};

/// Symmetric negative cosine similarity, `-½ [cos(p1, sg(z2)) + cos(p2, sg(z1))]`.
///
/// `stop_grad = false` lets gradients into the target branch: the paper's ablation, which
/// collapses (loss → −1); it exists only to test the collapse alarm.
pub fn simsiam_loss(p1: &Tensor, p2: &Tensor, z1: &Tensor, z2: &Tensor, stop_grad: bool) -> Tensor {
    // In float32 whatever precision the forward pass ran in.
    let f32 = |t: &Tensor| t.to_kind(Kind::Float);
    let target = |z: &Tensor| {
        if stop_grad {
            f32(z).detach()
        } else {
            f32(z)
        }
    };
    let d1 = Tensor::cosine_similarity(&f32(p1), &target(z2), 1, 1e-8).mean(Kind::Float);
    let d2 = Tensor::cosine_similarity(&f32(p2), &target(z1), 1, 1e-8).mean(Kind::Float);
    -(d1 + d2) * 0.5
}

/// Std over the batch of the l2-normalised outputs, averaged over channels.
///
/// About 1/√d for outputs spread over the sphere; 0 when every input maps to one point.
pub fn output_std(z: &Tensor) -> f64 {
    tch::no_grad(|| {
        let z = z.to_kind(Kind::Float);
        let norm = z.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        (z / norm)
            .std_dim(Some([0i64].as_slice()), true, false)
            .mean(Kind::Float)
            .double_value(&[])
    })
}

/// Effective rank of the batch's l2-normalised, centred outputs: `exp(entropy)` of their
/// normalised covariance spectrum (Roy & Vetterli, 2007), between 1 and `min(batch − 1, d)`.
///
/// Why a second collapse signal: the projector's last BN keeps every channel's batch
/// variance at 1 in training mode, so an encoder that collapses often keeps
/// [`output_std`] near a constant fraction of 1/√d while all channels move together.
/// That shows up here as a rank falling towards 1.
pub fn effective_rank(z: &Tensor) -> f64 {
    tch::no_grad(|| {
        let z = z.to_kind(Kind::Double);
        let z = &z / z.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        let centred = &z - z.mean_dim(Some([0i64].as_slice()), true, Kind::Double);
        let gram = centred.matmul(&centred.transpose(0, 1));
        let eig = gram.linalg_eigvalsh("L").clamp_min(0.0);
        let total = eig.sum(Kind::Double).double_value(&[]);
        if total <= 0.0 {
            return 1.0;
        }
        let p = (eig / total).clamp_min(1e-300);
        (-(&p * p.log()).sum(Kind::Double)).exp().double_value(&[])
    })
}

/// The healthy level of [`output_std`] for output dimension `d`.
pub fn healthy_std(d: i64) -> f64 {
    1.0 / (d as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn leaf(seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([8, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true)
    }

    #[test]
    fn stop_gradient_keeps_gradients_out_of_the_target_branch() {
        let (p1, p2, z1, z2) = (leaf(1), leaf(2), leaf(3), leaf(4));
        simsiam_loss(&p1, &p2, &z1, &z2, true).backward();
        assert!(p1.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(p2.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(!z1.grad().defined(), "no gradient may reach z1");
        assert!(!z2.grad().defined(), "no gradient may reach z2");

        let (p1, p2, z1, z2) = (leaf(1), leaf(2), leaf(3), leaf(4));
        simsiam_loss(&p1, &p2, &z1, &z2, false).backward();
        assert!(
            z1.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "without stop-grad z1 gets gradient"
        );
    }

    #[test]
    fn stop_gradient_through_a_tiny_encoder() {
        // Encoder f = one linear map; predictions that do not depend on f, so the only
        // path from the loss to f is the target branch, which stop-grad must cut.
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let f = tch::nn::linear(vs.root() / "f", 4, 6, Default::default());
        let x1 = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let x2 = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let (z1, z2) = (x1.apply(&f), x2.apply(&f));
        // p does not depend on the encoder: only a target branch could carry gradient to f.
        let p1 = Tensor::randn([5, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let p2 = Tensor::randn([5, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        simsiam_loss(&p1, &p2, &z1, &z2, true).backward();
        assert!(
            !f.ws.grad().defined(),
            "the encoder got gradient through the target branch"
        );
        simsiam_loss(&p1, &p2, &x1.apply(&f), &x2.apply(&f), false).backward();
        assert!(f.ws.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn loss_range_and_std_levels() {
        let z = Tensor::randn([512, 64], (Kind::Float, Device::Cpu));
        let loss = simsiam_loss(&z, &z, &z, &z, true).double_value(&[]);
        assert!(
            (loss + 1.0).abs() < 1e-5,
            "identical views give -1, got {loss}"
        );
        let healthy = output_std(&z);
        assert!(
            (healthy / healthy_std(64) - 1.0).abs() < 0.1,
            "random outputs: {healthy}"
        );
        let collapsed = Tensor::ones([512, 64], (Kind::Float, Device::Cpu)) + &z * 1e-4;
        assert!(output_std(&collapsed) < 0.01 * healthy_std(64));
        let full = effective_rank(&z);
        assert!(
            full > 40.0 && full <= 64.0,
            "random outputs use most dimensions: {full}"
        );
        // Rank-1 outputs: every sample is ±u. BN would keep such outputs' std high.
        let signs = Tensor::randn([512, 1], (Kind::Float, Device::Cpu)).sign();
        let rank1 = signs * Tensor::randn([1, 64], (Kind::Float, Device::Cpu));
        assert!(output_std(&rank1) > 0.5 * healthy_std(64));
        assert!(effective_rank(&rank1) < 1.01, "{}", effective_rank(&rank1));
    }
}
