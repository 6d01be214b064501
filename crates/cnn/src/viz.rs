//! Pictures of what the network sees: maps of values drawn as images.

use image::{Rgb, RgbImage};

/// Colour of a signed value: blue for negative, white for zero, red for positive, at full
/// strength at `±range` (the seed's -1 / 0 / +1).
pub fn diverging_colour(value: f32, range: f32) -> Rgb<u8> {
    let t = (value / range.max(f32::MIN_POSITIVE)).clamp(-1.0, 1.0);
    let (end, strength) = if t < 0.0 {
        ([33.0, 102.0, 172.0], -t)
    } else {
        ([178.0, 24.0, 43.0], t)
    };
    Rgb(end.map(|e: f32| (255.0 + (e - 255.0) * strength).round() as u8))
}

/// Draws a `height x width` map (row-major) with each value as a `cell x cell` square of
/// [`diverging_colour`], separated by one-pixel grey grid lines.
pub fn signed_map(values: &[f32], height: usize, width: usize, range: f32, cell: u32) -> RgbImage {
    let step = cell + 1;
    let mut picture = RgbImage::from_pixel(
        width as u32 * step + 1,
        height as u32 * step + 1,
        Rgb([160, 160, 160]),
    );
    for (i, &value) in values.iter().enumerate().take(height * width) {
        let (row, col) = ((i / width) as u32, (i % width) as u32);
        let colour = diverging_colour(value, range);
        for dy in 0..cell {
            for dx in 0..cell {
                picture.put_pixel(col * step + 1 + dx, row * step + 1 + dy, colour);
            }
        }
    }
    picture
}

/// Largest absolute value, the natural range for a map without a fixed scale.
pub fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Colour of a non-negative value on the "jet" scale that Grad-CAM pictures use (OpenCV's
/// `COLORMAP_JET`): dark blue at 0, through cyan, yellow, to dark red at `range`.
pub fn heat_colour(value: f32, range: f32) -> Rgb<u8> {
    let t = (value / range.max(f32::MIN_POSITIVE)).clamp(0.0, 1.0);
    let channel =
        |centre: f32| ((1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    Rgb([channel(3.0), channel(2.0), channel(1.0)])
}

/// `colour` laid over `under` with opacity `alpha` (0 to 1).
pub fn blend(under: Rgb<u8>, colour: Rgb<u8>, alpha: f32) -> Rgb<u8> {
    let a = alpha.clamp(0.0, 1.0);
    Rgb(std::array::from_fn(|i| {
        (f32::from(under[i]) * (1.0 - a) + f32::from(colour[i]) * a).round() as u8
    }))
}
