//! Every way a record can be wrong has its reason; items, images and bounds.

use super::*;

fn schema() -> Schema {
    Schema::new(&["cat".into(), "dog".into()], 3, 1000)
}

fn reason(payload: &str) -> DlqReason {
    schema().parse(payload.as_bytes()).unwrap_err().reason
}

#[test]
fn parses_annotations_and_batch_ends() {
    let a = schema().parse(br#"{"sample_id":"s1","batch_id":"b","vendor_id":"v","label":"dog","features":[1,2,3],"gold_label":"dog","ts":"2026-01-01"}"#).unwrap();
    let Inbound::Annotation(a) = a else { panic!() };
    assert_eq!((a.label, a.gold_label, a.features.len()), (1, Some(1), 3));
    let e = schema().parse(br#"{"type":"batch_end","batch_id":"b","vendor_id":"v","count":7}"#).unwrap();
    assert_eq!(e, Inbound::BatchEnd(BatchEnd { batch_id: "b".into(), vendor_id: "v".into(), count: 7 }));
}

#[test]
fn images_are_decoded_and_scaled() {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode([0u8, 255, 51]);
    let msg = format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{{"shape":[1,3,1],"data_b64":"{data}"}}}}"#);
    let Inbound::Annotation(a) = schema().parse(msg.as_bytes()).unwrap() else { panic!() };
    assert_eq!(a.features, vec![0.0, 1.0, 0.2]);
    let short = r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{"shape":[1,1,3],"data_b64":"AAA="}}"#;
    assert_eq!(reason(short), DlqReason::InvalidImage);
}

#[test]
fn each_kind_of_bad_input_has_its_reason() {
    assert_eq!(reason("{not json"), DlqReason::InvalidJson);
    assert_eq!(reason("[1,2]"), DlqReason::InvalidJson);
    assert_eq!(reason(r#"{"batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,3]}"#), DlqReason::MissingField);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2]}"#), DlqReason::WrongFeatureLength);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,1e39]}"#), DlqReason::NonFiniteFeature);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cow","features":[1,2,3]}"#), DlqReason::UnknownClass);
    assert_eq!(reason(r#"{"type":"restart","batch_id":"b"}"#), DlqReason::UnknownMessageType);
    assert_eq!(reason(r#"{"type":"batch_end","batch_id":"b","vendor_id":"v"}"#), DlqReason::MissingField);
    assert_eq!(reason(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000))), DlqReason::Oversized);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,NaN]}"#), DlqReason::InvalidJson);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,1e309]}"#), DlqReason::NonFiniteFeature);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{"shape":[1,3,1],"data_b64":"!!!!"}}"#), DlqReason::InvalidImage);
    // Bad base64 is a bad image even where the shape does not match the features either.
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{"shape":[28,28,1],"data_b64":"not base64!"}}"#), DlqReason::InvalidImage);
}

#[test]
fn ids_and_labels_are_bounded() {
    let schema = schema().with_field_limits(8, 4);
    let reason = |p: &str| schema.parse(p.as_bytes()).unwrap_err().reason;
    let long_id = format!(r#"{{"sample_id":"{}","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,3]}}"#, "s".repeat(9));
    assert_eq!(reason(&long_id), DlqReason::FieldTooLong);
    let long_vendor = format!(r#"{{"type":"batch_end","batch_id":"b","vendor_id":"{}","count":1}}"#, "v".repeat(100));
    assert_eq!(reason(&long_vendor), DlqReason::FieldTooLong);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"tabby","features":[1,2,3]}"#), DlqReason::FieldTooLong);
    assert!(schema.parse(br#"{"sample_id":"12345678","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,3]}"#).is_ok());
}

#[test]
fn items_are_checked() {
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,3],"item":"https://x"}"#), DlqReason::InvalidItem);
    assert_eq!(reason(r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,3],"item":{"uri":7}}"#), DlqReason::InvalidItem);
}

#[test]
fn items_pass_through_and_are_bounded() {
    let big = Schema::new(&["cat".into(), "dog".into()], 3, 1 << 20);
    let msg = r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,3],"item":{"uri":"https://x/1.png","caption":"a <b>"}}"#;
    let Inbound::Annotation(a) = big.parse(msg.as_bytes()).unwrap() else { panic!() };
    assert_eq!(serde_json::Value::Object(a.item.unwrap()), serde_json::json!({"uri": "https://x/1.png", "caption": "a <b>"}));
    let huge = format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","features":[1,2,3],"item":{{"text":"{}"}}}}"#, "x".repeat(MAX_ITEM_BYTES));
    let e = big.parse(huge.as_bytes()).unwrap_err();
    assert_eq!(e.reason, DlqReason::InvalidItem);
    assert!(e.message.contains("limit"), "{}", e.message);
}

#[test]
fn image_pixels_survive_the_round_trip_through_features() {
    use base64::Engine;
    let pixels: Vec<u8> = (0..=255).collect();
    let data = base64::engine::general_purpose::STANDARD.encode(&pixels);
    let s = Schema::new(&["cat".into(), "dog".into()], 256, 1 << 20);
    let msg = format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{{"shape":[16,16,1],"data_b64":"{data}"}}}}"#);
    let Inbound::Annotation(a) = s.parse(msg.as_bytes()).unwrap() else { panic!() };
    let back = ImagePixels::from_features(a.image_shape.unwrap(), &a.features);
    assert_eq!(back.pixels().unwrap(), pixels);
}

fn text_schema(input: GatedInput) -> Schema {
    schema().with_input(input, 20)
}

fn text_reason(input: GatedInput, payload: &str) -> DlqReason {
    text_schema(input).parse(payload.as_bytes()).unwrap_err().reason
}

#[test]
fn a_text_gate_takes_texts_and_pairs() {
    let msg = r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"dog","text":"a good film"}"#;
    let Inbound::Annotation(a) = text_schema(GatedInput::Text).parse(msg.as_bytes()).unwrap() else { panic!() };
    assert_eq!(a.text, Some(TextInput { text: "a good film".into(), pair: None }));
    assert!(a.features.is_empty(), "embedded later, on the window thread");
    let pair = r#"{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"dog","text":"a man sleeps","text_pair":"a person rests"}"#;
    let Inbound::Annotation(a) = text_schema(GatedInput::TextPair).parse(pair.as_bytes()).unwrap() else { panic!() };
    assert_eq!(a.text.unwrap().pair.as_deref(), Some("a person rests"));
}

#[test]
fn each_kind_of_bad_text_has_its_reason() {
    use GatedInput::*;
    let rec = |fields: &str| format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"dog",{fields}}}"#);
    assert_eq!(text_reason(Text, &rec(r#""text":"  ""#)), DlqReason::EmptyText);
    assert_eq!(text_reason(Text, &rec(r#""text":"twenty-one bytes long""#)), DlqReason::TextTooLong);
    assert_eq!(text_reason(Text, &rec(r#""text":"ok","features":[1,2,3]"#)), DlqReason::MixedPayload);
    assert_eq!(text_reason(Features, &rec(r#""text":"ok","features":[1,2,3]"#)), DlqReason::MixedPayload);
    assert_eq!(text_reason(Features, &rec(r#""text":"ok""#)), DlqReason::UnexpectedPayload, "a text at a gate of features");
    assert_eq!(text_reason(Text, &rec(r#""features":[1,2,3]"#)), DlqReason::UnexpectedPayload, "features at a text gate");
    assert_eq!(text_reason(Text, &rec(r#""text":"ok","text_pair":"ok""#)), DlqReason::UnexpectedPayload, "a pair at a single-text gate");
    assert_eq!(text_reason(TextPair, &rec(r#""text":"ok""#)), DlqReason::MissingField, "a pair gate needs text_pair");
    assert_eq!(text_reason(TextPair, &rec(r#""text":"ok","text_pair":"""#)), DlqReason::EmptyText);
    assert_eq!(text_reason(Text, &rec(r#""text":7"#)), DlqReason::InvalidJson, "a text must be a string");
    // The message says which setting decides.
    let e = text_schema(Features).parse(rec(r#""text":"ok""#).as_bytes()).unwrap_err();
    assert!(e.message.contains("gate.input"), "{}", e.message);
}

fn png_b64(pixels: &[u8], w: u32, h: u32, colour: png::ColorType) -> String {
    use base64::Engine;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(colour);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(pixels).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out)
}

#[test]
fn encoded_images_become_the_configured_pixels() {
    use base64::Engine;
    let grey = [0u8, 255, 51];
    let schema = schema().with_image_shape(Some([1, 3, 1]));
    let encoded = format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{{"format":"png","data_b64":"{}"}}}}"#, png_b64(&grey, 3, 1, png::ColorType::Grayscale));
    let raw = format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{{"shape":[1,3,1],"data_b64":"{}"}}}}"#, base64::engine::general_purpose::STANDARD.encode(grey));
    let (Inbound::Annotation(a), Inbound::Annotation(b)) = (schema.parse(encoded.as_bytes()).unwrap(), schema.parse(raw.as_bytes()).unwrap()) else { panic!() };
    assert_eq!(a.features, b.features, "a lossless file gives the raw pixels");
    assert_eq!(a.image_shape, Some([1, 3, 1]), "re-review can show it");
    // Colour converted to the configured grey, and resized.
    let rgb: Vec<u8> = (0..2 * 6 * 3).map(|i| (i * 7) as u8).collect();
    let colour = format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{{"format":"PNG","data_b64":"{}"}}}}"#, png_b64(&rgb, 6, 2, png::ColorType::Rgb));
    let Inbound::Annotation(c) = schema.parse(colour.as_bytes()).unwrap() else { panic!() };
    assert_eq!(c.features.len(), 3);
}

#[test]
fn each_kind_of_bad_encoded_image_has_its_reason() {
    let rec = |image: &str| format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{image}}}"#);
    let png = png_b64(&[1, 2, 3], 3, 1, png::ColorType::Grayscale);
    let with_shape = schema().with_image_shape(Some([1, 3, 1]));
    let reason_of = |schema: &Schema, image: &str| schema.parse(rec(image).as_bytes()).unwrap_err();
    let no_shape = reason_of(&schema(), &format!(r#"{{"format":"png","data_b64":"{png}"}}"#));
    assert_eq!(no_shape.reason, DlqReason::InvalidImage);
    assert!(no_shape.message.contains("gate.image_shape"), "{}", no_shape.message);
    for image in [
        r#"{"format":"gif","data_b64":"AAAA"}"#.to_string(),
        r#"{"format":"jpeg","data_b64":"AAAA"}"#.to_string(),
        r#"{"format":"png","data_b64":"not base64!"}"#.to_string(),
        format!(r#"{{"format":"png","shape":[1,3,1],"data_b64":"{png}"}}"#),
        r#"{"data_b64":"AAAA"}"#.to_string(),
    ] {
        assert_eq!(reason_of(&with_shape, &image).reason, DlqReason::InvalidImage, "{image}");
    }
}

#[test]
fn an_image_uri_awaits_its_fetch_and_a_bad_one_is_refused_here() {
    let rec = |image: &str| format!(r#"{{"sample_id":"s","batch_id":"b","vendor_id":"v","label":"cat","image":{image}}}"#);
    let schema = Schema::new(&["cat".into(), "dog".into()], 3, 100_000).with_image_shape(Some([1, 3, 1]));
    let Inbound::Annotation(a) = schema.parse(rec(r#"{"uri":"https://Images.example/a b.png"}"#).as_bytes()).unwrap() else { panic!() };
    assert!(a.awaits_image() && a.features.is_empty());
    assert_eq!(a.image_uri.as_deref(), Some("https://images.example/a%20b.png"), "normalised as the fetcher requests it");
    assert_eq!(a.image_shape, Some([1, 3, 1]));
    for (image, want) in [
        (r#"{"uri":"ftp://images.example/a.png"}"#.to_string(), DlqReason::InvalidImage),
        (r#"{"uri":"not a uri"}"#.to_string(), DlqReason::InvalidImage),
        (r#"{"uri":"https://user:secret@images.example/a.png"}"#.to_string(), DlqReason::InvalidImage),
        (r#"{"uri":"https://images.example/a.png","format":"png","data_b64":"AAAA"}"#.to_string(), DlqReason::InvalidImage),
        (format!(r#"{{"uri":"https://images.example/{}"}}"#, "a".repeat(MAX_URI_BYTES)), DlqReason::FieldTooLong),
    ] {
        assert_eq!(schema.parse(rec(&image).as_bytes()).unwrap_err().reason, want, "{image}");
    }
    // A gate that does not convert images takes no URIs, and says which key to set.
    let e = self::schema().parse(rec(r#"{"uri":"https://images.example/a.png"}"#).as_bytes()).unwrap_err();
    assert!(e.reason == DlqReason::InvalidImage && e.message.contains("gate.image_shape"), "{e:?}");
}

#[test]
fn fetched_files_are_told_by_their_bytes_not_their_names() {
    let schema = schema().with_image_shape(Some([1, 3, 1]));
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, png_b64(&[0, 255, 51], 3, 1, png::ColorType::Grayscale)).unwrap();
    assert_eq!(schema.decode_fetched(&png).unwrap(), vec![0.0, 1.0, 0.2]);
    let e = schema.decode_fetched(b"<html>not found</html>").unwrap_err();
    assert_eq!(e.reason, DlqReason::InvalidImage);
}
