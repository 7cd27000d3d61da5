#!/usr/bin/env bash
# Stop what scripts/cluster_up.sh started (the pid files it listed), newest first; a daemon that was
# already running before it (a real cluster, a developer's own) is never touched. As root.
set -uo pipefail
STATE=/run/pipeline-cluster
[ -s "$STATE/started" ] || { echo "[cluster_down] nothing started by cluster_up.sh is running"; exit 0; }
tac "$STATE/started" | while read -r pidfile; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || continue
  echo "[cluster_down] stopping $(cat "/proc/$pid/comm" 2>/dev/null || echo "$pidfile") ($pid)"
  kill "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
done
rm -f "$STATE/started"
