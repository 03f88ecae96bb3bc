//! An instance: a character's base rendering resampled through a random stroke width,
//! affine map and elastic field (and the query augmentation), all from a seed.

use crate::rng::Rng;

use super::*;

impl Glyphs {
    /// Instance `instance` of character `(alphabet, ch)`, augmented by `aug`, written into
    /// `out` (`SIDE * SIDE` values in [0, 1], ink = 1).
    pub fn render(
        &self,
        alphabet: usize,
        ch: usize,
        instance: usize,
        aug: Augment,
        out: &mut [f32],
    ) {
        let c = &self.alphabets[alphabet].chars[ch];
        let mut rng = Rng::derive(&[
            GLYPH_SEED,
            2,
            alphabet as u64,
            c.code as u64,
            instance as u64,
        ]);
        let base = &c.styles[rng.below(c.styles.len())];
        // Stroke width: erode, keep or dilate by one canvas pixel.
        let stroke = match rng.below(20) {
            0..=4 => Morph::Erode,
            5..=11 => Morph::None,
            _ => Morph::Dilate,
        };
        let img = morph(base, stroke);
        // Instance affine: rotation, anisotropic scale, shear, translation.
        let theta = rng.range(-12.0, 12.0).to_radians() as f32;
        let scale = rng.range(0.85, 1.1) as f32;
        let aspect = rng.range(0.9, 1.1) as f32;
        let shear = rng.range(-0.2, 0.2) as f32;
        let shift = [rng.range(-1.5, 1.5) as f32, rng.range(-1.5, 1.5) as f32];
        // Elastic: a 3x3 grid of displacements (output pixels), bilinearly interpolated.
        let grid: Vec<[f32; 2]> = (0..9)
            .map(|_| [0.7 * rng.normal() as f32, 0.7 * rng.normal() as f32])
            .collect();
        // Forward map from glyph coordinates (output pixels, centred) to the image:
        // p = Aug * (R * Shear * S) * q + shift. Sampling needs its inverse.
        let m = mat_mul(
            aug.matrix(),
            mat_mul(
                rot(theta),
                mat_mul(
                    [[1.0, shear], [0.0, 1.0]],
                    [[scale * aspect, 0.0], [0.0, scale / aspect]],
                ),
            ),
        );
        let inv = mat_inv(m);
        let f = GLYPH_BOX / GLYPH_OUT; // canvas pixels per output pixel
        let half_canvas = CANVAS as f32 / 2.0;
        let half = SIDE as f32 / 2.0;
        for v in 0..SIDE {
            for u in 0..SIDE {
                let mut acc = 0.0;
                for (du, dv) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let (x, y) = (u as f32 + du, v as f32 + dv);
                    let d = elastic(&grid, x / SIDE as f32, y / SIDE as f32);
                    let p = [x - half - shift[0] + d[0], y - half - shift[1] + d[1]];
                    let q = [
                        inv[0][0] * p[0] + inv[0][1] * p[1],
                        inv[1][0] * p[0] + inv[1][1] * p[1],
                    ];
                    acc += bilinear(&img, half_canvas + q[0] * f, half_canvas + q[1] * f);
                }
                out[v * SIDE + u] = acc / 4.0;
            }
        }
    }
}

impl Augment {
    /// The forward 2x2 map: resize * rotation * flip.
    pub(super) fn matrix(self) -> [[f32; 2]; 2] {
        let flip = if self.flip { -1.0 } else { 1.0 };
        let r = rot(self.angle);
        [
            [self.scale * r[0][0] * flip, self.scale * r[0][1]],
            [self.scale * r[1][0] * flip, self.scale * r[1][1]],
        ]
    }
}

pub(super) fn rot(t: f32) -> [[f32; 2]; 2] {
    let (s, c) = t.sin_cos();
    [[c, -s], [s, c]]
}

pub(super) fn mat_mul(a: [[f32; 2]; 2], b: [[f32; 2]; 2]) -> [[f32; 2]; 2] {
    let mut o = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            o[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j];
        }
    }
    o
}

pub(super) fn mat_inv(m: [[f32; 2]; 2]) -> [[f32; 2]; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    [
        [m[1][1] / det, -m[0][1] / det],
        [-m[1][0] / det, m[0][0] / det],
    ]
}

/// Displacement at (x, y) in [0, 1]^2 from a 3x3 grid over the image.
pub(super) fn elastic(grid: &[[f32; 2]], x: f32, y: f32) -> [f32; 2] {
    let gx = (x * 2.0).clamp(0.0, 2.0 - 1e-6);
    let gy = (y * 2.0).clamp(0.0, 2.0 - 1e-6);
    let (i, j) = (gx as usize, gy as usize);
    let (fx, fy) = (gx - i as f32, gy - j as f32);
    let at = |a: usize, b: usize, k: usize| grid[b * 3 + a][k];
    let mut d = [0.0; 2];
    for (k, dk) in d.iter_mut().enumerate() {
        *dk = (1.0 - fy) * ((1.0 - fx) * at(i, j, k) + fx * at(i + 1, j, k))
            + fy * ((1.0 - fx) * at(i, j + 1, k) + fx * at(i + 1, j + 1, k));
    }
    d
}

/// Bilinear sample of a `[CANVAS, CANVAS]` image (values 0..1) at pixel-centre coordinates;
/// zero outside.
pub(super) fn bilinear(img: &[f32], x: f32, y: f32) -> f32 {
    let (x, y) = (x - 0.5, y - 0.5);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f32, yi: f32| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi >= CANVAS as f32 || yi >= CANVAS as f32 {
            0.0
        } else {
            img[yi as usize * CANVAS + xi as usize]
        }
    };
    (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1.0, y0))
        + fy * ((1.0 - fx) * at(x0, y0 + 1.0) + fx * at(x0 + 1.0, y0 + 1.0))
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Morph {
    Erode,
    None,
    Dilate,
}

/// 3x3 min / max filter (clamped at the border), to [0, 1] floats.
pub(super) fn morph(base: &[u8], op: Morph) -> Vec<f32> {
    let n = CANVAS as isize;
    let get = |x: isize, y: isize| base[(y.clamp(0, n - 1) * n + x.clamp(0, n - 1)) as usize];
    let mut out = vec![0.0f32; CANVAS * CANVAS];
    for y in 0..n {
        for x in 0..n {
            let v = match op {
                Morph::None => get(x, y),
                _ => {
                    let mut acc = get(x, y);
                    for (dx, dy) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
                        let w = get(x + dx, y + dy);
                        acc = if op == Morph::Erode {
                            acc.min(w)
                        } else {
                            acc.max(w)
                        };
                    }
                    acc
                }
            };
            out[(y * n + x) as usize] = v as f32 / 255.0;
        }
    }
    out
}
