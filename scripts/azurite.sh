#!/usr/bin/env bash
# Starts or stops Azurite's blob service for the tests of target/azblob.
#
#   scripts/azurite.sh start   # in the background on 127.0.0.1:10000, data in a temporary directory
#   scripts/azurite.sh stop    # stops it and removes its data
#   scripts/azurite.sh status
#
# Install it first: npm install -g azurite@3.37.0 (the version CI pins).
# AZURITE_BLOB_PORT changes the port; AZURITE_STATE the directory of the PID
# and log files (default: a drfs-azurite directory under $TMPDIR or /tmp).
set -euo pipefail

host=127.0.0.1
port=${AZURITE_BLOB_PORT:-10000}
state=${AZURITE_STATE:-${TMPDIR:-/tmp}/drfs-azurite}
pidfile=$state/azurite.pid
logfile=$state/azurite.log
datafile=$state/data-dir

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  if running; then
    echo "azurite: already running (pid $(cat "$pidfile")) on $host:$port"
    return 0
  fi
  if answers; then
    echo "azurite: something already listens on $host:$port" >&2
    exit 1
  fi
  if ! command -v azurite-blob >/dev/null 2>&1; then
    echo "azurite: azurite-blob not found: npm install -g azurite@3.37.0" >&2
    exit 1
  fi
  mkdir -p "$state"
  data=$(mktemp -d)
  echo "$data" >"$datafile"
  # setsid: its own process group, so that stop ends it with its children.
  setsid azurite-blob --blobHost "$host" --blobPort "$port" --location "$data" \
    --disableTelemetry --skipApiVersionCheck --loose >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 150); do
    if answers; then
      echo "azurite: running (pid $(cat "$pidfile")) on $host:$port, data in $data"
      return 0
    fi
    if ! running; then
      echo "azurite: exited at start; its log:" >&2
      cat "$logfile" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "azurite: not answering on $host:$port after 30 s; its log:" >&2
  cat "$logfile" >&2
  stop
  exit 1
}

stop() {
  if running; then
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "azurite: stopped (pid $pid)"
  else
    echo "azurite: not running"
  fi
  rm -f "$pidfile"
  if [ -f "$datafile" ]; then
    rm -rf "$(cat "$datafile")"
    rm -f "$datafile"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then echo "azurite: running (pid $(cat "$pidfile")) on $host:$port"; else echo "azurite: not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
