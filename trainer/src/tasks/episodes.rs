//! Few-shot classification episodes drawn from the glyph data set.

use super::*;

impl Family {
    /// Classification episodes: `ways` distinct characters of the id's split (train, test or
    /// validation alphabets), `support / ways` and `query / ways` distinct instances of each;
    /// targets one-hot; queries augmented if the family says so.
    pub(super) fn episodes(
        &self,
        g: &glyphs::Glyphs,
        ids: &[u64],
        support: usize,
        query: usize,
    ) -> Batch {
        let ways = self.ways;
        assert!(
            support.is_multiple_of(ways) && query.is_multiple_of(ways),
            "support and query must be multiples of the ways"
        );
        let (shots, queries) = (support / ways, query / ways);
        assert!(
            shots + queries <= glyphs::INSTANCES,
            "too many examples per class"
        );
        let px = glyphs::SIDE * glyphs::SIDE;
        let mut b = Batch {
            tasks: ids.len(),
            support,
            query,
            xs: vec![0.0; ids.len() * support * px],
            ys: vec![0.0; ids.len() * support * ways],
            xq: vec![0.0; ids.len() * query * px],
            yq: vec![0.0; ids.len() * query * ways],
        };
        for (t, &id) in ids.iter().enumerate() {
            let split = if id < TEST_TASK_BASE {
                glyphs::Split::Train
            } else if id < VAL_TASK_BASE {
                glyphs::Split::Test
            } else {
                glyphs::Split::Val
            };
            let classes = g.classes(split);
            let mut rng = Rng::derive(&[self.problem as u64, id, 4]);
            // Augmentations draw from their own stream: the episode's classes and instances
            // are the same with and without them.
            let mut aug_rng = Rng::derive(&[self.problem as u64, id, 5]);
            let mut chosen: Vec<usize> = Vec::with_capacity(ways);
            while chosen.len() < ways {
                let c = rng.below(classes.len());
                if !chosen.contains(&c) {
                    chosen.push(c);
                }
            }
            for (label, &c) in chosen.iter().enumerate() {
                let (alphabet, ch) = classes[c];
                let mut inst: Vec<usize> = (0..glyphs::INSTANCES).collect();
                for i in 0..shots + queries {
                    let j = i + rng.below(glyphs::INSTANCES - i);
                    inst.swap(i, j);
                }
                for (i, &instance) in inst[..shots + queries].iter().enumerate() {
                    let (x, y, row) = if i < shots {
                        (&mut b.xs, &mut b.ys, t * support + label * shots + i)
                    } else {
                        (
                            &mut b.xq,
                            &mut b.yq,
                            t * query + label * queries + i - shots,
                        )
                    };
                    let aug = if i >= shots && self.augment_query {
                        glyphs::Augment::random(&mut aug_rng)
                    } else {
                        glyphs::Augment::NONE
                    };
                    g.render(
                        alphabet,
                        ch,
                        instance,
                        aug,
                        &mut x[row * px..(row + 1) * px],
                    );
                    y[row * ways + label] = 1.0;
                }
            }
        }
        b
    }
}
