# Sourced by start.sh and stop.sh: where the single-node test cluster keeps its state.
# CI_SLURM_DIR overrides the scratch folder (default: ${TMPDIR:-/tmp}/ci-slurm).
CI_SLURM_DIR="${CI_SLURM_DIR:-${TMPDIR:-/tmp}/ci-slurm}"
export PATH="$PATH:/usr/sbin:/sbin"
SLURM_ETC=/etc/slurm              # where sbatch/srun and the job-step plugin look (see docs/cluster.md)
MUNGE_DIR="$CI_SLURM_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
RUN_DIR="$CI_SLURM_DIR/run"       # pid files
LOG_DIR="$CI_SLURM_DIR/log"
CONF_DIR="$CI_SLURM_DIR/etc"
PID_SLURMD="$RUN_DIR/slurmd.pid"
PID_SLURMCTLD="$RUN_DIR/slurmctld.pid"
PID_MUNGED="$MUNGE_DIR/munged.pid"
NODE_NAME="$(hostname -s)"

# proc_alive PID NAME: PID is a live (not zombie) process whose command name is NAME, so a pid reused by
# another program is never signalled.
proc_alive() {
    local pid=$1 name=$2 state
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ]
}

# pid_of FILE: the pid written in FILE (empty when there is none).
pid_of() { [ -s "$1" ] && tr -dc '0-9' <"$1" 2>/dev/null; true; }

# pid_alive FILE NAME: the pid in FILE is a live process called NAME.
pid_alive() { proc_alive "$(pid_of "$1")" "$2"; }
