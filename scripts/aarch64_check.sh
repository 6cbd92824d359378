#!/usr/bin/env bash
# The aarch64 (Raspberry Pi) check, on an x86-64 Debian/Ubuntu machine, under emulation (docs/aarch64.md).
#
#   sudo scripts/aarch64_check.sh            # or: sudo make aarch64-check
#
# Needs root (debootstrap, chroot, mounts) and Debian's qemu-user-static, debootstrap and binfmt-support
# (installed with apt-get when missing), and the internet once (a Debian mirror, PyPI). It
#   1. builds a Debian bookworm arm64 root under .aarch64/root (once; reused after), with a Python venv holding
#      requirements/pi.txt (the Pi's pins), the big wheels downloaded on the host first;
#   2. runs the ROS-free part of the suite under emulation (core, backends, export, metric, tracker, follow law,
#      a training step), on an emulated Cortex-A72 (Pi 4) and the CPU choice on a Cortex-A76 (Pi 5) too;
#   3. compares the detections of x86 and aarch64 per backend and precision (benchmarks/aarch64_parity.py) on
#      the same model and real rover frames.
# Results: .aarch64/results/ (summary.md, the JUnit XML, the parity JSON and table). The first run takes about
# an hour on an idle 2-core machine (debootstrap ~5 min, the venv ~5 min, the suite and the parity the rest);
# emulated times say nothing about a Pi's speed.
#
# Options (environment): STEPS="parity suite" (either or both), CHECKPOINT=path.pt (an SSDlite ssd_ros checkpoint for the parity; default: train one
# here, 100 iterations on 8 rover frames), FRAMES=8 (rover frames compared), SUITE_FILES and SUITE_K (pytest's
# files and -k expression), QEMU=system|backports (which qemu-aarch64 runs the root: Debian 12's 7.2 makes onnxruntime
# crash, so by default the one from bookworm-backports, 10.0, is fetched into .aarch64/qemu and registered for
# the run; the system's registration is restored on exit), MIRROR=http://deb.debian.org/debian.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${AARCH64_CACHE:-$REPO/.aarch64}
ROOT=$CACHE/root
RESULTS=$CACHE/results
MIRROR=${MIRROR:-http://deb.debian.org/debian}
FRAMES=${FRAMES:-8}
STEPS=${STEPS:-parity suite}
QEMU=${QEMU:-backports}
# The ROS-free subset that fits: whole files for the metric, tracker, follow law and CPU choice; from the
# backends/export tests those on SSDlite (SSD300 is 62 GFLOPs a frame: hours under emulation); from training
# the step, its guards and a resumed 6-iteration run.
SUITE_FILES=${SUITE_FILES:-test/test_cpu.py test/test_voc_metric.py test/test_tracking.py test/test_follow.py \
test/test_backends.py test/test_train.py}
SUITE_K=${SUITE_K:-"test_cpu or test_voc_metric or test_tracking or test_follow or (test_backends and not ssd300 \
and not trained_model and not int8_and_bf16 and not coco) or (test_train and (lr_schedule or nonfinite or rng_state \
or hard_negative or resume_gives))"}
BINFMT=/proc/sys/fs/binfmt_misc
OURS=ssd-ros-aarch64
START=$(date +%s)

say() { printf '[aarch64-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and bind mounts): sudo $0"
[ "$(uname -m)" = x86_64 ] || die "runs on an x86-64 host (it compares x86 with emulated aarch64)"

# -- 1. host packages, binfmt_misc, the emulator --------------------------------------------------
missing=()
for package in qemu-user-static debootstrap binfmt-support; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
mountpoint -q $BINFMT || mount -t binfmt_misc binfmt_misc $BINFMT
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true

MOUNTS=()
DISABLED=""
restore() {
    local status=$?
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
    [ -e $BINFMT/$OURS ] && echo -1 >$BINFMT/$OURS
    [ -n "$DISABLED" ] && echo 1 >"$DISABLED"
    say "done in $(( ($(date +%s) - START) / 60 )) min (exit $status)"
}
trap restore EXIT

if [ "$QEMU" = backports ]; then
    # Debian 12's qemu-user 7.2 runs torch and OpenVINO but onnxruntime's wheel dies with SIGSEGV under it
    # (docs/aarch64.md); bookworm-backports' 10.0 is a static binary: fetched, not installed.
    EMULATOR=$CACHE/qemu/qemu-aarch64
    if [ ! -x "$EMULATOR" ]; then
        say "fetching qemu-user from bookworm-backports into $CACHE/qemu"
        apt_dir=$CACHE/qemu/apt
        mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main" \
            >"$apt_dir/sources.list"
        apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives")
        apt-get "${apt_opts[@]}" update -qq
        (cd "$apt_dir" && apt-get "${apt_opts[@]}" download -qq qemu-user/bookworm-backports 2>/dev/null)
        dpkg-deb -x "$apt_dir"/qemu-user_*.deb "$apt_dir/x"
        cp "$apt_dir/x/usr/bin/qemu-aarch64" "$EMULATOR"
        rm -rf "$apt_dir"
    fi
    # The same magic and mask as Debian's own qemu-aarch64 entry; F: the kernel opens the emulator now, so it
    # needs no copy inside the root.
    magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    if [ "$(head -1 $BINFMT/qemu-aarch64 2>/dev/null)" = enabled ]; then
        DISABLED=$BINFMT/qemu-aarch64
        echo 0 >"$DISABLED"
    fi
    echo ":$OURS:M::$magic:$mask:$EMULATOR:FPC" >$BINFMT/register
fi
say "emulator: $([ "$QEMU" = backports ] && "$EMULATOR" --version | head -1 || qemu-aarch64-static --version | head -1)"

# -- 2. the arm64 root and its venv ---------------------------------------------------------------
if [ ! -e "$ROOT/.ssd_ros_root_ready" ]; then
    say "building a Debian bookworm arm64 root in $ROOT (debootstrap, ~5 min)"
    rm -rf "$ROOT"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,libgl1,libglib2.0-0,libgomp1 \
        bookworm "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed: $CACHE/debootstrap.log"
    touch "$ROOT/.ssd_ros_root_ready"
fi
cp /etc/resolv.conf "$ROOT/etc/"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"  # pip verifies PyPI with this bundle
mkdir -p "$ROOT/repo" "$ROOT/shared" "$ROOT/wheels" "$ROOT/results" "$ROOT/models" "$RESULTS"
bind() {  # bind <source> <target inside the root> [ro]
    mount --bind "$1" "$ROOT$2"
    MOUNTS+=("$ROOT$2")
    [ "${3:-}" = ro ] && mount -o remount,bind,ro "$ROOT$2"
    return 0
}
bind /proc /proc
bind /sys /sys
bind /dev /dev
# The tree read-only: the emulated run writes only its results (and /tmp inside the root).
bind "$REPO" /repo ro
[ -d "$REPO/../shared/data" ] && bind "$(cd "$REPO/../shared" && pwd)" /shared ro
bind "$CACHE/wheels" /wheels
bind "$RESULTS" /results
in_root() { chroot "$ROOT" env -C /repo HOME=/root PYTHONDONTWRITEBYTECODE=1 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST "$@"; }

requirements=$(sha256sum "$REPO/requirements/pi.txt" | cut -c1-16)
if [ "$(cat "$ROOT/opt/venv/.requirements" 2>/dev/null)" != "$requirements" ]; then
    say "downloading the aarch64 wheels on the host (requirements/pi.txt)"
    pip_download=(download --no-deps --only-binary=:all: --python-version 3.11 --dest "$CACHE/wheels"
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64
        --platform manylinux_2_35_aarch64 --platform any)
    # --no-deps: pip would evaluate the dependencies' markers for this x86 host (and pull CUDA packages).
    grep -Ev '^\s*(#|$)' "$REPO/requirements/pi.txt" | xargs python3 -m pip -q "${pip_download[@]}"
    say "installing them in the root's venv (pip under emulation, ~5 min)"
    [ -x "$ROOT/opt/venv/bin/python" ] || in_root python3 -m venv /opt/venv
    pytest_pin=$(grep -E '^pytest==' "$REPO/requirements/workspace.txt")
    in_root /opt/venv/bin/pip install -q --find-links /wheels -r requirements/pi.txt "$pytest_pin"
    echo "$requirements" >"$ROOT/opt/venv/.requirements"
fi

# The shared data sits beside the tree, as in a checkout: /repo/../shared is /shared inside the root.
SUMMARY=$RESULTS/summary.md
{
    echo "# aarch64 check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs); emulator: $( [ "$QEMU" = backports ] \
        && "$EMULATOR" --version | head -1 || qemu-aarch64-static --version | head -1)"
    echo "Root: $(in_root /opt/venv/bin/python -c 'import platform,torch,onnxruntime,openvino;
print(platform.machine(), "Python", platform.python_version(), "torch", torch.__version__, "onnxruntime",
onnxruntime.__version__, "openvino", openvino.__version__)' 2>&1 | tail -1)"
} >"$SUMMARY"

# -- 3. detections: x86 vs aarch64 -------------------------------------------------------------------
parity_status=0
if [[ " $STEPS " == *" parity "* ]]; then
    models=$CACHE/models
    if [ ! -e "$models/lite_int8.xml" ]; then
        mkdir -p "$models"
        if [ -n "${CHECKPOINT:-}" ] && [ ! "$CHECKPOINT" -ef "$models/lite.pt" ]; then cp "$CHECKPOINT" "$models/lite.pt"; fi
        say "preparing the model files (x86): $models"
        "$REPO/scripts/run.sh" python "$REPO/benchmarks/aarch64_parity.py" prepare --out "$models" \
            $([ -e "$models/lite.pt" ] && echo --checkpoint "$models/lite.pt")
    fi
    bind "$models" /models ro
    say "detections on x86"
    "$REPO/scripts/run.sh" python "$REPO/benchmarks/aarch64_parity.py" dump --models "$models" --frames "$FRAMES" \
        --out "$RESULTS/parity_x86.json"
    say "detections on an emulated cortex-a76 (Pi 5)"
    in_root env QEMU_CPU=cortex-a76 /opt/venv/bin/python benchmarks/aarch64_parity.py dump --models /models \
        --frames "$FRAMES" --out /results/parity_aarch64.json
    set +e
    "$REPO/scripts/run.sh" python "$REPO/benchmarks/aarch64_parity.py" compare "$RESULTS/parity_x86.json" \
        "$RESULTS/parity_aarch64.json" --markdown "$RESULTS/parity.md"
    parity_status=$?
    set -e
    { echo; echo "## Detections, x86 vs emulated aarch64 ($FRAMES rover frames)"; echo; cat "$RESULTS/parity.md"; } \
        >>"$SUMMARY"
fi

# -- 4. the ROS-free suite under emulation -------------------------------------------------------------
suite_status=0
for cpu in cortex-a72 cortex-a76; do
    [[ " $STEPS " == *" suite "* ]] || break
    if [ $cpu = cortex-a72 ]; then files=$SUITE_FILES k=$SUITE_K; else files=test/test_cpu.py k=this_cpu; fi
    say "suite on an emulated $cpu: pytest $files -k '$k'"
    begin=$(date +%s)
    set +e
    # shellcheck disable=SC2086 # the file list splits on purpose
    in_root env QEMU_CPU=$cpu /opt/venv/bin/python -m pytest -p no:cacheprovider -q -rfEs --durations=15 --continue-on-collection-errors \
        --junitxml=/results/suite_$cpu.xml $files -k "$k" 2>&1 | tee "$RESULTS/suite_$cpu.log"
    status=${PIPESTATUS[0]}
    set -e
    [ "$status" = 0 ] || suite_status=$status
    { echo; echo "## pytest on an emulated $cpu ($(( ($(date +%s) - begin) / 60 )) min, exit $status)";
      echo; echo '```'; tail -n 15 "$RESULTS/suite_$cpu.log"; echo '```'; } >>"$SUMMARY"
done

say "summary: $SUMMARY"
[ "$suite_status" = 0 ] && [ "$parity_status" = 0 ]
