//! Activation functions and their gradients, in place over a chunk's values.

use super::kernels::tanh_in_place;
use crate::math::{gelu, gelu_grad};
use crate::spec::Activation;

/// Applies `activation` to a layer's outputs `out` in place; GELU keeps the
/// pre-activations in `pre` (as long as `out`) for the backward pass, which other
/// activations do not need (`pre` may be empty).
pub(crate) fn activate(activation: Activation, out: &mut [f32], pre: &mut [f32]) {
    match activation {
        Activation::Identity => {}
        // Not `max(0)`: that turns NaN into 0 and hides a divergence. A select with an
        // unconditional store, so that it vectorises (a conditional store does not).
        Activation::Relu => {
            for v in out.iter_mut() {
                *v = if *v < 0.0 { 0.0 } else { *v };
            }
        }
        Activation::Tanh => tanh_in_place(out),
        Activation::Gelu => {
            pre.copy_from_slice(out);
            for v in out.iter_mut() {
                *v = gelu(*v);
            }
        }
    }
}

/// `d *= activation'` elementwise, for the `d.len()` leading values: from the layer's
/// output `out` (ReLU, tanh) or its pre-activation `pre` (GELU; empty for other layers).
pub(crate) fn activation_backward(activation: Activation, d: &mut [f32], out: &[f32], pre: &[f32]) {
    match activation {
        Activation::Identity => {}
        Activation::Relu => {
            for (d, o) in d.iter_mut().zip(out) {
                if *o <= 0.0 {
                    *d = 0.0;
                }
            }
        }
        Activation::Tanh => {
            for (d, o) in d.iter_mut().zip(out) {
                *d *= 1.0 - o * o;
            }
        }
        Activation::Gelu => {
            for (d, z) in d.iter_mut().zip(pre) {
                *d *= gelu_grad(*z);
            }
        }
    }
}
