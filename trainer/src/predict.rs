//! One task adapted and predicted through the burn path, in raw units: what `trainer
//! predict` writes, and the reference the C ABI (the real-time engine) is tested against.

use burn::tensor::{DType, Tensor, TensorData};
use msr_runtime::Model;

/// Adapts `model` to `n` support examples (`xs` `[n, input_len]`, `ys` `[n, output_len]`)
/// with `steps` inner steps and predicts `m` queries `xq` `[m, input_len]`: `[m,
/// output_len]`, row-major, raw units.
pub fn adapt_predict(
    model: &Model,
    xs: &[f32],
    ys: &[f32],
    n: usize,
    xq: &[f32],
    m: usize,
    steps: usize,
) -> Result<Vec<f32>, msr_runtime::Error> {
    let (fi, fo) = (model.net().input_len(), model.net().output_len());
    let device = model.net().device().clone();
    let t = |v: &[f32], n: usize, f: usize| {
        Tensor::<3>::from_data(
            TensorData::new(v.to_vec(), [1, n, f]),
            (&device, DType::F32),
        )
    };
    if xs.len() != n * fi || ys.len() != n * fo || xq.len() != m * fi {
        return Err(msr_runtime::ShapeError::Mismatch {
            what: "support and query sets".into(),
            expected: format!("[{n}, {fi}], [{n}, {fo}] and [{m}, {fi}]"),
            got: format!("{}, {} and {} values", xs.len(), ys.len(), xq.len()),
        }
        .into());
    }
    let task = model.adapt(t(xs, n, fi), t(ys, n, fo), steps)?;
    let pred = model.predict(&task, t(xq, m, fi))?;
    Ok(msr_runtime::model::download(&pred))
}
