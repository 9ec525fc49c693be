//! The charts (PNG): single-file throughput and RSS over time, and the `compare` bars per
//! tree, drawn with `plotters`' bitmap backend. Text uses DejaVu Sans embedded by the `dejavu` crate through `ab_glyph`, so no
//! system font or fontconfig is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::single_file::Upload;

/// Font family name registered with plotters.
const FONT: &str = "sans-serif";

fn register_font() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded DejaVu Sans font did not load"));
    });
    result
}

/// Draws `upload`'s series into `path` (1000 × 700 PNG): top, client read throughput in
/// MB/s per 100 ms sample with the CBC ceiling as a line; bottom, server and client RSS.
///
/// # Errors
/// The PNG cannot be written.
pub(crate) fn single_file(path: &Path, upload: &Upload, cbc_mb_per_s: f64) -> anyhow::Result<()> {
    register_font()?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!(
                "single-file: {} over {} ({:.0} MB/s, {:.1} s)",
                crate::data::human(upload.bytes),
                upload.protocol,
                upload.mb_per_s,
                upload.wall_secs
            ),
            (FONT, 22),
        )?;
        let (top, bottom) = root.split_vertically(330);
        let series = &upload.series;
        let end = series.last().map_or(1.0, |r| r.t_secs).max(0.1);

        // Throughput: client bytes read (rchar) per sample interval.
        let mut rates = Vec::with_capacity(series.len());
        for pair in series.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let read = |r: &crate::procfs::Row| r.procs.get(1).and_then(|p| p.read_bytes);
            if let (Some(ra), Some(rb)) = (read(a), read(b)) {
                let dt = (b.t_secs - a.t_secs).max(1e-3);
                rates.push((b.t_secs, rb.saturating_sub(ra) as f64 / dt / 1e6));
            }
        }
        let max_rate = rates.iter().map(|(_, r)| *r).fold(cbc_mb_per_s, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&top)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .caption("throughput (client file reads per 100 ms)", (FONT, 16))
            .build_cartesian_2d(0.0..end, 0.0..max_rate)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("MB/s")
            .label_style((FONT, 13))
            .draw()?;
        chart
            .draw_series(LineSeries::new(rates.iter().copied(), BLUE.stroke_width(2)))?
            .label(format!("{} upload", upload.protocol))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                [(0.0, cbc_mb_per_s), (end, cbc_mb_per_s)],
                RED.stroke_width(1),
            ))?
            .label(format!("AES-256-CBC one core: {cbc_mb_per_s:.0} MB/s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;

        // Memory: VmRSS of both processes.
        let rss = |index: usize| -> Vec<(f64, f64)> {
            series
                .iter()
                .filter_map(|r| {
                    let kib = r.procs.get(index)?.rss_kib?;
                    Some((r.t_secs, kib as f64 / 1024.0))
                })
                .collect()
        };
        let (server, client) = (rss(0), rss(1));
        let max_mib = server
            .iter()
            .chain(&client)
            .map(|(_, m)| *m)
            .fold(64.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .caption("resident memory (VmRSS every 100 ms)", (FONT, 16))
            .build_cartesian_2d(0.0..end, 0.0..max_mib)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("MiB")
            .label_style((FONT, 13))
            .draw()?;
        let green = RGBColor(0, 140, 0);
        chart
            .draw_series(LineSeries::new(server, green.stroke_width(2)))?
            .label(format!(
                "server (peak {:.1} MiB)",
                upload.server.hwm_kib as f64 / 1024.0
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], green.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(client, MAGENTA.stroke_width(2)))?
            .label(format!(
                "client (peak {:.1} MiB)",
                upload.client.hwm_kib as f64 / 1024.0
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA.stroke_width(2)));
        let orange = RGBColor(230, 120, 0);
        let targets = [
            (64.0, "server target 64 MiB", orange),
            (32.0, "client target 32 MiB", MAGENTA),
        ];
        for (limit, label, colour) in targets {
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, limit), (end, limit)],
                    8,
                    6,
                    colour.stroke_width(1),
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("cannot draw the chart {}: {e}", path.display()))
}

/// Draws the `compare` chart of one tree into `path` (1000 × 560 PNG): per step, one bar
/// per tool (median wall seconds) with a whisker over the range of the runs. `series` is
/// `(tool, one value per step label, None where the tool has no figure)`.
///
/// # Errors
/// The PNG cannot be written.
pub(crate) fn compare(
    path: &Path,
    title: &str,
    steps: &[&str],
    series: &[(&str, Vec<Option<crate::compare::Stat>>)],
) -> anyhow::Result<()> {
    register_font()?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let colours = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let top = series
            .iter()
            .flat_map(|(_, v)| v.iter().flatten().map(|s| s.max))
            .fold(0.1, f64::max)
            * 1.15;
        let groups = steps.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .caption(title, (FONT, 20))
            .build_cartesian_2d(0.0..groups, 0.0..top)?;
        // Labels at the middle of each group (x = g + 0.5), none elsewhere.
        let step_label = |x: &f64| {
            steps
                .iter()
                .enumerate()
                .find(|(i, _)| (x - (*i as f64 + 0.5)).abs() < 1e-6)
                .map_or_else(String::new, |(_, label)| (*label).to_owned())
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(steps.len() * 2 + 1)
            .x_label_formatter(&step_label)
            .y_desc("seconds (median of the runs, whisker = range)")
            .label_style((FONT, 13))
            .draw()?;
        let width = 0.8 / series.len().max(1) as f64;
        for (t, (tool, values)) in series.iter().enumerate() {
            let colour = colours[t % colours.len()];
            let bars = values.iter().enumerate().filter_map(|(g, v)| {
                let x = g as f64 + 0.1 + width * t as f64;
                v.map(|s| Rectangle::new([(x, 0.0), (x + width * 0.9, s.median)], colour.filled()))
            });
            chart.draw_series(bars)?.label(*tool).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled())
            });
            let whiskers = values.iter().enumerate().filter_map(|(g, v)| {
                let x = g as f64 + 0.1 + width * t as f64 + width * 0.45;
                v.map(|s| PathElement::new(vec![(x, s.min), (x, s.max)], BLACK.stroke_width(1)))
            });
            chart.draw_series(whiskers)?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("cannot draw the chart {}: {e}", path.display()))
}
