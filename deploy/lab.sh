#!/usr/bin/env bash
# Portcullis fleet lab: a controller and three agents in network namespaces on one bridge.
#
#   deploy/lab.sh demo   # up + apply deploy/examples/site.yml + probe from `outside` + logs +
#                        # status; then --check --replay, a rollout in waves and a rollback
#   deploy/lab.sh up     # namespaces, certificates, controller, agents, test listeners
#   deploy/lab.sh status # portcullis status
#   deploy/lab.sh down   # stop everything, delete namespaces and lab state
#   deploy/lab.sh demo --postgres  # (or up --postgres) two controllers, ctl and ctl2, on one
#                        # throwaway PostgreSQL cluster; agents given both; the demo applies
#                        # through one and shows status/logs/history from the other
#
# Namespaces: lab-sw (the bridge), ctl (10.77.0.1, fd77::1), h1..h3 (10.77.0.11-13,
# fd77::11-13), outside (10.77.0.100, fd77::100), with --postgres also ctl2 (10.77.0.2,
# fd77::2). Needs root, nft, ip and a Rust toolchain (and PostgreSQL's server for --postgres):
# it checks them before building (as root with apt, it installs nftables and iproute2;
# otherwise it stops at once naming the packages). Idempotent; a failure at any step (or
# Ctrl-C) takes the lab down again. State (PKI, database, logs) in $LAB_STATE (default
# ./lab-state); the PostgreSQL cluster (initdb as the postgres user, a Unix socket only,
# no TCP) in a temporary directory named in $LAB_STATE/pg-dir, removed by `down`.
set -euo pipefail
# ip and nft live in /usr/sbin on Debian, which a plain `su` or sudo PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${LAB_STATE:-$ROOT/lab-state}
BIN=${LAB_BIN:-$ROOT/target/debug}
HOSTS=(h1 h2 h3)
# --postgres: a second controller (ctl2) and one PostgreSQL database for both.
POSTGRES=
CTLS=(ctl)
NODES=(ctl "${HOSTS[@]}" outside)
ALL_NODES=(ctl ctl2 "${HOSTS[@]}" outside)   # what `down` removes, whatever the mode
CTL_PORT=7443
declare -A ADDR4=([ctl]=10.77.0.1 [ctl2]=10.77.0.2 [h1]=10.77.0.11 [h2]=10.77.0.12 [h3]=10.77.0.13 [outside]=10.77.0.100)
declare -A ADDR6=([ctl]=fd77::1 [ctl2]=fd77::2 [h1]=fd77::11 [h2]=fd77::12 [h3]=fd77::13 [outside]=fd77::100)

say() { printf '\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'lab: %s\n' "$*" >&2; exit 1; }
ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

# What the lab runs, and the Debian package that has it.
declare -A NEEDS=([ip]=iproute2 [nft]=nftables [awk]=mawk [grep]=grep [sed]=sed
  [seq]=coreutils [xargs]=findutils)

# Check every tool before anything is built or changed; install the missing ones with apt
# when we can, else stop naming them.
preflight() {
  local missing=() pkgs=() t
  [[ -z ${LAB_NO_BUILD:-} ]] && ! command -v cargo >/dev/null 2>&1 &&
    die "cargo not found: install a Rust toolchain (https://rustup.rs, or apt-get install cargo), or set LAB_NO_BUILD=1 with built binaries in \$LAB_BIN"
  for t in "${!NEEDS[@]}"; do
    command -v "$t" >/dev/null 2>&1 || { missing+=("$t"); pkgs+=("${NEEDS[$t]}"); }
  done
  if [[ -n $POSTGRES ]] && ! pg_bin >/dev/null; then
    missing+=(initdb); pkgs+=(postgresql)
  fi
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${pkgs[*]} (missing: ${missing[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" ||
      die "apt-get install ${pkgs[*]} failed; install them and run again"
    for t in "${missing[@]}"; do
      if [[ $t == initdb ]]; then
        pg_bin >/dev/null || die "initdb still missing after installing postgresql"
      else
        command -v "$t" >/dev/null 2>&1 || die "$t still missing after installing ${NEEDS[$t]}"
      fi
    done
  else
    die "missing: ${missing[*]}. Install them first (Debian/Ubuntu, as root: apt-get install ${pkgs[*]}), then run again"
  fi
}

# Armed while the lab is being built or demonstrated: any failure (set -e, die, Ctrl-C)
# then takes it down, so a failed first run leaves no namespaces or processes behind.
CLEANUP_ON_FAIL=
on_exit() {
  local rc=$?
  if ((rc != 0)) && [[ -n $CLEANUP_ON_FAIL ]]; then
    CLEANUP_ON_FAIL=
    echo "lab: failed (exit $rc); taking the lab down (logs stay in $STATE/logs)" >&2
    if [[ -d $STATE/logs ]]; then
      tail -n 5 "$STATE"/logs/*.log >&2 2>/dev/null || true
    fi
    down
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

admin() { admin_on ctl "$@"; }

# The operator CLI against the controller in namespace $1 (ctl, or ctl2 with --postgres).
admin_on() {
  local c=$1; shift
  ip netns exec "$c" env \
    PORTCULLIS_CONTROLLER="https://${ADDR4[$c]}:$CTL_PORT" \
    PORTCULLIS_CERT="$STATE/pki/admin-lab.crt" PORTCULLIS_KEY="$STATE/pki/admin-lab.key" \
    PORTCULLIS_CA="$STATE/pki/ca.crt" "$BIN/portcullis" "$@"
}

# The newest /usr/lib/postgresql/<version>/bin with initdb (Debian's layout).
pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $d && -x $d/initdb ]] && echo "$d"
}

# A throwaway cluster: initdb in a temporary directory as the postgres user, the server
# on a Unix socket there only (no TCP), one database `portcullis` for both controllers.
pg_up() {
  local bin dir
  bin=$(pg_bin) || die "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin"
  id postgres >/dev/null 2>&1 || die "no postgres user (install the postgresql package)"
  dir=$(mktemp -d /tmp/portcullis-lab-pg.XXXXXX)
  echo "$dir" >"$STATE/pg-dir"
  chown postgres: "$dir"
  say "PostgreSQL cluster in $dir (Unix socket only)"
  runuser -u postgres -- "$bin/initdb" -A trust -U postgres -E UTF8 -D "$dir/data" >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir -c listen_addresses= -c max_connections=200" start >/dev/null ||
    { cat "$dir/server.log" >&2; die "PostgreSQL did not start"; }
  runuser -u postgres -- "$bin/createdb" -h "$dir" portcullis
  PG_DB="host=$dir port=5432 user=postgres dbname=portcullis"
}

pg_down() {
  [[ -f $STATE/pg-dir ]] || return 0
  local dir bin
  dir=$(cat "$STATE/pg-dir")
  if [[ -d $dir/data ]]; then
    if bin=$(pg_bin); then
      runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    # Still running (no pg_ctl, or it timed out): the postmaster's pid is the file's first line.
    if [[ -f $dir/data/postmaster.pid ]]; then
      kill -9 "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null || true
    fi
  fi
  [[ $dir == /tmp/portcullis-lab-pg.* ]] && rm -rf "$dir"
  rm -f "$STATE/pg-dir"
}

build() {
  if [[ -z ${LAB_NO_BUILD:-} ]]; then
    say "building portcullis, portcullis-agent, pc-probe"
    (cd "$ROOT" && cargo build -q -p portcullis-controller -p portcullis-agent -p portcullis-e2e --bins)
  fi
  for b in portcullis portcullis-agent pc-probe; do
    [[ -x $BIN/$b ]] || die "$BIN/$b missing (build first or set LAB_BIN)"
  done
}

net_up() {
  say "network namespaces: lab-sw ${NODES[*]}"
  ip netns add lab-sw
  ip -n lab-sw link add br0 type bridge
  ip -n lab-sw link set br0 up
  ip -n lab-sw link set lo up
  for n in "${NODES[@]}"; do
    ip netns add "$n"
    ip -n "$n" link set lo up
    ip link add "sw-$n" type veth peer name eth0 netns "$n"
    ip link set "sw-$n" netns lab-sw
    ip -n lab-sw link set "sw-$n" master br0 up
    ip -n "$n" addr add "${ADDR4[$n]}/24" dev eth0
    ip -n "$n" addr add "${ADDR6[$n]}/64" dev eth0 nodad
    ip -n "$n" link set eth0 up
    ip -n "$n" route add default dev eth0
    ip -n "$n" -6 route add default dev eth0
  done
}

pki_up() {
  say "PKI in $STATE/pki"
  local p=("$BIN/portcullis" ca)
  "${p[@]}" init --dir "$STATE/pki" --force >/dev/null
  local sans=() c
  for c in "${CTLS[@]}"; do sans+=(--san "${ADDR4[$c]}" --san "${ADDR6[$c]}" --san "$c.lab"); done
  "${p[@]}" issue controller "${sans[@]}" --dir "$STATE/pki" --force >/dev/null
  for h in "${HOSTS[@]}"; do "${p[@]}" issue agent "$h" --dir "$STATE/pki" --force >/dev/null; done
  "${p[@]}" issue admin lab --dir "$STATE/pki" --force >/dev/null
}

start_bg() { # name, ns, command...
  local name=$1 ns=$2; shift 2
  ip netns exec "$ns" "$@" >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name"
}

procs_up() {
  mkdir -p "$STATE/logs" "$STATE/pids"
  local db=$STATE/controller.db c name urls=()
  [[ -z $POSTGRES ]] || db=$PG_DB
  for c in "${CTLS[@]}"; do
    name=controller; [[ $c == ctl ]] || name=controller-$c
    say "controller in $c (https://${ADDR4[$c]}:$CTL_PORT, --db $db)"
    start_bg "$name" "$c" "$BIN/portcullis" serve --listen "[::]:$CTL_PORT" \
      --db "$db" --pki "$STATE/pki"
    for _ in $(seq 100); do
      ip netns exec "$c" bash -c "exec 3<>/dev/tcp/${ADDR4[$c]}/$CTL_PORT" 2>/dev/null && break
      sleep 0.1
    done
    urls+=(--controller "https://${ADDR4[$c]}:$CTL_PORT")
  done
  for h in "${HOSTS[@]}"; do
    say "agent in $h"
    mkdir -p "$STATE/$h"
    start_bg "agent-$h" "$h" env PORTCULLIS_LOG=info "$BIN/portcullis-agent" run \
      "${urls[@]}" --ca "$STATE/pki/ca.crt" \
      --cert "$STATE/pki/agent-$h.crt" --key "$STATE/pki/agent-$h.key" --state-dir "$STATE/$h" \
      --heartbeat 2s
    start_bg "listen-$h" "$h" "$BIN/pc-probe" listen tcp:22,25,80,443,5000 udp:53,123,137
  done
  for _ in $(seq 100); do
    local n
    n=$(admin status --json 2>/dev/null | grep -c '"connected": true' || true)
    [[ $n -ge ${#HOSTS[@]} ]] && return 0
    sleep 0.1
  done
  die "agents did not connect within 10 s; see $STATE/logs"
}

up() {
  preflight
  build
  if ns_exists ctl || ns_exists lab-sw; then
    say "lab already up: recreating"
    down
  fi
  rm -rf "$STATE"; mkdir -p "$STATE"
  CLEANUP_ON_FAIL=1
  net_up
  pki_up
  [[ -z $POSTGRES ]] || pg_up
  procs_up
  [[ -n ${IN_DEMO:-} ]] || CLEANUP_ON_FAIL=
  say "lab is up: deploy/lab.sh status | deploy/lab.sh down"
}

probe_all() {
  say "probes from outside (${ADDR4[outside]}, ${ADDR6[outside]})"
  for h in "${HOSTS[@]}"; do
    for a in "${ADDR4[$h]}" "${ADDR6[$h]}"; do
      ip netns exec outside "$BIN/pc-probe" check --timeout 400 "$a" \
        tcp:25,80,443,22,5000 udp:53,123,137 | sed "s/^/$h  /"
    done
  done
}

# Two controllers on one PostgreSQL database: what is applied through one, the other shows.
demo_postgres() {
  local inv=$ROOT/deploy/examples/inventory.yml
  say "portcullis apply site.yml, through ctl (https://${ADDR4[ctl]}:$CTL_PORT)"
  admin_on ctl apply -i "$inv" "$ROOT/deploy/examples/site.yml" --timeout 30s
  probe_all
  sleep 2   # one aggregation interval: the agents ship their denial batches
  say "portcullis status, from ctl2 (https://${ADDR4[ctl2]}:$CTL_PORT): the same fleet, the same revision"
  admin_on ctl2 status
  say "portcullis logs --top, from ctl2 (denials stored through either controller)"
  admin_on ctl2 logs --top 5 --since 5m
  say "portcullis apply site-next.yml, through ctl2"
  admin_on ctl2 apply -i "$inv" "$ROOT/deploy/examples/site-next.yml" --timeout 30s
  say "portcullis status and history, from ctl"
  admin_on ctl status
  admin_on ctl history
  CLEANUP_ON_FAIL=
  say "the lab stays up (two controllers, one PostgreSQL): deploy/lab.sh down removes it"
}

demo() {
  IN_DEMO=1
  up
  if [[ -n $POSTGRES ]]; then
    demo_postgres
    return
  fi
  say "portcullis apply -i deploy/examples/inventory.yml deploy/examples/site.yml"
  admin apply -i "$ROOT/deploy/examples/inventory.yml" "$ROOT/deploy/examples/site.yml" --timeout 30s
  probe_all
  sleep 2   # one aggregation interval: the agents ship their denial batches
  say "portcullis logs --since 5m (denials the controller collected from the probes)"
  admin logs --since 5m --limit 50
  say "portcullis logs --top"
  admin logs --top 5 --since 5m
  say "portcullis status"
  admin status
  say "portcullis history"
  admin history
  local next="$ROOT/deploy/examples/site-next.yml"
  sleep 2   # one heartbeat: the agents report their rules' counters
  say "portcullis apply --check --diff --replay 1h site-next.yml (who would the next policy deny?)"
  admin apply -i "$ROOT/deploy/examples/inventory.yml" "$next" --check --diff --replay 1h || true
  say "portcullis apply site-next.yml --serial 1,50% --confirm-timeout 10s (waves, commit-confirmed, gates)"
  admin apply -i "$ROOT/deploy/examples/inventory.yml" "$next" --serial 1,50% --confirm-timeout 10s
  say "portcullis rollback --confirm-timeout 10s (back to the previous revision, same safety)"
  admin rollback --confirm-timeout 10s
  say "portcullis rollout list"
  admin rollout list
  CLEANUP_ON_FAIL=
  say "the lab stays up: deploy/lab.sh down removes it"
}

down() {
  local n
  if [[ -d $STATE/pids ]]; then
    for f in "$STATE"/pids/*; do
      [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 0.3
    for f in "$STATE"/pids/*; do
      [[ -f $f ]] && kill -9 "$(cat "$f")" 2>/dev/null || true
    done
    rm -rf "$STATE/pids"
  fi
  for n in "${ALL_NODES[@]}" lab-sw; do
    if ns_exists "$n"; then
      ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$n"
    fi
  done
  pg_down
}

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, nftables)"
CMD=${1:-demo}
if [[ $CMD == demo || $CMD == up ]] && [[ -n ${2:-} && $2 != --postgres || $# -gt 2 ]]; then
  die "usage: $0 $CMD [--postgres]"
fi
if [[ ${2:-} == --postgres ]]; then
  [[ $CMD == demo || $CMD == up ]] || die "--postgres goes with demo or up"
  POSTGRES=1
  CTLS=(ctl ctl2)
  NODES=(ctl ctl2 "${HOSTS[@]}" outside)
fi
case $CMD in
  up) up ;;
  demo) demo ;;
  down) down; say "lab is down" ;;
  status) admin status ;;
  probe) probe_all ;;
  apply) shift; admin apply "$@" ;;
  cli) shift; admin "$@" ;;
  *) die "usage: $0 [demo [--postgres]|up [--postgres]|down|status|probe|apply ARGS|cli ARGS]" ;;
esac
