//! Data-parallel outer steps, exact: the meta-gradient of a step is defined as a sum of a
//! fixed number of shards (`--shards S`, part of the run's definition, independent of how
//! many processes run it). The step's tasks are split into S contiguous shards; shard `s`
//! belongs to rank `s % N` of N processes, which computes its gradient by one backward
//! pass; every rank gathers every shard's gradient and adds them in shard order, so N = 1,
//! 2, 4... processes take bit-identical steps and write byte-identical files.
//!
//! The processes talk through a [`Collective`]: [`Local`] (one process) or, with the
//! `mpi` feature, MPI ([`process_collective`] after `mpi_init`: launched by mpirun, srun or
//! an MPIJob).

/// How the processes of a run exchange bytes. Calls are collective: every rank makes the
/// same calls in the same order.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// How many processes run the job.
    fn size(&self) -> usize;
    /// Every rank's `mine`, in rank order, on every rank. `lens[r]` is rank r's length,
    /// which every rank knows (the shards are fixed): no lengths are exchanged.
    fn all_gather(&self, mine: &[u8], lens: &[usize]) -> Result<Vec<Vec<u8>>, String>;
    /// Ends the whole job (every process) with `code`: what a process that fails alone
    /// must do, or the others would wait for it in their next collective forever. One
    /// process: exits.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// One process: gathering is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather(&self, mine: &[u8], lens: &[usize]) -> Result<Vec<Vec<u8>>, String> {
        if lens != [mine.len()] {
            return Err(format!("{} bytes to gather, {lens:?} expected", mine.len()));
        }
        Ok(vec![mine.to_vec()])
    }
}

/// The tasks `lo..hi` of shard `s` of `shards` over `tasks` tasks: contiguous, sizes
/// differing by at most one, the larger first.
pub fn shard_range(tasks: usize, shards: usize, s: usize) -> std::ops::Range<usize> {
    let (base, extra) = (tasks / shards, tasks % shards);
    let lo = s * base + s.min(extra);
    lo..lo + base + usize::from(s < extra)
}

/// The shards rank `rank` of `size` computes, in increasing order.
pub fn owned(shards: usize, rank: usize, size: usize) -> impl Iterator<Item = usize> {
    (rank..shards).step_by(size.max(1))
}

/// Adds the shards' gradients in shard order. `gathered[r]` is rank `r`'s buffer: for each
/// shard it owns ([`owned`]), `len` little-endian f32 gradients and its f64 summed loss.
/// Returns the summed gradient and loss, or what is wrong with the buffers.
pub fn reduce_in_shard_order(
    gathered: &[Vec<u8>],
    shards: usize,
    len: usize,
) -> Result<(Vec<f32>, f64), String> {
    let size = gathered.len();
    let chunk = 4 * len + 8;
    for (r, buf) in gathered.iter().enumerate() {
        let want = owned(shards, r, size).count() * chunk;
        if buf.len() != want {
            return Err(format!(
                "rank {r} sent {} bytes of gradients, {want} expected: the ranks disagree on the run's shape",
                buf.len()
            ));
        }
    }
    let mut sum = vec![0.0f32; len];
    let mut loss = 0.0f64;
    for s in 0..shards {
        let (r, j) = (s % size, s / size);
        let c = &gathered[r][j * chunk..(j + 1) * chunk];
        for (acc, b) in sum.iter_mut().zip(c[..4 * len].chunks_exact(4)) {
            *acc += f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        loss += f64::from_le_bytes(c[4 * len..].try_into().expect("8 bytes"));
    }
    Ok((sum, loss))
}

/// A 64-bit hash (FNV-1a) of f32 values' bits: the same on every machine, process and
/// build (std's hasher may change between Rust releases).
pub fn hash_f32(values: impl Iterator<Item = f32>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(feature = "mpi")]
pub use self::mpi_impl::{Mpi, mpi_init};

/// This process's place in its job: MPI's world when MPI is initialised (feature `mpi`:
/// [`mpi_init`], once per process, before), else [`Local`].
pub fn process_collective() -> Box<dyn Collective> {
    #[cfg(feature = "mpi")]
    if let Some(world) = Mpi::world() {
        return Box::new(world);
    }
    Box::new(Local)
}

#[cfg(feature = "mpi")]
mod mpi_impl {
    use mpi::datatype::PartitionMut;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::Collective;

    /// MPI's world communicator.
    pub struct Mpi {
        world: SimpleCommunicator,
    }

    /// Initialises MPI, once per process (`None` if it already was): keep the universe
    /// until the process is done with MPI; dropping it finalises MPI. Threading level
    /// "funneled": the batch generator runs on its own thread, MPI is called from the main
    /// thread only.
    pub fn mpi_init() -> Option<mpi::environment::Universe> {
        mpi::initialize_with_threading(mpi::Threading::Funneled).map(|(u, _)| u)
    }

    impl Mpi {
        /// The world, if MPI is initialised (and not yet finalised).
        pub fn world() -> Option<Self> {
            (mpi::environment::is_initialized() && !mpi::environment::is_finalized()).then(|| Mpi {
                world: SimpleCommunicator::world(),
            })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn all_gather(&self, mine: &[u8], lens: &[usize]) -> Result<Vec<Vec<u8>>, String> {
            if lens.len() != self.size() || lens[self.rank()] != mine.len() {
                // Every rank computes the same lengths; a mismatch is a bug, not data.
                return Err(format!(
                    "rank {} has {} bytes to gather, the lengths say {lens:?}",
                    self.rank(),
                    mine.len()
                ));
            }
            let counts: Vec<i32> = lens
                .iter()
                .map(|&l| {
                    i32::try_from(l).map_err(|_| format!("{l} bytes: over MPI's count limit"))
                })
                .collect::<Result<_, _>>()?;
            let mut displs = Vec::with_capacity(lens.len());
            let mut at = 0i32;
            for &c in &counts {
                displs.push(at);
                at = at
                    .checked_add(c)
                    .ok_or("gathered gradients over 2 GiB: use fewer shards per step")?;
            }
            let mut all = vec![0u8; at as usize];
            {
                let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                self.world.all_gather_varcount_into(mine, &mut part);
            }
            Ok(counts
                .iter()
                .zip(&displs)
                .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
                .collect())
        }
    }
}

/// The check that every process of a run holds the same parameters.
impl super::Trainer {
    /// A hash of the parameters, equal on every process of a healthy run.
    pub fn params_hash(&self) -> u64 {
        super::shard::hash_f32(
            self.params
                .tensors()
                .iter()
                .flat_map(msr_runtime::model::download),
        )
    }

    /// Checks that every process holds the same parameters (one small gather): an error
    /// naming the ranks that differ from rank 0 if not.
    pub fn check_ranks_agree(&self) -> Result<(), super::TrainError> {
        let h = self.params_hash();
        let all = self
            .collective
            .all_gather(&h.to_le_bytes(), &vec![8; self.collective.size()])
            .map_err(super::TrainError::Distributed)?;
        let differ: Vec<usize> = (0..all.len()).filter(|&r| all[r] != all[0]).collect();
        if differ.is_empty() {
            Ok(())
        } else {
            Err(super::TrainError::Distributed(format!(
                "after step {}, ranks {differ:?} hold other parameters than rank 0: the processes diverged (different builds, libraries or inputs?)",
                self.step
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_tasks_once_in_order() {
        for tasks in 1..20 {
            for shards in 1..=tasks {
                let mut next = 0;
                for s in 0..shards {
                    let r = shard_range(tasks, shards, s);
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty() && r.len() <= tasks.div_ceil(shards));
                    next = r.end;
                }
                assert_eq!(next, tasks);
            }
        }
        let mine: Vec<usize> = owned(5, 1, 2).collect();
        assert_eq!(mine, [1, 3]);
        assert_eq!(owned(2, 3, 4).count(), 0, "a rank without shards");
    }

    /// Gathered from 1, 2 or 3 ranks, the shards add up to the same bits.
    #[test]
    fn the_sum_is_in_shard_order_whatever_the_ranks() {
        let shards = 5;
        let len = 3;
        let grad = |s: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (1.0 + s as f32) * 1e-3 + [1e8, -1e8, 0.1][(i + s) % 3])
                .collect()
        };
        let buffers = |size: usize| -> Vec<Vec<u8>> {
            (0..size)
                .map(|r| {
                    owned(shards, r, size)
                        .flat_map(|s| {
                            let mut b: Vec<u8> =
                                grad(s).iter().flat_map(|g| g.to_le_bytes()).collect();
                            b.extend_from_slice(&(s as f64 * 0.5).to_le_bytes());
                            b
                        })
                        .collect()
                })
                .collect()
        };
        let one = reduce_in_shard_order(&buffers(1), shards, len).unwrap();
        for size in [2, 3, 7] {
            let many = reduce_in_shard_order(&buffers(size), shards, len).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one.0), bits(&many.0), "{size} ranks");
            assert_eq!(one.1.to_bits(), many.1.to_bits());
        }
        // And it is the sequential sum, shard 0 first.
        let mut want = vec![0.0f32; len];
        for s in 0..shards {
            for (w, g) in want.iter_mut().zip(grad(s)) {
                *w += g;
            }
        }
        assert_eq!(one.0, want);
        assert_eq!(one.1, 5.0);
        let mut short = buffers(2);
        short[1].pop();
        let err = reduce_in_shard_order(&short, shards, len).unwrap_err();
        assert!(err.contains("rank 1"), "{err}");
    }

    #[test]
    fn local_gathers_itself() {
        assert_eq!(
            Local.all_gather(b"abc", &[3]).unwrap(),
            vec![b"abc".to_vec()]
        );
        assert!(Local.all_gather(b"abc", &[4]).is_err());
        assert_eq!((Local.rank(), Local.size()), (0, 1));
        assert_ne!(
            hash_f32([1.0f32].into_iter()),
            hash_f32([1.0f32, 0.0].into_iter())
        );
    }
}
