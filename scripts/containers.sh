#!/usr/bin/env bash
# Build this project's container images on a machine that cannot pull any image, and run the
# Docker engine they live in.
#
#   scripts/containers.sh engine-start   install docker.io, debootstrap and docker-compose from
#                                        Debian when missing; start a dockerd of our own
#                                        (socket /run/presence-docker.sock, data root
#                                        /var/lib/presence-docker, vfs) unless it answers
#   scripts/containers.sh bases          the local base images, when missing:
#                                        presence/base-{debian,python,java,node}:bookworm
#   scripts/containers.sh images         the project's images, tag :local (layer-cached)
#   scripts/containers.sh engine-stop    stop that dockerd; its data root stays as a cache
#
# Subcommands run in the order given (`engine-start bases images`). Each one is idempotent,
# reports what it did with timings, and prints nothing when there was nothing to do (`images`
# always asks the builder, so it always reports, one line per image). Build output goes to
# .run/containers/logs/; set CONTAINERS_VERBOSE=1 to see it live.
#
# The images are built with BuildKit: pip and npm inside a build reach PyPI and npm only with
# this machine's CA bundle, which is passed as a build secret (`RUN --mount=type=secret,id=ca`,
# mounted at /run/secrets/ca for that one command) and so never lands in a layer. Debian's
# docker.io client (/usr/bin/docker, 20.10) has BuildKit built in; a newer client needs the
# buildx plugin. Overrides: CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt; empty: no
# secret, for machines that reach the registries directly), PYTHON_BASE, JAVA_BASE, NODE_BASE
# (e.g. the public python:3.11-slim, eclipse-temurin:17-jre, node:20-slim where they can be
# pulled), FIRESTORE_EMULATOR_DIR, PUBSUB_EMULATOR_DIR (the Google Cloud SDK's emulator folders).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ME="containers.sh"

# The engine: its own socket, data root and exec root, so it never collides with a system
# dockerd. DOCKER_HOST, when set (the Makefile exports the same socket), is what bases and
# images talk to.
ENGINE_SOCK=/run/presence-docker.sock
ENGINE_HOST="unix://$ENGINE_SOCK"
ENGINE_DATA=/var/lib/presence-docker
ENGINE_EXEC=/run/presence-docker
ENGINE_PID=/run/presence-docker.pid
ENGINE_LOG=/var/log/presence-dockerd.log
ENGINE_TIMEOUT=${ENGINE_TIMEOUT:-60}
export DOCKER_HOST=${DOCKER_HOST:-$ENGINE_HOST}

CACHE=/var/cache/presence-containers   # debootstrap output, reused after `docker system prune`
RUN_DIR="$ROOT/.run/containers"        # staged build contexts and build logs (git-ignored)
LOGS="$RUN_DIR/logs"
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

BASE_DEBIAN=presence/base-debian:$SUITE
BASE_PYTHON=presence/base-python:$SUITE
BASE_JAVA=presence/base-java:$SUITE
BASE_NODE=presence/base-node:$SUITE
PYTHON_BASE=${PYTHON_BASE:-$BASE_PYTHON}
JAVA_BASE=${JAVA_BASE:-$BASE_JAVA}
NODE_BASE=${NODE_BASE:-$BASE_NODE}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
SDK_DIRS=(/usr/lib/google-cloud-sdk /google-cloud-sdk)
# Every image this script builds carries this label, so that only ours are pruned.
LABEL=presence.image

say() { printf '%s: %s\n' "$ME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$ME" "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

need_root() {
  [ "$(id -u)" = 0 ] || die "$1 needs root (it starts dockerd / runs debootstrap); run it with sudo"
}

docker_ok() { docker -H "$1" info >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------- engine

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  ((${#missing[@]})) || return 0
  need_root "installing ${missing[*]}"
  local start
  start=$(now)
  say "installing ${missing[*]} from Debian ..."
  apt-get update -qq || die "apt-get update failed"
  # policy-rc.d 101: do not let the package start the system's own dockerd.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || status=$?
  ((created)) && rm -f "$policy"
  ((status == 0)) || die "apt-get install ${missing[*]} failed (exit $status)"
  say "installed ${missing[*]} ($(since "$start"))"
}

# dockerd programs NAT and forwarding with iptables. Debian's default is the nf_tables variant;
# where the kernel lacks nf_tables but has the legacy tables, dockerd gets a PATH whose
# iptables is iptables-legacy (the system's alternatives are left alone).
IPTABLES_SHIM="$ENGINE_EXEC-bin"
iptables_path() {
  if iptables -t nat -L -n >/dev/null 2>&1 && iptables -t filter -L -n >/dev/null 2>&1; then
    echo "$PATH"
    return
  fi
  if command -v iptables-legacy >/dev/null 2>&1 && iptables-legacy -t nat -L -n >/dev/null 2>&1
  then
    mkdir -p "$IPTABLES_SHIM"
    local tool
    for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore
    do
      command -v "$tool-legacy" >/dev/null 2>&1 && ln -sf "$(command -v "$tool-legacy")" \
        "$IPTABLES_SHIM/$tool"
    done
    say "iptables (nf_tables) does not work here; dockerd uses iptables-legacy" >&2
    echo "$IPTABLES_SHIM:$PATH"
    return
  fi
  die "iptables does not work here ($(iptables -t nat -L -n 2>&1 | tail -1)); the bridge \
network needs it (NAT for outbound traffic, port publishing)"
}

# The MTU of the default route's interface: container traffic with a larger MTU than the
# host's link stalls on TLS (PyPI, npm) when path MTU discovery is blocked.
host_mtu() {
  local dev
  dev=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')
  [ -n "$dev" ] && [ -r "/sys/class/net/$dev/mtu" ] && cat "/sys/class/net/$dev/mtu"
  return 0
}

engine_pid() {
  local pid
  pid=$(cat "$ENGINE_PID" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

check_bridge() {
  [ "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)" = 1 ] ||
    die "IP forwarding is off (/proc/sys/net/ipv4/ip_forward): containers cannot reach the \
network; dockerd should have turned it on, see $ENGINE_LOG"
  docker -H "$ENGINE_HOST" network inspect bridge >/dev/null 2>&1 ||
    die "dockerd has no bridge network; see $ENGINE_LOG"
  local nat
  nat=$(PATH=$(iptables_path) iptables -t nat -S POSTROUTING 2>/dev/null || true)
  grep -q MASQUERADE <<<"$nat" ||
    die "no MASQUERADE rule for the bridge in iptables' nat table: containers cannot reach \
the network; see $ENGINE_LOG"
  # When the Debian base exists, prove it: DNS and a TCP connection to the mirror from a
  # container on the default bridge.
  if docker -H "$ENGINE_HOST" image inspect "$BASE_DEBIAN" >/dev/null 2>&1; then
    check_container_network "$ENGINE_HOST"
  fi
}

# check_container_network DOCKER_HOST
check_container_network() {
  local host=${MIRROR#*://}
  host=${host%%/*}
  docker -H "$1" run --rm "$BASE_DEBIAN" timeout 10 bash -c \
    "exec 3<>/dev/tcp/$host/80" >/dev/null 2>&1 ||
    die "a container on the bridge network cannot reach $host:80 (DNS or NAT); check \
iptables -t nat -S and $ENGINE_LOG"
}

engine_start() {
  ensure_packages
  docker_ok "$ENGINE_HOST" && return 0
  need_root engine-start
  local start pid
  start=$(now)
  if ! pid=$(engine_pid); then
    rm -f "$ENGINE_PID"
    mkdir -p "$ENGINE_DATA" "$ENGINE_EXEC" "$(dirname "$ENGINE_LOG")"
    local args=(--storage-driver=vfs --data-root="$ENGINE_DATA" --exec-root="$ENGINE_EXEC"
      --pidfile="$ENGINE_PID" --host="$ENGINE_HOST")
    local mtu
    mtu=$(host_mtu)
    if [ -n "$mtu" ] && [ "$mtu" -lt 1500 ]; then args+=(--mtu="$mtu"); fi
    local path
    path=$(iptables_path)
    printf '\n=== %s: dockerd %s\n' "$(date -Is)" "${args[*]}" >>"$ENGINE_LOG"
    PATH="$path" setsid dockerd "${args[@]}" >>"$ENGINE_LOG" 2>&1 </dev/null &
    pid=$!
  fi
  local deadline=$((SECONDS + ENGINE_TIMEOUT))
  until docker_ok "$ENGINE_HOST"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      die "dockerd exited while starting; see $ENGINE_LOG:
$(tail -n 15 "$ENGINE_LOG")"
    fi
    ((SECONDS < deadline)) ||
      die "dockerd did not answer on $ENGINE_SOCK within ${ENGINE_TIMEOUT}s; see $ENGINE_LOG"
    sleep 0.3
  done
  check_bridge
  say "engine-start: dockerd (pid $pid) ready at $ENGINE_HOST, log $ENGINE_LOG ($(since "$start"))"
}

engine_stop() {
  local pid start
  pid=$(engine_pid) || { rm -f "$ENGINE_PID"; return 0; }
  start=$(now)
  # dockerd stops its containers and its own containerd (under the exec root) on SIGTERM.
  local containerd
  containerd=$(cat "$ENGINE_EXEC/containerd/containerd.pid" 2>/dev/null || true)
  kill -TERM "$pid"
  local deadline=$((SECONDS + 40))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "dockerd (pid $pid) did not stop within 40s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [ -n "$containerd" ] && kill -0 "$containerd" 2>/dev/null; then
    kill -TERM "$containerd" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while kill -0 "$containerd" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$containerd" 2>/dev/null || true
  fi
  rm -f "$ENGINE_PID"
  say "engine-stop: dockerd stopped; images and layers stay in $ENGINE_DATA ($(since "$start"))"
}

need_engine() {
  docker info >/dev/null 2>&1 ||
    die "no Docker engine answers at $DOCKER_HOST: run \`scripts/containers.sh engine-start\`"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# ----------------------------------------------------------------------------------- bases

# Debian bookworm minbase, trimmed like the official slim images (no docs, man pages or
# locales; no apt lists), with bookworm-updates and -security in its sources.
debootstrap_tarball() {
  local tarball="$CACHE/$SUITE-minbase.tar"
  [ -s "$tarball" ] && { echo "$tarball"; return; }
  need_root bases
  command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap is missing: run \`scripts/containers.sh engine-start\` (installs it)"
  mkdir -p "$CACHE"
  local dir="$CACHE/rootfs.tmp"
  remove_rootfs "$dir"
  local start
  start=$(now)
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$dir" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $CACHE/debootstrap.log:
$(tail -n 15 "$CACHE/debootstrap.log")"
  cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
  cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
Acquire::Languages "none";
EOF
  # Services never start inside a build.
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod +x "$dir/usr/sbin/policy-rc.d"
  find "$dir/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/lintian/*
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias \
    -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
    "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log "$dir"/var/log/apt/* \
    "$dir"/var/cache/debconf/*-old "$dir"/var/lib/dpkg/*-old "$dir"/tmp/* "$dir"/root/.bash_history
  # Docker provides these at run time; the host's must not be baked in.
  rm -f "$dir/etc/resolv.conf" "$dir/etc/hostname"
  : >"$dir/etc/hosts"
  [ -e "$dir/etc/machine-id" ] && : >"$dir/etc/machine-id"
  tar --numeric-owner -C "$dir" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$tarball.tmp" . || die "could not archive $dir"
  mv "$tarball.tmp" "$tarball"
  remove_rootfs "$dir"
  say "debootstrap $SUITE minbase -> $tarball ($(since "$start"))"
  echo "$tarball"
}

# An interrupted debootstrap can leave /proc, /sys or /dev mounted inside its target: unmount
# them before removing it, and never cross into another file system.
remove_rootfs() {
  local dir=$1 mount
  [ -e "$dir" ] || return 0
  while read -r mount; do
    umount -l "$mount" 2>/dev/null || true
  done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "$dir"
}

build_log() { mkdir -p "$LOGS"; echo "$LOGS/$1.log"; }

# build NAME TAG DOCKERFILE CONTEXT [docker build args...]: BuildKit build, output in the log.
BUILD_CLI=""
pick_build_cli() {
  [ -n "$BUILD_CLI" ] && return 0
  local cli version major
  for cli in docker /usr/bin/docker; do
    command -v "$cli" >/dev/null 2>&1 || continue
    if "$cli" buildx version >/dev/null 2>&1; then BUILD_CLI=$cli; return 0; fi
    # Clients before 23.0 have BuildKit built in; later ones need the buildx plugin.
    version=$("$cli" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
    major=${version:-0}
    if ((major >= 19 && major < 23)); then BUILD_CLI=$cli; return 0; fi
  done
  die "no Docker client that can build with BuildKit (needed for RUN --mount=type=secret): \
install the buildx plugin (docker-buildx) or Debian's docker.io client (/usr/bin/docker)"
}

build() {
  local name=$1 tag=$2 dockerfile=$3 context=$4
  shift 4
  pick_build_cli
  local log secret=()
  log=$(build_log "$name")
  if [ -n "$CA_BUNDLE" ]; then
    [ -r "$CA_BUNDLE" ] || die "CA_BUNDLE=$CA_BUNDLE is not readable (set CA_BUNDLE= to build \
without one)"
    secret=(--secret "id=ca,src=$CA_BUNDLE")
  fi
  local cmd=(env DOCKER_BUILDKIT=1 BUILDKIT_PROGRESS=plain "$BUILD_CLI" build
    --progress=plain "${secret[@]}" --label "$LABEL=$name" -t "$tag" -f "$dockerfile" "$@"
    "$context")
  printf '=== %s: %s\n' "$(date -Is)" "${cmd[*]}" >"$log"
  if [ -n "${CONTAINERS_VERBOSE:-}" ]; then
    "${cmd[@]}" 2>&1 | tee -a "$log" >&2 || return 1
  else
    "${cmd[@]}" >>"$log" 2>&1 || return 1
  fi
}

# A build context made of hard links (copies across file systems): instant, and unchanged
# files keep their metadata, so BuildKit's context sync and layer cache see no change.
stage() {
  local dest=$1
  shift
  rm -rf "$dest"
  mkdir -p "$dest"
  local src
  for src in "$@"; do
    cp -al "$src" "$dest/" 2>/dev/null || cp -a "$src" "$dest/" ||
      die "could not stage $src into $dest"
  done
}

bases() {
  need_engine
  local start did=()
  start=$(now)
  if ! image_exists "$BASE_DEBIAN"; then
    local tarball
    tarball=$(debootstrap_tarball)
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase $SUITE" \
      "$tarball" "$BASE_DEBIAN" >/dev/null || die "docker import $tarball failed"
    check_container_network "$DOCKER_HOST"
    did+=(debian)
  fi
  local specs=() name
  for name in python java node; do
    local tag="presence/base-$name:$SUITE" context="$ROOT/emulator/containers"
    image_exists "$tag" && continue
    if [ "$name" = node ]; then context=$(stage_host_node); fi
    specs+=("base-$name|$tag|emulator/containers/base-$name.Dockerfile|$context|BASE=$BASE_DEBIAN")
    did+=("$name")
  done
  ((${#specs[@]})) && run_builds bases "${specs[@]}"
  ((${#did[@]})) || return 0
  say "bases: built ${did[*]} ($(since "$start"))"
}

# Debian bookworm's nodejs is 18; firebase-tools needs 20. The local node base takes this
# machine's Node 20 (a nodesource build, needing only glibc and libstdc++) and its npm.
stage_host_node() {
  local node npm_dir
  node=$(command -v node 2>/dev/null) || die "no node on this machine for presence/base-node \
(Node.js 20+ is needed; or set NODE_BASE=node:20-slim where it can be pulled)"
  node=$(readlink -f "$node")
  local major
  major=$("$node" -p 'process.versions.node.split(".")[0]')
  ((major >= 20)) || die "$node is Node $major; presence/base-node needs Node 20+"
  npm_dir=$(readlink -f "$(command -v npm 2>/dev/null || echo /nonexistent)")
  npm_dir=${npm_dir%/bin/npm-cli.js}
  [ -f "$npm_dir/package.json" ] || die "npm not found next to $node (looked for \
/usr/lib/node_modules/npm)"
  local dest="$RUN_DIR/stage/base-node"
  stage "$dest" "$npm_dir"
  cp -l "$node" "$dest/node" 2>/dev/null || cp -p "$node" "$dest/node"
  # The host's npmrc names the host's CA bundle; the image gets a neutral one.
  rm -f "$dest/npm/npmrc"
  echo "$dest"
}

# ---------------------------------------------------------------------------------- images

sdk_emulator_dir() {
  local override=$1 sub=$2 root
  if [ -n "$override" ]; then
    [ -d "$override" ] || die "$override does not exist"
    echo "$override"
    return
  fi
  for root in "${SDK_DIRS[@]}"; do
    [ -d "$root/platform/$sub" ] && { echo "$root/platform/$sub"; return; }
  done
  die "the Google Cloud SDK's $sub is not installed (looked in ${SDK_DIRS[*]}/platform): \
apt-get install google-cloud-cli-${sub/cloud-/}"
}

images() {
  need_engine
  local base
  for base in "$PYTHON_BASE" "$JAVA_BASE" "$NODE_BASE"; do
    case $base in
      presence/*) image_exists "$base" ||
        die "the base image $base is missing: run \`scripts/containers.sh bases\`" ;;
    esac
  done
  local start
  start=$(now)
  pick_build_cli
  # The emulators' build contexts: the SDK's folders, staged under .run/ (never committed).
  local firestore_dir pubsub_dir
  firestore_dir=$(sdk_emulator_dir "${FIRESTORE_EMULATOR_DIR:-}" cloud-firestore-emulator)
  pubsub_dir=$(sdk_emulator_dir "${PUBSUB_EMULATOR_DIR:-}" pubsub-emulator)
  local firestore_ctx="$RUN_DIR/stage/firestore" pubsub_ctx="$RUN_DIR/stage/pubsub"
  stage "$firestore_ctx" "$firestore_dir/."
  stage "$pubsub_ctx" "$pubsub_dir/."
  # name | tag | Dockerfile | context | build args
  local specs=(
    "gateway|presence/gateway:local|gateway/Dockerfile|.|BASE=$PYTHON_BASE"
    "sweep-function|presence/sweep-function:local|functions/Dockerfile|functions|BASE=$PYTHON_BASE"
    "scheduler|presence/scheduler:local|emulator/containers/scheduler.Dockerfile|.|BASE=$PYTHON_BASE"
    "firestore-emulator|presence/firestore-emulator:local|emulator/containers/firestore.Dockerfile|$firestore_ctx|BASE=$JAVA_BASE"
    "pubsub-emulator|presence/pubsub-emulator:local|emulator/containers/pubsub.Dockerfile|$pubsub_ctx|BASE=$JAVA_BASE"
    "auth-emulator|presence/auth-emulator:local|emulator/containers/auth.Dockerfile|.|BASE=$NODE_BASE"
  )
  run_builds images "${specs[@]}"
}

# run_builds STEP SPEC...: each SPEC "name|tag|Dockerfile|context|BUILD_ARG=... ..." (paths
# relative to the repository root or absolute), built side by side (cold builds wait mostly on
# downloads, warm ones on the builder's round trips); one line per image with its time, and the
# end of the log of each one that failed.
run_builds() {
  local step=$1
  shift
  pick_build_cli
  local start
  start=$(now)
  local spec name tag dockerfile context args pids=() names=() tags=() before=() starts=()
  for spec in "$@"; do
    IFS='|' read -r name tag dockerfile context args <<<"$spec"
    [[ $context = /* ]] || context="$ROOT/$context"
    [[ $dockerfile = /* ]] || dockerfile="$ROOT/$dockerfile"
    local build_args=() arg
    for arg in $args; do build_args+=(--build-arg "$arg"); done
    names+=("$name")
    tags+=("$tag")
    before+=("$(image_id "$tag")")
    starts+=("$(now)")
    mkdir -p "$LOGS"
    rm -f "$LOGS/$name.done"
    (
      build "$name" "$tag" "$dockerfile" "$context" "${build_args[@]}"
      now >"$LOGS/$name.done"
    ) &
    pids+=($!)
  done
  local i failed=() lines=()
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      local state=built took
      if [ -n "${before[$i]}" ]; then
        state=rebuilt
        [ "$(image_id "${tags[$i]}")" = "${before[$i]}" ] && state="up to date"
      fi
      took=$(awk -v a="${starts[$i]}" -v b="$(cat "$LOGS/${names[$i]}.done")" \
        'BEGIN { printf "%.1fs", b - a }')
      lines+=("$(printf '  %-36s %-10s %6s  (%s)' "${tags[$i]}" "$state" "$took" \
        "$(image_size "${tags[$i]}")")")
    else
      failed+=("${names[$i]}")
    fi
    rm -f "$LOGS/${names[$i]}.done"
  done
  if ((${#failed[@]})); then
    for name in "${failed[@]}"; do
      say "building $name failed; see $LOGS/$name.log:"
      tail -n 25 "$LOGS/$name.log" >&2
    done
    die "$step: ${failed[*]} failed"
  fi
  # Replaced images are left untagged; with the vfs driver each holds a full copy of its file
  # system. Remove ours (by label), nothing else.
  docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
  say "$step ($(since "$start")):"
  printf '%s\n' "${lines[@]}" >&2
}

image_size() {
  docker image inspect --format '{{.Size}}' "$1" 2>/dev/null |
    awk '{ printf "%.0f MB", $1 / 1000000 }'
}

# ------------------------------------------------------------------------------------ main

(($#)) || usage
for command in "$@"; do
  case $command in
    engine-start | bases | images | engine-stop) ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$command' (engine-start, bases, images, engine-stop)" ;;
  esac
done
for command in "$@"; do
  case $command in
    engine-start) engine_start ;;
    engine-stop) engine_stop ;;
    bases) bases ;;
    images) images ;;
  esac
done
