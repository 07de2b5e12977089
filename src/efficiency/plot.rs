//! The efficiency report's plots, each as SVG and PNG (`plotters`):
//! effective replication over time, bytes by tier and file kind over time,
//! read latency CDFs by path, and reads by age.
//!
//! Text needs a TrueType font: `HAYLOFT_PLOT_FONT`, or the first of the
//! usual system paths of DejaVu Sans or Liberation Sans that exists
//! (Debian: `fonts-dejavu-core`).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use super::report::Report;

/// Where a sans-serif TrueType font is looked for.
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

const SIZE: (u32, u32) = (960, 540);

/// Registers the font once: the path it came from, or why none.
fn font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<String> = std::env::var("HAYLOFT_PLOT_FONT")
            .into_iter()
            .chain(FONT_PATHS.iter().map(|p| (*p).to_owned()))
            .collect();
        let path = candidates
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| {
                format!(
                    "no TrueType font for the plots' text: set HAYLOFT_PLOT_FONT or install \
                     one of {FONT_PATHS:?} (Debian: fonts-dejavu-core)"
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        // Plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a TrueType font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// What a plot function returns on backend `DB`.
type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Draws every plot into `out` as `NAME.svg` and `NAME.png`; the names.
pub fn draw_all(report: &Report, out: &Path) -> anyhow::Result<Vec<&'static str>> {
    font()?;
    let mut drawn = Vec::new();
    // Each plot function is generic over the backend: drawn once per format.
    macro_rules! both {
        ($name:literal, $plot:ident) => {{
            let svg = out.join(concat!($name, ".svg"));
            let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
            $plot(report, &area).map_err(|e| anyhow!("drawing {}: {e}", svg.display()))?;
            let png = out.join(concat!($name, ".png"));
            let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
            $plot(report, &area).map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
            drawn.push($name);
        }};
    }
    both!("effective-replication", effective_replication);
    both!("bytes-by-kind", bytes_by_kind);
    both!("latency-cdf", latency_cdf);
    both!("reads-by-age", reads_by_age);
    Ok(drawn)
}

/// One colour per series, in order.
fn colour(index: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    PALETTE[index % PALETTE.len()]
}

/// The frame every plot shares: caption, margins, label areas.
fn frame<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    builder
}

/// The series labels, boxed, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Drawn<DB> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()
}

/// A line series' key in the legend.
fn line_key(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
}

/// An area or bar series' key in the legend.
fn box_key(colour: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled())
}

/// Effective replication per tier and overall, over simulated days.
fn effective_replication<DB: DrawingBackend>(
    report: &Report,
    root: &DrawingArea<DB, Shift>,
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let samples: Vec<_> = report
        .timeline
        .iter()
        .filter_map(|s| Some((s.day, s.disk.as_ref()?)))
        .collect();
    let days = report.timeline.last().map_or(1, |s| s.day + 1);
    let top = samples
        .iter()
        .flat_map(|(_, d)| [d.hot.effective_replication, d.warm.effective_replication])
        .fold(3.2_f64, f64::max)
        .min(6.0);
    let mut chart = frame(
        root,
        "Effective replication (bytes on disk, less deleted BLOBs, per live byte)",
    )
    .build_cartesian_2d(0..days, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("simulated day")
        .y_desc("bytes on disk per live byte")
        .draw()?;
    type Pick = fn(&super::account::Accounting) -> (f64, u64);
    let series: [(&str, Pick); 3] = [
        ("hot", |d| {
            (d.hot.effective_replication, d.hot.logical_bytes)
        }),
        ("warm", |d| {
            (d.warm.effective_replication, d.warm.logical_bytes)
        }),
        ("all", |d| {
            (
                d.effective_replication,
                d.hot.logical_bytes + d.warm.logical_bytes,
            )
        }),
    ];
    for (index, (name, pick)) in series.into_iter().enumerate() {
        let colour = colour(index);
        // A tier holding nothing has no factor: it is left out there.
        let points = samples.iter().filter_map(|(day, d)| {
            let (factor, logical) = pick(d);
            (logical > 0).then_some((*day, factor))
        });
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(name)
            .legend(line_key(colour));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()
}

/// Bytes on disk by tier and kind, stacked, over simulated days.
fn bytes_by_kind<DB: DrawingBackend>(report: &Report, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    root.fill(&WHITE)?;
    type Pick = fn(&super::account::Accounting) -> u64;
    let layers: [(&str, Pick); 8] = [
        ("hot data", |d| d.hot.data),
        ("hot framing and index", |d| d.hot.framing + d.hot.index),
        ("hot deleted", |d| d.hot.dead),
        ("warm data", |d| d.warm.data),
        ("warm parity", |d| d.warm.parity),
        ("warm framing, checksums, index, journal", |d| {
            d.warm.framing + d.warm.checksums + d.warm.index + d.warm.journal
        }),
        ("warm deleted", |d| d.warm.dead),
        ("geo copies and XOR", |d| d.warm.geo),
    ];
    let samples: Vec<_> = report
        .timeline
        .iter()
        .filter_map(|s| Some((s.day, s.disk.as_ref()?)))
        .collect();
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let top = samples
        .iter()
        .map(|(_, d)| mib(d.hot.total + d.warm.total))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let days = report.timeline.last().map_or(1, |s| s.day + 1);
    let mut chart =
        frame(root, "Bytes on disk by tier and kind").build_cartesian_2d(0..days, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("simulated day")
        .y_desc("MiB")
        .draw()?;
    // Drawn top layer first, each area from zero to its running sum, so the
    // lower layers cover the upper ones' lower parts.
    for (index, (name, _)) in layers.iter().enumerate().rev() {
        let colour = colour(index);
        let points = samples.iter().map(|(day, d)| {
            (
                *day,
                mib(layers[..=index].iter().map(|(_, pick)| pick(d)).sum()),
            )
        });
        chart
            .draw_series(AreaSeries::new(points, 0.0, colour.mix(0.85)).border_style(colour))?
            .label(*name)
            .legend(box_key(colour));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()
}

/// Read latency CDF by path (log scale): the run's reads, then each
/// probe's (one at a time).
fn latency_cdf<DB: DrawingBackend>(report: &Report, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let concurrency = report.plan["concurrency"].as_u64().unwrap_or(0);
    let series: Vec<(String, &super::report::Latency)> = report
        .reads_by_path
        .iter()
        .map(|(path, l)| (format!("{path}, in the run (concurrency {concurrency})"), l))
        .chain(report.probes.iter().flat_map(|probe| {
            probe
                .by_path
                .iter()
                .map(|(path, l)| (format!("{path}, {} probe (one at a time)", probe.name), l))
        }))
        .filter(|(_, l)| l.count > 0)
        .collect();
    let (lo, hi) = series.iter().fold((f64::MAX, 0.0_f64), |(lo, hi), (_, l)| {
        (lo.min(l.cdf[0].0), hi.max(l.max_ms))
    });
    let (lo, hi) = if hi > 0.0 {
        (lo.max(0.01) * 0.8, hi * 1.25)
    } else {
        (0.1, 10.0)
    };
    let mut chart =
        frame(root, "Read latency by path").build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms")
        .y_desc("share of reads")
        .draw()?;
    for (index, (name, latency)) in series.iter().enumerate() {
        let colour = colour(index);
        chart
            .draw_series(LineSeries::new(
                latency.cdf.iter().map(|&(ms, share)| (ms.max(lo), share)),
                colour.stroke_width(2),
            ))?
            .label(format!(
                "{name}: {} reads, p99 {:.1} ms",
                latency.count, latency.p99_ms
            ))
            .legend(line_key(colour));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()
}

/// Reads by the BLOB's age, stacked by path.
fn reads_by_age<DB: DrawingBackend>(report: &Report, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let buckets = &report.reads_by_age;
    let top = buckets
        .iter()
        .map(|b| b.latency.count)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = frame(root, "Reads by BLOB age and the path that served them")
        .build_cartesian_2d(
            (0..buckets.len().saturating_sub(1)).into_segmented(),
            0.0..top,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => buckets.get(*i).map_or(String::new(), |b| b.label.clone()),
            _ => String::new(),
        })
        .x_desc("age when read")
        .y_desc("reads")
        .draw()?;
    for (index, path) in super::PATHS.iter().enumerate() {
        let colour = colour(index);
        let bars = buckets.iter().enumerate().map(|(i, bucket)| {
            let below: u64 = super::PATHS[..index]
                .iter()
                .map(|p| bucket.by_path.get(*p).copied().unwrap_or(0))
                .sum();
            let mine = bucket.by_path.get(*path).copied().unwrap_or(0);
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), below as f64),
                    (SegmentValue::Exact(i + 1), (below + mine) as f64),
                ],
                colour.mix(0.85).filled(),
            )
        });
        chart
            .draw_series(bars)?
            .label(*path)
            .legend(box_key(colour));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()
}
