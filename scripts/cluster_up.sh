#!/usr/bin/env bash
# A local one-node SLURM cluster for trying the cluster path on a workstation, and for CI:
# munged, slurmctld, slurmd and (for `sacct`, which submitit reads to see a job fail) slurmdbd on
# MariaDB, each started as a plain daemon (no systemd, no cgroups). Debian/Ubuntu, as root.
# Idempotent: what already runs is left alone and only checked; what this script starts is listed
# in $STATE so that scripts/cluster_down.sh stops exactly that and nothing else.
#
#   sudo bash scripts/cluster_up.sh            # then: sinfo; make sweep ... hydra/launcher=slurm_cpu
#   CLUSTER_CPUS=2 CLUSTER_MEM_MB=8000 CLUSTER_PARTITION=debug sudo -E bash scripts/cluster_up.sh
#   sudo bash scripts/cluster_down.sh
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "cluster_up: run as root (it installs Debian packages and starts daemons)" >&2; exit 2; }

PART=${CLUSTER_PARTITION:-debug}
HOST=$(hostname -s)
STATE=/run/pipeline-cluster
mkdir -p "$STATE" /run/slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd
say() { echo "[cluster_up] $*"; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
mine() { grep -qxF "$1" "$STATE/started" 2>/dev/null || echo "$1" >> "$STATE/started"; }
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; "$@"; }

# slurmd looks itself up by host name, and multi-task jobs use it as the rendezvous address
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts

need=""
for p in munge slurm-client slurmctld slurmd slurmdbd mariadb-server; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
if [ -n "$need" ]; then
  say "apt-get install$need (about 40 s)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# munge: the key (normally made by the package), then the daemon
install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 755 /run/munge
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key --force 2>/dev/null \
  || head -c 1024 /dev/urandom > /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
munge_ok() { munge -n | unmunge; }
if ! munge_ok >/dev/null 2>&1; then say "starting munged"; su -s /bin/sh munge -c /usr/sbin/munged; mine /run/munge/munged.pid; fi
wait_for 50 munge_ok >/dev/null

# accounting database and slurmdbd
install -d -o mysql -g mysql -m 755 /run/mysqld
[ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
if ! mysqladmin ping >/dev/null 2>&1; then
  say "starting mariadbd (loopback only)"
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
    >> /var/log/slurm/mariadbd.log 2>&1 < /dev/null &
  mine /run/mysqld/mysqld.pid
fi
wait_for 120 mysqladmin ping
mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
umask 077
cat > /etc/slurm/slurmdbd.conf.new <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
EOF
umask 022
cmp -s /etc/slurm/slurmdbd.conf.new /etc/slurm/slurmdbd.conf 2>/dev/null || mv /etc/slurm/slurmdbd.conf.new /etc/slurm/slurmdbd.conf
rm -f /etc/slurm/slurmdbd.conf.new
if ! running /run/slurm/slurmdbd.pid; then say "starting slurmdbd"; /usr/sbin/slurmdbd; mine /run/slurm/slurmdbd.pid; fi
dbd_port() { (exec 3<>/dev/tcp/127.0.0.1/6819); }
wait_for 60 dbd_port

# slurm.conf for this node: sizes from the machine (memory under what slurmd measures, or it drains)
CPUS=${CLUSTER_CPUS:-$(nproc)}
MEM=${CLUSTER_MEM_MB:-$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 8 / 10 ))}
cat > /etc/slurm/slurm.conf.new <<EOF
# scripts/cluster_up.sh: one node, no cgroups
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=30
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
EnforcePartLimits=ALL
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PART Nodes=$HOST Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000
EOF
if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf 2>/dev/null; then
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
  say "wrote /etc/slurm/slurm.conf ($HOST: $CPUS CPUs, $MEM MB, partition $PART)"
  for pid in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do   # running daemons reread it on restart
    running "$pid" && kill "$(cat "$pid")" && wait_for 40 bash -c "! kill -0 $(cat "$pid") 2>/dev/null"
  done
fi
rm -f /etc/slurm/slurm.conf.new
if ! running /run/slurm/slurmctld.pid; then say "starting slurmctld"; /usr/sbin/slurmctld; mine /run/slurm/slurmctld.pid; fi
ctld_up() { scontrol ping | grep -q UP; }
wait_for 60 ctld_up
if ! running /run/slurm/slurmd.pid; then say "starting slurmd"; /usr/sbin/slurmd; mine /run/slurm/slurmd.pid; fi

node_ready() { sinfo -h -N -n "$HOST" -o %T | grep -Eq '^(idle|mixed|allocated|completing)'; }
for i in $(seq 120); do
  node_ready && break
  [ $((i % 10)) = 5 ] && scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
  sleep 0.5
done
node_ready || { sinfo -R >&2; tail -5 /var/log/slurm/slurmd.log >&2; echo "cluster_up: node $HOST is not ready" >&2; exit 1; }
say "ready: $(timeout 120 srun -p "$PART" -N1 -n1 -t 1 hostname) in partition $PART; stop with scripts/cluster_down.sh"
