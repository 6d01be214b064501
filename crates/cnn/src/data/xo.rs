//! The built-in X/O data set: the seed's two letters drawn at random position, size, rotation,
//! aspect and stroke width, with noise. White strokes on black, as in the seed (+1 is ink).

use super::Dataset;
use crate::error::{Error, Result};
use crate::rng::{seeded, Stream};
use crate::tensor::Shape;
use rand::Rng;
use rand_distr::{Distribution, Normal};

pub const CLASSES: [&str; 2] = ["X", "O"];

/// Which images to draw: `count` images of `size x size` from split `stream` of `seed`.
#[derive(Clone, Copy, Debug)]
pub struct XoConfig {
    pub size: usize,
    pub count: usize,
    pub seed: u64,
}

/// The three splits never share an image: each is drawn from its own random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// Draws `config.count` images, alternating X and O so the classes are balanced.
pub fn generate(config: XoConfig, split: Split) -> Result<Dataset> {
    if !(8..=512).contains(&config.size) {
        return Err(Error::Invalid(format!(
            "X/O images must be 8 to 512 pixels wide, not {}",
            config.size
        )));
    }
    let stream = match split {
        Split::Train => Stream::XoTrain,
        Split::Validation => Stream::XoValidation,
        Split::Test => Stream::XoTest,
    };
    let mut rng = seeded(config.seed, stream);
    let size = config.size;
    let mut images = vec![0u8; config.count * size * size];
    let mut labels = Vec::with_capacity(config.count);
    for (index, image) in images.chunks_mut(size * size).enumerate() {
        let label = index % 2;
        draw(&mut rng, label == 0, size, image);
        labels.push(label as u16);
    }
    Dataset::new(
        Shape::new(1, size, size),
        CLASSES.iter().map(|c| c.to_string()).collect(),
        images,
        labels,
    )
}

/// One letter's geometry, in pixels: where it is, how large, how turned and squashed, how
/// thick its strokes, and (for an X) its two arms, each end moved a little on its own as in a
/// hand-drawn letter.
struct Letter {
    is_x: bool,
    center: (f32, f32),
    angle: f32,
    radii: (f32, f32),
    half_width: f32,
    arms: [((f32, f32), (f32, f32)); 2],
}

impl Letter {
    /// A letter with the given radii and stroke, arm ends jittered by `rng`.
    fn new(
        rng: &mut impl Rng,
        is_x: bool,
        center: (f32, f32),
        angle: f32,
        radii: (f32, f32),
        half_width: f32,
    ) -> Letter {
        let (rx, ry) = radii;
        let mut jitter = || {
            (
                rng.random_range(-0.12..0.12) * rx,
                rng.random_range(-0.12..0.12) * rx,
            )
        };
        let arms = [((-rx, -ry), (rx, ry)), ((-rx, ry), (rx, -ry))].map(|((ax, ay), (bx, by))| {
            let (ja, jb) = (jitter(), jitter());
            ((ax + ja.0, ay + ja.1), (bx + jb.0, by + jb.1))
        });
        Letter {
            is_x,
            center,
            angle,
            radii,
            half_width,
            arms,
        }
    }

    /// How much of the pixel centred at `(x, y)` the strokes cover, 0 to 1 (anti-aliased: full
    /// inside the stroke, fading over one pixel).
    fn coverage(&self, x: f32, y: f32) -> f32 {
        let (sin, cos) = self.angle.sin_cos();
        // The point in the letter's own frame: undo the shift, then the rotation.
        let (dx, dy) = (x - self.center.0, y - self.center.1);
        let local = (cos * dx + sin * dy, -sin * dx + cos * dy);
        let distance = if self.is_x {
            self.arms
                .iter()
                .map(|&(a, b)| segment_distance(local, a, b))
                .fold(f32::INFINITY, f32::min)
        } else {
            ellipse_distance(local, self.radii.0, self.radii.1)
        };
        (self.half_width + 0.5 - distance).clamp(0.0, 1.0)
    }
}

/// Draws one letter into `image` (`size x size` bytes, 255 = ink).
fn draw(rng: &mut impl Rng, is_x: bool, size: usize, image: &mut [u8]) {
    let s = size as f32;
    let half_extent = rng.random_range(0.15..0.45) * s;
    let aspect = rng.random_range(0.75..1.3f32);
    let angle = rng.random_range(-0.53..0.53f32);
    let half_width = rng.random_range(0.035..0.085) * s * 0.5 + 0.3;
    let margin = half_extent * aspect.max(1.0) * 0.8 + half_width;
    let free = (s / 2.0 - margin).max(0.0);
    let center = (
        s / 2.0 + rng.random_range(-free..=free),
        s / 2.0 + rng.random_range(-free..=free),
    );
    let radii = (half_extent, half_extent * aspect);
    let letter = Letter::new(rng, is_x, center, angle, radii, half_width);
    let noise = Normal::new(0.0, rng.random_range(0.0..0.12f32)).expect("valid deviation");
    for y in 0..size {
        for x in 0..size {
            let ink = letter.coverage(x as f32 + 0.5, y as f32 + 0.5);
            let value = (ink + noise.sample(rng)).clamp(0.0, 1.0);
            image[y * size + x] = (value * 255.0).round() as u8;
        }
    }
}

/// The ways a person's drawing differs from a tidy letter, for measuring a model on
/// pictures like those the playground receives ([`drawn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variation {
    /// A black letter on white, centred, of middling size and stroke: as the playground draws.
    Typical,
    /// A quarter to a third of the picture tall.
    Small,
    /// Nearly the whole picture.
    Large,
    /// Strokes 1.2% to 2.5% of the picture wide (3 to 7 pixels on 280).
    Thin,
    /// Strokes 11% to 15% of the picture wide.
    Thick,
    /// Moved a fifth to a quarter of the picture off the centre.
    OffCentre,
    /// Turned by 20 to 30 degrees either way.
    Rotated,
    /// Half again as wide as tall, or as tall as wide, and more.
    Squashed,
    /// Dark ink on light grey paper, with noise.
    LightBackground,
    /// Light ink on a dark ground.
    DarkBackground,
    /// Dark ink on paper that fades from white to mid-grey across the picture.
    GradientBackground,
    /// A black letter on a transparent picture (RGBA, the background's alpha 0).
    Transparent,
}

impl Variation {
    pub const ALL: [Variation; 12] = [
        Variation::Typical,
        Variation::Small,
        Variation::Large,
        Variation::Thin,
        Variation::Thick,
        Variation::OffCentre,
        Variation::Rotated,
        Variation::Squashed,
        Variation::LightBackground,
        Variation::DarkBackground,
        Variation::GradientBackground,
        Variation::Transparent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variation::Typical => "typical",
            Variation::Small => "small",
            Variation::Large => "large",
            Variation::Thin => "thin strokes",
            Variation::Thick => "thick strokes",
            Variation::OffCentre => "off-centre",
            Variation::Rotated => "rotated 20-30 degrees",
            Variation::Squashed => "squashed",
            Variation::LightBackground => "light background",
            Variation::DarkBackground => "dark background",
            Variation::GradientBackground => "gradient background",
            Variation::Transparent => "transparent PNG",
        }
    }
}

/// `count` pictures of `side x side` pixels, X and O alternating (label 0 for X, 1 for O),
/// drawn with `variation` and otherwise as [`Variation::Typical`]: what a person might give
/// the playground. From their own random stream of `seed`, apart from the training splits.
pub fn drawn(
    variation: Variation,
    count: usize,
    side: u32,
    seed: u64,
) -> Vec<(image::DynamicImage, usize)> {
    let mut rng = seeded(seed, Stream::XoDrawn);
    let s = side as f32;
    let mut pictures = Vec::with_capacity(count);
    for index in 0..count {
        let is_x = index % 2 == 0;
        let mut half_extent = between(&mut rng, 0.28, 0.38) * s;
        let mut aspect = between(&mut rng, 0.9, 1.1);
        let mut angle = between(&mut rng, -8.0, 8.0).to_radians();
        let mut stroke = between(&mut rng, 0.05, 0.08) * s;
        let mut offset = (
            between(&mut rng, -0.05, 0.05) * s,
            between(&mut rng, -0.05, 0.05) * s,
        );
        match variation {
            Variation::Small => half_extent = between(&mut rng, 0.12, 0.17) * s,
            Variation::Large => half_extent = between(&mut rng, 0.42, 0.46) * s,
            Variation::Thin => stroke = between(&mut rng, 0.012, 0.025) * s,
            Variation::Thick => stroke = between(&mut rng, 0.11, 0.15) * s,
            Variation::OffCentre => {
                half_extent = between(&mut rng, 0.2, 0.25) * s;
                let (distance, direction) = (
                    between(&mut rng, 0.2, 0.25) * s,
                    between(&mut rng, 0.0, std::f32::consts::TAU),
                );
                offset = (distance * direction.cos(), distance * direction.sin());
            }
            Variation::Rotated => {
                let turn = between(&mut rng, 20.0, 30.0).to_radians();
                angle = if between(&mut rng, 0.0, 1.0) < 0.5 {
                    -turn
                } else {
                    turn
                };
            }
            Variation::Squashed => {
                let squash = between(&mut rng, 1.5, 1.9);
                aspect = if between(&mut rng, 0.0, 1.0) < 0.5 {
                    squash
                } else {
                    1.0 / squash
                };
                // The longer side as large as a typical letter's.
                half_extent /= aspect.max(1.0);
            }
            _ => {}
        }
        let center = (s / 2.0 + offset.0, s / 2.0 + offset.1);
        let radii = (half_extent, half_extent * aspect);
        let letter = Letter::new(&mut rng, is_x, center, angle, radii, stroke / 2.0);
        // Paper and ink grey levels, and the paper's fade (0 = none).
        let (paper, ink, fade, direction) = match variation {
            Variation::LightBackground => (
                between(&mut rng, 200.0, 240.0),
                between(&mut rng, 0.0, 60.0),
                0.0,
                0.0,
            ),
            Variation::DarkBackground => (
                between(&mut rng, 0.0, 50.0),
                between(&mut rng, 200.0, 255.0),
                0.0,
                0.0,
            ),
            Variation::GradientBackground => (
                255.0,
                between(&mut rng, 0.0, 40.0),
                between(&mut rng, 100.0, 135.0),
                between(&mut rng, 0.0, std::f32::consts::TAU),
            ),
            _ => (255.0, 0.0, 0.0, 0.0),
        };
        let noise = match variation {
            Variation::LightBackground | Variation::DarkBackground => 12.0,
            _ => 0.0,
        };
        let (dx, dy) = (direction.cos(), direction.sin());
        let mut grey = image::GrayImage::new(side, side);
        let mut alpha = image::GrayImage::new(side, side);
        for (x, y, pixel) in grey.enumerate_pixels_mut() {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let covered = letter.coverage(px, py);
            // Where along the fade the pixel lies, 0 to 1.
            let along = (((px / s - 0.5) * dx + (py / s - 0.5) * dy) / std::f32::consts::SQRT_2
                + 0.5)
                .clamp(0.0, 1.0);
            let background = paper - fade * along + noise * (rng.random::<f32>() - 0.5);
            let value = background + (ink - background) * covered;
            pixel[0] = value.round().clamp(0.0, 255.0) as u8;
            alpha.put_pixel(x, y, image::Luma([(covered * 255.0).round() as u8]));
        }
        let picture = match variation {
            Variation::Transparent => {
                image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(side, side, |x, y| {
                    image::Rgba([0, 0, 0, alpha.get_pixel(x, y)[0]])
                }))
            }
            _ => image::DynamicImage::ImageLuma8(grey),
        };
        pictures.push((picture, usize::from(!is_x)));
    }
    pictures
}

fn between(rng: &mut impl Rng, low: f32, high: f32) -> f32 {
    rng.random_range(low..high)
}

fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (abx, aby) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * abx + (p.1 - a.1) * aby) / (abx * abx + aby * aby)).clamp(0.0, 1.0);
    ((p.0 - a.0 - t * abx).powi(2) + (p.1 - a.1 - t * aby).powi(2)).sqrt()
}

/// Approximate distance to an ellipse outline: the implicit function over its gradient.
fn ellipse_distance(p: (f32, f32), rx: f32, ry: f32) -> f32 {
    let (u, v) = (p.0 / rx, p.1 / ry);
    let r = (u * u + v * v).sqrt().max(1e-6);
    let gradient = ((u / (r * rx)).powi(2) + (v / (r * ry)).powi(2)).sqrt();
    ((r - 1.0) / gradient.max(1e-6)).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_images_and_splits_differ() {
        let config = XoConfig {
            size: 28,
            count: 10,
            seed: 7,
        };
        let a = generate(config, Split::Train).unwrap();
        assert_eq!(a, generate(config, Split::Train).unwrap());
        assert_ne!(a, generate(config, Split::Test).unwrap());
        assert_eq!(a.classes(), ["X", "O"]);
        assert_eq!((0..10).map(|i| a.label(i)).sum::<usize>(), 5);
    }

    #[test]
    fn letters_have_ink_and_background() {
        let data = generate(
            XoConfig {
                size: 28,
                count: 20,
                seed: 1,
            },
            Split::Train,
        )
        .unwrap();
        for i in 0..data.len() {
            let image = data.image(i);
            let inked = image.iter().filter(|&&p| p > 200).count();
            assert!((20..400).contains(&inked), "image {i}: {inked} ink pixels");
        }
    }
}
