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
    /// Light ink on a dark background (the seed's X/O, MNIST). A picture whose border is light
    /// (black ink on white paper) is inverted first.
    Dark,
    /// Dark ink on a light background; a picture with a dark border is inverted.
    Light,
    /// Photographs: taken as they are.
    Any,
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
}

impl Preprocessing {
    /// The seed's convention: ink is +1, background -1 (`mean = std = 0.5`).
    pub fn seed_convention() -> Self {
        Preprocessing {
            mean: vec![0.5],
            std: vec![0.5],
            background: Background::Dark,
            autocontrast: true,
        }
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
    pub fn prepare_image(&self, picture: &DynamicImage, shape: Shape) -> Result<Vec<u8>> {
        let (width, height) = (shape.width as u32, shape.height as u32);
        let mut planes: Vec<GrayImage> = match shape.channels {
            1 => vec![picture.to_luma8()],
            3 => {
                let rgb = picture.to_rgb8();
                (0..3)
                    .map(|c| {
                        GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                            image::Luma([rgb.get_pixel(x, y)[c]])
                        })
                    })
                    .collect()
            }
            n => {
                return Err(Error::Invalid(format!(
                    "the model takes {n}-channel images; pictures convert to 1 (grey) or 3 (RGB)"
                )))
            }
        };
        let invert = match self.background {
            Background::Any => false,
            Background::Dark => border_brightness(&picture.to_luma8()) > 127.5,
            Background::Light => border_brightness(&picture.to_luma8()) < 127.5,
        };
        for plane in &mut planes {
            if plane.dimensions() != (width, height) {
                // Triangle filtering averages the pixels each output pixel covers when shrinking.
                *plane = image::imageops::resize(plane, width, height, FilterType::Triangle);
            }
            if invert {
                image::imageops::invert(plane);
            }
        }
        if self.autocontrast {
            let (low, high) = planes
                .iter()
                .flat_map(|p| p.as_raw())
                .fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if high > low {
                let range = f32::from(high - low);
                for v in planes.iter_mut().flat_map(|p| p.iter_mut()) {
                    *v = ((f32::from(*v - low) / range) * 255.0).round() as u8;
                }
            }
        }
        Ok(planes.into_iter().flat_map(|p| p.into_raw()).collect())
    }
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

/// Reads and decodes a picture file (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM), with an error that
/// says what is wrong with it.
pub fn read_picture(path: &Path) -> Result<DynamicImage> {
    let bytes = read_file(path, MAX_PICTURE_FILE_BYTES)?;
    decode_picture(&bytes).map_err(|message| Error::file(path, message))
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
        .map_err(|e| format!("cannot decode this {format:?} image: {e}"))?;
    Ok((format, dimensions))
}

/// Decodes a picture held in memory; the error says why it is not one. Its size is read
/// from its header and checked against [`MAX_PICTURE_PIXELS`] before any pixel is decoded,
/// so that a small compressed file cannot ask for gigabytes.
pub fn decode_picture(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    let (format, (width, height)) = picture_dimensions(bytes)?;
    if width == 0 || height == 0 {
        return Err("the image has no pixels".into());
    }
    if u64::from(width) * u64::from(height) > MAX_PICTURE_PIXELS {
        return Err(format!(
            "{width}x{height} pixels is over the limit of {MAX_PICTURE_PIXELS} pixels"
        ));
    }
    let picture = image::ImageReader::with_format(Cursor::new(bytes), format)
        .decode()
        .map_err(|e| format!("cannot decode this {format:?} image: {e}"))?;
    if picture.width() == 0 || picture.height() == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(picture)
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
