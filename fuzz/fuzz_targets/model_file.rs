//! Model files: any bytes given to the engine's model reader (safetensors framing, the header's
//! JSON, the metadata: architecture, input shape, classes, preprocessing). A model it accepts
//! must predict (or refuse non-finite outputs) and save back to bytes it accepts again.
#![no_main]

use cnn::{Tensor, Workspace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(model) = cnn::model_file::from_bytes(bytes) else {
        return;
    };
    let again = cnn::model_file::to_bytes(&model).expect("an accepted model serialises");
    cnn::model_file::from_bytes(&again).expect("a saved model loads back");
    // Small networks only: the limits allow networks that take seconds per image.
    if model.network.flops_per_image() <= 20_000_000 {
        let input = Tensor::zeros(1, model.network.input_shape());
        let _ = model.predict(&input, &mut Workspace::new());
    }
});
