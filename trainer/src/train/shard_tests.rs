//! Tests of distributed outer steps: processes simulated by threads.

use crate::models::ModelKind;

use super::tests::{flat, small};
use super::*;

/// What the simulated processes exchange: one slot per rank, and a barrier.
type Slots = std::sync::Arc<(std::sync::Mutex<Vec<Option<Vec<u8>>>>, std::sync::Barrier)>;

/// Processes simulated by threads: every `all_gather` waits for all `size` of them.
struct Threads {
    rank: usize,
    size: usize,
    slots: Slots,
}

impl shard::Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_gather(&self, mine: &[u8], _lens: &[usize]) -> Result<Vec<Vec<u8>>, String> {
        let (slots, barrier) = &*self.slots;
        slots.lock().unwrap()[self.rank] = Some(mine.to_vec());
        barrier.wait();
        let all: Vec<Vec<u8>> = slots
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.clone().unwrap())
            .collect();
        // Nobody writes the next round before everyone has read this one.
        barrier.wait();
        Ok(all)
    }
}

/// Steps of a run with `shards` shards over `size` simulated processes; every process's
/// parameters (bits) and checkpoint bytes.
fn sharded_run(config: &TrainConfig, shards: usize, size: usize) -> Vec<(Vec<u32>, Vec<u8>)> {
    let slots: Slots = std::sync::Arc::new((
        std::sync::Mutex::new(vec![None; size]),
        std::sync::Barrier::new(size),
    ));
    let dir = std::env::temp_dir().join(format!("msr-shards-{}-{size}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let handles: Vec<_> = (0..size)
        .map(|rank| {
            let (config, slots, dir) = (config.clone(), slots.clone(), dir.clone());
            std::thread::spawn(move || {
                let mut t = Trainer::new(config.clone()).unwrap();
                t.set_shards(shards).unwrap();
                t.set_collective(Box::new(Threads { rank, size, slots }));
                for step in 0..config.steps {
                    let mine = train_shards(&t.family, &config, step, shards, rank, size);
                    let loss = t.outer_step_shards(&mine).unwrap();
                    assert!(loss.is_finite());
                }
                t.check_ranks_agree().unwrap();
                let ck = dir.join(format!("rank{rank}.bin"));
                t.save_checkpoint(&ck).unwrap();
                (flat(&t), std::fs::read(&ck).unwrap())
            })
        })
        .collect();
    let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

/// The distributed outer step is exact: 1, 2 and 3 processes sharing 3 shards take the
/// same steps to the bit and write the same checkpoint bytes; the shard count is kept by
/// a checkpoint; a process whose parameters differ is reported.
#[test]
fn sharded_steps_are_bit_identical_for_any_number_of_processes() {
    let mut config = small(ModelKind::MsrFc);
    config.tasks_per_step = 7;
    config.steps = 4;
    let one = sharded_run(&config, 3, 1);
    for size in [2, 3] {
        let many = sharded_run(&config, 3, size);
        for (rank, m) in many.iter().enumerate() {
            assert_eq!(
                m.0, one[0].0,
                "{size} processes, rank {rank}: other parameters"
            );
            assert_eq!(
                m.1, one[0].1,
                "{size} processes, rank {rank}: other checkpoint"
            );
        }
    }
    // Sharding changes the summation order, not the step: close to the one-backward run.
    let mut whole = Trainer::new(config.clone()).unwrap();
    for _ in 0..config.steps {
        whole.outer_step();
    }
    let a: Vec<f32> = flat(&whole).into_iter().map(f32::from_bits).collect();
    let b: Vec<f32> = one[0].0.iter().copied().map(f32::from_bits).collect();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "sharded vs whole: max difference {diff}");

    // The shard count survives a checkpoint; out-of-range counts are refused.
    let dir = std::env::temp_dir().join(format!("msr-shards-ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = dir.join("checkpoint.bin");
    std::fs::write(&ck, &one[0].1).unwrap();
    assert_eq!(
        &one[0].1[..8],
        b"MSRCKPT3",
        "a sharded checkpoint has its own magic"
    );
    let resumed = Trainer::resume(&ck, None).unwrap();
    assert_eq!(resumed.shards(), 3);
    // The shard count without the sharded magic is not read as a one-shard run.
    let mut forged = one[0].1.clone();
    forged[..8].copy_from_slice(b"MSRCKPT2");
    msr_runtime::frame::seal(&mut forged[8..]);
    std::fs::write(&ck, &forged).unwrap();
    let err = match Trainer::resume(&ck, None) {
        Ok(_) => panic!("a shard count under the one-shard magic was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("bytes after the record"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    let mut t = Trainer::new(config.clone()).unwrap();
    assert!(t.set_shards(0).is_err() && t.set_shards(8).is_err());

    // A process that holds other parameters: the check names it.
    struct Liar;
    impl shard::Collective for Liar {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_gather(&self, mine: &[u8], _lens: &[usize]) -> Result<Vec<Vec<u8>>, String> {
            Ok(vec![mine.to_vec(), vec![0; mine.len()]])
        }
    }
    t.set_collective(Box::new(Liar));
    let err = t.check_ranks_agree().unwrap_err().to_string();
    assert!(err.contains("ranks [1]"), "{err}");
}
