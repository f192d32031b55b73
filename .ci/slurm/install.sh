#!/usr/bin/env bash
# Install the packages of a real single-node SLURM cluster (Debian: slurm-wlm 22.05 + munge).
# Idempotent and fast: does nothing when every binary is already there. Needs root.
# Used by .ci/run when CI=true, and by tests/test_cluster.py on CI when the binaries are missing.
set -euo pipefail

BINARIES=(slurmctld slurmd sbatch srun squeue scontrol sinfo munged)
PACKAGES=(slurmctld slurmd slurm-client munge)

missing=()
for b in "${BINARIES[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm install: already installed ($(PATH="$PATH:/usr/sbin" slurmctld -V 2>/dev/null || echo '?'))"
    exit 0
fi
echo "slurm install: missing ${missing[*]}; installing ${PACKAGES[*]}"

if [ "$(id -u)" != 0 ]; then
    echo "slurm install: needs root (apt-get install ${PACKAGES[*]})" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm install: no apt-get on this machine; install ${PACKAGES[*]} by hand" >&2
    exit 1
fi

# Package maintainer scripts must not start the distribution's services (we start our own
# daemons with private paths): add a policy-rc.d for the duration of the install when none exists.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
timeout 300 apt-get update -q -o Acquire::Retries=3
timeout 600 apt-get install -y -q --no-install-recommends -o Acquire::Retries=3 "${PACKAGES[@]}"

for b in "${BINARIES[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || {
        echo "slurm install: $b still missing after apt-get install" >&2
        exit 1
    }
done
echo "slurm install: done ($(PATH="$PATH:/usr/sbin" slurmctld -V))"
