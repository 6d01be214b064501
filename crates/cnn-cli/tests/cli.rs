//! The `cnn` binary as users and scripts call it: every subcommand, the command-line contract,
//! and every kind of bad input (one line on stderr, non-zero exit, no panic).

use assert_cmd::Command;
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tempfile::TempDir;

fn cnn() -> Command {
    Command::cargo_bin("cnn").expect("the cnn binary is built")
}

/// Runs `cnn` expecting failure; returns stderr after checking it is one line with no panic.
fn fails(args: &[&str]) -> String {
    let output = cnn().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{args:?} should fail");
    assert_ne!(
        output.status.code(),
        Some(101),
        "{args:?} panicked: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    stderr
}

/// One X/O model trained once for all the tests that need one.
fn trained_model() -> &'static Path {
    static MODEL: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = MODEL.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("xo.safetensors");
        cnn()
            .args(["train", "--quiet", "--epochs", "3", "--out"])
            .arg(&path)
            .assert()
            .success();
        (dir, path)
    });
    path
}

fn seed_picture(letter: char) -> GrayImage {
    let explain = cnn()
        .args(["explain", "--example", &letter.to_string(), "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    let mut picture = GrayImage::new(9, 9);
    for (y, row) in json["image"].as_array().unwrap().iter().enumerate() {
        for (x, v) in row.as_array().unwrap().iter().enumerate() {
            let ink = v.as_f64().unwrap() > 0.0;
            picture.put_pixel(x as u32, y as u32, Luma([if ink { 255 } else { 0 }]));
        }
    }
    picture
}

/// A letter drawn black on white, as in a paint program: `size` pixels, shifted by
/// (`dx`, `dy`) pixels and rotated by `angle` radians, with strokes `width` pixels wide.
fn drawn_letter(letter: char, size: u32, dx: f32, dy: f32, angle: f32, width: f32) -> RgbImage {
    let s = size as f32;
    let (cx, cy, r) = (s / 2.0 + dx, s / 2.0 + dy, s * 0.32);
    let (sin, cos) = angle.sin_cos();
    RgbImage::from_fn(size, size, |x, y| {
        let (px, py) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let (u, v) = (cos * px + sin * py, -sin * px + cos * py);
        let distance = match letter {
            'x' => {
                let along = |a: f32, b: f32| {
                    let t = ((a + b) / 2.0).clamp(-r, r);
                    ((a - t).powi(2) + (b - t).powi(2)).sqrt()
                };
                along(u, v).min(along(u, -v))
            }
            _ => ((u * u + v * v).sqrt() - r).abs(),
        };
        if distance < width / 2.0 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    })
}

#[test]
fn explain_json_is_one_object_with_every_stage() {
    let output = cnn()
        .args(["explain", "--example", "x", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.trim_end().lines().count(), 1);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = json["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["\\", "X", "/"]);
    // The article's figure: 0.77 (7/9) at the top left of the `\` map, -0.11 one step right.
    let conv = &json["conv"][0];
    assert!((conv[0][0].as_f64().unwrap() - 7.0 / 9.0).abs() < 1e-6);
    assert!((conv[0][1].as_f64().unwrap() + 1.0 / 9.0).abs() < 1e-6);
    assert_eq!(json["pool"][0].as_array().unwrap().len(), 4);
}

#[test]
fn explain_prints_grids_and_writes_pngs() {
    let dir = TempDir::new().unwrap();
    let output = cnn()
        .args([
            "explain",
            "--example",
            "o",
            "--pool",
            "avg",
            "--stride",
            "2",
            "--png",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("conv \\ (4x4)"), "{text}");
    assert!(text.contains("pool X (2x2)"), "{text}");
    for name in [
        "image",
        "feature_x",
        "conv_backslash",
        "relu_slash",
        "pool_x",
    ] {
        let picture = image::open(dir.path().join(format!("{name}.png"))).unwrap();
        assert!(picture.width() > 9, "{name}");
    }
}

#[test]
fn train_prints_layers_and_eval_reaches_99_percent() {
    let model = trained_model();
    let output = cnn()
        .args(["eval", "--json", "--model"])
        .arg(model)
        .output()
        .unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let accuracy = json["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.99, "accuracy {accuracy}");
    assert!(json["loss"].as_f64().unwrap() > 0.0);
    assert_eq!(json["classes"], serde_json::json!(["X", "O"]));
    let confusion = json["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, json["images"].as_u64().unwrap());

    let table = cnn().args(["eval", "--model"]).arg(model).output().unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("accuracy") && table.contains("confusion"),
        "{table}"
    );
}

#[test]
fn train_summary_has_one_line_per_layer() {
    let dir = TempDir::new().unwrap();
    let output = cnn()
        .args([
            "train", "--quiet", "--epochs", "1", "--data", "xo:16", "--arch",
        ])
        .arg("conv 4@3x3, relu, avgpool 2 ceil, dense classes")
        .arg("--out")
        .arg(dir.path().join("m.safetensors"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    for line in [
        "conv 4@3x3",
        "4x14x14",
        "avgpool 2 ceil",
        "4x7x7",
        "flatten",
        "196",
        "dense 2",
    ] {
        assert!(text.contains(line), "missing {line}: {text}");
    }
    assert!(dir.path().join("m.safetensors").exists());
}

#[test]
fn same_seed_gives_byte_identical_models() {
    let dir = TempDir::new().unwrap();
    let train = |name: &str, seed: &str| {
        let path = dir.path().join(name);
        cnn()
            .args([
                "train",
                "--quiet",
                "--epochs",
                "1",
                "--threads",
                "2",
                "--seed",
                seed,
            ])
            .args(["--data", "xo:20", "--out"])
            .arg(&path)
            .assert()
            .success();
        std::fs::read(path).unwrap()
    };
    let first = train("a.safetensors", "5");
    assert_eq!(first, train("b.safetensors", "5"));
    assert_ne!(first, train("c.safetensors", "6"));
}

#[test]
fn predict_reads_the_seed_images_and_drawn_letters() {
    let model = trained_model();
    let dir = TempDir::new().unwrap();
    let mut files = Vec::new();
    for letter in ['x', 'o'] {
        let seed = dir.path().join(format!("seed_{letter}.png"));
        seed_picture(letter).save(&seed).unwrap();
        files.push((seed, letter));
        for (i, (size, dx, dy, angle, width)) in [
            (64, 3.0, -2.0, 0.15, 4.0),
            (128, -6.0, 5.0, -0.2, 7.0),
            (300, 12.0, 10.0, 0.1, 14.0),
        ]
        .into_iter()
        .enumerate()
        {
            let ext = ["png", "jpg", "bmp"][i];
            let path = dir.path().join(format!("drawn_{letter}_{size}.{ext}"));
            drawn_letter(letter, size, dx, dy, angle, width)
                .save(&path)
                .unwrap();
            files.push((path, letter));
        }
    }
    let output = cnn()
        .args(["predict", "--json", "--model"])
        .arg(model)
        .args(files.iter().map(|(p, _)| p))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), files.len());
    for (line, (path, letter)) in lines.iter().zip(&files) {
        assert_eq!(line["file"], path.to_str().unwrap());
        let expected = letter.to_ascii_uppercase().to_string();
        assert_eq!(
            line["class"],
            expected.as_str(),
            "{}: {line}",
            path.display()
        );
        assert!(line["probability"].as_f64().unwrap() > 0.5);
    }

    let plain = cnn()
        .args(["predict", "--model"])
        .arg(model)
        .arg(&files[0].0)
        .output()
        .unwrap();
    assert!(String::from_utf8(plain.stdout).unwrap().contains(": X ("));
}

#[test]
fn bad_model_files_are_one_line_errors() {
    let dir = TempDir::new().unwrap();
    let model = std::fs::read(trained_model()).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.safetensors", vec![], "empty"),
        ("short.safetensors", vec![1, 2, 3], "too short"),
        (
            "text.safetensors",
            b"this is not a model at all".to_vec(),
            "not a valid safetensors",
        ),
        (
            "truncated.safetensors",
            model[..model.len() - 100].to_vec(),
            "not a valid safetensors",
        ),
        (
            "header.safetensors",
            {
                let mut m = model.clone();
                m[20] = b'#';
                m
            },
            "not a valid safetensors",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let stderr = fails(&["eval", "--model", path.to_str().unwrap()]);
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: the file is named: {stderr}");
    }
    // A valid safetensors file that is not a cnn model.
    let foreign = dir.path().join("foreign.safetensors");
    let data = [0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, &foreign).unwrap();
    let stderr = fails(&["predict", "--model", foreign.to_str().unwrap(), "x.png"]);
    assert!(stderr.contains("not a cnn model"), "{stderr}");
    let stderr = fails(&["eval", "--model", "/nonexistent/model.safetensors"]);
    assert!(stderr.contains("No such file"), "{stderr}");
}

#[test]
fn bad_images_are_one_line_errors() {
    let model = trained_model().to_str().unwrap();
    let dir = TempDir::new().unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, b"not an image").unwrap();
    let truncated = dir.path().join("cut.png");
    let mut png = Vec::new();
    seed_picture('x')
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    for (path, expected) in [
        (empty, "empty"),
        (text, "not an image"),
        (truncated, "cannot decode"),
        (dir.path().join("missing.png"), "No such file"),
    ] {
        let stderr = fails(&["predict", "--model", model, path.to_str().unwrap()]);
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
    }
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("never.safetensors");
    let out = out.to_str().unwrap();
    for (args, expected) in [
        (
            vec!["train", "--arch", "resnet", "--out", out],
            "unknown preset `resnet`",
        ),
        (
            vec!["train", "--arch", "conv 8@3x3, wobble", "--out", out],
            "unknown layer `wobble`",
        ),
        (
            vec![
                "train",
                "--arch",
                "conv 8@30x30, dense classes",
                "--out",
                out,
            ],
            "layer 0 (conv 8@30x30)",
        ),
        (
            vec![
                "train",
                "--arch",
                "conv 8@3x3, maxpool 2, conv 8@15x15, dense 2",
                "--out",
                out,
            ],
            "layer 2 (conv 8@15x15) does not fit its input 8x13x13",
        ),
        (
            vec!["train", "--data", "mnist", "--out", out],
            "unknown data set",
        ),
        (vec!["train", "--epochs", "0", "--out", out], "--epochs"),
        (vec!["train", "--lr", "-1", "--out", out], "--lr"),
        (vec!["train", "--threads", "0", "--out", out], "--threads"),
        (vec!["train", "--bogus"], "--bogus"),
        (vec!["explain"], "--example"),
        (vec!["explain", "--example", "y"], "invalid value"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let stderr = fails(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!Path::new(out).exists(), "no model file after a failed run");
}

/// `CNN_KERNELS` naming an unknown instruction set, or one this CPU lacks, is one line naming
/// what the CPU has; a supported one is used (`cnn bench` says which).
#[test]
fn kernels_variable_is_checked_and_obeyed() {
    let run = |value: &str| {
        cnn()
            .env("CNN_KERNELS", value)
            .args([
                "bench",
                "--arch",
                "xo",
                "--phases",
                "latency",
                "--repeats",
                "1",
            ])
            .args(["--seconds", "0.01", "--json"])
            .output()
            .unwrap()
    };
    let output = run("sse9");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CNN_KERNELS=sse9") && stderr.contains("avx512, avx2 or portable"));
    for isa in cnn::kernels::simd::Isa::ALL {
        let output = run(isa.name());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if isa.is_supported() {
            assert!(output.status.success(), "{isa}: {stderr}");
            let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(report["kernels"], isa.name());
            let conv = &report["layers"][0]["kernel"];
            assert!(conv.as_str().unwrap().starts_with(isa.name()), "{conv}");
        } else {
            assert_eq!(output.status.code(), Some(1), "{isa}");
            assert!(
                stderr.contains("cannot run") && stderr.contains("it has: "),
                "{stderr}"
            );
        }
    }
}

/// A picture's share of pixels that are neither white nor grey: how much of it is drawn in
/// colour (the maps, bars and curves).
fn coloured_share(picture: &image::RgbImage) -> f64 {
    let coloured = picture
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            r.max(g).max(b) - r.min(g).min(b) > 40
        })
        .count();
    coloured as f64 / (picture.width() * picture.height()) as f64
}

#[test]
fn explain_a_model_writes_a_picture_per_layer_and_an_index() {
    let model = trained_model();
    let dir = TempDir::new().unwrap();
    let x = dir.path().join("x.png");
    drawn_letter('x', 96, 2.0, -3.0, 0.1, 6.0).save(&x).unwrap();
    let out = dir.path().join("explain");
    let output = cnn()
        .args(["explain", "--model"])
        .arg(model)
        .arg(&x)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    // The summary (one line per layer) and the top class, X, first.
    assert!(text.contains("conv 8@3x3 pad=1"), "{text}");
    assert!(text.contains("maxpool 2"), "{text}");
    let top = text
        .lines()
        .skip_while(|l| !l.starts_with("top classes"))
        .nth(1)
        .unwrap();
    assert!(top.trim_start().starts_with('X'), "{text}");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let layers = [
        "layer_00_conv2d.png",
        "layer_01_relu.png",
        "layer_02_maxpool2d.png",
        "layer_03_conv2d.png",
        "layer_04_relu.png",
        "layer_05_maxpool2d.png",
        "layer_06_flatten.png",
        "layer_07_dense.png",
    ];
    for name in layers
        .iter()
        .chain(&["input.png", "filters.png", "probabilities.png"])
    {
        assert!(html.contains(name), "index.html does not show {name}");
        let picture = image::open(out.join(name)).unwrap().to_rgb8();
        assert!(picture.width() >= 300, "{name}");
        assert!(coloured_share(&picture) > 0.005, "{name} looks blank");
    }
    // Each layer's summary line is on the page.
    assert!(
        html.contains("0 conv 8@3x3 pad=1  1x28x28 -&gt; 8x28x28  80 params"),
        "{html}"
    );
    // The first conv layer's 8 maps at 28x28: a grid taller than one row of maps.
    let conv = image::open(out.join("layer_00_conv2d.png")).unwrap();
    assert!(conv.height() > 200, "{}", conv.height());
}

#[test]
fn explain_a_model_json_and_one_layer() {
    let model = trained_model();
    let dir = TempDir::new().unwrap();
    let o = dir.path().join("o.png");
    drawn_letter('o', 64, 0.0, 0.0, 0.0, 5.0).save(&o).unwrap();
    let output = cnn()
        .args(["explain", "--json", "--layer", "2", "--model"])
        .arg(model)
        .arg(&o)
        .output()
        .unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["class"], "O");
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["index"], 2);
    let maps = layers[0]["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 8);
    assert_eq!(maps[0].as_array().unwrap().len(), 14);
    assert_eq!(json["input"][0].as_array().unwrap().len(), 28);

    let out = dir.path().join("one");
    cnn()
        .args(["explain", "--layer", "3", "--out"])
        .arg(&out)
        .arg("--model")
        .arg(model)
        .arg(&o)
        .assert()
        .success();
    assert!(out.join("layer_03_conv2d.png").exists());
    assert!(!out.join("layer_00_conv2d.png").exists());

    let stderr = fails(&[
        "explain",
        "--layer",
        "99",
        "--model",
        model.to_str().unwrap(),
        o.to_str().unwrap(),
    ]);
    assert!(stderr.contains("--layer 99"), "{stderr}");
    let stderr = fails(&["explain", "--model", model.to_str().unwrap(), "missing.png"]);
    assert!(stderr.contains("missing.png"), "{stderr}");
}

#[test]
fn train_draws_curves_and_eval_draws_the_confusion_matrix() {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("small.safetensors");
    cnn()
        .args([
            "train", "--quiet", "--data", "xo:16", "--epochs", "2", "--out",
        ])
        .arg(&model)
        .assert()
        .success();
    for ext in ["png", "svg"] {
        let path = dir.path().join(format!("small.training.{ext}"));
        assert!(path.exists(), "{} missing", path.display());
    }
    let curves = image::open(dir.path().join("small.training.png"))
        .unwrap()
        .to_rgb8();
    assert!(coloured_share(&curves) > 0.001, "the curves look blank");
    let svg = std::fs::read_to_string(dir.path().join("small.training.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("held out") && svg.contains("epoch"));

    let chosen = dir.path().join("curves");
    let other = dir.path().join("other.safetensors");
    cnn()
        .args([
            "train", "--quiet", "--data", "xo:16", "--epochs", "1", "--plot",
        ])
        .arg(&chosen)
        .arg("--out")
        .arg(&other)
        .assert()
        .success();
    assert!(dir.path().join("curves.png").exists());
    assert!(dir.path().join("curves.svg").exists());
    assert!(!dir.path().join("other.training.png").exists());

    let none = dir.path().join("none.safetensors");
    cnn()
        .args([
            "train",
            "--quiet",
            "--data",
            "xo:16",
            "--epochs",
            "1",
            "--no-plot",
            "--out",
        ])
        .arg(&none)
        .assert()
        .success();
    assert!(!dir.path().join("none.training.png").exists());

    let matrix = dir.path().join("confusion.png");
    cnn()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--plot")
        .arg(&matrix)
        .assert()
        .success();
    let picture = image::open(&matrix).unwrap().to_rgb8();
    assert!(picture.width() >= 400 && coloured_share(&picture) > 0.01);
    let matrix_svg = dir.path().join("confusion.svg");
    cnn()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--plot")
        .arg(&matrix_svg)
        .assert()
        .success();
    let svg = std::fs::read_to_string(&matrix_svg).unwrap();
    assert!(
        svg.contains("\nX\n") && svg.contains("\nO\n") && svg.contains("predicted"),
        "{svg}"
    );
    let stderr = fails(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--plot",
        "/nonexistent-dir/m.png",
    ]);
    assert!(stderr.contains("confusion"), "{stderr}");
}

/// A run stopped after epoch 1 and resumed from its checkpoint ends with the same model file,
/// byte for byte, as a run never interrupted: with batch normalisation, dropout, augmentation,
/// AdamW and a cosine schedule, whose state all lives in the checkpoint or follows the seed.
#[test]
fn resumed_training_gives_the_same_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.safetensors");
    let resumed = dir.path().join("resumed.safetensors");
    let args = |out: &Path| {
        vec![
            "--threads".to_string(),
            "2".into(),
            "train".into(),
            "--quiet".into(),
            "--arch".into(),
            "conv 8@3x3 pad=1 nobias, batchnorm, relu, maxpool 2, dropout 0.2, dense classes"
                .into(),
            "--epochs".into(),
            "3".into(),
            "--optimizer".into(),
            "adamw".into(),
            "--weight-decay".into(),
            "0.01".into(),
            "--schedule".into(),
            "cosine".into(),
            "--warmup".into(),
            "1".into(),
            "--shift".into(),
            "2".into(),
            "--flip".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    cnn().args(args(&whole)).assert().success();
    let mut first = args(&resumed);
    first.extend(["--stop-after".to_string(), "1".into()]);
    cnn().args(first).assert().success();
    assert!(!resumed.exists(), "a stopped run writes no model");
    let checkpoint = dir.path().join("resumed.safetensors.ckpt");
    let output = cnn()
        .args(["--threads", "2", "train", "--quiet", "--resume"])
        .arg(&checkpoint)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("resuming after epoch 1 of 3"));
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap(),
        "the resumed run's model differs from the uninterrupted run's"
    );
    // A damaged checkpoint is a one-line error.
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    let error = fails(&["train", "--resume", checkpoint.to_str().unwrap()]);
    assert!(error.contains("resumed.safetensors.ckpt"), "{error}");
}
