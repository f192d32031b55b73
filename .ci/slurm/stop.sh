#!/usr/bin/env bash
# Stop the test cluster started by start.sh: cancel its jobs, then stop slurmd, slurmctld and munged
# by their pid files (never by process name), and remove the /etc/slurm symlinks into $CI_SLURM_DIR.
# Every wait is bounded. Safe to run when nothing is running. --quiet: say nothing when nothing ran.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
QUIET=0
[ "${1:-}" = --quiet ] && QUIET=1
say() { [ "$QUIET" = 1 ] || echo "slurm stop: $*"; }

# stop_pid FILE NAME: TERM the process in FILE if it is NAME, wait up to 15 s for it to exit, then KILL.
stop_pid() {
    local file=$1 name=$2 pid
    pid=$(pid_of "$file")
    if ! proc_alive "$pid" "$name"; then
        rm -f "$file"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        proc_alive "$pid" "$name" || break
        sleep 0.1
    done
    if proc_alive "$pid" "$name"; then
        say "$name ($pid) ignored TERM for 15 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$file"
    say "stopped $name ($pid)"
}

if pid_alive "$PID_SLURMCTLD" slurmctld; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        deadline=$((SECONDS + 15))   # by the clock: each squeue may itself take up to 10 s
        while [ "$SECONDS" -lt "$deadline" ]; do
            [ -z "$(timeout 10 squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi
stop_pid "$PID_SLURMD" slurmd
stop_pid "$PID_SLURMCTLD" slurmctld
stop_pid "$PID_MUNGED" munged
for f in slurm.conf gres.conf; do
    if [ -L "$SLURM_ETC/$f" ] && [ "$(readlink "$SLURM_ETC/$f")" = "$CONF_DIR/$f" ]; then
        rm -f "$SLURM_ETC/$f"
    fi
done
exit 0
