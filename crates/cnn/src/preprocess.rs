//! How an image becomes a network input. Stored in every model file, so a model alone knows how
//! to read a PNG a user drew: which size and channels, which polarity is ink, how to normalise.

use crate::error::{Error, Result};
use crate::fsutil::read_file;
use crate::limits::{MAX_PICTURE_FILE_BYTES, MAX_PICTURE_PIXELS};
use crate::tensor::Shape;
use image::{imageops::FilterType, DynamicImage, GrayImage};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;

/// The brightness of the training images' background.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Background {
    /// Light ink on a dark background (the seed's X/O, MNIST). A picture whose background is
    /// light (black ink on white paper) is inverted first.
    Dark,
    /// Dark ink on a light background; a picture with a dark background is inverted.
    Light,
    /// Photographs: taken as they are.
    Any,
}

/// How a picture's background brightness is measured, to decide whether to invert it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inversion {
    /// The mean grey level of the outermost pixels, against 127.5: the rule of model files
    /// written before the rule was recorded (a frame around a drawing fools it).
    #[default]
    BorderMean,
    /// Background and ink told apart by the grey levels of the whole picture: the background
    /// is light when the median is above the midpoint of the 0.5th and 99.5th percentiles
    /// (most of a drawing is paper, the ink is the tail); the border mean decides only when
    /// the two are equal (no ink to speak of).
    MedianVsExtremes,
}

/// How a picture is brought to the input size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Resized to the input's height and width, whatever its aspect ratio.
    #[default]
    Stretch,
    /// Resized to fit inside the input with its aspect ratio kept, centred, the rest filled
    /// with the picture's own background level (the median of each channel).
    Letterbox,
}

/// The resampling filter of resizing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    /// The `image` crate's `FilterType::Triangle`: a tent (bilinear) kernel scaled to the
    /// reduction, so that shrinking averages the pixels each output pixel covers.
    #[default]
    Triangle,
}

/// How transparent pixels are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alpha {
    /// Composited onto white when the opaque pixels are dark on average (alpha-weighted mean
    /// grey level below 127.5), onto black otherwise, so the ink stays visible:
    /// `value = (value * alpha + background * (255 - alpha)) / 255`, rounded.
    #[default]
    OntoContrast,
}

/// The grey level of an RGB pixel: `(2126 R + 7152 G + 722 B) / 10000`, the integer division
/// truncating (sRGB / Rec. 709 luma weights, as the `image` crate computes it for 8 bits).
pub const LUMA_WEIGHTS: [u32; 3] = [2126, 7152, 722];

/// The share of the darkest and of the lightest pixels that autocontrast ignores in models
/// written now (one hot pixel cannot then hold the range open).
pub const AUTOCONTRAST_CUTOFF: f32 = 0.01;

/// Pictures with more pixels than this are refused before decoding, by default: a small
/// compressed file cannot ask for gigabytes.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

const _: () = assert!(DEFAULT_MAX_PIXELS <= MAX_PICTURE_PIXELS);

fn luma_weights() -> [u32; 3] {
    LUMA_WEIGHTS
}

/// The smallest standard deviation a normalisation may divide by: the floor
/// [`crate::data::Dataset::channel_statistics`] measures with.
pub const MIN_STD: f32 = 1e-3;
/// The largest mean (of `pixel / 255`, which lies in [0, 1]) a normalisation may subtract.
pub const MAX_MEAN: f32 = 1e3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Per channel, the input is `(pixel / 255 - mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub background: Background,
    /// Stretch a picture's grey levels to the full range after resizing, so that thin strokes
    /// that faded when a large drawing was shrunk read as ink again.
    pub autocontrast: bool,
    /// The share of the darkest and of the lightest pixels autocontrast ignores (0 in files
    /// written before it was recorded: the plain minimum and maximum).
    #[serde(default)]
    pub autocontrast_cutoff: f32,
    #[serde(default)]
    pub inversion: Inversion,
    #[serde(default)]
    pub fit: Fit,
    #[serde(default)]
    pub resize_filter: ResizeFilter,
    /// [`LUMA_WEIGHTS`], written down so that another program can reproduce the conversion;
    /// other weights are refused.
    #[serde(default = "luma_weights")]
    pub luma_weights: [u32; 3],
    #[serde(default)]
    pub alpha: Alpha,
}

impl Preprocessing {
    /// The preprocessing of a model trained now: `(pixel / 255 - mean) / std` per channel,
    /// the given background, and the current rules (inversion by [`Inversion::MedianVsExtremes`],
    /// autocontrast ignoring [`AUTOCONTRAST_CUTOFF`] at each end).
    pub fn new(mean: Vec<f32>, std: Vec<f32>, background: Background, autocontrast: bool) -> Self {
        Preprocessing {
            mean,
            std,
            background,
            autocontrast,
            autocontrast_cutoff: if autocontrast {
                AUTOCONTRAST_CUTOFF
            } else {
                0.0
            },
            inversion: Inversion::MedianVsExtremes,
            fit: Fit::Stretch,
            resize_filter: ResizeFilter::Triangle,
            luma_weights: LUMA_WEIGHTS,
            alpha: Alpha::OntoContrast,
        }
    }

    /// The seed's convention: ink is +1, background -1 (`mean = std = 0.5`).
    pub fn seed_convention() -> Self {
        Preprocessing::new(vec![0.5], vec![0.5], Background::Dark, true)
    }

    /// Pixels taken as they are: no inversion, no contrast stretch, `pixel / 255`.
    pub fn identity(channels: usize) -> Self {
        Preprocessing::new(
            vec![0.0; channels],
            vec![1.0; channels],
            Background::Any,
            false,
        )
    }

    pub fn validate(&self, shape: Shape) -> Result<()> {
        if self.mean.len() != shape.channels || self.std.len() != shape.channels {
            return Err(Error::Invalid(format!(
                "preprocessing has {} means and {} deviations for {} channels",
                self.mean.len(),
                self.std.len(),
                shape.channels
            )));
        }
        // A deviation of 1e-38 is positive, but it turns every pixel into infinity.
        let deviation_ok = |s: &f32| s.is_finite() && *s >= MIN_STD;
        let mean_ok = |m: &f32| m.is_finite() && m.abs() <= MAX_MEAN;
        if !self.std.iter().all(deviation_ok) || !self.mean.iter().all(mean_ok) {
            return Err(Error::Invalid(format!(
                "preprocessing needs means from -{MAX_MEAN} to {MAX_MEAN} and deviations of \
                 at least {MIN_STD}, not mean {:?} std {:?}",
                self.mean, self.std
            )));
        }
        if !(0.0..0.5).contains(&self.autocontrast_cutoff) {
            return Err(Error::Invalid(format!(
                "preprocessing: an autocontrast cutoff of {} is not in [0, 0.5)",
                self.autocontrast_cutoff
            )));
        }
        if self.luma_weights != LUMA_WEIGHTS {
            return Err(Error::Invalid(format!(
                "preprocessing: luma weights {:?} are not supported (only {LUMA_WEIGHTS:?} / 10000)",
                self.luma_weights
            )));
        }
        Ok(())
    }

    /// `pixels` (`[C, H, W]` bytes) to normalised values in `out` (same layout).
    pub fn normalize(&self, pixels: &[u8], shape: Shape, out: &mut [f32]) {
        let plane = shape.plane();
        for (channel, (src, dst)) in pixels.chunks(plane).zip(out.chunks_mut(plane)).enumerate() {
            let scale = 1.0 / (255.0 * self.std[channel]);
            let offset = self.mean[channel] / self.std[channel];
            for (d, &p) in dst.iter_mut().zip(src) {
                *d = f32::from(p) * scale - offset;
            }
        }
    }

    /// Converts a decoded picture to `shape`'s channels (grey or RGB) and size, with the
    /// polarity and contrast of the training images. Returns `[C, H, W]` bytes.
    ///
    /// In order: transparent pixels composited ([`Alpha`]); the grey picture measured for
    /// inversion ([`Inversion`]); each channel resized ([`ResizeFilter`], [`Fit`]), then
    /// inverted if so decided; autocontrast over all channels together.
    pub fn prepare_image(&self, picture: &DynamicImage, shape: Shape) -> Result<Vec<u8>> {
        let (width, height) = (shape.width as u32, shape.height as u32);
        let opaque = composite_alpha(picture);
        let picture = opaque.as_ref().unwrap_or(picture);
        let grey = picture.to_luma8();
        let mut planes: Vec<GrayImage> = match shape.channels {
            1 => vec![grey.clone()],
            3 => {
                // Each channel taken out of the interleaved bytes in one pass (a pixel-by-pixel
                // copy of a 16-megapixel picture took seconds under the fuzzer).
                let rgb = picture.to_rgb8();
                let (width, height) = rgb.dimensions();
                (0..3)
                    .map(|c| {
                        let plane = rgb.as_raw().iter().skip(c).step_by(3).copied().collect();
                        GrayImage::from_raw(width, height, plane).expect("one byte a pixel")
                    })
                    .collect()
            }
            n => {
                return Err(Error::Invalid(format!(
                    "the model takes {n}-channel images; pictures convert to 1 (grey) or 3 (RGB)"
                )))
            }
        };
        let light_background = || match self.inversion {
            Inversion::BorderMean => border_brightness(&grey) > 127.5,
            Inversion::MedianVsExtremes => has_light_background(&grey),
        };
        let invert = match self.background {
            Background::Any => false,
            Background::Dark => light_background(),
            Background::Light => !light_background(),
        };
        for plane in &mut planes {
            if plane.dimensions() != (width, height) {
                *plane = match self.fit {
                    Fit::Stretch => {
                        image::imageops::resize(plane, width, height, FilterType::Triangle)
                    }
                    Fit::Letterbox => letterbox(plane, width, height),
                };
            }
            if invert {
                image::imageops::invert(plane);
            }
        }
        if self.autocontrast {
            let mut histogram = Histogram::default();
            for plane in &planes {
                histogram.add(plane);
            }
            let low = histogram.percentile(self.autocontrast_cutoff);
            let high = histogram.percentile(1.0 - self.autocontrast_cutoff);
            if high > low {
                let range = f32::from(high - low);
                for v in planes.iter_mut().flat_map(|p| p.iter_mut()) {
                    let stretched = f32::from((*v).clamp(low, high) - low) / range;
                    *v = (stretched * 255.0).round() as u8;
                }
            }
        }
        Ok(planes.into_iter().flat_map(|p| p.into_raw()).collect())
    }
}

/// A picture with an alpha channel composited as [`Alpha::OntoContrast`] says; `None` when it
/// has none.
fn composite_alpha(picture: &DynamicImage) -> Option<DynamicImage> {
    if !picture.color().has_alpha() {
        return None;
    }
    let rgba = picture.to_rgba8();
    let luma = |p: &image::Rgba<u8>| {
        let [r, g, b, _] = p.0;
        (LUMA_WEIGHTS[0] * u32::from(r)
            + LUMA_WEIGHTS[1] * u32::from(g)
            + LUMA_WEIGHTS[2] * u32::from(b))
            / 10000
    };
    let (mut weighted, mut weight) = (0u64, 0u64);
    for p in rgba.pixels() {
        weighted += u64::from(luma(p)) * u64::from(p[3]);
        weight += u64::from(p[3]);
    }
    let dark_ink = weight > 0 && (weighted as f64 / weight as f64) < 127.5;
    let background: u32 = if dark_ink { 255 } else { 0 };
    let blend = |value: u8, alpha: u8| {
        let (value, alpha) = (u32::from(value), u32::from(alpha));
        ((value * alpha + background * (255 - alpha) + 127) / 255) as u8
    };
    let opaque = image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        image::Rgb([blend(r, a), blend(g, a), blend(b, a)])
    });
    Some(if picture.color().has_color() {
        DynamicImage::ImageRgb8(opaque)
    } else {
        DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(opaque).to_luma8())
    })
}

/// Counts of each grey level.
struct Histogram {
    counts: [u64; 256],
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; 256],
            total: 0,
        }
    }
}

impl Histogram {
    fn add(&mut self, plane: &GrayImage) {
        for &v in plane.as_raw() {
            self.counts[usize::from(v)] += 1;
        }
        self.total += plane.as_raw().len() as u64;
    }

    /// The grey level below which a share `q` of the pixels lies: the value of the pixel of
    /// rank `floor(q * (n - 1))` in sorted order.
    fn percentile(&self, q: f32) -> u8 {
        let rank = (f64::from(q) * self.total.saturating_sub(1) as f64).floor() as u64;
        let mut seen = 0;
        for (level, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen > rank {
                return level as u8;
            }
        }
        255
    }
}

/// [`Inversion::MedianVsExtremes`]: whether the picture's background is its light side.
fn has_light_background(grey: &GrayImage) -> bool {
    let mut histogram = Histogram::default();
    histogram.add(grey);
    let median = f32::from(histogram.percentile(0.5));
    let midpoint =
        (f32::from(histogram.percentile(0.005)) + f32::from(histogram.percentile(0.995))) / 2.0;
    if median == midpoint {
        return border_brightness(grey) > 127.5;
    }
    median > midpoint
}

/// Mean grey level of a picture's outermost pixels: the background, for drawings.
fn border_brightness(picture: &GrayImage) -> f32 {
    let (w, h) = picture.dimensions();
    let mut sum = 0.0;
    let mut count = 0.0;
    for (x, y, pixel) in picture.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            sum += f32::from(pixel[0]);
            count += 1.0;
        }
    }
    sum / count
}

/// `plane` resized to fit `width x height` with its aspect ratio kept, centred on a canvas of
/// its median level.
fn letterbox(plane: &GrayImage, width: u32, height: u32) -> GrayImage {
    let mut histogram = Histogram::default();
    histogram.add(plane);
    let fill = histogram.percentile(0.5);
    let (w, h) = plane.dimensions();
    let scale = (f64::from(width) / f64::from(w)).min(f64::from(height) / f64::from(h));
    let fitted_w = ((f64::from(w) * scale).round() as u32).clamp(1, width);
    let fitted_h = ((f64::from(h) * scale).round() as u32).clamp(1, height);
    let fitted = image::imageops::resize(plane, fitted_w, fitted_h, FilterType::Triangle);
    let mut canvas = GrayImage::from_pixel(width, height, image::Luma([fill]));
    image::imageops::overlay(
        &mut canvas,
        &fitted,
        i64::from((width - fitted_w) / 2),
        i64::from((height - fitted_h) / 2),
    );
    canvas
}

/// A picture format's usual name: `PNG`, `JPEG`, `WebP`...
pub fn format_name(format: image::ImageFormat) -> &'static str {
    use image::ImageFormat as F;
    match format {
        F::Png => "PNG",
        F::Jpeg => "JPEG",
        F::Gif => "GIF",
        F::WebP => "WebP",
        F::Pnm => "PNM",
        F::Tiff => "TIFF",
        F::Tga => "TGA",
        F::Dds => "DDS",
        F::Bmp => "BMP",
        F::Ico => "ICO",
        F::Hdr => "HDR",
        F::OpenExr => "OpenEXR",
        F::Farbfeld => "Farbfeld",
        F::Avif => "AVIF",
        F::Qoi => "QOI",
        _ => "unknown",
    }
}

/// What a decoder said, without the `image` crate's `Format error decoding Png:` prefix (the
/// caller names the format).
fn decoding_problem(error: &image::ImageError) -> String {
    match error {
        image::ImageError::Decoding(e) => {
            std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
        }
        other => other.to_string(),
    }
}

/// Reads and decodes a picture file (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM) of at most
/// [`DEFAULT_MAX_PIXELS`], with an error that says what is wrong with it.
pub fn read_picture(path: &Path) -> Result<DynamicImage> {
    read_picture_within(path, DEFAULT_MAX_PIXELS)
}

/// [`read_picture`] refusing, before decoding, a picture of more than `max_pixels` pixels.
pub fn read_picture_within(path: &Path, max_pixels: u64) -> Result<DynamicImage> {
    let bytes = read_file(path, MAX_PICTURE_FILE_BYTES)?;
    decode_picture_within(&bytes, max_pixels).map_err(|message| Error::file(path, message))
}

/// Decodes a picture held in memory of at most [`DEFAULT_MAX_PIXELS`]; the error says why it
/// is not one.
pub fn decode_picture(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    decode_picture_within(bytes, DEFAULT_MAX_PIXELS)
}

/// [`decode_picture`] refusing, from its header and before any pixel is decoded, a picture of
/// more than `max_pixels` pixels (and never more than [`MAX_PICTURE_PIXELS`]), so that a small
/// compressed file cannot ask for gigabytes.
pub fn decode_picture_within(
    bytes: &[u8],
    max_pixels: u64,
) -> std::result::Result<DynamicImage, String> {
    let (format, (width, height)) = picture_dimensions(bytes)?;
    let name = format_name(format);
    let max_pixels = max_pixels.min(MAX_PICTURE_PIXELS);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(format!(
            "{width}x{height} pixels ({:.1} megapixels): more than the {:.1} megapixels accepted",
            pixels as f64 / 1e6,
            max_pixels as f64 / 1e6
        ));
    }
    let picture = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| format!("cannot decode this {name} image: {}", decoding_problem(&e)))?;
    if picture.width() == 0 || picture.height() == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(picture)
}

/// The format and `(width, height)` of a picture held in memory, read from its header; the
/// error says why it is not a picture.
pub fn picture_dimensions(
    bytes: &[u8],
) -> std::result::Result<(image::ImageFormat, (u32, u32)), String> {
    if bytes.is_empty() {
        return Err("empty file, not an image".into());
    }
    let format = image::guess_format(bytes).map_err(|_| {
        "not an image (PNG, JPEG, BMP, GIF, WebP, TIFF or PNM expected)".to_string()
    })?;
    let dimensions = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| format!("cannot decode this {} image: {e}", format_name(format)))?;
    Ok((format, dimensions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_convention_maps_ink_to_plus_one() {
        let p = Preprocessing::seed_convention();
        let mut out = [0.0; 3];
        p.normalize(&[0, 255, 128], Shape::new(1, 1, 3), &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[1], 1.0);
        assert!(out[2].abs() < 0.01);
    }

    #[test]
    fn black_on_white_is_inverted_for_a_dark_background_model() {
        let p = Preprocessing::seed_convention();
        // White page, one black pixel in the middle.
        let mut page = GrayImage::from_pixel(5, 5, image::Luma([255]));
        page.put_pixel(2, 2, image::Luma([0]));
        let bytes = p
            .prepare_image(&DynamicImage::ImageLuma8(page), Shape::new(1, 5, 5))
            .unwrap();
        assert_eq!(bytes[12], 255);
        assert_eq!(bytes[0], 0);
    }

    #[test]
    fn bad_pictures_are_reported() {
        assert!(decode_picture(b"").unwrap_err().contains("empty"));
        assert!(decode_picture(b"hello world")
            .unwrap_err()
            .contains("not an image"));
        let truncated = &b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..];
        assert!(decode_picture(truncated)
            .unwrap_err()
            .contains("cannot decode"));
    }
}
