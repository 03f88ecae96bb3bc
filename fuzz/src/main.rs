//! `msr-fuzz`: fuzzes libmsr through its C ABI.
//!
//! `msr-fuzz run --cases N --seed S` splits cases `0..N` over worker processes (this
//! binary, `worker` subcommand), each under a memory limit; a worker that dies is a crash
//! at the case it was on, one silent for longer than the timeout is a hang; both are
//! restarted at the next case. Workers report MSR_ERR_INTERNAL and broken guarantees (OK
//! with NaN, a saved state that does not load, a refused call that changed the session).
//! The summary counts each; the exit status is 1 if anything was found.
//! `msr-fuzz case --seed S --index I --out F` writes one case's model file to reproduce it.

mod cases;
mod drive;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Fuzz libmsr through its C ABI")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run cases 0..N in worker processes and print the counts.
    Run {
        /// Number of cases.
        #[arg(long, default_value_t = 20_000)]
        cases: u64,
        /// Seed of the run: (seed, case index) names a case.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Worker processes (default: the machine's cores).
        #[arg(long)]
        workers: Option<usize>,
        /// A worker silent for this long is hung.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Address-space limit of each worker, in MiB.
        #[arg(long, default_value_t = 4096)]
        memory_mib: u64,
    },
    /// Runs cases [from, to) and reports each on stdout (used by `run`).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Writes the model file of one case, and runs it here.
    Case {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        index: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Default, Debug)]
struct Counts {
    cases: u64,
    loaded: u64,
    adapted: u64,
    skipped: u64,
    crashes: u64,
    hangs: u64,
    internal: u64,
    broken: u64,
    /// Cases with a call over its time bound, twice.
    slow: u64,
    findings: Vec<String>,
    /// The largest time per predicted work unit (ns) of a call over 1 ms, and where.
    slowest: Option<(f64, String)>,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.cases += o.cases;
        self.loaded += o.loaded;
        self.adapted += o.adapted;
        self.skipped += o.skipped;
        self.crashes += o.crashes;
        self.hangs += o.hangs;
        self.internal += o.internal;
        self.broken += o.broken;
        self.slow += o.slow;
        self.findings.extend(o.findings);
        if let Some((r, w)) = o.slowest
            && self.slowest.as_ref().is_none_or(|(mine, _)| r > *mine)
        {
            self.slowest = Some((r, w));
        }
    }
    fn found(&self) -> u64 {
        self.crashes + self.hangs + self.internal + self.broken + self.slow
    }
}

fn worker(seed: u64, from: u64, to: u64) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for i in from..to {
        let line = match drive::case(seed, i) {
            drive::Outcome::Ok {
                loaded,
                adapted,
                slowest,
            } => match slowest {
                Some((ratio, call)) => {
                    format!("{i} ok {} {} {ratio} {call}", loaded as u8, adapted as u8)
                }
                None => format!("{i} ok {} {}", loaded as u8, adapted as u8),
            },
            drive::Outcome::Skipped => format!("{i} skip"),
            drive::Outcome::Internal(m) => format!("{i} internal {m}"),
            drive::Outcome::Broken(m) => format!("{i} broken {m}"),
            drive::Outcome::Slow(m) => format!("{i} slow {m}"),
        };
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .expect("stdout");
    }
}

/// Runs cases [from, to) in worker processes, restarting after a crash or a hang.
fn supervise(seed: u64, from: u64, to: u64, timeout: Duration, memory: u64) -> Counts {
    let exe = std::env::current_exe().expect("own path");
    let mut c = Counts::default();
    let mut next = from;
    while next < to {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--seed", &seed.to_string()])
            .args(["--from", &next.to_string(), "--to", &to.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // setrlimit, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: memory,
                    rlim_max: memory,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start a worker");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        loop {
            match rx.recv_timeout(timeout) {
                Ok(line) => {
                    let mut parts = line.splitn(3, ' ');
                    let i: u64 = parts
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("case index");
                    let kind = parts.next().unwrap_or("");
                    let rest = parts.next().unwrap_or("");
                    c.cases += 1;
                    match kind {
                        "ok" => {
                            let mut f = rest.split(' ');
                            c.loaded += (f.next() == Some("1")) as u64;
                            c.adapted += (f.next() == Some("1")) as u64;
                            if let (Some(ratio), Some(call)) =
                                (f.next().and_then(|r| r.parse::<f64>().ok()), f.next())
                                && c.slowest.as_ref().is_none_or(|(r, _)| ratio > *r)
                            {
                                c.slowest = Some((ratio, format!("case {i}: {call}")));
                            }
                        }
                        "skip" => {
                            c.loaded += 1;
                            c.skipped += 1;
                        }
                        "slow" => {
                            c.slow += 1;
                            c.findings
                                .push(format!("case {i}: over its time bound: {rest}"));
                        }
                        "internal" => {
                            c.internal += 1;
                            c.findings
                                .push(format!("case {i}: MSR_ERR_INTERNAL: {rest}"));
                        }
                        _ => {
                            c.broken += 1;
                            c.findings.push(format!("case {i}: {rest}"));
                        }
                    }
                    next = i + 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    c.cases += 1;
                    c.hangs += 1;
                    c.findings
                        .push(format!("case {next}: no answer within {timeout:?} (hang)"));
                    next += 1;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait for a worker");
                    if next < to {
                        let mut err = String::new();
                        if let Some(mut e) = child.stderr.take() {
                            use std::io::Read;
                            let _ = e.read_to_string(&mut err);
                        }
                        let last = err.lines().last().unwrap_or("").to_string();
                        c.cases += 1;
                        c.crashes += 1;
                        c.findings
                            .push(format!("case {next}: worker died ({status}): {last}"));
                        next += 1;
                    }
                    break;
                }
            }
        }
    }
    c
}

fn main() {
    match Cli::parse().command {
        Cmd::Worker { seed, from, to } => worker(seed, from, to),
        Cmd::Case { seed, index, out } => {
            let mut r = cases::Rng::for_case(seed, index);
            let bytes = cases::model_bytes(&mut r);
            if let Some(out) = out {
                std::fs::write(&out, &bytes).expect("write the case");
                println!("wrote {} ({} bytes)", out.display(), bytes.len());
            }
            match drive::case(seed, index) {
                drive::Outcome::Ok {
                    loaded,
                    adapted,
                    slowest,
                } => {
                    println!(
                        "ok (loaded: {loaded}, adapted: {adapted}, slowest call: {slowest:?} ns per work unit)"
                    )
                }
                drive::Outcome::Skipped => println!("skipped (over the compute budget)"),
                drive::Outcome::Internal(m) => println!("MSR_ERR_INTERNAL: {m}"),
                drive::Outcome::Broken(m) => println!("broken: {m}"),
                drive::Outcome::Slow(m) => println!("over its time bound: {m}"),
            }
        }
        Cmd::Run {
            cases,
            seed,
            workers,
            timeout_ms,
            memory_mib,
        } => {
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1) as u64;
            let start = Instant::now();
            let timeout = Duration::from_millis(timeout_ms);
            let memory = memory_mib << 20;
            let total = std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let (from, to) = (cases * w / workers, cases * (w + 1) / workers);
                        s.spawn(move || supervise(seed, from, to, timeout, memory))
                    })
                    .collect();
                let mut total = Counts::default();
                for h in handles {
                    total.add(h.join().expect("supervisor"));
                }
                total
            });
            let wall = start.elapsed();
            for f in total.findings.iter().take(50) {
                println!("finding: {f}");
            }
            println!(
                "msr-fuzz seed {seed}: {} cases in {:.1} s ({workers} workers, {} MiB, {} ms timeout): \
                 {} loaded, {} adapted OK, {} over the compute budget; \
                 crashes {}, hangs {}, internal errors {}, broken guarantees (OK with NaN...) {}, \
                 calls over their time bound {}",
                total.cases,
                wall.as_secs_f64(),
                memory_mib,
                timeout_ms,
                total.loaded,
                total.adapted,
                total.skipped,
                total.crashes,
                total.hangs,
                total.internal,
                total.broken,
                total.slow,
            );
            if let Some((ratio, at)) = &total.slowest {
                println!(
                    "slowest call over 1 ms: {ratio:.3} ns per predicted work unit ({at}); \
                     the bound: {} ms + {} ns per unit",
                    drive::BOUND_SLACK_NS / 1e6,
                    drive::BOUND_NS_PER_UNIT
                );
            }
            println!(
                "fuzz: {} passed, {} failed",
                total.cases - total.found(),
                total.found()
            );
            if total.found() > 0 {
                std::process::exit(1);
            }
        }
    }
}
