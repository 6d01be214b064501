//! Charts drawn with plotters: feature maps in a labelled grid with a colour legend, filters,
//! class probabilities, training curves and confusion matrices. Text uses DejaVu Sans, embedded
//! in the binary (`assets/`, with its licence), so nothing depends on the fonts a machine has.

use crate::record::EpochSummary;
use anyhow::{anyhow, Context, Result};
use cnn::viz::diverging_colour;
use plotters::coord::types::RangedCoordusize;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font with plotters, once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF compiled into the binary; a failure here is a build error
        // that every plotting test would show.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn rgb(colour: image::Rgb<u8>) -> RGBColor {
    RGBColor(colour[0], colour[1], colour[2])
}

/// Draws into an RGB buffer of `width x height` and saves it as a PNG at `path`.
fn save_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        draw(&root)?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let picture =
        image::RgbImage::from_raw(width, height, buffer).context("the plot buffer has a size")?;
    write_png(path, &picture)
}

/// Writes `picture` as a PNG at `path`, atomically and never over a file that is not a regular
/// file (see [`cnn::fsutil::write_atomically`]).
pub fn write_png(path: &Path, picture: &image::RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    picture
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .with_context(|| format!("cannot encode {}", path.display()))?;
    cnn::fsutil::write_atomically(path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Draws an SVG of `size` and writes it at `path` as [`write_png`] writes.
fn save_svg<E: std::error::Error + Send + Sync>(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), DrawingAreaErrorKind<E>>,
) -> Result<()>
where
    DrawingAreaErrorKind<E>: std::fmt::Display,
{
    register_font();
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        draw(&root).map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    cnn::fsutil::write_atomically(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Feature maps of one layer: every map `height x width` values, drawn on one colour scale
/// `[-range, range]` so that maps of a layer compare with each other.
pub struct MapGrid<'a> {
    pub title: String,
    pub maps: Vec<(String, &'a [f32])>,
    pub height: usize,
    pub width: usize,
    pub range: f32,
    /// Each value written in its cell (for small maps, as the seed's example).
    pub show_values: bool,
}

const LEGEND_WIDTH: i32 = 110;
const TITLE_HEIGHT: i32 = 34;
const LABEL_HEIGHT: i32 = 18;
const GAP: i32 = 12;

impl MapGrid<'_> {
    /// Pixels per value: maps come out about 120 pixels wide, 2 to 24 pixels a value.
    fn cell(&self) -> i32 {
        if self.show_values {
            return 38;
        }
        (120 / self.height.max(self.width).max(1)).clamp(2, 24) as i32
    }

    fn columns(&self) -> usize {
        let n = self.maps.len().max(1);
        // Wide maps (flat vectors laid out in rows) get fewer columns.
        let per_row = (1000 / (self.width as i32 * self.cell() + GAP).max(1)).max(1) as usize;
        n.min(8).min(per_row)
    }

    pub fn size(&self) -> (u32, u32) {
        let cell = self.cell();
        let (tile_w, tile_h) = (
            self.width as i32 * cell + GAP,
            self.height as i32 * cell + LABEL_HEIGHT + GAP,
        );
        let columns = self.columns() as i32;
        let rows = self.maps.len().div_ceil(self.columns()).max(1) as i32;
        // Wide enough for the title too (about 9 pixels a character at 17 points).
        let title = 2 * GAP + 9 * self.title.chars().count() as i32;
        let width = (GAP + columns * tile_w + LEGEND_WIDTH).max(title);
        let height = TITLE_HEIGHT + (rows * tile_h).max(190) + GAP;
        (width.max(360) as u32, height as u32)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        save_png(path, self.size(), |root| {
            self.draw(root).map_err(|e| anyhow!("{e}"))
        })
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let cell = self.cell();
        let columns = self.columns();
        root.draw(&Text::new(self.title.clone(), (GAP, 8), font(17)))?;
        let (tile_w, tile_h) = (
            self.width as i32 * cell + GAP,
            self.height as i32 * cell + LABEL_HEIGHT + GAP,
        );
        for (i, (label, values)) in self.maps.iter().enumerate() {
            let x0 = GAP + (i % columns) as i32 * tile_w;
            let y0 = TITLE_HEIGHT + (i / columns) as i32 * tile_h;
            root.draw(&Text::new(label.clone(), (x0, y0), font(12)))?;
            let top = y0 + LABEL_HEIGHT;
            for (k, &value) in values.iter().enumerate().take(self.height * self.width) {
                let (row, col) = ((k / self.width) as i32, (k % self.width) as i32);
                let corner = (x0 + col * cell, top + row * cell);
                root.draw(&Rectangle::new(
                    [corner, (corner.0 + cell, corner.1 + cell)],
                    rgb(diverging_colour(value, self.range)).filled(),
                ))?;
                if self.show_values {
                    // White on strong colours, black on pale ones.
                    let colour = match value.abs() > 0.6 * self.range {
                        true => WHITE,
                        false => BLACK,
                    };
                    let text = format!("{value:.2}");
                    let style = (FONT, 11).into_font().color(&colour);
                    let (w, _) = root.estimate_text_size(&text, &style)?;
                    root.draw(&Text::new(
                        text,
                        (corner.0 + (cell - w as i32) / 2, corner.1 + cell / 2 - 6),
                        style,
                    ))?;
                }
            }
            root.draw(&Rectangle::new(
                [
                    (x0 - 1, top - 1),
                    (
                        x0 + self.width as i32 * cell,
                        top + self.height as i32 * cell,
                    ),
                ],
                RGBColor(160, 160, 160).stroke_width(1),
            ))?;
        }
        let (width, _) = root.dim_in_pixel();
        draw_legend(
            root,
            (width as i32 - LEGEND_WIDTH + 16, TITLE_HEIGHT),
            Scale::Signed(self.range),
        )
    }
}

/// The colour scale of a picture: signed values from `-range` (blue) through 0 (white) to
/// `range` (red), or non-negative ones from 0 (dark blue) to `range` (dark red, "jet").
#[derive(Clone, Copy)]
pub enum Scale {
    Signed(f32),
    Heat(f32),
}

impl Scale {
    fn colour(self, value: f32) -> image::Rgb<u8> {
        match self {
            Scale::Signed(range) => diverging_colour(value, range),
            Scale::Heat(range) => cnn::viz::heat_colour(value, range),
        }
    }

    /// The values at the top, the middle and the bottom of the legend.
    fn ends(self) -> [f32; 3] {
        match self {
            Scale::Signed(range) => [range, 0.0, -range],
            Scale::Heat(range) => [range, range / 2.0, 0.0],
        }
    }
}

/// A vertical colour bar of `scale`, from its largest value at the top to its smallest at the
/// bottom, with three values written beside it.
fn draw_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    scale: Scale,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    const HEIGHT: i32 = 150;
    const WIDTH: i32 = 18;
    let [top, _, bottom] = scale.ends();
    for step in 0..HEIGHT {
        let value = top + (bottom - top) * step as f32 / (HEIGHT - 1) as f32;
        root.draw(&Rectangle::new(
            [(x, y + step), (x + WIDTH, y + step + 1)],
            rgb(scale.colour(value)).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x, y), (x + WIDTH, y + HEIGHT)],
        BLACK.stroke_width(1),
    ))?;
    for (fraction, value) in [0.0, 0.5, 1.0].into_iter().zip(scale.ends()) {
        let ty = y + (fraction * (HEIGHT - 1) as f32) as i32;
        root.draw(&PathElement::new(
            vec![(x + WIDTH, ty), (x + WIDTH + 4, ty)],
            BLACK,
        ))?;
        root.draw(&Text::new(
            format_value(value),
            (x + WIDTH + 7, ty - 6),
            font(12),
        ))?;
    }
    Ok(())
}

fn format_value(value: f32) -> String {
    if value == 0.0 {
        "0".into()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() < 0.01 {
        format!("{value:.1e}")
    } else {
        format!("{value:.2}")
    }
}

/// An attribution map beside the picture it explains: the input in grey, then the map laid
/// over it (opacity growing with the value), with a legend of the map's scale.
pub struct AttributionPicture<'a> {
    pub title: String,
    /// The input as grey levels from 0 to 1, `height x width`.
    pub grey: &'a [f32],
    pub map: &'a [f32],
    pub height: usize,
    pub width: usize,
    pub scale: Scale,
}

impl AttributionPicture<'_> {
    /// Pixels per input pixel: pictures come out about 240 pixels wide.
    fn cell(&self) -> i32 {
        (240 / self.height.max(self.width).max(1)).clamp(1, 24) as i32
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let cell = self.cell();
        let (w, h) = (self.width as i32 * cell, self.height as i32 * cell);
        let size = (
            (3 * GAP + 2 * w + LEGEND_WIDTH).max(360) as u32,
            (TITLE_HEIGHT + LABEL_HEIGHT + h.max(160) + GAP) as u32,
        );
        save_png(path, size, |root| {
            self.draw(root, cell).map_err(|e| anyhow!("{e}"))
        })
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        cell: i32,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.draw(&Text::new(self.title.clone(), (GAP, 8), font(17)))?;
        let top = TITLE_HEIGHT + LABEL_HEIGHT;
        let w = self.width as i32 * cell;
        let [range, _, _] = self.scale.ends();
        for (tile, label) in ["input", "map over the input"].into_iter().enumerate() {
            let x0 = GAP + tile as i32 * (w + GAP);
            root.draw(&Text::new(label, (x0, TITLE_HEIGHT), font(12)))?;
            for (k, (&g, &value)) in self.grey.iter().zip(self.map).enumerate() {
                let level = (g.clamp(0.0, 1.0) * 255.0).round() as u8;
                let mut colour = image::Rgb([level; 3]);
                if tile == 1 {
                    let strength = match self.scale {
                        Scale::Signed(_) => value.abs() / range.max(f32::MIN_POSITIVE),
                        Scale::Heat(_) => 0.25 + 0.5 * value / range.max(f32::MIN_POSITIVE),
                    };
                    colour = cnn::viz::blend(colour, self.scale.colour(value), strength);
                }
                let (row, col) = ((k / self.width) as i32, (k % self.width) as i32);
                let corner = (x0 + col * cell, top + row * cell);
                root.draw(&Rectangle::new(
                    [corner, (corner.0 + cell, corner.1 + cell)],
                    rgb(colour).filled(),
                ))?;
            }
        }
        let (width, _) = root.dim_in_pixel();
        draw_legend(root, (width as i32 - LEGEND_WIDTH + 16, top), self.scale)
    }
}

/// Class probabilities as a bar chart, each bar labelled with its percentage.
pub fn probability_chart(path: &Path, classes: &[String], probabilities: &[f32]) -> Result<()> {
    let width = (140 + 70 * classes.len() as u32).clamp(360, 1200);
    save_png(path, (width, 320), |root| {
        draw_probabilities(root, classes, probabilities).map_err(|e| anyhow!("{e}"))
    })
}

fn draw_probabilities<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    classes: &[String],
    probabilities: &[f32],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = classes.len();
    let mut chart = ChartBuilder::on(root)
        .caption("class probabilities", font(17))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        // Integer ranges are inclusive in plotters: 0..n-1 makes n segments.
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0f32..1.05f32)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                classes.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|p| format!("{:.0}%", p * 100.0))
        .label_style(font(13))
        .draw()?;
    let best = cnn::loss::argmax(probabilities);
    chart.draw_series(probabilities.iter().enumerate().map(|(i, &p)| {
        let colour = if i == best {
            RGBColor(178, 24, 43)
        } else {
            RGBColor(120, 150, 190)
        };
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), p),
            ],
            colour.filled(),
        );
        bar.set_margin(0, 0, 8, 8);
        bar
    }))?;
    chart.draw_series(probabilities.iter().enumerate().map(|(i, &p)| {
        Text::new(
            format!("{:.1}%", p * 100.0),
            (SegmentValue::CenterOf(i), (p + 0.04).min(1.03)),
            font(12).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            )),
        )
    }))?;
    Ok(())
}

/// The two files a plot path stands for: `PATH.png` and `PATH.svg` (a `.png` or `.svg` ending
/// given in `path` is dropped first).
pub fn png_and_svg(path: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("svg") => {
            path.with_extension("")
        }
        _ => path.to_path_buf(),
    };
    let with = |ending: &str| {
        let mut name = base.clone().into_os_string();
        name.push(ending);
        std::path::PathBuf::from(name)
    };
    (with(".png"), with(".svg"))
}

/// Loss and accuracy per epoch, on the training data and the held-out split, side by side; as a
/// PNG and an SVG.
pub fn training_curves(base: &Path, reports: &[EpochSummary]) -> Result<(String, String)> {
    let (png, svg) = png_and_svg(base);
    save_png(&png, (1000, 420), |root| {
        draw_curves(root, reports).map_err(|e| anyhow!("{e}"))
    })?;
    save_svg(&svg, (1000, 420), |root| draw_curves(root, reports))?;
    Ok((png.display().to_string(), svg.display().to_string()))
}

fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    reports: &[EpochSummary],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (left, right) = root.split_horizontally(500);
    let epochs = reports.last().map_or(1, |r| r.epoch.max(1)) as f64;
    let train_loss: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.epoch as f64, r.train_loss))
        .collect();
    let held_out_loss: Vec<(f64, f64)> = reports
        .iter()
        .filter_map(|r| r.validation_loss.map(|loss| (r.epoch as f64, loss)))
        .collect();
    let train_accuracy: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.epoch as f64, 100.0 * r.train_accuracy))
        .collect();
    let held_out_accuracy: Vec<(f64, f64)> = reports
        .iter()
        .filter_map(|r| {
            r.validation_accuracy
                .map(|accuracy| (r.epoch as f64, 100.0 * accuracy))
        })
        .collect();
    let max_loss = train_loss
        .iter()
        .chain(&held_out_loss)
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let min_accuracy = train_accuracy
        .iter()
        .chain(&held_out_accuracy)
        .map(|p| p.1)
        .fold(100.0, f64::min);
    let accuracy_floor = (min_accuracy - 5.0).clamp(0.0, 95.0).floor();
    let panels = [
        (
            &left,
            "loss",
            0.0..max_loss,
            [&train_loss, &held_out_loss],
            "mean cross-entropy",
        ),
        (
            &right,
            "accuracy",
            accuracy_floor..100.5,
            [&train_accuracy, &held_out_accuracy],
            "%",
        ),
    ];
    for (area, title, y_range, [train, held_out], y_desc) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, font(18))
            .margin(14)
            .x_label_area_size(38)
            .y_label_area_size(60)
            .build_cartesian_2d(0.8f64..epochs + 0.2, y_range)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_desc)
            .x_labels(reports.len().clamp(2, 12))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        let blue = RGBColor(33, 102, 172);
        let red = RGBColor(178, 24, 43);
        chart
            .draw_series(LineSeries::new(train.iter().copied(), blue.stroke_width(2)))?
            .label("train")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
            });
        chart.draw_series(train.iter().map(|&p| Circle::new(p, 3, blue.filled())))?;
        if !held_out.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    held_out.iter().copied(),
                    red.stroke_width(2),
                ))?
                .label("held out")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2))
                });
            chart.draw_series(held_out.iter().map(|&p| Circle::new(p, 3, red.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(if title == "loss" {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(font(13))
            .draw()?;
    }
    Ok(())
}

/// A confusion matrix (`confusion[true][predicted]`) with class names, each cell shaded by the
/// share of its row and labelled with its count. `.svg` paths give an SVG, others a PNG.
pub fn confusion_matrix(path: &Path, classes: &[String], confusion: &[Vec<usize>]) -> Result<()> {
    let n = classes.len();
    let side = (160 + 60 * n as u32).clamp(400, 1400);
    let size = (side + 60, side);
    let is_svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if is_svg {
        save_svg(path, size, |root| draw_confusion(root, classes, confusion))
    } else {
        save_png(path, size, |root| {
            draw_confusion(root, classes, confusion).map_err(|e| anyhow!("{e}"))
        })
    }
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    classes: &[String],
    confusion: &[Vec<usize>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = classes.len();
    let label = |v: &SegmentValue<usize>, flip: bool| match v {
        SegmentValue::CenterOf(i) => {
            let index = if flip { n.saturating_sub(1 + i) } else { *i };
            classes.get(index).cloned().unwrap_or_default()
        }
        _ => String::new(),
    };
    let axis = || -> plotters::coord::ranged1d::SegmentedCoord<RangedCoordusize> {
        // Integer ranges are inclusive in plotters: 0..n-1 makes n segments.
        (0..n.saturating_sub(1)).into_segmented()
    };
    let mut chart = ChartBuilder::on(root)
        .caption(
            "confusion matrix (rows: true class, columns: predicted)",
            font(17),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(axis(), axis())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n)
        .y_labels(n)
        .x_desc("predicted")
        .y_desc("true")
        .x_label_formatter(&|v| label(v, false))
        .y_label_formatter(&|v| label(v, true))
        .label_style(font(14))
        .axis_desc_style(font(14))
        .draw()?;
    for (t, row) in confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        // Row `t` is drawn from the top: y index n-1-t.
        let y = n - 1 - t;
        for (p, &count) in row.iter().enumerate() {
            let share = count as f32 / total.max(1) as f32;
            // White to blue on the diagonal (right), white to red off it (wrong).
            let end: [f32; 3] = if t == p {
                [33.0, 102.0, 172.0]
            } else {
                [178.0, 24.0, 43.0]
            };
            let [r, g, b] = end.map(|e| (255.0 + (e - 255.0) * share) as u8);
            let fill = RGBColor(r, g, b);
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(p), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1)),
                ],
                fill.filled(),
            )))?;
            let colour = if share > 0.6 { WHITE } else { BLACK };
            chart.draw_series(std::iter::once(Text::new(
                count.to_string(),
                (SegmentValue::CenterOf(p), SegmentValue::CenterOf(y)),
                (FONT, 15)
                    .into_font()
                    .color(&colour)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    )),
            )))?;
        }
    }
    Ok(())
}
