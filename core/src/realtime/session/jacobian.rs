//! The rows of the Jacobian `J = d outputs / d v` of one example (or a batch of a dense
//! net's), by the cheapest path the layers allow: from U for a linear last layer, forward
//! mode for a convolutional one, batched rows for a dense net, else one backward pass per
//! output.

use alloc::vec::Vec;

use super::Session;
use crate::realtime::activation::activation_backward;
use crate::realtime::gn::GnBuffers;
use crate::realtime::layers::forward;
use crate::realtime::weights::{materialize, weights_backward};
use crate::spec::Activation;

impl Session {
    /// Whether Gauss-Newton moves the last layer's parameters and no other layer's.
    pub(super) fn moves_only_last(&self) -> bool {
        let last = self.model.layers.len() - 1;
        self.gn_layers
            .iter()
            .enumerate()
            .all(|(i, on)| *on == (i == last))
    }

    /// `Some(k)` when Gauss-Newton moves only the last layer, a dense identity layer with
    /// `W = reshape(U v)` (`k = len(v)`): its outputs are `J (v, b)` from Jacobian rows
    /// that need U and the layer's input, not W.
    pub(super) fn linear_head(&self) -> Option<usize> {
        let last = self.model.layers.len() - 1;
        let layer = &self.model.layers[last];
        let only_last = self.moves_only_last();
        match (only_last, layer.activation, &layer.kind, &layer.weights) {
            (
                true,
                Activation::Identity,
                crate::realtime::Kind::Dense { .. },
                crate::realtime::Weights::Dense { .. },
            ) => Some(self.adapted[last][0].len()),
            _ => None,
        }
    }

    /// The forward pass that the Jacobian rows need for one example: up to the last
    /// layer's input for a [`Session::linear_head`] (`head`), else all of it.
    pub(super) fn jacobian_input(&mut self, x: &[f32], head: bool) {
        if head {
            self.forward_layers(x, 1, self.model.layers.len() - 1);
        } else {
            self.forward_chunk(x, 1);
        }
    }

    /// All rows of `J` for the example in the activations (a chunk of one), `[outputs, p]`.
    /// When the solver moves only the last layer and it has no activation, its outputs
    /// are linear in its parameters and the rows come from its input: a dense layer with
    /// `W = reshape(U v)` gives d out_o / d v_j = (U_j a)_o directly; any other (a
    /// convolution, Kronecker-factored U) with fewer parameters than outputs gives column
    /// `j` as the layer's output for `W = reshape(U e_j)` without bias (forward mode: `k`
    /// layer passes instead of one backward pass per output: rot8's 21,600 outputs, k of a
    /// few dozen); d out_o / d b_o = 1. Otherwise one backward pass per output.
    pub(super) fn jacobian_rows(&mut self, gn: &mut GnBuffers) {
        let GnBuffers {
            jac,
            jz,
            deltas,
            batch,
            ..
        } = gn;
        let fo = self.model.output_len;
        let p = jac.len() / fo.max(1);
        let last = self.model.layers.len() - 1;
        let layer = &self.model.layers[last];
        let only_last = self.moves_only_last();
        if only_last && layer.activation == Activation::Identity {
            let a = &self.acts[last][..layer.in_len];
            let k = self.adapted[last][0].len();
            let main = match (&layer.kind, &layer.weights) {
                (
                    crate::realtime::Kind::Dense { .. },
                    crate::realtime::Weights::Dense { ut, rows, .. },
                ) => {
                    // Column j of the rows is W_j a, W_j = reshape(U e_j): one
                    // matrix-vector product each (the kernel of the forward pass).
                    use crate::realtime::gemm::{Mat, MatMut, gemm};
                    jac.fill(0.0);
                    let col_out = &mut self.db[..fo];
                    let inputs = a.len();
                    for (j, col) in ut.chunks_exact(*rows).enumerate() {
                        gemm(
                            Mat::rows(a, 1, inputs),
                            Mat::rows(col, fo, inputs).t(),
                            MatMut::rows(col_out, 1, fo),
                            None,
                            false,
                        );
                        for (o, v) in col_out.iter().enumerate() {
                            jac[o * p + j] = *v;
                        }
                    }
                    true
                }
                (crate::realtime::Kind::Dense { inputs, .. }, crate::realtime::Weights::Plain) => {
                    jac.fill(0.0);
                    for o in 0..fo {
                        jac[o * p + o * inputs..o * p + (o + 1) * inputs].copy_from_slice(a);
                    }
                    true
                }
                (_, weights) if k < fo => {
                    jac.fill(0.0);
                    let e = &mut self.grads[last][0];
                    e.fill(0.0);
                    let col_out = &mut self.db[..fo];
                    for j in 0..k {
                        e[j] = 1.0;
                        let [s0, s1] = &mut self.scratch;
                        materialize(weights, e, &mut self.dw[last], s0, s1);
                        e[j] = 0.0;
                        forward(layer, &self.dw[last], None, a, col_out, 1, &mut self.patch);
                        for (o, v) in col_out.iter().enumerate() {
                            jac[o * p + j] = *v;
                        }
                    }
                    true
                }
                _ => false,
            };
            if main {
                if let Some(b) = self.adapted[last].get(1) {
                    // One bias per output channel: each covers `fo / len` outputs.
                    let per = fo / b.len();
                    for o in 0..fo {
                        jac[o * p + k + o / per] = 1.0;
                    }
                }
                return;
            }
        }
        if *batch > 0 {
            self.dense_rows(0, 1, jac, p, jz, deltas);
            return;
        }
        for o in 0..fo {
            self.jacobian_row(o, &mut jac[o * p..(o + 1) * p]);
        }
    }

    /// Rows of `J` for examples `first..first + count` of the chunk in the activations,
    /// for a net of dense layers ([`RtModel::dense_jacobian`]): row `e F + o` of `rows`
    /// (rows `p` apart) is output `o` of example `first + e`. Per moved `U` layer, the
    /// `z_j = reshape(U e_j) h` of every example of the batch in one product (`U` read once
    /// per batch, not once per example); the outputs' gradients go backward through the
    /// layers for all `count F` rows at once, and `d out_o / d v_j = delta_o . z_j` (the
    /// burn path's `delta (h U)`). One backward pass per output would form
    /// `U^T vec(delta_o h^T)` for every output: `F` times the `out x in x k` work.
    pub(super) fn dense_rows(
        &self,
        first: usize,
        count: usize,
        rows: &mut [f32],
        p: usize,
        jz: &mut [f32],
        deltas: &mut [f32],
    ) {
        use crate::realtime::gemm::{Mat, MatMut, gemm};
        let model = &*self.model;
        let fo = model.output_len;
        let lowest = self
            .gn_layers
            .iter()
            .position(|m| *m)
            .expect("a dense plan moves some layer");
        let r = count * fo;
        // z_j for every moved U layer, in layer order: [count, k, out] each.
        let mut zat = 0;
        for (i, layer) in model.layers.iter().enumerate() {
            if let (true, crate::realtime::Weights::Dense { ut, rows: len, .. }) =
                (self.gn_layers[i], &layer.weights)
            {
                let (inputs, out) = (layer.in_len, layer.out_len);
                let k = ut.len() / len;
                let h = &self.acts[i][first * inputs..(first + count) * inputs];
                gemm(
                    Mat::rows(h, count, inputs),
                    Mat::rows(ut, k * out, inputs).t(),
                    MatMut::rows(&mut jz[zat..zat + count * k * out], count, k * out),
                    None,
                    false,
                );
                zat += count * k * out;
            }
        }
        let half = deltas.len() / 2;
        let (mut da, mut db) = deltas.split_at_mut(half);
        da[..r * fo].fill(0.0);
        for q in 0..r {
            da[q * fo + q % fo] = 1.0;
        }
        // Moved layers' blocks and z's, walked from the end.
        let (mut at, mut zend) = (p, zat);
        for i in (lowest..model.layers.len()).rev() {
            let layer = &model.layers[i];
            let (inputs, out) = (layer.in_len, layer.out_len);
            for e in 0..count {
                let ex = first + e;
                let act = &self.acts[i + 1][ex * out..(ex + 1) * out];
                let pre = self.pre[i].get(ex * out..(ex + 1) * out).unwrap_or(&[]);
                for d in da[e * fo * out..(e + 1) * fo * out].chunks_exact_mut(out) {
                    activation_backward(layer.activation, d, act, pre);
                }
            }
            if self.gn_layers[i] {
                let len: usize = self.adapted[i].iter().map(Vec::len).sum();
                at -= len;
                let main = self.adapted[i][0].len();
                match &layer.weights {
                    crate::realtime::Weights::Dense { .. } => {
                        zend -= count * main * out;
                        for e in 0..count {
                            let z = &jz[zend + e * main * out..zend + (e + 1) * main * out];
                            gemm(
                                Mat::rows(&da[e * fo * out..(e + 1) * fo * out], fo, out),
                                Mat::rows(z, main, out).t(),
                                MatMut::strided(&mut rows[e * fo * p + at..], fo, main, p),
                                None,
                                false,
                            );
                        }
                    }
                    _ => {
                        // Plain: d out / d W[a, b] = delta_a h_b.
                        for q in 0..r {
                            let ex = first + q / fo;
                            let h = &self.acts[i][ex * inputs..(ex + 1) * inputs];
                            let block = &mut rows[q * p + at..q * p + at + main];
                            for (a, d) in da[q * out..(q + 1) * out].iter().enumerate() {
                                for (b, x) in block[a * inputs..(a + 1) * inputs].iter_mut().zip(h)
                                {
                                    *b = d * x;
                                }
                            }
                        }
                    }
                }
                if len > main {
                    for q in 0..r {
                        rows[q * p + at + main..q * p + at + len]
                            .copy_from_slice(&da[q * out..(q + 1) * out]);
                    }
                }
            }
            if i > lowest {
                gemm(
                    Mat::rows(&da[..r * out], r, out),
                    Mat::rows(&self.w[i], out, inputs),
                    MatMut::rows(&mut db[..r * inputs], r, inputs),
                    None,
                    false,
                );
                core::mem::swap(&mut da, &mut db);
            }
        }
    }

    /// Row `o` of `J` for the example in the activations (a chunk of one): the gradient of
    /// output `o` with respect to every parameter the solver moves, into `row`.
    pub(super) fn jacobian_row(&mut self, o: usize, row: &mut [f32]) {
        for g in self.grads.iter_mut().flatten() {
            g.fill(0.0);
        }
        for d in &mut self.dw {
            d.fill(0.0);
        }
        let fo = self.model.output_len;
        self.da[..fo].fill(0.0);
        self.da[o] = 1.0;
        self.backward_chunk(1);
        let mut at = 0;
        for i in 0..self.model.layers.len() {
            if !self.gn_layers[i] {
                continue;
            }
            let layer = &self.model.layers[i];
            let [s0, s1] = &mut self.scratch;
            let (g_main, _) = self.grads[i].split_first_mut().expect("non-empty");
            weights_backward(&layer.weights, &self.dw[i], g_main, s0, s1);
            for v in &self.grads[i] {
                row[at..at + v.len()].copy_from_slice(v);
                at += v.len();
            }
        }
    }
}
