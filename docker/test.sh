#!/usr/bin/env bash
# Build the test image (docker/Dockerfile) and run the test suite in a container; exit with pytest's status.
#
#   docker/test.sh [OPTIONS] [--] [PYTEST ARGS...]
#
# Options (they come first; the first argument that is not one of them starts pytest's arguments):
#   --build-dir DIR   test your own kernel build: DIR (holding kernel, p-* programs, syscalls.json...) is mounted
#                     read-only at /work/build-user, with WEENSY_BUILD_DIR=/work/build-user WEENSY_NO_BUILD=1
#                     (also: WEENSY_DOCKER_BUILD_DIR=DIR)
#   --results DIR     where junit.xml and results.json go (default ./test-results; WEENSY_DOCKER_RESULTS)
#   --image NAME      the image to build and run (default weensy-harness:test; WEENSY_DOCKER_IMAGE)
#   --no-host-pip     do not hand the host's pip settings (indexes, find-links, trusted hosts, cert) to the build
#                     (WEENSY_DOCKER_HOST_PIP=0); pip in the build then uses plain PyPI
#   --no-cache        rebuild every layer of the image (the base image is kept)
#   -h, --help        this text
#
# The Docker daemon: the one the docker client reaches (DOCKER_HOST, the default socket) if there is one. If not,
# and as root, a private dockerd of our own (its data under the cache directory, its default bridge network with
# NAT for the build's downloads), stopped by its pid when the script ends; a system daemon is never started or
# stopped. The build never uses the host's network: it runs on the daemon's bridge network, where it reaches the
# internet but not the host's local services; the host's local pip paths are served to it on the bridge's gateway
# address only (docker/pip_bridge.py). The tests run with no network at all, as an unprivileged user, with every
# capability dropped, no privilege gain, and memory and process limits (WEENSY_DOCKER_MEMORY, default 6g;
# WEENSY_DOCKER_PIDS, default 4096); their results are copied out of the container afterwards.
# The base image debian:bookworm: used if present, else pulled, else (no registry) built with debootstrap from
# Debian's mirror and imported under that name.
# Cache: ${WEENSY_DOCKER_CACHE:-${XDG_CACHE_HOME:-~/.cache}/weensy-harness/docker} (the private daemon's
# data-root and the base image's tarball; several GB with vfs; delete it to start afresh).
# Other variables: WEENSY_DEBIAN_MIRROR (debootstrap's mirror, default: the host's Debian mirror, else
# http://deb.debian.org/debian), WEENSY_DOCKER_BUILD_NETWORK (default: the daemon's default bridge network; none or
# a network name also work and turn off the pip pass-through; host is refused), WEENSY_DOCKER_STORAGE_DRIVER (private daemon: overlay2, vfs, or auto = overlay2 if it works, else vfs), WEENSY_DOCKER_PIP_CERT (a CA bundle
# for pip in the build, instead of the host pip's `cert`), WEENSY_PIP_BRIDGE_PORT (default 37621).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${WEENSY_DOCKER_IMAGE:-weensy-harness:test}"
base_image="debian:bookworm"
cache="${WEENSY_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weensy-harness/docker}"
results="${WEENSY_DOCKER_RESULTS:-$PWD/test-results}"
user_build="${WEENSY_DOCKER_BUILD_DIR:-}"
host_pip="${WEENSY_DOCKER_HOST_PIP:-1}"
build_network="${WEENSY_DOCKER_BUILD_NETWORK:-default}"
memory="${WEENSY_DOCKER_MEMORY:-6g}"
pids="${WEENSY_DOCKER_PIDS:-4096}"
storage_driver="${WEENSY_DOCKER_STORAGE_DRIVER:-auto}"
no_cache=()
label="org.weensy-harness.test-image=1"

started=$SECONDS
say() { printf 'test.sh [%4ds]: %s\n' "$((SECONDS - started))" "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) [ $# -ge 2 ] || die "--build-dir needs a directory"; user_build="$2"; shift 2 ;;
        --build-dir=*) user_build="${1#*=}"; shift ;;
        --results) [ $# -ge 2 ] || die "--results needs a directory"; results="$2"; shift 2 ;;
        --results=*) results="${1#*=}"; shift ;;
        --image) [ $# -ge 2 ] || die "--image needs a name"; image="$2"; shift 2 ;;
        --image=*) image="${1#*=}"; shift ;;
        --no-host-pip) host_pip=0; shift ;;
        --no-cache) no_cache=(--no-cache); shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
pytest_args=("$@")
[ "$build_network" != host ] || die "WEENSY_DOCKER_BUILD_NETWORK=host is refused: the build must not share the host's network"

if [ -n "$user_build" ]; then
    [ -f "$user_build/kernel" ] || die "--build-dir $user_build: no kernel there (build one with make -C weensyos-src BUILD=DIR)"
    user_build="$(cd "$user_build" && pwd)"
fi

is_root() { [ "$(id -u)" = 0 ]; }
apt_updated=0
apt_install() {
    is_root || die "need $* (apt-get install $*), and only root can install it: run as root or install it first"
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        apt-get update -q >/dev/null
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# ---- cleanup: everything this script started, by pid ---------------------------------------------------------
dockerd_pid=""
dockerd_exec=""
bridge_pid=""
bridge_dir=""
container=""
rootfs_tmp=""

stop_pid() {  # stop_pid PID SECONDS: SIGTERM, wait, then SIGKILL
    local pid="$1" wait="$2" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

remove_tree() {  # remove_tree DIR: unmount what is mounted below DIR, then delete it without crossing mounts
    # (dockerd leaves its exec-root's netns/default bound; a debootstrap that failed may leave proc or sys mounted)
    local dir="$1" mnt
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    for mnt in $(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf --one-file-system "$dir" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$container" ]; then
        say "removing container $container"
        docker rm -f "$container" >/dev/null 2>&1 || true
    fi
    if [ -n "$bridge_pid" ]; then stop_pid "$bridge_pid" 5; fi
    if [ -n "$bridge_dir" ]; then rm -rf "$bridge_dir"; fi
    if [ -n "$dockerd_pid" ]; then
        say "stopping the private dockerd (pid $dockerd_pid)"
        stop_pid "$dockerd_pid" 30
        wait "$dockerd_pid" 2>/dev/null || true
        # dockerd stops the containerd it started; if dockerd had to be killed, that containerd is stopped here,
        # by the pid it recorded under our exec-root (and only if that pid is still that containerd).
        local cpid
        cpid="$(cat "$dockerd_exec/exec/containerd/containerd.pid" 2>/dev/null || true)"
        if [ -n "$cpid" ] && grep -qF "$dockerd_exec/exec/containerd" "/proc/$cpid/cmdline" 2>/dev/null; then
            say "stopping the private containerd (pid $cpid)"
            stop_pid "$cpid" 10
        fi
    fi
    if [ -n "$dockerd_exec" ] && ! { [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; }; then
        remove_tree "$dockerd_exec"
    fi
    remove_tree "$rootfs_tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the docker client ----------------------------------------------------------------------------------------
if ! command -v docker >/dev/null 2>&1; then
    apt_install docker.io
fi

# ---- one run at a time per cache directory (the private daemon's data-root is not shareable) ------------------
mkdir -p "$cache"
exec 9>"$cache/lock"
if ! flock -n 9; then
    say "another docker/test.sh is using $cache; waiting for it"
    flock 9
fi

# ---- the daemon ----------------------------------------------------------------------------------------------
daemon_up() { timeout 20 docker version --format '{{.Server.Version}}' 2>/dev/null; }

if version="$(daemon_up)" && [ -n "$version" ]; then
    say "using the Docker daemon the client reaches (${DOCKER_HOST:-its default socket}, engine $version)"
    private=0
else
    is_root || die "no Docker daemon is reachable, and only root can start a private one: start Docker, or run as root"
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    dockerd_exec="$(mktemp -d /tmp/weensy-dockerd.XXXXXX)"  # short: containerd's socket path lives under it
    mkdir -p "$cache/root"
    export DOCKER_HOST="unix://$dockerd_exec/docker.sock"
    unset DOCKER_CONTEXT
    start_dockerd() {  # start_dockerd DRIVER: 0 once the daemon answers, 1 if it died at start
        say "starting a private dockerd ($1 storage, data-root $cache/root, log $cache/dockerd.log)"
        # The default bridge network with NAT (iptables): builds reach the internet without the host's network.
        dockerd --storage-driver="$1" --ip6tables=false \
            --data-root "$cache/root" --exec-root "$dockerd_exec/exec" --pidfile "$dockerd_exec/docker.pid" \
            -H "unix://$dockerd_exec/docker.sock" >"$cache/dockerd.log" 2>&1 &
        dockerd_pid=$!
        for ((i = 0; i < 120; i++)); do
            kill -0 "$dockerd_pid" 2>/dev/null || { wait "$dockerd_pid" 2>/dev/null; dockerd_pid=""; return 1; }
            version="$(daemon_up)" && [ -n "$version" ] && return 0
            sleep 0.5
        done
        tail -n 20 "$cache/dockerd.log" >&2
        die "dockerd did not answer within 60 s"
    }
    if [ "$storage_driver" = auto ]; then
        # overlay2 builds images several times faster; vfs works everywhere (e.g. inside another container).
        if ! start_dockerd overlay2; then
            say "overlay2 storage is not available here; falling back to vfs"
            start_dockerd vfs || { tail -n 20 "$cache/dockerd.log" >&2; die "dockerd exited at start"; }
        fi
    else
        start_dockerd "$storage_driver" || { tail -n 20 "$cache/dockerd.log" >&2; die "dockerd exited at start"; }
    fi
    say "private dockerd (pid $dockerd_pid, engine $version) is up"
    private=1
fi

# ---- the base image ------------------------------------------------------------------------------------------
debian_mirror() {  # debian_mirror SUFFIX: the host's apt mirror for debian$SUFFIX, if it has one
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    { grep -hoE '^[^#]*https?://[^ ]+' "${files[@]}" | grep -oE "https?://[^ ]+/debian$1/?\$" | sed 's,/$,,' \
        | head -n 1; } 2>/dev/null || true
}

build_base_image() {
    is_root || die "$base_image is missing and cannot be pulled; building it with debootstrap needs root"
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_install debian-archive-keyring
    local mirror security
    mirror="${WEENSY_DEBIAN_MIRROR:-$(debian_mirror "")}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    security="$(debian_mirror -security)"
    security="${security:-http://deb.debian.org/debian-security}"
    rootfs_tmp="$(mktemp -d "$cache/rootfs.XXXXXX")"
    say "debootstrap --variant=minbase bookworm from $mirror (once; log $cache/debootstrap.log)"
    if ! debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
            bookworm "$rootfs_tmp/rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1; then
        tail -n 20 "$cache/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    # apt's sources as the official image has them; no package lists or caches in the image.
    local root="$rootfs_tmp/rootfs"
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/dev/*
    say "packing the root file system into $cache/debian-bookworm.tar"
    tar --numeric-owner --one-file-system -C "$root" -cf "$cache/debian-bookworm.tar.partial" .
    mv "$cache/debian-bookworm.tar.partial" "$cache/debian-bookworm.tar"
    remove_tree "$rootfs_tmp"
    rootfs_tmp=""
}

import_base_image() {
    say "importing $cache/debian-bookworm.tar as $base_image"
    docker import --change 'CMD ["bash"]' --message "debian:bookworm built locally with debootstrap (docker/test.sh)" \
        "$cache/debian-bookworm.tar" "$base_image" >/dev/null
}

if docker image inspect "$base_image" >/dev/null 2>&1; then
    say "base image $base_image is present"
elif [ -f "$cache/debian-bookworm.tar" ]; then
    import_base_image
else
    say "base image $base_image is missing: trying docker pull"
    if timeout 180 docker pull -q "$base_image" >/dev/null 2>&1; then
        say "pulled $base_image"
    else
        say "no registry: building $base_image from Debian's packages instead"
        build_base_image
        import_base_image
    fi
fi

# ---- the host's pip configuration, for pip inside the build ---------------------------------------------------
# Index URLs, find-links and trusted hosts go to the build as PIP_* build arguments. Local paths among them (and
# the CA bundle of pip's `cert`, which a TLS-inspecting network needs) are invisible to the build container, so
# docker/pip_bridge.py serves them, for the length of the build, on the gateway address of the bridge network the
# build runs on: reachable from the host and its containers, not from other machines.
build_args=()
gateway=""
if [ "$host_pip" = 1 ] && [ "$build_network" = default ]; then
    gateway="$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)"
    if [ -z "$gateway" ]; then
        # A daemon that finds its bridge interface already made (by an earlier daemon) lists only the subnet:
        # the gateway is then the interface's own IPv4 address.
        bridge_if="$(docker network inspect bridge \
            --format '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null || true)"
        if [ -n "$bridge_if" ] && command -v ip >/dev/null 2>&1; then
            gateway="$(ip -4 -o addr show dev "$bridge_if" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')"
        fi
    fi
    [ -n "$gateway" ] || say "pip: the daemon's bridge network has no gateway address; the host's pip settings are not used"
fi
if [ -n "$gateway" ]; then
    declare -A pip_value=()
    pip_list="$( (python3 -m pip config list || pip config list) 2>/dev/null || true)"
    for key in index-url extra-index-url find-links trusted-host cert; do
        # pip's precedence, lowest first: global, then the install command's section, then PIP_* variables;
        # `pip config list` names files in loading order, so within a section the last line wins.
        for section in global install ':env:'; do
            while IFS= read -r line; do
                case "$line" in
                    "$section.$key="*) value="${line#*=}"; value="${value#\'}"; pip_value[$key]="${value%\'}" ;;
                esac
            done <<<"$pip_list"
        done
    done
    if [ -n "${WEENSY_DOCKER_PIP_CERT:-}" ]; then pip_value[cert]="$WEENSY_DOCKER_PIP_CERT"; fi
    served=()
    declare -A pip_arg=()
    for key in index-url extra-index-url find-links; do
        [ -n "${pip_value[$key]:-}" ] || continue
        out=()
        for item in ${pip_value[$key]}; do
            case "$item" in
                http://*|https://*) out+=("$item") ;;
                file://*|/*)
                    path="${item#file://}"
                    if [ -d "$path" ]; then
                        served+=("$path")
                        # a simple index links its files relative to itself, usually one level up (../files)
                        if [ "$key" != find-links ]; then served+=("$(dirname "$path")"); fi
                        out+=("http://$gateway:@PORT@$path")
                    else
                        say "pip: skipping $key $item (not a directory on this host)"
                    fi ;;
                *) say "pip: skipping $key $item (neither a URL nor an absolute path)" ;;
            esac
        done
        if [ ${#out[@]} -gt 0 ]; then pip_arg[$key]="${out[*]}"; fi
    done
    if [ -n "${pip_value[cert]:-}" ]; then
        if [ -f "${pip_value[cert]}" ]; then
            served+=("${pip_value[cert]}")
            pip_arg[cert]="http://$gateway:@PORT@${pip_value[cert]}"
        else
            say "pip: skipping cert ${pip_value[cert]} (not a file on this host)"
        fi
    fi
    port=""
    if [ ${#served[@]} -gt 0 ]; then
        bridge_dir="$(mktemp -d /tmp/weensy-pip-bridge.XXXXXX)"  # private (0700): no one else can plant the file
        port_file="$bridge_dir/port"
        # A fixed port by default: the URLs are build arguments, and the same arguments keep Docker's layer cache.
        python3 "$repo/docker/pip_bridge.py" --port-file "$port_file" --host "$gateway" \
            --port "${WEENSY_PIP_BRIDGE_PORT:-37621}" "${served[@]}" &
        bridge_pid=$!
        for ((i = 0; i < 50; i++)); do [ -f "$port_file" ] && break; sleep 0.1; done
        [ -f "$port_file" ] || die "the pip bridge (docker/pip_bridge.py) did not start"
        port="$(cat "$port_file")"
        say "pip: the host's local pip paths are served to the build at http://$gateway:$port (pid $bridge_pid)"
    fi
    for key in index-url extra-index-url find-links cert; do
        [ -n "${pip_arg[$key]:-}" ] || continue
        value="${pip_arg[$key]//@PORT@/$port}"
        case "$key" in
            cert) name=WEENSY_PIP_CERT_URL ;;
            *) name="PIP_$(tr 'a-z-' 'A-Z_' <<<"$key")" ;;
        esac
        build_args+=(--build-arg "$name=$value")
        say "pip: $name=$value"
    done
    trusted="${pip_value[trusted-host]:-}"
    if [ -n "$port" ]; then trusted="${trusted:+$trusted }$gateway:$port"; fi  # the bridge speaks plain HTTP
    if [ -n "$trusted" ]; then
        build_args+=(--build-arg "PIP_TRUSTED_HOST=$trusted")
        say "pip: PIP_TRUSTED_HOST=$trusted"
    fi
fi

# ---- the image -----------------------------------------------------------------------------------------------
say "building $image (docker build --network $build_network -f docker/Dockerfile $repo)"
build_env=()
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    build_env=(env DOCKER_BUILDKIT=0)  # no buildx plugin: the classic builder, without its warning about buildx
fi
set +e
"${build_env[@]}" docker build --network "$build_network" -f "$repo/docker/Dockerfile" -t "$image" \
    "${build_args[@]}" "${no_cache[@]}" "$repo" 2>&1 \
    | grep --line-buffered -vE '^(DEPRECATED: The legacy builder|            BuildKit is currently disabled|            environment-variable\.$|$)'
build_status=${PIPESTATUS[0]}
set -e
[ "$build_status" = 0 ] || die "docker build failed (status $build_status)"
if [ -n "$bridge_pid" ]; then stop_pid "$bridge_pid" 5; bridge_pid=""; rm -rf "$bridge_dir"; bridge_dir=""; fi
# The image this build replaced, if any, is untagged now: drop it (on a shared daemon, only images with our label).
if [ "$private" = 1 ]; then
    docker image prune -f >/dev/null 2>&1 || true
else
    docker image prune -f --filter "label=$label" >/dev/null 2>&1 || true
fi
say "image $image is ready"

# ---- the run -------------------------------------------------------------------------------------------------
if [ ! -d "$results" ]; then
    mkdir -p "$results"
    # a directory of our own (./test-results by default): keep it out of git without touching the repository's files
    printf '# written by docker/test.sh\n*\n' >"$results/.gitignore"
fi
results="$(cd "$results" && pwd)"
# No network, no capability, no privilege gain, bounded memory and processes; the image's user `tester`. Nothing
# of the host is mounted writable: the results are copied out of the stopped container.
run_args=(--network none --cap-drop ALL --security-opt no-new-privileges --memory "$memory" --memory-swap "$memory"
          --pids-limit "$pids")
if [ -n "$user_build" ]; then
    run_args+=(-v "$user_build:/work/build-user:ro" -e WEENSY_BUILD_DIR=/work/build-user -e WEENSY_NO_BUILD=1)
    say "testing your build $user_build (mounted read-only at /work/build-user)"
fi
container="weensy-harness-test-$$-$RANDOM"
shown="$(printf ' %q' "${pytest_args[@]}")"
say "running the suite in container $container (user tester, no network, --memory $memory, --pids-limit $pids):"\
" pytest -n auto${pytest_args[*]:+$shown}"
# In the background, so that Ctrl-C reaches this script (whose cleanup removes the container) at once.
set +e
docker run --name "$container" "${run_args[@]}" "$image" "${pytest_args[@]}" &
wait $!
status=$?
set -e
rm -f "$results/junit.xml" "$results/results.json"
docker cp "$container:/work/test-results/." "$results/" >/dev/null 2>&1 \
    || say "no results could be copied out of the container"
docker rm -f "$container" >/dev/null 2>&1 || true
container=""
if [ -f "$results/junit.xml" ]; then
    say "results: $results/junit.xml, $results/results.json"
fi
if [ "$status" = 0 ]; then
    say "the suite passed in the container"
else
    say "the suite FAILED in the container (pytest exit status $status)"
fi
exit "$status"
