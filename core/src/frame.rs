//! The framing msr's files share: bytes covered by a CRC-32 (IEEE) trailer, little-endian,
//! in the last four bytes. The model file, the saved session state and the training
//! checkpoint all end this way (docs/model-format.md, docs/file-formats.md).

/// Writes the CRC-32 of `framed[..len - 4]` into its last four bytes. `framed` must hold
/// at least the four trailer bytes.
pub fn seal(framed: &mut [u8]) {
    let end = framed.len() - 4;
    let crc = crc32fast::hash(&framed[..end]);
    framed[end..].copy_from_slice(&crc.to_le_bytes());
}

/// The bytes before the trailer if the trailer matches them; otherwise the stored and the
/// computed CRC. Fewer than four bytes have no trailer: `(0, 0)`.
pub fn unseal(framed: &[u8]) -> Result<&[u8], (u32, u32)> {
    if framed.len() < 4 {
        return Err((0, 0));
    }
    let end = framed.len() - 4;
    let stored = u32::from_le_bytes(framed[end..].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&framed[..end]);
    if stored == computed {
        Ok(&framed[..end])
    } else {
        Err((stored, computed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_frame_unseals_and_any_flip_is_caught() {
        let mut f = [1u8, 2, 3, 4, 5, 0, 0, 0, 0];
        seal(&mut f);
        assert_eq!(unseal(&f), Ok(&f[..5]));
        // The IEEE CRC of "123456789" is 0xCBF43926.
        let mut check = *b"123456789\0\0\0\0";
        seal(&mut check);
        assert_eq!(&check[9..], &0xCBF4_3926u32.to_le_bytes());
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f;
                g[byte] ^= 1 << bit;
                assert!(unseal(&g).is_err(), "flip of byte {byte} bit {bit}");
            }
        }
        assert!(unseal(&[1, 2]).is_err());
    }
}
