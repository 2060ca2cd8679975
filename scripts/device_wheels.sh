#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with a wheel of every package our code needs that the lent GPU machine
# lacks, for its CPython 3.12 on x86-64 Linux: that machine reaches no package registry, so the
# device call carries the folder (carry [".whl"]) and scripts/device_check.sh installs it there.
#
# Run it here, where pip reaches PyPI. What the machine has is scripts/device_machine_packages.txt;
# what it lacks is the list below: our install_requires and their Requires-Dist, less what it has.
# torchreid 0.2.5 is only a source archive on PyPI: its wheel (pure Python) is built here. Before
# .whl/ is touched, `device_check.py wheels` checks the set: each wheel installable there, one
# version of each, none the machine already has, and every requirement of ours and of theirs met
# by the set and the machine's packages (versions checked where the file records them). Then
# .whl/ holds exactly these wheels (stale ones removed), one line per wheel with its size, and the
# total, which must stay under 60 MiB: a device call carries at most 64 MiB, the working tree
# included. Running it again gives the same folder (pip's cache makes it quick).
#
# usage: bash scripts/device_wheels.sh
# environment: PYTHON (default python3), the Python whose pip downloads and builds.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
DEST="$REPO/.whl"
PYTHON=${PYTHON:-python3}
LIMIT_MIB=60
CARRY_LIMIT_MIB=64

# Wheels on PyPI for the machine, one version each, chosen against its packages' versions. Beside
# each: who needs it, and what it needs ("there": on the machine already).
WHEELS=(
    open_clip_torch==3.3.0    # ours; needs ftfy (below), regex, tqdm, hf-hub, safetensors, timm>=1.0.17 (there)
    diffusers==0.42.1         # ours; needs huggingface-hub>=1.32,<3, safetensors>=0.8: there 1.33.0, 0.8.0
    importlib_metadata==8.7.1 # diffusers'; 8.x needs only zipp (there), 10.x one more package
    yacs==0.1.8               # ours; needs PyYAML (there)
    gdown==6.5.1              # ours, imported by torchreid; needs beautifulsoup4, PySocks (below) and
                              # requests, filelock, tqdm, urllib3 (there)
    beautifulsoup4==4.15.0    # gdown's; needs soupsieve (below), typing-extensions (there)
    soupsieve==4.1.4          # beautifulsoup4's
    PySocks==1.7.1            # gdown asks for requests[socks]
    ftfy==6.3.1               # open_clip_torch's; needs wcwidth (below)
    wcwidth==0.7.0            # ftfy's; the last pure-Python release (0.8+ ship compiled wheels)
)
# Source archives only on PyPI: built into pure-Python wheels here.
BUILT_HERE=(
    torchreid==0.2.5          # ours; declares no requirement (imports gdown: above; scipy, h5py, imageio, cv2: there)
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

fail() {
    echo "device_wheels: $*" >&2
    exit 1
}

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/dcac-device-wheels.XXXXXX") || fail "cannot create a temporary folder"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/wheels" "$STAGE/sources"
LOG="$STAGE/pip.log"

pip_quietly() {  # pip's output only where it failed, as its last line; the last argument names what
    "$PYTHON" -m pip "$@" >"$LOG" 2>&1 ||
        fail "pip $1 ${*: -1} failed: $(grep -v '^\s*$' "$LOG" | tail -n 1)"
}

for spec in "${WHEELS[@]}"; do
    pip_quietly download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]/#/--platform=}" -d "$STAGE/wheels" "$spec"
done
for spec in "${BUILT_HERE[@]}"; do
    pip_quietly download --no-deps --no-binary=:all: -d "$STAGE/sources" "$spec"
done
for archive in "$STAGE"/sources/*; do
    # No build isolation: setuptools from this Python builds it, with nothing downloaded.
    pip_quietly wheel --no-deps --no-build-isolation -w "$STAGE/wheels" "$archive"
done
"$PYTHON" "$REPO/dcac_plugin/benchmarks/device_check.py" wheels "$STAGE/wheels" ||
    fail "the wheels do not make a working set for the machine (see the line above)"

mib() {  # bytes -> MiB, 1 decimal
    awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'
}
size_of() {  # bytes -> "6.1 MiB" / "16 KiB"
    awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%.1f MiB", b / 1048576; else printf "%.0f KiB", b / 1024 }'
}
total=0
for wheel in "$STAGE"/wheels/*.whl; do
    size=$(stat -c %s "$wheel")
    total=$((total + size))
    printf '  %-48s %10s\n' "$(basename "$wheel")" "$(size_of "$size")"
done
tree=0  # what travels besides: the tracked and the untracked-not-ignored files
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    tree=$(cd "$REPO" && git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
        awk '{ s += $1 } END { print s + 0 }')
fi
count=$(find "$STAGE/wheels" -name '*.whl' | wc -l)
echo "device_wheels: $count wheels, $(mib "$total") MiB (working tree $(mib "$tree") MiB;" \
    "a device call carries at most $CARRY_LIMIT_MIB MiB)"
[ "$total" -le $((LIMIT_MIB * 1048576)) ] ||
    fail "the wheels take $(mib "$total") MiB, over the $LIMIT_MIB MiB they may take of a call's $CARRY_LIMIT_MIB MiB"
[ $((total + tree)) -le $((CARRY_LIMIT_MIB * 1048576)) ] ||
    fail "the wheels ($(mib "$total") MiB) and the working tree ($(mib "$tree") MiB) are over a call's $CARRY_LIMIT_MIB MiB"

# Replace .whl/'s wheels only now that the new set is complete and checked.
mkdir -p "$DEST"
find "$DEST" -mindepth 1 -maxdepth 1 -type f -name '*.whl' -delete  # not .whl/ itself
mv "$STAGE"/wheels/*.whl "$DEST"/
echo "device_wheels: .whl/ ready; device call: command \"bash scripts/device_check.sh\", carry [\".whl\"]"
