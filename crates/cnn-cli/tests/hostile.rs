//! Hostile input (issue 18): every reproduction of the issue, numbered as there. Each file,
//! flag or command that once aborted, panicked, hung or overwrote something is now one clear
//! line on stderr and a non-zero exit, and what was at a path the command refused is still
//! what it was.

mod common;

use assert_cmd::Command;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Long enough for a slow CI machine; a hang (the old behaviour of several cases) is caught.
const TIMEOUT: Duration = Duration::from_secs(120);

fn cnn() -> Command {
    let mut command = Command::cargo_bin("cnn").expect("the cnn binary is built");
    command.timeout(TIMEOUT);
    command
}

/// `cnn` with `args` started in the background, its stdout piped (read it with
/// [`first_line`]) and its stderr as given.
fn spawn_cnn<S: AsRef<std::ffi::OsStr>>(args: &[S], stderr: Stdio) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("cnn"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// The first line `child` prints; its stdout is closed afterwards.
fn first_line(child: &mut std::process::Child) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    Ok(line)
}

/// Runs `cnn` with `args` expecting a refusal: a non-zero exit (not a panic, an abort or a
/// timeout), one line on stderr containing `expected`, and no panic or allocator text.
fn refused(args: &[&str], expected: &str) -> String {
    let output = cnn().args(args).output().unwrap();
    check_refusal(args, &output, expected)
}

fn check_refusal(args: &[&str], output: &std::process::Output, expected: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{args:?} should fail: {stderr}");
    // A signal (an abort, SIGKILL at the timeout) gives no code; a panic gives 101.
    let code = output.status.code();
    assert!(
        code.is_some() && code != Some(101),
        "{args:?} ended with {:?}: {stderr}",
        output.status
    );
    // One error line; a usage error (exit 2) adds clap's usage and help lines after it, as
    // every usage error does.
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let error_lines = lines.iter().filter(|l| l.starts_with("error:")).count();
    let clap_layout = lines[1..]
        .iter()
        .all(|l| l.is_empty() || l.starts_with("Usage:") || l.starts_with("For more information"));
    assert!(
        error_lines == 1
            && lines[0].starts_with("error:")
            && (lines.len() == 1 || (code == Some(2) && clap_layout)),
        "{args:?}: not one error line: {stderr}"
    );
    for bad in [
        "panicked",
        "internal error",
        "memory allocation",
        "RUST_BACKTRACE",
        "capacity overflow",
    ] {
        assert!(!stderr.contains(bad), "{args:?}: {stderr}");
    }
    assert!(
        stderr.contains(expected),
        "{args:?}: expected `{expected}`: {stderr}"
    );
    stderr
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The usual arguments of a short training run writing to `out`.
fn quick_train(out: &Path) -> Vec<String> {
    [
        "train",
        "--quiet",
        "--no-plot",
        "--epochs",
        "1",
        "--limit",
        "64",
        "--out",
        path_str(out),
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// One tiny X/O model (one epoch on 64 images) and its checkpoint, made once.
fn tiny_model() -> &'static (TempDir, PathBuf) {
    static MODEL: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("tiny.safetensors");
        cnn().args(quick_train(&path)).assert().success();
        (dir, path)
    })
}

fn tiny_model_bytes() -> Vec<u8> {
    std::fs::read(&tiny_model().1).unwrap()
}

/// A model file's header (JSON) and data section.
fn split_model(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    (header, bytes[8 + len..].to_vec())
}

fn join_model(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(data);
    bytes
}

/// The tiny model with the metadata field `key` changed by `edit` (the field holds JSON text,
/// except `notation` and `format`).
fn model_with_metadata(key: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (mut header, data) = split_model(&tiny_model_bytes());
    let text = header["__metadata__"][key].as_str().unwrap().to_string();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut value);
    header["__metadata__"][key] = serde_json::Value::String(value.to_string());
    join_model(&header, &data)
}

/// The tiny model with finite tensors whose outputs are not finite on every kernel path: the
/// convolutions give exactly their bias, 1e30 (zero weights; small enough that no kernel's
/// transform overflows, which would make a NaN that ReLU may turn into 0), and the dense layer
/// multiplies those by 3.4e38, which overflows to +infinity whatever the order of the sums.
fn model_that_overflows() -> Vec<u8> {
    let (header, mut data) = split_model(&tiny_model_bytes());
    for (name, tensor) in header.as_object().unwrap() {
        let Some(dims) = tensor.get("shape").and_then(|s| s.as_array()) else {
            continue;
        };
        let value: f32 = match (dims.len(), name.ends_with(".bias")) {
            (4, false) => 0.0,
            (2, false) => 3.4e38,
            (1, true)
                if header
                    .as_object()
                    .unwrap()
                    .get(&name.replace(".bias", ".weight"))
                    .is_some_and(|w| w["shape"].as_array().unwrap().len() == 4) =>
            {
                1e30
            }
            _ => continue,
        };
        let offsets = &tensor["data_offsets"];
        let (start, end) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        for chunk in data[start..end].chunks_exact_mut(4) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }
    join_model(&header, &data)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn x_png() -> Vec<u8> {
    let picture = image::GrayImage::from_fn(28, 28, |x, y| {
        image::Luma([if x == y || x + y == 27 { 255 } else { 0 }])
    });
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A character device node like /dev/null at `path` where this user may make one (root with
/// CAP_MKNOD); a FIFO otherwise. Returns whether it is a device.
fn device_or_fifo(path: &Path) -> bool {
    let made = std::process::Command::new("mknod")
        .args(["-m", "666"])
        .arg(path)
        .args(["c", "1", "3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        mkfifo(path);
    }
    made
}

#[cfg(unix)]
fn file_kind(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(path).unwrap().file_type();
    if kind.is_symlink() {
        "link"
    } else if kind.is_char_device() {
        "char device"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_file() {
        "file"
    } else {
        "other"
    }
}

/// A checkpoint's parts: the header JSON, the model bytes, the optimizer's moments.
struct CheckpointParts {
    header: serde_json::Value,
    model: Vec<u8>,
    moments: Vec<Vec<f32>>,
}

fn split_checkpoint(bytes: &[u8]) -> CheckpointParts {
    assert_eq!(&bytes[..8], b"CNNCKPT1");
    let mut at = 8;
    let mut block = |len_of: usize| -> (usize, usize) {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let start = at + 8;
        at = start + len * len_of;
        (start, at)
    };
    let (hs, he) = block(1);
    let (ms, me) = block(1);
    let header: serde_json::Value = serde_json::from_slice(&bytes[hs..he]).unwrap();
    let count =
        header["first_moments"].as_u64().unwrap() + header["second_moments"].as_u64().unwrap();
    let moments = (0..count)
        .map(|_| {
            let (s, e) = block(4);
            bytes[s..e]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
        .collect();
    CheckpointParts {
        header,
        model: bytes[ms..me].to_vec(),
        moments,
    }
}

fn join_checkpoint(parts: &CheckpointParts) -> Vec<u8> {
    let mut bytes = b"CNNCKPT1".to_vec();
    let header = serde_json::to_vec(&parts.header).unwrap();
    for block in [&header, &parts.model] {
        bytes.extend_from_slice(&(block.len() as u64).to_le_bytes());
        bytes.extend_from_slice(block);
    }
    for moment in &parts.moments {
        bytes.extend_from_slice(&(moment.len() as u64).to_le_bytes());
        bytes.extend(moment.iter().flat_map(|v| v.to_le_bytes()));
    }
    bytes
}

/// A checkpoint after epoch 1 of 2 of an Adam run (made once): its bytes.
fn adam_checkpoint() -> &'static [u8] {
    static CHECKPOINT: OnceLock<Vec<u8>> = OnceLock::new();
    CHECKPOINT.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let out = dir.path().join("run.safetensors");
        let mut args = quick_train(&out);
        args[4] = "2".into();
        args.extend(["--optimizer", "adam", "--stop-after", "1"].map(String::from));
        cnn().args(&args).assert().success();
        std::fs::read(dir.path().join("run.safetensors.ckpt")).unwrap()
    })
}

/// Writes the Adam checkpoint changed by `edit` into `dir` and resumes it, expecting a
/// refusal naming `expected`.
fn resume_refused(edit: impl FnOnce(&mut CheckpointParts), expected: &str) {
    let dir = TempDir::new().unwrap();
    let mut parts = split_checkpoint(adam_checkpoint());
    edit(&mut parts);
    let path = write(dir.path(), "edited.ckpt", &join_checkpoint(&parts));
    refused(&["train", "--quiet", "--resume", path_str(&path)], expected);
    assert!(
        !dir.path().join("edited").exists() && !dir.path().join("edited.safetensors").exists(),
        "a refused resume writes no model"
    );
}

// 1. `--out` replaced whatever was at the path: device nodes, FIFOs, symbolic links.
#[cfg(unix)]
#[test]
fn issue_1_out_never_replaces_a_device_a_fifo_or_a_link() {
    let dir = TempDir::new().unwrap();
    let node = dir.path().join("mynull");
    let is_device = device_or_fifo(&node);
    let kind = file_kind(&node);
    assert_eq!(kind, if is_device { "char device" } else { "fifo" });
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let target = write(dir.path(), "target.safetensors", b"precious");
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    for (path, what) in [
        (&node, if is_device { "a device" } else { "a FIFO" }),
        (&fifo, "a FIFO"),
        (&link, "a symbolic link"),
    ] {
        let before = file_kind(path);
        let args = quick_train(path);
        refused(&strs(&args), what);
        assert_eq!(file_kind(path), before, "{} was replaced", path.display());
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!(file_kind(&link), "link");
    // The log and the checkpoint beside the model are refused the same way, before training.
    let out = dir.path().join("m.safetensors");
    let mut args = quick_train(&out);
    args.extend(["--log".into(), path_str(&fifo).into()]);
    refused(&strs(&args), "a FIFO");
    let ckpt_link = dir.path().join("m.safetensors.ckpt");
    std::os::unix::fs::symlink(&target, &ckpt_link).unwrap();
    refused(&strs(&quick_train(&out)), "a symbolic link");
    assert_eq!(file_kind(&ckpt_link), "link");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert!(!out.exists());
    // Nothing was left beside them.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// 2. Model metadata trusted before it was checked; architectures and inputs too big to build.
#[test]
fn issue_2_declared_sizes_are_checked_before_anything_is_allocated() {
    let dir = TempDir::new().unwrap();
    let huge_conv = model_with_metadata("architecture", |arch| {
        arch[0]["out_channels"] = 1_000_000_000u64.into();
    });
    let huge_input = model_with_metadata("input_shape", |shape| {
        *shape = serde_json::json!([1, 100_000, 100_000]);
    });
    let big_input = model_with_metadata("input_shape", |shape| {
        *shape = serde_json::json!([1, 20_000, 20_000]);
    });
    let picture = write(dir.path(), "x.png", &x_png());
    for (name, bytes, expected) in [
        ("conv1e9.safetensors", huge_conv, "over the limit"),
        ("input1e5.safetensors", huge_input, "over the limit"),
        ("input2e4.safetensors", big_input, "over the limit"),
    ] {
        let model = write(dir.path(), name, &bytes);
        let started = Instant::now();
        let stderr = refused(
            &["predict", "--model", path_str(&model), path_str(&picture)],
            expected,
        );
        assert!(stderr.contains(name), "the file is named: {stderr}");
        refused(&["eval", "--model", path_str(&model)], expected);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    let out = dir.path().join("never.safetensors");
    for arch in ["conv 4294967295@3", "dense 1000000000"] {
        refused(
            &["train", "--arch", arch, "--out", path_str(&out)],
            "over the limit",
        );
    }
    refused(
        &["bench", "--input", "1x100000x100000", "--seconds", "0.1"],
        "over the limit",
    );
    assert!(!out.exists());
}

// 3. Overflow panics (capacity overflow, empty ranges, out-of-bounds indexing).
#[test]
fn issue_3_sizes_that_overflow_are_refused() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("never.safetensors");
    let out = path_str(&out);
    let max = "18446744073709551615";
    for (args, expected) in [
        (
            vec!["train", "--arch", "dense 9223372036854775808", "--out", out],
            "dense",
        ),
        (vec!["train", "--epochs", max, "--out", out], "--epochs"),
        (
            vec!["train", "--epochs", "1000000000000", "--out", out],
            "--epochs",
        ),
        (vec!["train", "--batch", max, "--out", out], "--batch"),
        (
            vec![
                "train", "--epochs", "1", "--limit", "64", "--shift", max, "--out", out,
            ],
            "--shift",
        ),
        (
            vec!["bench", "--input", "18446744073709551615x2x1"],
            "input",
        ),
        (vec!["bench", "--seconds", "NaN"], "--seconds"),
    ] {
        refused(&args, expected);
    }
    assert!(!Path::new(out).exists());
}

// 4. Window arithmetic wrapped: padding 2^63 on the command line and in a model file.
#[test]
fn issue_4_window_arithmetic_is_checked() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("never.safetensors");
    for arch in [
        "conv 4@3 pad=9223372036854775808, dense classes",
        "maxpool 2 pad=9223372036854775808, dense classes",
        "maxpool 2 pad=4611686018427387904, dense classes",
        "conv 4@3 stride=18446744073709551615, dense classes",
    ] {
        refused(&["train", "--arch", arch, "--out", path_str(&out)], "pad");
    }
    assert!(!out.exists());
    let picture = write(dir.path(), "x.png", &x_png());
    for (index, (layer, field)) in [(2, "padding"), (0, "padding"), (0, "stride"), (2, "kernel")]
        .into_iter()
        .enumerate()
    {
        let bytes = model_with_metadata("architecture", |arch| {
            let big = 9_223_372_036_854_775_808u64;
            arch[layer][field] = serde_json::json!([big, big]);
        });
        let model = write(dir.path(), &format!("window{index}.safetensors"), &bytes);
        refused(
            &["predict", "--model", path_str(&model), path_str(&picture)],
            "at most 65536",
        );
    }
}

// 5. Checkpoints were trusted completely: epochs, stored paths, settings, optimizer state.
#[test]
fn issue_5_checkpoints_are_checked_as_flags_are() {
    resume_refused(
        |p| p.header["epoch"] = (1u64 << 31).into(),
        "epochs are done",
    );
    resume_refused(
        |p| p.header["settings"]["config"]["optimizer"]["beta1"] = 2.0.into(),
        "not those its arguments give",
    );
    resume_refused(|p| p.header["optimizer"]["beta1"] = 2.0.into(), "beta1");
    resume_refused(
        |p| p.header["optimizer"]["epsilon"] = (-1.0).into(),
        "epsilon",
    );
    resume_refused(
        |p| {
            p.header["settings"]["config"]["epochs"] = u64::MAX.into();
            p.header["settings"]["args"]["epochs"] = u64::MAX.into();
        },
        "--epochs",
    );
    resume_refused(
        |p| {
            p.header["settings"]["config"]["batch_size"] = u64::MAX.into();
            p.header["settings"]["args"]["batch"] = u64::MAX.into();
        },
        "--batch",
    );
    resume_refused(|p| p.moments[0][0] = f32::NAN, "optimizer");
    resume_refused(|p| p.moments[7][0] = -1.0, "optimizer");

    // An SGD checkpoint whose stored settings say momentum 1.5.
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("sgd.safetensors");
    let mut args = quick_train(&out);
    args[4] = "2".into();
    args.extend(["--optimizer", "sgd", "--stop-after", "1"].map(String::from));
    cnn().args(&args).assert().success();
    let checkpoint = dir.path().join("sgd.safetensors.ckpt");
    let mut parts = split_checkpoint(&std::fs::read(&checkpoint).unwrap());
    parts.header["settings"]["args"]["momentum"] = 1.5.into();
    parts.header["settings"]["config"]["optimizer"]["momentum"] = 1.5.into();
    let momentum = write(
        dir.path(),
        "momentum-settings.ckpt",
        &join_checkpoint(&parts),
    );
    refused(&["train", "--resume", path_str(&momentum)], "momentum");
    parts.header["optimizer"]["momentum"] = 1.5.into();
    let momentum = write(dir.path(), "momentum.ckpt", &join_checkpoint(&parts));
    refused(&["train", "--resume", path_str(&momentum)], "momentum");

    // Its stored `out` and `log` name other places: the resumed run writes beside the
    // checkpoint, not there.
    let elsewhere = TempDir::new().unwrap();
    let stored_out = elsewhere.path().join("planted.safetensors");
    let stored_log = elsewhere.path().join("planted.log");
    let mut parts = split_checkpoint(&std::fs::read(&checkpoint).unwrap());
    parts.header["settings"]["args"]["out"] = path_str(&stored_out).into();
    parts.header["settings"]["args"]["log"] = path_str(&stored_log).into();
    let planted = write(dir.path(), "planted.ckpt", &join_checkpoint(&parts));
    let output = cnn()
        .args([
            "train",
            "--quiet",
            "--no-plot",
            "--resume",
            path_str(&planted),
        ])
        .output()
        .unwrap();
    common::assert_success(&output);
    assert!(!stored_out.exists() && !stored_log.exists());
    assert!(
        dir.path().join("planted").exists() || dir.path().join("planted.safetensors").exists(),
        "the resumed model is beside the checkpoint: {:?}",
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
}

// 6. Special files were read without bound or blocked forever; IDX headers were believed late.
#[cfg(unix)]
#[test]
fn issue_6_only_regular_files_are_read_within_a_limit() {
    let dir = TempDir::new().unwrap();
    let model = path_str(&tiny_model().1);
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let fifo = path_str(&fifo);
    let out = dir.path().join("never.safetensors");
    let out = path_str(&out);
    for (args, expected) in [
        (vec!["predict", "--model", model, "/dev/zero"], "a device"),
        (
            vec!["predict", "--model", model, "/dev/urandom"],
            "a device",
        ),
        (vec!["predict", "--model", model, fifo], "a FIFO"),
        (vec!["predict", "--model", "/dev/zero", fifo], "a device"),
        (vec!["eval", "--model", fifo], "a FIFO"),
        (vec!["train", "--resume", fifo], "a FIFO"),
        (vec!["train", "--resume", "/dev/zero"], "a device"),
    ] {
        let started = Instant::now();
        refused(&args, expected);
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?}");
    }

    // A FIFO inside a class folder.
    let data = dir.path().join("folder");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        write(&data.join(class), "1.png", &x_png());
    }
    mkfifo(&data.join("b").join("2.png"));
    let spec = format!("folder:{}", data.display());
    refused(
        &["train", "--data", &spec, "--epochs", "1", "--out", out],
        "a FIFO",
    );

    // IDX headers claiming 2^31 images, raw and gzipped: refused before the values are read.
    let idx = dir.path().join("idx");
    std::fs::create_dir(&idx).unwrap();
    let mut header = vec![0, 0, 8, 3];
    for dim in [1u32 << 31, 28, 28] {
        header.extend_from_slice(&dim.to_be_bytes());
    }
    header.extend(std::iter::repeat_n(0u8, 4096));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(1u32 << 31).to_be_bytes());
    write(&idx, "train-images-idx3-ubyte", &header);
    write(&idx, "train-labels-idx1-ubyte", &labels);
    let spec = format!("idx:{}", idx.display());
    refused(
        &["train", "--data", &spec, "--epochs", "1", "--out", out],
        "over the limit",
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &header).unwrap();
    std::fs::remove_file(idx.join("train-images-idx3-ubyte")).unwrap();
    write(&idx, "train-images-idx3-ubyte.gz", &gz.finish().unwrap());
    refused(
        &["train", "--data", &spec, "--epochs", "1", "--out", out],
        "over the limit",
    );
    assert!(!Path::new(out).exists());
}

/// A folder data set at `root`: `classes` as (split, class, images).
fn folder_data(root: &Path, classes: &[(&str, &str, usize)]) {
    for &(split, class, images) in classes {
        let folder = root.join(split).join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..images {
            write(&folder, &format!("{i}.png"), &x_png());
        }
    }
}

// 7. Folder data: other classes in the test split, empty classes, names that are not UTF-8.
#[test]
fn issue_7_folder_classes_are_checked() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("never.safetensors");
    let out = path_str(&out);
    let train = |root: &Path, expected: &str| {
        let spec = format!("folder:{}", root.display());
        refused(
            &[
                "train",
                "--quiet",
                "--data",
                &spec,
                "--epochs",
                "1",
                "--no-plot",
                "--out",
                out,
            ],
            expected,
        );
    };
    let other = dir.path().join("other");
    folder_data(
        &other,
        &[
            ("train", "a", 2),
            ("train", "b", 2),
            ("test", "a", 2),
            ("test", "c", 2),
        ],
    );
    train(&other, "classes");

    let empty = dir.path().join("empty");
    folder_data(
        &empty,
        &[("train", "a", 2), ("train", "b", 2), ("train", "c", 0)],
    );
    train(&empty, "empty");

    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let names = dir.path().join("names");
        folder_data(&names, &[("train", "a", 2)]);
        for bytes in [&b"\xff"[..], &b"\xfe"[..]] {
            let folder = names.join("train").join(std::ffi::OsStr::from_bytes(bytes));
            std::fs::create_dir(&folder).unwrap();
            write(&folder, "0.png", &x_png());
        }
        train(&names, "not UTF-8");
    }
    assert!(!Path::new(out).exists());
}

// 8. `--threads` had no bound, and waiting threads spun on a shared core.
#[test]
fn issue_8_threads_are_bounded_and_oversubscription_yields() {
    let dir = TempDir::new().unwrap();
    let model = path_str(&tiny_model().1);
    let picture = write(dir.path(), "x.png", &x_png());
    refused(
        &[
            "--threads",
            "100000",
            "predict",
            "--model",
            model,
            path_str(&picture),
        ],
        "--threads",
    );
    refused(&["--threads", "18446744073709551615", "bench"], "--threads");
    // Eight threads per core, the most allowed, train as fast as a few (the old spinning
    // waits made 64 threads 20x slower than 2 on two cores): a generous bound.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores * 8).to_string();
    let out = dir.path().join("m.safetensors");
    let mut args = vec!["--threads".to_string(), threads];
    args.extend(quick_train(&out));
    let started = Instant::now();
    cnn().args(&args).assert().success();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{} threads took {:?}",
        cores * 8,
        started.elapsed()
    );
}

// 9. Numbers that pass the checks but make NaN: a tiny deviation, a huge weight.
#[test]
fn issue_9_outputs_that_are_not_finite_are_refused() {
    let dir = TempDir::new().unwrap();
    let picture = write(dir.path(), "x.png", &x_png());
    let tiny_std = model_with_metadata("preprocessing", |p| p["std"] = serde_json::json!([1e-38]));
    let model = write(dir.path(), "std.safetensors", &tiny_std);
    refused(
        &["predict", "--model", path_str(&model), path_str(&picture)],
        "std",
    );
    let huge = model_that_overflows();
    let model = write(dir.path(), "huge.safetensors", &huge);
    for args in [
        vec!["predict", "--model", path_str(&model), path_str(&picture)],
        vec!["eval", "--model", path_str(&model)],
    ] {
        let stderr = refused(&args, "not finite");
        assert!(!stderr.contains("NaN%"), "{stderr}");
    }
}

// 11. A closed pipe, doubled error text, raw escape sequences, stale temporaries, a slow limit.
#[test]
fn issue_11_quiet_on_a_closed_pipe() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("m.safetensors");
    let mut args = quick_train(&out);
    args.retain(|a| a != "--quiet");
    let mut child = spawn_cnn(&args, Stdio::piped());
    let first = first_line(&mut child).unwrap();
    // The reader is dropped: the pipe is closed, like `cnn train | head -1`.
    let output = child.wait_with_output().unwrap();
    assert!(first.starts_with("training"), "{first}");
    // Progress lines go to stderr; no error or panic follows them.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for bad in ["error", "panicked", "Broken pipe"] {
        assert!(
            !stderr.contains(bad),
            "stderr after a closed pipe: {stderr}"
        );
    }
    assert_ne!(output.status.code(), Some(101));
}

#[test]
fn issue_11_errors_are_said_once_and_escaped() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing");
    let missing = path_str(&missing);
    let out = dir.path().join("out").join("m.safetensors");
    for args in [
        vec!["eval", "--model", missing],
        vec!["train", "--resume", missing],
        vec!["explain", "--model", missing, "x.png"],
    ] {
        let stderr = refused(&args, "No such file or directory");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{args:?}: {stderr}"
        );
    }
    // A missing folder for the model is found before training, not after it.
    refused(
        &[
            "train",
            "--epochs",
            "1",
            "--limit",
            "64",
            "--out",
            path_str(&out),
        ],
        "no folder",
    );
    for kind in ["cifar10", "folder"] {
        let spec = format!("{kind}:{missing}");
        let out = dir.path().join("m.safetensors");
        let stderr = refused(
            &["train", "--data", &spec, "--out", path_str(&out)],
            missing,
        );
        assert!(
            stderr.matches("No such file or directory").count() <= 1,
            "{stderr}"
        );
    }

    // Class names from a model or a folder reach the terminal escaped.
    let evil = model_with_metadata("classes", |c| {
        *c = serde_json::json!(["\u{1b}[2J\u{1b}]0;pwned\u{7}X", "O\r\n"]);
    });
    let model = write(dir.path(), "evil.safetensors", &evil);
    let picture = write(dir.path(), "x.png", &x_png());
    let output = cnn()
        .args(["predict", "--model", path_str(&model), path_str(&picture)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'),
        "{text:?}"
    );
    assert_eq!(text.trim_end().lines().count(), 1, "{text:?}");
}

#[test]
fn issue_11_stale_temporaries_are_cleaned() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("m.safetensors");
    // Temporaries of a writer killed before its rename (no process has the id u32::MAX).
    let stale_model = write(
        dir.path(),
        &format!(".m.safetensors.{}.tmp", u32::MAX),
        b"half",
    );
    let stale_ckpt = write(
        dir.path(),
        &format!(".m.safetensors.ckpt.{}.tmp", u32::MAX),
        b"half",
    );
    cnn().args(quick_train(&out)).assert().success();
    assert!(out.exists());
    if Path::new("/proc/self").exists() {
        assert!(!stale_model.exists() && !stale_ckpt.exists());
    }
}

/// `--data xo:512 --limit 64` generated all 8,000 training images before the limit applied
/// (over 60 s): training now starts at once (the held-out and test splits, evaluated at
/// 512x512, still take their time, so the run is stopped when it starts).
#[test]
fn issue_11_the_limit_applies_before_the_generator() {
    let dir = TempDir::new().unwrap();
    let mut args = quick_train(&dir.path().join("m.safetensors"));
    args.retain(|a| a != "--quiet");
    args.extend(["--data", "xo:512"].map(String::from));
    let started = Instant::now();
    let mut child = spawn_cnn(&args, Stdio::null());
    let first = first_line(&mut child);
    let elapsed = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    let first = first.unwrap();
    assert!(first.contains("the first 64 of"), "{first}");
    assert!(
        elapsed < Duration::from_secs(20),
        "training started after {elapsed:?}"
    );
}

/// A `cnn serve` started on a free port, stopped when dropped.
struct Server {
    child: std::process::Child,
    address: String,
    stderr: std::process::ChildStderr,
}

impl Server {
    fn start(addr: &str, flags: &[&str]) -> Server {
        let model = &tiny_model().1;
        let mut args = vec!["serve", "--model", path_str(model), "--addr", addr];
        args.extend(flags);
        let mut child = spawn_cnn(&args, Stdio::piped());
        let line = first_line(&mut child).unwrap();
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .replace("0.0.0.0", "127.0.0.1");
        let stderr = child.stderr.take().unwrap();
        Server {
            child,
            address,
            stderr,
        }
    }

    fn connect(&self) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
fn read_until_closed(stream: &mut std::net::TcpStream) -> (String, Duration) {
    use std::io::Read;
    let started = Instant::now();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server kept the connection open: {e}"),
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

// 10. The server held idle connections forever and buffered bodies before admission.
#[test]
fn issue_10_slow_clients_are_closed_after_the_timeouts() {
    use std::io::Write;
    let server = Server::start(
        "127.0.0.1:0",
        &["--header-timeout", "0.5", "--body-timeout", "0.5"],
    );
    // Half a header; nothing at all; an idle connection after a request.
    for (sent, answered) in [
        (&b"GET /api/model HTTP/1.1\r\nHost: x\r\n"[..], ""),
        (&b""[..], ""),
        (
            &b"GET /api/model HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            "HTTP/1.1 200",
        ),
    ] {
        let mut stream = server.connect();
        stream.write_all(sent).unwrap();
        let (received, elapsed) = read_until_closed(&mut stream);
        assert!(received.starts_with(answered), "{received}");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
            "closed after {elapsed:?}"
        );
    }
    // A body that stops halfway gets 408.
    let mut stream = server.connect();
    stream
        .write_all(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
              Content-Length: 1000\r\n\r\n\x89PNG",
        )
        .unwrap();
    let (received, elapsed) = read_until_closed(&mut stream);
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
}

#[test]
fn issue_10_connections_over_the_cap_are_closed() {
    use std::io::Write;
    let server = Server::start(
        "127.0.0.1:0",
        &["--max-connections", "2", "--header-timeout", "60"],
    );
    let held: Vec<_> = (0..2).map(|_| server.connect()).collect();
    // Both are accepted before the third arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut third = server.connect();
    let (received, elapsed) = read_until_closed(&mut third);
    assert!(received.is_empty(), "{received}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // The two held ones still serve.
    for mut stream in held {
        stream
            .write_all(b"GET /api/model HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (received, _) = read_until_closed(&mut stream);
        assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    }
    // Their places are free again.
    let started = Instant::now();
    loop {
        let mut stream = server.connect();
        let _ =
            stream.write_all(b"GET /api/model HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (received, _) = read_until_closed(&mut stream);
        if received.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{received}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue_10_every_interface_is_warned_about_and_flags_are_checked() {
    let mut server = Server::start("0.0.0.0:0", &[]);
    let mut line = String::new();
    BufReader::new(&mut server.stderr)
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("warning:") && line.contains("reachable from the network"),
        "{line}"
    );
    drop(server);
    let model = path_str(&tiny_model().1);
    for (flag, value) in [
        ("--header-timeout", "NaN"),
        ("--header-timeout", "0"),
        ("--body-timeout", "-1"),
        ("--body-timeout", "1e300"),
        ("--max-connections", "0"),
        ("--max-connections", "18446744073709551615"),
    ] {
        let argument = format!("{flag}={value}");
        let args = [
            "serve",
            "--model",
            model,
            "--addr",
            "127.0.0.1:0",
            &argument,
        ];
        refused(&args, flag);
    }
}
