//! The contract every session backend implements: the real-time CPU engine
//! ([`crate::realtime::Session`]) here, and the burn sessions of `msr-runtime` (GPU,
//! reference CPU). The C ABI (and every binding) drives a session through it alone.

use crate::error::Error;
use crate::realtime::{CallCosts, Inner};

/// What a session does on any engine. A failed call leaves the engine as it was; an
/// adaptation whose loss or any parameter turns non-finite, or whose loss explodes
/// ([`crate::realtime::exploded`]: over 1000 times the initial loss), is rolled back and
/// reported as [`Error::Diverged`].
pub trait Engine: Send {
    /// Scalars per input example.
    fn input_len(&self) -> usize;
    /// Adapts the meta-learned initialisation to `n` examples; returns the support loss.
    fn adapt(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error>;
    /// Predicts `n` examples into `out`; a non-finite prediction is an error.
    fn predict(&mut self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), Error>;
    /// Back to the meta-learned initialisation.
    fn reset(&mut self);
    /// Writes the adapted parameters; returns the bytes written.
    fn save_state(&self, buf: &mut [u8]) -> Result<usize, Error>;
    /// Restores parameters written by `save_state` for the same model.
    fn load_state(&mut self, buf: &[u8]) -> Result<(), Error>;
    /// Chooses the adaptation algorithm ([`Inner`]); `None` if this engine has only SGD.
    fn set_inner(&mut self, inner: Inner) -> Option<Result<(), Error>> {
        let _ = inner;
        None
    }
    /// Folds examples into the adaptation ([`crate::realtime::Session::observe`]); `None`
    /// if this engine has no streaming updates.
    fn observe(&mut self, x: &[f32], y: &[f32], n: usize) -> Option<Result<(), Error>> {
        let _ = (x, y, n);
        None
    }
    /// Sets the forgetting factor of `observe`; `None` if this engine has no streaming.
    fn set_forgetting(&mut self, gamma: f32) -> Option<Result<(), Error>> {
        let _ = gamma;
        None
    }
    /// The bound of every call ([`crate::realtime::Session::costs`]); `None` if this engine
    /// has no cost model.
    fn costs(&self) -> Option<CallCosts> {
        None
    }
    /// The bound of an adaptation on exactly `n` examples
    /// ([`crate::realtime::Session::adapt_cost_at`]); `None` if this engine has no cost model.
    fn adapt_cost_at(&self, n: usize) -> Option<u128> {
        let _ = n;
        None
    }
    /// Adapts from the current parameters with `steps` steps ([`crate::realtime::Session::refine`]);
    /// `None` if this engine can only adapt from the initialisation.
    fn refine(
        &mut self,
        x: &[f32],
        y: &[f32],
        n: usize,
        steps: usize,
    ) -> Option<Result<f32, Error>> {
        let _ = (x, y, n, steps);
        None
    }
}
