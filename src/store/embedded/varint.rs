//! LEB128 lengths, as the embedded store's dedupe log and packed events write them: seven bits
//! a byte, low first, the top bit set on every byte but the last.

/// Appends `n`.
pub(super) fn put(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads one off the front of `buf`; `None` if it is truncated or does not fit a `usize`.
pub(super) fn get(buf: &mut &[u8]) -> Option<usize> {
    let mut n: usize = 0;
    for shift in (0..usize::BITS).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        let bits = usize::from(byte & 0x7F);
        if bits.checked_shl(shift)? >> shift != bits {
            return None;
        }
        n |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_and_bad_ones_are_refused() {
        for n in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as usize,
            usize::MAX,
        ] {
            let mut out = Vec::new();
            put(&mut out, n);
            let mut buf = &out[..];
            assert_eq!(get(&mut buf), Some(n));
            assert!(buf.is_empty());
            // Every truncation is refused.
            for cut in 0..out.len() {
                assert_eq!(get(&mut &out[..cut]), None, "{n} cut at {cut}");
            }
        }
        // Eleven bytes of continuation: longer than any usize.
        assert_eq!(get(&mut &[0xFF; 11][..]), None);
        // Ten bytes whose last carries bits past 64.
        let mut too_big = vec![0xFF; 9];
        too_big.push(0x7F);
        assert_eq!(get(&mut &too_big[..]), None);
    }
}
