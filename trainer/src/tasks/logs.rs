//! Robot logs to tasks: long time series recorded under a few conditions (winds, payloads,
//! terrains), cut into windows of `window` consecutive samples, each window one task, with
//! a split by condition so that the test condition is never seen in training
//! (`trainer windows`, docs/data.md).
//!
//! A window never crosses from one run into another (a run is a stretch of consecutive rows
//! with the same run id and condition), so a task never joins two recordings. Validation
//! takes whole runs where a condition has several, else the end of its one run, and no
//! training window overlaps a validation window's samples.

use std::collections::BTreeMap;

/// How to read a log and cut it.
#[derive(Clone, Debug)]
pub struct LogSpec {
    /// Columns of the inputs, in order.
    pub inputs: Vec<String>,
    /// Columns of the targets, in order.
    pub outputs: Vec<String>,
    /// The column naming each row's condition (a wind, a payload).
    pub condition: String,
    /// The column naming each row's run (a flight, an episode), if the log has one.
    pub run: Option<String>,
    /// Samples per window (examples per task).
    pub window: usize,
    /// Samples between the starts of two windows (`window`: no overlap).
    pub stride: usize,
}

/// Windows cut from a log: `x` `[tasks, window, inputs]`, `y` `[tasks, window, outputs]`
/// row-major, and each window's condition.
#[derive(Clone, Debug)]
pub struct Windows {
    /// Inputs of every window.
    pub x: Vec<f32>,
    /// Targets of every window.
    pub y: Vec<f32>,
    /// Each window's condition.
    pub condition: Vec<String>,
    /// Each window's run, numbered in file order.
    pub run: Vec<usize>,
    /// Each window's first sample, within its run.
    pub start: Vec<usize>,
    /// The conditions in order of first appearance.
    pub conditions: Vec<String>,
}

/// A stretch of consecutive rows of one run and one condition.
struct Run {
    condition: String,
    x: Vec<f32>,
    y: Vec<f32>,
}

/// Reads a CSV log with a header (`reader`) and cuts it into windows.
pub fn windows_from_csv(reader: impl std::io::Read, spec: &LogSpec) -> Result<Windows, String> {
    if spec.window == 0 || spec.stride == 0 {
        return Err("--window and --stride must be at least 1".into());
    }
    if spec.inputs.is_empty() || spec.outputs.is_empty() {
        return Err("name at least one input and one output column".into());
    }
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header = csv
        .headers()
        .map_err(|e| format!("the header: {e}"))?
        .clone();
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "no column '{name}' (the header has: {})",
                header.iter().collect::<Vec<_>>().join(", ")
            )
        })
    };
    let xi: Vec<usize> = spec
        .inputs
        .iter()
        .map(|c| column(c))
        .collect::<Result<_, _>>()?;
    let yi: Vec<usize> = spec
        .outputs
        .iter()
        .map(|c| column(c))
        .collect::<Result<_, _>>()?;
    let ci = column(&spec.condition)?;
    let ri = spec.run.as_deref().map(column).transpose()?;
    let mut runs: Vec<Run> = Vec::new();
    let mut last_key: Option<(String, String)> = None;
    for (line, record) in csv.records().enumerate() {
        let record = record.map_err(|e| format!("row {}: {e}", line + 2))?;
        let field = |i: usize| record.get(i).unwrap_or("");
        let number = |i: usize| -> Result<f32, String> {
            let v: f32 = field(i).parse().map_err(|_| {
                format!(
                    "row {}, column '{}': '{}' is not a number",
                    line + 2,
                    &header[i],
                    field(i)
                )
            })?;
            if !v.is_finite() {
                return Err(format!(
                    "row {}, column '{}': {v} is not finite",
                    line + 2,
                    &header[i]
                ));
            }
            Ok(v)
        };
        let key = (
            field(ci).to_string(),
            ri.map_or(String::new(), |i| field(i).to_string()),
        );
        if last_key.as_ref() != Some(&key) {
            runs.push(Run {
                condition: key.0.clone(),
                x: Vec::new(),
                y: Vec::new(),
            });
            last_key = Some(key);
        }
        let run = runs.last_mut().expect("pushed above");
        for &i in &xi {
            run.x.push(number(i)?);
        }
        for &i in &yi {
            run.y.push(number(i)?);
        }
    }
    let (fi, fo, w) = (xi.len(), yi.len(), spec.window);
    let mut out = Windows {
        x: Vec::new(),
        y: Vec::new(),
        condition: Vec::new(),
        run: Vec::new(),
        start: Vec::new(),
        conditions: Vec::new(),
    };
    for (r, run) in runs.iter().enumerate() {
        if !out.conditions.contains(&run.condition) {
            out.conditions.push(run.condition.clone());
        }
        let samples = run.x.len() / fi;
        let mut start = 0;
        while start + w <= samples {
            out.x
                .extend_from_slice(&run.x[start * fi..(start + w) * fi]);
            out.y
                .extend_from_slice(&run.y[start * fo..(start + w) * fo]);
            out.condition.push(run.condition.clone());
            out.run.push(r);
            out.start.push(start);
            start += spec.stride;
        }
    }
    if out.condition.is_empty() {
        return Err(format!(
            "no run of the log is {w} samples long: no window to cut (try a smaller --window)"
        ));
    }
    Ok(out)
}

/// The split of every window (0 train, 1 validation, 2 test) with condition `held_out` as
/// the test set. Validation, per other condition: its last run if it has several, else the
/// last tenth (at least one window) of its one run, where training keeps only windows that
/// end before the first validation sample. Windows that would overlap are dropped (-1).
pub fn split_by_condition(w: &Windows, held_out: &str, window: usize) -> Result<Vec<i64>, String> {
    if !w.conditions.iter().any(|c| c == held_out) {
        return Err(format!(
            "no condition '{held_out}' in the log (it has: {})",
            w.conditions.join(", ")
        ));
    }
    if w.conditions.len() < 2 {
        return Err("the log has one condition: nothing is left to train on".into());
    }
    let mut split = vec![0i64; w.condition.len()];
    let mut by_condition: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (t, c) in w.condition.iter().enumerate() {
        by_condition.entry(c.as_str()).or_default().push(t);
    }
    for (c, tasks) in by_condition {
        if c == held_out {
            tasks.iter().for_each(|&t| split[t] = 2);
            continue;
        }
        let last_run = w.run[*tasks.last().expect("non-empty")];
        if tasks.iter().any(|&t| w.run[t] != last_run) {
            tasks
                .iter()
                .filter(|&&t| w.run[t] == last_run)
                .for_each(|&t| split[t] = 1);
        } else {
            let n_val = tasks.len().div_ceil(10).max(1);
            if n_val >= tasks.len() {
                continue; // one window: keep it for training
            }
            let first_val = tasks[tasks.len() - n_val];
            let cut = w.start[first_val];
            for &t in &tasks {
                if w.start[t] >= cut {
                    split[t] = 1;
                } else if w.start[t] + window > cut {
                    split[t] = -1; // overlaps validation samples
                }
            }
        }
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of two conditions: "calm" in two runs (flights 1 and 2), "gusty" in one.
    fn log() -> String {
        let mut s = String::from("t, wind, flight, v, u, f\n");
        for (wind, flight, n) in [("calm", 1, 30), ("calm", 2, 25), ("gusty", 3, 42)] {
            for i in 0..n {
                let v = i as f32 * 0.1;
                s += &format!("{i}, {wind}, {flight}, {v}, {}, {}\n", 2.0 * v, v * v);
            }
        }
        s
    }

    fn spec(window: usize, stride: usize) -> LogSpec {
        LogSpec {
            inputs: vec!["v".into(), "u".into()],
            outputs: vec!["f".into()],
            condition: "wind".into(),
            run: Some("flight".into()),
            window,
            stride,
        }
    }

    #[test]
    fn windows_stay_within_a_run_and_keep_the_columns() {
        let w = windows_from_csv(log().as_bytes(), &spec(10, 10)).unwrap();
        // 3 + 2 windows of calm flights (30 and 25 samples), 4 of the gusty one.
        assert_eq!(w.condition.len(), 9);
        assert_eq!(w.conditions, vec!["calm", "gusty"]);
        assert_eq!(w.run, vec![0, 0, 0, 1, 1, 2, 2, 2, 2]);
        // Window 3 is flight 2's first: v from 0, u = 2 v, f = v^2 (the inputs in order).
        let (fi, win) = (2, 10);
        let x3 = &w.x[3 * win * fi..4 * win * fi];
        assert_eq!((x3[0], x3[1], x3[2], x3[3]), (0.0, 0.0, 0.1, 0.2));
        assert!((w.y[3 * win + 1] - 0.01).abs() < 1e-7);
        // Overlapping windows with a stride of 5: (30-10)/5+1 + (25-10)/5+1 + (42-10)/5+1.
        let w = windows_from_csv(log().as_bytes(), &spec(10, 5)).unwrap();
        assert_eq!(w.condition.len(), 5 + 4 + 7);
        assert!(
            w.start
                .iter()
                .zip(&w.run)
                .all(|(s, r)| s + 10 <= [30, 25, 42][*r])
        );
    }

    #[test]
    fn the_held_out_condition_is_the_test_set_and_nothing_leaks() {
        let w = windows_from_csv(log().as_bytes(), &spec(10, 5)).unwrap();
        let split = split_by_condition(&w, "gusty", 10).unwrap();
        for (t, s) in split.iter().enumerate() {
            match w.condition[t].as_str() {
                "gusty" => assert_eq!(*s, 2),
                // calm: flight 1 trains, flight 2 (its last run) validates.
                _ => assert_eq!(*s, if w.run[t] == 0 { 0 } else { 1 }, "window {t}"),
            }
        }
        // Held out "calm" instead: gusty has one run, so its end validates, and no training
        // window shares a sample with a validation window.
        let split = split_by_condition(&w, "calm", 10).unwrap();
        let gusty: Vec<usize> = (0..split.len())
            .filter(|&t| w.condition[t] == "gusty")
            .collect();
        let first_val = gusty
            .iter()
            .filter_map(|&t| (split[t] == 1).then_some(w.start[t]))
            .min()
            .unwrap();
        for &t in &gusty {
            if split[t] == 0 {
                assert!(
                    w.start[t] + 10 <= first_val,
                    "window {t} overlaps validation"
                );
            }
        }
        assert!(gusty.iter().any(|&t| split[t] == 0) && gusty.iter().any(|&t| split[t] == -1));
    }

    #[test]
    fn bad_logs_are_refused_with_what_is_wrong() {
        let e = windows_from_csv(
            log().as_bytes(),
            &LogSpec {
                condition: "payload".into(),
                ..spec(10, 10)
            },
        )
        .unwrap_err();
        assert!(
            e.contains("no column 'payload'") && e.contains("wind"),
            "{e}"
        );
        let bad = "wind, v, f\ncalm, 1.0, 2.0\ncalm, oops, 2.0\n";
        let s = LogSpec {
            inputs: vec!["v".into()],
            run: None,
            ..spec(1, 1)
        };
        let e = windows_from_csv(bad.as_bytes(), &s).unwrap_err();
        assert!(e.contains("row 3") && e.contains("'oops'"), "{e}");
        let e = windows_from_csv(log().as_bytes(), &spec(100, 10)).unwrap_err();
        assert!(e.contains("smaller --window"), "{e}");
        let w = windows_from_csv(log().as_bytes(), &spec(10, 10)).unwrap();
        let e = split_by_condition(&w, "storm", 10).unwrap_err();
        assert!(e.contains("calm, gusty"), "{e}");
    }
}
