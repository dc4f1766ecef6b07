//! Draws the precision–recall curve of a ranking to a PNG.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const FONT_CANDIDATES: &[&str] = &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

/// Registers a system font for labels; returns false when none is found (the curve is then
/// drawn without text rather than not at all).
fn register_font() -> bool {
    for path in FONT_CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                return true;
            }
        }
    }
    false
}

pub fn pr_curve_png(path: &Path, title: &str, curve: &[(f64, f64)], average_precision: f64) -> Result<()> {
    let with_text = register_font();
    let root = BitMapBackend::new(path, (800, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if with_text {
        builder.caption(format!("{title}  (AP = {average_precision:.4})"), ("sans-serif", 22)).x_label_area_size(45).y_label_area_size(55);
    }
    let mut chart = builder.build_cartesian_2d(0f64..1f64, 0f64..1.02f64).map_err(|e| anyhow!("{e}"))?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc("recall").y_desc("precision");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| anyhow!("{e}"))?;
    // Thin the curve to ~2,000 points; a PNG cannot show more.
    let step = (curve.len() / 2000).max(1);
    let points: Vec<(f64, f64)> = curve.iter().step_by(step).chain(curve.last()).copied().collect();
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
