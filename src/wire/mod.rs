//! The wire contract (version 1): what vendors put on the input topic and what the gate writes to
//! its output topics. Parsing never panics; every way a record can be wrong has a `DlqReason`.
//! JSON Schemas for each message type are in `docs/schemas/`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use crate::encoder::TextInput;

pub const SCHEMA_VERSION: u32 = 1;

/// Largest `item` (its JSON) a record may carry: the item travels through the gate's buffer and
/// into the re-review record, so it is a reference or a short text, not the content itself.
pub const MAX_ITEM_BYTES: usize = 16 * 1024;

/// Longest `image.uri`, in bytes (what browsers and CDNs take).
pub const MAX_URI_BYTES: usize = 2048;

/// Header names on output records.
pub mod headers {
    pub const SCORE: &str = "labelgate-score";
    pub const WINDOW: &str = "labelgate-window";
    pub const ERROR_CLASS: &str = "labelgate-error-class";
    pub const ERROR_MESSAGE: &str = "labelgate-error-message";
    pub const SOURCE_TOPIC: &str = "labelgate-source-topic";
    pub const SOURCE_PARTITION: &str = "labelgate-source-partition";
    pub const SOURCE_OFFSET: &str = "labelgate-source-offset";
    /// On an `oversized` dead letter, which carries no payload: the dropped payload's size and
    /// SHA-256 (hex).
    pub const PAYLOAD_BYTES: &str = "labelgate-payload-bytes";
    pub const PAYLOAD_SHA256: &str = "labelgate-payload-sha256";
    /// On a dead letter whose `image.uri` could not be fetched: that URI (normalised, ASCII).
    pub const IMAGE_URI: &str = "labelgate-image-uri";
}

/// What the gate's records carry (`gate.input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GatedInput {
    /// `features`, or an `image` of raw pixels, of `gate.feature_dim` values.
    #[default]
    Features,
    /// `text`, embedded by the sentence encoder.
    Text,
    /// `text` and `text_pair`, embedded as the Sentence-BERT classification input.
    TextPair,
}

impl GatedInput {
    pub fn as_str(self) -> &'static str {
        match self {
            GatedInput::Features => "features",
            GatedInput::Text => "text",
            GatedInput::TextPair => "text_pair",
        }
    }

    pub fn is_text(self) -> bool {
        !matches!(self, GatedInput::Features)
    }
}

/// Why a record went to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqReason {
    Oversized,
    InvalidJson,
    MissingField,
    UnknownMessageType,
    WrongFeatureLength,
    NonFiniteFeature,
    InvalidImage,
    UnknownClass,
    DuplicateSampleId,
    DuplicateBatchEnd,
    /// A record for a delivery that was already gated.
    LateRecord,
    /// A batch_end whose vendor differs from its records'.
    VendorMismatch,
    /// An id or label longer than `gate.max_id_length` / `gate.max_label_length`.
    FieldTooLong,
    /// A record whose message key is not its `batch_id` (the key decides the partition, so a
    /// delivery keyed otherwise could be split across partitions and replicas).
    KeyMismatch,
    /// An `item` that is not an object, has a non-text `uri` or `text`, or is over `MAX_ITEM_BYTES`.
    InvalidItem,
    /// A `text` or `text_pair` that is empty or only white space.
    EmptyText,
    /// A `text` or `text_pair` over `gate.max_text_bytes`.
    TextTooLong,
    /// More than one payload on one record (`features`, `image`, `text`).
    MixedPayload,
    /// A payload of another kind than `gate.input` takes (a `text` at a gate of feature
    /// vectors, a `text_pair` at a single-text gate, features at a text gate).
    UnexpectedPayload,
    /// An `image.uri` that answers 404 or 410, or names no file under `image_fetch.file_root`.
    ImageNotFound,
    /// An `image.uri` that answers 401 or 403, or names a file the gate may not read.
    ImageForbidden,
    /// An image over `image_fetch.max_bytes`.
    ImageTooLarge,
    /// An `image.uri` the gate does not fetch: a host not on `image_fetch.allowed_hosts`, a
    /// redirect to another host, a name that resolves to a private address that is not listed,
    /// or a file outside `image_fetch.file_root`. Never requested.
    ImageHostNotAllowed,
    /// An `image.uri` that answers another client error (400, 405, …) or redirects too often.
    ImageFetchFailed,
}

impl DlqReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DlqReason::Oversized => "oversized",
            DlqReason::InvalidJson => "invalid_json",
            DlqReason::MissingField => "missing_field",
            DlqReason::UnknownMessageType => "unknown_message_type",
            DlqReason::WrongFeatureLength => "wrong_feature_length",
            DlqReason::NonFiniteFeature => "non_finite_feature",
            DlqReason::InvalidImage => "invalid_image",
            DlqReason::UnknownClass => "unknown_class",
            DlqReason::DuplicateSampleId => "duplicate_sample_id",
            DlqReason::DuplicateBatchEnd => "duplicate_batch_end",
            DlqReason::LateRecord => "late_record",
            DlqReason::VendorMismatch => "vendor_mismatch",
            DlqReason::FieldTooLong => "field_too_long",
            DlqReason::KeyMismatch => "key_mismatch",
            DlqReason::InvalidItem => "invalid_item",
            DlqReason::EmptyText => "empty_text",
            DlqReason::TextTooLong => "text_too_long",
            DlqReason::MixedPayload => "mixed_payload",
            DlqReason::UnexpectedPayload => "unexpected_payload",
            DlqReason::ImageNotFound => "image_not_found",
            DlqReason::ImageForbidden => "image_forbidden",
            DlqReason::ImageTooLarge => "image_too_large",
            DlqReason::ImageHostNotAllowed => "image_host_not_allowed",
            DlqReason::ImageFetchFailed => "image_fetch_failed",
        }
    }

    pub const ALL: [DlqReason; 24] = [
        DlqReason::Oversized,
        DlqReason::InvalidJson,
        DlqReason::MissingField,
        DlqReason::UnknownMessageType,
        DlqReason::WrongFeatureLength,
        DlqReason::NonFiniteFeature,
        DlqReason::InvalidImage,
        DlqReason::UnknownClass,
        DlqReason::DuplicateSampleId,
        DlqReason::DuplicateBatchEnd,
        DlqReason::LateRecord,
        DlqReason::VendorMismatch,
        DlqReason::FieldTooLong,
        DlqReason::KeyMismatch,
        DlqReason::InvalidItem,
        DlqReason::EmptyText,
        DlqReason::TextTooLong,
        DlqReason::MixedPayload,
        DlqReason::UnexpectedPayload,
        DlqReason::ImageNotFound,
        DlqReason::ImageForbidden,
        DlqReason::ImageTooLarge,
        DlqReason::ImageHostNotAllowed,
        DlqReason::ImageFetchFailed,
    ];
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: DlqReason,
    pub message: String,
    /// The `image.uri` that could not be fetched, for the dead letter's header.
    pub image_uri: Option<String>,
}

impl Rejection {
    pub fn new(reason: DlqReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into(), image_uri: None }
    }

    pub fn with_image_uri(mut self, uri: &str) -> Self {
        self.image_uri = Some(uri.to_string());
        self
    }
}

/// One labelled sample from a vendor, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub sample_id: String,
    pub batch_id: String,
    pub vendor_id: String,
    pub annotator_id: Option<String>,
    /// Index into the configured classes.
    pub label: u32,
    /// The record's features; empty for a text record until the window thread embeds it.
    pub features: Vec<f32>,
    /// The text (and pair) of a text record, which the gate embeds itself.
    pub text: Option<TextInput>,
    pub gold_label: Option<u32>,
    /// What a human looks at (`uri`, `text`, display fields), passed through to re-review.
    pub item: Option<serde_json::Map<String, serde_json::Value>>,
    /// `[h, w, c]` when the features came as u8 pixels, so re-review can show them as an image.
    pub image_shape: Option<[usize; 3]>,
    /// The `image.uri` the pixels come from. Until the edge has fetched them, `features` is
    /// empty ([`Annotation::awaits_image`]); re-review shows the image by this URI.
    pub image_uri: Option<String>,
}

impl Annotation {
    /// The record names its image by URI and the pixels are not fetched yet.
    pub fn awaits_image(&self) -> bool {
        self.image_uri.is_some() && self.features.is_empty()
    }
}

/// Closes a delivery: `count` records were sent.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchEnd {
    pub batch_id: String,
    pub vendor_id: String,
    pub count: usize,
}

// One per record, moved once into the gate: boxing the annotation would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Annotation(Annotation),
    BatchEnd(BatchEnd),
}

impl Inbound {
    pub fn batch_id(&self) -> &str {
        match self {
            Inbound::Annotation(a) => &a.batch_id,
            Inbound::BatchEnd(e) => &e.batch_id,
        }
    }
}

/// Every field of both input message types; one pass of serde, then validation.
#[derive(Deserialize)]
struct RawInput {
    #[serde(rename = "type")]
    kind: Option<String>,
    sample_id: Option<String>,
    batch_id: Option<String>,
    vendor_id: Option<String>,
    annotator_id: Option<String>,
    label: Option<String>,
    /// Parsed straight into f32: a number beyond f32's range becomes ±inf and is rejected below.
    features: Option<Vec<f32>>,
    image: Option<RawImage>,
    text: Option<String>,
    text_pair: Option<String>,
    gold_label: Option<String>,
    item: Option<serde_json::Value>,
    count: Option<usize>,
    #[allow(dead_code)]
    ts: Option<serde_json::Value>,
}

/// `image`: raw pixels (`shape`, `data_b64`), an encoded file (`format`, `data_b64`), or a
/// reference (`uri`: https, http or file) that the edge fetches.
#[derive(Deserialize)]
struct RawImage {
    shape: Option<Vec<usize>>,
    format: Option<String>,
    data_b64: Option<String>,
    uri: Option<String>,
}

/// What the parser needs to know about the deployment.
#[derive(Debug, Clone)]
pub struct Schema {
    pub class_index: HashMap<String, u32>,
    pub feature_dim: usize,
    pub max_message_bytes: usize,
    /// Longest `sample_id`, `batch_id`, `vendor_id` or `annotator_id`, in bytes.
    pub max_id_length: usize,
    /// Longest label or gold label, in bytes (checked before the class lookup).
    pub max_label_length: usize,
    /// The payload records carry.
    pub input: GatedInput,
    /// Longest `text` or `text_pair`, in bytes.
    pub max_text_bytes: usize,
    /// `[height, width, channels]` encoded images are converted to (`gate.image_shape`).
    pub image_shape: Option<[usize; 3]>,
}

impl Schema {
    pub fn new(classes: &[String], feature_dim: usize, max_message_bytes: usize) -> Self {
        let class_index = classes.iter().enumerate().map(|(i, c)| (c.clone(), i as u32)).collect();
        Self { class_index, feature_dim, max_message_bytes, max_id_length: 256, max_label_length: 256, input: GatedInput::Features, max_text_bytes: 16 * 1024, image_shape: None }
    }

    /// Encoded images become `[height, width, channels]` pixels.
    pub fn with_image_shape(mut self, shape: Option<[usize; 3]>) -> Self {
        self.image_shape = shape;
        self
    }

    /// Records carry `input`, texts of at most `max_text_bytes`.
    pub fn with_input(mut self, input: GatedInput, max_text_bytes: usize) -> Self {
        (self.input, self.max_text_bytes) = (input, max_text_bytes);
        self
    }

    /// These bounds on ids and labels.
    pub fn with_field_limits(mut self, max_id_length: usize, max_label_length: usize) -> Self {
        (self.max_id_length, self.max_label_length) = (max_id_length, max_label_length);
        self
    }

    /// Every id and label of the message within its bound (before anything is looked up or kept).
    fn check_lengths(&self, raw: &RawInput) -> Result<(), Rejection> {
        let ids = [("sample_id", &raw.sample_id), ("batch_id", &raw.batch_id), ("vendor_id", &raw.vendor_id), ("annotator_id", &raw.annotator_id)];
        let labels = [("label", &raw.label), ("gold_label", &raw.gold_label)];
        let over = ids.iter().map(|(f, v)| (f, v, self.max_id_length)).chain(labels.iter().map(|(f, v)| (f, v, self.max_label_length)));
        for (field, value, limit) in over {
            if let Some(v) = value.as_deref().filter(|v| v.len() > limit) {
                return Err(Rejection::new(DlqReason::FieldTooLong, format!("`{field}` is {} bytes, limit {limit}", v.len())));
            }
        }
        Ok(())
    }

    fn class(&self, label: &str, field: &str) -> Result<u32, Rejection> {
        self.class_index.get(label).copied().ok_or_else(|| Rejection::new(DlqReason::UnknownClass, format!("{field} `{label}` is not one of the configured classes")))
    }

    /// Parses and validates one input message.
    pub fn parse(&self, payload: &[u8]) -> Result<Inbound, Rejection> {
        if payload.len() > self.max_message_bytes {
            return Err(Rejection::new(DlqReason::Oversized, format!("{} bytes, limit {}", payload.len(), self.max_message_bytes)));
        }
        let raw: RawInput = serde_json::from_slice(payload).map_err(|e| {
            // serde_json refuses a number beyond f64 (`1e309`) while parsing: it is a feature
            // value out of range, as one beyond f32 is, not malformed JSON.
            let reason = if e.to_string().starts_with("number out of range") { DlqReason::NonFiniteFeature } else { DlqReason::InvalidJson };
            Rejection::new(reason, e.to_string())
        })?;
        self.check_lengths(&raw)?;
        let need = |v: Option<String>, name: &str| v.filter(|s| !s.is_empty()).ok_or_else(|| Rejection::new(DlqReason::MissingField, format!("`{name}` is missing or empty")));
        match raw.kind.as_deref() {
            Some("batch_end") => Ok(Inbound::BatchEnd(BatchEnd {
                batch_id: need(raw.batch_id, "batch_id")?,
                vendor_id: need(raw.vendor_id, "vendor_id")?,
                count: raw.count.ok_or_else(|| Rejection::new(DlqReason::MissingField, "`count` is missing"))?,
            })),
            None | Some("annotation") => {
                let sample_id = need(raw.sample_id, "sample_id")?;
                let batch_id = need(raw.batch_id, "batch_id")?;
                let vendor_id = need(raw.vendor_id, "vendor_id")?;
                let label = self.class(&need(raw.label, "label")?, "label")?;
                let gold_label = raw.gold_label.map(|g| self.class(&g, "gold_label")).transpose()?;
                let item = raw.item.map(item).transpose()?;

                let has_text = raw.text.is_some() || raw.text_pair.is_some();
                if has_text && (raw.features.is_some() || raw.image.is_some()) {
                    return Err(Rejection::new(DlqReason::MixedPayload, "give one of `features`, `image` or `text`"));
                }
                let mut a =
                    Annotation { sample_id, batch_id, vendor_id, annotator_id: raw.annotator_id, label, features: Vec::new(), text: None, gold_label, item, image_shape: None, image_uri: None };
                if has_text || self.input.is_text() {
                    a.text = Some(self.text(raw.text, raw.text_pair, raw.features.is_some() || raw.image.is_some())?);
                    return Ok(Inbound::Annotation(a));
                }
                match (raw.features, raw.image) {
                    (Some(f), None) => {
                        if f.len() != self.feature_dim {
                            return Err(Rejection::new(DlqReason::WrongFeatureLength, format!("{} features, expected {}", f.len(), self.feature_dim)));
                        }
                        if let Some(i) = f.iter().position(|x| !x.is_finite()) {
                            return Err(Rejection::new(DlqReason::NonFiniteFeature, format!("feature {i} is beyond the f32 range")));
                        }
                        a.features = f;
                        // Parsed into a vector that grew by doubling: held until the window, it
                        // should cost its length, not up to twice that.
                        a.features.shrink_to_fit();
                    }
                    (None, Some(image)) if image.uri.is_some() => {
                        // Fetched at the edge before the gate ingests it (`Annotation::image_uri`).
                        a.image_uri = Some(self.image_reference(image)?);
                        a.image_shape = self.image_shape;
                    }
                    (None, Some(image)) => {
                        let (pixels, shape) = self.image(image)?;
                        (a.features, a.image_shape) = (pixels, Some(shape));
                    }
                    (Some(_), Some(_)) => return Err(Rejection::new(DlqReason::MissingField, "give `features` or `image`, not both")),
                    (None, None) => return Err(Rejection::new(DlqReason::MissingField, "`features` or `image` is missing")),
                }
                Ok(Inbound::Annotation(a))
            }
            Some(other) => Err(Rejection::new(DlqReason::UnknownMessageType, format!("type `{other}`; expected `batch_end` or none"))),
        }
    }

    /// The text payload, checked against `gate.input` and the byte bound. `other_payload`: the
    /// record carries features or an image instead (at a text gate).
    fn text(&self, text: Option<String>, pair: Option<String>, other_payload: bool) -> Result<TextInput, Rejection> {
        let unexpected = |m: String| Rejection::new(DlqReason::UnexpectedPayload, m);
        match self.input {
            GatedInput::Features => return Err(unexpected("this gate takes `features` or `image` (gate.input = \"features\"); a text gate has gate.input = \"text\" or \"text_pair\"".into())),
            GatedInput::Text | GatedInput::TextPair if other_payload => {
                return Err(unexpected(format!("this gate takes `text` (gate.input = \"{}\"), not `features` or `image`", self.input.as_str())))
            }
            GatedInput::Text if pair.is_some() => return Err(unexpected("`text_pair` at a single-text gate (gate.input = \"text\"); pair tasks use gate.input = \"text_pair\"".into())),
            _ => {}
        }
        let check = |value: Option<String>, field: &str| -> Result<String, Rejection> {
            let value = value.ok_or_else(|| Rejection::new(DlqReason::MissingField, format!("`{field}` is missing")))?;
            if value.trim().is_empty() {
                return Err(Rejection::new(DlqReason::EmptyText, format!("`{field}` is empty")));
            }
            if value.len() > self.max_text_bytes {
                return Err(Rejection::new(DlqReason::TextTooLong, format!("`{field}` is {} bytes, limit {} (gate.max_text_bytes)", value.len(), self.max_text_bytes)));
            }
            Ok(value)
        };
        let text = check(text, "text")?;
        let pair = if self.input == GatedInput::TextPair { Some(check(pair, "text_pair")?) } else { None };
        Ok(TextInput { text, pair })
    }

    /// The `[height, width, channels]` encoded images are converted to, checked against the
    /// feature dimension.
    fn converted_shape(&self) -> Result<[usize; 3], Rejection> {
        let [h, w, c] =
            self.image_shape.ok_or_else(|| Rejection::new(DlqReason::InvalidImage, "an encoded image at a gate without gate.image_shape (the [height, width, channels] to convert it to)"))?;
        if h * w * c != self.feature_dim {
            return Err(Rejection::new(DlqReason::WrongFeatureLength, format!("gate.image_shape of {} values, expected {}", h * w * c, self.feature_dim)));
        }
        Ok([h, w, c])
    }

    /// An encoded file decoded and converted to `gate.image_shape`, as u8 pixels.
    fn convert(&self, encoding: crate::data::image::Encoding, bytes: &[u8]) -> Result<(Vec<u8>, [usize; 3]), Rejection> {
        let [h, w, c] = self.converted_shape()?;
        crate::data::image::decode(encoding, bytes, Some(c), Some((h as u32, w as u32))).map_err(|e| Rejection::new(DlqReason::InvalidImage, e))
    }

    /// A fetched file (its encoding told by its first bytes, whatever the URI or server says)
    /// as the gate's features: pixels scaled to [0, 1], converted to `gate.image_shape`.
    pub fn decode_fetched(&self, bytes: &[u8]) -> Result<Vec<f32>, Rejection> {
        let encoding = crate::data::image::Encoding::sniff(bytes).ok_or_else(|| Rejection::new(DlqReason::InvalidImage, "not a PNG or JPEG file"))?;
        let (pixels, _) = self.convert(encoding, bytes)?;
        Ok(pixels.into_iter().map(|b| b as f32 / 255.0).collect())
    }

    /// An `image.uri` as the fetcher takes it: http, https or file, at most [`MAX_URI_BYTES`],
    /// at a gate that converts images (`gate.image_shape`), with nothing else in `image`.
    fn image_reference(&self, image: RawImage) -> Result<String, Rejection> {
        let bad = |m: String| Rejection::new(DlqReason::InvalidImage, m);
        if image.data_b64.is_some() || image.format.is_some() || image.shape.is_some() {
            return Err(bad("give `image.uri` or the image's data (`data_b64` with `format` or `shape`), not both".into()));
        }
        let uri = image.uri.unwrap_or_default();
        if uri.len() > MAX_URI_BYTES {
            return Err(Rejection::new(DlqReason::FieldTooLong, format!("`image.uri` is {} bytes, limit {MAX_URI_BYTES}", uri.len())));
        }
        let url = url::Url::parse(&uri).map_err(|e| bad(format!("`image.uri` is not a URI ({e})")))?;
        if !matches!(url.scheme(), "http" | "https" | "file") {
            return Err(bad(format!("`image.uri` scheme `{}`: use https, http or file", url.scheme())));
        }
        // Credentials would travel into headers, logs and the reviewers' pages.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("`image.uri` carries a user name or password: give the host access another way (the gate sends none)".into()));
        }
        self.converted_shape()?;
        Ok(url.into())
    }

    /// The image's pixels scaled to [0, 1] and flattened, with their `[h, w, c]`: raw u8 pixels
    /// of the record's shape, or an encoded PNG or JPEG converted to `gate.image_shape`.
    fn image(&self, image: RawImage) -> Result<(Vec<f32>, [usize; 3]), Rejection> {
        use base64::Engine;
        let bad = |m: String| Rejection::new(DlqReason::InvalidImage, m);
        let data = image.data_b64.ok_or_else(|| bad("`image.data_b64` is missing".into()))?;
        // Undecodable bytes are a bad image, whatever else the record says.
        let bytes = base64::engine::general_purpose::STANDARD.decode(data.as_bytes()).map_err(|e| bad(format!("data_b64: {e}")))?;
        let (bytes, shape) = match (image.format, image.shape) {
            (Some(format), None) => {
                let encoding = crate::data::image::Encoding::parse(&format).ok_or_else(|| bad(format!("format `{format}`: use png or jpeg")))?;
                self.convert(encoding, &bytes)?
            }
            (None, Some(shape)) => {
                let shape: [usize; 3] = match <[usize; 3]>::try_from(shape.as_slice()) {
                    Ok(s) if !s.contains(&0) => s,
                    _ => return Err(bad(format!("shape {shape:?}: expected [height, width, channels]"))),
                };
                // A product that overflows is no shape of any image.
                let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
                if expected != self.feature_dim {
                    return Err(Rejection::new(DlqReason::WrongFeatureLength, format!("image of {expected} values, expected {}", self.feature_dim)));
                }
                // Where the gate knows its images' shape, pixels in another layout of the same
                // length (a 1 × 784 strip of a 28 × 28 image) would be read as what they are not.
                if self.image_shape.is_some_and(|want| want != shape) {
                    return Err(bad(format!("shape {shape:?}, but gate.image_shape is {:?}: send the pixels in that shape, or the file (`format`)", self.image_shape.unwrap_or_default())));
                }
                if bytes.len() != expected {
                    return Err(bad(format!("{} bytes of pixels for shape {shape:?} ({expected})", bytes.len())));
                }
                (bytes, shape)
            }
            (Some(_), Some(_)) => return Err(bad("give `shape` (raw pixels) or `format` (an encoded file), not both".into())),
            (None, None) => return Err(bad("`image` needs `shape` (raw u8 pixels) or `format` (png or jpeg)".into())),
        };
        Ok((bytes.into_iter().map(|b| b as f32 / 255.0).collect(), shape))
    }
}

/// Checks an annotation's `item`: an object of at most `MAX_ITEM_BYTES`, `uri` and `text` text.
fn item(value: serde_json::Value) -> Result<serde_json::Map<String, serde_json::Value>, Rejection> {
    let bad = |m: String| Rejection::new(DlqReason::InvalidItem, m);
    let serde_json::Value::Object(map) = value else { return Err(bad("`item` must be an object, e.g. {\"uri\": \"https://…\"} or {\"text\": \"…\"}".into())) };
    for key in ["uri", "text"] {
        if map.get(key).is_some_and(|v| !v.is_string()) {
            return Err(bad(format!("`item.{key}` must be a string")));
        }
    }
    let size = serde_json::to_vec(&map).map_or(usize::MAX, |v| v.len());
    if size > MAX_ITEM_BYTES {
        return Err(bad(format!("`item` is {size} bytes of JSON, limit {MAX_ITEM_BYTES}: send a `uri` to the content instead of the content")));
    }
    Ok(map)
}

/// u8 pixels of a suspect that came as an `image`, for re-review to show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImagePixels {
    /// `[height, width, channels]`.
    pub shape: [usize; 3],
    /// u8 pixels, row-major, channels last, base64.
    pub data_b64: String,
}

impl ImagePixels {
    /// Back from the features the parser scaled to [0, 1] (exact: each was a u8 / 255).
    pub fn from_features(shape: [usize; 3], features: &[f32]) -> Self {
        use base64::Engine;
        let bytes: Vec<u8> = features.iter().map(|f| (f * 255.0).round().clamp(0.0, 255.0) as u8).collect();
        Self { shape, data_b64: base64::engine::general_purpose::STANDARD.encode(bytes) }
    }

    /// The decoded pixels, checked against the shape.
    pub fn pixels(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(self.data_b64.as_bytes()).map_err(|e| format!("image.data_b64: {e}"))?;
        let expected: usize = self.shape.iter().product();
        if bytes.len() != expected {
            return Err(format!("{} bytes of pixels for shape {:?} ({expected})", bytes.len(), self.shape));
        }
        Ok(bytes)
    }
}

/// A suspect sent to human re-review (`annotations.rereview`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RereviewMessage {
    pub schema_version: u32,
    pub sample_id: String,
    pub batch_id: String,
    pub vendor_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotator_id: Option<String>,
    pub label: String,
    pub predicted_label: String,
    pub score: f32,
    /// Share of the window's samples with a lower score (1.0 = most suspect).
    pub rank_percentile: f64,
    pub window_id: String,
    pub model_version: String,
    pub reason: String,
    /// The annotation's `item`, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<serde_json::Map<String, serde_json::Value>>,
    /// The pixels that were scored, when the annotation came as an `image` (also by URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImagePixels>,
    /// The annotation's `image.uri`, when it named its image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uri: Option<String>,
    /// The record's `text`, when it came as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The record's `text_pair`, for pair tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair: Option<String>,
}

/// accept / reject / review (defined with the accuracy estimate it judges).
pub use crate::accuracy::Decision;

/// What the decision rests on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// The delivery's gold items (at least `gate.min_gold_items`).
    Gold,
    /// The estimated accuracy's interval.
    Estimate,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Gold => "gold",
            DecidedBy::Estimate => "estimate",
        }
    }
}

/// Where a window's wrong-label share came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoiseRateFrom {
    /// The readings in the verdict's `evidence`.
    Estimators,
    /// Vendors' labels of shared sample_ids, with the scores.
    Agreement,
    /// `gate.noise_rate`.
    Fixed,
    /// Verdicts written before the evidence existed.
    #[default]
    Scores,
}

/// One per delivery (`annotations.verdicts`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerdictMessage {
    pub schema_version: u32,
    pub batch_id: String,
    pub vendor_id: String,
    pub records: usize,
    /// The count its batch_end announced, if one came.
    pub announced_count: Option<usize>,
    pub closed_by: String,
    pub accepted: usize,
    pub rereview: usize,
    /// `null` when the delivery has no valid records (`review_reason: "no_valid_records"`) or the
    /// window's evidence cannot pin the share down (`insufficient_evidence`, with the interval
    /// [0, 1]; `estimators_disagree`, with the interval spanning every reading).
    pub estimated_accuracy: Option<f64>,
    pub accuracy_ci_low: Option<f64>,
    pub accuracy_ci_high: Option<f64>,
    /// What corrected the flagged share: `none`, `gold` (the window's gold items), `reviews` (the
    /// vendor's realised suspect precision), `pool_control` (the reference pool's false flags) or
    /// `agreement` (flags at agreement's share; the interval also spans the labels' posteriors).
    #[serde(default = "calibration_none")]
    pub calibration: String,
    /// Where the window's wrong-label share came from: `estimators` (the readings in
    /// `evidence`), `agreement` (vendors' labels of shared sample_ids with the scores) or `fixed`
    /// (`gate.noise_rate`). Verdicts written before the evidence existed say `scores`.
    #[serde(default)]
    pub noise_rate_from: NoiseRateFrom,
    pub gold_items: usize,
    pub gold_accuracy: Option<f64>,
    pub sla_accuracy: f64,
    pub decision: Decision,
    pub decided_by: DecidedBy,
    /// Why the decision is `review`: `interval_spans_sla`, `insufficient_evidence`,
    /// `estimators_disagree` or `no_valid_records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_reason: Option<String>,
    /// What the window's wrong-label share rests on (estimators, model fit, pool, agreement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Box<crate::accuracy::evidence::WindowEvidence>>,
    pub window_id: String,
    pub model_version: String,
}

fn calibration_none() -> String {
    "none".into()
}

#[cfg(test)]
mod tests;
