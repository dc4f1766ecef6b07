//! The deliveries each case replays: synthetic classes, MNIST or the music-genre crowd labels,
//! cut into vendor deliveries with their noise, plus the clean pool a warm start begins with.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Result};
use rand::{seq::SliceRandom, RngExt, SeedableRng};

use super::{PoolStart, StreamCase, StreamData};
use crate::data::{self, LabelledSet};

/// A stream: the set (given labels, truth), its deliveries in arrival order, and clean samples
/// for a full pool.
pub struct Stream {
    pub set: LabelledSet,
    pub deliveries: Vec<(String, String, Vec<usize>)>,
    pub pool: Vec<(u32, Vec<f32>)>,
}

const DATA_SEED: u64 = 20_261_129;

fn synthetic(n: usize, seed: u64) -> LabelledSet {
    let (dim, classes) = (32, 10);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means = vec![0f32; dim * classes];
    for m in means.iter_mut() {
        *m = (rng.random::<f32>() - 0.5) * 1.8;
    }
    let mut features = Vec::with_capacity(n * dim);
    let mut truth = Vec::with_capacity(n);
    for _ in 0..n {
        let c = rng.random_range(0..classes);
        for j in 0..dim {
            features.push(means[c * dim + j] + gaussian(&mut rng));
        }
        truth.push(c as u32);
    }
    LabelledSet {
        sample_ids: (0..n).map(|i| format!("g{i}")).collect(),
        features,
        shape: crate::o2u::InputShape::Vector { dim },
        labels: truth.clone(),
        classes: (0..classes).map(|c| c.to_string()).collect(),
        truth: Some(truth),
        annotators: None,
        items: None,
        texts: None,
    }
}

fn gaussian(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
    // Box–Muller.
    let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn noise_features(set: &mut LabelledSet, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xdead);
    for f in set.features.iter_mut() {
        *f = gaussian(&mut rng);
    }
}

/// Moves every feature by 0.75 of its standard deviation over the set: the deliveries then come
/// from elsewhere than the pool's clean samples.
fn shift_features(set: &mut LabelledSet) {
    let (n, dim) = (set.len(), set.shape.len());
    for j in 0..dim {
        let column = (0..n).map(|i| set.features[i * dim + j] as f64);
        let mean = column.clone().sum::<f64>() / n.max(1) as f64;
        let sd = (column.map(|x| (x - mean).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt();
        for i in 0..n {
            set.features[i * dim + j] += (0.75 * sd) as f32;
        }
    }
}

/// Delivery sizes between a tenth and half of the window (at least 20, at most 5,000 records).
fn sizes(window: usize, total: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<usize> {
    let hi = (window / 2).clamp(20, 5000);
    let lo = (window / 10).max(20).min(hi);
    let mut out = Vec::new();
    let mut left = total;
    while left >= lo {
        let s = rng.random_range(lo..=hi).min(left);
        out.push(s);
        left -= s;
    }
    out
}

pub fn build(case: &StreamCase, data_dir: &Path, pool_size: usize) -> Result<Stream> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(DATA_SEED);
    match case.data {
        StreamData::MusicGenre => {
            let set = data::music_genre::load_crowd(data_dir)?;
            let pool_set = data::music_genre::load_test(data_dir, &set.classes)?;
            return crowd_stream(case, set, Some(pool_set), &mut rng);
        }
        StreamData::CrowdText => return crowd_stream(case, data::crowd_text::load(&data::crowd_text::default_dir())?, None, &mut rng),
        _ => {}
    }
    // Three windows' worth of records (at least 4,000), plus the pool's clean samples.
    let stream_records = (3 * case.window).max(4000);
    let (mut set, mut pool_set) = match case.data {
        StreamData::Synthetic => {
            let all = synthetic(stream_records + pool_size, DATA_SEED);
            split(all, stream_records)
        }
        StreamData::Mnist => {
            let mut train = data::mnist::load(data_dir, "train")?;
            if train.len() < stream_records {
                bail!("MNIST has {} training images; a window of {} needs {stream_records}", train.len(), case.window);
            }
            train.truncate(stream_records);
            let mut test = data::mnist::load(data_dir, "t10k")?;
            test.truncate(pool_size);
            (train, test)
        }
        StreamData::SentencePolarity => {
            let (mut train, mut test) = embedded_sentence_polarity(data_dir)?;
            if train.len() < stream_records {
                bail!("sentence polarity has {} training sentences; a window of {} needs {stream_records}", train.len(), case.window);
            }
            train.truncate(stream_records);
            test.truncate(pool_size);
            (train, test)
        }
        StreamData::MusicGenre | StreamData::CrowdText => unreachable!(),
    };
    if case.unlearnable {
        noise_features(&mut set, DATA_SEED);
        noise_features(&mut pool_set, DATA_SEED + 1);
    }
    if case.shifted {
        shift_features(&mut set);
    }
    let truth = set.truth.clone().expect("synthetic and MNIST carry the truth");
    let classes = set.classes.len() as u32;
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.shuffle(&mut rng);
    let mut deliveries = Vec::new();
    let mut next = 0;
    for (i, size) in sizes(case.window, set.len(), &mut rng).into_iter().enumerate() {
        let v = i % case.vendor_noise.len();
        let rate = case.vendor_noise[v];
        let idx: Vec<usize> = order[next..next + size].to_vec();
        for &j in &idx {
            if rng.random::<f64>() < rate {
                set.labels[j] = (truth[j] + rng.random_range(1..classes)) % classes;
            }
        }
        deliveries.push((format!("d{i:04}-v{v}"), format!("vendor-{:02}pct", (rate * 100.0).round() as u32), idx));
        next += size;
    }
    let dim = set.shape.len();
    let pool = match case.pool {
        PoolStart::Empty => Vec::new(),
        PoolStart::Full => (0..pool_set.len()).map(|i| (pool_set.truth.as_ref().unwrap()[i], pool_set.features[i * dim..(i + 1) * dim].to_vec())).collect(),
    };
    Ok(Stream { set, deliveries, pool })
}

/// The sentence-polarity splits with the default encoder's vectors, embedded once per process
/// (every case and seed replays the same sentences).
fn embedded_sentence_polarity(data_dir: &Path) -> Result<(LabelledSet, LabelledSet)> {
    static EMBEDDED: std::sync::Mutex<Option<(std::path::PathBuf, LabelledSet, LabelledSet)>> = std::sync::Mutex::new(None);
    let mut cached = EMBEDDED.lock().expect("not poisoned");
    if let Some((_, train, test)) = cached.as_ref().filter(|(dir, _, _)| dir == data_dir) {
        return Ok((train.clone(), test.clone()));
    }
    let (mut train, mut test) = data::load_builtin(data::Builtin::SentencePolarity, data_dir)?;
    let mut embedder = crate::encoder::TextEmbedder::load(None, 16, 0, false)?;
    for set in [&mut train, &mut test] {
        set.embed(&mut embedder)?;
    }
    *cached = Some((data_dir.to_path_buf(), train.clone(), test.clone()));
    Ok((train, test))
}

fn split(all: LabelledSet, n: usize) -> (LabelledSet, LabelledSet) {
    let dim = all.shape.len();
    let take = |range: std::ops::Range<usize>| LabelledSet {
        sample_ids: all.sample_ids[range.clone()].to_vec(),
        features: all.features[range.start * dim..range.end * dim].to_vec(),
        shape: all.shape,
        labels: all.labels[range.clone()].to_vec(),
        classes: all.classes.clone(),
        truth: all.truth.as_ref().map(|t| t[range.clone()].to_vec()),
        annotators: None,
        items: None,
        texts: None,
    };
    (take(0..n), take(n..all.len()))
}

/// Crowd labels: each worker a vendor, its labels in deliveries of at most 60, the sample_id
/// the item (shared by the workers who labelled it), deliveries in a random order so that an
/// item's labels arrive in different windows. `pool_set`: held-out items with their truth, for a
/// full pool.
fn crowd_stream(case: &StreamCase, mut set: LabelledSet, mut pool_set: Option<LabelledSet>, rng: &mut rand_chacha::ChaCha8Rng) -> Result<Stream> {
    if case.unlearnable {
        noise_features(&mut set, DATA_SEED);
        if let Some(pool_set) = pool_set.as_mut() {
            noise_features(pool_set, DATA_SEED + 1);
        }
    }
    if case.shifted {
        shift_features(&mut set);
    }
    let annotators = set.annotators.clone().expect("crowd labels name their workers");
    let mut by_worker: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, w) in annotators.iter().enumerate() {
        by_worker.entry(w.as_str()).or_default().push(i);
    }
    let mut deliveries = Vec::new();
    for (w, idx) in by_worker {
        for (k, chunk) in idx.chunks(60).enumerate() {
            deliveries.push((format!("{w}-{k}"), w.to_string(), chunk.to_vec()));
        }
    }
    deliveries.shuffle(rng);
    let dim = set.shape.len();
    let pool = match (case.pool, &pool_set) {
        (PoolStart::Empty, _) => Vec::new(),
        (PoolStart::Full, Some(pool_set)) => (0..pool_set.len()).map(|i| (pool_set.labels[i], pool_set.features[i * dim..(i + 1) * dim].to_vec())).collect(),
        (PoolStart::Full, None) => bail!("{:?} has no held-out items for a full pool: use --pool empty", case.data),
    };
    Ok(Stream { set, deliveries, pool })
}

pub fn wire_record(set: &LabelledSet, i: usize, batch_id: &str, vendor: &str) -> Vec<u8> {
    let dim = set.shape.len();
    let sample_id = set.items.as_ref().map_or(&set.sample_ids[i], |items| &items[i]);
    serde_json::json!({
        "sample_id": sample_id,
        "batch_id": batch_id,
        "vendor_id": vendor,
        "label": set.classes[set.labels[i] as usize],
        "features": &set.features[i * dim..(i + 1) * dim],
    })
    .to_string()
    .into_bytes()
}
