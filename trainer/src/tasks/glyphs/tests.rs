//! Tests of the glyph data set.

use std::collections::HashSet;
use std::path::Path;

use crate::rng::Rng;

use super::hershey::{parse_jhf, render_strokes, segment_distance};
use super::noto::{excluded, script_of};
use super::*;

fn mini() -> &'static Glyphs {
    static G: std::sync::OnceLock<Glyphs> = std::sync::OnceLock::new();
    G.get_or_init(|| Glyphs::mini().expect("committed fonts load"))
}

fn corr(x: &[f32], y: &[f32]) -> f32 {
    let mx = x.iter().sum::<f32>() / x.len() as f32;
    let my = y.iter().sum::<f32>() / y.len() as f32;
    let cov: f32 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f32 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f32 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

#[test]
fn script_names_group_fonts_and_skip_non_alphabets() {
    for (file, script) in [
        ("NotoSansRunic-Regular.ttf", Some("Runic")),
        ("NotoSerifHebrew-Bold.ttf", Some("Hebrew")),
        ("NotoRashiHebrew-Regular.ttf", Some("Hebrew")),
        ("NotoNastaliqUrdu-Regular.ttf", Some("Arabic")),
        ("NotoSansTifinaghAir-Regular.ttf", Some("Tifinagh")),
        ("NotoSans-Regular.ttf", None),
        ("NotoSansSymbols2-Regular.ttf", None),
        ("NotoSansMath-Regular.ttf", None),
    ] {
        assert_eq!(script_of(file).as_deref(), script, "{file}");
    }
}

#[test]
fn the_committed_set_is_shaped_like_omniglot_with_disjoint_splits() {
    let g = mini();
    assert!(g.alphabets.len() >= 30, "{} alphabets", g.alphabets.len());
    assert!(g.num_chars() >= 600, "{} characters", g.num_chars());
    assert!(
        g.alphabets
            .iter()
            .all(|a| a.chars.len() <= MAX_CHARS && a.chars.len() >= 5)
    );
    // Styles: scripts with a bold font have two renderings of most characters.
    let two = g.alphabets.iter().filter(|a| a.fonts == 2).count();
    assert!(two >= 5, "{two} scripts with two fonts");
    let sets: Vec<HashSet<usize>> = [Split::Train, Split::Val, Split::Test]
        .iter()
        .map(|&s| g.split_alphabets(s).iter().copied().collect())
        .collect();
    for i in 0..3 {
        assert!(!sets[i].is_empty());
        for j in i + 1..3 {
            assert!(
                sets[i].is_disjoint(&sets[j]),
                "splits {i} and {j} share an alphabet"
            );
        }
    }
    assert_eq!(
        sets.iter().map(|s| s.len()).sum::<usize>(),
        g.alphabets.len()
    );
    // No Latin, punctuation or marks made it in.
    for a in &g.alphabets {
        for c in &a.chars {
            assert!(!excluded(c.code), "{} in {}", c.code, a.name);
        }
    }
}

#[test]
fn instances_are_deterministic_varied_and_inked() {
    let g = mini();
    let mut a = vec![0.0; SIDE * SIDE];
    let mut b = vec![0.0; SIDE * SIDE];
    g.render(0, 0, 3, Augment::NONE, &mut a);
    g.render(0, 0, 3, Augment::NONE, &mut b);
    assert_eq!(a, b, "same instance, same image");
    g.render(0, 0, 4, Augment::NONE, &mut b);
    assert_ne!(a, b, "instances differ");
    for img in [&a, &b] {
        let ink: f32 = img.iter().sum();
        assert!(ink > 20.0 && ink < 0.7 * (SIDE * SIDE) as f32, "ink {ink}");
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        // The character stays inside the frame: the border is (nearly) empty.
        let border: f32 = (0..SIDE)
            .flat_map(|i| {
                [
                    img[i],
                    img[(SIDE - 1) * SIDE + i],
                    img[i * SIDE],
                    img[i * SIDE + SIDE - 1],
                ]
            })
            .sum();
        assert!(border < 0.05 * ink, "border {border} of ink {ink}");
    }
    // Instances of one character resemble each other more than another character.
    let mut same = 0.0;
    let mut other = 0.0;
    let mut c = vec![0.0; SIDE * SIDE];
    let n = 30;
    for i in 0..n {
        let al = i % g.alphabets.len();
        g.render(al, 1, 0, Augment::NONE, &mut a);
        g.render(al, 1, 1, Augment::NONE, &mut b);
        g.render(al, 2, 1, Augment::NONE, &mut c);
        same += corr(&a, &b);
        other += corr(&a, &c);
    }
    assert!(same > other + 0.1 * n as f32, "same {same} other {other}");
}

#[test]
fn augmentation_is_a_rotation_flip_and_resize_of_the_instance() {
    let g = mini();
    let mut plain = vec![0.0; SIDE * SIDE];
    let mut aug = vec![0.0; SIDE * SIDE];
    g.render(1, 0, 0, Augment::NONE, &mut plain);
    // A flip mirrors the character (the instance's own elastic field and shift are in
    // output coordinates, so the mirror is close, not exact).
    let flip = Augment {
        angle: 0.0,
        flip: true,
        scale: 1.0,
    };
    g.render(1, 0, 0, flip, &mut aug);
    let mirrored: Vec<f32> = (0..SIDE * SIDE)
        .map(|i| aug[(i / SIDE) * SIDE + SIDE - 1 - i % SIDE])
        .collect();
    assert!(
        corr(&mirrored, &plain) > 0.5,
        "mirror corr {}",
        corr(&mirrored, &plain)
    );
    assert!(corr(&mirrored, &plain) > corr(&aug, &plain) + 0.1);
    let ink = |img: &[f32]| img.iter().sum::<f32>();
    // A resize by 1.2 inks about 1.44x as many pixels.
    let big = Augment {
        angle: 0.0,
        flip: false,
        scale: 1.2,
    };
    g.render(1, 0, 0, big, &mut aug);
    let ratio = ink(&aug) / ink(&plain);
    assert!((1.2..1.7).contains(&ratio), "ink ratio {ratio}");
    // A random augmentation stays within its documented ranges.
    let mut rng = Rng::new(5);
    for _ in 0..100 {
        let a = Augment::random(&mut rng);
        assert!(a.angle.abs() <= Augment::MAX_DEGREES.to_radians() + 1e-6);
        assert!((Augment::SCALES.0..=Augment::SCALES.1).contains(&a.scale));
    }
}

#[test]
fn hershey_records_parse_and_draw_their_strokes() {
    // 'A' of Hershey's simplex Greek: margins, two legs, the bar; then a record that
    // continues on a second line.
    let text = "12345  9I[RFJ[ RRFZ[ RMTWT\n12345  3\nJZRFR[\n";
    let g = parse_jhf(text).unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].len(), 3, "three strokes");
    assert_eq!(g[0][0], vec![(0.0, -12.0), (-8.0, 9.0)]);
    assert_eq!(g[1], vec![vec![(0.0, -12.0), (0.0, 9.0)]]);
    assert!(parse_jhf("12345 xx\n").is_err());
    assert!(parse_jhf("12345 10IZRF\n").is_err(), "truncated");
    // The vertical stroke: ink on the centre column, none in the corners.
    let img = render_strokes(&g[1]).unwrap();
    let at = |x: usize, y: usize| img[y * CANVAS + x];
    assert_eq!(at(CANVAS / 2, CANVAS / 2), 255);
    assert_eq!(at(2, 2), 0);
    assert_eq!(at(CANVAS / 2 + 4, CANVAS / 2), 0);
    assert!((segment_distance((1.0, 1.0), (0.0, 0.0), (2.0, 0.0)) - 1.0).abs() < 1e-6);
    assert!((segment_distance((3.0, 0.0), (0.0, 0.0), (2.0, 0.0)) - 1.0).abs() < 1e-6);
}

#[test]
fn a_missing_font_directory_names_the_package_to_install() {
    let err =
        Glyphs::from_dir(Path::new("/nonexistent/fonts"), "install fonts-noto-core").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/fonts") && msg.contains("fonts-noto-core"),
        "{msg}"
    );
}
