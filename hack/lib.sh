# Process helpers shared by hack/cluster.sh and hack/real-node.sh (sourced, not run).

# recorded_pid RUN_DIR COMPONENT -> the PID in RUN_DIR/COMPONENT.pid if that process still runs
# that binary (the command-line check guards against a PID reused since an earlier run).
recorded_pid() {
  local f="$1/$2.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "/$2 " || return 1
  echo "$pid"
}

# A child this shell started is alive until it exits (a zombie has exited), whether or not it has
# exec'd its binary yet. Until the exec the child is a copy of the shell, so the command-line check
# above calls it dead: on a loaded machine (a cold CI run) a kube-controller-manager that had not
# exec'd within 5 s failed `up` as "exited" with an empty log.
declare -A STARTED_PID=()

child_alive() { # pid
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# component_alive RUN_DIR COMPONENT: started by this shell → its child's state; else the pid file.
component_alive() {
  local pid=${STARTED_PID[$2]:-}
  if [[ -n "$pid" ]]; then child_alive "$pid"; else recorded_pid "$1" "$2" >/dev/null; fi
}

# stop_pid COMPONENT PID: SIGTERM, SIGKILL after $STOP_TIMEOUT s, and wait until it is gone.
stop_pid() {
  local comp=$1 pid=$2 t0=$SECONDS
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS - t0 >= STOP_TIMEOUT )); then
      log "$comp (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  log "stopped $comp (pid $pid)"
}
