//! The PNG next to the JSON: one bar chart per panel, 2 × 2. Text is drawn with a font
//! compiled into the binary (plotters' `ab_glyph` backend), so no system font is needed.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const FONT: &str = "sans-serif";
/// Bar colours by group: throughput, key scaling, instance scaling, then one per latency load.
const COLOURS: [RGBColor; 6] = [
    RGBColor(52, 101, 164),
    RGBColor(78, 154, 6),
    RGBColor(117, 80, 123),
    RGBColor(245, 121, 0),
    RGBColor(204, 0, 0),
    RGBColor(193, 125, 17),
];

/// One bar chart.
#[derive(Debug)]
pub struct Panel {
    pub title: String,
    pub unit: &'static str,
    /// (label, value, colour group)
    pub bars: Vec<(String, f64, usize)>,
}

/// Draws up to four panels into a PNG at `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| anyhow!("the embedded font does not load"))?;
    let root = BitMapBackend::new(path, (1600, 1100)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 26))?;
    for (area, panel) in root.split_evenly((2, 2)).iter().zip(panels) {
        bars(area, panel)?;
    }
    root.present()?;
    Ok(())
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    if panel.bars.is_empty() {
        area.draw(&Text::new(
            format!("{}: not run", panel.title),
            (20, 20),
            (FONT, 20),
        ))?;
        return Ok(());
    }
    let top = panel.bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(75)
        // `a..b` segments into b - a + 1 slots.
        .build_cartesian_2d((0..panel.bars.len() - 1).into_segmented(), 0.0..top)?;
    let labels = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => panel.bars.get(*i).map_or_else(String::new, |b| b.0.clone()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(panel.bars.len())
        .x_label_formatter(&labels)
        .y_desc(panel.unit)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 14))
        .draw()?;
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, (_, value, group))| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *value),
            ],
            COLOURS[group % COLOURS.len()].mix(0.85).filled(),
        );
        bar.set_margin(0, 0, 8, 8);
        bar
    }))?;
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, (_, value, _))| {
        Text::new(
            short(*value),
            (SegmentValue::CenterOf(i), *value + top * 0.02),
            (FONT, 14)
                .into_font()
                .color(&BLACK)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                )),
        )
    }))?;
    Ok(())
}

/// 34512 → "34.5k", 12.345 → "12.3".
fn short(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}
