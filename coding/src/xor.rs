//! XOR parity for the geo layer: two buddy blocks `a` and `b` of possibly
//! different lengths give a parity block `a ⊕ b` as long as the longer
//! one, the shorter read as if padded with zeros (padding never stored).
//! Either block comes back from the other and the parity.
//!
//! Every function also works on a byte range: pass the same range
//! `[offset, offset+len)` of each block, cut short where a block ends.

use crate::error::{CodingError, Result};

/// `a ⊕ b`, as long as the longer of the two.
pub fn xor_parity(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut parity = vec![0u8; a.len().max(b.len())];
    xor_parity_into(a, b, &mut parity).expect("parity sized to the longer input");
    parity
}

/// Write `a ⊕ b` into `parity`, which must be exactly as long as the
/// longer input.
pub fn xor_parity_into(a: &[u8], b: &[u8], parity: &mut [u8]) -> Result<()> {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if parity.len() != long.len() {
        return Err(CodingError::ShardLength {
            index: 2,
            expected: long.len(),
            actual: parity.len(),
        });
    }
    // One pass over memory: read both inputs, write the parity once.
    let (head, tail) = parity.split_at_mut(short.len());
    xor_two(head, &long[..short.len()], short);
    tail.copy_from_slice(&long[short.len()..]);
    Ok(())
}

/// Recover a lost block (or range) of `lost_len` bytes from its buddy
/// `survivor` and `parity`. `parity` must cover at least `lost_len` and
/// `survivor` bytes (it is as long as the longer block); `survivor` may
/// be shorter or longer than the lost block.
pub fn xor_recover(survivor: &[u8], parity: &[u8], lost_len: usize) -> Result<Vec<u8>> {
    let mut lost = vec![0u8; lost_len];
    xor_recover_into(survivor, parity, &mut lost)?;
    Ok(lost)
}

/// [`xor_recover`] into a caller's buffer of the lost block's length.
pub fn xor_recover_into(survivor: &[u8], parity: &[u8], lost: &mut [u8]) -> Result<()> {
    if parity.len() < lost.len().max(survivor.len()) {
        return Err(CodingError::ShardLength {
            index: 2,
            expected: lost.len().max(survivor.len()),
            actual: parity.len(),
        });
    }
    let overlap = lost.len().min(survivor.len());
    let (head, tail) = lost.split_at_mut(overlap);
    xor_two(head, &parity[..overlap], &survivor[..overlap]);
    tail.copy_from_slice(&parity[overlap..overlap + tail.len()]);
    Ok(())
}

/// Bytes per step of the XOR loops; fixed-size arrays let the compiler
/// vectorise them.
const LANES: usize = 64;

/// `out = a ⊕ b`, all three the same length.
fn xor_two(out: &mut [u8], a: &[u8], b: &[u8]) {
    debug_assert!(out.len() == a.len() && a.len() == b.len());
    let mut o = out.chunks_exact_mut(LANES);
    let mut x = a.chunks_exact(LANES);
    let mut y = b.chunks_exact(LANES);
    for ((oc, xc), yc) in (&mut o).zip(&mut x).zip(&mut y) {
        let oc: &mut [u8; LANES] = oc.try_into().expect("chunks_exact");
        let xc: &[u8; LANES] = xc.try_into().expect("chunks_exact");
        let yc: &[u8; LANES] = yc.try_into().expect("chunks_exact");
        for i in 0..LANES {
            oc[i] = xc[i] ^ yc[i];
        }
    }
    for ((oc, xc), yc) in o
        .into_remainder()
        .iter_mut()
        .zip(x.remainder())
        .zip(y.remainder())
    {
        *oc = xc ^ yc;
    }
}

/// `dst[..src.len()] ^= src`: fold `src` into `dst`, `src` read as
/// zero-padded. A `src` longer than `dst` is [`CodingError::ShardLength`].
pub fn xor_into(dst: &mut [u8], src: &[u8]) -> Result<()> {
    if src.len() > dst.len() {
        return Err(CodingError::ShardLength {
            index: 1,
            expected: dst.len(),
            actual: src.len(),
        });
    }
    let head = &mut dst[..src.len()];
    let mut d = head.chunks_exact_mut(LANES);
    let mut s = src.chunks_exact(LANES);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let dc: &mut [u8; LANES] = dc.try_into().expect("chunks_exact");
        let sc: &[u8; LANES] = sc.try_into().expect("chunks_exact");
        for i in 0..LANES {
            dc[i] ^= sc[i];
        }
    }
    for (x, y) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *x ^= y;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn either_buddy_recovers_from_the_other(
            a in proptest::collection::vec(any::<u8>(), 0..3000),
            b in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let parity = xor_parity(&a, &b);
            prop_assert_eq!(parity.len(), a.len().max(b.len()));
            let mut into = vec![0u8; parity.len()];
            xor_parity_into(&b, &a, &mut into).expect("right length");
            prop_assert_eq!(&into, &parity);
            prop_assert_eq!(xor_recover(&b, &parity, a.len()).expect("recover a"), a.clone());
            prop_assert_eq!(xor_recover(&a, &parity, b.len()).expect("recover b"), b.clone());
        }

        #[test]
        fn a_range_recovers_from_ranges(
            a in proptest::collection::vec(any::<u8>(), 1..3000),
            b in proptest::collection::vec(any::<u8>(), 0..3000),
            start in 0usize..3000,
            len in 0usize..3000,
        ) {
            let parity = xor_parity(&a, &b);
            let start = start % a.len();
            let end = (start + len).min(a.len());
            // The survivor's range is cut short where its block ends.
            let survivor = &b[start.min(b.len())..end.min(b.len())];
            let got = xor_recover(survivor, &parity[start..end], end - start).expect("recover range");
            prop_assert_eq!(&got[..], &a[start..end]);
        }
    }

    #[test]
    fn short_parity_is_a_clean_error() {
        assert!(matches!(
            xor_recover(&[1, 2, 3], &[0, 0], 2),
            Err(CodingError::ShardLength { .. })
        ));
        assert!(xor_parity_into(&[1, 2, 3], &[1], &mut [0; 2]).is_err());
        assert!(xor_into(&mut [0; 2], &[1, 2, 3]).is_err());
        let mut dst = [1u8, 2, 3];
        xor_into(&mut dst, &[1, 2]).expect("shorter source");
        assert_eq!(dst, [0, 0, 3]);
    }
}
