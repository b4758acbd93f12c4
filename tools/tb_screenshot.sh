#!/usr/bin/env bash
# Screenshots of TensorBoard's Scalars and HParams tabs over a sweep, taken with headless
# Chromium (Debian: apt-get install chromium), for the README:
#
#   tools/tb_screenshot.sh "outputs/multirun/sweep=seeds__model=lenet,resnet_mini__trainer.epochs=3" docs/img
#
# writes <out>/tensorboard_scalars.png and <out>/tensorboard_hparams.png. TensorBoard serves
# the sweep directory on a free local port while Chromium renders each tab; both are stopped
# at the end.
set -euo pipefail
logdir=${1:?usage: tools/tb_screenshot.sh <sweep or run directory> <out dir>}
out=${2:-docs/img}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "tb_screenshot: no chromium; apt-get install chromium" >&2; exit 2; }
[ -d "$logdir" ] || { echo "tb_screenshot: no directory $logdir" >&2; exit 2; }
mkdir -p "$out"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m tensorboard.main --logdir "$logdir" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
board=$!
profile=$(mktemp -d)
trap 'kill "$board" 2>/dev/null; rm -rf "$profile"' EXIT
for _ in $(seq 60); do  # TensorBoard reads the event files before it answers
    curl -sf "http://127.0.0.1:$port/data/runs" | grep -q . && break
    sleep 1
done
shot() {  # tab, file: the page after 20 s of its own (virtual) time, so that its charts load
    "$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$profile" --window-size=1400,860 --virtual-time-budget=20000 \
        --screenshot="$out/$2" "http://127.0.0.1:$port/#$1" >/dev/null 2>&1
    echo "$out/$2"
}
shot scalars tensorboard_scalars.png
shot hparams tensorboard_hparams.png
