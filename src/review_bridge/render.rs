//! What a reviewer sees of a suspect, as HTML for Label Studio's `HyperText` tag: the item's
//! image, audio, video or link (`uri`), its text, its extra display fields, and raw-pixel records
//! as a PNG data URI. Every vendor string is HTML-escaped, and only http(s) and `data:image/` URIs
//! become links or sources. Label Studio's HTML sanitiser drops `data:` URIs from `src` and `href`
//! (measured on 1.23), so inline images are a CSS background of a sized `div` with `role="img"`.

use serde_json::{Map, Value};

use crate::wire::ImagePixels;

/// Pixel images are shown at least this wide (small images such as MNIST's 28×28 are scaled up).
const MIN_DISPLAY_PX: usize = 224;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The pixels as a PNG: 1 channel grey, 2 grey + alpha, 3 RGB, 4 RGBA.
pub fn png(image: &ImagePixels) -> Result<Vec<u8>, String> {
    let pixels = image.pixels()?;
    let [h, w, c] = image.shape;
    let color = match c {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        _ => return Err(format!("{c} channels: only 1 to 4 can be shown as an image")),
    };
    let (width, height) = (u32::try_from(w).map_err(|e| e.to_string())?, u32::try_from(h).map_err(|e| e.to_string())?);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&pixels).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn png_data_uri(image: &ImagePixels) -> Result<String, String> {
    use base64::Engine;
    Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png(image)?)))
}

/// A URI that may be a source or a link: http(s), or an inline image.
fn is_safe_uri(uri: &str) -> bool {
    let lower = uri.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("data:image/")
}

/// The media a URI points at, from its extension (or data URI type).
fn media_kind(uri: &str) -> &'static str {
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("data:image/") {
        return "image";
    }
    let path = lower.split(['?', '#']).next().unwrap_or("");
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "png" | "jpg" | "jpeg" | "gif" | "webp" | "bmp" | "svg" | "avif" | "tif" | "tiff" => "image",
        "mp3" | "wav" | "ogg" | "oga" | "flac" | "m4a" | "aac" | "opus" => "audio",
        "mp4" | "webm" | "mov" | "mkv" => "video",
        _ => "link",
    }
}

fn uri_html(uri: &str) -> String {
    if !is_safe_uri(uri) {
        return format!(r#"<p class="labelgate-uri">{}</p>"#, escape(uri));
    }
    let u = escape(uri);
    if uri.trim_start().to_ascii_lowercase().starts_with("data:image/") {
        return inline_image(&u, MIN_DISPLAY_PX, MIN_DISPLAY_PX, "item");
    }
    match media_kind(uri) {
        "image" => format!(r#"<img class="labelgate-image" src="{u}" alt="item" style="max-width:100%;min-width:{MIN_DISPLAY_PX}px"/>"#),
        "audio" => format!(r#"<audio class="labelgate-audio" controls src="{u}"></audio>"#),
        "video" => format!(r#"<video class="labelgate-video" controls src="{u}" style="max-width:100%"></video>"#),
        _ => format!(r#"<p><a class="labelgate-link" href="{u}" target="_blank" rel="noopener noreferrer">{u}</a></p>"#),
    }
}

/// An inline (`data:`) image of the given display size; `uri` is already escaped.
fn inline_image(uri: &str, width: usize, height: usize, label: &str) -> String {
    format!(
        r#"<div class="labelgate-image" role="img" aria-label="{label}" style="width:{width}px;height:{height}px;background-image:url('{uri}');background-size:contain;background-repeat:no-repeat;image-rendering:pixelated"></div>"#
    )
}

fn pixels_html(image: &ImagePixels) -> String {
    match png_data_uri(image) {
        Ok(uri) => {
            let [h, w, _] = image.shape;
            let scale = (MIN_DISPLAY_PX / h.max(w).max(1)).max(1);
            inline_image(&uri, w * scale, h * scale, "item pixels")
        }
        Err(e) => format!(r#"<p class="labelgate-note">The pixels cannot be shown: {}</p>"#, escape(&e)),
    }
}

/// Extra display fields as text (strings as they are, anything else as its JSON).
fn field_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The HTML a reviewer sees for one suspect: the record's own text (and pair), its pixels (with a
/// link to the file they came from, when it was named by URI), then its item.
pub fn item_html(item: Option<&Map<String, Value>>, image: Option<&ImagePixels>, image_uri: Option<&str>, text: Option<(&str, Option<&str>)>) -> String {
    let mut html = String::from(r#"<div class="labelgate-item">"#);
    if let Some(image) = image {
        html.push_str(&pixels_html(image));
    }
    // The pixels above are what was scored; the original is a link, not loaded by itself (its host
    // could serve something else now, or learn who reviews).
    match image_uri {
        Some(uri) if is_safe_uri(uri) => {
            let u = escape(uri);
            html.push_str(&format!(r#"<p class="labelgate-uri">original: <a class="labelgate-link" href="{u}" target="_blank" rel="noopener noreferrer">{u}</a></p>"#))
        }
        Some(uri) => html.push_str(&format!(r#"<p class="labelgate-uri">{}</p>"#, escape(uri))),
        None => {}
    }
    match text {
        Some((text, None)) => html.push_str(&format!(r#"<div class="labelgate-text" style="white-space:pre-wrap">{}</div>"#, escape(text))),
        Some((text, Some(pair))) => html.push_str(&format!(
            r#"<table class="labelgate-pair"><tr><th>text</th><td style="white-space:pre-wrap">{}</td></tr><tr><th>text_pair</th><td style="white-space:pre-wrap">{}</td></tr></table>"#,
            escape(text),
            escape(pair)
        )),
        None => {}
    }
    if let Some(item) = item {
        if let Some(uri) = item.get("uri").and_then(Value::as_str) {
            html.push_str(&uri_html(uri));
        }
        if let Some(text) = item.get("text").and_then(Value::as_str) {
            html.push_str(&format!(r#"<div class="labelgate-text" style="white-space:pre-wrap">{}</div>"#, escape(text)));
        }
        let extra: Vec<(&String, &Value)> = item.iter().filter(|(k, _)| k.as_str() != "uri" && k.as_str() != "text").collect();
        if !extra.is_empty() {
            html.push_str(r#"<table class="labelgate-fields">"#);
            for (k, v) in extra {
                html.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(&field_text(v))));
            }
            html.push_str("</table>");
        }
    }
    if item.is_none() && image.is_none() && image_uri.is_none() && text.is_none() {
        html.push_str(r#"<p class="labelgate-note">The vendor's record carried no item (only features): ask the vendor to send an <code>item</code>.</p>"#);
    }
    html.push_str("</div>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_strings_are_escaped_and_unsafe_uris_are_not_links() {
        let item = serde_json::json!({"text": "<script>alert(1)</script>", "uri": "javascript:alert(2)", "note\"": "a & b"});
        let html = item_html(item.as_object(), None, None, None);
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("href=\"javascript") && !html.contains("src=\"javascript"), "{html}");
        assert!(html.contains("note&quot;") && html.contains("a &amp; b"), "{html}");
    }

    #[test]
    fn uris_become_the_right_element() {
        let html = |uri: &str| item_html(serde_json::json!({ "uri": uri }).as_object(), None, None, None);
        assert!(html("https://x/cat.JPG?sig=1").contains("<img"));
        assert!(html("https://x/a.wav").contains("<audio"));
        assert!(html("https://x/doc.pdf").contains("<a class=\"labelgate-link\""));
    }

    #[test]
    fn pixels_become_a_png_that_decodes_to_the_same_pixels() {
        use base64::Engine;
        let pixels: Vec<u8> = (0..28 * 28).map(|i| (i % 256) as u8).collect();
        let image = ImagePixels { shape: [28, 28, 1], data_b64: base64::engine::general_purpose::STANDARD.encode(&pixels) };
        let bytes = png(&image).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (28, 28, png::ColorType::Grayscale));
        assert_eq!(&buf[..info.buffer_size()], &pixels[..]);
        let html = item_html(None, Some(&image), None, None);
        assert!(html.contains("background-image:url('data:image/png;base64,") && html.contains("width:224px"), "{html}");
        let five = ImagePixels { shape: [1, 1, 5], data_b64: base64::engine::general_purpose::STANDARD.encode([0u8; 5]) };
        assert!(item_html(None, Some(&five), None, None).contains("cannot be shown"));
    }
}
