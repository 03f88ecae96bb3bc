//! `trainer plot`: error against the number of support examples, one line per method, from
//! the JSON lines a results script writes (scripts/results-robots.sh): each line with
//! `problem`, `model`, `support` and `eval` (a `trainer eval --json` or `trainer ridge
//! --json` object). The robot families' references (`nominal_mse`, `oracle_mse` in the
//! evaluations) are drawn as the two dashed lines that bound every method.

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
    let font = std::fs::read(&args.font).map_err(|e| {
        format!(
            "{}: {e} (give a TrueType font with --font)",
            args.font.display()
        )
    })?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{} is not a font plotters can read", args.font.display()))?;
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
    let file =
        std::fs::File::create(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&buf)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
