//! Pictures: any bytes given to the engine's picture decoder (PNG, JPEG, BMP, GIF, WebP,
//! TIFF, PNM), then through the preprocessing a model applies (grey 28x28 with a dark
//! background and autocontrast, RGB 32x32 with a light background).
#![no_main]

use cnn::preprocess::{Background, Preprocessing};
use cnn::Shape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(picture) = cnn::preprocess::decode_picture(bytes) else {
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
