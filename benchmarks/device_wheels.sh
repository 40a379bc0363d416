#!/usr/bin/env bash
# The wheels benchmarks/gpu.sh needs on a GPU machine that has torch but not MLflow (the device
# README: a package missing there travels as a wheel, 64 MiB per call with the working tree).
#
#   bash benchmarks/device_wheels.sh           # .whl/ (git-ignored) for the device's CPython 3.12
#   bash benchmarks/device_wheels.sh --check   # prove the set complete here first (2-3 min)
#
# The set is benchmarks/device_wheels.txt (MLflow skinny + SQLAlchemy + Alembic + soundfile at this
# project's pins, and what they need that the machine's image lacks); about 22 MB. Then, on the
# device: carry ".whl" and start the command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site && bash benchmarks/gpu.sh
# --check downloads the same set for this machine's Python, installs it into a scratch folder,
# and runs benchmarks/gpu_grid.py (smoke scale, one route, through `tfreeze compare`) in a bare venv
# that sees only that folder plus the packages of benchmarks/device_packages.txt, linked from this
# project's venv: a package the device lacks and the set misses fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LIST=benchmarks/device_wheels.txt
PLATFORMS=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
reqs() { grep -v '^#' "$LIST"; }

if [[ "${1:-}" != "--check" ]]; then
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl $(reqs)
  du -sh .whl
  exit 0
fi

scratch="$(mktemp -d /tmp/device-wheels-XXXX)"
trap 'rm -rf "$scratch"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$scratch/whl" $(reqs)
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$scratch/site" "$scratch"/whl/*.whl
"$PY" - "$scratch/image" benchmarks/device_packages.txt <<'PYEOF'
"""Link the device image's packages from this interpreter's environment into one folder."""
import importlib.metadata as md
import re
import sys
from pathlib import Path

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
image, listing = Path(sys.argv[1]), Path(sys.argv[2])
wanted = {norm(line) for line in listing.read_text().split("\n") if line and not line.startswith("#")}
image.mkdir()
for dist in md.distributions():
    if norm(dist.metadata["Name"]) not in wanted:
        continue
    for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
        src = Path(dist.locate_file(top))
        if top == "google":  # a namespace other packages share: link protobuf's part only
            (image / "google").mkdir(exist_ok=True)
            src, top = src / "protobuf", "google/protobuf"
        if src.exists() and not (image / top).exists():
            (image / top).symlink_to(src)
PYEOF
"$PY" -m venv --without-pip "$scratch/bare"
PYTHONPATH="$scratch/site:$scratch/image" OUT="$scratch/out" "$scratch/bare/bin/python" \
  benchmarks/gpu_grid.py --scale smoke --routes one-process --seeds 1 --device cpu
echo "device wheels: complete ($(du -sh "$scratch/whl" | cut -f1) for this Python)"
