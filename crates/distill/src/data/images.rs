//! Image classification sets: IDX (MNIST-style, raw or gzip) and CSV loaders, and the random
//! ±N pixel jitter augmentation of Hinton et al. (2015).

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::rng::SplitMix64;
use crate::io::fetch;
use crate::{Error, Result};

/// File format of an image set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// IDX (MNIST) files, raw or gzip: separate image and label files.
    Idx,
    /// CSV, one image per row: a label column and the pixels.
    Csv,
}

/// Where the images are and how to read them.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageData {
    pub format: ImageFormat,
    /// IDX: training images file.
    #[serde(default)]
    pub train_images: Option<String>,
    /// IDX: training labels file.
    #[serde(default)]
    pub train_labels: Option<String>,
    /// IDX: test images file.
    #[serde(default)]
    pub test_images: Option<String>,
    /// IDX: test labels file.
    #[serde(default)]
    pub test_labels: Option<String>,
    /// CSV: training file.
    #[serde(default)]
    pub train: Option<String>,
    /// CSV: test file.
    #[serde(default)]
    pub test: Option<String>,
    /// CSV: index of the label column (default 0; negative counts from the end, -1 = the last
    /// column); every other column is a pixel.
    #[serde(default)]
    pub label_column: i64,
    /// CSV: whether the first row is a header (default: detected — a first row that is not all
    /// numbers is a header).
    #[serde(default)]
    pub header: Option<bool>,
    /// Pixels are divided by this (default 255 for 8-bit images; 16 for sklearn digits).
    #[serde(default = "default_pixel_scale")]
    pub pixel_scale: f64,
    /// Image height × width (default: IDX header, or the square root of the CSV pixel count).
    #[serde(default)]
    pub image_size: Option<[usize; 2]>,
    /// Students see labels for only the first N (shuffled, class-balanced not guaranteed)
    /// training images; the teacher's soft targets still cover all of them (KD with
    /// unlabeled data). The scratch student trains on those N only.
    #[serde(default)]
    pub labeled_subset: Option<usize>,
}

fn default_pixel_scale() -> f64 {
    255.0
}

impl ImageData {
    /// The paths this section names, as written.
    pub fn paths(&self) -> Vec<&str> {
        [&self.train_images, &self.train_labels, &self.test_images, &self.test_labels, &self.train, &self.test]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .collect()
    }

    /// Checks that the files the format needs are named and exist, and the values are in range.
    pub fn validate(&self) -> Result<()> {
        let d = self;
        let need = |v: &Option<String>, key: &str| -> Result<()> {
            match v {
                Some(p) => fetch::check_path(p, &format!("data.{key}")).map(|_| ()),
                None => Err(Error::Recipe(format!("data.{key} is required for format = {:?}", d.format))),
            }
        };
        match d.format {
            ImageFormat::Idx => {
                need(&d.train_images, "train_images")?;
                need(&d.train_labels, "train_labels")?;
                need(&d.test_images, "test_images")?;
                need(&d.test_labels, "test_labels")?;
            }
            ImageFormat::Csv => {
                need(&d.train, "train")?;
                need(&d.test, "test")?;
            }
        }
        if !(d.pixel_scale > 0.0 && d.pixel_scale.is_finite()) {
            return Err(Error::Recipe(format!("data.pixel_scale must be > 0, got {}", d.pixel_scale)));
        }
        if let Some([h, w]) = d.image_size {
            if h == 0 || w == 0 {
                return Err(Error::Recipe("data.image_size must be positive".into()));
            }
        }
        if d.labeled_subset == Some(0) {
            return Err(Error::Recipe("data.labeled_subset must be > 0".into()));
        }
        Ok(())
    }
}

/// A labelled image set held in memory.
#[derive(Debug)]
pub struct ImageSet {
    /// Pixels scaled to roughly [0, 1]. Shape `[N, 1, H, W]`, f32.
    pub images: Tensor,
    /// Class ids. Shape `[N]`, i64.
    pub labels: Tensor,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes, `max(label) + 1`.
    pub fn num_classes(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            self.labels.max().int64_value(&[]) as usize + 1
        }
    }
}

/// Class indices at or above this are refused (they would size the classifier's output).
pub const MAX_CLASSES: usize = 1 << 20;

/// Reads a whole IDX file, transparently un-gzipping it when it starts with the gzip magic.
/// A gzip stream is inflated only as far as its IDX header says the file reaches (plus one
/// byte, so that trailing data is still reported): a small file cannot inflate without bound.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let corrupt = |e: std::io::Error| Error::format(path, format!("corrupt gzip stream: {e}"));
    let mut gz = flate2::read::GzDecoder::new(&raw[..]);
    let mut out = Vec::new();
    (&mut gz).take(4).read_to_end(&mut out).map_err(corrupt)?;
    let ndim = if out.len() == 4 { usize::from(out[3]).min(4) } else { 0 };
    (&mut gz).take(4 * ndim as u64).read_to_end(&mut out).map_err(corrupt)?;
    let want = (0..ndim)
        .filter_map(|i| out.get(4 + 4 * i..8 + 4 * i))
        .map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        .try_fold(1u64, |a, d| a.checked_mul(d))
        .unwrap_or(u64::MAX);
    gz.take(want.saturating_add(1)).read_to_end(&mut out).map_err(corrupt)?;
    Ok(out)
}

/// An IDX array of unsigned bytes: its dimensions and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses an IDX file (magic `00 00 08 ndim`, big-endian u32 dims, then u8 data).
pub fn read_idx(path: &Path) -> Result<Idx> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes).map_err(|m| Error::format(path, m))
}

/// Parses IDX bytes (see [`read_idx`]).
pub fn parse_idx(b: &[u8]) -> std::result::Result<Idx, String> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err("not an IDX file (bad magic)".into());
    }
    if b[2] != 0x08 {
        return Err(format!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", b[2]));
    }
    let ndim = b[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(format!("IDX with {ndim} dimensions is not supported"));
    }
    let header = 4 + 4 * ndim;
    if b.len() < header {
        return Err(format!("truncated IDX header ({} of {header} bytes)", b.len()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize)
        .collect();
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("IDX dimensions overflow")?;
    let have = b.len() - header;
    if have < want {
        return Err(format!("truncated IDX data: dims {dims:?} need {want} bytes, file has {have}"));
    }
    if have > want {
        return Err(format!("IDX data has {} trailing bytes after dims {dims:?}", have - want));
    }
    Ok(Idx { dims, data: b[header..].to_vec() })
}

fn idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let idx = read_idx(path)?;
    match idx.dims[..] {
        [n, h, w] => Ok((idx.data, n, h, w)),
        [n, 1, h, w] => Ok((idx.data, n, h, w)),
        _ => Err(Error::format(path, format!("expected images [N, H, W], found dims {:?}", idx.dims))),
    }
}

fn idx_labels(path: &Path) -> Result<Vec<u8>> {
    let idx = read_idx(path)?;
    if idx.dims.len() != 1 {
        return Err(Error::format(path, format!("expected labels [N], found dims {:?}", idx.dims)));
    }
    Ok(idx.data)
}

fn build(pixels: Vec<f32>, labels: Vec<i64>, h: usize, w: usize) -> ImageSet {
    let n = labels.len() as i64;
    ImageSet {
        images: Tensor::from_slice(&pixels).view([n, 1, h as i64, w as i64]),
        labels: Tensor::from_slice(&labels),
        height: h,
        width: w,
    }
}

/// Loads an IDX image file and its label file.
pub fn load_idx_pair(images: &Path, labels: &Path, scale: f64) -> Result<ImageSet> {
    let (px, n, h, w) = idx_images(images)?;
    let lb = idx_labels(labels)?;
    if lb.len() != n {
        return Err(Error::Invalid(format!(
            "{} has {n} images but {} has {} labels",
            images.display(),
            labels.display(),
            lb.len()
        )));
    }
    if n == 0 {
        return Err(Error::format(images, "no images"));
    }
    let inv = (1.0 / scale) as f32;
    Ok(build(px.iter().map(|&p| p as f32 * inv).collect(), lb.iter().map(|&l| l as i64).collect(), h, w))
}

/// Loads a CSV image set: one row per image, the label in column `label_column`, every other
/// column a pixel value. A header row is skipped when `header` is true, or when `None` and the
/// first row does not parse as numbers.
pub fn load_csv(
    path: &Path,
    label_column: i64,
    header: Option<bool>,
    scale: f64,
    size: Option<[usize; 2]>,
) -> Result<ImageSet> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(text)
        .map_err(|e| Error::format(path, format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to())))?;
    parse_csv(path, &text, label_column, header, scale, size)
}

/// [`load_csv`] on text already read; `path` names it in errors.
pub fn parse_csv(
    path: &Path,
    text: &str,
    label_column: i64,
    header: Option<bool>,
    scale: f64,
    size: Option<[usize; 2]>,
) -> Result<ImageSet> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut ncols = None;
    let inv = (1.0 / scale) as f32;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let numeric = fields.iter().all(|f| f.parse::<f64>().is_ok());
        if i == 0 && (header == Some(true) || (header.is_none() && !numeric)) {
            continue;
        }
        let at = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        match ncols {
            None => ncols = Some(fields.len()),
            Some(c) if c != fields.len() => return Err(at(format!("{} columns, expected {c}", fields.len()))),
            _ => {}
        }
        let n_fields = fields.len() as i64;
        let label_at = if label_column < 0 { n_fields + label_column } else { label_column };
        if !(0..n_fields).contains(&label_at) {
            return Err(at(format!("label_column {label_column} but the row has {n_fields} columns")));
        }
        for (j, f) in fields.iter().enumerate() {
            let v: f64 = f.parse().map_err(|_| at(format!("column {}: `{f}` is not a number", j + 1)))?;
            if j as i64 == label_at {
                if v < 0.0 || v.fract() != 0.0 {
                    return Err(at(format!("label `{f}` is not a non-negative integer")));
                }
                // Labels size the classifier: a class index in the millions is a wrong column.
                if v >= MAX_CLASSES as f64 {
                    return Err(at(format!(
                        "label `{f}` is not a class index below {MAX_CLASSES} (is data.label_column right?)"
                    )));
                }
                labels.push(v as i64);
            } else {
                pixels.push(v as f32 * inv);
            }
        }
    }
    let n = labels.len();
    if n == 0 {
        return Err(Error::format(path, "no data rows"));
    }
    let npx = pixels.len() / n;
    let [h, w] = match size {
        Some(s) => s,
        None => {
            let side = (npx as f64).sqrt().round() as usize;
            if side * side != npx {
                return Err(Error::format(
                    path,
                    format!("{npx} pixels per row is not a square image; set data.image_size = [H, W]"),
                ));
            }
            [side, side]
        }
    };
    if h.checked_mul(w) != Some(npx) {
        return Err(Error::format(path, format!("{npx} pixels per row but image_size is {h}x{w}")));
    }
    Ok(build(pixels, labels, h, w))
}

/// Loads the train and test sets a recipe names.
pub fn load_recipe_data(d: &ImageData) -> Result<(ImageSet, ImageSet)> {
    let p = |v: &Option<String>| -> Result<std::path::PathBuf> {
        fetch::resolve(v.as_deref().ok_or_else(|| Error::Recipe("data: missing path".into()))?)
    };
    let (train, test) = match d.format {
        ImageFormat::Idx => (
            load_idx_pair(&p(&d.train_images)?, &p(&d.train_labels)?, d.pixel_scale)?,
            load_idx_pair(&p(&d.test_images)?, &p(&d.test_labels)?, d.pixel_scale)?,
        ),
        ImageFormat::Csv => (
            load_csv(&p(&d.train)?, d.label_column, d.header, d.pixel_scale, d.image_size)?,
            load_csv(&p(&d.test)?, d.label_column, d.header, d.pixel_scale, d.image_size)?,
        ),
    };
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::Invalid(format!(
            "train images are {}x{} but test images are {}x{}",
            train.height, train.width, test.height, test.width
        )));
    }
    // A training set with one class trains a constant and reports it as 100% accurate.
    let one_class = train.is_empty() || train.labels.min().int64_value(&[]) == train.labels.max().int64_value(&[]);
    if one_class {
        let value =
            if train.is_empty() { "none".to_string() } else { train.labels.get(0).int64_value(&[]).to_string() };
        let hint = match d.format {
            ImageFormat::Csv => {
                format!("; data.label_column = {} picks the label (-1 = the last column)", d.label_column)
            }
            ImageFormat::Idx => String::new(),
        };
        return Err(Error::Invalid(format!(
            "the training labels hold one class (every label is {value}): a classifier needs at least two{hint}"
        )));
    }
    if test.num_classes() > train.num_classes() {
        return Err(Error::Invalid(format!(
            "test set has label {} but the training set's labels stop at {}",
            test.num_classes() - 1,
            train.num_classes() - 1
        )));
    }
    Ok((train, test))
}

/// Shifts each image by an independent random offset in `[-max, max]` pixels on both axes,
/// filling the uncovered border with zeros (Hinton et al. 2015 used ±2 px for the teacher).
///
/// # Shapes
/// `x: [B, C, H, W]` → `[B, C, H, W]`.
pub fn jitter(x: &Tensor, max: usize, rng: &mut SplitMix64) -> Tensor {
    if max == 0 {
        return x.shallow_clone();
    }
    let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
    let m = max as i64;
    let padded = x.constant_pad_nd([m, m, m, m]); // [B, C, H+2m, W+2m]
    let crops: Vec<Tensor> = (0..b)
        .map(|i| {
            let dy = rng.below(2 * max as u64 + 1) as i64;
            let dx = rng.below(2 * max as u64 + 1) as i64;
            padded.get(i).narrow(1, dy, h).narrow(2, dx, w) // [C, H, W]
        })
        .collect();
    Tensor::stack(&crops, 0).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip stream that inflates far past what its IDX header describes is read only as far
    /// as the header reaches (and one byte more, reported as trailing data).
    #[test]
    fn gzip_is_inflated_only_as_far_as_the_idx_header_reaches() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.idx.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&idx_bytes(&[2, 2], &[1, 2, 3, 4])).unwrap();
        gz.write_all(&vec![0u8; 64 << 20]).unwrap(); // 64 MiB of zeros, ~64 KiB compressed
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let bytes = read_maybe_gz(&path).unwrap();
        assert_eq!(bytes.len(), 4 + 8 + 4 + 1);
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains("1 trailing bytes after dims [2, 2]"), "{err}");
    }

    #[test]
    fn csv_label_column_counts_from_the_end_when_negative() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.csv");
        std::fs::write(&path, "1,2,3,9\n4,5,6,7\n").unwrap();
        let set = load_csv(&path, -1, Some(false), 1.0, Some([1, 3])).unwrap();
        assert_eq!(Vec::<i64>::try_from(&set.labels).unwrap(), [9, 7]);
        assert_eq!(Vec::<f32>::try_from(&set.images.view([-1])).unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let err = load_csv(&path, -5, Some(false), 1.0, Some([1, 3])).unwrap_err().to_string();
        assert!(err.contains("label_column -5 but the row has 4 columns"), "{err}");
    }

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn idx_parses_and_rejects_corruption() {
        let ok = idx_bytes(&[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 255]);
        assert_eq!(parse_idx(&ok).unwrap().dims, vec![2, 2, 2]);
        let e = parse_idx(&ok[..ok.len() - 1]).unwrap_err();
        assert_eq!(e, "truncated IDX data: dims [2, 2, 2] need 8 bytes, file has 7");
        assert!(parse_idx(&ok[..6]).unwrap_err().starts_with("truncated IDX header"));
        assert!(parse_idx(b"PK\x03\x04zzzz").unwrap_err().contains("bad magic"));
        let mut f32idx = ok.clone();
        f32idx[2] = 0x0d;
        assert!(parse_idx(&f32idx).unwrap_err().contains("0x0d is not supported"));
    }

    #[test]
    fn jitter_moves_pixels_within_bounds() {
        let x = Tensor::zeros([64, 1, 7, 7], (Kind::Float, tch::Device::Cpu));
        let _ = x.narrow(2, 3, 1).narrow(3, 3, 1).fill_(1.0); // one bright pixel at the centre
        let mut rng = SplitMix64::new(7);
        let y = jitter(&x, 2, &mut rng);
        assert_eq!(y.size(), vec![64, 1, 7, 7]);
        // Mass is preserved (the pixel never leaves the image) and lands within ±2 of the centre.
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 64.0);
        let inner = y.narrow(2, 1, 5).narrow(3, 1, 5).sum(Kind::Float).double_value(&[]);
        assert_eq!(inner, 64.0);
        // Not all images get the same shift.
        let moved = y.narrow(2, 3, 1).narrow(3, 3, 1).sum(Kind::Float).double_value(&[]);
        assert!(moved < 32.0, "{moved}");
    }
}
