//! The architecture notation: any text given to `arch::parse`. What parses must write back
//! as notation that parses to the same graph, and build (or refuse to build) on 28x28 and
//! 32x32 RGB inputs without a panic.
#![no_main]

use cnn::{Network, Shape};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&classes, text)) = bytes.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(architecture) = cnn::arch::parse(text, usize::from(classes)) else {
        return;
    };
    let notation = cnn::arch::to_notation(&architecture);
    let again = cnn::arch::parse(&notation, usize::from(classes))
        .unwrap_or_else(|e| panic!("`{notation}` (written from `{text}`) does not parse: {e}"));
    assert_eq!(
        cnn::arch::to_notation(&again),
        notation,
        "the notation does not round-trip"
    );
    for shape in [Shape::new(1, 28, 28), Shape::new(3, 32, 32)] {
        let _ = Network::new(&architecture, shape);
    }
});
