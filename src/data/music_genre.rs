//! The music-genre crowd set (Rodrigues et al. 2013): 700 songs with 124 audio features, 2,945
//! labels from 44 Mechanical Turk workers, and the gold genre. Each worker label is one sample.

use std::{collections::HashMap, path::Path};

use anyhow::{bail, Context, Result};

use super::LabelledSet;
use crate::o2u::InputShape;

struct Songs {
    features: HashMap<String, Vec<f32>>,
    genre: HashMap<String, String>,
    order: Vec<String>,
    dim: usize,
}

fn read_songs(path: &Path) -> Result<Songs> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let dim = reader.headers()?.len().saturating_sub(2);
    let mut songs = Songs { features: HashMap::new(), genre: HashMap::new(), order: Vec::new(), dim };
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{} line {}", path.display(), i + 2))?;
        let id = row[0].to_string();
        let features = (1..=dim).map(|c| row[c].parse::<f32>().with_context(|| format!("{} line {} column {}", path.display(), i + 2, c + 1))).collect::<Result<Vec<_>>>()?;
        songs.genre.insert(id.clone(), row[dim + 1].to_string());
        songs.features.insert(id.clone(), features);
        songs.order.push(id);
    }
    Ok(songs)
}

/// Worker labels as samples: features of the song, the worker's genre as the label, the gold
/// genre as the truth, the worker as the annotator.
pub fn load_crowd(dir: &Path) -> Result<LabelledSet> {
    let dir = dir.join("music_genre_crowd");
    load_answers(&dir.join("music_genre_gold.csv"), &dir.join("mturk_answers.csv"), AnswerColumns { worker: 0, item: 1, label: 3 })
}

/// Where an answers file keeps the worker, the item and the label.
pub(super) struct AnswerColumns {
    pub worker: usize,
    pub item: usize,
    pub label: usize,
}

/// Worker labels (`answers`: one row per label) of the items in `gold` (`id,f1..fD,class`) as
/// samples: the item's features, the worker's label, the gold class as the truth.
pub(super) fn load_answers(gold: &Path, answers: &Path, columns: AnswerColumns) -> Result<LabelledSet> {
    let songs = read_songs(gold)?;
    let mut classes: Vec<String> = songs.genre.values().cloned().collect();
    classes.sort();
    classes.dedup();
    let class_of = |name: &str| classes.iter().position(|c| c == name);
    let path = answers;
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut set = LabelledSet {
        sample_ids: Vec::new(),
        features: Vec::new(),
        shape: InputShape::Vector { dim: songs.dim },
        labels: Vec::new(),
        classes: classes.clone(),
        truth: Some(Vec::new()),
        annotators: Some(Vec::new()),
        items: Some(Vec::new()),
        texts: None,
    };
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{} line {}", path.display(), i + 2))?;
        let (worker, song, answer) = (&row[columns.worker], &row[columns.item], &row[columns.label]);
        let Some(features) = songs.features.get(song) else { bail!("{} line {}: item {song} has no features in {}", path.display(), i + 2, gold.display()) };
        let Some(label) = class_of(answer) else { bail!("{} line {}: unknown class {answer}", path.display(), i + 2) };
        set.sample_ids.push(format!("{worker}:{song}"));
        set.features.extend_from_slice(features);
        set.labels.push(label as u32);
        set.truth.as_mut().unwrap().push(class_of(&songs.genre[song]).unwrap() as u32);
        set.annotators.as_mut().unwrap().push(worker.to_string());
        set.items.as_mut().unwrap().push(song.to_string());
    }
    Ok(set)
}

/// The 300 held-out songs with their true genre.
pub fn load_test(dir: &Path, classes: &[String]) -> Result<LabelledSet> {
    let songs = read_songs(&dir.join("music_genre_crowd").join("music_genre_test.csv"))?;
    let mut labels = Vec::new();
    let mut features = Vec::new();
    for id in &songs.order {
        let Some(c) = classes.iter().position(|c| c == &songs.genre[id]) else { bail!("test song {id} has genre {} outside the training classes", songs.genre[id]) };
        labels.push(c as u32);
        features.extend_from_slice(&songs.features[id]);
    }
    Ok(LabelledSet {
        sample_ids: songs.order.clone(),
        features,
        shape: InputShape::Vector { dim: songs.dim },
        truth: Some(labels.clone()),
        labels,
        classes: classes.to_vec(),
        annotators: None,
        items: None,
        texts: None,
    })
}
