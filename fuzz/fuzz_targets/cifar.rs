//! CIFAR-10 binary batches: any bytes given to the engine's batch parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&classes, data)) = bytes.split_first() else {
        return;
    };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    if cnn::data::cifar::parse_batch(data, usize::from(classes), &mut images, &mut labels).is_ok() {
        assert_eq!(images.len(), labels.len() * 3 * 32 * 32);
        assert!(labels
            .iter()
            .all(|&l| usize::from(l) < usize::from(classes)));
    }
});
