//! A crowd-labelled text set for the streaming evaluation: Amazon reviews with five workers'
//! "is it about a book?" labels and the review's true category (tests/data/crowd_text/README.md).
//! Its licence does not allow committing it; `benches/crowd_text_features.py --source` builds the
//! files (64 TF-IDF/SVD features per review) from the authors' repository.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::{music_genre, LabelledSet};

/// `LABELGATE_CROWD_TEXT_DIR`, else `tests/data/crowd_text` under the working directory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("LABELGATE_CROWD_TEXT_DIR").map_or_else(|| PathBuf::from("tests/data/crowd_text"), PathBuf::from)
}

/// Worker labels as samples (as [`music_genre::load_crowd`]).
pub fn load(dir: &Path) -> Result<LabelledSet> {
    let (gold, answers) = (dir.join("gold.csv"), dir.join("answers.csv"));
    if !gold.exists() || !answers.exists() {
        bail!(
            "the crowd text set is not in {} (its licence keeps it out of the repository): build it with `benches/crowd_text_features.py --source <crowd_answers.csv>` (tests/data/crowd_text/README.md), or set LABELGATE_CROWD_TEXT_DIR",
            dir.display()
        );
    }
    music_genre::load_answers(&gold, &answers, music_genre::AnswerColumns { worker: 1, item: 0, label: 2 })
}
