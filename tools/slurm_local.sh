#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying launch.slurm without a cluster.
#
#   tools/slurm_local.sh start    install slurm (Debian/Ubuntu, root) if missing, write slurm.conf, start the daemons
#   tools/slurm_local.sh stop     stop the daemons started by `start` (by their pid files)
#   tools/slurm_local.sh status   print daemon pids and `sinfo`; exit 0 only if the cluster answers
#   tools/slurm_local.sh env      print the `export SLURM_CONF=...` line clients need
#
# Everything lives in $SONOTEXT_SLURM_DIR (default /tmp/sonotext-slurm): slurm.conf, state, spool, logs, pids.
# System config (/etc/slurm) is never touched; clients find the cluster through SLURM_CONF, which
# `start` prints and tests/launch pick up from the default folder.
# The node is `localhost` (127.0.0.1) with this machine's CPU count (at least 2) and no accounting
# daemon (sacct is unavailable; squeue/scontrol answer for jobs finished in the last MinJobAge seconds).
set -euo pipefail

DIR=${SONOTEXT_SLURM_DIR:-/tmp/sonotext-slurm}
CTLD_PORT=${SONOTEXT_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
CONF="$DIR/slurm.conf"

die() {
    echo "slurm_local: $*" >&2
    exit 1
}

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "slurm is not installed and installing it needs root (apt-get install slurmctld slurmd slurm-client)"
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is unavailable on this machine"
    echo "slurm_local: installing slurmctld slurmd slurm-client with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >/dev/null || die "apt-get update failed (no package index reachable?)"
    timeout 600 apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client >/dev/null ||
        die "apt-get install slurmctld slurmd slurm-client failed"
}

write_conf() {
    local user cpus mem_mb
    user=$(id -un)
    cpus=$(nproc)
    [ "$cpus" -ge 2 ] || cpus=2 # config_overrides below lets slurmd accept the configured count
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<EOF
# Written by tools/slurm_local.sh: a single-node test cluster.
ClusterName=sonotext-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SwitchType=switch/none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Time between SIGTERM and SIGKILL when a job is requeued or cancelled: the trainer saves in this window.
KillWait=60
MinJobAge=600
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

pid_alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

answers() {
    SLURM_CONF="$CONF" timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

start() {
    install_slurm
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && answers; then
        echo "slurm_local: already running ($CONF)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    stop >/dev/null 2>&1 || true
    write_conf
    # -i: ignore saved state whose format does not match; each start is a clean cluster.
    SLURM_CONF="$CONF" slurmctld -f "$CONF" -i
    SLURM_CONF="$CONF" slurmd -f "$CONF" -N localhost
    for _ in $(seq 1 60); do
        if answers; then
            echo "slurm_local: cluster up: $(SLURM_CONF="$CONF" sinfo -h -o '%P %D %c %T')"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        # a node that registered before the controller was ready may sit in "down"/"unknown": resume it
        SLURM_CONF="$CONF" scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    echo "slurm_local: cluster did not come up; last log lines:" >&2
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    stop >&2 || true
    exit 1
}

stop_one() {
    local name=$1 pidfile="$DIR/$1.pid"
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    local pid
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || {
            echo "slurm_local: stopped $name (pid $pid)"
            rm -f "$pidfile"
            return 0
        }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    echo "slurm_local: killed $name (pid $pid) after 10 s"
    rm -f "$pidfile"
}

stop() {
    stop_one slurmd
    stop_one slurmctld
}

status() {
    local rc=0
    for name in slurmctld slurmd; do
        if pid_alive "$DIR/$name.pid"; then
            echo "$name: running (pid $(cat "$DIR/$name.pid"))"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    if answers; then
        SLURM_CONF="$CONF" sinfo
    else
        echo "sinfo: no answer from the cluster at $CONF"
        rc=1
    fi
    return $rc
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) echo "export SLURM_CONF=$CONF" ;;
*)
    echo "usage: $0 start|stop|status|env   (state in \$SONOTEXT_SLURM_DIR, default /tmp/sonotext-slurm)" >&2
    exit 2
    ;;
esac
