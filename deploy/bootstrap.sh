# Setting up a machine for the project: sourced by .ci/run and deploy/main-job.sh.
#
#   ROOT=/path/to/clone; BOOTSTRAP_TAG=ci; source deploy/bootstrap.sh
#   setup_system        # Python >= 3.11 with venv, Java and Maven (for the local Kafka)
#   setup_venv          # .venv with the project and its dev tools ('.[dev]')
#   setup_venv .        # ... or with the project only
#
# Defines VENV (default $ROOT/.venv) and PY unless already set. Messages start with
# "$BOOTSTRAP_TAG:". Nothing runs when the file is sourced.

: "${ROOT:?ROOT must name the repository before sourcing deploy/bootstrap.sh}"
BOOTSTRAP_TAG="${BOOTSTRAP_TAG:-bootstrap}"
VENV="${VENV:-$ROOT/.venv}"
PY="${PY:-$VENV/bin/python}"

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "$BOOTSTRAP_TAG: need root to run: $*" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || {
        echo "$BOOTSTRAP_TAG: missing $*, and no apt-get to install it" >&2
        return 1
    }
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        as_root apt-get update
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

setup_system() {
    if ! find_python >/dev/null; then
        apt_install python3 python3-venv
    fi
    # Debian splits venv (ensurepip) out of python3.
    if ! "$(find_python)" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
    fi
    # The local broker runs on the JVM; Maven fetches its jars once (then they are cached).
    command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
    command -v mvn >/dev/null 2>&1 || apt_install maven
    # The secure broker's CA and certificate (dossier kafka up --secure, the main job's default).
    command -v openssl >/dev/null 2>&1 || apt_install openssl
}

setup_venv() {
    local spec="${1:-.[dev]}"
    local python
    python="$(find_python)" || {
        echo "$BOOTSTRAP_TAG: no Python >= 3.11 found" >&2
        return 1
    }
    if [[ ! -x "$PY" ]] || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e "$spec"
    "$PY" --version
}
