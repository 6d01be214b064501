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

/// Draws one letter into `image` (`size x size` bytes, 255 = ink).
fn draw(rng: &mut impl Rng, is_x: bool, size: usize, image: &mut [u8]) {
    let s = size as f32;
    let half_extent = rng.random_range(0.22..0.45) * s;
    let aspect = rng.random_range(0.75..1.3f32);
    let angle = rng.random_range(-0.45..0.45f32);
    let half_width = rng.random_range(0.035..0.085) * s * 0.5 + 0.3;
    let margin = half_extent * aspect.max(1.0) * 0.8 + half_width;
    let free = (s / 2.0 - margin).max(0.0);
    let center = (
        s / 2.0 + rng.random_range(-free..=free),
        s / 2.0 + rng.random_range(-free..=free),
    );
    let (sin, cos) = angle.sin_cos();
    let (rx, ry) = (half_extent, half_extent * aspect);
    // Each stroke end moves a little on its own, like a hand-drawn letter.
    let mut jitter = || {
        (
            rng.random_range(-0.12..0.12) * half_extent,
            rng.random_range(-0.12..0.12) * half_extent,
        )
    };
    let arms = [((-rx, -ry), (rx, ry)), ((-rx, ry), (rx, -ry))].map(|((ax, ay), (bx, by))| {
        let (ja, jb) = (jitter(), jitter());
        ((ax + ja.0, ay + ja.1), (bx + jb.0, by + jb.1))
    });
    let noise = Normal::new(0.0, rng.random_range(0.0..0.12f32)).expect("valid deviation");
    for y in 0..size {
        for x in 0..size {
            // Pixel centre in the letter's own frame: undo the shift, then the rotation.
            let (dx, dy) = (x as f32 + 0.5 - center.0, y as f32 + 0.5 - center.1);
            let local = (cos * dx + sin * dy, -sin * dx + cos * dy);
            let distance = if is_x {
                arms.iter()
                    .map(|&(a, b)| segment_distance(local, a, b))
                    .fold(f32::INFINITY, f32::min)
            } else {
                ellipse_distance(local, rx, ry)
            };
            // Anti-aliased edge: full ink inside the stroke, fading over one pixel.
            let ink = (half_width + 0.5 - distance).clamp(0.0, 1.0);
            let value = (ink + noise.sample(rng)).clamp(0.0, 1.0);
            image[y * size + x] = (value * 255.0).round() as u8;
        }
    }
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
