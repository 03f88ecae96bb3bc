//! Tests of the task families.

use super::*;

#[test]
fn rank1_targets_are_a_valid_convolution_and_deterministic() {
    let fam = Family::new(Problem::Rank1);
    let b = fam.batch(&[5], 1, 2);
    assert_eq!(b, fam.batch(&[5], 1, 2));
    let f = fam.filters(5);
    assert_eq!(&f[0..3], &f[3..6], "one filter shared by every position");
    let x = &b.xs[..SEQ_IN];
    for p in 0..SEQ_OUT {
        let y: f64 = (0..3).map(|q| f[q] * x[p + q] as f64).sum();
        assert!((b.ys[p] as f64 - y).abs() < 1e-5);
    }
    assert_ne!(fam.filters(5), fam.filters(6));
}

#[test]
fn low_rank_filters_span_rank_dims_and_train_test_ids_are_disjoint() {
    for (problem, rank) in [(Problem::Rank2, 2), (Problem::Rank5, 5)] {
        let fam = Family::new(problem);
        // Every position's filter is a convex combination of `rank` basis filters: the
        // 68 x 3 filter matrix has rank min(rank, 3), and positions differ.
        let f = fam.filters(9);
        assert_ne!(&f[0..3], &f[3..6]);
        let row_sums = fam
            .connectivity()
            .chunks(rank)
            .map(|r| r.iter().sum::<f64>());
        assert!(row_sums.into_iter().all(|s| (s - 1.0).abs() < 1e-12));
    }
    let fam = Family::new(Problem::Rank1);
    let train = fam.train_ids(1, 0, 1000);
    assert!(train.iter().all(|&id| id < TEST_TASK_BASE));
    assert!(fam.test_ids(300).iter().all(|&id| id >= TEST_TASK_BASE));
    assert_ne!(fam.train_ids(1, 0, 4), fam.train_ids(1, 1, 4));
}

#[test]
fn glyph_episodes_have_distinct_classes_one_hot_labels_and_augmented_queries_only() {
    let plain = Family::open("glyphs-mini")
        .unwrap()
        .with_episodes(5, false)
        .unwrap();
    let aug = plain.clone().with_episodes(5, true).unwrap();
    assert!(plain.is_classification());
    assert_eq!((plain.input_len(), plain.output_len()), (784, 5));
    let ids = [3, TEST_TASK_BASE + 1, VAL_TASK_BASE + 2];
    let (p, a) = (plain.batch(&ids, 10, 15), aug.batch(&ids, 10, 15));
    assert!(p == plain.batch(&ids, 10, 15), "deterministic");
    assert_eq!(
        (p.xs.len(), p.ys.len(), p.yq.len()),
        (3 * 10 * 784, 3 * 10 * 5, 3 * 15 * 5)
    );
    // Augmentation touches the queries only: the runtime adapts on clean support sets.
    assert!(p.xs == a.xs && p.ys == a.ys && p.yq == a.yq);
    assert!(p.xq != a.xq);
    for t in 0..3 {
        // One-hot targets; every class has 2 support and 3 query examples.
        let counts = |y: &[f32], n: usize| -> Vec<usize> {
            let mut c = vec![0; 5];
            for row in y[t * n * 5..(t + 1) * n * 5].chunks(5) {
                assert_eq!(row.iter().filter(|&&v| v == 1.0).count(), 1);
                assert_eq!(row.iter().filter(|&&v| v == 0.0).count(), 4);
                c[row.iter().position(|&v| v == 1.0).unwrap()] += 1;
            }
            c
        };
        assert_eq!(counts(&p.ys, 10), vec![2; 5]);
        assert_eq!(counts(&p.yq, 15), vec![3; 5]);
        // Support and query images of a class are different instances.
        let img = |x: &[f32], i: usize| x[i * 784..(i + 1) * 784].to_vec();
        let s0 = img(&p.xs, t * 10);
        assert!((0..15).all(|q| img(&p.xq, t * 15 + q) != s0));
    }
    // Train, test and validation episodes draw their classes from disjoint alphabets.
    let g = plain.glyphs().unwrap();
    let train: std::collections::HashSet<_> = g.classes(glyphs::Split::Train).iter().collect();
    assert!(
        g.classes(glyphs::Split::Test)
            .iter()
            .all(|c| !train.contains(c))
    );
    assert_eq!(plain.val_ids(2), vec![VAL_TASK_BASE, VAL_TASK_BASE + 1]);
    assert!(plain.clone().with_episodes(10_000, false).is_err());
    assert!(plain.clone().with_episodes(1, false).is_err());
}
