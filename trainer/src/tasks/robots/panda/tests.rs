//! Tests of the panda-payload family: physics, the regressor, examples, the oracle.

use super::*;

fn panda() -> Panda {
    Panda::new().expect("MuJoCo and the Panda model load")
}

/// The derived model's static gravity torque about joint 2 at the stretched-out pose
/// grows by m g r for a point mass m at lever r: MuJoCo and the payload body agree with
/// first-principles statics.
#[test]
fn a_point_mass_weighs_what_statics_says() {
    let p = panda();
    let mut sim = p.sim.lock().unwrap();
    let q = [0.0, 1.0, 0.0, -0.5, 0.0, 1.0, 0.0];
    let zero = [0.0; JOINTS];
    let mut bare = [0.0; JOINTS];
    sim.set_inertial(p.payload, &Inertial::NONE);
    sim.inverse(&q, &zero, &zero, &mut bare);
    let mass = 2.0;
    sim.set_inertial(
        p.payload,
        &Inertial {
            mass,
            ..Inertial::NONE
        },
    );
    let mut loaded = [0.0; JOINTS];
    sim.inverse(&q, &zero, &zero, &mut loaded);
    // The payload body's world position from MuJoCo's forward kinematics, and joint 2's
    // axis (through the shoulder, horizontal): torque = (r x m g) . axis.
    sim.forward(&q, &zero);
    let [pos, anchor, axis] = sim.frames(p.payload, 1);
    let r = [pos[0] - anchor[0], pos[1] - anchor[1], pos[2] - anchor[2]];
    let f = [0.0, 0.0, -mass * 9.81];
    let torque = [
        r[1] * f[2] - r[2] * f[1],
        r[2] * f[0] - r[0] * f[2],
        r[0] * f[1] - r[1] * f[0],
    ];
    // qfrc_inverse is the force the joint must apply: minus gravity's torque.
    let want = -(torque[0] * axis[0] + torque[1] * axis[1] + torque[2] * axis[2]);
    let got = loaded[1] - bare[1];
    assert!(want.abs() > 1.0, "a lever worth testing: {want}");
    assert!(
        (got - want).abs() < 1e-9 * want.abs().max(1.0),
        "{got} vs {want}"
    );
}

/// The regressor is exact: for payloads it has never seen, `Y params` reproduces what
/// the payload adds to MuJoCo's inverse dynamics (torque is linear in the 10 inertial
/// parameters, and the probes recover that linear map).
#[test]
fn the_regressor_reproduces_inverse_dynamics() {
    let p = panda();
    let samples = p.samples(7, 20, 0);
    let y = p.regressors(&samples);
    for id in [3u64, 11, 12345] {
        let payload = Payload::of_task(id);
        let exact = p.payload_torques(&payload, &samples);
        let params = payload.params();
        let worst = exact
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let row = &y[i * PARAMS..][..PARAMS];
                (row.iter().zip(&params).map(|(r, v)| r * v).sum::<f64>() - e).abs()
            })
            .fold(0.0f64, f64::max);
        let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.5, "payload {id} matters: {scale}");
        assert!(
            worst < 1e-8 * scale.max(1.0),
            "payload {id}: {worst} (scale {scale})"
        );
    }
}

/// Trajectories stay inside the joint limits and under the speed cap; examples are
/// deterministic in the task id; targets are what the payload adds plus noise.
#[test]
fn examples_are_physical_and_reproducible() {
    let p = panda();
    for id in 0..20 {
        for s in p.samples(id, 30, 30) {
            for j in 0..JOINTS {
                let [lo, hi] = p.limits[j];
                assert!(s.truth[0][j] > lo && s.truth[0][j] < hi);
                assert!(s.truth[1][j].abs() <= MAX_SPEED + 1e-9);
            }
        }
    }
    let mut a = Batch::empty(1, 5, 7);
    let mut b = Batch::empty(1, 5, 7);
    p.append(42, 5, 7, &mut a);
    p.append(42, 5, 7, &mut b);
    assert_eq!(a, b);
    assert_eq!(
        (a.xs.len(), a.ys.len(), a.xq.len()),
        (5 * INPUTS, 5 * OUTPUTS, 7 * INPUTS)
    );
    // A heavy payload's residual is far above the noise; a near-zero one's is not.
    let rms = |id: u64| {
        let mut b = Batch::empty(1, 50, 0);
        p.append(id, 50, 0, &mut b);
        (b.ys.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / b.ys.len() as f64).sqrt()
    };
    let (light, heavy) = (0..200u64)
        .map(|id| (id, Payload::of_task(id).mass()))
        .fold(((0, 9.0), (0, 0.0)), |(l, h), (id, m)| {
            (
                if m < l.1 { (id, m) } else { l },
                if m > h.1 { (id, m) } else { h },
            )
        });
    assert!(light.1 < 0.05 && heavy.1 > 2.9, "{light:?} {heavy:?}");
    assert!(rms(light.0) < 0.5, "light payload: {}", rms(light.0));
    assert!(rms(heavy.0) > 3.0, "heavy payload: {}", rms(heavy.0));
}

/// The oracle improves with data and, with many examples, reaches the noise floor;
/// the nominal model's error is the targets' size.
#[test]
fn the_oracle_reaches_the_noise_floor() {
    let p = panda();
    let noise: f64 = p.prior.noise.iter().sum::<f64>() / JOINTS as f64;
    assert!(
        noise > NOISE_TAU * NOISE_TAU && noise < 0.1,
        "noise variance {noise}"
    );
    let mse = |support: usize| {
        let (mut o, mut n) = (0.0, 0.0);
        for id in 0..10u64 {
            let mut b = Batch::empty(1, support, 50);
            p.append(1000 + id, support, 50, &mut b);
            let r = p.references(1000 + id, support, 50);
            for (i, y) in b.yq.iter().enumerate() {
                o += (r.oracle[i] - y).powi(2) as f64;
                n += (r.nominal[i] - y).powi(2) as f64;
            }
        }
        (o / (500 * JOINTS) as f64, n / (500 * JOINTS) as f64)
    };
    let (o1, nominal) = mse(1);
    let (o100, _) = mse(100);
    assert!(o100 < o1 && o1 < nominal, "{o100} < {o1} < {nominal}");
    assert!(o100 < 1.5 * noise, "{o100} vs noise {noise}");
}
