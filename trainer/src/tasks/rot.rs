//! C8 / D8 equivariant convolution data: the rot8 and rot8-flip families.
//!
//! Each task draws 3 base filters from a band-limited steerable basis on the 3x3 grid (rings
//! at radius 0, 1, sqrt 2 times angular harmonics cos / sin(n theta), n <= 2). Output channel
//! (field m, group element g) is the correlation of the input with base filter m rotated by
//! g * 45 degrees (and, for D8, reflected first): a regular-representation layer, as
//! e2cnn's `R2Conv(trivial -> 3 x regular)` in the reference data. A rotation by a multiple
//! of 90 degrees maps the grid onto itself, so equivariance to it is exact; to 45 degrees it
//! is approximate (the filters are sampled at grid points).

use super::Problem;
use crate::rng::Rng;

/// Base filters (fields) per task.
pub const FIELDS: usize = 3;
/// Rotations in the group.
pub const ROTATIONS: usize = 8;
const RING_WIDTH: f64 = 0.4;

/// Output channels: fields x group elements (8 rotations, times 2 reflections for D8).
pub fn channels(problem: Problem) -> usize {
    FIELDS * ROTATIONS * if problem == Problem::Rot8Flip { 2 } else { 1 }
}

/// Coefficients of one base filter: for each ring, (n, a_n, b_n).
#[derive(Clone, Debug)]
pub struct Steerable {
    terms: Vec<(f64, usize, f64, f64)>, // (ring radius, harmonic n, cos coef, sin coef)
}

impl Steerable {
    /// A random filter with N(0, 1) coefficients, scaled to unit expected norm.
    pub fn random(rng: &mut Rng) -> Self {
        let mut terms = Vec::new();
        for (radius, max_n) in [(0.0, 0usize), (1.0, 2), (std::f64::consts::SQRT_2, 2)] {
            for n in 0..=max_n {
                let a = rng.normal();
                let b = if n == 0 { 0.0 } else { rng.normal() };
                terms.push((radius, n, a, b));
            }
        }
        let scale = 1.0 / (terms.len() as f64).sqrt();
        for t in &mut terms {
            t.2 *= scale;
            t.3 *= scale;
        }
        Steerable { terms }
    }

    /// The filter rotated by `angle` (radians, counter-clockwise), optionally reflected
    /// (y -> -y) first, evaluated at offset (dx, dy).
    pub fn eval(&self, dx: f64, dy: f64, angle: f64, reflect: bool) -> f64 {
        let r = (dx * dx + dy * dy).sqrt();
        // Rotating the filter by `angle` reads the base filter at angle theta - angle.
        let mut theta = dy.atan2(dx) - angle;
        if reflect {
            theta = -theta;
        }
        self.terms
            .iter()
            // Angular harmonics are undefined at the centre: only n = 0 lives there.
            .filter(|&&(_, n, _, _)| n == 0 || r > 0.0)
            .map(|&(radius, n, a, b)| {
                let ring = (-(r - radius).powi(2) / (2.0 * RING_WIDTH * RING_WIDTH)).exp();
                let nt = n as f64 * theta;
                ring * (a * nt.cos() + b * nt.sin())
            })
            .sum()
    }
}

/// The filter bank `[channels, 3, 3]` of one task: channel (m, s, g) = field m, reflected if
/// s = 1, rotated by g * 45 degrees. Row index is y (down), column x (right); the 3x3 tap at
/// (row i, col j) has offset (dx, dy) = (j - 1, 1 - i) in a y-up frame.
pub fn filter_bank(problem: Problem, rng: &mut Rng) -> Vec<f64> {
    let flips = if problem == Problem::Rot8Flip { 2 } else { 1 };
    let fields: Vec<Steerable> = (0..FIELDS).map(|_| Steerable::random(rng)).collect();
    let mut bank = Vec::with_capacity(channels(problem) * 9);
    for f in &fields {
        for s in 0..flips {
            for g in 0..ROTATIONS {
                let angle = g as f64 * std::f64::consts::TAU / ROTATIONS as f64;
                for i in 0..3 {
                    for j in 0..3 {
                        let (dx, dy) = (j as f64 - 1.0, 1.0 - i as f64);
                        bank.push(f.eval(dx, dy, angle, s == 1));
                    }
                }
            }
        }
    }
    bank
}

/// Valid 3x3 cross-correlation of a `side x side` image with every filter of `bank`
/// (`[channels, 3, 3]`): returns `[channels, side-2, side-2]`.
pub fn conv_valid(img: &[f64], side: usize, bank: &[f64]) -> Vec<f64> {
    let out = side - 2;
    let channels = bank.len() / 9;
    let mut y = vec![0.0; channels * out * out];
    for c in 0..channels {
        let f = &bank[c * 9..(c + 1) * 9];
        let yc = &mut y[c * out * out..(c + 1) * out * out];
        for r in 0..out {
            for col in 0..out {
                let mut acc = 0.0;
                for i in 0..3 {
                    let row = &img[(r + i) * side + col..(r + i) * side + col + 3];
                    acc += f[i * 3] * row[0] + f[i * 3 + 1] * row[1] + f[i * 3 + 2] * row[2];
                }
                yc[r * out + col] = acc;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotates a square image by 90 degrees counter-clockwise (y up): out[i][j] = img[j][n-1-i].
    fn rot90(img: &[f64], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = img[j * n + (n - 1 - i)];
            }
        }
        out
    }

    fn channel(y: &[f64], c: usize, n: usize) -> &[f64] {
        &y[c * n * n..(c + 1) * n * n]
    }

    fn rel(a: &[f64], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    }

    #[test]
    fn rotating_the_input_by_90_degrees_rotates_outputs_and_shifts_channels_by_two() {
        for problem in [Problem::Rot8, Problem::Rot8Flip] {
            let mut rng = Rng::new(3);
            let bank = filter_bank(problem, &mut rng);
            let side = 12;
            let img: Vec<f64> = (0..side * side).map(|_| rng.normal()).collect();
            let y = conv_valid(&img, side, &bank);
            let yr = conv_valid(&rot90(&img, side), side, &bank);
            let n = side - 2;
            for c in 0..channels(problem) {
                // Channel (m, s, g) reads the base filter at sigma_s(theta - g * 45deg); a
                // 90-degree turn of the input moves every block two steps along g.
                let (block, g) = (c / ROTATIONS, c % ROTATIONS);
                let src = block * ROTATIONS + (g + 6) % 8;
                let expected = rot90(channel(&y, src, n), n);
                let err = rel(channel(&yr, c, n), &expected);
                assert!(err < 1e-12, "{problem} channel {c}: {err:e}");
            }
        }
    }

    #[test]
    fn equivariance_to_45_degrees_is_approximate() {
        // A smooth input, sampled at rotated coordinates, on an odd grid whose centre is a
        // pixel; compare the response at the centre only (rotation fixes it).
        let mut rng = Rng::new(8);
        let bank = filter_bank(Problem::Rot8, &mut rng);
        let blobs: Vec<(f64, f64, f64)> = (0..6)
            .map(|_| (rng.range(-2.0, 2.0), rng.range(-2.0, 2.0), rng.normal()))
            .collect();
        let field = |x: f64, y: f64| -> f64 {
            blobs
                .iter()
                .map(|(bx, by, w)| w * (-((x - bx).powi(2) + (y - by).powi(2)) / 4.0).exp())
                .sum()
        };
        let side = 3;
        let sample = |angle: f64| -> Vec<f64> {
            let mut img = vec![0.0; side * side];
            for i in 0..side {
                for j in 0..side {
                    let (x, y) = (j as f64 - 1.0, 1.0 - i as f64);
                    // The rotated image at p is the original at R(-angle) p.
                    let (c, s) = (angle.cos(), angle.sin());
                    img[i * side + j] = field(c * x + s * y, -s * x + c * y);
                }
            }
            img
        };
        let y = conv_valid(&sample(0.0), side, &bank);
        let yr = conv_valid(&sample(std::f64::consts::FRAC_PI_4), side, &bank);
        let shifted: Vec<f64> = (0..24).map(|c| y[(c / 8) * 8 + (c % 8 + 7) % 8]).collect();
        let unshifted: Vec<f64> = y.clone();
        let err = rel(&yr, &shifted);
        let err_wrong = rel(&yr, &unshifted);
        assert!(err < 0.2, "45-degree equivariance error {err}");
        assert!(
            err < 0.5 * err_wrong,
            "{err} vs {err_wrong} without the channel shift"
        );
    }
}
