//! Finding labelled source files: ImageFolder trees, ImageNet's train/val layouts
//! (class folders, flat val with `LOC_val_solution.csv` or the devkit ground truth),
//! and Fashion-MNIST's IDX files.

use crate::error::{DataError, Result};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A source file that will not be converted, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SkippedFile {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped (or, for warnings, what was odd about it).
    pub reason: String,
}

/// Labelled files of one split, plus files that were found but cannot be labelled.
#[derive(Clone, Debug, Default)]
pub struct LabeledFiles {
    /// Class names; a label is an index into this list.
    pub classes: Vec<String>,
    /// Files with their labels, in a deterministic order.
    pub files: Vec<(PathBuf, u32)>,
    /// Files found that cannot be used (no class folder, no label).
    pub unlabeled: Vec<SkippedFile>,
    /// Paths not listed because a symbolic link led to a file or folder
    /// already listed (each file is stored once); not counted as files found.
    pub repeats: Vec<SkippedFile>,
}

impl LabeledFiles {
    /// All files found, usable or not.
    pub fn files_found(&self) -> usize {
        self.files.len() + self.unlabeled.len()
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io("cannot list", dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(
            entry
                .map_err(|e| DataError::io("cannot list", dir, e))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}

/// A recursive listing in sorted order that follows symbolic links but
/// enters each folder and lists each file once, by canonical path: a link
/// back up the tree (`a/self -> ../a`) would otherwise repeat every file
/// until the path grew too long, and two such links take exponential time.
#[derive(Default)]
struct Walk {
    /// Folders entered and files listed (canonical paths).
    seen_dirs: HashSet<PathBuf>,
    seen_files: HashMap<PathBuf, PathBuf>,
    /// What a link led back to, with the path it was first reached by.
    repeats: Vec<SkippedFile>,
}

impl Walk {
    /// A walk that will not enter `root` again through a link.
    fn below(root: &Path) -> Self {
        let mut walk = Walk::default();
        if let Ok(canonical) = root.canonicalize() {
            walk.seen_dirs.insert(canonical);
        }
        walk
    }

    /// Appends the regular files under `dir` to `out`.
    fn files_under(&mut self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let canonical = dir
            .canonicalize()
            .map_err(|e| DataError::io("cannot resolve", dir, e))?;
        if !self.seen_dirs.insert(canonical.clone()) {
            self.repeats.push(SkippedFile {
                path: dir.to_path_buf(),
                reason: format!(
                    "a link to {}, which is already scanned (a symbolic-link loop, or a \
                     second link to one folder); its files are stored once",
                    canonical.display()
                ),
            });
            return Ok(());
        }
        self.list(dir, out)
    }

    fn list(&mut self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for path in sorted_entries(dir)? {
            if path.is_dir() {
                self.files_under(&path, out)?;
                continue;
            }
            // A dangling link cannot be resolved: listed, its read fails and reports it.
            let Ok(canonical) = path.canonicalize() else {
                out.push(path);
                continue;
            };
            match self.seen_files.get(&canonical) {
                Some(first) => self.repeats.push(SkippedFile {
                    reason: format!(
                        "the same file as {} (reached through a symbolic link); stored once",
                        first.display()
                    ),
                    path,
                }),
                None => {
                    self.seen_files.insert(canonical, path.clone());
                    out.push(path);
                }
            }
        }
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Scans an ImageFolder tree (`root/<class>/**/file`). Classes are the sorted
/// folder names, as torchvision's `ImageFolder` does. With `known_classes`, every
/// folder must be one of them and labels index into that list.
pub fn scan_image_folder(root: &Path, known_classes: Option<&[String]>) -> Result<LabeledFiles> {
    if !root.is_dir() {
        return Err(DataError::BadSource {
            path: root.to_path_buf(),
            problem: "is not a directory; give the folder holding one sub-folder per class".into(),
        });
    }
    let mut found = LabeledFiles::default();
    let mut class_dirs = Vec::new();
    for path in sorted_entries(root)? {
        if path.is_dir() {
            class_dirs.push(path);
        } else {
            found.unlabeled.push(SkippedFile {
                path,
                reason: "not inside a class folder".into(),
            });
        }
    }
    if class_dirs.is_empty() {
        return Err(DataError::BadSource {
            path: root.to_path_buf(),
            problem: "has no class sub-folders (expected <class>/<image> files)".into(),
        });
    }
    found.classes = match known_classes {
        Some(known) => known.to_vec(),
        None => class_dirs.iter().map(|d| file_name(d)).collect(),
    };
    let label_of: HashMap<&str, u32> = found
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut walk = Walk::below(root);
    let mut files = Vec::new();
    for dir in &class_dirs {
        let name = file_name(dir);
        let label = *label_of
            .get(name.as_str())
            .ok_or_else(|| DataError::BadSource {
                path: dir.clone(),
                problem: format!(
                    "class folder `{name}` is not one of the {} training classes",
                    found.classes.len()
                ),
            })?;
        files.clear();
        walk.files_under(dir, &mut files)?;
        found.files.extend(files.drain(..).map(|f| (f, label)));
    }
    found.repeats = walk.repeats;
    Ok(found)
}

/// Reads `LOC_val_solution.csv` (`ImageId,PredictionString` with the wnid first).
fn read_loc_solution(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io("cannot read", path, e))?;
    let mut labels = HashMap::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line
            .split_once(',')
            .and_then(|(id, prediction)| Some((id.trim(), prediction.split_whitespace().next()?)));
        let (id, wnid) = parsed.ok_or_else(|| DataError::BadSource {
            path: path.to_path_buf(),
            problem: format!(
                "line {}: expected `ImageId,wnid ...`, found `{line}`",
                number + 1
            ),
        })?;
        labels.insert(id.to_string(), wnid.to_string());
    }
    Ok(labels)
}

/// Reads the devkit's `ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012_ID
/// per line, for val images 1, 2, ...) with `map_clsloc.txt` (`wnid id name`).
fn read_devkit_ground_truth(truth: &Path) -> Result<HashMap<String, String>> {
    let mapping_path = truth.with_file_name("map_clsloc.txt");
    let mapping = std::fs::read_to_string(&mapping_path).map_err(|e| DataError::BadSource {
        path: mapping_path.clone(),
        problem: format!(
            "{e}; the devkit ground truth uses ILSVRC2012_IDs, which need map_clsloc.txt \
             (`wnid id name` per line) beside it to become wnids (meta.mat is not read)"
        ),
    })?;
    let mut wnid_of_id = HashMap::new();
    for line in mapping.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        match (
            fields.next(),
            fields.next().and_then(|id| id.parse::<u32>().ok()),
        ) {
            (Some(wnid), Some(id)) => wnid_of_id.insert(id, wnid.to_string()),
            _ => {
                return Err(DataError::BadSource {
                    path: mapping_path,
                    problem: format!("expected `wnid id name`, found `{line}`"),
                })
            }
        };
    }
    let text =
        std::fs::read_to_string(truth).map_err(|e| DataError::io("cannot read", truth, e))?;
    let mut labels = HashMap::new();
    for (number, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let wnid = line
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(|id| wnid_of_id.get(&id))
            .ok_or_else(|| DataError::BadSource {
                path: truth.to_path_buf(),
                problem: format!(
                    "line {}: `{line}` is not an id listed in map_clsloc.txt",
                    number + 1
                ),
            })?;
        labels.insert(format!("ILSVRC2012_val_{:08}", number + 1), wnid.clone());
    }
    Ok(labels)
}

/// Label files looked for when the val folder is flat, in order.
pub const VAL_LABEL_FILE_NAMES: [&str; 2] = [
    "LOC_val_solution.csv",
    "ILSVRC2012_validation_ground_truth.txt",
];

/// Finds the label file of a flat val folder: in the folder, or next to it, or
/// next to the dataset root.
pub fn find_val_labels(val_dir: &Path, src: &Path) -> Option<PathBuf> {
    let mut candidates = vec![val_dir.to_path_buf(), src.to_path_buf()];
    candidates.extend(val_dir.parent().map(Path::to_path_buf));
    candidates
        .iter()
        .flat_map(|dir| VAL_LABEL_FILE_NAMES.iter().map(move |name| dir.join(name)))
        .find(|path| path.is_file())
}

/// Scans a flat val folder (`ILSVRC2012_val_*.JPEG`) labelled by `labels_file`
/// (`LOC_val_solution.csv` or the devkit ground truth). Files without a label are
/// reported, not dropped.
pub fn scan_flat_val(
    val_dir: &Path,
    labels_file: &Path,
    classes: &[String],
) -> Result<LabeledFiles> {
    let wnid_of_image = if file_name(labels_file).ends_with(".csv") {
        read_loc_solution(labels_file)?
    } else {
        read_devkit_ground_truth(labels_file)?
    };
    let label_of: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut found = LabeledFiles {
        classes: classes.to_vec(),
        ..LabeledFiles::default()
    };
    let mut walk = Walk::default();
    let mut files = Vec::new();
    walk.files_under(val_dir, &mut files)?;
    found.repeats = walk.repeats;
    for path in files {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match wnid_of_image.get(&stem) {
            None => found.unlabeled.push(SkippedFile {
                path,
                reason: format!("no label for `{stem}` in {}", labels_file.display()),
            }),
            Some(wnid) => match label_of.get(wnid.as_str()) {
                Some(&label) => found.files.push((path, label)),
                None => found.unlabeled.push(SkippedFile {
                    path,
                    reason: format!("its class `{wnid}` is not one of the training classes"),
                }),
            },
        }
    }
    Ok(found)
}

/// Reads an IDX file (`name`, or `name.gz`), returning its dimensions and bytes.
pub fn read_idx(dir: &Path, name: &str, expected_magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let plain = dir.join(name);
    let gzipped = dir.join(format!("{name}.gz"));
    let (path, bytes) = if plain.is_file() {
        let bytes = std::fs::read(&plain).map_err(|e| DataError::io("cannot read", &plain, e))?;
        (plain, bytes)
    } else if gzipped.is_file() {
        let file =
            std::fs::File::open(&gzipped).map_err(|e| DataError::io("cannot read", &gzipped, e))?;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::io("cannot decompress", &gzipped, e))?;
        (gzipped, bytes)
    } else {
        return Err(DataError::BadSource {
            path: plain,
            problem: "not found (nor with .gz); install Debian's dataset-fashion-mnist package \
                      or give --src the folder holding the IDX files"
                .into(),
        });
    };
    let bad = |problem: String| DataError::BadSource {
        path: path.clone(),
        problem,
    };
    if bytes.len() < 4
        || u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes")) != expected_magic
    {
        return Err(bad(format!(
            "not an IDX file with magic {expected_magic:#010x}"
        )));
    }
    let rank = (expected_magic & 0xff) as usize;
    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(bad("IDX header is truncated".into()));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|d| {
            u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected_len: usize = dims.iter().product();
    if bytes.len() - header_len != expected_len {
        return Err(bad(format!(
            "IDX data has {} bytes but dimensions {dims:?} need {expected_len}",
            bytes.len() - header_len
        )));
    }
    Ok((dims, bytes[header_len..].to_vec()))
}

/// One split of an IDX image set (Fashion-MNIST, MNIST): `n` greyscale
/// images of `height x width` bytes, row-major, and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxImages {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub height: usize,
    pub width: usize,
}

impl IdxImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Reads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte`
/// (plain or `.gz`) from `src`, e.g. prefix `train` or `t10k`.
pub fn read_idx_images(src: &Path, prefix: &str) -> Result<IdxImages> {
    let (image_dims, pixels) = read_idx(src, &format!("{prefix}-images-idx3-ubyte"), 0x803)?;
    let (label_dims, labels) = read_idx(src, &format!("{prefix}-labels-idx1-ubyte"), 0x801)?;
    if image_dims[0] != label_dims[0] {
        return Err(DataError::BadSource {
            path: src.to_path_buf(),
            problem: format!(
                "{prefix}: {} images but {} labels",
                image_dims[0], label_dims[0]
            ),
        });
    }
    Ok(IdxImages {
        pixels,
        labels,
        height: image_dims[1],
        width: image_dims[2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_folder_sorts_classes_and_reports_stray_files() {
        let dir = tempfile::tempdir().unwrap();
        for (class, file) in [("b", "2.jpg"), ("a", "x/1.jpg"), ("a", "0.jpg")] {
            let path = dir.path().join(class).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        std::fs::write(dir.path().join("stray.txt"), b"").unwrap();
        let found = scan_image_folder(dir.path(), None).unwrap();
        assert_eq!(found.classes, ["a", "b"]);
        let names: Vec<_> = found
            .files
            .iter()
            .map(|(p, l)| (p.strip_prefix(dir.path()).unwrap().to_owned(), *l))
            .collect();
        assert_eq!(
            names,
            [
                (PathBuf::from("a/0.jpg"), 0),
                (PathBuf::from("a/x/1.jpg"), 0),
                (PathBuf::from("b/2.jpg"), 1)
            ]
        );
        assert_eq!(found.unlabeled.len(), 1);
        assert_eq!(found.files_found(), 4);
        let error = scan_image_folder(dir.path(), Some(&["a".to_string()])).unwrap_err();
        assert!(error.to_string().contains("`b` is not one of"), "{error}");
    }

    #[test]
    fn devkit_ground_truth_needs_and_uses_the_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let truth = dir.path().join("ILSVRC2012_validation_ground_truth.txt");
        std::fs::write(&truth, "2\n1\n").unwrap();
        assert!(read_devkit_ground_truth(&truth)
            .unwrap_err()
            .to_string()
            .contains("map_clsloc.txt"));
        std::fs::write(dir.path().join("map_clsloc.txt"), "n02 1 dog\nn01 2 fish\n").unwrap();
        let labels = read_devkit_ground_truth(&truth).unwrap();
        assert_eq!(labels["ILSVRC2012_val_00000001"], "n01");
        assert_eq!(labels["ILSVRC2012_val_00000002"], "n02");
    }

    #[test]
    fn idx_reader_checks_magic_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9];
        std::fs::write(dir.path().join("labels"), &bytes).unwrap();
        assert_eq!(
            read_idx(dir.path(), "labels", 0x801).unwrap(),
            (vec![3], vec![7, 8, 9])
        );
        assert!(read_idx(dir.path(), "labels", 0x803).is_err());
        bytes.pop();
        std::fs::write(dir.path().join("labels"), &bytes).unwrap();
        assert!(read_idx(dir.path(), "labels", 0x801)
            .unwrap_err()
            .to_string()
            .contains("need 3"));
        assert!(read_idx(dir.path(), "missing", 0x801)
            .unwrap_err()
            .to_string()
            .contains("dataset-fashion-mnist"));
    }

    #[test]
    fn idx_images_pair_images_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        images.extend([1, 2, 3, 4]);
        std::fs::write(dir.path().join("x-images-idx3-ubyte"), &images).unwrap();
        std::fs::write(
            dir.path().join("x-labels-idx1-ubyte"),
            [0, 0, 8, 1, 0, 0, 0, 2, 5, 6],
        )
        .unwrap();
        let set = read_idx_images(dir.path(), "x").unwrap();
        assert_eq!((set.len(), set.height, set.width), (2, 1, 2));
        assert_eq!((set.pixels, set.labels), (vec![1, 2, 3, 4], vec![5, 6]));
        std::fs::write(
            dir.path().join("x-labels-idx1-ubyte"),
            [0, 0, 8, 1, 0, 0, 0, 1, 5],
        )
        .unwrap();
        let error = read_idx_images(dir.path(), "x").unwrap_err().to_string();
        assert!(error.contains("2 images but 1 labels"), "{error}");
    }
}
