#!/usr/bin/env bash
# The main job, the README's first command, from a fresh clone on a possibly new machine:
#
#   bash deploy/main-job.sh [dossier demo options, e.g. --seed 7 --scale 0.5]
#
# 1. Python >= 3.11, Java and Maven if missing (apt), and .venv with the project
#    (deploy/bootstrap.sh, shared with .ci/run);
# 2. `dossier demo`: the local Kafka broker (the secure one, TLS, SASL and ACLs; --plaintext for
#    a quick look), the engine on a fresh SQLite database (or a fresh
#    schema of DOSSIER_DATABASE_URL's PostgreSQL), a month of a province's dossiers, then the
#    summary and an HTML report. See `dossier demo --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BOOTSTRAP_TAG=main-job
# shellcheck source=bootstrap.sh
source "$ROOT/deploy/bootstrap.sh"

started=$SECONDS
printf '==> system packages\n'
setup_system
printf '==> virtualenv %s\n' "$VENV"
setup_venv .
printf '==> ready in %d s; dossier demo %s\n' "$((SECONDS - started))" "$*"
exec "$VENV/bin/dossier" demo "$@"
