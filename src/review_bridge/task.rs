//! The Label Studio side of a suspect: the project's labelling config (one single-choice question
//! over `gate.classes`) and the task made from a re-review record, with the gate's predicted label
//! as a pre-annotation.

use serde_json::{json, Value};

use super::render;
use crate::wire::RereviewMessage;

/// Names of the config's tags, referenced by predictions and read back from annotations.
pub const FROM_NAME: &str = "label";
pub const TO_NAME: &str = "item";
/// The task data field that identifies a task's suspect, for reconciliation after a crash.
pub const KEY_FIELD: &str = "labelgate_key";

/// The task map's key of a suspect: one task per (vendor, sample).
pub fn suspect_key(vendor_id: &str, sample_id: &str) -> String {
    serde_json::to_string(&[vendor_id, sample_id]).expect("strings serialise")
}

/// The labelling config: the vendor's label and the gate's guess in a header, the item, and one
/// choice per class.
pub fn label_config(classes: &[String]) -> String {
    let choices: String = classes.iter().map(|c| format!(r#"<Choice value="{}"/>"#, render::escape(c))).collect();
    format!(
        concat!(
            r#"<View>"#,
            r#"<Header value="Vendor $vendor_id labelled sample $sample_id as: $vendor_label"/>"#,
            r#"<Header value="The gate suggests: $gate_label (suspicion score $score). Choose the right label." size="5"/>"#,
            r#"<HyperText name="{to}" value="$item_html" inline="true"/>"#,
            r#"<Choices name="{from}" toName="{to}" choice="single-radio" showInline="true" required="true">{choices}</Choices>"#,
            r#"</View>"#
        ),
        to = TO_NAME,
        from = FROM_NAME,
        choices = choices
    )
}

/// The task of one suspect, ready for `POST /api/projects/{id}/import`.
pub fn task(msg: &RereviewMessage) -> Value {
    let mut data = json!({
        KEY_FIELD: suspect_key(&msg.vendor_id, &msg.sample_id),
        "sample_id": msg.sample_id,
        "vendor_id": msg.vendor_id,
        "batch_id": msg.batch_id,
        "vendor_label": msg.label,
        "gate_label": msg.predicted_label,
        "score": format!("{:.3}", msg.score),
        "rank_percentile": msg.rank_percentile,
        "window_id": msg.window_id,
        "item_html": render::item_html(msg.item.as_ref(), msg.image.as_ref(), msg.image_uri.as_deref(), msg.text.as_deref().map(|t| (t, msg.text_pair.as_deref()))),
    });
    if let Some(annotator) = &msg.annotator_id {
        data["annotator_id"] = json!(annotator);
    }
    if let Some(item) = &msg.item {
        data["item"] = Value::Object(item.clone());
    }
    json!({
        "data": data,
        "predictions": [{
            "model_version": msg.model_version,
            // Label Studio shows a prediction's score as a percentage: the suspect's rank in its
            // window (0.99 = more suspect than 99 % of it) reads as that; the O2U score (a mean
            // normalised loss, unbounded) is in the task's data.
            "score": msg.rank_percentile,
            "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [msg.predicted_label]}}],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_escaped_in_the_config() {
        let config = label_config(&["cat".into(), "a\"b<c".into()]);
        assert!(config.contains(r#"<Choice value="a&quot;b&lt;c"/>"#), "{config}");
        assert!(config.contains(r#"<Choice value="cat"/>"#));
    }

    #[test]
    fn a_task_carries_the_suspect_and_the_gate_guess() {
        let msg = RereviewMessage {
            schema_version: 1,
            sample_id: "s1".into(),
            batch_id: "b".into(),
            vendor_id: "v".into(),
            annotator_id: None,
            label: "cat".into(),
            predicted_label: "dog".into(),
            score: 0.8,
            rank_percentile: 0.99,
            window_id: "w".into(),
            model_version: "m".into(),
            reason: "o2u_high_loss".into(),
            item: serde_json::json!({"text": "a <b>"}).as_object().cloned(),
            image: None,
            image_uri: None,
            text: None,
            text_pair: None,
        };
        let t = task(&msg);
        assert_eq!(t["data"][KEY_FIELD], r#"["v","s1"]"#);
        assert_eq!(t["predictions"][0]["result"][0]["value"]["choices"][0], "dog");
        assert_eq!(t["predictions"][0]["score"], 0.99, "a share Label Studio can show as a percentage");
        assert!(t["data"]["item_html"].as_str().unwrap().contains("a &lt;b&gt;"));
        let pair = RereviewMessage { item: None, text: Some("a man <sleeps>".into()), text_pair: Some("a person rests".into()), ..msg.clone() };
        let html = task(&pair)["data"]["item_html"].as_str().unwrap().to_string();
        assert!(html.contains("a man &lt;sleeps&gt;") && html.contains("a person rests") && !html.contains("carried no item"), "{html}");
        // An image named by URI shows the pixels that were scored and links the original.
        let pixels = crate::wire::ImagePixels::from_features([2, 2, 1], &[0.0, 1.0, 0.5, 0.25]);
        let by_uri = RereviewMessage { item: None, text: None, text_pair: None, image: Some(pixels), image_uri: Some("https://cdn.example/get?id=7&x=\"1\"".into()), ..pair };
        let html = task(&by_uri)["data"]["item_html"].as_str().unwrap().to_string();
        assert!(html.contains("data:image/png;base64,"), "{html}");
        assert!(html.contains(r#"href="https://cdn.example/get?id=7&amp;x=&quot;1&quot;""#) && !html.contains(r#"src="https://cdn"#), "{html}");
        let file = RereviewMessage { image_uri: Some("file:///data/images/a.png".into()), ..by_uri };
        let html = task(&file)["data"]["item_html"].as_str().unwrap().to_string();
        assert!(html.contains("file:///data/images/a.png") && !html.contains(r#"href="file:"#), "{html}");
        assert_eq!(suspect_key("v:1", "s"), r#"["v:1","s"]"#, "no vendor and sample pair collides with another");
    }
}
