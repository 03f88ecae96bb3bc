//! Small dense matrix products for the real-time engine: `C (+)= A B (+ bias)`, with
//! strided views and no allocation.
//!
//! Why by hand: the engine's products are small (a support set of 20 examples through
//! 128-wide layers, `U`'s `k` columns against a layer's input) and must not allocate;
//! general GEMM crates pack their operands into buffers they allocate per call. Here
//! nothing is packed: on x86-64 with AVX2 + FMA two register-blocked kernels read the
//! operands where they lie, each tile of `C` kept in registers for the whole inner
//! dimension (the per-example matrix-vector and `axpy` loops they replace re-read every
//! weight once per example and re-wrote every gradient once per term):
//! - rows of `A` against columns of `B` that are contiguous (`B` a transposed row-major
//!   matrix: a layer's forward pass, `U`'s columns against a layer input): tiles of
//!   2 x 6 dot products, eight lanes each;
//! - `A` of any strides against contiguous rows of `B` (the backward pass, `W = U v`):
//!   tiles of 4 rows x 16 columns (1 x 32 for a single row), `A`'s entries broadcast.
//!
//! Elsewhere (no AVX2, or no `std` to detect it) the same products run as plain loops.

/// A read-only strided view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows x cols` matrix at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A view with row stride `rs` and column stride `cs`. Panics if an element lies
    /// outside `data`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            // Checked: a wrapped product must not pass for an element inside `data`.
            let last = (rows - 1)
                .checked_mul(rs)
                .zip((cols - 1).checked_mul(cs))
                .and_then(|(r, c)| r.checked_add(c));
            assert!(
                last.is_some_and(|l| l < data.len()),
                "matrix view out of bounds"
            );
        }
        Mat {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The transpose (a view of the same data).
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Row `r` of a view with contiguous rows.
    pub fn row(&self, r: usize) -> &'a [f32] {
        assert_eq!(self.cs, 1, "row of a view with strided columns");
        &self.data[r * self.rs..r * self.rs + self.cols]
    }

    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }
}

/// A writable row-major view with row stride `rs`: element `(r, c)` is `data[r * rs + c]`.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
}

impl<'a> MatMut<'a> {
    /// The row-major `rows x cols` matrix at the start of `data`.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows of `cols` values `rs` apart. Panics if an element lies outside `data`.
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        if rows > 0 && cols > 0 {
            assert!(cols <= rs || rows == 1, "rows of a view overlap");
            let end = (rows - 1).checked_mul(rs).and_then(|r| r.checked_add(cols));
            assert!(
                end.is_some_and(|e| e <= data.len()),
                "matrix view out of bounds"
            );
        }
        MatMut {
            data,
            rows,
            cols,
            rs,
        }
    }
}

/// `C = A B (+ bias)`, or `C += A B` with `accumulate`; `bias` (one per column of `C`) is
/// added only when not accumulating. Panics on mismatched shapes.
pub fn gemm(a: Mat, b: Mat, c: MatMut, bias: Option<&[f32]>, accumulate: bool) {
    assert_eq!(a.cols, b.rows, "gemm inner dimensions");
    assert_eq!((c.rows, c.cols), (a.rows, b.cols), "gemm output shape");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), c.cols, "gemm bias");
        assert!(!accumulate, "gemm bias with accumulate");
    }
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    // (An empty inner dimension goes to the plain loop: the kernels' pointer arithmetic
    // assumes views whose elements exist.)
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if a.cols > 0
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        if a.cs == 1 && b.rs == 1 {
            // SAFETY: AVX2 and FMA are present (checked just above); the views were checked
            // to lie inside their slices when made, and the shapes above.
            unsafe { avx2::dots(a, b, c, bias, accumulate) };
            return;
        }
        if b.cs == 1 {
            // SAFETY: as above.
            unsafe { avx2::broadcasts(a, b, c, bias, accumulate) };
            return;
        }
    }
    portable(a, b, c, bias, accumulate);
}

fn portable(a: Mat, b: Mat, c: MatMut, bias: Option<&[f32]>, accumulate: bool) {
    let k = a.cols;
    for i in 0..c.rows {
        let row = &mut c.data[i * c.rs..i * c.rs + c.cols];
        if !accumulate {
            match bias {
                Some(bias) => row.copy_from_slice(bias),
                None => row.fill(0.0),
            }
        }
        if b.cs == 1 {
            // Rows of B contiguous: axpy along them.
            for t in 0..k {
                let x = a.at(i, t);
                let brow = &b.data[t * b.rs..t * b.rs + c.cols];
                for (o, v) in row.iter_mut().zip(brow) {
                    *o += x * v;
                }
            }
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                let mut s = 0.0f32;
                for t in 0..k {
                    s += a.at(i, t) * b.at(t, j);
                }
                *o += s;
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
mod avx2 {
    use core::arch::x86_64::*;

    use super::{Mat, MatMut};

    /// The first `n` floats at `p` (1 <= n <= 8), the other lanes 0. Plain 128-, 64- and
    /// 32-bit loads: AVX2's masked load costs about eight cycles on the first Zen cores,
    /// which made a 28-input layer as slow as a 128-input one.
    ///
    /// # Safety
    /// `p .. p + n` must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_first(p: *const f32, n: usize) -> __m256 {
        // SAFETY: every load below reads inside p .. p + n.
        unsafe {
            if n >= 8 {
                return _mm256_loadu_ps(p);
            }
            let (lo, hi) = if n >= 4 {
                (_mm_loadu_ps(p), load_first4(p.add(4), n - 4))
            } else {
                (load_first4(p, n), _mm_setzero_ps())
            };
            _mm256_set_m128(hi, lo)
        }
    }

    /// The first `n` floats at `p` (0 <= n <= 3; 4 reads all four), the other lanes 0.
    ///
    /// # Safety
    /// `p .. p + min(n, 4)` must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_first4(p: *const f32, n: usize) -> __m128 {
        // SAFETY: every load below reads inside p .. p + n.
        unsafe {
            match n {
                0 => _mm_setzero_ps(),
                1 => _mm_load_ss(p),
                // (Unaligned 64-bit loads: p is only 4-byte aligned.)
                2 => _mm_castsi128_ps(_mm_loadu_si64(p.cast())),
                3 => _mm_movelh_ps(
                    _mm_castsi128_ps(_mm_loadu_si64(p.cast())),
                    _mm_load_ss(p.add(2)),
                ),
                _ => _mm_loadu_ps(p),
            }
        }
    }

    /// Stores the first `n` lanes of `v` at `p` (1 <= n <= 8); nothing past `p + n` is
    /// written.
    ///
    /// # Safety
    /// `p .. p + n` must be writable.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_first(p: *mut f32, n: usize, v: __m256) {
        // SAFETY: every store below writes inside p .. p + n.
        unsafe {
            if n >= 8 {
                return _mm256_storeu_ps(p, v);
            }
            let (lo, hi) = (_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let (q, rest, part) = if n >= 4 {
                _mm_storeu_ps(p, lo);
                (p.add(4), n - 4, hi)
            } else {
                (p, n, lo)
            };
            match rest {
                0 => {}
                1 => _mm_store_ss(q, part),
                // (Unaligned 64-bit stores: q is only 4-byte aligned.)
                2 => _mm_storeu_si64(q.cast(), _mm_castps_si128(part)),
                _ => {
                    _mm_storeu_si64(q.cast(), _mm_castps_si128(part));
                    _mm_store_ss(q.add(2), _mm_movehl_ps(part, part));
                }
            }
        }
    }

    /// `C (+)= A B` with the rows of `A` and the columns of `B` contiguous: tiles of
    /// `MR x NR` dot products over the whole inner dimension.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `a.cs == 1`, `b.rs == 1`, shapes as `gemm` checks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(a: Mat, b: Mat, mut c: MatMut, bias: Option<&[f32]>, acc: bool) {
        let (m, n) = (c.rows, c.cols);
        // Tiles of 2 rows of A by 6 columns of B: 12 accumulators, the 2 rows of A and one
        // column of B at a time fill the 16 vector registers without spilling.
        if m == 1 {
            // One row (a single example's forward pass): 8 columns per tile, their sums
            // reduced together (the reduction costs as much as a quarter of the loop).
            // The last tile computes no more columns than it must (each is a stream over
            // the whole inner dimension: `U^T vec(dW)` has 10 columns of 65 536).
            let mut j = 0;
            // SAFETY: every tile below lies inside the views (j + nr <= n).
            unsafe {
                while j + 8 <= n {
                    dots_tile::<1, 8>(a, b, 0, j, 8, &mut c, bias, acc);
                    j += 8;
                }
                let c = &mut c;
                match n - j {
                    0 => {}
                    1 => dots_tile::<1, 1>(a, b, 0, j, 1, c, bias, acc),
                    2 => dots_tile::<1, 2>(a, b, 0, j, 2, c, bias, acc),
                    r @ (3 | 4) => dots_tile::<1, 4>(a, b, 0, j, r, c, bias, acc),
                    r => dots_tile::<1, 8>(a, b, 0, j, r, c, bias, acc),
                }
            }
            return;
        }
        let tile = |c: &mut MatMut, i: usize, j: usize| {
            let nr = (n - j).min(NR);
            // SAFETY: the tile lies inside the views (i < m, j + nr <= n).
            unsafe {
                if m - i >= 2 {
                    dots_tile::<2, NR>(a, b, i, j, nr, c, bias, acc);
                } else {
                    dots_tile::<1, NR>(a, b, i, j, nr, c, bias, acc);
                }
            }
        };
        // The larger operand is read once, tile by tile, while the smaller one stays in
        // cache (a support set's activations against U's 655 KB of columns: U is read
        // once, not once per pair of examples).
        if m * a.rs <= n * b.cs {
            for j in (0..n).step_by(NR) {
                for i in (0..m).step_by(2) {
                    tile(&mut c, i, j);
                }
            }
        } else {
            for i in (0..m).step_by(2) {
                for j in (0..n).step_by(NR) {
                    tile(&mut c, i, j);
                }
            }
        }
    }

    /// Columns of B per tile of [`dots`].
    const NR: usize = 6;

    /// The sums of the lanes of eight vectors: `[sum s0, ..., sum s7]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum8(s: &[__m256]) -> __m256 {
        let u0 = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
        let u1 = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        )
    }

    /// One `MR x nr` tile (nr <= NC <= 8; columns past nr computed from column j again and
    /// not stored) at row `i`, column `j` of `C`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_tile<const MR: usize, const NC: usize>(
        a: Mat,
        b: Mat,
        i: usize,
        j: usize,
        nr: usize,
        c: &mut MatMut,
        bias: Option<&[f32]>,
        acc: bool,
    ) {
        let k = a.cols;
        let full = k / 8 * 8;
        let mut ap = [a.data.as_ptr(); MR];
        for (r, p) in ap.iter_mut().enumerate() {
            // SAFETY: row i + r < a.rows lies inside a.data (checked at the view).
            *p = unsafe { p.add((i + r) * a.rs) };
        }
        let mut bp = [b.data.as_ptr(); NC];
        for (q, p) in bp.iter_mut().enumerate() {
            // SAFETY: column j + min(q, nr - 1) < b.cols lies inside b.data.
            *p = unsafe { p.add((j + q.min(nr - 1)) * b.cs) };
        }
        let mut s = [[_mm256_setzero_ps(); NC]; MR];
        let mut t = 0;
        while t < full {
            // SAFETY: t + 8 <= k: every load reads inside its row or column.
            unsafe {
                let mut av = [_mm256_setzero_ps(); MR];
                for (v, p) in av.iter_mut().zip(&ap) {
                    *v = _mm256_loadu_ps(p.add(t));
                }
                for q in 0..NC {
                    let bv = _mm256_loadu_ps(bp[q].add(t));
                    for r in 0..MR {
                        s[r][q] = _mm256_fmadd_ps(av[r], bv, s[r][q]);
                    }
                }
            }
            t += 8;
        }
        if full < k {
            let tail = k - full;
            // SAFETY: the loads read the last k - full values of the rows and columns.
            unsafe {
                let mut av = [_mm256_setzero_ps(); MR];
                for (v, p) in av.iter_mut().zip(&ap) {
                    *v = load_first(p.add(full), tail);
                }
                for q in 0..NC {
                    let bv = load_first(bp[q].add(full), tail);
                    for r in 0..MR {
                        s[r][q] = _mm256_fmadd_ps(av[r], bv, s[r][q]);
                    }
                }
            }
        }
        // The sums of each row's accumulators in one vector (padded to eight), then C's
        // row, the bias and the store as vectors too.
        let zero = _mm256_setzero_ps();
        for (r, sr) in s.iter().enumerate() {
            let mut v8 = [zero; 8];
            v8[..NC].copy_from_slice(sr);
            // SAFETY: row i + r < c.rows, columns j..j + nr <= c.cols inside c.data, bias
            // has c.cols entries; only the first nr lanes are read and written.
            unsafe {
                let dst = c.data.as_mut_ptr().add((i + r) * c.rs + j);
                let base = if acc { load_first(dst, nr) } else { zero };
                let bias = bias.map_or(zero, |b| load_first(b.as_ptr().add(j), nr));
                let v = _mm256_add_ps(_mm256_add_ps(base, hsum8(&v8)), bias);
                store_first(dst, nr, v);
            }
        }
    }

    /// `C (+)= A B` with the rows of `B` contiguous, `A` of any strides: tiles of `MR` rows
    /// by `NV` vectors of 8 columns, `A`'s entries broadcast, over the whole inner
    /// dimension.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `b.cs == 1`, shapes as `gemm` checks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn broadcasts(
        a: Mat,
        b: Mat,
        mut c: MatMut,
        bias: Option<&[f32]>,
        acc: bool,
    ) {
        let m = c.rows;
        let c = &mut c;
        // SAFETY: every call below passes tiles that lie inside the views.
        unsafe {
            if m == 1 {
                broadcast_rows::<1, 4>(a, b, 0, c, bias, acc);
                return;
            }
            let mut i = 0;
            while i + 4 <= m {
                broadcast_rows::<4, 2>(a, b, i, c, bias, acc);
                i += 4;
            }
            match m - i {
                3 => broadcast_rows::<3, 2>(a, b, i, c, bias, acc),
                2 => broadcast_rows::<2, 2>(a, b, i, c, bias, acc),
                1 => broadcast_rows::<1, 2>(a, b, i, c, bias, acc),
                _ => {}
            }
        }
    }

    /// Rows `i..i + MR` of `C`: blocks of `NV` vectors, then single vectors, then a masked
    /// tail.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn broadcast_rows<const MR: usize, const NV: usize>(
        a: Mat,
        b: Mat,
        i: usize,
        c: &mut MatMut,
        bias: Option<&[f32]>,
        acc: bool,
    ) {
        let n = c.cols;
        let mut j = 0;
        // SAFETY: every call below passes columns j.. that lie inside the views.
        unsafe {
            while j + 8 * NV <= n {
                broadcast_tile::<MR, NV>(a, b, i, j, 8, c, bias, acc);
                j += 8 * NV;
            }
            while j + 8 <= n {
                broadcast_tile::<MR, 1>(a, b, i, j, 8, c, bias, acc);
                j += 8;
            }
            if j < n {
                broadcast_tile::<MR, 1>(a, b, i, j, n - j, c, bias, acc);
            }
        }
    }

    /// One tile: `MR` rows by `NV` vectors at column `j`; the last vector holds `last`
    /// columns (8: full; fewer: masked).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn broadcast_tile<const MR: usize, const NV: usize>(
        a: Mat,
        b: Mat,
        i: usize,
        j: usize,
        last: usize,
        c: &mut MatMut,
        bias: Option<&[f32]>,
        acc: bool,
    ) {
        let k = a.cols;
        let masked = last < 8;
        let cp = c.data.as_mut_ptr();
        let mut s = [[_mm256_setzero_ps(); NV]; MR];
        // SAFETY: row i + r < c.rows, columns j .. j + 8 (NV - 1) + last <= c.cols lie
        // inside c.data; masked lanes are not touched. Bias has c.cols entries.
        unsafe {
            for (r, sr) in s.iter_mut().enumerate() {
                let row = cp.add((i + r) * c.rs + j);
                for (v, sv) in sr.iter_mut().enumerate() {
                    let tail = masked && v == NV - 1;
                    if acc {
                        *sv = if tail {
                            load_first(row.add(8 * v), last)
                        } else {
                            _mm256_loadu_ps(row.add(8 * v))
                        };
                    } else if let Some(bias) = bias {
                        let bp = bias.as_ptr().add(j + 8 * v);
                        *sv = if tail {
                            load_first(bp, last)
                        } else {
                            _mm256_loadu_ps(bp)
                        };
                    }
                }
            }
        }
        let ap = a.data.as_ptr();
        let bp = b.data.as_ptr();
        for t in 0..k {
            // SAFETY: row t < b.rows, columns as above, inside b.data; A's element
            // (i + r, t) inside a.data.
            unsafe {
                let brow = bp.add(t * b.rs + j);
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = if masked && v == NV - 1 {
                        load_first(brow.add(8 * v), last)
                    } else {
                        _mm256_loadu_ps(brow.add(8 * v))
                    };
                }
                for (r, sr) in s.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*ap.add((i + r) * a.rs + t * a.cs));
                    for (sv, y) in sr.iter_mut().zip(&bv) {
                        *sv = _mm256_fmadd_ps(x, *y, *sv);
                    }
                }
            }
        }
        // SAFETY: as for the loads of C above.
        unsafe {
            for (r, sr) in s.iter().enumerate() {
                let row = cp.add((i + r) * c.rs + j);
                for (v, sv) in sr.iter().enumerate() {
                    if masked && v == NV - 1 {
                        store_first(row.add(8 * v), last, *sv);
                    } else {
                        _mm256_storeu_ps(row.add(8 * v), *sv);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    /// `n` values uniform in [-0.5, 0.5).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::test_rng::Rng::new(seed);
        (0..n).map(|_| rng.uniform() as f32 - 0.5).collect()
    }

    /// The product in f64 by the definition, element by element.
    fn reference(a: Mat, b: Mat) -> Vec<f64> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|t| a.at(i, t) as f64 * b.at(t, j) as f64)
                    .sum();
            }
        }
        out
    }

    /// Every layout the engine uses (B's columns contiguous, B's rows contiguous with A
    /// row-major or transposed, neither), shapes around every tile edge, with and without
    /// bias and accumulation, written into a strided C whose gaps must stay untouched.
    #[test]
    fn products_match_the_definition_in_every_layout_and_shape() {
        // Every tail length 1..7 of the 8-lane vectors, in both the inner dimension and
        // the columns, and the 6-column tiles' edges.
        let dims = [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 16, 17, 33];
        let inner = [0usize, 1, 2, 3, 5, 6, 7, 8, 9, 10, 16, 28, 31, 128];
        let mut seed = 1;
        for &m in &dims {
            for &n in &dims {
                for &k in &inner {
                    for layout in 0..4 {
                        seed += 1;
                        let ad = values(m * k + 3, seed);
                        let bd = values(2 * k * n + 3, seed + 1000);
                        // A: row-major, or (layout 2) stored transposed.
                        let a = if layout == 2 {
                            Mat::rows(&ad, k, m).t()
                        } else {
                            Mat::rows(&ad, m, k)
                        };
                        // B: stored transposed (layout 0: columns contiguous), row-major
                        // (1, 2), or with both strides > 1 (3).
                        let b = match layout {
                            0 => Mat::rows(&bd, n, k).t(),
                            3 => Mat::strided(&bd, k, n, 2, 2 * k),
                            _ => Mat::rows(&bd, k, n),
                        };
                        let want = reference(a, b);
                        let bias = values(n, seed + 7);
                        for (with_bias, accumulate) in
                            [(false, false), (true, false), (false, true)]
                        {
                            let rs = n + 2;
                            let mut cd = vec![9.0f32; m * rs];
                            let c = MatMut::strided(&mut cd, m, n, rs);
                            let bias = with_bias.then_some(bias.as_slice());
                            gemm(a, b, c, bias, accumulate);
                            for i in 0..m {
                                for j in 0..rs {
                                    let got = cd[i * rs + j] as f64;
                                    if j >= n {
                                        assert_eq!(got, 9.0, "gap written at {i},{j}");
                                        continue;
                                    }
                                    let mut w = want[i * n + j];
                                    if let Some(b) = bias {
                                        w += b[j] as f64;
                                    }
                                    if accumulate {
                                        w += 9.0;
                                    }
                                    let tol = 1e-5 * (1.0 + k as f64).sqrt() * (1.0 + w.abs());
                                    assert!(
                                        (got - w).abs() <= tol,
                                        "m {m} n {n} k {k} layout {layout} bias {with_bias} acc {accumulate}: ({i},{j}) {got} vs {w}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_its_slice_is_refused() {
        let d = [0.0f32; 11];
        let _ = Mat::rows(&d, 3, 4);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_whose_stride_wraps_is_refused() {
        let d = [0.0f32; 8];
        // The last column is 2 * 2^63 apart from the first: 0 when the product wraps.
        let _ = Mat::strided(&d, 1, 3, 1, usize::MAX / 2 + 1);
    }
}
