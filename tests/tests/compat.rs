//! Model files of earlier format versions keep loading: `compat/rank1-v1.msr` is the
//! reference rank1 model as release 0.1.0 wrote it (format version 1, no extension
//! records). It must load, be written back as version 2 with the same parameters, and
//! predict exactly as that version 2 file does.

use msr_runtime::ModelRecord;
use msr_runtime::realtime::{RtModel, Session};

const V1: &[u8] = include_bytes!("../compat/rank1-v1.msr");

#[test]
fn version_1_model_loads_and_predicts_as_version_2() {
    assert_eq!(u16::from_le_bytes([V1[4], V1[5]]), 1);
    let old = ModelRecord::from_bytes(V1).expect("a version 1 file loads");
    assert_eq!(old.ext, Default::default());
    assert_eq!(old.info.trainer_version, "0.1.0");
    let rewritten = old.to_bytes();
    assert_eq!(u16::from_le_bytes([rewritten[4], rewritten[5]]), 2);
    let new = ModelRecord::from_bytes(&rewritten).unwrap();
    assert_eq!(new, old);

    let (fi, fo) = (70, 68);
    let x: Vec<f32> = (0..4 * fi)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let y: Vec<f32> = (0..4 * fo)
        .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
        .collect();
    let run = |rec: &ModelRecord| {
        let mut s = Session::new(RtModel::new(rec).unwrap(), 8).unwrap();
        s.adapt(&x[..fi], &y[..fo], 1).unwrap();
        let mut out = vec![0.0; 4 * fo];
        s.predict(&x, 4, &mut out).unwrap();
        out
    };
    let (a, b) = (run(&old), run(&new));
    assert_eq!(a, b);
    assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|v| *v != 0.0));
}

/// A state that release 0.1.0 saved for this version 1 file (the state format has not
/// changed: it carries the model file's CRC trailer as the model's fingerprint) still
/// loads through the C ABI, which fingerprints a model by the trailer of the file it read.
#[test]
fn states_saved_for_a_version_1_file_still_load() {
    use msr::*;
    use msr_runtime::realtime::encode_state;
    let old = ModelRecord::from_bytes(V1).unwrap();
    let values: Vec<f32> = old
        .layers
        .iter()
        .flat_map(|l| l.adapted0.iter().flatten())
        .map(|v| v * 0.5)
        .collect();
    let mut state = vec![0u8; 16 + 4 * values.len()];
    let written = encode_state(
        msr_runtime::format::trailer(V1),
        values.iter().copied(),
        values.len(),
        &mut state,
    )
    .unwrap();
    state.truncate(written);

    let mut m = std::ptr::null_mut();
    // SAFETY: a live buffer with its length; out pointers to locals.
    unsafe {
        assert_eq!(
            msr_model_load_bytes(V1.as_ptr(), V1.len(), &mut m),
            msr_status::MSR_OK
        );
        let mut s = std::ptr::null_mut();
        assert_eq!(
            msr_session_new(m, std::ptr::null(), &mut s),
            msr_status::MSR_OK
        );
        assert_eq!(
            msr_session_load_state(s, state.as_ptr(), state.len()),
            msr_status::MSR_OK
        );
        // And a state of another model is still refused.
        let mut other = state.clone();
        other[8] ^= 1;
        assert_ne!(
            msr_session_load_state(s, other.as_ptr(), other.len()),
            msr_status::MSR_OK
        );
        msr_session_free(&mut s);
        msr_model_free(&mut m);
    }
}
