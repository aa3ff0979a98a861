#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, with fake GPUs and accounting, for the tests and for
# anyone who wants to try the Slurm path of this pipeline on one machine: two partitions on the
# one node, `cpu` (the default) and `gpu`; typed fake GPUs (gpu:fake, so `--gpus=N`,
# `--gpus=fake:N` and `--gres=gpu:fake:N` all schedule); the node feature `fake` (for
# `--constraint`); an account `rethink` and a QoS `rethink` that root may use.
#
#   scripts/local-slurm.sh start    install Slurm/munge/MariaDB from Debian packages if missing,
#                                   configure, start the daemons, wait for an idle node
#   scripts/local-slurm.sh stop     stop the daemons this script started (by their PID files)
#                                   and remove the config files it wrote
#   scripts/local-slurm.sh status   sinfo and the daemons' PIDs
#
# Needs root and apt-get (Debian/Ubuntu) and no systemd. Safe to run twice: a running daemon
# is left alone. It refuses to touch an /etc/slurm/slurm.conf it did not write (a real
# cluster's), and writes Slurm's config there because Snakemake's Slurm plugin removes
# SLURM_* variables (SLURM_CONF included) from job environments.
# Environment: LOCAL_SLURM_DIR (state, logs, PID files; default /var/tmp/rethink-slurm),
# LOCAL_SLURM_GPUS (fake GPUs, default 4).
set -euo pipefail

STATE=${LOCAL_SLURM_DIR:-/var/tmp/rethink-slurm}
GPUS=${LOCAL_SLURM_GPUS:-4}
MARKER="# written by rethink scripts/local-slurm.sh"
CONF=/etc/slurm

log() { echo "local-slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }
pid_of() { cat "$1" 2>/dev/null; }
alive() { local pid; pid=$(pid_of "$1") && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${limit}s (logs in $STATE)"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_config() {
  if [ -f $CONF/slurm.conf ] && ! grep -qF "$MARKER" $CONF/slurm.conf; then
    die "$CONF/slurm.conf exists and was not written by this script; refusing to replace it"
  fi
  mkdir -p "$STATE"/{state,spool,dev} $CONF
  local node cpus mem
  # slurmd -C is what slurmd checks the node against: the machine's CPUs, also under `taskset`
  # (nproc would count only the CPUs this shell may use, and the node would be too small)
  node=$(slurmd -C)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<< "$node")
  mem=$(( $(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$node") * 9 / 10 ))
  for i in $(seq 0 $((GPUS - 1))); do  # gres needs character devices; /dev/null's numbers do
    [ -c "$STATE/dev/nvidia$i" ] || mknod "$STATE/dev/nvidia$i" c 1 3
  done
  cat > $CONF/slurm.conf <<EOF
$MARKER
ClusterName=rethink
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
KillWait=30
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/gpu:fake
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:fake:$GPUS Features=fake State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
  printf '%s\nNodeName=localhost Name=gpu Type=fake File=%s\n' "$MARKER" "$STATE/dev/nvidia[0-$((GPUS - 1))]" > $CONF/gres.conf
  cat > $CONF/slurmdbd.conf <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$STATE/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 $CONF/slurmdbd.conf
}

start() {
  [ "$(id -u)" = 0 ] || die "needs root"
  install_packages
  write_config
  mkdir -p /run/munge /run/mysqld && chown munge: /run/munge && chown mysql: /run/mysqld
  if ! alive /run/munge/munged.pid; then
    runuser -u munge -- munged
    echo "munge" > "$STATE/started-munge"
  fi
  if ! alive "$STATE/mariadb/mariadb.pid"; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    mkdir -p "$STATE/mariadb" && chown mysql: "$STATE/mariadb"  # mariadbd writes as user mysql
    rm -f /run/mysqld/mysqld.sock  # a stale socket (e.g. from the package's own start) blocks it
    setsid mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$STATE/mariadb/mariadb.pid" \
      --log-error="$STATE/mariadb/mariadb.log" >/dev/null 2>&1 < /dev/null &
    wait_for 60 MariaDB mariadb -e "select 1"
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  fi
  alive "$STATE/slurmdbd.pid" || slurmdbd
  wait_for 60 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
  alive "$STATE/slurmctld.pid" || slurmctld
  wait_for 60 slurmctld scontrol ping
  alive "$STATE/slurmd.pid" || slurmd -N localhost
  wait_for 60 "an idle node" bash -c "sinfo -h -o %T | grep -qx idle"
  wait_for 60 "the accounting cluster" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx rethink"
  add_association
  log "up: partitions cpu (default) and gpu, $GPUS fake GPUs, accounting through slurmdbd (state in $STATE)"
}

# An account and a QoS for root, as a site gives its users (sacctmgr refuses what exists).
add_association() {
  sacctmgr -n -P list qos format=name | grep -qx rethink || sacctmgr -i add qos rethink >/dev/null
  sacctmgr -n -P list account format=account | grep -qx rethink || sacctmgr -i add account rethink >/dev/null
  sacctmgr -n -P list assoc user=root format=account | grep -qx rethink ||
    sacctmgr -i add user root account=rethink >/dev/null
  sacctmgr -n -P list assoc user=root format=qos | tr ',' '\n' | grep -qx rethink ||
    sacctmgr -i modify user root set qos+=rethink >/dev/null
}

stop() {
  for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/slurmdbd.pid" "$STATE/mariadb/mariadb.pid"; do
    local pid
    pid=$(pid_of "$pidfile") || continue
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  if [ -f "$STATE/started-munge" ]; then
    kill "$(pid_of /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "$STATE/started-munge"
  fi
  # The config goes with the daemons (start writes it again): with a slurm.conf whose controller
  # is gone, every Slurm command waits out MessageTimeout, and so does every Snakemake start (the
  # Slurm executor plugin runs `scontrol show config` when it loads, 9 s); with none, they fail at once.
  for file in $CONF/slurm.conf $CONF/slurmdbd.conf $CONF/gres.conf; do
    if [ -f "$file" ] && grep -qF "$MARKER" "$file"; then rm -f "$file"; fi
  done
  log "stopped"
}

status() {
  for pidfile in /run/munge/munged.pid "$STATE"/mariadb/mariadb.pid "$STATE"/{slurmdbd,slurmctld,slurmd}.pid; do
    printf '%-45s %s\n' "$pidfile" "$(alive "$pidfile" && pid_of "$pidfile" || echo down)"
  done
  sinfo 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
