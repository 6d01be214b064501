//! IDX files (MNIST, Fashion-MNIST), raw or gzipped: any bytes given to the engine's IDX
//! parser, as images (3 dimensions) or labels (1 dimension).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&kind, data)) = bytes.split_first() else {
        return;
    };
    let dims = if kind & 1 == 0 { 3 } else { 1 };
    if let Ok(array) = cnn::data::idx::parse(data, dims) {
        assert_eq!(array.dims.len(), dims);
        assert_eq!(array.dims.iter().product::<usize>(), array.values.len());
    }
});
