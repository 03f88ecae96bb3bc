//! Adam over the meta-parameters, with per-tensor freezing.

use burn::tensor::Tensor;
use msr_runtime::MetaParams;

/// Adam over a flat list of tensors (in [`MetaParams::tensors`] order).
#[derive(Clone, Debug)]
pub(super) struct Adam {
    pub(super) lr: f64,
    pub(super) beta1: f64,
    pub(super) beta2: f64,
    pub(super) eps: f64,
    pub(super) t: u64,
    pub(super) m: Vec<Tensor<2>>,
    pub(super) v: Vec<Tensor<2>>,
    /// Tensors the outer loop leaves alone (the zero learning rates of layers that do not
    /// adapt: ANIL's body, ProtoNets).
    pub(super) frozen: Vec<bool>,
}

impl Adam {
    pub(super) fn new(lr: f64, params: &MetaParams, frozen: Vec<bool>) -> Self {
        let zeros: Vec<Tensor<2>> = params
            .tensors()
            .iter()
            .map(|p| p.clone().detach().zeros_like())
            .collect();
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: zeros.clone(),
            v: zeros,
            frozen,
        }
    }

    /// One update; returns fresh leaves (on the same device as `params`).
    pub(super) fn step(&mut self, params: &MetaParams, grads: &[Tensor<2>]) -> MetaParams {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let mut i = 0;
        params.map(|p| {
            if self.frozen[i] {
                i += 1;
                return p;
            }
            let g = grads[i].clone();
            let m =
                self.m[i].clone().mul_scalar(self.beta1) + g.clone().mul_scalar(1.0 - self.beta1);
            let v =
                self.v[i].clone().mul_scalar(self.beta2) + g.square().mul_scalar(1.0 - self.beta2);
            let update =
                m.clone().div_scalar(bc1) / (v.clone().div_scalar(bc2).sqrt().add_scalar(self.eps));
            self.m[i] = m;
            self.v[i] = v;
            i += 1;
            (p.detach() - update.mul_scalar(self.lr))
                .detach()
                .require_grad()
        })
    }
}
