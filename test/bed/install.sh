#!/usr/bin/env bash
# Test bed installer for prep-snapshot. Idempotent; fast when everything is present.
#
# Cache dir: ${PREP_SNAPSHOT_CACHE:-$HOME/.cache/prep-snapshot}  (test/bed/paths.ts reads the same)
#   $CACHE/bin/minio                      MinIO server (go install, pinned below)
#   $CACHE/node24/node_modules/.bin/node  Node 24, to run dist/ like GitHub's runner
#   $CACHE/bin/goloop                     goloop v1.4.4 (ICON 2 node), built from the vendored
#                                         source tarball; GOLOOP_TARBALL overrides its path
#                                         (default: ../shared/vendor/goloop/goloop-1.4.4.tar.gz
#                                         beside the repo)
# Also: apt packages openssh-server openssh-client pigz zstd isal curl python3 iproute2 util-linux
# aria2 python3-xxhash axel;
# npm ci if node_modules is missing.
# Exports nothing.
set -euo pipefail

MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
NODE24_VERSION=24.21.0

CACHE=${PREP_SNAPSHOT_CACHE:-$HOME/.cache/prep-snapshot}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$CACHE/bin"

say() { echo "[install.sh] $*"; }

# --- apt packages -----------------------------------------------------------------
need_pkgs=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
have_cmd ssh && have_cmd ssh-keygen || need_pkgs+=(openssh-client)
have_cmd pigz || need_pkgs+=(pigz)
have_cmd zstd || need_pkgs+=(zstd)
# igzip (ISA-L): the restore's preferred gzip decoder; the tests run it beside pigz and gzip.
have_cmd igzip || need_pkgs+=(isal)
have_cmd curl || need_pkgs+=(curl)
# python3: crafts exact tar headers for the hostile-archive tests. ip (iproute2), unshare and
# nsenter (util-linux): the host laid out as the original guide's runs in namespaces of its own.
have_cmd python3 || need_pkgs+=(python3)
have_cmd ip || need_pkgs+=(iproute2)
have_cmd unshare && have_cmd nsenter && have_cmd flock || need_pkgs+=(util-linux)
# axel: the original restore's download (several connections), run by the benchmark's wan part.
have_cmd axel || need_pkgs+=(axel)
# aria2c and Python's xxhash: icon2-node's own restore of a tree (test/bed/icon2-restore.py)
# fetches with aria2c and checks tail hashes with xxhash. Debian's python3-xxhash goes into the
# system Python (/usr/bin/python3), which is the one the tests run it with (a python3 found
# first on PATH, such as pyenv's, may not see it).
have_cmd aria2c || need_pkgs+=(aria2)
/usr/bin/python3 -c 'import xxhash' >/dev/null 2>&1 || need_pkgs+=(python3-xxhash)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  SUDO=
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  say "installing apt packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"; then
    say "apt-get install failed; running apt-get update and retrying"
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"
  fi
fi

aria2c --version >/dev/null 2>&1 || { say "aria2c --version fails after the apt install"; exit 1; }
/usr/bin/python3 -c 'import xxhash; xxhash.xxh3_64_hexdigest(b"")' >/dev/null 2>&1 ||
  { say "/usr/bin/python3 cannot use xxhash after the apt install"; exit 1; }

# --- MinIO ------------------------------------------------------------------------
MINIO_BIN=$CACHE/bin/minio
minio_ok() { [ -x "$MINIO_BIN" ] && "$MINIO_BIN" --version >/dev/null 2>&1; }
# A build of the same module may already be running on this machine (started by someone
# else with the same GOBIN): wait for it instead of starting a second one.
other_build() { pgrep -f "go install ${MINIO_MODULE}@${MINIO_VERSION}" >/dev/null 2>&1; }
if ! minio_ok && other_build; then
  say "a MinIO build is already running; waiting for it (log: /tmp/minio-build.log)"
  for _ in $(seq 1 1800); do other_build || break; sleep 1; done
fi
if ! minio_ok; then
  have_cmd go || { say "go is required to build MinIO (apt-get install golang-go, or https://go.dev/dl)"; exit 1; }
  say "building MinIO ${MINIO_VERSION} into $CACHE/bin (takes a few minutes)"
  GOBIN=$CACHE/bin CGO_ENABLED=0 go install "${MINIO_MODULE}@${MINIO_VERSION}"
  minio_ok || { say "MinIO build finished but $MINIO_BIN --version fails"; exit 1; }
fi

# --- goloop (ICON 2 node) ---------------------------------------------------------------
# The Go module proxy that test machines reach does not serve github.com/icon-project/goloop
# (it does serve its dependencies), so it is built from a source tarball kept outside the repo.
GOLOOP_VERSION=v1.4.4
GOLOOP_SHA256=19ec43eb10c61da8f176b28b33c7df75452676b59b4d4b726ee66d031b3872df
GOLOOP_TARBALL=${GOLOOP_TARBALL:-$REPO/../shared/vendor/goloop/goloop-1.4.4.tar.gz}
GOLOOP_BIN=$CACHE/bin/goloop
goloop_ok() { [ -x "$GOLOOP_BIN" ] && "$GOLOOP_BIN" version 2>/dev/null | grep -qw "$GOLOOP_VERSION"; }
if ! goloop_ok; then
  have_cmd go || { say "go is required to build goloop (apt-get install golang-go, or https://go.dev/dl)"; exit 1; }
  if [ -f "$GOLOOP_TARBALL" ]; then
    got=$(sha256sum "$GOLOOP_TARBALL" | cut -d' ' -f1)
    if [ "$got" != "$GOLOOP_SHA256" ]; then
      say "$GOLOOP_TARBALL: sha256 $got, expected $GOLOOP_SHA256; refusing to build it"
      exit 1
    fi
    say "building goloop ${GOLOOP_VERSION} from $GOLOOP_TARBALL into $CACHE/bin (about a minute)"
    GOLOOP_SRC=$(mktemp -d "${TMPDIR:-/tmp}/goloop-src.XXXXXX")
    trap 'rm -rf "$GOLOOP_SRC"' EXIT
    tar -xzf "$GOLOOP_TARBALL" -C "$GOLOOP_SRC"
    # Build to a temp name and rename, so that a concurrent reader never sees half a binary.
    (cd "$GOLOOP_SRC/goloop-1.4.4" &&
      CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=${GOLOOP_VERSION}" \
        -o "$GOLOOP_BIN.tmp.$$" ./cmd/goloop)
    mv -f "$GOLOOP_BIN.tmp.$$" "$GOLOOP_BIN"
    rm -rf "$GOLOOP_SRC"
    trap - EXIT
  else
    say "no goloop source tarball at $GOLOOP_TARBALL (set GOLOOP_TARBALL); trying go install"
    GOBIN=$CACHE/bin CGO_ENABLED=0 go install -trimpath -ldflags "-X main.version=${GOLOOP_VERSION}" \
      "github.com/icon-project/goloop/cmd/goloop@${GOLOOP_VERSION}" ||
      {
        # Not fatal: the tests of a real goloop node say they were skipped, and why.
        say "WARNING: cannot get goloop ${GOLOOP_VERSION}: no tarball at $GOLOOP_TARBALL and go install failed."
        say "Put goloop-1.4.4.tar.gz (git archive --prefix=goloop-1.4.4/ v1.4.4 of icon-project/goloop,"
        say "sha256 $GOLOOP_SHA256) there, or point GOLOOP_TARBALL at it; the goloop tests are skipped until then."
      }
  fi
  if [ -f "$GOLOOP_TARBALL" ] && ! goloop_ok; then
    say "goloop build finished but '$GOLOOP_BIN version' does not print ${GOLOOP_VERSION}"
    exit 1
  fi
fi

# --- Node 24 ------------------------------------------------------------------------
NODE24_DIR=$CACHE/node24
NODE24=$NODE24_DIR/node_modules/.bin/node
node24_ok() { [ -x "$NODE24" ] && [ "$("$NODE24" --version 2>/dev/null)" = "v${NODE24_VERSION}" ]; }
if ! node24_ok; then
  say "installing Node ${NODE24_VERSION} (npm package node) into $NODE24_DIR"
  mkdir -p "$NODE24_DIR"
  # The `node` package fetches the binary in its preinstall script. npm 11 asks for
  # install scripts to be approved: do it in the package.json of this small project
  # (--allow-scripts on the command line is an error for project installs).
  cat >"$NODE24_DIR/package.json" <<JSON
{ "name": "prep-snapshot-node24", "private": true, "allowScripts": { "node@${NODE24_VERSION}": true } }
JSON
  (cd "$NODE24_DIR" && npm install --no-save --no-audit --no-fund --foreground-scripts "node@${NODE24_VERSION}")
  if ! node24_ok && [ -f "$NODE24_DIR/node_modules/node/installArchSpecificPackage.js" ]; then
    say "the node package's install script did not run; running it by hand"
    (cd "$NODE24_DIR/node_modules/node" && node installArchSpecificPackage.js)
  fi
  node24_ok || { say "Node 24 install failed: $NODE24 --version does not print v${NODE24_VERSION}"; exit 1; }
fi

# --- repo dependencies ----------------------------------------------------------------
if [ ! -d "$REPO/node_modules" ] || [ ! -x "$REPO/node_modules/.bin/tsx" ]; then
  say "npm ci in $REPO"
  (cd "$REPO" && npm ci --no-audit --no-fund)
fi

# sshd's privilege separation dir (tests create it too).
[ -d /run/sshd ] || { mkdir -p /run/sshd 2>/dev/null || true; }

goloop_said=$GOLOOP_BIN
goloop_ok || goloop_said="none (the goloop tests will be skipped)"
say "ready: minio=$MINIO_BIN goloop=$goloop_said node24=$NODE24 ($("$NODE24" --version))"
