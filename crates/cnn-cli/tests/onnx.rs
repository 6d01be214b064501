//! ONNX through the command line: files PyTorch exported (`interop/make_onnx_fixtures.py`, with
//! ONNX Runtime's outputs for their inputs) run, predict and explain here; `cnn export` and
//! `cnn import` round-trip a model; bad files are one-line errors.

mod common;

use assert_cmd::Command;
use common::assert_success;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

fn cnn() -> Command {
    Command::cargo_bin("cnn").expect("the cnn binary is built")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let file = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = file.shape().to_vec();
    (shape, file.into_vec().unwrap())
}

/// The fixtures' outputs in `cnn`, against ONNX Runtime's on the same inputs: a ResNet-style,
/// an Inception-style and a MobileNetV3-style network (TensorFlow-style padding, Hardswish,
/// ReLU6, a squeeze-and-excitation gate, PReLU, normalisation inside the network), and a 1-D
/// network on `[N, C, L]` sequences.
#[test]
fn pytorch_exported_networks_give_onnx_runtimes_outputs() {
    let dir = TempDir::new().unwrap();
    for name in [
        "resnet_style",
        "inception_style",
        "mobile_style",
        "sequence_style",
    ] {
        let out = dir.path().join(format!("{name}.npy"));
        let output = cnn()
            .args(["run", "--model"])
            .arg(fixture(&format!("{name}.onnx")))
            .arg("--input")
            .arg(fixture(&format!("{name}_input.npy")))
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap();
        assert_success(&output);
        let (shape, ours) = read_npy(&out);
        let (expected_shape, expected) = read_npy(&fixture(&format!("{name}_expected.npy")));
        assert_eq!(shape, expected_shape, "{name}");
        let diff = max_difference(&ours, &expected);
        assert!(diff <= 1e-4, "{name}: max |difference| {diff}");
    }
}

/// A PyTorch-exported file of four outputs (the features, the logits, an auxiliary head's
/// logits, the probabilities; the main output neither first nor last): `run` writes each one
/// into the folder, equal to ONNX Runtime's.
#[test]
fn every_output_of_a_file_of_several_is_onnx_runtimes() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("outputs");
    let output = cnn()
        .args(["run", "--model"])
        .arg(fixture("aux_heads_style.onnx"))
        .arg("--input")
        .arg(fixture("aux_heads_style_input.npy"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert_success(&output);
    for name in ["features", "logits", "aux_logits", "probabilities"] {
        let (shape, ours) = read_npy(&out.join(format!("{name}.npy")));
        let (expected_shape, expected) =
            read_npy(&fixture(&format!("aux_heads_style_expected_{name}.npy")));
        assert_eq!(shape, expected_shape, "{name}");
        let diff = max_difference(&ours, &expected);
        assert!(diff <= 1e-4, "{name}: max |difference| {diff}");
    }
}

fn picture(dir: &Path, channels: u32, size: u32) -> PathBuf {
    let path = dir.join(format!("picture{channels}.png"));
    let pixel = |x: u32, y: u32| ((x * 37 + y * 11) % 256) as u8;
    if channels == 1 {
        image::GrayImage::from_fn(size, size, |x, y| image::Luma([pixel(x, y)]))
            .save(&path)
            .unwrap();
    } else {
        image::RgbImage::from_fn(size, size, |x, y| {
            image::Rgb([pixel(x, y), pixel(y, x), pixel(x, x)])
        })
        .save(&path)
        .unwrap();
    }
    path
}

/// Every command that takes a model takes an ONNX file: predict, explain (the maps of every
/// node, the residual additions and concatenations too), info; bench measures it.
#[test]
fn commands_take_onnx_files() {
    let dir = TempDir::new().unwrap();
    for (name, channels, size, nodes) in
        [("resnet_style", 1, 28, 22), ("inception_style", 3, 32, 20)]
    {
        let model = fixture(&format!("{name}.onnx"));
        let picture = picture(dir.path(), channels, size);
        let output = cnn()
            .args(["predict", "--json", "--model"])
            .arg(&model)
            .arg(&picture)
            .output()
            .unwrap();
        assert_success(&output);
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(answer["classes"].as_array().unwrap().len(), 10, "{name}");

        let output = cnn()
            .args(["explain", "--json", "--model"])
            .arg(&model)
            .arg(&picture)
            .output()
            .unwrap();
        assert_success(&output);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let layers = json["layers"].as_array().unwrap();
        assert_eq!(layers.len(), nodes, "{name}");
        let kinds: Vec<&str> = layers
            .iter()
            .map(|l| l["kind"].as_str().unwrap_or(""))
            .collect();
        let joining = if name == "resnet_style" {
            "add"
        } else {
            "concat"
        };
        assert!(kinds.contains(&joining), "{name}: {kinds:?}");

        let output = cnn().arg("info").arg(&model).output().unwrap();
        assert_success(&output);

        let output = cnn()
            .args([
                "bench",
                "--json",
                "--repeats",
                "1",
                "--seconds",
                "0.05",
                "--model",
            ])
            .arg(&model)
            .output()
            .unwrap();
        assert_success(&output);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(json["infer_images_per_s"].as_f64().unwrap() > 0.0, "{json}");
    }
}

/// `cnn export` then `cnn import` gives a model that answers as the original did, down to the
/// last bit of every logit; `cnn run` on either gives the same tensor.
#[test]
fn export_and_import_round_trip() {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("xo.safetensors");
    cnn()
        .args(["train", "--quiet", "--epochs", "1", "--out"])
        .arg(&model)
        .assert()
        .success();
    let exported = dir.path().join("xo.onnx");
    let output = cnn()
        .args(["export", "--softmax", "--model"])
        .arg(&model)
        .arg("--onnx")
        .arg(&exported)
        .output()
        .unwrap();
    assert_success(&output);
    let back = dir.path().join("back.safetensors");
    let output = cnn()
        .arg("import")
        .arg(&exported)
        .arg("--out")
        .arg(&back)
        .output()
        .unwrap();
    assert_success(&output);
    let picture = picture(dir.path(), 1, 40);
    let predict = |model: &Path| {
        let output = cnn()
            .args(["predict", "--json", "--model"])
            .arg(model)
            .arg(&picture)
            .arg("--save-input")
            .arg(dir.path().join("input.npy"))
            .output()
            .unwrap();
        assert_success(&output);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (json["class"].clone(), json["logits"].clone())
    };
    let original = predict(&model);
    assert_eq!(predict(&back), original);
    assert_eq!(predict(&exported), original);
    let run = |model: &Path, out: &str| {
        cnn()
            .args(["run", "--model"])
            .arg(model)
            .arg("--input")
            .arg(dir.path().join("input.npy"))
            .arg("--output")
            .arg(dir.path().join(out))
            .assert()
            .success()
    };
    run(&model, "a.npy").stdout("");
    let (shape, logits) = read_npy(&dir.path().join("a.npy"));
    assert_eq!(shape, [1, 2]);
    run(&back, "b.npy");
    assert_eq!(read_npy(&dir.path().join("b.npy")).1, logits);
    // The exported file has two outputs, the logits and their softmax: `run` writes a folder.
    let listing = run(&exported, "c").get_output().stdout.clone();
    let listing = String::from_utf8(listing).unwrap();
    assert!(listing.contains("logits: [1, 2] -> "), "{listing}");
    assert!(listing.contains("probabilities: [1, 2] -> "), "{listing}");
    assert_eq!(read_npy(&dir.path().join("c/logits.npy")).1, logits);
    let (shape, probabilities) = read_npy(&dir.path().join("c/probabilities.npy"));
    assert_eq!(shape, [1, 2]);
    let total: f32 = logits.iter().map(|l| l.exp()).sum();
    for (p, l) in probabilities.iter().zip(&logits) {
        assert!(
            (p - l.exp() / total).abs() <= 1e-6,
            "{probabilities:?} {logits:?}"
        );
    }
    let stored: Vec<f32> = original
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(logits, stored);

    // With other class names.
    let renamed = dir.path().join("renamed.safetensors");
    cnn()
        .arg("import")
        .arg(&exported)
        .args([
            "--classes",
            "cross,ring",
            "--preprocessing",
            "0.5:0.25",
            "--out",
        ])
        .arg(&renamed)
        .assert()
        .success();
    let output = cnn()
        .args(["info", "--json"])
        .arg(&renamed)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["classes"], serde_json::json!(["cross", "ring"]));
    assert_eq!(info["preprocessing"]["std"], serde_json::json!([0.25]));
}

fn fails(args: &[&std::ffi::OsStr]) -> String {
    let output = cnn().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_onnx_files_and_tensors_are_one_line_errors() {
    let dir = TempDir::new().unwrap();
    let good = std::fs::read(fixture("resnet_style.onnx")).unwrap();
    let picture = picture(dir.path(), 1, 28);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    for (name, bytes, expected) in [
        ("empty.onnx", &b""[..], "empty file"),
        (
            "garbage.onnx",
            &b"\x0a\xff\xff\xff\xff\x0f"[..],
            "not a valid ONNX file",
        ),
        (
            "truncated.onnx",
            &good[..good.len() / 3],
            "not a valid ONNX file",
        ),
    ] {
        let path = write(name, bytes);
        for command in ["predict", "explain"] {
            let stderr = fails(&[
                command.as_ref(),
                "--model".as_ref(),
                path.as_os_str(),
                picture.as_os_str(),
            ]);
            assert!(
                stderr.contains(expected) && stderr.contains(name),
                "{stderr}"
            );
        }
    }
    let out = dir.path().join("out.npy");
    let run = |input: &Path| {
        fails(&[
            "run".as_ref(),
            "--model".as_ref(),
            fixture("resnet_style.onnx").as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ])
    };
    assert!(run(&fixture("inception_style_input.npy")).contains("the model takes [N, 1, 28, 28]"));
    assert!(run(&write("text.npy", b"hello")).contains("not a NumPy .npy file"));
    // A header that declares far more values than the file holds.
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let dict = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1, 28, 28), }";
    let mut padded = dict.to_vec();
    padded.resize(118, b' ');
    padded.push(b'\n');
    header.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    header.extend_from_slice(&padded);
    header.extend_from_slice(&[0; 64]);
    assert!(run(&write("huge.npy", &header)).contains("more than it holds"));
    assert!(!out.exists());
}
