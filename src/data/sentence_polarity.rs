//! The sentence-polarity movie reviews (Pang and Lee 2005): `rt-polarity.pos` and
//! `rt-polarity.neg`, one Latin-1 sentence a line. Samples alternate positive and negative, so
//! any prefix is balanced; the last fifth is the clean test split.

use std::path::Path;

use anyhow::{Context, Result};

use super::LabelledSet;
use crate::{encoder::TextInput, o2u::InputShape};

pub const CLASSES: [&str; 2] = ["negative", "positive"];

/// Every sentence, alternating positive and negative, with its polarity as label and truth.
pub fn load(dir: &Path) -> Result<LabelledSet> {
    let read = |name: &str| -> Result<Vec<String>> {
        let path = dir.join("sentence_polarity").join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {} (the data directory's sentence_polarity/)", path.display()))?;
        // Latin-1: each byte is the code point of the same value.
        let text: String = bytes.iter().map(|&b| b as char).collect();
        Ok(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
    };
    let (pos, neg) = (read("rt-polarity.pos")?, read("rt-polarity.neg")?);
    let mut set = LabelledSet {
        sample_ids: Vec::new(),
        features: Vec::new(),
        shape: InputShape::Vector { dim: 0 },
        labels: Vec::new(),
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        truth: None,
        annotators: None,
        items: None,
        texts: Some(Vec::new()),
    };
    let texts = set.texts.as_mut().expect("set above");
    for i in 0..pos.len().max(neg.len()) {
        for (label, sentences, name) in [(1u32, &pos, "pos"), (0, &neg, "neg")] {
            if let Some(s) = sentences.get(i) {
                set.sample_ids.push(format!("{name}-{i:04}"));
                set.labels.push(label);
                texts.push(TextInput { text: s.clone(), pair: None });
            }
        }
    }
    set.truth = Some(set.labels.clone());
    Ok(set)
}

/// (train, test): the first four fifths and the rest.
pub fn load_split(dir: &Path) -> Result<(LabelledSet, LabelledSet)> {
    let all = load(dir)?;
    let n = all.len() * 4 / 5;
    let mut test = all.clone();
    let mut train = all;
    train.truncate(n);
    test.sample_ids.drain(..n);
    test.labels.drain(..n);
    test.truth.as_mut().expect("set").drain(..n);
    test.texts.as_mut().expect("set").drain(..n);
    Ok((train, test))
}
