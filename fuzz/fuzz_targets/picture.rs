//! Pictures: any bytes given to the engine's picture decoder (PNG, JPEG, BMP, GIF, WebP,
//! TIFF, PNM), then through the preprocessing a model applies (grey 28x28 with a dark
//! background and autocontrast, RGB 32x32 with a light background).
#![no_main]

use cnn::preprocess::{Background, Preprocessing};
use cnn::Shape;
use libfuzzer_sys::fuzz_target;

/// Larger pictures are refused here, not by the engine (which takes up to 50 megapixels): a
/// 16-megapixel GIF found by this target takes 0.7 s through `cnn predict` but over 10 s under
/// the sanitizer, which the fuzzer reports as a hang. The tests cover large pictures.
const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|bytes: &[u8]| {
    let Ok(picture) = cnn::preprocess::decode_picture_within(bytes, MAX_PIXELS) else {
        return;
    };
    let rgb = Preprocessing::new(vec![0.5; 3], vec![0.25; 3], Background::Light, false);
    for (preprocessing, shape) in [
        (Preprocessing::seed_convention(), Shape::new(1, 28, 28)),
        (rgb, Shape::new(3, 32, 32)),
    ] {
        let pixels = preprocessing
            .prepare_image(&picture, shape)
            .expect("1 and 3 channels are prepared");
        assert_eq!(pixels.len(), shape.len());
        let mut input = vec![0.0; shape.len()];
        preprocessing.normalize(&pixels, shape, &mut input);
        assert!(input.iter().all(|v| v.is_finite()));
    }
});
