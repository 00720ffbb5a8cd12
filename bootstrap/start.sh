#!/usr/bin/env bash
# Garage P2P: install this machine as a rig, in one command (as root).
#
#   sudo bash bootstrap/start.sh [options]
#
# Checks the machine (Linux: Debian, Ubuntu or Fedora; Python >= 3.11 with venv; Podman with
# runc, newuidmap and catatonit; systemd; the NVIDIA driver), then installs, each step only if it is not
# already done (a second run changes nothing and says "already done" per step):
#
#   user      a system user and group `garage` (nologin)
#   subids    65536 subordinate uids and gids for garage (/etc/subuid, /etc/subgid): its rootless
#             Podman runs the model container as a user of its own
#   venv      PREFIX (a venv) with the package: `pip install SOURCE`
#   links     /usr/local/bin/garage and /usr/local/bin/garage-peer → PREFIX/bin
#   home      HOME, mode 0700, owned by garage
#   identity  `garage init` as garage: HOME/identity.key, the peer id
#   bench     `garage bench` when the peer has a model backend configured (see bench_step)
#   limits    whether rootless Podman can enforce the container's limits here (cgroup v2 with
#             delegation); if not, one line naming the fix (the runtime refuses to start it)
#   images    with runtime_model in HOME/config.toml: its image, from root's Podman storage into
#             garage's (`garage runtime copy-image`; build it first: garage runtime build-image)
#   unit      /etc/systemd/system/garage-peer.service from bootstrap/garage-peer.service
#   service   `systemctl enable --now garage-peer`, then waits for /health on the endpoint
#
# Options:
#   --skip-gpu           skip the NVIDIA checks and the GPU benchmark (also GARAGE_SKIP_GPU=1)
#   --install-deps       install missing system packages with apt-get/dnf (default: stop and
#                        print the command to run)
#   --source SPEC        what to `pip install`: a directory or any pip requirement
#                        (default: the checkout this script is in)
#   --prefix DIR         the venv (default /opt/garage)
#   --home DIR           the peer's home (default /var/lib/garage)
#   --no-start           install and enable the unit but do not start the daemon now
#   --uninstall          remove what this script added (the record is PREFIX/.install-manifest),
#                        with garage's containers, images and subordinate ids;
#                        HOME/identity.key is kept (the peer id is precious)
#   --purge              with --uninstall: remove the identity too; the machine is as before
#   -h, --help           this text
#
# Environment: GARAGE_SKIP_GPU=1 (as --skip-gpu), GARAGE_START_TIMEOUT (seconds to wait for
# /health, default 90), PYTHON_FOR_GARAGE (the Python to build the venv with; default the
# newest python3.x >= 3.11 on PATH).
# pip reads its usual configuration (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, pip.conf),
# so an offline install from a wheelhouse works. Exit codes: 0 done, 1 a step failed,
# 2 bad usage, 3 a missing dependency (the message names the command that installs it).
set -euo pipefail
umask 022

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
UNIT_NAME=garage-peer.service
UNIT_PATH=/etc/systemd/system/$UNIT_NAME
BIN_DIR=/usr/local/bin
USER_NAME=garage
HEALTH_TIMEOUT="${GARAGE_START_TIMEOUT:-90}"

PREFIX=/opt/garage
GHOME=/var/lib/garage
SOURCE=""
SKIP_GPU="${GARAGE_SKIP_GPU:-0}"
INSTALL_DEPS=0
NO_START=0
UNINSTALL=0
PURGE=0

say() { printf 'garage: %s\n' "$*"; }
step() { printf 'garage: %-9s %s\n' "$1" "$2"; }
warn() { printf 'garage: warning: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

die() { printf 'garage: error: %s\n' "$1" >&2; exit "${2:-1}"; }
# A command failed in a way not handled below: still one line, naming where to look (errtrace:
# also inside functions; printed once, by the main shell, not again by a failing $(...) in it).
set -o errtrace
trap 'rc=$?; [[ $BASH_SUBSHELL -ne 0 ]] || printf "garage: error: line %s: \`%s\` failed (exit %s); rerun with bash -x %s for details\n" "$LINENO" "$BASH_COMMAND" "$rc" "$0" >&2' ERR
ORIG_ARGS="$*"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --skip-gpu) SKIP_GPU=1 ;;
        --install-deps) INSTALL_DEPS=1 ;;
        --source) [[ $# -ge 2 ]] || die "--source needs a directory or a pip requirement" 2; SOURCE="$2"; shift ;;
        --source=*) SOURCE="${1#*=}" ;;
        --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory" 2; PREFIX="$2"; shift ;;
        --prefix=*) PREFIX="${1#*=}" ;;
        --home) [[ $# -ge 2 ]] || die "--home needs a directory" 2; GHOME="$2"; shift ;;
        --home=*) GHOME="${1#*=}" ;;
        --no-start) NO_START=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" 2 ;;
    esac
    shift
done
case "${SKIP_GPU,,}" in 1 | true | yes | on) SKIP_GPU=1 ;; *) SKIP_GPU=0 ;; esac
if [[ $PURGE -eq 1 && $UNINSTALL -eq 0 ]]; then die "--purge goes with --uninstall" 2; fi
[[ "$PREFIX" == /* && "$GHOME" == /* ]] || die "--prefix and --home must be absolute paths" 2
PREFIX="${PREFIX%/}"
GHOME="${GHOME%/}"
case "$PREFIX" in / | /usr | /usr/local | /opt | /etc | /var | /var/lib | /home | /root) die "--prefix $PREFIX is a system directory: pick a directory of its own, e.g. /opt/garage" 2 ;; esac
case "$GHOME" in / | /usr | /opt | /etc | /var | /var/lib | /home | /root | /tmp) die "--home $GHOME is a system directory: pick a directory of its own, e.g. /var/lib/garage" 2 ;; esac
MANIFEST="$PREFIX/.install-manifest"
KEPT_MANIFEST="$GHOME/.install-manifest"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive

# --- the manifest: one "KIND<TAB>VALUE" line per thing this script added --------------------
# Kept in PREFIX (root-owned), never in HOME while the garage user can write there: uninstall
# runs as root and deletes what the manifest names.
manifest_has() { [[ -f "$MANIFEST" ]] && grep -qxF -- "$1	$2" "$MANIFEST"; }
manifest_add() { manifest_has "$1" "$2" || printf '%s\t%s\n' "$1" "$2" >>"$MANIFEST"; }
manifest_get() { if [[ -f "$MANIFEST" ]]; then awk -F'\t' -v k="$1" '$1 == k { v = $2 } END { print v }' "$MANIFEST"; fi; }
manifest_set() {  # the one KIND line, with this VALUE (the file is rewritten only on a change)
    [[ "$(manifest_get "$1")" != "$2" ]] || return 0
    local rest
    rest="$(awk -F'\t' -v k="$1" '$1 != k' "$MANIFEST")"
    { [[ -z "$rest" ]] || printf '%s\n' "$rest"; printf '%s\t%s\n' "$1" "$2"; } >"$MANIFEST"
}

# --- checks --------------------------------------------------------------------------------
OS_FAMILY=unknown OS_NAME=unknown
MISSING_PKGS=()
MISSING_MSGS=()

detect_os() {
    [[ "$(uname -s)" == Linux ]] || die "this is $(uname -s): Garage rigs run on Linux (Debian, Ubuntu or Fedora)" 3
    local id="" like=""
    if [[ -r /etc/os-release ]]; then
        # shellcheck disable=SC1091
        id="$(. /etc/os-release && printf '%s' "${ID:-}")"
        # shellcheck disable=SC1091
        like="$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")"
        # shellcheck disable=SC1091
        OS_NAME="$(. /etc/os-release && printf '%s' "${PRETTY_NAME:-$id}")"
    fi
    case " $id $like " in
        *" ubuntu "*) OS_FAMILY=ubuntu ;;
        *" debian "*) OS_FAMILY=debian ;;
        *" fedora "* | *" rhel "*) OS_FAMILY=fedora ;;
        *) OS_FAMILY=unknown ;;
    esac
}

install_cmd() {  # the command that installs packages "$@" on this OS
    case "$OS_FAMILY" in
        debian | ubuntu) printf 'apt-get install -y %s' "$*" ;;
        fedora) printf 'dnf install -y %s' "$*" ;;
        *) printf 'install %s with your package manager' "$*" ;;
    esac
}

need() {  # need PACKAGES... -- MESSAGE: a missing dependency
    local pkgs=()
    while [[ $1 != -- ]]; do pkgs+=("$1"); shift; done
    shift
    MISSING_PKGS+=("${pkgs[@]}")
    MISSING_MSGS+=("$*")
}

PYTHON=""
check_python() {
    local candidate version
    for candidate in ${PYTHON_FOR_GARAGE:-} python3.13 python3.12 python3.11 python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON="$(command -v "$candidate")"
            break
        fi
    done
    if [[ -z "$PYTHON" ]]; then
        version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
        case "$OS_FAMILY" in
            ubuntu) need python3.11 python3.11-venv -- "Python >= 3.11 is needed (python3 is $version)" ;;
            fedora) need python3 -- "Python >= 3.11 is needed (python3 is $version)" ;;
            *) need python3 python3-venv -- "Python >= 3.11 is needed (python3 is $version)" ;;
        esac
        return
    fi
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        local base
        base="$(basename "$PYTHON")"
        [[ "$base" == python3 ]] || [[ "$OS_FAMILY" == fedora ]] || { need "$base-venv" -- "$PYTHON has no venv module"; return; }
        need python3-venv -- "$PYTHON has no venv module"
    fi
}

check_podman() {
    # The service runs model servers in its user's rootless Podman with runc (crun fails on hybrid
    # cgroups); rootless Podman maps the user's subordinate ids with the setuid newuidmap/newgidmap.
    command -v podman >/dev/null 2>&1 || { need podman runc -- "Podman is not installed (the peer runs its model server in rootless Podman)"; return; }
    command -v runc >/dev/null 2>&1 || need runc -- "runc is not installed (Garage's Podman settings use runc)"
    # The container's PID 1 (--init): Debian's podman only recommends it.
    [[ -x /usr/libexec/podman/catatonit ]] || command -v catatonit >/dev/null 2>&1 || need catatonit -- "catatonit is missing (the model container's init)"
    if ! command -v newuidmap >/dev/null 2>&1 || ! command -v newgidmap >/dev/null 2>&1; then
        case "$OS_FAMILY" in
            fedora) need shadow-utils -- "newuidmap is missing (rootless Podman needs it)" ;;
            *) need uidmap -- "newuidmap is missing (rootless Podman needs it)" ;;
        esac
    fi
}

check_systemd() {
    command -v systemctl >/dev/null 2>&1 || need systemd -- "systemctl is missing (the daemon runs as a systemd service)"
    if [[ $NO_START -eq 0 ]] && [[ ! -d /run/systemd/system ]]; then
        die "systemd is not running on this machine (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)): boot with systemd, or pass --no-start and run garage-peer yourself" 3
    fi
}

check_tools() {
    local tool
    for tool in useradd userdel groupdel usermod runuser; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            case "$tool" in
                runuser) need util-linux -- "runuser is missing" ;;
                *) need passwd -- "$tool is missing" ;;
            esac
        fi
    done
}

check_gpu() {
    if [[ "$SKIP_GPU" == 1 ]]; then
        step gpu "skipped (--skip-gpu)"
        return
    fi
    local hint
    case "$OS_FAMILY" in
        ubuntu) hint="ubuntu-drivers install" ;;
        fedora) hint="dnf install -y akmod-nvidia (from RPM Fusion)" ;;
        *) hint="apt-get install -y nvidia-driver (Debian non-free)" ;;
    esac
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        step gpu "no NVIDIA driver (nvidia-smi not found): this rig will serve on the CPU only; for a GPU install the driver ($hint) and rerun, or pass --skip-gpu"
        return
    fi
    local gpus
    if ! gpus="$(timeout 20 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)" || [[ -z "$gpus" ]]; then
        warn "nvidia-smi is installed but does not list a GPU (driver not loaded? reboot after installing it): serving on the CPU until it works"
        return
    fi
    step gpu "$(printf '%s' "$gpus" | paste -sd';' -)"
    # The runtime passes GPUs to Podman as CDI devices (nvidia.com/gpu=...).
    if [[ ! -e /etc/cdi/nvidia.yaml && ! -e /var/run/cdi/nvidia.yaml ]]; then
        warn "no CDI spec for the GPUs: install nvidia-container-toolkit, then nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
    fi
}

run_checks() {
    [[ $(id -u) -eq 0 ]] || die "run as root: sudo bash $0 $ORIG_ARGS" 3
    detect_os
    case "$OS_FAMILY" in
        unknown) warn "$OS_NAME is not a distribution this script knows (Debian, Ubuntu, Fedora): continuing; install missing packages yourself" ;;
        *) step os "$OS_NAME" ;;
    esac
    check_python
    check_podman
    check_systemd
    check_tools
    if [[ ${#MISSING_PKGS[@]} -gt 0 ]]; then
        if [[ $INSTALL_DEPS -eq 1 && "$OS_FAMILY" != unknown ]]; then
            local pkgs
            pkgs="$(printf '%s\n' "${MISSING_PKGS[@]}" | sort -u | tr '\n' ' ')"
            step deps "installing ${pkgs% }"
            # shellcheck disable=SC2086 # word splitting of the package list is wanted
            case "$OS_FAMILY" in
                debian | ubuntu) { apt-get update -qq && apt-get install -y -qq $pkgs; } >/dev/null 2>&1 || die "apt-get install $pkgs failed: run it by hand to see why" ;;
                fedora) dnf install -y -q $pkgs >/dev/null 2>&1 || die "dnf install $pkgs failed: run it by hand to see why" ;;
            esac
            for pkg in $pkgs; do manifest_later+=("$pkg"); done
            MISSING_PKGS=()
            MISSING_MSGS=()
            PYTHON=""
            check_python; check_podman; check_systemd; check_tools
            [[ ${#MISSING_PKGS[@]} -eq 0 ]] || die "still missing after installing packages: ${MISSING_MSGS[0]}" 3
        else
            local what pkgs
            what="$(printf '%s; ' "${MISSING_MSGS[@]}")"
            pkgs="$(printf '%s\n' "${MISSING_PKGS[@]}" | awk '!seen[$0]++' | tr '\n' ' ')"
            die "${what%; }: run \`$(install_cmd "${pkgs% }")\` (or rerun this script with --install-deps)" 3
        fi
    fi
    step python "$PYTHON ($("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])'))"
    step podman "$(podman --version 2>/dev/null || echo podman)"
    check_gpu
}
manifest_later=()

# --- install steps -------------------------------------------------------------------------
peer_run() {  # run a command as the garage user with the peer's home
    (cd / && runuser -u "$USER_NAME" -- env HOME="$GHOME" GARAGE_HOME="$GHOME" PYTHONDONTWRITEBYTECODE=1 "$@")
}

podman_as_user() {  # the garage user's rootless Podman, with the unit's XDG_RUNTIME_DIR (/run/garage)
    [[ -d "/run/$USER_NAME" ]] || install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "/run/$USER_NAME"
    (cd / && runuser -u "$USER_NAME" -- env HOME="$GHOME" XDG_RUNTIME_DIR="/run/$USER_NAME" podman "$@")
}

mkdir_recorded() {  # create DIR and its missing parents, recording each
    local dir="$1" missing=()
    while [[ ! -e "$dir" ]]; do missing=("$dir" "${missing[@]}"); dir="$(dirname "$dir")"; done
    for dir in "${missing[@]}"; do
        mkdir -m 0755 "$dir"
        CREATED_DIRS+=("$dir")
    done
}
CREATED_DIRS=()

prefix_step() {
    if [[ -f "$MANIFEST" ]]; then return; fi
    if [[ -e "$PREFIX" ]] && [[ -n "$(ls -A "$PREFIX" 2>/dev/null)" ]]; then
        die "$PREFIX exists and was not made by this script: remove it or choose another --prefix"
    fi
    local existed=1
    [[ -e "$PREFIX" ]] || existed=0
    mkdir_recorded "$PREFIX"
    chmod 0755 "$PREFIX"
    : >"$MANIFEST"
    chmod 0600 "$MANIFEST"
    manifest_add home-path "$GHOME"
    [[ $existed -eq 1 ]] || manifest_add dir "$PREFIX"
    local dir
    for dir in "${CREATED_DIRS[@]}"; do [[ "$dir" == "$PREFIX" ]] || manifest_add dir "$dir"; done
    CREATED_DIRS=()
    # What a previous `--uninstall` (without --purge) kept in HOME: the home and identity were ours.
    local kind value
    if [[ -f "$KEPT_MANIFEST" && "$(stat -c %u "$KEPT_MANIFEST")" == 0 && "$(stat -c %u "$GHOME")" == 0 ]]; then
        while IFS=$'\t' read -r kind value; do
            case "$kind" in home | identity | dir) manifest_add "$kind" "$value" ;; esac
        done <"$KEPT_MANIFEST"
        rm -f "$KEPT_MANIFEST"
    fi
}

user_step() {
    if getent passwd "$USER_NAME" >/dev/null; then
        if manifest_has user "$USER_NAME"; then step user "already done ($USER_NAME)"; else step user "already done ($USER_NAME existed before; uninstall keeps it)"; fi
        return
    fi
    local group_existed=0 nologin
    getent group "$USER_NAME" >/dev/null && group_existed=1
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    if [[ $group_existed -eq 1 ]]; then
        useradd --system --home-dir "$GHOME" --no-create-home --shell "$nologin" --gid "$USER_NAME" "$USER_NAME"
    else
        useradd --system --home-dir "$GHOME" --no-create-home --shell "$nologin" --user-group "$USER_NAME"
        manifest_add group "$USER_NAME"
    fi
    manifest_add user "$USER_NAME"
    step user "created system user $USER_NAME"
}

# Subordinate ids: rootless Podman maps the container's users (the server runs as nobody) onto
# them. A free block of 65536 above every range in /etc/subuid and /etc/subgid, recorded so that
# uninstall removes exactly it.
SUBID_COUNT=65536
subids_step() {
    local have
    have="$(awk -F: -v u="$USER_NAME" '$1 == u { print $2 ":" $3; exit }' /etc/subuid 2>/dev/null || true)"
    if [[ -n "$have" ]] && grep -q "^$USER_NAME:" /etc/subgid 2>/dev/null; then
        step subids "already done ($USER_NAME:$have)"
        return
    fi
    local first
    first="$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: -v c="$SUBID_COUNT" 'BEGIN { m = 100000 } $3 > 0 { e = $2 + $3; if (e > m) m = e } END { print int((m + c - 1) / c) * c }')"
    usermod --add-subuids "$first-$((first + SUBID_COUNT - 1))" --add-subgids "$first-$((first + SUBID_COUNT - 1))" "$USER_NAME" \
        || die "usermod --add-subuids failed for $USER_NAME: add a line $USER_NAME:$first:$SUBID_COUNT to /etc/subuid and /etc/subgid"
    manifest_add subids "$USER_NAME:$first:$SUBID_COUNT"
    step subids "added $USER_NAME:$first:$SUBID_COUNT to /etc/subuid and /etc/subgid"
}

home_step() {
    if [[ ! -e "$GHOME" ]]; then
        mkdir_recorded "$(dirname "$GHOME")"
        local dir
        for dir in "${CREATED_DIRS[@]}"; do manifest_add dir "$dir"; done
        CREATED_DIRS=()
        install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$GHOME"
        manifest_add home "$GHOME"
        step home "created $GHOME (0700, $USER_NAME)"
        return
    fi
    [[ -d "$GHOME" ]] || die "$GHOME exists and is not a directory: remove it or choose another --home"
    local fixed=()
    if [[ "$(stat -c %U:%G "$GHOME")" != "$USER_NAME:$USER_NAME" ]]; then
        chown "$USER_NAME:$USER_NAME" "$GHOME"
        fixed+=("owner")
    fi
    if [[ -e "$GHOME/identity.key" && "$(stat -c %U "$GHOME/identity.key")" != "$USER_NAME" ]]; then
        chown "$USER_NAME:$USER_NAME" "$GHOME/identity.key"
        fixed+=("identity.key owner")
    fi
    if [[ "$(stat -c %a "$GHOME")" != 700 ]]; then
        chmod 0700 "$GHOME"
        fixed+=("mode 0700")
    fi
    if [[ ${#fixed[@]} -gt 0 ]]; then step home "fixed ${fixed[*]} of $GHOME"; else step home "already done ($GHOME)"; fi
}

source_stamp() {  # what identifies the source: the spec, and for a directory its content
    if [[ -d "$SOURCE" ]]; then
        printf 'dir:%s:' "$SOURCE"
        (cd "$SOURCE" && find . \( -name .git -o -name .venv -o -name build -o -name dist -o -name '*.egg-info' -o -name __pycache__ \
            -o -name .pytest_cache -o -name .hypothesis -o -name .ruff_cache -o -name node_modules \) -prune -o -type f -print0 \
            | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1)
    else
        printf 'spec:%s\n' "$SOURCE"
    fi
}

PACKAGE_CHANGED=0
venv_step() {
    local stamp tmp src
    stamp="$(source_stamp)"
    if [[ -x "$PREFIX/bin/python" && -x "$PREFIX/bin/garage-peer" && "$(manifest_get source-stamp)" == "$stamp" ]]; then
        step venv "already done ($PREFIX, $("$PREFIX/bin/python" -m pip show garage-p2p 2>/dev/null | awk '/^Version:/ {print "garage-p2p " $2}'))"
        return
    fi
    if [[ ! -x "$PREFIX/bin/python" ]]; then
        "$PYTHON" -m venv "$PREFIX" >/dev/null || die "$PYTHON -m venv $PREFIX failed: install the venv module ($(install_cmd python3-venv))"
        manifest_add venv "$PREFIX"
    fi
    src="$SOURCE"
    tmp=""
    if [[ -d "$SOURCE" ]]; then
        # Build from a copy: pip's in-tree build would write build/ and *.egg-info into the checkout.
        tmp="$(mktemp -d /tmp/garage-source.XXXXXX)"
        tar -C "$SOURCE" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
            --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./.hypothesis --exclude=node_modules -cf - . | tar -C "$tmp" -xf -
        src="$tmp"
    fi
    step venv "pip install $SOURCE into $PREFIX…"
    local log rc=0
    log="$(mktemp /tmp/garage-pip.XXXXXX)"
    env -u PYTHONDONTWRITEBYTECODE "$PREFIX/bin/python" -m pip install --no-cache-dir --upgrade --quiet "$src" >"$log" 2>&1 || rc=$?
    [[ -z "$tmp" ]] || rm -rf -- "$tmp"
    if [[ $rc -ne 0 ]]; then
        local last
        last="$(grep -E '^(ERROR|error):' "$log" | tail -n1 || true)"
        rm -f -- "$log"
        die "pip install $SOURCE failed (${last:-exit $rc}): check that PyPI (or your PIP_INDEX_URL) is reachable and the source is a Garage P2P package"
    fi
    rm -f -- "$log"
    [[ -x "$PREFIX/bin/garage" && -x "$PREFIX/bin/garage-peer" ]] || die "$SOURCE did not install the garage and garage-peer commands: is it a Garage P2P package?"
    manifest_set source-stamp "$stamp"
    PACKAGE_CHANGED=1
    step venv "installed $("$PREFIX/bin/python" -m pip show garage-p2p 2>/dev/null | awk '/^Version:/ {print "garage-p2p " $2}')"
}

links_step() {
    local name link target done_list=() made=()
    if [[ ! -d "$BIN_DIR" ]]; then
        mkdir_recorded "$BIN_DIR"
        local dir
        for dir in "${CREATED_DIRS[@]}"; do manifest_add dir "$dir"; done
        CREATED_DIRS=()
    fi
    for name in garage garage-peer; do
        link="$BIN_DIR/$name"
        target="$PREFIX/bin/$name"
        if [[ -L "$link" && "$(readlink "$link")" == "$target" ]]; then
            manifest_has link "$link" || manifest_add link "$link"
            done_list+=("$link")
            continue
        fi
        if [[ -e "$link" || -L "$link" ]] && ! manifest_has link "$link"; then
            die "$link exists and was not installed by this script: remove it (or move it) and rerun"
        fi
        ln -sfn "$target" "$link"
        manifest_add link "$link"
        made+=("$link")
    done
    if [[ ${#made[@]} -eq 0 ]]; then step links "already done (${done_list[*]})"; else step links "linked ${made[*]} → $PREFIX/bin"; fi
}

PEER_ID=""
identity_step() {
    local key="$GHOME/identity.key" out
    local existed=0
    [[ -e "$key" ]] && existed=1
    out="$(peer_run "$PREFIX/bin/garage" init 2>/dev/null)" || die "garage init failed for $GHOME: run \`runuser -u $USER_NAME -- env GARAGE_HOME=$GHOME $PREFIX/bin/garage init\` to see why"
    PEER_ID="$(printf '%s\n' "$out" | tail -n1)"
    manifest_set peer-id "$PEER_ID"
    if [[ $existed -eq 1 ]]; then
        step identity "already done (peer id $PEER_ID)"
    else
        manifest_add identity "$key"
        step identity "created $key (peer id $PEER_ID)"
    fi
}

# The benchmark. `garage bench` measures the peer's model backends (OpenAI servers: tokens/s
# alone and under load, time to first token) and saves HOME/bench.json for the peer's ads.
# It benchmarks servers, not the GPU itself, and a fresh rig has no server yet: with no backend
# configured (HOME/config.toml or GARAGE_BACKENDS) there is nothing to measure, so the step is
# skipped with what to run later. With a backend configured it runs, GPU or not: a CPU server
# is measured just the same, so --skip-gpu does not stop it. (A model the daemon runs itself in
# Podman, --model-dir, only exists once the daemon runs: bench it then.) A failed benchmark is a
# warning: the peer serves without figures, its ads just carry none.
bench_step() {
    local backends
    if [[ -s "$GHOME/bench.json" ]]; then
        step bench "already done ($GHOME/bench.json; \`garage bench\` measures again)"
        return
    fi
    backends="$(peer_run "$PREFIX/bin/python" -c 'from garage_p2p.settings import load_settings; print(" ".join(load_settings({}).backends))' 2>/dev/null || true)"
    if [[ -z "$backends" ]]; then
        if [[ "$SKIP_GPU" == 1 ]]; then
            step bench "skipped: --skip-gpu, and no model backend is configured yet (garage bench measures a model server)"
        else
            step bench "skipped: no model backend configured yet; once the peer serves a model, run: sudo -u $USER_NAME GARAGE_HOME=$GHOME garage bench"
        fi
        return
    fi
    step bench "measuring ${backends}…"
    local err
    if err="$(peer_run "$PREFIX/bin/garage" bench 2>&1 >/dev/null)"; then
        step bench "saved $GHOME/bench.json"
    else
        warn "benchmark failed ($(printf '%s' "$err" | tail -n1)): the peer serves without figures; run \`garage bench\` when the backend is up"
    fi
}

runtime_image() {  # the image of runtime_model in HOME/config.toml, empty when there is none
    peer_run "$PREFIX/bin/python" -c 'from garage_p2p.settings import load_settings
s = load_settings({})
print(s.runtime_image if s.runtime_model else "")' 2>/dev/null || true
}

# Rootless Podman enforces the container's memory, pids and CPU limits only on cgroup v2 with
# those controllers delegated (the unit's Delegate=). Where it cannot, the runtime refuses to
# start the container: said here in one line with the fix, a warning when a model is configured.
limits_step() {
    local line
    if line="$("$PREFIX/bin/garage" runtime check-limits --for-unit 2>&1)"; then
        step limits "$line"
    elif [[ -n "$(runtime_image)" ]]; then
        warn "the model container will not start (rootless limits): $line"
    else
        step limits "$line (matters once runtime_model is set)"
    fi
}

images_step() {
    local image out
    image="$(runtime_image)"
    if [[ -z "$image" ]]; then
        step images "skipped: no runtime_model in $GHOME/config.toml (the service runs no model container)"
        return
    fi
    if ! out="$("$PREFIX/bin/garage" runtime copy-image "$image" --to-user "$USER_NAME" 2>&1)"; then
        warn "$(printf '%s' "$out" | tail -n1): then run start.sh again (or garage runtime build-image --for-user $USER_NAME)"
        return
    fi
    manifest_add image "$image"
    case "$out" in *"already in"*) step images "already done ($image)" ;; *) step images "$out" ;; esac
}

render_unit() {
    local template="$SCRIPT_DIR/garage-peer.service" state=""
    [[ -f "$template" ]] || die "$template is missing: run start.sh from a Garage P2P checkout"
    # systemd's StateDirectory= only names directories under /var/lib.
    if [[ "$GHOME" =~ ^/var/lib/([^/]+)$ ]]; then state="${BASH_REMATCH[1]}"; fi
    printf '# Installed by bootstrap/start.sh (remove with start.sh --uninstall).\n'
    sed -e '/^# systemd unit for a rig/d' -e '/^# then `systemctl daemon-reload/d' "$template" | while IFS= read -r line; do
        case "$line" in
            ExecStart=*) printf 'ExecStart=%s/bin/garage-peer\n' "$PREFIX" ;;
            Environment=GARAGE_HOME=*) printf 'Environment=GARAGE_HOME=%s\n' "$GHOME" ;;
            ReadWritePaths=*) printf 'ReadWritePaths=%s\n' "$GHOME" ;;
            StateDirectory=*) [[ -z "$state" ]] || printf 'StateDirectory=%s\n' "$state" ;;
            StateDirectoryMode=*) [[ -z "$state" ]] || printf '%s\n' "$line" ;;
            ProtectHome=*) case "$GHOME" in /home/* | /root/*) printf 'ProtectHome=read-only\n' ;; *) printf '%s\n' "$line" ;; esac ;;
            *) printf '%s\n' "$line" ;;
        esac
    done
}

UNIT_CHANGED=0
unit_step() {
    local want
    want="$(render_unit)"
    if [[ -f "$UNIT_PATH" ]] && [[ "$(cat "$UNIT_PATH")" == "$want" ]]; then
        manifest_add unit "$UNIT_PATH"
        step unit "already done ($UNIT_PATH)"
        return
    fi
    if [[ -e "$UNIT_PATH" ]] && ! manifest_has unit "$UNIT_PATH"; then
        die "$UNIT_PATH exists and was not installed by this script: remove it (systemctl disable --now $UNIT_NAME) and rerun"
    fi
    printf '%s\n' "$want" >"$UNIT_PATH.tmp"
    chmod 0644 "$UNIT_PATH.tmp"
    mv -f "$UNIT_PATH.tmp" "$UNIT_PATH"
    manifest_add unit "$UNIT_PATH"
    UNIT_CHANGED=1
    if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
    step unit "installed $UNIT_PATH"
}

health_url() {
    local api="127.0.0.1:8000"
    api="$(peer_run "$PREFIX/bin/python" -c 'from garage_p2p.settings import load_settings; print(load_settings({}).api)' 2>/dev/null || echo "$api")"
    case "$api" in 0.0.0.0:*) api="127.0.0.1:${api##*:}" ;; "[::]:"*) api="[::1]:${api##*:}" ;; esac
    printf 'http://%s' "$api"
}

wait_health() {  # wait until /health answers with our peer id
    local url="$1" deadline=$((SECONDS + HEALTH_TIMEOUT)) answer restarts
    restarts="$(systemctl show -p NRestarts --value "$UNIT_NAME" 2>/dev/null || echo 0)"
    [[ "$restarts" =~ ^[0-9]+$ ]] || restarts=0
    while ((SECONDS < deadline)); do
        answer="$("$PREFIX/bin/python" - "$url/health" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    print(json.load(r).get("peer_id", ""))
EOF
)"
        if [[ "$answer" == "$PEER_ID" ]]; then return 0; fi
        if [[ -n "$answer" ]]; then die "another peer ($answer) answers on $url: stop it or set api in $GHOME/config.toml"; fi
        # A daemon that exits is restarted by systemd (Restart=on-failure): one exit is enough to know.
        if systemctl is-failed --quiet "$UNIT_NAME" || [[ "$(systemctl show -p NRestarts --value "$UNIT_NAME" 2>/dev/null || echo 0)" -gt "$restarts" ]]; then
            local last
            last="$(journalctl -u "$UNIT_NAME" -t garage-peer -o cat -n 1 --no-pager 2>/dev/null || true)"
            die "garage-peer exits at start${last:+ (${last})}: see journalctl -u $UNIT_NAME -n 50"
        fi
        sleep 1
    done
    die "garage-peer did not answer on $url/health within ${HEALTH_TIMEOUT} s: see journalctl -u $UNIT_NAME -n 50"
}

service_step() {
    local systemd_up=0
    [[ -d /run/systemd/system ]] && systemd_up=1
    if systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
        manifest_add enabled "$UNIT_NAME"
        step enable "already done"
    else
        systemctl enable --quiet "$UNIT_NAME" 2>/dev/null || die "systemctl enable $UNIT_NAME failed: see systemctl status $UNIT_NAME"
        manifest_add enabled "$UNIT_NAME"
        step enable "enabled $UNIT_NAME (starts at boot)"
    fi
    if [[ $NO_START -eq 1 ]]; then
        step start "skipped (--no-start): start it with systemctl start garage-peer"
        return
    fi
    [[ $systemd_up -eq 1 ]] || die "systemd is not running: start the daemon with systemctl start garage-peer once it is"
    if systemctl is-active --quiet "$UNIT_NAME"; then
        if [[ $UNIT_CHANGED -eq 1 || $PACKAGE_CHANGED -eq 1 ]]; then
            systemctl restart "$UNIT_NAME" || die "systemctl restart $UNIT_NAME failed: see journalctl -u $UNIT_NAME -n 50"
            step start "restarted (new package or unit)"
        else
            step start "already done (active)"
        fi
    else
        systemctl start "$UNIT_NAME" 2>/dev/null || die "systemctl start $UNIT_NAME failed: see journalctl -u $UNIT_NAME -n 50"
        step start "started $UNIT_NAME"
    fi
    local url
    url="$(health_url)"
    wait_health "$url"
    step health "$url/health answers"
}

install_main() {
    if [[ -z "$SOURCE" ]]; then
        [[ -f "$SCRIPT_DIR/../pyproject.toml" ]] || die "no Garage P2P checkout around $SCRIPT_DIR: pass --source (a directory or pip requirement)" 2
        SOURCE="$(cd -- "$SCRIPT_DIR/.." && pwd)"
    elif [[ -d "$SOURCE" ]]; then
        SOURCE="$(cd -- "$SOURCE" && pwd)"
    elif [[ -f "$SOURCE" && "$SOURCE" != /* ]]; then
        SOURCE="$PWD/$SOURCE"
    fi
    run_checks
    prefix_step
    local pkg
    for pkg in "${manifest_later[@]}"; do manifest_add package "$pkg"; done
    local recorded_home
    recorded_home="$(manifest_get home-path)"
    [[ "$recorded_home" == "$GHOME" ]] || die "$PREFIX was installed with --home $recorded_home: pass --home $recorded_home (or --uninstall first)" 2
    user_step
    subids_step
    home_step
    venv_step
    links_step
    identity_step
    bench_step
    limits_step
    images_step
    unit_step
    service_step
    local url running=""
    url="$(health_url)"
    [[ $NO_START -eq 0 ]] || running=" (once started: systemctl start garage-peer)"
    cat <<EOF

Garage P2P is installed.
  peer id   $PEER_ID
  endpoint  $url/v1$running   (OpenAI-compatible; any client, api_key unused on loopback)
  identity  $GHOME/identity.key  (back it up: it is the peer id)
Next:
  garage status --home $GHOME        this peer: addresses, reachability, connections
  garage doctor --home $GHOME        what is wrong and how to fix it
  journalctl -u garage-peer -f       the daemon's log
  serve a model: add backends or runtime_model to $GHOME/config.toml, then systemctl restart garage-peer
EOF
}

# --- uninstall -----------------------------------------------------------------------------
uninstall_main() {
    [[ $(id -u) -eq 0 ]] || die "run as root: sudo bash $0 --uninstall" 3
    # Installed with another --prefix? The unit this script wrote names it.
    if [[ ! -f "$MANIFEST" && -f "$UNIT_PATH" ]] && grep -q '^# Installed by bootstrap/start.sh' "$UNIT_PATH"; then
        local other
        other="$(sed -n 's|^ExecStart=\(.*\)/bin/garage-peer$|\1|p' "$UNIT_PATH" | head -n1)"
        if [[ -n "$other" && -f "$other/.install-manifest" ]]; then
            PREFIX="$other"
            MANIFEST="$PREFIX/.install-manifest"
            say "found the install in $PREFIX (from $UNIT_PATH)"
        fi
    fi
    if [[ ! -f "$MANIFEST" ]]; then
        if [[ -f "$KEPT_MANIFEST" && "$(stat -c %u "$KEPT_MANIFEST")" == 0 ]]; then
            if [[ $PURGE -eq 1 ]]; then
                purge_kept
                return
            fi
            say "already uninstalled; the identity is kept in $GHOME/identity.key (--uninstall --purge deletes it)"
            return
        fi
        say "nothing to uninstall: no $MANIFEST (installed with another --prefix?)"
        return
    fi
    local home kind value copy
    copy="$(mktemp /tmp/garage-manifest.XXXXXX)"
    cp -- "$MANIFEST" "$copy"
    MANIFEST="$copy"
    home="$(manifest_get home-path)"
    GHOME="${home:-$GHOME}"
    KEPT_MANIFEST="$GHOME/.install-manifest"
    local peer_id
    peer_id="$(manifest_get peer-id)"

    if manifest_has enabled "$UNIT_NAME" || manifest_has unit "$UNIT_PATH"; then
        if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
            systemctl disable --now --quiet "$UNIT_NAME" 2>/dev/null || true
        elif command -v systemctl >/dev/null; then
            systemctl disable --quiet "$UNIT_NAME" 2>/dev/null || true
        fi
        step service "stopped and disabled $UNIT_NAME"
    fi
    if manifest_has unit "$UNIT_PATH"; then
        rm -f -- "$UNIT_PATH"
        [[ ! -d /run/systemd/system ]] || { systemctl daemon-reload; systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true; }
        step unit "removed $UNIT_PATH"
    fi
    while IFS=$'\t' read -r kind value; do
        [[ "$kind" == link ]] || continue
        if [[ -L "$value" && "$(readlink "$value")" == "$PREFIX/bin/"* ]]; then rm -f -- "$value"; step links "removed $value"; fi
    done <"$MANIFEST"

    # garage's rootless Podman: its containers and images (the storage lives in the home).
    if getent passwd "$USER_NAME" >/dev/null && command -v podman >/dev/null; then
        if manifest_has user "$USER_NAME" && [[ -d "$GHOME/.local/share/containers" ]]; then
            podman_as_user system reset --force >/dev/null 2>&1 || warn "podman system reset as $USER_NAME failed: its storage is removed with $GHOME"
            step images "removed $USER_NAME's Podman containers and images"
        else
            while IFS=$'\t' read -r kind value; do
                [[ "$kind" == image ]] || continue
                podman_as_user rmi --force "$value" >/dev/null 2>&1 || true
                step images "removed $value from $USER_NAME's Podman storage"
            done <"$MANIFEST"
        fi
    fi
    rm -rf -- "/run/$USER_NAME"

    # The home: everything but the identity (and, with --purge, all of it if this script made it).
    if [[ -d "$GHOME" ]]; then
        if [[ $PURGE -eq 1 ]]; then
            if manifest_has home "$GHOME"; then
                rm -rf -- "$GHOME"
                step home "removed $GHOME with the identity (purge)"
            else
                find "$GHOME" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
                step home "emptied $GHOME (it existed before the install; kept)"
            fi
        else
            find "$GHOME" -mindepth 1 -maxdepth 1 ! -name identity.key -exec rm -rf -- {} +
        fi
    fi

    while IFS=$'\t' read -r kind value; do
        [[ "$kind" == subids ]] || continue
        local first count
        IFS=: read -r _ first count <<<"$value"
        if getent passwd "$USER_NAME" >/dev/null; then
            usermod --del-subuids "$first-$((first + count - 1))" --del-subgids "$first-$((first + count - 1))" "$USER_NAME" 2>/dev/null || true
        fi
        step subids "removed $value from /etc/subuid and /etc/subgid"
    done <"$MANIFEST"

    # Processes of the user are gone with the unit; remove the user and group if ours.
    if manifest_has user "$USER_NAME" && getent passwd "$USER_NAME" >/dev/null; then
        userdel "$USER_NAME" 2>/dev/null || die "userdel $USER_NAME failed (a process still runs as $USER_NAME?): stop it and rerun --uninstall"
        step user "removed system user $USER_NAME"
    fi
    if manifest_has group "$USER_NAME" && getent group "$USER_NAME" >/dev/null; then
        groupdel "$USER_NAME" 2>/dev/null || true
    fi

    # Kept identity: owned by root now that the user is gone, with a root-owned record of it.
    local kept=()
    if [[ $PURGE -eq 0 && -e "$GHOME/identity.key" ]]; then
        chown root:root "$GHOME" "$GHOME/identity.key"
        chmod 0700 "$GHOME"
        chmod 0600 "$GHOME/identity.key"
        # (and the directories made for the home, which stay while it does)
        awk -F'\t' -v home="$GHOME" '$1 == "home" || $1 == "identity" || ($1 == "dir" && index(home, $2 "/") == 1)' "$MANIFEST" >"$KEPT_MANIFEST"
        chmod 0600 "$KEPT_MANIFEST"
        kept+=("$GHOME/identity.key")
    fi

    # The venv and the directories the script made (deepest first; only if empty).
    if manifest_has dir "$PREFIX"; then
        rm -rf -- "$PREFIX"
        step venv "removed $PREFIX"
    elif [[ -d "$PREFIX" ]]; then  # it existed (empty) before the install: empty it again
        find "$PREFIX" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
        step venv "removed the venv in $PREFIX (the directory existed before; kept)"
    fi
    local dir
    while IFS= read -r dir; do
        [[ -n "$dir" && "$dir" != "$PREFIX" && -d "$dir" ]] || continue
        if [[ ${#kept[@]} -gt 0 && "$GHOME" == "$dir"/* ]]; then continue; fi
        rmdir -- "$dir" 2>/dev/null || true
    done < <(awk -F'\t' '$1 == "dir" { print length($2) "\t" $2 }' "$MANIFEST" | sort -rn | cut -f2-)
    while IFS=$'\t' read -r kind value; do
        if [[ "$kind" == package ]]; then warn "left installed: system package $value (added by --install-deps; remove it with your package manager if unused)"; fi
    done <"$MANIFEST"
    rm -f -- "$copy"

    if [[ ${#kept[@]} -gt 0 ]]; then
        say "uninstalled. Kept the identity: $GHOME/identity.key${peer_id:+ (peer id $peer_id)}"
        say "back it up: install -m 600 $GHOME/identity.key /root/garage-identity.key — a reinstall with --home $GHOME reuses it; --uninstall --purge deletes it"
    else
        say "uninstalled; nothing of Garage P2P is left"
    fi
}

purge_kept() {  # after `--uninstall`, `--uninstall --purge`: the kept home and identity
    local kind value dirs=()
    while IFS=$'\t' read -r kind value; do
        case "$kind" in dir) dirs+=("$value") ;; esac
    done <"$KEPT_MANIFEST"
    if grep -qxF -- "home	$GHOME" "$KEPT_MANIFEST"; then
        rm -rf -- "$GHOME"
    else
        rm -f -- "$GHOME/identity.key" "$KEPT_MANIFEST"
    fi
    local dir
    while IFS= read -r dir; do
        [[ -z "$dir" ]] || rmdir -- "$dir" 2>/dev/null || true
    done < <(printf '%s\n' "${dirs[@]}" | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)
    step identity "removed $GHOME/identity.key (purge)"
    say "uninstalled; nothing of Garage P2P is left"
}

if [[ $UNINSTALL -eq 1 ]]; then
    uninstall_main
else
    install_main
fi
