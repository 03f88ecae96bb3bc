//! Task families, generated on the fly from a seed (the paper's 2-D data is 17 GB on
//! disk; generating it from disjoint train and test seed ranges needs none).
//!
//! Train and test tasks come from disjoint id ranges: train task ids are below
//! [`TEST_TASK_BASE`], test task ids start there. A task id and the family fully determine
//! the task, so every model is evaluated on the very same test tasks.

use crate::rng::Rng;
use crate::train::TrainError;

pub mod cartpole;
mod episodes;
pub mod glyphs;
pub mod logs;
pub mod npz;
mod rank;
pub mod robots;
pub mod rot;
mod source;
#[cfg(test)]
mod tests;

pub use source::{Problem, TaskSource};

use npz::file_batch;

/// Test task ids start here; train task ids are drawn below it.
pub const TEST_TASK_BASE: u64 = 1 << 62;
/// Validation task ids start here (above the test ids): every generated family has a
/// validation split of its own, so that tuning on periodic evaluations never sees a test
/// task.
pub const VAL_TASK_BASE: u64 = TEST_TASK_BASE + (1 << 61);

/// A batch of tasks, host-side, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Number of tasks.
    pub tasks: usize,
    /// Support examples per task.
    pub support: usize,
    /// Query examples per task.
    pub query: usize,
    /// Support inputs `[tasks, support, in]`.
    pub xs: Vec<f32>,
    /// Support targets `[tasks, support, out]`.
    pub ys: Vec<f32>,
    /// Query inputs `[tasks, query, in]`.
    pub xq: Vec<f32>,
    /// Query targets `[tasks, query, out]`.
    pub yq: Vec<f32>,
}

impl Batch {
    /// A batch of `tasks` tasks with no examples yet.
    pub fn empty(tasks: usize, support: usize, query: usize) -> Self {
        Batch {
            tasks,
            support,
            query,
            xs: Vec::new(),
            ys: Vec::new(),
            xq: Vec::new(),
            yq: Vec::new(),
        }
    }

    /// The first task of a classification batch as an episode file (docs/file-formats.md),
    /// the format the C example reads. Labels are the positions of the one-hot targets.
    pub fn episode_bytes(&self, ways: usize) -> Vec<u8> {
        let fin = self.xs.len() / (self.tasks * self.support);
        let labels = |y: &[f32]| -> Vec<i32> {
            y.chunks(ways)
                .map(|row| row.iter().position(|&v| v == 1.0).unwrap_or(0) as i32)
                .collect()
        };
        let mut bytes = b"MSREPIS1".to_vec();
        for v in [self.support, self.query, fin, ways] {
            bytes.extend_from_slice(&(v as u32).to_le_bytes());
        }
        let (s, q) = (self.support, self.query);
        for (x, y, n) in [(&self.xs, &self.ys, s), (&self.xq, &self.yq, q)] {
            bytes.extend(x[..n * fin].iter().flat_map(|v| v.to_le_bytes()));
            bytes.extend(labels(&y[..n * ways]).iter().flat_map(|v| v.to_le_bytes()));
        }
        bytes
    }
}

/// Input length of the 1-D problems.
pub const SEQ_IN: usize = 70;
/// Filter taps of the 1-D problems.
pub const TAPS: usize = 3;
/// Output length (valid convolution).
pub const SEQ_OUT: usize = SEQ_IN - TAPS + 1;
/// Examples per task in the paper's data: 1 support + 19 query by default.
pub const EXAMPLES_PER_TASK: usize = 20;

/// Side of the 2-D inputs.
pub const IMG: usize = 32;
/// Side of the 2-D outputs (valid 3x3 convolution).
pub const IMG_OUT: usize = IMG - 2;

/// Seed of the fixed, family-wide connectivity of rank2 / rank5.
const FAMILY_SEED: u64 = 0x0005_EED0_F0A1_1EE5;

/// A task family with its fixed, family-wide structure.
#[derive(Clone, Debug)]
pub struct Family {
    problem: Problem,
    /// Where its tasks come from.
    source: Source,
    /// Classes per episode (classification only).
    ways: usize,
    /// Augment query examples (Algorithm 2; classification only).
    augment_query: bool,
}

/// Where a family's tasks come from.
#[derive(Clone, Debug)]
enum Source {
    /// Generated from a seed (the 1-D and 2-D problems, cartpole); `connectivity` is the
    /// rank-r families' softmax(randn(68, r)), row-major `[68, r]` (empty for the others).
    Generated { connectivity: Vec<f64> },
    /// A user's task set (`npz:PATH`).
    File(std::sync::Arc<npz::NpzTasks>),
    /// Episodes of a glyph data set (the classification problems).
    Glyphs(std::sync::Arc<glyphs::Glyphs>),
    /// A simulated robot (the robot families).
    Robot(std::sync::Arc<dyn robots::Robot>),
}

impl Family {
    /// The family named `name`: a synthetic problem, or `npz:PATH` (read and checked now).
    pub fn open(name: &str) -> Result<Self, TrainError> {
        Self::from_source(&name.parse().map_err(TrainError::Config)?)
    }

    /// The family of `source` (a task file is read and checked now).
    pub fn from_source(source: &TaskSource) -> Result<Self, TrainError> {
        let problem = source.problem();
        let (source, ways) = match source {
            TaskSource::Glyphs { mini } => {
                let set = if *mini {
                    glyphs::Glyphs::mini()
                } else {
                    glyphs::Glyphs::system()
                };
                let set = set.map_err(|e| TrainError::Tasks(e.to_string()))?;
                (Source::Glyphs(std::sync::Arc::new(set)), 5)
            }
            TaskSource::Npz(path) => (
                Source::File(std::sync::Arc::new(npz::NpzTasks::open(path)?)),
                0,
            ),
            TaskSource::Synthetic(_) if problem.is_robot() => {
                (Source::Robot(robots::open(problem)?), 0)
            }
            TaskSource::Synthetic(_) => return Ok(Self::new(problem)),
        };
        Ok(Family {
            problem,
            source,
            ways,
            augment_query: false,
        })
    }

    /// The family of a synthetic `problem` (for `npz:PATH` and the robots, use
    /// [`Family::open`]).
    pub fn new(problem: Problem) -> Self {
        let rank = match problem {
            Problem::Rank2 => 2,
            Problem::Rank5 => 5,
            _ => 0,
        };
        let mut rng = Rng::derive(&[FAMILY_SEED, rank as u64]);
        let mut connectivity = Vec::with_capacity(SEQ_OUT * rank);
        for _ in 0..SEQ_OUT {
            let row: Vec<f64> = (0..rank).map(|_| rng.normal()).collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = row.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = exp.iter().sum();
            connectivity.extend(exp.iter().map(|e| e / sum));
        }
        Family {
            problem,
            source: Source::Generated { connectivity },
            ways: 0,
            augment_query: false,
        }
    }

    /// The rank-r families' connectivity (empty for the other families).
    fn connectivity(&self) -> &[f64] {
        match &self.source {
            Source::Generated { connectivity } => connectivity,
            _ => &[],
        }
    }

    /// The robot, for the robot families.
    fn robot(&self) -> Option<&dyn robots::Robot> {
        match &self.source {
            Source::Robot(r) => Some(r.as_ref()),
            _ => None,
        }
    }

    /// Whether tasks are classification episodes (one-hot targets over [`Family::ways`]).
    pub fn is_classification(&self) -> bool {
        matches!(self.source, Source::Glyphs(_))
    }

    /// Classes per episode (0 for regression).
    pub fn ways(&self) -> usize {
        self.ways
    }

    /// The same family with `ways`-way episodes and, if `augment_query`, augmented queries.
    /// Regression families ignore both.
    pub fn with_episodes(mut self, ways: usize, augment_query: bool) -> Result<Self, TrainError> {
        if let Source::Glyphs(g) = &self.source {
            if ways < 2 {
                return Err(TrainError::Config(format!(
                    "--ways must be at least 2 (got {ways})"
                )));
            }
            for split in [
                glyphs::Split::Train,
                glyphs::Split::Val,
                glyphs::Split::Test,
            ] {
                let have = g.classes(split).len();
                if have < ways {
                    return Err(TrainError::Tasks(
                        glyphs::GlyphError::TooFewClasses { split, have, ways }.to_string(),
                    ));
                }
            }
            self.ways = ways;
            self.augment_query = augment_query;
        }
        Ok(self)
    }

    /// The glyph data set, for the classification families.
    pub fn glyphs(&self) -> Option<&glyphs::Glyphs> {
        match &self.source {
            Source::Glyphs(g) => Some(g),
            _ => None,
        }
    }

    /// Examples available per task (support + query).
    pub fn examples_per_task(&self) -> usize {
        match &self.source {
            Source::Glyphs(_) => self.ways * glyphs::INSTANCES,
            Source::Robot(r) => r.examples_per_task(),
            Source::File(f) => f.examples,
            Source::Generated { .. } if self.problem == Problem::Cartpole => cartpole::EXAMPLES,
            Source::Generated { .. } => EXAMPLES_PER_TASK,
        }
    }

    /// The task file, for `npz:PATH` families.
    pub fn file(&self) -> Option<&npz::NpzTasks> {
        match &self.source {
            Source::File(f) => Some(f),
            _ => None,
        }
    }

    /// The problem.
    pub fn problem(&self) -> Problem {
        self.problem
    }
    /// Scalars per input example.
    pub fn input_len(&self) -> usize {
        match &self.source {
            Source::Glyphs(_) => glyphs::SIDE * glyphs::SIDE,
            Source::Robot(r) => r.inputs(),
            Source::File(f) => f.input_len(),
            Source::Generated { .. } if self.problem == Problem::Cartpole => cartpole::INPUTS,
            Source::Generated { .. } if self.problem.is_2d() => IMG * IMG,
            Source::Generated { .. } => SEQ_IN,
        }
    }
    /// Scalars per output example.
    pub fn output_len(&self) -> usize {
        match &self.source {
            Source::Glyphs(_) => self.ways,
            Source::File(f) => f.output_len(),
            Source::Robot(r) => r.outputs(),
            Source::Generated { .. } if self.problem == Problem::Cartpole => cartpole::OUTPUTS,
            Source::Generated { .. } if self.problem.is_2d() => {
                rot::channels(self.problem) * IMG_OUT * IMG_OUT
            }
            Source::Generated { .. } => SEQ_OUT,
        }
    }

    /// The tasks with the given ids, each split into `support` + `query` examples (from a
    /// file: the first `support` examples of the task, then the next `query`).
    pub fn batch(&self, ids: &[u64], support: usize, query: usize) -> Batch {
        let mut b = Batch::empty(ids.len(), support, query);
        match &self.source {
            Source::File(f) => return file_batch(f, ids, support, query),
            Source::Glyphs(g) => return self.episodes(g, ids, support, query),
            Source::Robot(r) => {
                for &id in ids {
                    r.append(id, support, query, &mut b);
                }
                return b;
            }
            Source::Generated { .. } => {}
        }
        if self.problem == Problem::Cartpole {
            for &id in ids {
                let pole = cartpole::CartPole::of_task(id);
                let mut rng = Rng::derive(&[self.problem as u64, id, 2]);
                cartpole::examples(&pole, support, &mut rng, &mut b.xs, &mut b.ys);
                cartpole::examples(&pole, query, &mut rng, &mut b.xq, &mut b.yq);
            }
            return b;
        }
        for &id in ids {
            let filters = self.filters(id);
            let mut rng = Rng::derive(&[self.problem as u64, id, 2]);
            self.examples(&filters, support, &mut rng, &mut b.xs, &mut b.ys);
            self.examples(&filters, query, &mut rng, &mut b.xq, &mut b.yq);
        }
        b
    }

    /// The robot families' references (the nominal model's and the oracle's query
    /// predictions) for the tasks `ids`, as [`Family::batch`] splits them; `None` for the
    /// other families.
    pub fn references(
        &self,
        ids: &[u64],
        support: usize,
        query: usize,
    ) -> Option<Vec<robots::References>> {
        let r = self.robot()?;
        Some(
            ids.iter()
                .map(|&id| r.references(id, support, query))
                .collect(),
        )
    }

    /// `n` training tasks for outer step `step` of a run seeded with `seed`.
    pub fn train_ids(&self, seed: u64, step: u64, n: usize) -> Vec<u64> {
        let mut rng = Rng::derive(&[seed, step, 3]);
        match self.file() {
            Some(f) => (0..n)
                .map(|_| f.train[rng.below(f.train.len())] as u64)
                .collect(),
            None => (0..n).map(|_| rng.next_u64() % TEST_TASK_BASE).collect(),
        }
    }

    /// The first `n` validation tasks (from a file, at most its validation tasks): the
    /// glyph families' meta-validation alphabets, the generated families' validation seeds.
    /// Never a test task.
    pub fn val_ids(&self, n: usize) -> Vec<u64> {
        match self.file() {
            Some(f) => f.val.iter().take(n).map(|&t| t as u64).collect(),
            None => (0..n as u64).map(|i| VAL_TASK_BASE + i).collect(),
        }
    }

    /// The first `n` test tasks (the same for every run and model; from a file, at most
    /// its test tasks, in file order).
    pub fn test_ids(&self, n: usize) -> Vec<u64> {
        match self.file() {
            Some(f) => f.test.iter().take(n).map(|&t| t as u64).collect(),
            None => (0..n as u64).map(|i| TEST_TASK_BASE + i).collect(),
        }
    }

    /// Test tasks for an evaluation: from a file, all of them, or a random subset of `n`
    /// drawn with `seed` (sorted; the second value says whether it is a subset); a generated
    /// family has unlimited test tasks: the first `n` (300 by default).
    pub fn eval_ids(&self, n: Option<usize>, seed: u64) -> (Vec<u64>, bool) {
        match (self.file(), n) {
            (Some(f), None) => (f.test.iter().map(|&t| t as u64).collect(), false),
            (Some(f), Some(n)) if n >= f.test.len() => {
                (f.test.iter().map(|&t| t as u64).collect(), false)
            }
            (Some(f), Some(n)) => {
                // A partial Fisher-Yates shuffle: the first n of a seeded permutation.
                let mut pool: Vec<u64> = f.test.iter().map(|&t| t as u64).collect();
                let mut rng = Rng::derive(&[seed, 0x7E57]);
                for i in 0..n {
                    let j = i + rng.below(pool.len() - i);
                    pool.swap(i, j);
                }
                let mut ids = pool[..n].to_vec();
                ids.sort_unstable();
                (ids, true)
            }
            (None, n) => (self.test_ids(n.unwrap_or(300)), false),
        }
    }
}
