//! Data loaders on files the tests write: IDX (raw and gzipped), CIFAR-10 binary batches and
//! image-folder trees; every corrupted, truncated or foreign file gives an error that names the
//! file and the problem. Then short training runs on what was loaded.

use cnn::data::idx::{self, IdxSplit};
use cnn::data::xo::{self, XoConfig};
use cnn::data::{cifar, folder, DataSpec, Dataset};
use cnn::optim::OptimizerConfig;
use cnn::rng::{seeded, Stream};
use cnn::train::{evaluate, train, Silent, TrainConfig};
use cnn::{Network, Shape};
use std::path::Path;

fn xo_set(count: usize, split: xo::Split) -> Dataset {
    xo::generate(
        XoConfig {
            size: 28,
            count,
            seed: 3,
        },
        split,
    )
    .unwrap()
}

/// An IDX folder holding X/O letters (classes 0 and 1 of the digits' ten).
fn write_idx_folder(dir: &Path, gzip: bool) -> (Dataset, Dataset) {
    let train = xo_set(600, xo::Split::Train);
    let test = xo_set(200, xo::Split::Test);
    idx::write(&train, dir, IdxSplit::Train, gzip).unwrap();
    idx::write(&test, dir, IdxSplit::Test, gzip).unwrap();
    (train, test)
}

fn error_of(result: cnn::Result<Dataset>) -> String {
    result.expect_err("the loader must refuse this").to_string()
}

#[test]
fn idx_reads_raw_and_gzipped_files_alike() {
    for gzip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = write_idx_folder(dir.path(), gzip);
        let spec = DataSpec::parse(&format!("idx:{}", dir.path().display())).unwrap();
        let (loaded, validation) = spec.load_training(1, 0.0, None).unwrap();
        assert!(validation.is_none());
        assert_eq!(loaded.shape(), Shape::new(1, 28, 28));
        assert_eq!(loaded.classes().len(), 10);
        assert_eq!(loaded.len(), train.len());
        for i in [0, 17, 599] {
            assert_eq!(loaded.image(i), train.image(i), "gzip {gzip}, image {i}");
            assert_eq!(loaded.label(i), train.label(i));
        }
        let loaded_test = spec.load_test(1).unwrap();
        assert_eq!(loaded_test.image(199), test.image(199));
        // A validation split takes a share of the training images, chosen by the seed.
        let (rest, validation) = spec.load_training(1, 0.25, None).unwrap();
        assert_eq!((rest.len(), validation.unwrap().len()), (450, 150));
    }
}

#[test]
fn idx_damaged_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_folder(dir.path(), false);
    let images = dir.path().join("train-images-idx3-ubyte");
    let labels = dir.path().join("train-labels-idx1-ubyte");
    let good_images = std::fs::read(&images).unwrap();
    let good_labels = std::fs::read(&labels).unwrap();
    let load = || idx::load(dir.path(), IdxSplit::Train, &idx::digit_classes());

    let (images, labels) = (images.as_path(), labels.as_path());
    let cases: Vec<(&Path, Vec<u8>, &str)> = vec![
        (
            images,
            good_images[..good_images.len() - 10].to_vec(),
            "truncated",
        ),
        (images, good_images[..10].to_vec(), "truncated header"),
        (images, Vec::new(), "empty file"),
        (images, b"PK\x03\x04 a zip file".to_vec(), "not an IDX file"),
        (
            images,
            [&good_images[..], &b"extra"[..]].concat(),
            "bytes after",
        ),
        (images, good_labels.clone(), "expected 3 (an images file)"),
        (labels, good_images.clone(), "expected 1 (a labels file)"),
        (
            labels,
            [&[0, 0, 0x0d, 1][..], &good_labels[4..]].concat(),
            "not 0x08",
        ),
        (
            labels,
            [&good_labels[..8], &[42u8; 600][..]].concat(),
            "label 42 of image 0 is out of range",
        ),
        (
            labels,
            [&[0, 0, 8, 1, 0, 0, 0, 5][..], &[0u8; 5][..]].concat(),
            "5 labels for the 600 images",
        ),
    ];
    for (path, bytes, expected) in cases {
        std::fs::write(path, &bytes).unwrap();
        let error = error_of(load());
        assert!(
            error.contains(expected) && error.contains(&path.display().to_string()),
            "{expected}: {error}"
        );
        std::fs::write(images, &good_images).unwrap();
        std::fs::write(labels, &good_labels).unwrap();
    }
    std::fs::remove_file(labels).unwrap();
    assert!(error_of(load()).contains("no IDX file `train-labels-idx1-ubyte`"));
}

#[test]
fn idx_damaged_gzip_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_folder(dir.path(), true);
    let images = dir.path().join("train-images-idx3-ubyte.gz");
    let good = std::fs::read(&images).unwrap();
    for (bytes, expected) in [
        (
            good[..good.len() / 2].to_vec(),
            "corrupted or truncated gzip",
        ),
        (
            [&good[..20], &[0xffu8; 64][..]].concat(),
            "corrupted or truncated gzip",
        ),
    ] {
        std::fs::write(&images, bytes).unwrap();
        let error = error_of(idx::load(
            dir.path(),
            IdxSplit::Train,
            &idx::digit_classes(),
        ));
        assert!(
            error.contains(expected) && error.contains("train-images"),
            "{error}"
        );
    }
}

/// A CIFAR-format data set: X/O letters drawn at 32x32, the letter in the red plane only for
/// X and in the blue plane only for O, so colour matters.
fn cifar_like(count: usize, split: xo::Split) -> Dataset {
    let grey = xo::generate(
        XoConfig {
            size: 32,
            count,
            seed: 5,
        },
        split,
    )
    .unwrap();
    let mut images = Vec::with_capacity(count * 3 * 1024);
    let mut labels = Vec::with_capacity(count);
    for i in 0..grey.len() {
        let label = grey.label(i);
        for channel in 0..3 {
            if (channel == 0 && label == 0) || (channel == 2 && label == 1) {
                images.extend_from_slice(grey.image(i));
            } else {
                images.extend(std::iter::repeat_n(0u8, 1024));
            }
        }
        // Spread the two letters over CIFAR's first and last class.
        labels.push(if label == 0 { 0 } else { 9 });
    }
    let classes = cifar::CIFAR10_CLASSES
        .iter()
        .map(|c| c.to_string())
        .collect();
    Dataset::new(cifar::SHAPE, classes, images, labels).unwrap()
}

#[test]
fn cifar_batches_load_validate_and_train() {
    let dir = tempfile::tempdir().unwrap();
    let train_set = cifar_like(800, xo::Split::Train);
    let test_set = cifar_like(200, xo::Split::Test);
    // Two training batches: the loader reads data_batch_1, data_batch_2, ... in order.
    let half: Vec<usize> = (0..400).collect();
    let rest: Vec<usize> = (400..800).collect();
    cifar::write_batch(
        &train_set.subset(&half),
        &dir.path().join("data_batch_1.bin"),
    )
    .unwrap();
    cifar::write_batch(
        &train_set.subset(&rest),
        &dir.path().join("data_batch_2.bin"),
    )
    .unwrap();
    cifar::write_batch(&test_set, &dir.path().join("test_batch.bin")).unwrap();
    let spec = DataSpec::parse(&format!("cifar10:{}", dir.path().display())).unwrap();
    let (loaded, _) = spec.load_training(1, 0.0, None).unwrap();
    assert_eq!(loaded, train_set);
    assert_eq!(loaded.classes()[9], "truck");
    let test = spec.load_test(1).unwrap();
    assert_eq!(test, test_set);

    // A short training run on it.
    let layers = cnn::arch::parse(
        "conv 8@3x3 pad=1, batchnorm, relu, maxpool 2, conv 16@3x3 pad=1, relu, gap, dense classes",
        10,
    )
    .unwrap();
    let mut network = Network::new(&layers, cifar::SHAPE).unwrap();
    network.init_kaiming(&mut seeded(1, Stream::WeightInit));
    let preprocessing = spec.preprocessing(&loaded);
    assert_eq!(preprocessing.mean.len(), 3);
    let config = TrainConfig {
        epochs: 3,
        batch_size: 32,
        learning_rate: 0.01,
        optimizer: OptimizerConfig::adam(),
        seed: 1,
        ..TrainConfig::default()
    };
    train(
        &mut network,
        &preprocessing,
        &loaded,
        None,
        &config,
        &mut Silent,
    )
    .unwrap();
    let result = evaluate(&network, &preprocessing, &test, 64).unwrap();
    assert!(result.accuracy >= 0.95, "accuracy {}", result.accuracy);

    // Damaged batches.
    let batch = dir.path().join("data_batch_1.bin");
    let good = std::fs::read(&batch).unwrap();
    for (bytes, expected) in [
        (
            good[..good.len() - 7].to_vec(),
            "not a whole number of 3073-byte records",
        ),
        (Vec::new(), "empty file"),
        (
            [&[10u8][..], &good[1..]].concat(),
            "label 10 of record 0 is out of range",
        ),
    ] {
        std::fs::write(&batch, bytes).unwrap();
        let error = error_of(spec.load_training(1, 0.0, None).map(|(t, _)| t));
        assert!(
            error.contains(expected) && error.contains("data_batch_1.bin"),
            "{error}"
        );
    }
    std::fs::remove_file(&batch).unwrap();
    assert!(
        error_of(spec.load_training(1, 0.0, None).map(|(t, _)| t)).contains("no data_batch_1.bin")
    );
}

/// The same network trained on an IDX folder and on a tree of PNG files made from it reaches
/// the same accuracy: PNG is lossless and the tree is read in the same order.
#[test]
fn png_tree_from_idx_data_trains_like_the_idx_files() {
    let dir = tempfile::tempdir().unwrap();
    let idx_dir = dir.path().join("idx");
    std::fs::create_dir(&idx_dir).unwrap();
    write_idx_folder(&idx_dir, true);
    let idx_spec = DataSpec::parse(&format!("idx:{}", idx_dir.display())).unwrap();
    let (train_set, _) = idx_spec.load_training(1, 0.0, None).unwrap();
    let test_set = idx_spec.load_test(1).unwrap();
    // Only the classes present (0 and 1) become folders; name them so that they sort in
    // label order.
    let two = |d: &Dataset| {
        let labels = (0..d.len()).map(|i| d.label(i) as u16).collect();
        let pixels = (0..d.len()).flat_map(|i| d.image(i).to_vec()).collect();
        Dataset::new(d.shape(), vec!["0".into(), "1".into()], pixels, labels).unwrap()
    };
    let tree = dir.path().join("tree");
    folder::write_png_tree(&two(&train_set), &tree.join("train")).unwrap();
    folder::write_png_tree(&two(&test_set), &tree.join("test")).unwrap();
    let folder_spec = DataSpec::parse(&format!("folder:{}", tree.display())).unwrap();
    let (folder_train, _) = folder_spec.load_training(1, 0.0, None).unwrap();
    let folder_test = folder_spec.load_test(1).unwrap();
    assert_eq!(folder_train.shape(), Shape::new(1, 28, 28));
    assert_eq!(folder_train.classes(), ["0", "1"]);
    // Files are read class by class: the same images, grouped by label.
    let mut by_label: Vec<usize> = (0..train_set.len()).collect();
    by_label.sort_by_key(|&i| train_set.label(i));
    assert_eq!(folder_train.image(0), train_set.image(by_label[0]));

    let accuracy = |spec: &DataSpec, train_set: &Dataset, test: &Dataset| {
        let layers =
            cnn::arch::parse(&cnn::arch::preset("xo").unwrap(), train_set.classes().len()).unwrap();
        let mut network = Network::new(&layers, train_set.shape()).unwrap();
        network.init_kaiming(&mut seeded(1, Stream::WeightInit));
        let preprocessing = spec.preprocessing(train_set);
        let config = TrainConfig {
            epochs: 2,
            batch_size: 32,
            learning_rate: 0.003,
            optimizer: OptimizerConfig::adam(),
            seed: 1,
            ..TrainConfig::default()
        };
        train(
            &mut network,
            &preprocessing,
            train_set,
            None,
            &config,
            &mut Silent,
        )
        .unwrap();
        evaluate(&network, &preprocessing, test, 64)
            .unwrap()
            .accuracy
    };
    // Trained in the tree's order (class by class), the IDX images give the same network, so
    // the same accuracy; in the IDX order, a different one of the same quality.
    let from_idx = accuracy(
        &idx_spec,
        &two(&train_set.subset(&by_label)),
        &two(&test_set),
    );
    let from_png = accuracy(&folder_spec, &folder_train, &folder_test);
    assert!(from_idx > 0.9, "from IDX {from_idx}");
    assert!(
        (from_idx - from_png).abs() <= 0.005,
        "IDX {from_idx} vs PNG tree {from_png}"
    );

    // A picture that is not one is named.
    std::fs::write(tree.join("train/1/zzz.png"), b"not a png").unwrap();
    let error = error_of(folder_spec.load_training(1, 0.0, None).map(|(t, _)| t));
    assert!(
        error.contains("zzz.png") && error.contains("not an image"),
        "{error}"
    );
    // A tree without a test folder says so.
    std::fs::remove_dir_all(tree.join("test")).unwrap();
    assert!(error_of(folder_spec.load_test(1)).contains("has no `test` folder"));
}
