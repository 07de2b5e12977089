//! Small-matrix arithmetic over GF(2^8) for building encoding and decoding
//! matrices. Bulk multiplication of byte slices lives in the backends.
//!
//! The field and the encoding matrix are reed-solomon-erasure 6's (field
//! polynomial 0x11d; a Vandermonde matrix `V[r][c] = r^c` of `k + m` rows
//! turned systematic as `V × inverse(top k rows of V)`). That choice is part
//! of the on-disk format: parity written by one version must decode in the
//! next. `tests::matrix_matches_reed_solomon_erasure` pins it.

use reed_solomon_erasure::galois_8 as field;

/// A dense row-major matrix over GF(2^8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Matrix {
    rows: usize,
    cols: usize,
    cells: Vec<u8>,
}

impl Matrix {
    /// An all-zero matrix.
    pub(crate) fn zero(rows: usize, cols: usize) -> Matrix {
        Matrix {
            rows,
            cols,
            cells: vec![0; rows * cols],
        }
    }

    /// The identity matrix of size `n`.
    pub(crate) fn identity(n: usize) -> Matrix {
        let mut m = Matrix::zero(n, n);
        for i in 0..n {
            m.set(i, i, 1);
        }
        m
    }

    /// One cell.
    pub(crate) fn get(&self, r: usize, c: usize) -> u8 {
        self.cells[r * self.cols + c]
    }

    /// Set one cell.
    pub(crate) fn set(&mut self, r: usize, c: usize, v: u8) {
        self.cells[r * self.cols + c] = v;
    }

    /// One row as a slice.
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        &self.cells[r * self.cols..(r + 1) * self.cols]
    }

    /// The systematic encoding matrix of RS(k, m): `k + m` rows, `k`
    /// columns, the top `k` rows the identity.
    pub(crate) fn encoding(data_shards: usize, parity_shards: usize) -> Matrix {
        let total = data_shards + parity_shards;
        let mut vandermonde = Matrix::zero(total, data_shards);
        for r in 0..total {
            for c in 0..data_shards {
                // Row index as a field element, as reed-solomon-erasure does;
                // total <= 48 so the cast is exact.
                vandermonde.set(r, c, field::exp(r as u8, c));
            }
        }
        let top = vandermonde.select_rows(&(0..data_shards).collect::<Vec<_>>());
        let top_inverse = top
            .invert()
            .expect("a Vandermonde matrix with distinct rows is invertible");
        vandermonde.multiply(&top_inverse)
    }

    /// The matrix made of the given rows of `self`, in that order.
    pub(crate) fn select_rows(&self, rows: &[usize]) -> Matrix {
        let mut out = Matrix::zero(rows.len(), self.cols);
        for (i, &r) in rows.iter().enumerate() {
            out.cells[i * self.cols..(i + 1) * self.cols].copy_from_slice(self.row(r));
        }
        out
    }

    /// `self × rhs`.
    pub(crate) fn multiply(&self, rhs: &Matrix) -> Matrix {
        assert_eq!(self.cols, rhs.rows, "matrix shapes must agree");
        let mut out = Matrix::zero(self.rows, rhs.cols);
        for r in 0..self.rows {
            for c in 0..rhs.cols {
                let mut acc = 0u8;
                for i in 0..self.cols {
                    acc ^= field::mul(self.get(r, i), rhs.get(i, c));
                }
                out.set(r, c, acc);
            }
        }
        out
    }

    /// The inverse of a square matrix, or `None` if it is singular.
    pub(crate) fn invert(&self) -> Option<Matrix> {
        assert_eq!(self.rows, self.cols, "only square matrices invert");
        let n = self.rows;
        let mut work = self.clone();
        let mut inverse = Matrix::identity(n);
        for col in 0..n {
            let pivot = (col..n).find(|&r| work.get(r, col) != 0)?;
            work.swap_rows(col, pivot);
            inverse.swap_rows(col, pivot);
            let scale = field::div(1, work.get(col, col));
            work.scale_row(col, scale);
            inverse.scale_row(col, scale);
            for r in 0..n {
                let factor = work.get(r, col);
                if r != col && factor != 0 {
                    work.add_scaled_row(r, col, factor);
                    inverse.add_scaled_row(r, col, factor);
                }
            }
        }
        Some(inverse)
    }

    fn swap_rows(&mut self, a: usize, b: usize) {
        if a != b {
            for c in 0..self.cols {
                self.cells.swap(a * self.cols + c, b * self.cols + c);
            }
        }
    }

    fn scale_row(&mut self, r: usize, factor: u8) {
        for c in 0..self.cols {
            let v = self.get(r, c);
            self.set(r, c, field::mul(v, factor));
        }
    }

    /// `row[target] += factor × row[source]`.
    fn add_scaled_row(&mut self, target: usize, source: usize, factor: u8) {
        for c in 0..self.cols {
            let v = self.get(target, c) ^ field::mul(factor, self.get(source, c));
            self.set(target, c, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_times_matrix_is_identity() {
        let e = Matrix::encoding(10, 4);
        // Rows 3..13 of the encoding matrix are a decodable subset.
        let sub = e.select_rows(&(3..13).collect::<Vec<_>>());
        let inv = sub.invert().expect("any k rows of an MDS code invert");
        assert_eq!(sub.multiply(&inv), Matrix::identity(10));
        assert_eq!(inv.multiply(&sub), Matrix::identity(10));
    }

    #[test]
    fn singular_matrix_does_not_invert() {
        let mut m = Matrix::identity(3);
        m.set(2, 2, 0);
        assert!(m.invert().is_none());
    }

    #[test]
    fn encoding_matrix_is_systematic() {
        for (k, m) in [(1, 1), (10, 4), (32, 16)] {
            let e = Matrix::encoding(k, m);
            assert_eq!(
                e.select_rows(&(0..k).collect::<Vec<_>>()),
                Matrix::identity(k)
            );
            assert_eq!((e.rows, e.cols), (k + m, k));
        }
    }
}
