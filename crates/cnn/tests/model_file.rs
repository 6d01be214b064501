//! Model files: what is saved loads back as the same network, and broken files are refused
//! with a message that says what is wrong.

use cnn::arch;
use cnn::model_file::{from_bytes, load, save, to_bytes};
use cnn::network::Workspace;
use cnn::preprocess::Preprocessing;
use cnn::rng::{seeded, Stream};
use cnn::{Model, Network, Shape, Tensor};

fn model() -> Model {
    let layers = arch::parse(&arch::preset("lenet5").unwrap(), 10).unwrap();
    let mut network = Network::new(&layers, Shape::new(1, 28, 28)).unwrap();
    network.init_kaiming(&mut seeded(3, Stream::WeightInit));
    let classes = (0..10).map(|c| format!("class {c}")).collect();
    Model::new(network, classes, Preprocessing::seed_convention()).unwrap()
}

/// Save, load: same architecture, same parameters, same outputs, same bytes when saved again.
#[test]
fn save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let original = model();
    save(&original, &path).unwrap();
    let loaded = load(&path).unwrap();
    assert_eq!(
        loaded.network.architecture(),
        original.network.architecture()
    );
    assert_eq!(loaded.classes, original.classes);
    assert_eq!(loaded.preprocessing, original.preprocessing);
    let params = |m: &Model| {
        m.network
            .params()
            .map(|(_, p)| p.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(params(&loaded), params(&original));

    let input = Tensor::from_vec(
        2,
        Shape::new(1, 28, 28),
        (0..2 * 784)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect(),
    )
    .unwrap();
    let a = original.predict(&input, &mut Workspace::new()).unwrap();
    let b = loaded.predict(&input, &mut Workspace::new()).unwrap();
    assert_eq!(a, b);
    assert_eq!(to_bytes(&loaded).unwrap(), std::fs::read(&path).unwrap());
}

/// Names, shapes and layout as PyTorch's `nn.Sequential` state dict.
#[test]
fn tensors_have_pytorch_names_and_shapes() {
    let bytes = to_bytes(&model()).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            // conv(0) relu(1) pool(2) conv(3) relu(4) pool(5) flatten(6) dense(7) relu(8)
            // dense(9) relu(10) dense(11), as nn.Sequential numbers its modules.
            ("0.bias".to_string(), vec![6]),
            ("0.weight".to_string(), vec![6, 1, 5, 5]),
            ("11.bias".to_string(), vec![10]),
            ("11.weight".to_string(), vec![10, 84]),
            ("3.bias".to_string(), vec![16]),
            ("3.weight".to_string(), vec![16, 6, 5, 5]),
            ("7.bias".to_string(), vec![120]),
            ("7.weight".to_string(), vec![120, 400]),
            ("9.bias".to_string(), vec![84]),
            ("9.weight".to_string(), vec![84, 120]),
        ]
    );
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().as_ref().unwrap();
    for key in [
        "architecture",
        "notation",
        "input_shape",
        "classes",
        "preprocessing",
        "format",
    ] {
        assert!(metadata.contains_key(key), "{key}");
    }
    assert_eq!(metadata["input_shape"], "[1,28,28]");
    assert!(metadata["architecture"].contains("\"type\":\"conv2d\""));
}

/// Edits the header text of a model file, keeping its length (so offsets stay valid).
fn edit_header(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    assert!(header.contains(from), "{from} not in {header}");
    let mut edited = bytes.to_vec();
    edited[8..8 + header_len].copy_from_slice(header.replacen(from, to, 1).as_bytes());
    edited
}

/// Every way a file can be broken gives an error naming the problem, never a panic.
#[test]
fn broken_files_are_refused() {
    let good = to_bytes(&model()).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "empty"),
        (good[..5].to_vec(), "too short"),
        (good[..good.len() - 1].to_vec(), "not a valid safetensors"),
        (good[..header_len].to_vec(), "not a valid safetensors"),
        (b"{\"hello\": 1}    ".to_vec(), "not a valid safetensors"),
        (
            edit_header(&good, "cnn-model-1", "cnn-model-9"),
            "model format `cnn-model-9`",
        ),
        (
            edit_header(&good, "\\\"out_channels\\\":6", "\\\"out_channels\\\":7"),
            "tensor `0.weight` has shape [6, 1, 5, 5], the architecture needs [7, 1, 5, 5]",
        ),
        (
            edit_header(&good, "\"classes\"", "\"klasses\""),
            "no `classes` in its metadata",
        ),
        (
            edit_header(&good, "\\\"type\\\":\\\"relu", "\\\"type\\\":\\\"rely"),
            "metadata `architecture` is malformed",
        ),
        (
            edit_header(&good, "\"0.bias\"", "\"0.bian\""),
            "tensor `0.bias` is missing",
        ),
    ];
    for (bytes, expected) in cases {
        let error = from_bytes(&bytes).expect_err("broken file accepted");
        assert!(
            error.contains(expected),
            "expected `{expected}` in: {error}"
        );
    }
}

/// A model saved over an existing file replaces it whole; no temporary file is left behind.
#[test]
fn saving_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, b"old").unwrap();
    save(&model(), &path).unwrap();
    assert!(load(&path).is_ok());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let error = save(&model(), &dir.path().join("missing/dir/m.safetensors")).unwrap_err();
    assert!(error.to_string().contains("missing/dir"), "{error}");
}

/// A model file written before networks were graphs (`tests/fixtures/stack-v1.safetensors`: a
/// convolution, batch normalisation, ReLU, pooling, a second convolution, dropout and a dense
/// layer, trained for one epoch by the code at 97023c0) still loads, keeps its names, and gives
/// the logits that code gave for the same input (`stack-v1.expected.json`, from `cnn explain
/// --json` of that version), by both the traced and the fused inference passes; saved again,
/// it holds the same tensors, bit for bit, and the same architecture (now with the settings
/// that this engine fixes written out).
#[test]
fn model_files_from_before_graphs_load_and_predict_the_same() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let path = fixtures.join("stack-v1.safetensors");
    let model = load(&path).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("stack-v1.expected.json")).unwrap(),
    )
    .unwrap();
    let values: Vec<f32> = expected["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let input = Tensor::from_vec(1, Shape::new(1, 28, 28), values).unwrap();
    let logits: Vec<f32> = expected["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut workspace = Workspace::new();
    let traced = model
        .network
        .forward(&input, &mut workspace, cnn::Mode::Infer)
        .unwrap()
        .data()
        .to_vec();
    let fused = model
        .network
        .infer(&input, &mut workspace)
        .unwrap()
        .data()
        .to_vec();
    for (got, want) in [traced, fused].iter().flat_map(|l| l.iter().zip(&logits)) {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{got} against {want}"
        );
    }
    let names: Vec<String> = model
        .network
        .tensors()
        .map(|(node, p)| format!("{node}.{}", p.name))
        .collect();
    assert_eq!(names[..2], ["0.weight", "1.weight"]);
    let saved = to_bytes(&model).unwrap();
    let again = from_bytes(&saved).unwrap();
    assert_eq!(again.network.architecture(), model.network.architecture());
    let tensors = |m: &cnn::Model| -> Vec<(String, Vec<u32>)> {
        m.network
            .tensors()
            .map(|(node, p)| {
                let bits = p.value.iter().map(|v| v.to_bits()).collect();
                (format!("{node}.{}", p.name), bits)
            })
            .collect()
    };
    assert_eq!(tensors(&again), tensors(&model));
    let text = String::from_utf8_lossy(&saved);
    assert!(text.contains(r#"\"eps\":"#) && text.contains(r#"\"padding_mode\":\"zeros\""#));
}

/// A ResNet-20 saves its tensors under torchvision's module paths and loads back as the same
/// graph with the same outputs.
#[test]
fn graph_models_save_their_module_paths_and_load_back() {
    let layers = arch::parse(&arch::preset("resnet20").unwrap(), 10).unwrap();
    let mut network = Network::new(&layers, Shape::new(1, 28, 28)).unwrap();
    network.init_kaiming(&mut seeded(4, Stream::WeightInit));
    let classes = (0..10).map(|c| format!("class {c}")).collect();
    let model = Model::new(network, classes, Preprocessing::seed_convention()).unwrap();
    let bytes = to_bytes(&model).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer3.2.conv2.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(file.tensor(name).is_ok(), "{name}");
    }
    assert_eq!(
        file.tensor("layer2.0.downsample.0.weight").unwrap().shape(),
        [32, 16, 1, 1]
    );
    let params: usize = model.network.param_count();
    assert!(
        (270_000..275_000).contains(&params),
        "about 0.27M parameters: {params}"
    );
    let loaded = from_bytes(&bytes).unwrap();
    assert_eq!(loaded.network.architecture(), model.network.architecture());
    let input = Tensor::from_vec(
        2,
        Shape::new(1, 28, 28),
        (0..2 * 784)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect(),
    )
    .unwrap();
    let a = model.predict(&input, &mut Workspace::new()).unwrap();
    let b = loaded.predict(&input, &mut Workspace::new()).unwrap();
    assert_eq!(a, b);
    assert_eq!(to_bytes(&loaded).unwrap(), bytes);
}
