#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying --launcher slurm and for the tests.
#
#   eval "$(scripts/local_slurm.sh start)"   # start it; prints the export of SLURM_CONF to use it
#   scripts/local_slurm.sh stop              # stop what start started (by process id)
#
# Everything (configuration, munge key and socket, state, spool, logs, process ids) lives in one
# folder, $SLURM_DIR (default: .slurm in the repository), so nothing under /etc is touched and a
# cluster a machine already has is left alone. Needs Debian's (or another distribution's) slurm-wlm
# and munge packages: slurmctld, slurmd and munged on the PATH or in /usr/sbin.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"
DIR="$(realpath -m "${SLURM_DIR:-$(dirname "$0")/../.slurm}")"
CTLD_PORT="${SLURM_CTLD_PORT:-16817}"  # not SLURM's usual 6817/6818: a real cluster's daemons may hold them
SLURMD_PORT="${SLURM_SLURMD_PORT:-16818}"

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        [[ -f "$DIR/$name.pid" ]] || continue
        pid="$(cat "$DIR/$name.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$DIR/$name.pid"
    done
}

start() {
    for tool in slurmctld slurmd munged sinfo; do
        command -v "$tool" >/dev/null || die "$tool not found: install SLURM and munge (Debian: apt-get install slurm-wlm munge)"
    done
    stop  # a cluster left running from this folder is replaced, not doubled
    local user host node
    user="$(id -un)"
    host="$(hostname -s)"
    node="$(slurmd -C | head -n 1)"  # NodeName=<host> CPUs=... RealMemory=..., as slurmd sees this machine
    mkdir -p "$DIR"/{munge,state,spool,log}
    chmod 700 "$DIR/munge"  # munged refuses a key or socket folder that others may write to
    [[ -f "$DIR/munge/munge.key" ]] || head -c 1024 /dev/urandom > "$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    cat > "$DIR/slurm.conf" <<EOF
# Written by scripts/local_slurm.sh: one node, this machine, all of it in $DIR.
ClusterName=local
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups needed: processes are tracked by parent id, tasks are not bound to cores
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
EnforcePartLimits=ALL  # refuse at submission what a partition would never run, as many clusters do
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$host MaxTime=10 State=UP  # a time limit to be refused by
EOF
    munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || die "munged did not start; see $DIR/log/munged.log"
    export SLURM_CONF="$DIR/slurm.conf"
    slurmctld -f "$SLURM_CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    slurmd -f "$SLURM_CONF" || die "slurmd did not start; see $DIR/log/slurmd.log"
    for _ in $(seq 300); do  # 30 s: the node registers with the controller, then turns idle
        if [[ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" == "idle" ]]; then
            echo "export SLURM_CONF=$SLURM_CONF"
            echo "local_slurm.sh: node $host idle, partition debug; scripts/local_slurm.sh stop ends it" >&2
            return
        fi
        sleep 0.1
    done
    stop
    die "the node did not become idle within 30 s; see the logs in $DIR/log"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop (state in \$SLURM_DIR, default .slurm in the repository)" ;;
esac
