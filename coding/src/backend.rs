//! Backends: the bulk GF(2^8) kernel behind a small trait of our own, so
//! the codec does not depend on one library's API.
//!
//! The one operation is "multiply a matrix by a column of byte slices":
//! `outputs[r] = Σ_j rows[r][j] · inputs[j]`, bytewise over GF(2^8). Encoding
//! applies the parity rows of the encoding matrix; decoding applies rows of
//! an inverted sub-matrix. Backends:
//!
//! - [`BackendKind::ReedSolomonErasure`] (the default): reed-solomon-erasure
//!   6's `simd-accel` kernels (`galois_8::mul_slice{,_xor}`), driven in
//!   column chunks so the working set stays in cache.
//! - [`BackendKind::Portable`]: a table-driven scalar kernel in safe Rust.
//!   Slow (about 1 GB/s) but runs on any CPU; also an independent check of
//!   the SIMD kernels in tests.
//!
//! reed-solomon-erasure's `build.rs` compiles its C kernels with
//! `-march=haswell` on x86-64 and selects AVX2 at compile time, with no
//! run-time check: on an older CPU the first call dies with SIGILL.
//! [`check_cpu`] tests the Haswell feature set up front so the codec
//! constructor can return [`CodingError::UnsupportedCpu`] instead. (A build
//! that sets `RUST_REED_SOLOMON_ERASURE_ARCH` to something newer than
//! Haswell is not covered by this check.) On aarch64 the kernels use NEON,
//! which every aarch64 CPU has; elsewhere the crate uses its own pure Rust.

use std::fmt;
use std::sync::OnceLock;

use reed_solomon_erasure::galois_8 as field;

use crate::error::{CodingError, Result};

/// Bytes per column chunk when the SIMD backend walks long slices: every
/// input and output chunk of one step stays in L2, so each output is
/// written to memory once instead of once per input.
pub(crate) const KERNEL_CHUNK_BYTES: usize = 32 * 1024;

/// Which implementation of the GF(2^8) kernels a [`crate::Codec`] uses. All
/// produce byte-identical parity: they share one on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// reed-solomon-erasure 6 with `simd-accel` (AVX2 on x86-64, NEON on
    /// aarch64). Needs a Haswell-class x86-64 CPU.
    ReedSolomonErasure,
    /// Scalar table lookups in safe Rust: any CPU, about 1 GB/s.
    Portable,
    /// Intel ISA-L (`ec_encode_data`, CPU dispatch at run time). Only in
    /// builds with the `isal` cargo feature, which links `libisal` (Debian
    /// package `libisal-dev`); otherwise
    /// [`CodingError::BackendUnavailable`].
    Isal,
}

/// The bulk kernel: a matrix times a column of equally long byte slices.
pub(crate) trait Backend: Send + Sync + fmt::Debug {
    /// `outputs[r] = Σ_j rows[r][j] · inputs[j]`. The caller guarantees
    /// `rows.len() == outputs.len()`, every row has `inputs.len()`
    /// coefficients, and every slice has the same length.
    fn apply(&self, rows: &[&[u8]], inputs: &[&[u8]], outputs: &mut [&mut [u8]]);
}

/// Build the backend of `kind`, checking the CPU first.
pub(crate) fn new_backend(kind: BackendKind) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::ReedSolomonErasure => {
            check_cpu()?;
            Ok(Box::new(SimdBackend))
        }
        BackendKind::Portable => Ok(Box::new(PortableBackend {
            table: portable_table(),
        })),
        #[cfg(feature = "isal")]
        BackendKind::Isal => Ok(Box::new(isal::IsalBackend)),
        #[cfg(not(feature = "isal"))]
        BackendKind::Isal => Err(CodingError::BackendUnavailable { backend: "isal" }),
    }
}

/// Fail with [`CodingError::UnsupportedCpu`] unless this CPU runs the
/// instructions reed-solomon-erasure's C kernels were compiled with.
pub fn check_cpu() -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        // `-march=haswell`: the compiler may use any of these anywhere in
        // the kernels, not only the AVX2 intrinsics.
        let features = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("bmi1", std::arch::is_x86_feature_detected!("bmi1")),
            ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
            ("lzcnt", std::arch::is_x86_feature_detected!("lzcnt")),
            ("movbe", std::arch::is_x86_feature_detected!("movbe")),
            ("popcnt", std::arch::is_x86_feature_detected!("popcnt")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("sse4.2", std::arch::is_x86_feature_detected!("sse4.2")),
        ];
        if let Some(missing) = first_missing(&features) {
            return Err(CodingError::UnsupportedCpu {
                backend: "reed-solomon-erasure simd-accel",
                missing,
            });
        }
    }
    Ok(())
}

/// The first feature of `(name, present)` pairs that is absent.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn first_missing(features: &[(&'static str, bool)]) -> Option<&'static str> {
    features
        .iter()
        .find(|(_, present)| !present)
        .map(|(name, _)| *name)
}

/// reed-solomon-erasure's SIMD kernels, walked in column chunks.
#[derive(Debug)]
struct SimdBackend;

impl Backend for SimdBackend {
    fn apply(&self, rows: &[&[u8]], inputs: &[&[u8]], outputs: &mut [&mut [u8]]) {
        let len = outputs.first().map_or(0, |o| o.len());
        let mut start = 0;
        while start < len {
            let end = len.min(start + KERNEL_CHUNK_BYTES);
            for (row, output) in rows.iter().zip(outputs.iter_mut()) {
                let out = &mut output[start..end];
                let mut first = true;
                for (&c, input) in row.iter().zip(inputs) {
                    let input = &input[start..end];
                    if first {
                        // `mul_slice` indexes `[0]`: never pass it an empty
                        // slice (start < end here).
                        field::mul_slice(c, input, out);
                        first = false;
                    } else if c != 0 {
                        field::mul_slice_xor(c, input, out);
                    }
                }
                if first {
                    out.fill(0);
                }
            }
            start = end;
        }
    }
}

/// `table[c * 256 + x] = c · x`.
fn portable_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; 256 * 256];
        for c in 0..=255u8 {
            for x in 0..=255u8 {
                t[usize::from(c) * 256 + usize::from(x)] = field::mul(c, x);
            }
        }
        t
    })
}

/// Scalar table lookups: slow, portable, independent of the SIMD kernels.
struct PortableBackend {
    table: &'static [u8],
}

impl fmt::Debug for PortableBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PortableBackend")
    }
}

impl Backend for PortableBackend {
    fn apply(&self, rows: &[&[u8]], inputs: &[&[u8]], outputs: &mut [&mut [u8]]) {
        for (row, output) in rows.iter().zip(outputs.iter_mut()) {
            output.fill(0);
            for (&c, input) in row.iter().zip(inputs) {
                let products = &self.table[usize::from(c) * 256..usize::from(c) * 256 + 256];
                for (o, &x) in output.iter_mut().zip(input.iter()) {
                    *o ^= products[usize::from(x)];
                }
            }
        }
    }
}

/// Intel ISA-L through its C API.
#[cfg(feature = "isal")]
mod isal {
    use std::ffi::c_int;

    use super::Backend;

    #[link(name = "isal")]
    unsafe extern "C" {
        /// Expand `k * rows` coefficients (row-major) into 32-byte tables.
        fn ec_init_tables(k: c_int, rows: c_int, a: *mut u8, gftbls: *mut u8);
        /// `coding[r] = Σ_j a[r][j] · data[j]` over `len` bytes.
        fn ec_encode_data(
            len: c_int,
            k: c_int,
            rows: c_int,
            gftbls: *mut u8,
            data: *mut *mut u8,
            coding: *mut *mut u8,
        );
    }

    /// Largest length handed to ISA-L in one call (it takes a C `int`).
    const MAX_CALL_BYTES: usize = 1 << 30;

    #[derive(Debug)]
    pub(super) struct IsalBackend;

    impl Backend for IsalBackend {
        fn apply(&self, rows: &[&[u8]], inputs: &[&[u8]], outputs: &mut [&mut [u8]]) {
            let len = outputs.first().map_or(0, |o| o.len());
            if len == 0 || rows.is_empty() {
                return;
            }
            let k = inputs.len();
            let mut coefficients: Vec<u8> = rows.iter().flat_map(|r| r.iter().copied()).collect();
            assert_eq!(
                coefficients.len(),
                k * rows.len(),
                "one coefficient per input per row"
            );
            let mut tables = vec![0u8; 32 * coefficients.len()];
            let k_int = c_int::try_from(k).expect("k <= 48");
            let rows_int = c_int::try_from(rows.len()).expect("rows <= 48");
            // SAFETY: `coefficients` holds k * rows bytes and `tables`
            // 32 * k * rows, the sizes ec_init_tables reads and writes.
            unsafe {
                ec_init_tables(
                    k_int,
                    rows_int,
                    coefficients.as_mut_ptr(),
                    tables.as_mut_ptr(),
                )
            };
            let mut start = 0;
            while start < len {
                let end = len.min(start + MAX_CALL_BYTES);
                // ISA-L takes `unsigned char **` for its sources but only
                // reads them.
                let mut data: Vec<*mut u8> = inputs
                    .iter()
                    .map(|i| i[start..end].as_ptr().cast_mut())
                    .collect();
                let mut coding: Vec<*mut u8> = outputs
                    .iter_mut()
                    .map(|o| o[start..end].as_mut_ptr())
                    .collect();
                let call_len = c_int::try_from(end - start).expect("<= MAX_CALL_BYTES");
                // SAFETY: `data` has k pointers and `coding` rows pointers,
                // each to at least `call_len` valid bytes (the caller
                // guarantees equal lengths); outputs do not alias inputs
                // (they come from distinct `&` and `&mut` borrows); `tables`
                // was built for exactly k and rows.
                unsafe {
                    ec_encode_data(
                        call_len,
                        k_int,
                        rows_int,
                        tables.as_mut_ptr(),
                        data.as_mut_ptr(),
                        coding.as_mut_ptr(),
                    )
                };
                start = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_runs_the_simd_backend() {
        // The project's machines and CI are Haswell or newer; if this fails
        // the codec would refuse to start there, cleanly.
        check_cpu().expect("CPU supports the SIMD kernels");
    }

    #[test]
    fn a_missing_cpu_feature_is_named() {
        assert_eq!(first_missing(&[("avx", true), ("avx2", true)]), None);
        assert_eq!(
            first_missing(&[("avx", true), ("avx2", false), ("fma", false)]),
            Some("avx2")
        );
        let error = CodingError::UnsupportedCpu {
            backend: "reed-solomon-erasure simd-accel",
            missing: "avx2",
        };
        assert!(error.to_string().contains("lacks avx2"));
    }

    #[test]
    fn isal_is_available_exactly_with_its_feature() {
        let result = new_backend(BackendKind::Isal);
        if cfg!(feature = "isal") {
            assert!(result.is_ok());
        } else {
            assert!(matches!(
                result,
                Err(CodingError::BackendUnavailable { backend: "isal" })
            ));
        }
    }

    #[test]
    fn backends_agree_on_odd_lengths() {
        let simd = new_backend(BackendKind::ReedSolomonErasure).expect("simd");
        let portable = new_backend(BackendKind::Portable).expect("portable");
        #[cfg(feature = "isal")]
        let portable = {
            // Compare ISA-L against the portable kernel too.
            let isal = new_backend(BackendKind::Isal).expect("isal");
            check_pair(&*isal, &*portable);
            portable
        };
        check_pair(&*simd, &*portable);
    }

    fn check_pair(simd: &dyn Backend, portable: &dyn Backend) {
        for len in [
            0usize,
            1,
            15,
            16,
            31,
            32,
            33,
            63,
            64,
            100,
            KERNEL_CHUNK_BYTES + 7,
        ] {
            let a: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let b: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
            let rows: [&[u8]; 3] = [&[0, 0], &[1, 0], &[0x8e, 0x27]];
            let mut x = vec![vec![0xaau8; len]; 3];
            let mut y = vec![vec![0x55u8; len]; 3];
            let mut xs: Vec<&mut [u8]> = x.iter_mut().map(|v| v.as_mut_slice()).collect();
            let mut ys: Vec<&mut [u8]> = y.iter_mut().map(|v| v.as_mut_slice()).collect();
            simd.apply(&rows, &[&a, &b], &mut xs);
            portable.apply(&rows, &[&a, &b], &mut ys);
            assert_eq!(x, y, "len {len}");
            assert!(x[0].iter().all(|&v| v == 0));
            assert_eq!(x[1], a);
        }
    }
}
