//! `trainer plot`: error against the number of support examples, one line per method, from
//! the JSON lines a results script writes (scripts/results-robots.sh): each line with
//! `problem`, `model`, `support` and `eval` (a `trainer eval --json` or `trainer ridge
//! --json` object). The robot families' references (`nominal_mse`, `oracle_mse` in the
//! evaluations) are drawn as the two dashed lines that bound every method.
//!
//! `trainer plot-loop`: a closed-loop run's tracking errors over time from its CSV
//! (examples/cpp/panda_payload.cpp).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use plotters::prelude::*;

use crate::*;

#[derive(Args)]
pub(crate) struct PlotArgs {
    /// JSON lines of evaluations (scripts/results-robots.sh's output).
    #[arg(long)]
    results: PathBuf,
    /// Which problem's lines to draw.
    #[arg(long)]
    problem: String,
    /// What the error is called on the y axis, e.g. "torque RMSE (N m)".
    #[arg(long, default_value = "RMSE")]
    ylabel: String,
    /// A TrueType font for the text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

/// One line of the plot: (K, RMSE, RMSE's 95% CI half-width) points.
type Series = Vec<(f64, f64, f64)>;

/// Reads the RMSE of every (model, K) of `problem`, and of the two references.
fn read(args: &PlotArgs) -> Result<BTreeMap<String, Series>> {
    let text = std::fs::read_to_string(&args.results)
        .map_err(|e| format!("{}: {e}", args.results.display()))?;
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    let mut refs: BTreeMap<(String, u64), (f64, f64)> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: {e}", args.results.display(), n + 1))?;
        let (Some(problem), Some(model), Some(k), Some(eval)) = (
            v["problem"].as_str(),
            v["model"].as_str(),
            v["support"].as_u64(),
            v.get("eval"),
        ) else {
            continue; // a training line
        };
        if problem != args.problem {
            continue;
        }
        let (Some(mse), Some(ci)) = (eval["mse"].as_f64(), eval["ci95"].as_f64()) else {
            return Err(
                format!("{}:{}: no mse/ci95 in eval", args.results.display(), n + 1).into(),
            );
        };
        // The CI of a mean MSE, carried to the RMSE (delta method).
        let rmse = mse.sqrt();
        series
            .entry(model.to_string())
            .or_default()
            .push((k as f64, rmse, ci / (2.0 * rmse)));
        for (key, name) in [("nominal_mse", "nominal"), ("oracle_mse", "oracle")] {
            if let Some(m) = eval[key].as_f64() {
                refs.insert((name.to_string(), k), (m, 0.0));
            }
        }
    }
    for ((name, k), (m, _)) in refs {
        series
            .entry(format!("({name})"))
            .or_default()
            .push((k as f64, m.sqrt(), 0.0));
    }
    for s in series.values_mut() {
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    if series.is_empty() {
        return Err(format!(
            "no evaluations of {} in {}",
            args.problem,
            args.results.display()
        )
        .into());
    }
    Ok(series)
}

pub(crate) fn plot(args: PlotArgs) -> Result<()> {
    let series = read(&args)?;
    register_font(&args.font)?;
    let (w, h) = (900u32, 600u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let points = series.values().flatten();
        let (kmin, kmax) = points
            .clone()
            .fold((f64::MAX, 0.0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (ymin, ymax) = points.fold((f64::MAX, 0.0f64), |(a, b), p| {
            (a.min(p.1 - p.2), b.max(p.1 + p.2))
        });
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: error against support examples K", args.problem),
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(
                (kmin * 0.8..kmax * 1.25).log_scale(),
                (ymin.max(1e-6) * 0.7..ymax * 1.4).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("support examples K")
            .y_desc(args.ylabel.as_str())
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()?;
        let palette = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
            RGBColor(255, 127, 14),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
        ];
        let mut colour = 0;
        for (name, s) in &series {
            let reference = name.starts_with('(');
            let style = if name == "(nominal)" {
                ShapeStyle::from(&BLACK).stroke_width(2)
            } else if reference {
                ShapeStyle::from(&RGBColor(0, 150, 136)).stroke_width(2)
            } else {
                colour += 1;
                ShapeStyle::from(&palette[(colour - 1) % palette.len()]).stroke_width(3)
            };
            let line: Vec<(f64, f64)> = s.iter().map(|p| (p.0, p.1)).collect();
            let drawn = if reference {
                chart.draw_series(DashedLineSeries::new(line, 8, 6, style))?
            } else {
                chart.draw_series(LineSeries::new(line, style))?;
                chart
                    .draw_series(s.iter().map(|p| {
                        PathElement::new(vec![(p.0, p.1 - p.2), (p.0, p.1 + p.2)], style)
                    }))?;
                chart.draw_series(s.iter().map(|p| Circle::new((p.0, p.1), 4, style.filled())))?
            };
            drawn
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
    }
    write_png(&buf, (w, h), &args.out)
}

/// Makes the TrueType font at `path` plotters' "sans-serif".
fn register_font(path: &std::path::Path) -> Result<()> {
    let font = std::fs::read(path)
        .map_err(|e| format!("{}: {e} (give a TrueType font with --font)", path.display()))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{} is not a font plotters can read", path.display()).into())
}

/// Writes an RGB buffer of `size` pixels to the PNG file `out`.
fn write_png(buf: &[u8], (w, h): (u32, u32), out: &std::path::Path) -> Result<()> {
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(buf)?;
    println!("wrote {}", out.display());
    Ok(())
}

#[derive(Args)]
pub(crate) struct PlotLoopArgs {
    /// The CSV a closed-loop run writes (examples/cpp/panda_payload.cpp --csv): a time
    /// column `t` (s), `payload_kg`, then one `<controller>_mm` error column each.
    #[arg(long)]
    csv: PathBuf,
    /// Window of the rolling RMS drawn (s).
    #[arg(long, default_value_t = 0.1)]
    window: f64,
    /// A TrueType font for the text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

/// A closed-loop run: times, payload masses and each controller's errors (mm).
struct LoopRun {
    t: Vec<f64>,
    payload: Vec<f64>,
    errors: Vec<(String, Vec<f64>)>,
}

fn read_loop(path: &std::path::Path) -> Result<LoopRun> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    if header.len() < 3 || header[0] != "t" || header[1] != "payload_kg" {
        return Err(format!(
            "{}: the header must be t,payload_kg,<controller>_mm...",
            path.display()
        )
        .into());
    }
    let mut run = LoopRun {
        t: vec![],
        payload: vec![],
        errors: header[2..]
            .iter()
            .map(|h| (h.trim_end_matches("_mm").to_string(), vec![]))
            .collect(),
    };
    for (n, line) in lines.enumerate() {
        let values = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<Vec<f64>, _>>()
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 2))?;
        if values.len() != header.len() || values.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "{}:{}: {} finite values expected",
                path.display(),
                n + 2,
                header.len()
            )
            .into());
        }
        run.t.push(values[0]);
        run.payload.push(values[1]);
        for (e, v) in run.errors.iter_mut().zip(&values[2..]) {
            e.1.push(*v);
        }
    }
    if run.t.len() < 2 {
        return Err(format!("{}: no rows", path.display()).into());
    }
    Ok(run)
}

/// The RMS of `e` over the trailing `w` samples at every sample (fewer at the start).
fn rolling_rms(e: &[f64], w: usize) -> Vec<f64> {
    let mut sum = 0.0;
    e.iter()
        .enumerate()
        .map(|(i, v)| {
            sum += v * v;
            if i >= w {
                sum -= e[i - w] * e[i - w];
            }
            (sum.max(0.0) / (i + 1).min(w) as f64).sqrt()
        })
        .collect()
}

/// `trainer plot-loop`: each controller's end-effector error over time (rolling RMS, log
/// scale), the payload changes marked.
pub(crate) fn plot_loop(args: PlotLoopArgs) -> Result<()> {
    let run = read_loop(&args.csv)?;
    register_font(&args.font)?;
    let dt = (run.t[run.t.len() - 1] - run.t[0]) / (run.t.len() - 1) as f64;
    let w = ((args.window / dt).round() as usize).max(1);
    let curves: Vec<(&str, Vec<f64>)> = run
        .errors
        .iter()
        .map(|(n, e)| (n.as_str(), rolling_rms(e, w)))
        .collect();
    let (lo, hi) = curves
        .iter()
        .flat_map(|c| c.1.iter().skip(w))
        .fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    let changes: Vec<(f64, f64)> = run
        .payload
        .windows(2)
        .zip(&run.t[1..])
        .filter(|(p, _)| p[0] != p[1])
        .map(|(p, t)| (*t, p[1]))
        .collect();
    let (pw, ph) = (1000u32, 560u32);
    let mut buf = vec![0u8; (pw * ph * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (pw, ph)).into_drawing_area();
        root.fill(&WHITE)?;
        let (t0, t1) = (run.t[0], run.t[run.t.len() - 1]);
        let (ylo, yhi) = (lo.max(1e-4) * 0.5, hi * 2.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "closed loop: end-effector error ({:.0} ms rolling RMS), payload {:.2} kg{}",
                    1e3 * args.window,
                    run.payload[0],
                    changes
                        .iter()
                        .map(|(t, m)| format!(", {m:.2} kg from {t:.1} s"))
                        .collect::<String>()
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(t0..t1, (ylo..yhi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("end-effector error (mm)")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()?;
        let palette = [
            RGBColor(140, 140, 140),
            BLACK,
            RGBColor(214, 39, 40),
            RGBColor(255, 127, 14),
            RGBColor(0, 150, 136),
            RGBColor(31, 119, 180),
            RGBColor(148, 103, 189),
        ];
        for (i, (name, c)) in curves.iter().enumerate() {
            let style = ShapeStyle::from(&palette[i % palette.len()]).stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    run.t.iter().zip(c).skip(w).map(|(t, v)| (*t, v.max(ylo))),
                    style,
                ))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        }
        for (t, _) in &changes {
            chart.draw_series(DashedLineSeries::new(
                [(*t, ylo), (*t, yhi)],
                6,
                6,
                ShapeStyle::from(&BLACK).stroke_width(1),
            ))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
    }
    write_png(&buf, (pw, ph), &args.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_rms_is_the_rms_of_the_trailing_window() {
        let e = [3.0, 4.0, 0.0, 0.0, 5.0];
        let r = rolling_rms(&e, 2);
        let want = [
            3.0,
            (12.5f64).sqrt(),
            (8.0f64).sqrt(),
            0.0,
            (12.5f64).sqrt(),
        ];
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{r:?}");
        }
    }

    #[test]
    fn a_loop_csv_is_read_and_bad_rows_are_refused() {
        let dir = std::env::temp_dir().join(format!("msr-plot-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.csv");
        std::fs::write(&good, "t,payload_kg,pd_mm,msr_mm\n0,1,2,3\n0.001,2,4,5\n").unwrap();
        let run = read_loop(&good).unwrap();
        assert_eq!(run.payload, [1.0, 2.0]);
        assert_eq!(run.errors[1], ("msr".to_string(), vec![3.0, 5.0]));
        for (name, text) in [
            ("header.csv", "time,payload_kg,pd_mm\n0,1,2\n0.1,1,2\n"),
            ("short.csv", "t,payload_kg,pd_mm\n0,1\n0.1,1,2\n"),
            ("nan.csv", "t,payload_kg,pd_mm\n0,1,NaN\n0.1,1,2\n"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            assert!(read_loop(&p).is_err(), "{name} accepted");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
