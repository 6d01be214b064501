//! ONNX files: any bytes given to the engine's ONNX reader (protobuf framing, the graph, its
//! initializers, attributes and shapes). A network it accepts must run on an input of its
//! shape (small networks only) and, as a model, export to a file it reads again.
#![no_main]

use cnn::onnx::{self, ExportOptions};
use cnn::{Tensor, Workspace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(imported) = onnx::import::network_from_bytes(bytes) else {
        return;
    };
    let network = &imported.network;
    if network.flops_per_image() <= 20_000_000 {
        let input = Tensor::zeros(1, network.input_shape());
        let _ = network.infer(&input, &mut Workspace::new());
    }
    if let Ok(model) = onnx::from_bytes(bytes, &Default::default()) {
        let again = onnx::to_bytes(&model, ExportOptions::default()).expect("a model exports");
        onnx::from_bytes(&again, &Default::default()).expect("an exported model reads back");
    }
});
