#!/usr/bin/env bash
# Start a real single-node SLURM cluster for the tests: munged, slurmctld, slurmd, one partition
# "debug" with this machine as its only node and one fake GPU as GRES (gpu:fake:1).
# State, spool, pid files and logs live under $CI_SLURM_DIR (default ${TMPDIR:-/tmp}/ci-slurm);
# /etc/slurm/slurm.conf and gres.conf become symlinks into it (the executor's job step unsets
# SLURM_CONF, so the clients must find the config at the default path).
# Idempotent: when our daemons are already up and the node is idle it only says so.
# Needs root. Stop with stop.sh (by pid files). Every wait is bounded.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"

die() {
    echo "slurm start: $*" >&2
    for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log "$MUNGE_DIR"/munged.log; do
        [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (slurmd runs jobs as root here)"
for b in munged slurmctld slurmd sinfo srun scontrol; do
    command -v "$b" >/dev/null 2>&1 || die "$b not installed: run .ci/slurm/install.sh"
done

node_state() { timeout 10 sinfo -h -N -n "$NODE_NAME" -o %T 2>/dev/null | head -n1 || true; }

if pid_alive "$PID_SLURMCTLD" slurmctld && pid_alive "$PID_SLURMD" slurmd && pid_alive "$PID_MUNGED" munged; then
    state=$(node_state)
    if [ "$state" = idle ] || [ "$state" = mixed ] || [ "$state" = allocated ]; then
        echo "slurm start: already running under $CI_SLURM_DIR (node $NODE_NAME $state)"
        exit 0
    fi
fi
# Refuse to clobber a cluster that is not ours.
for f in slurm.conf gres.conf; do
    if [ -e "$SLURM_ETC/$f" ] && [ ! -L "$SLURM_ETC/$f" ]; then
        die "$SLURM_ETC/$f is a real file (a cluster configured on this machine?): not touching it"
    fi
done
for port in 6817 6818; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use (another slurmctld/slurmd?); stop it first (stop.sh uses pid files)"
    fi
done
# Leftovers of an earlier run under the same folder (crashed, half-started): stop by pid files.
"$HERE/stop.sh" --quiet || true

rm -rf "$MUNGE_DIR"   # a fresh key, socket and seed every start (stop.sh has stopped munged above)
mkdir -p "$RUN_DIR" "$LOG_DIR" "$CONF_DIR" "$CI_SLURM_DIR/state" "$CI_SLURM_DIR/spool" "$CI_SLURM_DIR/dev" "$MUNGE_DIR"
chmod 755 "$CI_SLURM_DIR"

# --- munge: own key, socket, log, pid and seed file ---
# munged runs as root here (with --force): the scratch folder may sit below a folder that only root can
# enter (pytest's tmp dirs are 0700), and every daemon of this test cluster runs as root anyway.
rm -f "$MUNGE_DIR"/munge.key
head -c 1024 /dev/urandom >"$MUNGE_DIR/munge.key"
chmod 700 "$MUNGE_DIR"
chmod 400 "$MUNGE_DIR/munge.key"
timeout 20 munged --force \
    --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" --log-file="$MUNGE_DIR/munged.log" \
    --pid-file="$PID_MUNGED" --seed-file="$MUNGE_DIR/munged.seed" \
    || die "munged did not start"
for _ in $(seq 1 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || die "munged socket $MUNGE_SOCKET did not appear"

# --- slurm.conf and gres.conf ---
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
rm -f "$CI_SLURM_DIR/dev/nvidia0"
mknod "$CI_SLURM_DIR/dev/nvidia0" c 1 3   # a character device (/dev/null's numbers): a plain file is refused
cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by .ci/slurm/start.sh: a single-node test cluster. Do not use in production.
ClusterName=ci
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$CI_SLURM_DIR/state
SlurmdSpoolDir=$CI_SLURM_DIR/spool
SlurmctldPidFile=$PID_SLURMCTLD
SlurmdPidFile=$PID_SLURMD
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName=$NODE_NAME NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE_NAME Default=NO MaxTime=INFINITE State=UP
CONF
cat >"$CONF_DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=$NODE_NAME Name=gpu Type=fake File=$CI_SLURM_DIR/dev/nvidia0
CONF
mkdir -p "$SLURM_ETC"
ln -sfn "$CONF_DIR/slurm.conf" "$SLURM_ETC/slurm.conf"
ln -sfn "$CONF_DIR/gres.conf" "$SLURM_ETC/gres.conf"

# --- daemons ---
unset SLURM_CONF
timeout 30 slurmctld -c -f "$SLURM_ETC/slurm.conf" || die "slurmctld did not start"
timeout 30 slurmd -N "$NODE_NAME" -f "$SLURM_ETC/slurm.conf" || die "slurmd did not start"

state=""
deadline=$((SECONDS + 60))   # by the clock, not by a count of tries: each sinfo may itself take up to 10 s
while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(node_state)
    [ "$state" = idle ] && break
    sleep 0.5
done
[ "$state" = idle ] || die "node $NODE_NAME is '${state:-unknown}' after 60 s, not idle"
out=$(timeout 60 srun -N1 -n1 -t 1 hostname 2>&1) || die "smoke test 'srun hostname' failed: $out"
echo "slurm start: up under $CI_SLURM_DIR (node $NODE_NAME idle, $CPUS CPUs, $MEM_MB MB, gpu:fake:1; srun -> $out)"
