//! The `cnn` binary as users and scripts call it: every subcommand, the command-line contract,
//! and every kind of bad input (one line on stderr, non-zero exit, no panic).

mod common;

use assert_cmd::Command;
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tempfile::TempDir;

fn cnn() -> Command {
    Command::cargo_bin("cnn").expect("the cnn binary is built")
}

/// Runs `cnn` expecting failure (status 1); returns stderr after checking it is one line with
/// no panic.
fn fails(args: &[&str]) -> String {
    let output = cnn().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{args:?} should fail with status 1: {stderr}"
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

/// Runs `cnn` expecting a usage error: status 2 and clap's layout (the message, the usage line,
/// the pointer to --help), no panic. Returns stderr.
fn usage_fails(args: &[&str]) -> String {
    let output = cnn().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?} should be a usage error: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        stderr.contains("For more information, try '--help'."),
        "{args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// One X/O model trained once for all the tests that need one, as `cnn train` trains it.
fn trained_model() -> &'static Path {
    static MODEL: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = MODEL.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("xo.safetensors");
        cnn()
            .args(["train", "--quiet", "--out"])
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
    // The verdict after pooling: the O is read as O.
    assert!(text.contains("the O is read as O"), "{text}");
    for name in [
        "image",
        "feature_x",
        "conv_backslash",
        "relu_slash",
        "pool_x",
        "verdict_x",
        "verdict_o",
    ] {
        // Labelled pictures with their values and a legend, not bare squares.
        let picture = image::open(dir.path().join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        assert!(picture.width() >= 360 && picture.height() >= 190, "{name}");
        let dark = picture
            .pixels()
            .filter(|p| p.0.iter().all(|&c| c < 60))
            .count();
        assert!(dark > 200, "{name}: {dark} dark pixels, no text");
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
        .args(["train", "--epochs", "1", "--data", "xo:16", "--arch"])
        .arg("conv 4@3x3, relu, avgpool 2 ceil, dense classes")
        .arg("--out")
        .arg(dir.path().join("m.safetensors"))
        .output()
        .unwrap();
    common::assert_success(&output);
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
    common::assert_success(&output);
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
    common::assert_success(&output);
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
    assert_eq!(json["classes"], serde_json::json!(["X", "O"]));
    assert_eq!(json["probabilities"].as_array().unwrap().len(), 2);
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

/// `--attribution all`: four heatmaps for the top class, as PNGs on the page and as 28x28 maps
/// in the JSON; integrated gradients put most of the evidence for X on the strokes (the input
/// pixels above the background), not on the page. `--class` explains the other class,
/// `--target-layer` moves Grad-CAM; unknown names get one line.
#[test]
fn explain_attributions_show_which_pixels_decided() {
    let model = trained_model();
    let dir = TempDir::new().unwrap();
    let x = dir.path().join("x.png");
    drawn_letter('x', 96, 2.0, -3.0, 0.1, 6.0).save(&x).unwrap();
    let out = dir.path().join("why");
    let output = cnn()
        .args(["explain", "--attribution", "all", "--json", "--out"])
        .arg(&out)
        .arg("--model")
        .arg(model)
        .arg(&x)
        .output()
        .unwrap();
    common::assert_success(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let maps = json["attributions"].as_array().unwrap();
    let methods: Vec<&str> = maps.iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["gradcam", "saliency", "integrated-gradients", "occlusion"]
    );
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("<h2>why X?</h2>"), "{html}");
    for map in maps {
        assert_eq!(map["class"], "X");
        let rows = map["map"].as_array().unwrap();
        assert_eq!((rows.len(), rows[0].as_array().unwrap().len()), (28, 28));
        let file = format!("attribution_{}.png", map["method"].as_str().unwrap());
        assert!(html.contains(&file), "index.html does not show {file}");
        let picture = image::open(out.join(&file)).unwrap().to_rgb8();
        assert!(coloured_share(&picture) > 0.005, "{file} looks blank");
    }
    assert_eq!(maps[0]["detail"], "node 4");
    let values = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let input = values(&json["input"][0]);
    let integrated = values(&maps[2]["map"]);
    let (mut on_strokes, mut total) = (0.0, 0.0);
    for (&pixel, &evidence) in input.iter().zip(&integrated) {
        if evidence > 0.0 {
            total += evidence;
            if pixel > -0.5 {
                on_strokes += evidence;
            }
        }
    }
    assert!(
        on_strokes > 0.8 * total,
        "integrated gradients put {on_strokes} of {total} on the strokes"
    );

    let other = cnn()
        .args(["explain", "--json", "--attribution", "gradcam,saliency"])
        .args(["--class", "O", "--target-layer", "1", "--model"])
        .arg(model)
        .arg(&x)
        .output()
        .unwrap();
    common::assert_success(&other);
    let json: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(json["attributions"][0]["class"], "O");
    assert_eq!(json["attributions"][0]["detail"], "node 1");
    assert_eq!(json["attributions"].as_array().unwrap().len(), 2);
    let model = model.to_str().unwrap();
    let x = x.to_str().unwrap();
    let stderr = fails(&[
        "explain",
        "--attribution",
        "saliency",
        "--class",
        "Y",
        "--model",
        model,
        x,
    ]);
    assert!(
        stderr.contains("--class \"Y\": the model's classes are X, O"),
        "{stderr}"
    );
    let stderr = fails(&[
        "explain",
        "--attribution",
        "gradcam",
        "--target-layer",
        "nowhere",
        "--model",
        model,
        x,
    ]);
    assert!(stderr.contains("no node \"nowhere\""), "{stderr}");
    let stderr = fails(&[
        "explain",
        "--attribution",
        "gradcam",
        "--target-layer",
        "7",
        "--model",
        model,
        x,
    ]);
    assert!(stderr.contains("Grad-CAM needs feature maps"), "{stderr}");
}

/// A model small enough to compute by hand: a 4x4 grey picture, `conv 2@3x3 pad=1, relu,
/// maxpool 2, dense 2` with chosen weights, pixels taken as they are (0 or 1).
fn hand_model(dir: &Path) -> (PathBuf, PathBuf) {
    use cnn::{arch, model_file, preprocess::Preprocessing, Model, Network, Shape};
    let shape = Shape::new(1, 4, 4);
    let architecture = arch::parse("conv 2@3x3 pad=1, relu, maxpool 2, dense classes", 2).unwrap();
    let mut network = Network::new(&architecture, shape).unwrap();
    let mut dense = vec![0.0f32; 16];
    dense[8] = 2.0; // class b's weight on pooled channel 0, row 0, column 0
    let values: [Vec<f32>; 4] = [
        [[1.0, 0.0, -1.0, 0.0, 2.0, 0.0, -1.0, 0.0, 1.0], [0.5; 9]].concat(),
        vec![0.5, -1.0],
        dense,
        vec![0.0, 0.25],
    ];
    for (param, value) in network.params_mut().zip(values) {
        param.value = value;
    }
    let model = Model::new(
        network,
        vec!["a".into(), "b".into()],
        Preprocessing::identity(1),
    )
    .unwrap();
    let path = dir.join("hand.safetensors");
    model_file::save(&model, &path).unwrap();
    let picture = dir.join("hand.png");
    let ones = [
        [1, 1, 0, 0], //
        [0, 1, 1, 0],
        [0, 0, 1, 1],
        [1, 0, 0, 1],
    ];
    image::GrayImage::from_fn(4, 4, |x, y| {
        image::Luma([255 * ones[y as usize][x as usize]])
    })
    .save(&picture)
    .unwrap();
    (path, picture)
}

/// `--at` on the hand model, each figure computed by hand:
/// - conv channel 0 at (1,1): the window [[1,1,0],[0,1,1],[0,0,1]] times [[1,0,-1],[0,2,0],
///   [-1,0,1]]: products 1, 0, 0, 0, 2, 0, 0, 0, 1, sum 4, + bias 0.5 = 4.5; ReLU 4.5.
/// - at (0,0) the window's top row and left column are padding: 1*2 + 1*0 + 0*0 + 1*1 = 3,
///   + 0.5 = 3.5.
/// - max pooling at (0,0) over the ReLU of conv channel 0 at (0,0), (0,1), (1,0), (1,1): 3.5,
///   3.5, max(0, -1 + 0.5) = 0, 4.5: the fourth wins, 4.5.
/// - class b's score: 2 * 4.5 (pooled channel 0 at (0,0), value 0 of the flattened maps) +
///   0.25 = 9.25.
#[test]
fn explain_at_shows_a_cells_arithmetic_as_computed_by_hand() {
    let dir = TempDir::new().unwrap();
    let (model, picture) = hand_model(dir.path());
    let at = |position: &str| {
        let output = cnn()
            .args(["explain", "--at", position, "--model"])
            .arg(&model)
            .arg(&picture)
            .output()
            .unwrap();
        common::assert_success(&output);
        String::from_utf8(output.stdout).unwrap()
    };
    let conv = at("0:0,1,1");
    assert!(
        conv.starts_with(
            "node 0 (conv 2@3x3 pad=1, reads the input), channel 0, row 1, column 1:\n"
        ),
        "{conv}"
    );
    assert!(
        conv.contains("the input, channel 0, rows 0-2, columns 0-2"),
        "{conv}"
    );
    assert!(conv.contains("     1.0000   1.0000   0.0000      1.0000   0.0000  -1.0000      1.0000   0.0000  -0.0000"), "{conv}");
    assert!(
        conv.contains(
            "  sum of the products: 4.0000\n+ bias 0.5000\n= 4.5000\n(the engine computed 4.5000)"
        ),
        "{conv}"
    );
    assert!(conv.contains("then node 1 (relu, reads node 0), channel 0, row 1, column 1:\nrelu: max(0, x) with x = 4.5000: 4.5000"), "{conv}");
    let corner = at("0:0,0,0");
    assert!(corner.contains("        pad      pad      pad"), "{corner}");
    assert!(corner.contains("= 3.5000\n"), "{corner}");
    let pool = at("2:0,0,0");
    assert!(
        pool.contains("the largest value in a window of node 1, channel 0:"),
        "{pool}"
    );
    assert!(
        pool.contains("     3.5000   3.5000\n     0.0000 [4.5000]"),
        "{pool}"
    );
    assert!(
        pool.contains("= 4.5000 (row 1, column 1 of node 1; marked [ ])"),
        "{pool}"
    );
    let dense = at("4:1");
    assert!(
        dense.starts_with("node 4 (dense 2, reads node 3), value 1 (the score of class b):"),
        "{dense}"
    );
    assert!(
        dense.contains(
            "  value 0 (node 2, channel 0, row 0, column 0): 4.5000 x weight 2.0000 = 9.0000"
        ),
        "{dense}"
    );
    assert!(
        dense.contains("  sum of the products: 9.0000\n+ bias 0.2500\n= 9.2500"),
        "{dense}"
    );
    // The JSON carries the same numbers.
    let output = cnn()
        .args(["explain", "--json", "--at", "2:0,0,0", "--model"])
        .arg(&model)
        .arg(&picture)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["arithmetic"]["kind"], "pool");
    assert_eq!(json["arithmetic"]["winner"], 3);
    assert_eq!(json["arithmetic"]["result"], 4.5);
    let model = model.to_str().unwrap();
    let picture = picture.to_str().unwrap();
    for (position, message) in [
        (
            "2:0,2,0",
            "node 2 outputs 2x2x2: it has channels 0 to 1, rows 0 to 1, columns 0 to 1",
        ),
        ("9:0", "no node \"9\""),
        ("2:a,b", "the position must be numbers"),
        ("2", "give NODE:CHANNEL,ROW,COLUMN"),
        ("2:1,2", "give one number (a flat output) or three"),
    ] {
        let stderr = fails(&["explain", "--at", position, "--model", model, picture]);
        assert!(stderr.contains(message), "{position}: {stderr}");
    }
}

/// `eval --gallery`: the confusion matrix as the first page, with the counts of `eval --json`;
/// every link and picture of every page exists; a cell's images come highest loss first.
#[test]
fn eval_gallery_links_every_cell_to_its_images() {
    let model = trained_model();
    let dir = TempDir::new().unwrap();
    let gallery = dir.path().join("gallery");
    let output = cnn()
        .args(["eval", "--json", "--gallery"])
        .arg(&gallery)
        .arg("--model")
        .arg(model)
        .output()
        .unwrap();
    common::assert_success(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let confusion = json["confusion"].as_array().unwrap();
    let index = std::fs::read_to_string(gallery.join("index.html")).unwrap();
    let mut pages = 0;
    for entry in std::fs::read_dir(&gallery).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "html") {
            continue;
        }
        pages += 1;
        let html = std::fs::read_to_string(&path).unwrap();
        for attribute in ["href=\"", "src=\""] {
            for target in html.split(attribute).skip(1) {
                let target = &target[..target.find('"').unwrap()];
                assert!(
                    gallery.join(target).is_file(),
                    "{}: {target} is missing",
                    path.display()
                );
            }
        }
        // Each image's card: `<br>#INDEX loss LOSS<br>`.
        let losses: Vec<f64> = html
            .split("<br>#")
            .skip(1)
            .map(|card| {
                let loss = card.split(" loss ").nth(1).unwrap();
                loss.split('<').next().unwrap().parse().unwrap()
            })
            .collect();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name.starts_with("cell-") {
            assert!(
                losses.windows(2).all(|w| w[0] >= w[1]),
                "{name}: {losses:?}"
            );
            let (t, p) = name
                .trim_start_matches("cell-")
                .trim_end_matches(".html")
                .split_once('-')
                .unwrap();
            let (t, p): (usize, usize) = (t.parse().unwrap(), p.parse().unwrap());
            let count = confusion[t][p].as_u64().unwrap();
            assert!(
                index.contains(&format!("<a href=\"{name}\">{count}</a>")),
                "{name}"
            );
            assert_eq!(losses.len() as u64, count.min(40), "{name}");
        }
    }
    let cells = confusion
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .filter(|c| c.as_u64().unwrap() > 0)
        .count();
    assert_eq!(pages, cells + 1, "a page per non-empty cell and the index");
    assert!(gallery.join("images").read_dir().unwrap().count() > 40);
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
/// AdamW, label smoothing and a cosine schedule, whose state all lives in the checkpoint or
/// follows the seed.
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
            "--label-smoothing".into(),
            "0.1".into(),
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
        .args(["--threads", "2", "train", "--resume"])
        .arg(&checkpoint)
        .output()
        .unwrap();
    common::assert_success(&output);
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

/// Usage errors are clap's messages whole, with status 2: what is missing, what was meant,
/// what is allowed, what conflicts; the command's own refusals look the same.
#[test]
fn usage_errors_are_whole_with_status_2() {
    let stderr = usage_fails(&["predict", "--model", "xo.safetensors"]);
    assert!(
        stderr.contains("the following required arguments were not provided")
            && stderr.contains("<PATH>...")
            && stderr.contains("Usage: cnn predict"),
        "{stderr}"
    );
    let stderr = usage_fails(&["trian"]);
    assert!(
        stderr.contains("unrecognized subcommand 'trian'")
            && stderr.contains("a similar subcommand exists: 'train'"),
        "{stderr}"
    );
    let stderr = usage_fails(&["train", "--optimizer", "rmsprop"]);
    assert!(
        stderr.contains("[possible values: sgd, adam, adamw]"),
        "{stderr}"
    );
    let stderr = usage_fails(&["train", "--plot", "p", "--no-plot"]);
    assert!(
        stderr.contains("cannot be used with") && stderr.contains("--no-plot"),
        "{stderr}"
    );
    let stderr = usage_fails(&["explain"]);
    assert!(stderr.contains("--example"), "{stderr}");
    for (args, expected) in [
        (vec!["train", "--bogus"], "--bogus"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["explain", "--example", "y"], "invalid value"),
        (vec!["train", "--threads", "0"], "--threads"),
        (vec!["train", "--epochs", "0"], "--epochs"),
        (vec!["train", "--lr", "-1"], "--lr"),
        (vec!["train", "--data", "mnist"], "unknown data set"),
        (
            vec!["train", "--momentum", "0.5"],
            "--momentum applies to --optimizer sgd only",
        ),
        (
            vec!["train", "--optimizer", "adamw", "--nesterov"],
            "--nesterov applies to --optimizer sgd only",
        ),
        (vec!["train", "--step-every", "3"], "--schedule step only"),
        (vec!["train", "--val-split", "1"], "--val-split must be"),
        (
            vec!["train", "--label-smoothing", "1"],
            "--label-smoothing must be",
        ),
        (
            vec!["train", "--val-split", "0.2"],
            "the X/O data has a validation split of its own",
        ),
        (vec!["train", "--size", "8x8"], "apply to folder: data only"),
        (
            vec!["train", "--data", "idx:/tmp", "--save-best"],
            "give --val-split",
        ),
        (vec!["train", "--warmup", "9"], "--warmup 9 is longer"),
        (
            vec!["predict", "--model", "m", "--min-confidence", "2", "x.png"],
            "--min-confidence",
        ),
    ] {
        let stderr = usage_fails(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // The command's own refusals name the subcommand in the usage line.
    let stderr = usage_fails(&["train", "--momentum", "0.5"]);
    assert!(stderr.contains("Usage: cnn train"), "{stderr}");
    // Failures while doing the work are status 1.
    fails(&["eval", "--model", "/nonexistent/model.safetensors"]);
    fails(&["info", "/nonexistent/model.safetensors"]);
}

/// Colour follows --color (and NO_COLOR under auto); clap's errors too.
#[test]
fn color_is_chosen_by_flag() {
    let run = |args: &[&str]| {
        let output = cnn().args(args).output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let always = run(&["--color", "always", "explain", "--example", "x"]);
    assert!(always.contains("\x1b["), "no colour with --color always");
    let never = run(&["--color=never", "explain", "--example", "x"]);
    assert!(!never.contains("\x1b["), "colour with --color never");
    let output = cnn().args(["--color", "always", "trian"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("\x1b["));
    let output = cnn()
        .env("NO_COLOR", "1")
        .args(["explain", "--example", "x"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("\x1b["));
}

/// A picture file of `size` pixels a side for a batch: X's and O's of varied size, place and
/// stroke, black on white.
fn varied_letter(index: usize) -> (char, RgbImage) {
    let letter = if index.is_multiple_of(2) { 'x' } else { 'o' };
    let size = 40 + (index * 7 % 60) as u32;
    let shift = (index * 13 % 9) as f32 - 4.0;
    let angle = (index * 17 % 21) as f32 / 100.0 - 0.1;
    let width = size as f32 / 12.0 + 1.0;
    (
        letter,
        drawn_letter(letter, size, shift, -shift / 2.0, angle, width),
    )
}

#[test]
fn predict_a_folder_as_csv_and_json_lines() {
    let model = trained_model();
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("pictures");
    let mut expected = std::collections::BTreeMap::new();
    for index in 0..1000 {
        let (letter, picture) = varied_letter(index);
        let folder = root.join(format!("part{}", index % 3));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{letter}_{index:04}.png"));
        picture.save(&path).unwrap();
        expected.insert(path.display().to_string(), letter.to_ascii_uppercase());
    }
    let broken = root.join("part0").join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(root.join("notes.txt"), "not a picture").unwrap();

    let output = cnn()
        .args(["predict", "--format", "csv", "--top-k", "2", "--model"])
        .arg(model)
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a broken file makes it fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 of 1001 pictures"), "{stderr}");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("file,class,probability,class_2,probability_2,error")
    );
    let rows: Vec<Vec<String>> = lines.map(csv_row).collect();
    assert_eq!(rows.len(), 1001, "one row per picture, the broken one too");
    let mut right = 0;
    for row in &rows {
        assert_eq!(row.len(), 6, "{row:?}");
        if row[0] == broken.display().to_string() {
            assert!(
                row[1].is_empty() && row[5].contains("cannot decode"),
                "{row:?}"
            );
            continue;
        }
        assert!(row[5].is_empty(), "{row:?}");
        let (p1, p2): (f32, f32) = (row[2].parse().unwrap(), row[4].parse().unwrap());
        assert!(p1 >= p2 && (p1 + p2 - 1.0).abs() < 1e-5, "{row:?}");
        assert_ne!(row[1], row[3]);
        if row[1].chars().next() == expected.get(&row[0]).copied() {
            right += 1;
        }
    }
    assert!(right >= 970, "{right} of 1000 drawn letters read right");

    let output = cnn()
        .args(["predict", "--json", "--model"])
        .arg(model)
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1001);
    for line in &lines {
        if line["file"] == broken.to_str().unwrap() {
            assert!(line["error"].as_str().unwrap().contains("cannot decode"));
            assert!(line.get("class").is_none());
            continue;
        }
        assert_eq!(line["classes"], serde_json::json!(["X", "O"]), "{line}");
        let probabilities = line["probabilities"].as_array().unwrap();
        let logits = line["logits"].as_array().unwrap();
        assert_eq!((probabilities.len(), logits.len()), (2, 2));
        let index = usize::from(line["class"] == "O");
        // The class's probability is the same number, in the same precision, in both places.
        assert_eq!(line["probability"], probabilities[index], "{line}");
    }

    // A glob picks its files; --min-confidence marks answers below it.
    let pattern = root.join("part1").join("x_*.png");
    let output = cnn()
        .args([
            "predict",
            "--format",
            "csv",
            "--min-confidence",
            "0.9999",
            "--model",
        ])
        .arg(model)
        .arg(pattern.to_str().unwrap())
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with("file,class,probability,unsure,error\n"),
        "{text}"
    );
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let in_part1 = expected
        .keys()
        .filter(|p| p.contains("part1") && p.contains("/x_"))
        .count();
    assert_eq!(rows.len(), in_part1);
    for row in &rows {
        let cells: Vec<&str> = row.split(',').collect();
        let unsure = cells[2].parse::<f32>().unwrap() < 0.9999;
        assert_eq!(cells[3], unsure.to_string(), "{row}");
    }
    // A plus sign is neither letter: the model is unsure of it (X about 80%).
    let plus = root.join("plus.png");
    image::GrayImage::from_fn(96, 96, |x, y| {
        let bar = |v: u32| (43..53).contains(&v);
        let inside = |v: u32| (15..81).contains(&v);
        let ink = (bar(x) && inside(y)) || (bar(y) && inside(x));
        image::Luma([if ink { 0 } else { 255 }])
    })
    .save(&plus)
    .unwrap();
    let text_output = cnn()
        .args(["predict", "--min-confidence", "0.99", "--model"])
        .arg(model)
        .arg(&plus)
        .output()
        .unwrap();
    let text = String::from_utf8(text_output.stdout).unwrap();
    assert!(text.contains(": unsure ("), "{text}");
}

/// The fields of one CSV row (RFC 4180 quoting).
fn csv_row(line: &str) -> Vec<String> {
    let (mut cells, mut cell, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cell)),
            _ => cell.push(c),
        }
    }
    cells.push(cell);
    cells
}

/// `cnn info`: the layers, classes, input, preprocessing and how the model was trained.
#[test]
fn info_describes_a_model_and_its_training() {
    let model = trained_model();
    let output = cnn().args(["info", "--json"]).arg(model).output().unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["classes"], serde_json::json!(["X", "O"]));
    assert_eq!(json["input_shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(json["params"], 2818);
    assert_eq!(json["param_bytes"], 4 * 2818);
    assert_eq!(json["layers"].as_array().unwrap().len(), 8);
    assert_eq!(json["preprocessing"]["inversion"], "median_vs_extremes");
    assert_eq!(json["preprocessing"]["resize_filter"], "triangle");
    assert_eq!(
        json["preprocessing"]["luma_weights"],
        serde_json::json!([2126, 7152, 722])
    );
    let training = &json["training"];
    assert_eq!(training["data"], "xo");
    assert_eq!(training["settings"]["epochs"], 6);
    assert_eq!(training["settings"]["seed"], 1);
    assert_eq!(training["settings"]["optimizer"]["name"], "adam");
    assert_eq!(training["kept_epoch"], 6);
    assert_eq!(training["epochs"].as_array().unwrap().len(), 6);
    assert!(training["threads"].as_u64().unwrap() >= 1);
    assert_eq!(training["cnn_version"], env!("CARGO_PKG_VERSION"));
    assert!(training["test"]["accuracy"].as_f64().unwrap() >= 0.99);
    assert_eq!(training["test"]["images"], 2000);

    let output = cnn().arg("info").arg(model).output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "input: 1x28x28 (grey)",
        "classes (2): X, O",
        "conv 8@3x3 pad=1",
        "parameters: 2818",
        "trained on: xo (8000 training images, 1000 held out)",
        "epochs: 6 of 6 trained; the file holds epoch 6",
        "seed 1,",
    ] {
        assert!(text.contains(expected), "missing {expected}: {text}");
    }
}

/// The model file's tensors only (its metadata records the run, which differs between runs
/// that end with the same network).
fn tensors_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut named: Vec<(String, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    named.sort();
    named
}

fn train_xo16(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, std::process::Output) {
    let out = dir.join(name);
    let output = cnn()
        .args([
            "--threads",
            "2",
            "train",
            "--quiet",
            "--no-plot",
            "--data",
            "xo:16",
        ])
        .args(["--limit", "2000"])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    (out, output)
}

/// `--resume CKPT --epochs N` extends a finished run. With a schedule that does not depend on
/// the number of epochs (constant here), 2 epochs extended to 4 give the same file as 4
/// epochs; with cosine the rate follows the new plan from epoch 3 on, so the model differs.
#[test]
fn resume_extends_a_finished_run() {
    let dir = TempDir::new().unwrap();
    let (whole, output) = train_xo16(dir.path(), "whole.safetensors", &["--epochs", "4"]);
    assert!(output.status.success());
    let (short, output) = train_xo16(dir.path(), "short.safetensors", &["--epochs", "2"]);
    assert!(output.status.success());
    let checkpoint = dir.path().join("short.safetensors.ckpt");
    let extended = dir.path().join("extended.safetensors");
    let output = cnn()
        .args([
            "--threads",
            "2",
            "train",
            "--quiet",
            "--epochs",
            "4",
            "--resume",
        ])
        .arg(&checkpoint)
        .arg("--out")
        .arg(&extended)
        .output()
        .unwrap();
    common::assert_success(&output);
    // Not assert_eq!: it would print the two files.
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&extended).unwrap(),
        "2 epochs extended to 4 differ from 4 epochs"
    );
    assert_ne!(
        std::fs::read(&short).unwrap(),
        std::fs::read(&whole).unwrap()
    );

    // A finished run is not trained again without --epochs; flags a resume cannot change are
    // refused by name.
    let checkpoint = checkpoint.to_str().unwrap();
    let error = fails(&["train", "--resume", checkpoint]);
    assert!(
        error.contains("finished its 2 epochs") && error.contains("--epochs"),
        "{error}"
    );
    let error = fails(&["train", "--resume", checkpoint, "--epochs", "2"]);
    assert!(error.contains("has done 2 epochs"), "{error}");
    let error = usage_fails(&[
        "train", "--resume", checkpoint, "--lr", "0.1", "--batch", "8",
    ]);
    assert!(
        error.contains("cannot take --batch, --lr") || error.contains("cannot take --lr, --batch"),
        "{error}"
    );

    // Cosine: the extension follows the 4-epoch plan from epoch 3 on (the logged rates agree)
    // but epochs 1 and 2 ran on the 2-epoch plan.
    let cosine = ["--schedule", "cosine"];
    let log_whole = dir.path().join("whole.csv");
    let (cosine_whole, _) = train_xo16(
        dir.path(),
        "cosine_whole.safetensors",
        &[
            &cosine[..],
            &["--epochs", "4", "--log", log_whole.to_str().unwrap()],
        ]
        .concat(),
    );
    let (_, output) = train_xo16(
        dir.path(),
        "cosine_short.safetensors",
        &[&cosine[..], &["--epochs", "2"]].concat(),
    );
    assert!(output.status.success());
    let log_extended = dir.path().join("extended.csv");
    let cosine_extended = dir.path().join("cosine_extended.safetensors");
    cnn()
        .args([
            "--threads",
            "2",
            "train",
            "--quiet",
            "--epochs",
            "4",
            "--resume",
        ])
        .arg(dir.path().join("cosine_short.safetensors.ckpt"))
        .arg("--log")
        .arg(&log_extended)
        .arg("--out")
        .arg(&cosine_extended)
        .assert()
        .success();
    let rates = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(5).unwrap().to_string())
            .collect()
    };
    assert_eq!(rates(&log_whole)[2..], rates(&log_extended)[..]);
    assert!(tensors_of(&cosine_whole) != tensors_of(&cosine_extended));
}

/// Reads a training log: per epoch (validation accuracy, validation loss).
fn held_out_results(log: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[4].parse().unwrap(), cells[3].parse().unwrap())
        })
        .collect()
}

/// A rate that is fine for two epochs and then multiplied by 1e-38: from epoch 3 on no step
/// changes a weight, so no later epoch beats the best of the first two.
const FROZEN_AFTER_2: [&str; 6] = [
    "--schedule",
    "step",
    "--step-every",
    "2",
    "--step-gamma",
    "1e-38",
];

#[test]
fn save_best_keeps_the_best_held_out_epoch() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("log.csv");
    let (best, output) = train_xo16(
        dir.path(),
        "best.safetensors",
        &[
            &FROZEN_AFTER_2[..],
            &[
                "--epochs",
                "4",
                "--save-best",
                "--log",
                log.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    common::assert_success(&output);
    let results = held_out_results(&log);
    assert_eq!(results.len(), 4);
    // The best epoch by the rule: highest accuracy, then lowest loss.
    let best_epoch = (0..4)
        .max_by(|&a, &b| {
            let (accuracy_a, loss_a) = results[a];
            let (accuracy_b, loss_b) = results[b];
            accuracy_a
                .total_cmp(&accuracy_b)
                .then(loss_b.total_cmp(&loss_a))
                .then(b.cmp(&a))
        })
        .unwrap()
        + 1;
    assert!(
        best_epoch <= 2,
        "the frozen epochs should not be best: {results:?}"
    );
    assert_eq!(results[2], results[3], "nothing changes after epoch 2");
    let epochs = best_epoch.to_string();
    let (plain, output) = train_xo16(
        dir.path(),
        "plain.safetensors",
        &[&FROZEN_AFTER_2[..], &["--epochs", &epochs]].concat(),
    );
    assert!(output.status.success());
    assert_eq!(
        tensors_of(&best),
        tensors_of(&plain),
        "--save-best did not keep epoch {best_epoch}"
    );
    let info = cnn().args(["info", "--json"]).arg(&best).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["training"]["kept_epoch"], best_epoch);
    assert_eq!(json["training"]["last_epoch"], 4);
}

#[test]
fn patience_stops_when_the_held_out_result_stops_improving() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("log.csv");
    let (model, output) = train_xo16(
        dir.path(),
        "patient.safetensors",
        &[
            &FROZEN_AFTER_2[..],
            &[
                "--epochs",
                "12",
                "--patience",
                "2",
                "--log",
                log.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    common::assert_success(&output);
    let epochs = held_out_results(&log).len();
    // The best is epoch 1 or 2; two epochs after it without progress, training stops.
    assert!((3..=4).contains(&epochs), "{epochs} epochs trained");
    let info = cnn().args(["info", "--json"]).arg(&model).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["training"]["stopped_early"], true);
    assert_eq!(json["training"]["last_epoch"], epochs);
    // Resuming a run that stopped early does not train on.
    let checkpoint = dir.path().join("patient.safetensors.ckpt");
    let error = fails(&[
        "train",
        "--resume",
        checkpoint.to_str().unwrap(),
        "--epochs",
        "20",
    ]);
    assert!(error.contains("stopped early"), "{error}");
}

/// The new augmentations train, and the same seed gives the same model.
#[test]
fn augmentation_is_drawn_from_the_seed() {
    let dir = TempDir::new().unwrap();
    let augment = [
        "--epochs", "1", "--rotate", "15", "--scale", "0.1", "--noise", "0.05", "--cutout", "4",
    ];
    let (a, output) = train_xo16(dir.path(), "a.safetensors", &augment);
    common::assert_success(&output);
    let (b, _) = train_xo16(dir.path(), "b.safetensors", &augment);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (plain, _) = train_xo16(dir.path(), "plain.safetensors", &["--epochs", "1"]);
    assert_ne!(tensors_of(&a), tensors_of(&plain));
    usage_fails(&["train", "--rotate", "400"]);
    usage_fails(&["train", "--no-augment", "--cutout", "3"]);
}

/// `--size` and `--grey`/`--rgb` set the shape of folder images instead of the first one's.
#[test]
fn folder_images_take_the_size_and_colour_asked_for() {
    let dir = TempDir::new().unwrap();
    for split in ["train", "test"] {
        for index in 0..40 {
            let (letter, picture) = varied_letter(index);
            let folder = dir.path().join(split).join(letter.to_string());
            std::fs::create_dir_all(&folder).unwrap();
            picture.save(folder.join(format!("{index}.png"))).unwrap();
        }
    }
    let data = format!("folder:{}", dir.path().display());
    let out = dir.path().join("m.safetensors");
    cnn()
        .args([
            "train",
            "--quiet",
            "--no-plot",
            "--epochs",
            "1",
            "--data",
            &data,
        ])
        .args(["--size", "20x24", "--grey", "--out"])
        .arg(&out)
        .assert()
        .success();
    let info = cnn().args(["info", "--json"]).arg(&out).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["input_shape"], serde_json::json!([1, 20, 24]));
    // eval reads the test images at the model's shape.
    cnn().args(["eval", "--model"]).arg(&out).assert().success();
    let out_rgb = dir.path().join("rgb.safetensors");
    cnn()
        .args([
            "train",
            "--quiet",
            "--no-plot",
            "--epochs",
            "1",
            "--data",
            &data,
        ])
        .args(["--size", "16", "--rgb", "--out"])
        .arg(&out_rgb)
        .assert()
        .success();
    let info = cnn()
        .args(["info", "--json"])
        .arg(&out_rgb)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["input_shape"], serde_json::json!([3, 16, 16]));
}

/// What a user draws reads as they mean it: a black X on a transparent background, a drawing
/// inside a black frame, a strip letterboxed; a picture of too many pixels is refused before
/// it is decoded.
#[test]
fn pictures_read_the_way_a_user_means_them() {
    let model = trained_model();
    let dir = TempDir::new().unwrap();
    let predict = |path: &Path, extra: &[&str]| -> String {
        let output = cnn()
            .args(["predict", "--json", "--model"])
            .arg(model)
            .args(extra)
            .arg(path)
            .output()
            .unwrap();
        common::assert_success(&output);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["class"].as_str().unwrap().to_string()
    };
    for letter in ['x', 'o'] {
        let expected = letter.to_ascii_uppercase().to_string();
        // Black ink, fully transparent elsewhere (the transparent pixels are black too).
        let drawn = drawn_letter(letter, 96, 3.0, -2.0, 0.1, 8.0);
        let transparent = image::RgbaImage::from_fn(96, 96, |x, y| {
            let ink = drawn.get_pixel(x, y)[0] < 128;
            image::Rgba(if ink { [0, 0, 0, 255] } else { [0, 0, 0, 0] })
        });
        let path = dir.path().join(format!("transparent_{letter}.png"));
        transparent.save(&path).unwrap();
        assert_eq!(predict(&path, &[]), expected, "transparent {letter}");

        // The same drawing inside a thick black frame.
        let mut framed = drawn_letter(letter, 120, 0.0, 0.0, 0.0, 9.0);
        for (x, y, pixel) in framed.enumerate_pixels_mut() {
            if x < 6 || y < 6 || x >= 114 || y >= 114 {
                *pixel = Rgb([0, 0, 0]);
            }
        }
        let path = dir.path().join(format!("framed_{letter}.png"));
        framed.save(&path).unwrap();
        assert_eq!(predict(&path, &[]), expected, "framed {letter}");

        // A wide strip with the letter in its middle, read with its aspect ratio kept.
        let square = drawn_letter(letter, 80, 0.0, 0.0, 0.0, 7.0);
        let strip = RgbImage::from_fn(240, 80, |x, y| {
            if (80..160).contains(&x) {
                *square.get_pixel(x - 80, y)
            } else {
                Rgb([255, 255, 255])
            }
        });
        let path = dir.path().join(format!("strip_{letter}.png"));
        strip.save(&path).unwrap();
        assert_eq!(predict(&path, &["--letterbox"]), expected, "strip {letter}");
    }

    // A 12000 x 12000 PNG: only its header is written, which is all that is read.
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, png_header(12000, 12000)).unwrap();
    let started = std::time::Instant::now();
    let error = fails(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        bomb.to_str().unwrap(),
    ]);
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "{:?}",
        started.elapsed()
    );
    assert!(
        error.contains("12000x12000") && error.contains("megapixels"),
        "{error}"
    );
    let small = dir.path().join("small.png");
    drawn_letter('x', 64, 0.0, 0.0, 0.0, 5.0)
        .save(&small)
        .unwrap();
    let error = fails(&[
        "predict",
        "--max-pixels",
        "1000",
        "--model",
        model.to_str().unwrap(),
        small.to_str().unwrap(),
    ]);
    assert!(error.contains("64x64"), "{error}");
}

/// A PNG of a `width x height` grey picture that says so in its header and holds a few bytes of
/// pixel data: decoding it would ask for every pixel.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 0, 0, 0, 0]);
    // An empty zlib stream: a valid start of the pixel data.
    let data = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, body) in [
        (&b"IHDR"[..], &header[..]),
        (b"IDAT", &data),
        (b"IEND", &[]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(body);
        png.extend_from_slice(&(body.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

/// What `cnn train` prints is written for people: no Rust `Debug` text, held-out numbers that
/// add up; errors name the OS problem once.
#[test]
fn output_is_written_for_people() {
    let dir = TempDir::new().unwrap();
    let output = cnn()
        .args([
            "train",
            "--no-plot",
            "--data",
            "xo:16",
            "--limit",
            "500",
            "--epochs",
            "1",
        ])
        .args([
            "--optimizer",
            "sgd",
            "--schedule",
            "step",
            "--shift",
            "1",
            "--flip",
        ])
        .arg("--out")
        .arg(dir.path().join("m.safetensors"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let text =
        String::from_utf8(output.stdout).unwrap() + &String::from_utf8(output.stderr).unwrap();
    for debug in [
        "{", "}", "Some(", "None", "Sgd", "Step", "Constant", "Cosine", "false", "\x1b[30m",
    ] {
        assert!(!text.contains(debug), "`{debug}` in: {text}");
    }
    assert!(
        text.contains("the first 500 of 8000 training images (--limit), 1000 validation images"),
        "{text}"
    );
    assert!(text.contains("SGD (momentum 0.9)") && text.contains("rate x0.1 every 10 epochs"));
    let explain = cnn()
        .args(["explain", "--example", "o", "--pool", "avg"])
        .output()
        .unwrap();
    let explain = String::from_utf8(explain.stdout).unwrap();
    assert!(
        explain.contains(": O, ") && explain.contains("average pooling"),
        "{explain}"
    );

    let model = trained_model().to_str().unwrap();
    let error = fails(&["predict", "--model", model, "/nonexistent/x.png"]);
    assert_eq!(
        error.matches("No such file or directory").count(),
        1,
        "{error}"
    );
    assert!(!error.contains("os error"), "{error}");
    let gif = dir.path().join("cut.gif");
    std::fs::write(&gif, b"GIF89a\x10\x00\x10\x00").unwrap();
    let error = fails(&["predict", "--model", model, gif.to_str().unwrap()]);
    assert!(error.contains("this GIF image"), "{error}");

    // --quiet: nothing but results.
    let quiet = cnn()
        .args([
            "--quiet",
            "train",
            "--no-plot",
            "--data",
            "xo:16",
            "--limit",
            "200",
            "--epochs",
            "1",
        ])
        .arg("--out")
        .arg(dir.path().join("q.safetensors"))
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(quiet.stdout.is_empty() && quiet.stderr.is_empty());
}

/// Layers that need feature maps after flattened ones are refused when the network is built;
/// batch normalisation on one value per channel is an error, as in PyTorch; the metadata
/// records average pooling's divisor.
#[test]
fn architectures_other_tools_can_run() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("m.safetensors");
    let out = out.to_str().unwrap();
    let error = fails(&[
        "train",
        "--data",
        "xo:16",
        "--arch",
        "conv 4@3, dense 8, batchnorm, dense classes",
        "--out",
        out,
    ]);
    assert!(
        error.contains("node `3` (batchnorm) needs C x H x W feature maps")
            && error.contains("node `1` (flatten)"),
        "{error}"
    );
    let error = fails(&[
        "train",
        "--data",
        "xo:8",
        "--arch",
        "conv 4@3, maxpool 6, batchnorm, dense classes",
        "--batch",
        "1",
        "--out",
        out,
    ]);
    assert!(error.contains("needs more than 1"), "{error}");
    cnn()
        .args([
            "train",
            "--quiet",
            "--no-plot",
            "--data",
            "xo:16",
            "--epochs",
            "1",
            "--limit",
        ])
        .args([
            "200",
            "--arch",
            "conv 4@3, avgpool 2 pad=1, dense classes",
            "--out",
            out,
        ])
        .assert()
        .success();
    let info = cnn().args(["info", "--json", out]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let pool = &json["architecture"][1];
    assert_eq!(pool["type"], "avg_pool2d");
    assert_eq!(pool["count_include_pad"], false);
    assert_eq!(
        json["architecture"][0]["dilation"],
        serde_json::json!([1, 1])
    );
}

#[test]
fn completions_source_in_bash_and_the_man_page_renders() {
    let dir = TempDir::new().unwrap();
    let output = cnn().args(["completions", "bash"]).output().unwrap();
    assert!(output.status.success());
    let script = dir.path().join("cnn.bash");
    std::fs::write(&script, &output.stdout).unwrap();
    let bash = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p cnn", script.display()))
        .output()
        .expect("bash runs");
    common::assert_success(&bash);
    assert!(
        bash.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    assert!(String::from_utf8_lossy(&bash.stdout).contains("cnn"));
    for shell in ["zsh", "fish"] {
        let output = cnn().args(["completions", shell]).output().unwrap();
        assert!(
            output.status.success() && !output.stdout.is_empty(),
            "{shell}"
        );
    }

    let page = cnn().arg("man").output().unwrap();
    assert!(page.status.success());
    let path = dir.path().join("cnn.1");
    std::fs::write(&path, &page.stdout).unwrap();
    // `man -l` as a user would read it (CI installs man-db).
    let rendered = std::process::Command::new("man")
        .arg("-l")
        .arg(&path)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man runs (apt-get install man-db)");
    let text = String::from_utf8_lossy(&rendered.stdout);
    common::assert_success(&rendered);
    for expected in [
        "cnn",
        "CNN PREDICT",
        "--top-k",
        "CNN TRAIN",
        "--save-best",
        "--threads",
    ] {
        assert!(text.contains(expected), "the page lacks {expected}: {text}");
    }
}

/// A residual network through the whole tool: the same seed and thread count give the same
/// model file byte for byte (another seed another one); a run stopped after one epoch and
/// resumed gives the uninterrupted run's file; `explain --json` shows every node's maps, the
/// `add` node's included, under the node names the model file uses.
#[test]
fn residual_networks_train_resume_and_explain() {
    let dir = TempDir::new().unwrap();
    let residual = "stem: conv 4@3 pad=1, relu, \
                    b: (add(conv 4@3 pad=1 nobias, batchnorm, relu, conv 4@3 pad=1 nobias, batchnorm | ), relu), \
                    maxpool 2, fc: dense classes";
    let train = |name: &str, seed: &str, extra: &[&str]| {
        let path = dir.path().join(name);
        let output = cnn()
            .args(["--threads", "2", "train", "--quiet", "--data", "xo:16"])
            .args(["--epochs", "2", "--arch", residual, "--seed", seed])
            .args(extra)
            .arg("--out")
            .arg(&path)
            .output()
            .unwrap();
        common::assert_success(&output);
        path
    };
    let first = std::fs::read(train("a.safetensors", "5", &[])).unwrap();
    assert_eq!(
        first,
        std::fs::read(train("b.safetensors", "5", &[])).unwrap()
    );
    assert_ne!(
        first,
        std::fs::read(train("c.safetensors", "6", &[])).unwrap()
    );

    let stopped = train("r.safetensors", "5", &["--stop-after", "1"]);
    assert!(!stopped.exists(), "a stopped run writes no model");
    let output = cnn()
        .args(["--threads", "2", "train", "--resume"])
        .arg(dir.path().join("r.safetensors.ckpt"))
        .output()
        .unwrap();
    common::assert_success(&output);
    assert_eq!(first, std::fs::read(&stopped).unwrap(), "resumed differs");

    let picture = dir.path().join("x.png");
    drawn_letter('x', 64, 0.0, 0.0, 0.0, 5.0)
        .save(&picture)
        .unwrap();
    let output = cnn()
        .args(["explain", "--json", "--model"])
        .arg(dir.path().join("a.safetensors"))
        .arg(&picture)
        .output()
        .unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let layers = json["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert_eq!(names[0], "stem");
    let add = layers.iter().find(|l| l["kind"] == "add").unwrap();
    assert_eq!(add["name"], "b.0");
    // The residual branch's last node and the value entering the block.
    assert_eq!(add["inputs"], serde_json::json!(["b.0.0.4", "1"]));
    let maps = add["maps"].as_array().unwrap();
    assert_eq!((maps.len(), maps[0].as_array().unwrap().len()), (4, 16));
    let model = std::fs::read(dir.path().join("a.safetensors")).unwrap();
    let header = String::from_utf8_lossy(&model[8..]);
    for name in names.iter().filter(|n| n.contains("conv") || **n == "stem") {
        assert!(header.contains(&format!("\"{name}.weight\"")), "{name}");
    }
}

/// `--init` starts from a model's weights; `--replace-head` gives it a new last layer for a
/// data set of other classes; `--freeze` keeps chosen modules exactly as they were.
#[test]
fn fine_tuning_starts_from_a_model_and_freezes_modules() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("shapes");
    for (c, class) in ["bar", "dot", "ring"].iter().enumerate() {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..8u32 {
            let picture = GrayImage::from_fn(28, 28, |x, y| {
                let (dx, dy) = (x as i32 - 14 - i as i32 % 3, y as i32 - 14);
                let r2 = dx * dx + dy * dy;
                let ink = match c {
                    0 => dx.abs() < 3,
                    1 => r2 < 20,
                    _ => (40..90).contains(&r2),
                };
                Luma([if ink { 255 } else { 0 }])
            });
            picture
                .save(data.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let xo = trained_model();
    let data_arg = format!("folder:{}", data.display());
    let out = dir.path().join("tuned.safetensors");
    let train = |extra: &[&str]| {
        cnn()
            .args([
                "train",
                "--quiet",
                "--no-plot",
                "--epochs",
                "2",
                "--data",
                &data_arg,
            ])
            .arg("--init")
            .arg(xo)
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let output = train(&[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--replace-head"), "{stderr}");

    common::assert_success(&train(&["--replace-head", "--freeze", "0"]));
    let info = cnn().args(["info", "--json"]).arg(&out).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["classes"], serde_json::json!(["bar", "dot", "ring"]));
    let before = tensors_of(xo);
    let after = tensors_of(&out);
    let tensor = |all: &[(String, Vec<u8>)], name: &str| {
        all.iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    // Frozen: the first convolution. Trained: the second. New: the head, for three classes.
    assert_eq!(tensor(&after, "0.weight"), tensor(&before, "0.weight"));
    assert_eq!(tensor(&after, "0.bias"), tensor(&before, "0.bias"));
    assert_ne!(tensor(&after, "3.weight"), tensor(&before, "3.weight"));
    assert_eq!(tensor(&after, "7.bias").len(), 3 * 4);

    let output = train(&["--replace-head", "--freeze", "nosuch"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--freeze nosuch"), "{stderr}");
}
