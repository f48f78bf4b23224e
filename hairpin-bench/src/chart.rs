//! The forwarding report as a PNG bar chart: one horizontal bar per row of the table (median
//! delivered Mpps), a whisker from min to max, coloured by traffic, with the raw ceiling drawn
//! as a line across so each bar reads as a fraction of it.

use std::path::Path as FsPath;

use anyhow::{Context as _, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::{
    forward::Path,
    report::{Row, Traffic},
};

/// Labels are drawn with this font (Debian's fonts-dejavu-core, installed by `cargo xtask
/// setup`): plotters' bitmap backend has no font of its own.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const ROW_PX: u32 = 26;
const LABEL_PX: i32 = 430;

/// The bar colour for a row's traffic: one flow, a few thousand, tens of thousands, or the
/// pre-populated table.
fn colour(t: Traffic) -> RGBColor {
    match t {
        Traffic::Flows(1) => RGBColor(0x1f, 0x77, 0xb4),
        Traffic::Flows(..=4096) => RGBColor(0xff, 0x7f, 0x0e),
        Traffic::Flows(_) => RGBColor(0xd6, 0x27, 0x28),
        Traffic::Prefilled => RGBColor(0x94, 0x67, 0xbd),
        Traffic::NewFlows(_) => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

/// Draws `rows` into a PNG at `out`.
pub fn write_png(rows: &[Row], title: &str, out: &FsPath) -> anyhow::Result<()> {
    let font: &'static [u8] =
        Box::leak(std::fs::read(FONT).with_context(|| format!("reading {FONT} (run `cargo xtask setup`)"))?.into());
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| anyhow!("{FONT} is not a usable font"))?;
    let n = rows.len().max(1);
    let height = 110 + ROW_PX * n as u32;
    let root = BitMapBackend::new(out, (1400, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", out.display());
    root.fill(&WHITE).map_err(e)?;
    let max = rows.iter().flat_map(|r| r.rates.iter().map(|x| x.delivered_pps / 1e6)).fold(0.1, f64::max) * 1.08;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .margin_left(LABEL_PX)
        .x_label_area_size(40)
        .build_cartesian_2d(0.0..max, n as f64..0.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .light_line_style(WHITE.mix(0.0))
        .x_desc("delivered Mpps (bar: median; whisker: min to max)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (i, r) in rows.iter().enumerate() {
        let (y0, y1) = (i as f64 + 0.15, i as f64 + 0.85);
        let c = colour(r.traffic);
        let rates: Vec<f64> = r.rates.iter().map(|x| x.delivered_pps / 1e6).collect();
        let (lo, hi) = rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let mid = (y0 + y1) / 2.0;
        chart
            .draw_series([
                Rectangle::new([(0.0, y0), (r.median(), y1)], c.filled()).into_dyn(),
                PathElement::new([(lo, mid), (hi, mid)], BLACK.stroke_width(2)).into_dyn(),
            ])
            .map_err(e)?;
        let (_, py) = chart.backend_coord(&(0.0, mid));
        let label = format!("{} · {}", r.path.name(), r.traffic);
        root.draw(&Text::new(label, (10, py - 8), ("sans-serif", 15).into_font().color(&BLACK))).map_err(e)?;
        let (px, _) = chart.backend_coord(&(hi.max(r.median()), mid));
        root.draw(&Text::new(format!("{:.2}", r.median()), (px + 6, py - 8), ("sans-serif", 13))).map_err(e)?;
    }
    if let Some(ceiling) = rows.iter().find(|r| r.path == Path::RawRedirect && r.traffic == Traffic::Flows(1)) {
        let x = ceiling.median();
        chart.draw_series([PathElement::new([(x, 0.0), (x, n as f64)], BLACK.mix(0.5).stroke_width(1))]).map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Rate;

    /// Renders a small report and checks a PNG of the expected size came out.
    #[test]
    fn renders_a_png() {
        let rate = |m: f64| Rate { offered_pps: 3e6, delivered_pps: m * 1e6, wrong: 0 };
        let rows = vec![
            Row { path: Path::RawRedirect, traffic: Traffic::Flows(1), rates: vec![rate(2.0), rate(2.1), rate(2.2)] },
            Row {
                path: Path::HairpinFast,
                traffic: Traffic::Flows(60_000),
                rates: vec![rate(0.8), rate(0.9), rate(1.0)],
            },
        ];
        let out = std::env::temp_dir().join(format!("hairpin-chart-{}.png", std::process::id()));
        write_png(&rows, "test", &out).unwrap();
        let png = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, after the signature and chunk header.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1400);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 110 + 2 * ROW_PX);
    }

    #[test]
    fn rows_read_back_from_the_report() {
        let md = "| path | traffic | delivered Mpps (median) | min | max | offered Mpps |\n\
                  |---|---|---:|---:|---:|---:|\n\
                  | hairpin fast path | 60000 flows | 0.761 | 0.716 | 0.772 | 2.358 |\n\
                  | hairpin fast path | 1 flows | 1.5 | 1.4 | 1.6 | 2.4 |\n\
                  | hairpin fast path | 1 flow, 1M entries | 1.4 | 1.3 | 1.5 | 2.4 |\n";
        let rows = crate::report::rows_from_markdown(md).unwrap();
        assert_eq!(rows.len(), 3);
        // "1 flows" is how reports before the typed traffic spelled one flow.
        assert_eq!([rows[1].traffic, rows[2].traffic], [Traffic::Flows(1), Traffic::Prefilled]);
        assert_eq!((rows[0].path, rows[0].traffic), (Path::HairpinFast, Traffic::Flows(60_000)));
        assert!((rows[0].median() - 0.761).abs() < 1e-9);
        assert!(crate::report::rows_from_markdown("nothing here").is_err());
    }

    #[test]
    fn traffic_labels_read_back() {
        for t in [Traffic::Flows(1), Traffic::Flows(4096), Traffic::Prefilled, Traffic::NewFlows(60_000)] {
            assert_eq!(t.to_string().parse::<Traffic>().unwrap(), t);
        }
        assert_eq!(Traffic::Flows(1).to_string(), "1 flow");
        assert!("many flows".parse::<Traffic>().is_err());
    }
}
