#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, with job accounting, for trying
# `python train.py -m hydra/launcher=slurm ...` on a laptop and for the SLURM tests.
#
#   sudo scripts/slurm_local.sh start    install (apt-get) if needed, write configs, start daemons
#   sudo scripts/slurm_local.sh status   daemons and node state; exit 0 only if jobs can run
#   sudo scripts/slurm_local.sh stop     stop the daemons this script started
#
# Debian/Ubuntu, as root; no systemd or cgroups needed. Accounting is real: slurmdbd stores jobs
# in a private MariaDB server (127.0.0.1:$METAFT_SLURM_DB_PORT), so `sacct` knows every job and
# submitit learns when SLURM killed one (time limit, scancel, out of memory) instead of waiting
# for a result forever. `start` is idempotent: running daemons are kept, not started twice.
#
# Exit codes: 0 ok; 1 error; 3 SLURM cannot be installed here (not root, no apt-get, or the
# install failed); 4 /etc/slurm holds another cluster's config (not overwritten).
set -euo pipefail

STATE=${METAFT_SLURM_DIR:-/var/lib/metaft-slurm}   # spool, logs, database, pid files
DB_PORT=${METAFT_SLURM_DB_PORT:-6833}
ETC=/etc/slurm
MARK="# Written by metaft scripts/slurm_local.sh; rewritten on every start."
CLUSTER=metaft
NODE=$(hostname -s)
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server-core mariadb-client-core)
NEEDED=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mariadbd mariadb-install-db my_print_defaults)

say() { echo "slurm_local: $*"; }
die() { local code=$1; shift; echo "slurm_local: $*" >&2; exit "$code"; }

# --- processes: a daemon is "ours and running" when its pid file names a live process of that name
pid_of() {  # NAME PIDFILE -> prints the pid if that process is alive
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 1
    [[ -n "$pid" && -r /proc/$pid/comm && "$(cat /proc/"$pid"/comm)" == "$1"* ]] || return 1
    echo "$pid"
}
running() { pid_of "$1" "$2" >/dev/null; }

wait_for() {  # SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    say "$what"
}

stop_pids() {  # NAME:PIDFILE...: SIGTERM to all at once, SIGKILL to any left after 15 s
    local item pid pids=() names=()
    for item in "$@"; do
        pid=$(pid_of "${item%%:*}" "${item#*:}") || { rm -f "${item#*:}"; continue; }
        kill "$pid" 2>/dev/null || true
        pids+=("$pid"); names+=("${item%%:*} ($pid)")
    done
    ((${#pids[@]})) || return 0
    for _ in $(seq 75); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.2; done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for item in "$@"; do rm -f "${item#*:}"; done
    say "stopped ${names[*]}"
}

# --- install
install_packages() {
    local missing=()
    for c in "${NEEDED[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die 3 "missing ${missing[*]}; run as root to install them with apt-get"
    command -v apt-get >/dev/null || die 3 "missing ${missing[*]} and no apt-get to install them"
    say "installing ${PACKAGES[*]} (apt-get, about 20 s)"
    export DEBIAN_FRONTEND=noninteractive
    # `--no-install-recommends`: the slurm-wlm metapackage would drag in 40+ packages.
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$STATE/log/apt.log" 2>&1; then
        apt-get update -q >>"$STATE/log/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE/log/apt.log" 2>&1 ||
            die 3 "apt-get install failed; see $STATE/log/apt.log"
    fi
}

# --- configuration
ours_or_absent() { [[ ! -e "$1" ]] || head -n 1 "$1" | grep -qF "$MARK"; }

write_configs() {
    for f in "$ETC/slurm.conf" "$ETC/slurmdbd.conf" "$ETC/gres.conf"; do
        ours_or_absent "$f" || die 4 "$f exists and was not written by this script; not overwriting it (move it away to use the local cluster)"
    done
    mkdir -p "$ETC"
    local hw cpus mem
    hw=$(slurmd -C | head -n 1)                       # NodeName=... CPUs=... RealMemory=...
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    hw=${hw/NodeName=* CPUs=/CPUs=}                   # keep the hardware, name the node ourselves
    local gres="" devs gpus
    shopt -s nullglob; devs=(/dev/nvidia[0-9]*); shopt -u nullglob
    gpus=${#devs[@]}
    if ((gpus > 0)); then
        gres="Gres=gpu:$gpus"
        printf '%s\nName=gpu File=/dev/nvidia[0-%d]\n' "$MARK" $((gpus - 1)) >"$ETC/gres.conf"
    fi
    cat >"$ETC/slurm.conf" <<EOF
$MARK
ClusterName=$CLUSTER
# Addresses, not names: the host name need not resolve (containers, laptops off the network).
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
# Accounting through slurmdbd: sacct (and with it submitit) sees every job's final state.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that gives no --mem takes the whole node and jobs run one at a time.
DefMemPerCPU=$((mem / cpus))
# Seconds between SIGTERM and SIGKILL when a job is cancelled or over its time limit.
KillWait=5
ReturnToService=2
${gres:+GresTypes=gpu}
NodeName=$NODE NodeAddr=127.0.0.1 $hw $gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    [[ -s "$STATE/dbpass" ]] || (umask 077; head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/dbpass")
    (
        umask 077  # slurmdbd refuses a config that others can read (it holds the DB password)
        cat >"$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/dbpass")
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$ETC/slurmdbd.conf"
}

# --- daemons
start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi  # e.g. the system's munged
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged  # as its own user: munged refuses to run as root
    touch "$STATE/run/munged.ours"
    wait_for 10 "munged up" bash -c 'munge -n </dev/null | unmunge' || die 1 "munged did not start; see /var/log/munge/munged.log"
}

start_mariadb() {
    local pidfile=$STATE/run/mariadbd.pid
    running mariadbd "$pidfile" && return 0
    if [[ ! -d "$STATE/db/mysql" ]]; then
        say "creating the accounting database in $STATE/db (once, about 7 s)"
        mariadb-install-db --no-defaults --user=root --datadir="$STATE/db" --skip-test-db \
            --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 ||
            die 1 "mariadb-install-db failed; see $STATE/log/mariadb-install.log"
    fi
    # Runs at every start, so the DB user always matches the password in slurmdbd.conf.
    local pass
    pass=$(cat "$STATE/dbpass")
    (umask 077; cat >"$STATE/run/db-init.sql" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
    )
    # mariadbd does not daemonise itself: detach it from this shell (setsid, no inherited fds).
    setsid mariadbd --no-defaults --user=root --datadir="$STATE/db" --pid-file="$pidfile" \
        --socket="$STATE/run/mariadbd.sock" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --skip-name-resolve --init-file="$STATE/run/db-init.sql" --innodb-buffer-pool-size=64M \
        --innodb-flush-log-at-trx-commit=2 --log-error="$STATE/log/mariadbd.log" \
        </dev/null >/dev/null 2>&1 &
    wait_for 30 "mariadbd up on 127.0.0.1:$DB_PORT" bash -c "echo >/dev/tcp/127.0.0.1/$DB_PORT" ||
        die 1 "mariadbd did not start; see $STATE/log/mariadbd.log"
}

start_slurm() {
    if ! running slurmdbd "$STATE/run/slurmdbd.pid"; then
        slurmdbd
        wait_for 30 "slurmdbd up" sacctmgr -n list cluster || die 1 "slurmdbd did not start; see $STATE/log/slurmdbd.log"
    fi
    # The controller registers with slurmdbd at start; the cluster must exist in the database.
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    if running slurmctld "$STATE/run/slurmctld.pid"; then
        scontrol reconfigure  # pick up a rewritten slurm.conf without losing jobs
    else
        slurmctld
    fi
    running slurmd "$STATE/run/slurmd.pid" || slurmd -N "$NODE"
    wait_for 30 "controller up" scontrol ping || die 1 "slurmctld did not start; see $STATE/log/slurmctld.log"
    # A node left DOWN by an earlier stop comes back on registration (ReturnToService=2).
    wait_for 30 "node $NODE ready" node_ready || die 1 "node $NODE is not ready: $(sinfo -h -N -o '%T %E'); see $STATE/log/slurmd.log"
}

node_ready() { sinfo -h -n "$NODE" -o %T | grep -qE '^(idle|mixed|allocated)'; }

cmd_start() {
    [[ $(id -u) == 0 ]] || die 3 "start needs root (it installs packages, writes $ETC and runs the daemons): sudo $0 start"
    mkdir -p "$STATE"/{ctld,slurmd,log,run}
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurm
    say "ready: $(sinfo -h -o '%P %D node(s) %C (alloc/idle/other/total CPUs) %T') — try: sbatch --wrap hostname; sacct"
}

cmd_stop() {
    # Cancel what is still queued or running: a job outliving its slurmd would be orphaned.
    if running slurmctld "$STATE/run/slurmctld.pid" && [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
        squeue -h -o %i | xargs -r scancel 2>/dev/null || true
        wait_for 20 "jobs cancelled" bash -c '[[ -z "$(squeue -h -o %i)" ]]' || say "some jobs did not end; stopping anyway"
    fi
    # In this order, so each daemon can hand its last records to the next one down.
    stop_pids "slurmd:$STATE/run/slurmd.pid" "slurmctld:$STATE/run/slurmctld.pid"
    stop_pids "slurmdbd:$STATE/run/slurmdbd.pid"
    stop_pids "mariadbd:$STATE/run/mariadbd.pid"
    # Only a munged this script started; the system's own stays.
    if [[ -e "$STATE/run/munged.ours" ]]; then stop_pids munged:/run/munge/munged.pid; rm -f "$STATE/run/munged.ours"; fi
}

cmd_status() {
    local ok=0
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        if [[ $d == munged ]]; then
            if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munged: running"; else echo "munged: stopped"; ok=1; fi
        elif pid=$(pid_of $d "$STATE/run/$d.pid"); then echo "$d: running ($pid)"
        else echo "$d: stopped"; ok=1; fi
    done
    if ((ok == 0)); then sinfo -N -o '%N %T %C %m' || ok=1; node_ready || ok=1; fi
    return $ok
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die 1 "usage: $0 start|stop|status" ;;
esac
