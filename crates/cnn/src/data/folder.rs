//! Image folders: `DIR/train/<class>/*` and `DIR/test/<class>/*`, or one tree `DIR/<class>/*`
//! (split by `--val-split`). Class names are the folder names, sorted; files are read in name
//! order. Every image is converted to one shape (by default that of the first training image:
//! its size; grey when it is grey, RGB otherwise) and kept as bytes.

use super::Dataset;
use crate::error::{Error, Result};
use crate::fsutil::read_file;
use crate::limits::{self, MAX_CLASSES, MAX_DATASET_BYTES, MAX_PICTURE_FILE_BYTES};
use crate::preprocess::{decode_picture, picture_dimensions, Preprocessing};
use crate::tensor::Shape;
use std::path::{Path, PathBuf};

/// The largest image side accepted, so one huge picture cannot exhaust memory for every image.
const MAX_SIDE: u32 = 1024;

/// Which part of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolderSplit {
    /// `DIR/train`, or `DIR` itself when it has no `train` folder.
    Train,
    /// `DIR/test`.
    Test,
}

/// The folder holding one class folder per class for `split`.
pub fn split_root(dir: &Path, split: FolderSplit) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "not a folder"));
    }
    let train = dir.join("train");
    match split {
        FolderSplit::Train if train.is_dir() => Ok(train),
        FolderSplit::Train => Ok(dir.to_path_buf()),
        FolderSplit::Test => {
            let test = dir.join("test");
            if test.is_dir() {
                Ok(test)
            } else {
                Err(Error::file(
                    dir,
                    "has no `test` folder (expected DIR/train/<class>/* and DIR/test/<class>/*)",
                ))
            }
        }
    }
}

fn sorted_entries(dir: &Path, want_dirs: bool) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && path.is_dir() == want_dirs {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

/// Class folders of a split root, sorted by name. Names must be UTF-8: two names that differ
/// only in bytes that are not would become the same class.
fn class_folders(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let folders = sorted_entries(root, true)?
        .into_iter()
        .map(|p| match p.file_name().and_then(|n| n.to_str()) {
            Some(name) => Ok((name.to_string(), p)),
            None => Err(Error::file(
                &p,
                "a class folder whose name is not UTF-8: rename it",
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    if folders.len() < 2 {
        return Err(Error::file(
            root,
            format!(
                "{} class folder(s); a data set needs at least two (DIR/<class>/<image>)",
                folders.len()
            ),
        ));
    }
    if folders.len() > MAX_CLASSES {
        return Err(Error::file(
            root,
            format!(
                "{} class folders, over the limit of {MAX_CLASSES}",
                folders.len()
            ),
        ));
    }
    Ok(folders)
}

/// The class names of a split, sorted: its class folders' names.
pub fn class_names(dir: &Path, split: FolderSplit) -> Result<Vec<String>> {
    let root = split_root(dir, split)?;
    Ok(class_folders(&root)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// The shape of the first training image: every image is converted to it.
pub fn probe_shape(dir: &Path) -> Result<Shape> {
    let root = split_root(dir, FolderSplit::Train)?;
    for (_, folder) in class_folders(&root)? {
        if let Some(first) = sorted_entries(&folder, false)?.first() {
            let picture = read(first)?;
            let channels = if picture.color().has_color() { 3 } else { 1 };
            return Ok(Shape::new(
                channels,
                picture.height() as usize,
                picture.width() as usize,
            ));
        }
    }
    Err(Error::file(root, "no image files in the class folders"))
}

/// Reads one picture of the tree: a regular file, at most [`MAX_SIDE`] pixels a side (checked
/// on its header, before decoding).
fn read(path: &Path) -> Result<image::DynamicImage> {
    let bytes = read_file(path, MAX_PICTURE_FILE_BYTES)?;
    let (_, (width, height)) =
        picture_dimensions(&bytes).map_err(|message| Error::file(path, message))?;
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::file(
            path,
            format!(
                "{width}x{height} pixels; images in a data set may be at most {MAX_SIDE} pixels a side"
            ),
        ));
    }
    decode_picture(&bytes).map_err(|message| Error::file(path, message))
}

/// Loads `split` of the tree at `dir`, converting every image to `shape`. Every class folder
/// must hold an image, and the test split must have the training split's classes.
pub fn load(dir: &Path, split: FolderSplit, shape: Shape) -> Result<Dataset> {
    let root = split_root(dir, split)?;
    let folders = class_folders(&root)?;
    if split == FolderSplit::Test {
        let train = class_names(dir, FolderSplit::Train)?;
        let test: Vec<&str> = folders.iter().map(|(name, _)| name.as_str()).collect();
        if test != train {
            return Err(Error::file(
                &root,
                format!(
                    "its classes ({}) are not the training split's ({})",
                    test.join(", "),
                    train.join(", ")
                ),
            ));
        }
    }
    let image_bytes = limits::image_values(shape).map_err(|e| Error::file(&root, e))? as u64;
    // Pictures are converted as they are, with no inversion or contrast stretch.
    let convert = Preprocessing::identity(shape.channels);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let mut classes = Vec::with_capacity(folders.len());
    for (label, (name, folder)) in folders.into_iter().enumerate() {
        let files = sorted_entries(&folder, false)?;
        if files.is_empty() {
            return Err(Error::file(
                &folder,
                "an empty class folder: every class needs at least one image",
            ));
        }
        for path in files {
            if (labels.len() as u64 + 1) * image_bytes > MAX_DATASET_BYTES {
                return Err(Error::file(
                    &root,
                    format!(
                        "more than {} images of {shape} pass the limit of {MAX_DATASET_BYTES} \
                         bytes of a data set",
                        labels.len()
                    ),
                ));
            }
            let picture = read(&path)?;
            let pixels = convert.prepare_image(&picture, shape)?;
            images.extend_from_slice(&pixels);
            labels.push(label as u16);
        }
        classes.push(name);
    }
    if labels.is_empty() {
        return Err(Error::file(root, "no image files in the class folders"));
    }
    Dataset::new(shape, classes, images, labels)
}

/// Writes `dataset` as a tree of PNG files `root/<class>/<index>.png`: how tests make trees.
pub fn write_png_tree(dataset: &Dataset, root: &Path) -> Result<()> {
    let shape = dataset.shape();
    for class in dataset.classes() {
        let folder = root.join(class);
        std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    }
    for index in 0..dataset.len() {
        let path = root
            .join(&dataset.classes()[dataset.label(index)])
            .join(format!("{index:06}.png"));
        let (w, h) = (shape.width as u32, shape.height as u32);
        let pixels = dataset.image(index);
        let result = match shape.channels {
            1 => image::GrayImage::from_raw(w, h, pixels.to_vec()).map(|i| i.save(&path)),
            3 => {
                let plane = shape.plane();
                let interleaved = (0..plane)
                    .flat_map(|p| (0..3).map(move |c| pixels[c * plane + p]))
                    .collect();
                image::RgbImage::from_raw(w, h, interleaved).map(|i| i.save(&path))
            }
            _ => None,
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::file(&path, e.to_string())),
            None => return Err(Error::Invalid("PNG trees hold grey or RGB images".into())),
        }
    }
    Ok(())
}
