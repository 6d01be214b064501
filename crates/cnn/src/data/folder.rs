//! Image folders: `DIR/train/<class>/*` and `DIR/test/<class>/*`, or one tree `DIR/<class>/*`
//! (split by `--val-split`). Class names are the folder names, sorted; files are read in name
//! order. Every image is converted to one shape (by default that of the first training image:
//! its size; grey when it is grey, RGB otherwise) and kept as bytes.

use super::Dataset;
use crate::error::{Error, Result};
use crate::preprocess::{decode_picture, Preprocessing};
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

/// Class folders of a split root, sorted by name.
fn class_folders(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let folders: Vec<_> = sorted_entries(root, true)?
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, p)
        })
        .collect();
    if folders.len() < 2 {
        return Err(Error::file(
            root,
            format!(
                "{} class folder(s); a data set needs at least two (DIR/<class>/<image>)",
                folders.len()
            ),
        ));
    }
    if folders.len() > usize::from(u16::MAX) {
        return Err(Error::file(root, "too many class folders"));
    }
    Ok(folders)
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

fn read(path: &Path) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let picture = decode_picture(&bytes).map_err(|message| Error::file(path, message))?;
    if picture.width() > MAX_SIDE || picture.height() > MAX_SIDE {
        return Err(Error::file(
            path,
            format!(
                "{}x{} pixels; images in a data set may be at most {MAX_SIDE} pixels a side",
                picture.width(),
                picture.height()
            ),
        ));
    }
    Ok(picture)
}

/// Loads `split` of the tree at `dir`, converting every image to `shape`.
pub fn load(dir: &Path, split: FolderSplit, shape: Shape) -> Result<Dataset> {
    let root = split_root(dir, split)?;
    let folders = class_folders(&root)?;
    // Pictures are converted as they are, with no inversion or contrast stretch.
    let convert = Preprocessing::identity(shape.channels);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let mut classes = Vec::with_capacity(folders.len());
    for (label, (name, folder)) in folders.into_iter().enumerate() {
        for path in sorted_entries(&folder, false)? {
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
