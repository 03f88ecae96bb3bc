//! The fixed, seeded split of the alphabets into meta-train, validation and test.

use crate::rng::Rng;

use super::*;

impl Glyphs {
    pub(super) fn with_splits(alphabets: Vec<Alphabet>) -> Self {
        let n = alphabets.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::derive(&[GLYPH_SEED, 1]);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let n_test = (n / 5).max(1);
        let n_val = (n / 5).max(1);
        let mut split_alphabets: [Vec<usize>; 3] = Default::default();
        for (rank, &a) in order.iter().enumerate() {
            let s = if rank < n_test {
                2
            } else if rank < n_test + n_val {
                1
            } else {
                0
            };
            split_alphabets[s].push(a);
        }
        let mut classes: [Vec<(usize, usize)>; 3] = Default::default();
        for s in 0..3 {
            split_alphabets[s].sort_unstable();
            for &a in &split_alphabets[s] {
                classes[s].extend((0..alphabets[a].chars.len()).map(|c| (a, c)));
            }
        }
        Glyphs {
            alphabets,
            classes,
            split_alphabets,
        }
    }

    /// The `(alphabet, character)` classes of `split`.
    pub fn classes(&self, split: Split) -> &[(usize, usize)] {
        &self.classes[split as usize]
    }

    /// The alphabet indices of `split`.
    pub fn split_alphabets(&self, split: Split) -> &[usize] {
        &self.split_alphabets[split as usize]
    }

    /// Total characters.
    pub fn num_chars(&self) -> usize {
        self.alphabets.iter().map(|a| a.chars.len()).sum()
    }
}
