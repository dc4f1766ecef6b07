//! User-supplied labelled records: JSONL (`{"sample_id", "label", "features": [...]}` per line,
//! or `"text"` and for pair tasks `"text_pair"` instead of `features`, or an `"image"`: raw u8
//! pixels `{"shape": [h, w, c], "data_b64"}`, a file `{"format": "png" | "jpeg", "data_b64"}`, or
//! a file by reference `{"uri"}`, which the caller's fetcher reads) or CSV (`id,label,feature...`,
//! header optional). Every problem names the line.

use std::{
    collections::HashSet,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use super::LabelledSet;
use crate::{encoder::TextInput, o2u::InputShape};

#[derive(Debug, Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {problem}")]
    Bad { path: PathBuf, line: usize, problem: String },
    #[error("{path}: no records")]
    Empty { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    /// From the file extension: `.csv` is CSV, everything else JSONL.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

#[derive(Deserialize)]
struct JsonRecord {
    sample_id: serde_json::Value,
    label: serde_json::Value,
    #[serde(default)]
    features: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    text_pair: Option<String>,
    #[serde(default)]
    image: Option<JsonImage>,
    #[serde(default)]
    annotator_id: Option<String>,
    #[serde(default)]
    vendor_id: Option<String>,
}

/// Reads image files named by URI: one answer per URI, in order, the file's bytes or why not.
pub type FetchImages<'f> = &'f dyn Fn(&[String]) -> Vec<Result<Vec<u8>, String>>;

/// Reads records. With `classes`, a label outside the list is an error; without, the classes
/// are the sorted distinct labels seen. Images named by URI are an error (use [`read_fetching`]).
pub fn read(path: &Path, format: Format, classes: Option<&[String]>) -> Result<LabelledSet, InputError> {
    read_fetching(path, format, classes, None)
}

/// Reads records as [`read`] does; images named by URI are read by `fetch`, all at once.
pub fn read_fetching(path: &Path, format: Format, classes: Option<&[String]>, fetch: Option<FetchImages>) -> Result<LabelledSet, InputError> {
    let file = File::open(path).map_err(|source| InputError::Unreadable { path: path.into(), source })?;
    let mut builder = Builder::new(path, classes);
    let mut records = Vec::new();
    let reader = BufReader::new(file);
    let mut csv_header_checked = false;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| InputError::Unreadable { path: path.into(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match format {
            Format::Jsonl => parse_json(&line),
            Format::Csv => {
                let first = !csv_header_checked;
                csv_header_checked = true;
                match parse_csv(&line) {
                    // A first row whose feature columns are not numbers is a header.
                    Err(_) if first && looks_like_header(&line) => continue,
                    other => other,
                }
            }
        };
        records.push((line_no, parsed.map_err(|problem| builder.bad(line_no, problem))?));
    }
    let uris: Vec<(usize, String)> = records.iter().filter_map(|(line, (_, _, payload, _))| if let Payload::ImageUri(uri) = payload { Some((*line, uri.clone())) } else { None }).collect();
    let mut fetched = Vec::new().into_iter();
    if let Some(&(line, _)) = uris.first() {
        let fetch = fetch.ok_or_else(|| builder.bad(line, "`image.uri`: say where images may be fetched from (--image-host HOST, --image-root DIR)".into()))?;
        let names: Vec<String> = uris.iter().map(|(_, u)| u.clone()).collect();
        fetched = fetch(&names).into_iter();
    }
    for (line, (id, label, payload, annotator)) in records {
        let payload = match payload {
            Payload::ImageUri(uri) => {
                let bytes = fetched.next().unwrap_or_else(|| Err("not fetched".into())).map_err(|why| builder.bad(line, format!("`image.uri` {uri}: {why}")))?;
                image_file(&bytes).map_err(|why| builder.bad(line, format!("`image.uri` {uri}: {why}")))?
            }
            other => other,
        };
        builder.push(line, id, label, payload, annotator)?;
    }
    builder.finish()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonImage {
    shape: Option<Vec<usize>>,
    format: Option<String>,
    data_b64: Option<String>,
    uri: Option<String>,
}

/// What a record carries.
enum Payload {
    Features(Vec<f32>),
    Text(TextInput),
    /// Pixels scaled to [0, 1], `[h, w, c]`.
    Image(Vec<f32>, [usize; 3]),
    /// A file to fetch; becomes an `Image`.
    ImageUri(String),
}

/// A fetched PNG or JPEG (told by its first bytes) at its own size and channels.
fn image_file(bytes: &[u8]) -> Result<Payload, String> {
    let encoding = super::image::Encoding::sniff(bytes).ok_or("not a PNG or JPEG file")?;
    let (pixels, shape) = super::image::decode(encoding, bytes, None, None)?;
    Ok(Payload::Image(pixels.into_iter().map(|b| b as f32 / 255.0).collect(), shape))
}

/// Raw pixels of their `shape`, or a PNG or JPEG at its own size and channels (grey stays grey).
fn image_pixels(image: JsonImage) -> Result<Payload, String> {
    use base64::Engine;
    let data = match (image.uri, image.data_b64) {
        (Some(uri), None) if image.shape.is_none() && image.format.is_none() => return Ok(Payload::ImageUri(uri)),
        (Some(_), _) => return Err("give `image.uri` or the image's data (`data_b64` with `format` or `shape`), not both".into()),
        (None, Some(data)) => data,
        (None, None) => return Err("`image` needs `data_b64` (with `shape` or `format`) or `uri`".into()),
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(data.as_bytes()).map_err(|e| format!("image.data_b64: {e}"))?;
    let (pixels, shape) = match (image.format, image.shape) {
        (None, Some(shape)) => {
            let shape: [usize; 3] = shape.as_slice().try_into().map_err(|_| format!("image.shape {shape:?}: expected [height, width, channels]"))?;
            if bytes.len() != shape.iter().product::<usize>() {
                return Err(format!("{} bytes of pixels for image.shape {shape:?}", bytes.len()));
            }
            (bytes, shape)
        }
        (Some(format), None) => {
            let encoding = super::image::Encoding::parse(&format).ok_or_else(|| format!("image.format `{format}`: use png or jpeg"))?;
            super::image::decode(encoding, &bytes, None, None)?
        }
        _ => return Err("`image` needs `shape` (raw u8 pixels) or `format` (png or jpeg), not both".into()),
    };
    Ok(Payload::Image(pixels.into_iter().map(|b| b as f32 / 255.0).collect(), shape))
}

type Parsed = (String, String, Payload, Option<String>);

fn parse_json(line: &str) -> Result<Parsed, String> {
    let rec: JsonRecord = serde_json::from_str(line).map_err(|e| format!("not a valid record: {e}"))?;
    let scalar = |v: &serde_json::Value, what: &str| match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("{what} must be a string or a number, got {other}")),
    };
    if let Some(image) = rec.image {
        if rec.features.is_some() || rec.text.is_some() {
            return Err("give one of `features`, `image` or `text`".into());
        }
        return Ok((scalar(&rec.sample_id, "sample_id")?, scalar(&rec.label, "label")?, image_pixels(image)?, rec.annotator_id.or(rec.vendor_id)));
    }
    let features = match (rec.features, rec.text) {
        (Some(features), None) if rec.text_pair.is_none() => features,
        (None, Some(text)) => {
            return Ok((scalar(&rec.sample_id, "sample_id")?, scalar(&rec.label, "label")?, Payload::Text(TextInput { text, pair: rec.text_pair }), rec.annotator_id.or(rec.vendor_id)))
        }
        (None, None) if rec.text_pair.is_some() => return Err("`text_pair` without `text`".into()),
        (None, None) => return Err("no `features` and no `text`".into()),
        _ => return Err("give `features` or `text`, not both".into()),
    };
    let features = features
        .iter()
        .enumerate()
        .map(|(j, v)| match v.as_f64() {
            Some(x) => Ok(x as f32),
            None => Err(format!("feature {j} is {v}, not a number")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((scalar(&rec.sample_id, "sample_id")?, scalar(&rec.label, "label")?, Payload::Features(features), rec.annotator_id.or(rec.vendor_id)))
}

fn parse_csv(line: &str) -> Result<Parsed, String> {
    let cols: Vec<&str> = line.split(',').map(str::trim).collect();
    if cols.len() < 3 {
        return Err(format!("expected id,label,feature... but found {} column(s)", cols.len()));
    }
    let features = cols[2..].iter().enumerate().map(|(j, c)| c.parse::<f32>().map_err(|_| format!("feature {j} (column {}) is `{c}`, not a number", j + 3))).collect::<Result<Vec<_>, _>>()?;
    Ok((cols[0].to_string(), cols[1].to_string(), Payload::Features(features), None))
}

fn looks_like_header(line: &str) -> bool {
    line.split(',').nth(2).is_some_and(|c| c.trim().parse::<f32>().is_err())
}

struct Builder<'a> {
    path: &'a Path,
    fixed_classes: Option<&'a [String]>,
    ids: HashSet<String>,
    set: LabelledSet,
    label_names: Vec<String>,
    annotators: Vec<Option<String>>,
}

impl<'a> Builder<'a> {
    fn new(path: &'a Path, classes: Option<&'a [String]>) -> Self {
        Self {
            path,
            fixed_classes: classes,
            ids: HashSet::new(),
            set: LabelledSet {
                sample_ids: Vec::new(),
                features: Vec::new(),
                shape: InputShape::Vector { dim: 0 },
                labels: Vec::new(),
                classes: Vec::new(),
                truth: None,
                annotators: None,
                items: None,
                texts: None,
            },
            label_names: Vec::new(),
            annotators: Vec::new(),
        }
    }

    fn bad(&self, line: usize, problem: String) -> InputError {
        InputError::Bad { path: self.path.into(), line, problem }
    }

    fn push(&mut self, line: usize, id: String, label: String, payload: Payload, annotator: Option<String>) -> Result<(), InputError> {
        let first = self.set.sample_ids.is_empty();
        let features = match payload {
            Payload::Text(text) => {
                if !first && self.set.texts.is_none() {
                    return Err(self.bad(line, "a `text` record, but the first record has `features`".into()));
                }
                if text.text.trim().is_empty() || text.pair.as_ref().is_some_and(|p| p.trim().is_empty()) {
                    return Err(self.bad(line, "empty `text` or `text_pair`".into()));
                }
                let texts = self.set.texts.get_or_insert_with(Vec::new);
                if texts.first().is_some_and(|t: &TextInput| t.pair.is_some() != text.pair.is_some()) {
                    return Err(self.bad(line, "every record of a file of pairs needs `text_pair`, and no record of a file of single texts may have one".into()));
                }
                texts.push(text);
                Vec::new()
            }
            Payload::ImageUri(_) => return Err(self.bad(line, "an image that was not fetched".into())),
            Payload::Features(_) | Payload::Image(..) if self.set.texts.is_some() => return Err(self.bad(line, "a `features` or `image` record, but the first record has `text`".into())),
            Payload::Features(_) if !first && matches!(self.set.shape, InputShape::Image { .. }) => return Err(self.bad(line, "a `features` record, but the first record has `image`".into())),
            Payload::Features(features) => features,
            Payload::Image(pixels, [height, width, channels]) => {
                let shape = InputShape::Image { channels, height, width };
                if first {
                    self.set.shape = shape;
                } else if self.set.shape != shape {
                    return Err(self.bad(line, format!("an image of {height}×{width}×{channels}, but the first record has {:?} (one size and kind per file)", self.set.shape)));
                }
                return self.keep(line, id, label, pixels, annotator);
            }
        };
        if self.set.texts.is_some() {
            return self.keep(line, id, label, features, annotator);
        }
        if features.is_empty() {
            return Err(self.bad(line, "no features".into()));
        }
        if self.set.sample_ids.is_empty() {
            self.set.shape = InputShape::Vector { dim: features.len() };
        } else if features.len() != self.set.shape.len() {
            return Err(self.bad(line, format!("{} features, but the first record has {}", features.len(), self.set.shape.len())));
        }
        if let Some(j) = features.iter().position(|v| !v.is_finite()) {
            return Err(self.bad(line, format!("feature {j} is {}, features must be finite", features[j])));
        }
        self.keep(line, id, label, features, annotator)
    }

    /// The record's label, id and annotator (its features checked already).
    fn keep(&mut self, line: usize, id: String, label: String, features: Vec<f32>, annotator: Option<String>) -> Result<(), InputError> {
        if let Some(classes) = self.fixed_classes {
            if !classes.contains(&label) {
                return Err(self.bad(line, format!("unknown label `{label}`; known classes: {}", classes.join(", "))));
            }
        }
        if !self.ids.insert(id.clone()) {
            return Err(self.bad(line, format!("duplicate sample_id `{id}`")));
        }
        self.set.sample_ids.push(id);
        self.set.features.extend(features);
        self.label_names.push(label);
        self.annotators.push(annotator);
        Ok(())
    }

    fn finish(mut self) -> Result<LabelledSet, InputError> {
        if self.set.sample_ids.is_empty() {
            return Err(InputError::Empty { path: self.path.into() });
        }
        let classes: Vec<String> = match self.fixed_classes {
            Some(c) => c.to_vec(),
            None => {
                let mut c = self.label_names.clone();
                // Numeric labels sort numerically so class "10" follows "9".
                c.sort_by(|a, b| match (a.parse::<i64>(), b.parse::<i64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => a.cmp(b),
                });
                c.dedup();
                c
            }
        };
        self.set.labels = self.label_names.iter().map(|l| classes.iter().position(|c| c == l).unwrap() as u32).collect();
        self.set.classes = classes;
        if self.annotators.iter().all(Option::is_some) {
            self.set.annotators = Some(self.annotators.into_iter().map(Option::unwrap).collect());
        }
        Ok(self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(ext: &str, body: &str) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new(ext);
        std::fs::File::create(&f.path).unwrap().write_all(body.as_bytes()).unwrap();
        f
    }

    /// A file under the system temp dir, removed on drop.
    mod tempfile_lite {
        pub struct TempFile {
            pub path: std::path::PathBuf,
        }
        impl TempFile {
            pub fn new(ext: &str) -> Self {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let path = std::env::temp_dir().join(format!("labelgate-records-{}-{n}.{ext}", std::process::id()));
                Self { path }
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    fn err(ext: &str, body: &str, classes: Option<&[String]>) -> String {
        let f = file(ext, body);
        read(&f.path, Format::from_path(&f.path), classes).unwrap_err().to_string()
    }

    #[test]
    fn reads_jsonl_with_string_and_numeric_labels() {
        let f = file("jsonl", "{\"sample_id\":\"a\",\"label\":\"cat\",\"features\":[1,2]}\n\n{\"sample_id\":7,\"label\":\"dog\",\"features\":[3,4.5],\"vendor_id\":\"v1\"}\n");
        let set = read(&f.path, Format::Jsonl, None).unwrap();
        assert_eq!(set.sample_ids, vec!["a", "7"]);
        assert_eq!(set.classes, vec!["cat", "dog"]);
        assert_eq!(set.labels, vec![0, 1]);
        assert_eq!(set.features, vec![1.0, 2.0, 3.0, 4.5]);
        assert!(set.annotators.is_none(), "only one record named its vendor");
    }

    #[test]
    fn reads_csv_with_or_without_header() {
        let f = file("csv", "id,label,f0,f1\nx,2,0.5,1\ny,10,1,2\n");
        let set = read(&f.path, Format::Csv, None).unwrap();
        assert_eq!(set.classes, vec!["2", "10"]);
        let g = file("csv", "x,1,0.5,1\n");
        assert_eq!(read(&g.path, Format::Csv, None).unwrap().len(), 1);
    }

    #[test]
    fn problems_name_the_line() {
        let e = err("jsonl", "{\"sample_id\":\"a\",\"label\":\"c\",\"features\":[1,2]}\n{\"sample_id\":\"b\",\"label\":\"c\",\"features\":[1]}\n", None);
        assert!(e.contains("line 2") && e.contains("1 features, but the first record has 2"), "{e}");
        let e = err("csv", "a,c,1,2\nb,c,NaN,2\n", None);
        assert!(e.contains("line 2") && e.contains("finite"), "{e}");
        let e = err("jsonl", "{\"sample_id\":\"a\",\"label\":\"c\",\"features\":[1,2]}\nnot json\n", None);
        assert!(e.contains("line 2") && e.contains("not a valid record"), "{e}");
        let classes = vec!["cat".to_string()];
        let e = err("jsonl", "{\"sample_id\":\"a\",\"label\":\"cow\",\"features\":[1]}\n", Some(&classes));
        assert!(e.contains("line 1") && e.contains("unknown label `cow`"), "{e}");
        let e = err("csv", "a,c,1\na,c,2\n", None);
        assert!(e.contains("line 2") && e.contains("duplicate sample_id"), "{e}");
        let e = err("csv", "a,c,1\nb,c,oops\n", None);
        assert!(e.contains("line 2") && e.contains("`oops`"), "{e}");
    }

    #[test]
    fn missing_and_empty_files_are_clear() {
        let e = read(Path::new("/nonexistent/x.jsonl"), Format::Jsonl, None).unwrap_err().to_string();
        assert!(e.contains("cannot read /nonexistent/x.jsonl"), "{e}");
        assert!(err("jsonl", "\n", None).contains("no records"));
    }
}
