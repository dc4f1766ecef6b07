//! Where sentence-encoder models live: the project's model cache, which `scripts/models.sh`
//! fills, unless the configuration names a directory.

use std::path::{Path, PathBuf};

/// The default text model, a directory name in the model cache.
pub const DEFAULT_TEXT_MODEL: &str = "all-MiniLM-L6-v2";

/// `$LABELGATE_MODEL_CACHE`, else `$XDG_CACHE_HOME/labelgate/models`, else
/// `~/.cache/labelgate/models`.
pub fn model_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("LABELGATE_MODEL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("labelgate").join("models")
}

/// The configured directory, or the default model in the cache when none is configured.
pub fn text_model_dir(configured: Option<&Path>) -> PathBuf {
    configured.filter(|p| !p.as_os_str().is_empty()).map_or_else(|| model_cache().join(DEFAULT_TEXT_MODEL), Path::to_path_buf)
}

/// The one line that says how to get the default model.
pub fn how_to_install() -> String {
    format!("install the default model with `bash scripts/models.sh` (into {}), or set encoder.text.model_dir to a sentence-transformers directory", model_cache().display())
}
