//! The saved-state encoding: a few hundred bytes a robot can keep per tool or terrain.

use alloc::format;
use alloc::string::ToString;

use crate::error::{DataError, Error, ShapeError, StateError};

pub(crate) const STATE_MAGIC: &[u8; 4] = b"MSRS";
pub(crate) const STATE_VERSION: u16 = 1;
pub(crate) const STATE_HEADER: usize = 12;

/// Encodes a session state: `"MSRS"`, u16 version, u16 reserved, u32 model fingerprint,
/// `count` f32 values (little-endian), u32 CRC-32 of everything before it. A non-finite
/// value is refused ([`StateError::NonFinite`]): no state is written that
/// [`check_state`] would refuse. On error the contents of `buf` are unspecified.
pub fn encode_state(
    fingerprint: u32,
    values: impl Iterator<Item = f32>,
    count: usize,
    buf: &mut [u8],
) -> Result<usize, Error> {
    let len = STATE_HEADER + 4 * count + 4;
    if buf.len() < len {
        return Err(DataError::Shape(ShapeError::Mismatch {
            what: "state buffer length".into(),
            expected: format!("at least {len}"),
            got: buf.len().to_string(),
        })
        .into());
    }
    buf[0..4].copy_from_slice(STATE_MAGIC);
    buf[4..6].copy_from_slice(&STATE_VERSION.to_le_bytes());
    buf[6..8].copy_from_slice(&0u16.to_le_bytes());
    buf[8..12].copy_from_slice(&fingerprint.to_le_bytes());
    let mut at = STATE_HEADER;
    for (index, v) in values.take(count).enumerate() {
        if !v.is_finite() {
            return Err(StateError::NonFinite { index }.into());
        }
        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
        at += 4;
    }
    debug_assert_eq!(at, len - 4);
    crate::frame::seal(&mut buf[..len]);
    Ok(len)
}

/// Checks a state for a model with `fingerprint` and `count` adapted values.
pub fn check_state(fingerprint: u32, count: usize, buf: &[u8]) -> Result<(), Error> {
    let len = STATE_HEADER + 4 * count + 4;
    if buf.len() != len {
        return Err(StateError::Length {
            needed: len,
            got: buf.len(),
        }
        .into());
    }
    let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    if &magic != STATE_MAGIC {
        return Err(StateError::BadMagic { found: magic }.into());
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != STATE_VERSION {
        return Err(StateError::UnsupportedVersion {
            found: version,
            supported: STATE_VERSION,
        }
        .into());
    }
    crate::frame::unseal(buf)
        .map_err(|(stored, computed)| StateError::Checksum { stored, computed })?;
    let fp = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if fp != fingerprint {
        return Err(StateError::OtherModel {
            found: fp,
            expected: fingerprint,
        }
        .into());
    }
    if let Some(index) = state_values(buf).position(|v| !v.is_finite()) {
        return Err(StateError::NonFinite { index }.into());
    }
    Ok(())
}

/// The values of a state that passed [`check_state`].
pub fn state_values(buf: &[u8]) -> impl Iterator<Item = f32> + '_ {
    buf[STATE_HEADER..buf.len() - 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
}
