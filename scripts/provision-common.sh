# shellcheck shell=sh
# Shared by scripts/provision-control and scripts/provision-node (sourced, not run).
#   install_deps PKG...         the missing apt packages, then the venv with kubeling in it
#   install_unit NAME           vagrant/systemd/NAME.service -> $DEST/etc/systemd/system (0600)
#   write_env FILE KEY=VALUE... a systemd EnvironmentFile under $DEST (0600)
#   install_file SRC DST MODE   copy atomically under $DEST with MODE
# DEST is "" on a real machine, or the directory given with --render (nothing is installed or started
# then: the files are written there so that scripts/cis-check --root DIR can check them).
set -eu
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${KUBELING_VENV:-$REPO/.venv}"
DEST=""
# shellcheck disable=SC2034  # used by the scripts that source this file
PKI=/var/lib/kubeling/pki          # the cluster PKI on the control VM, a node's identity on a worker
# shellcheck disable=SC2034
KUBELING="$VENV/bin/python -m kubeling.cli"

say() { echo "provision: $*"; }
die() { echo "provision: $*" >&2; exit 1; }

install_deps() {
  missing=""
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    say "installing apt packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the venv $VENV"
    python3 -m venv "$VENV"
  fi
  stamp="$VENV/.provisioned-$(sha1sum "$REPO/pyproject.toml" | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    say "installing kubeling into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "${REPO}[node]"
    rm -f "$VENV"/.provisioned-*; touch "$stamp"
  fi
}

# install_unit NAME: vagrant/systemd/NAME.service with @VENV@ and @REPO@ filled in, mode 0600 (CIS 1.1.1/4.1.1).
install_unit() {
  dir="$DEST/etc/systemd/system"
  mkdir -p "$dir"
  (umask 077 && sed -e "s|@VENV@|$VENV|g" -e "s|@REPO@|$REPO|g" "$REPO/vagrant/systemd/$1.service" >"$dir/$1.service.tmp")
  chmod 600 "$dir/$1.service.tmp"
  mv "$dir/$1.service.tmp" "$dir/$1.service"
}

# write_env FILE KEY=VALUE...: a systemd EnvironmentFile under $DEST, atomically, mode 0600.
write_env() {
  f="$DEST$1"; shift
  mkdir -p "$(dirname "$f")"
  (umask 077 && : >"$f.tmp")
  for kv in "$@"; do echo "$kv" >>"$f.tmp"; done
  mv "$f.tmp" "$f"
}

# install_file SRC DST MODE: SRC copied to $DEST/DST (atomically) with MODE, owned by root.
install_file() {
  dst="$DEST$2"
  mkdir -p "$(dirname "$dst")"
  (umask 077 && cp "$1" "$dst.tmp")
  chmod "$3" "$dst.tmp"
  mv "$dst.tmp" "$dst"
}

# secure_dir DIR: made (under $DEST) and set 0700.
secure_dir() {
  mkdir -p "$DEST$1"
  chmod 700 "$DEST$1"
}

have_systemd() { [ -z "$DEST" ] && [ -d /run/systemd/system ]; }
