//! Tests of the quadrotor-wind family: the hull's fluid model, examples, the oracle.

use super::*;

/// Still air and a hovering, still quadrotor: no aerodynamic force. Wind from +x pushes
/// it towards +x; flying into still air is the same as the wind blowing at it.
#[test]
fn the_air_pushes_as_it_should() {
    let q = Quadrotor::new().expect("MuJoCo and the quadrotor model load");
    let level = State {
        velocity: [0.0; 3],
        attitude: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        rates: [0.0; 3],
        thrusts: [GRAVITY / 4.0; 4],
    };
    let at = |velocity: [f64; 3]| Sample {
        truth: State { velocity, ..level },
        measured: State { velocity, ..level },
        force_noise: [0.0; 3],
    };
    let still = Air {
        wind: [0.0; 3],
        drag: 1.0,
    };
    let f = q.forces(&still, &[at([0.0; 3])], false);
    assert!(f.iter().all(|v| v.abs() < 1e-12), "{f:?}");
    let windy = Air {
        wind: [8.0, 0.0, 0.0],
        drag: 1.0,
    };
    let f = q.forces(&windy, &[at([0.0; 3])], false);
    assert!(
        f[0] > 1.0 && f[1].abs() < 1e-9 && f[2].abs() < 1e-9,
        "{f:?}"
    );
    let g = q.forces(&still, &[at([-8.0, 0.0, 0.0])], false);
    for (a, b) in f.iter().zip(&g) {
        assert!((a - b).abs() < 1e-9, "{f:?} vs {g:?}");
    }
    // Twice the drag factor, more force.
    let strong = Air {
        wind: [8.0, 0.0, 0.0],
        drag: 2.0,
    };
    assert!(q.forces(&strong, &[at([0.0; 3])], false)[0] > f[0]);
}

/// Attitudes are rotations that tilt with the acceleration; examples are reproducible.
#[test]
fn flights_are_physical_and_reproducible() {
    let q = Quadrotor::new().unwrap();
    for s in q.samples(5, 50, 50) {
        let r = &s.truth.attitude;
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = (0..3).map(|k| r[k][i] * r[k][j]).sum();
                assert!((dot - f64::from(u8::from(i == j))).abs() < 1e-9);
            }
        }
        // Upright enough: the thrust axis points up.
        assert!(r[2][2] > 0.5, "{r:?}");
        assert!(s.truth.thrusts.iter().all(|t| *t > 0.0));
    }
    let (mut a, mut b) = (Batch::empty(1, 4, 6), Batch::empty(1, 4, 6));
    q.append(9, 4, 6, &mut a);
    q.append(9, 4, 6, &mut b);
    assert_eq!(a, b);
    assert_eq!((a.xs.len(), a.yq.len()), (4 * INPUTS, 6 * OUTPUTS));
}

/// The oracle recovers the wind from enough examples and then predicts at the noise
/// floor, far below the nominal model.
#[test]
fn the_oracle_finds_the_wind() {
    let q = Quadrotor::new().unwrap();
    assert!(q.prior.noise > NOISE_FORCE * NOISE_FORCE && q.prior.noise < 0.1);
    let windy = (0..100u64).filter(|&id| {
        let w = Air::of_task(id).wind;
        (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt() > 6.0
    });
    for id in windy.take(3) {
        let air = Air::of_task(id);
        let samples = q.samples(id, 50, 0);
        let targets = q.targets(&air, &samples);
        let fit = q.fit(&samples, &targets);
        let err: f64 = (0..3)
            .map(|i| (fit.wind[i] - air.wind[i]).powi(2))
            .sum::<f64>();
        assert!(err.sqrt() < 0.5, "task {id}: {air:?} fitted as {fit:?}");
        let mut b = Batch::empty(1, 50, 50);
        q.append(id, 50, 50, &mut b);
        let r = q.references(id, 50, 50);
        let mse = |p: &[f32]| {
            p.iter()
                .zip(&b.yq)
                .map(|(p, y)| ((p - y) as f64).powi(2))
                .sum::<f64>()
                / 150.0
        };
        let (oracle, nominal) = (mse(&r.oracle), mse(&r.nominal));
        assert!(
            oracle < 2.0 * q.prior.noise && oracle < 0.05 * nominal,
            "task {id}: oracle {oracle}, nominal {nominal}, noise {}",
            q.prior.noise
        );
    }
}
