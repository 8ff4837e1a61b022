# Shared by scripts/provision-control and scripts/provision-node (sourced, not run).
# install_deps PKG...: the apt packages that are missing, then the venv with kubeling in it.
set -eu
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${KUBELING_VENV:-$REPO/.venv}"

say() { echo "provision: $*"; }

install_deps() {
  missing=""
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    say "installing apt packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the venv $VENV"
    python3 -m venv "$VENV"
  fi
  stamp="$VENV/.provisioned-$(sha1sum "$REPO/pyproject.toml" | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    say "installing kubeling into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[node]"
    rm -f "$VENV"/.provisioned-*; touch "$stamp"
  fi
}

# install_unit NAME: vagrant/systemd/NAME.service with @VENV@ and @REPO@ filled in.
install_unit() {
  sed -e "s|@VENV@|$VENV|g" -e "s|@REPO@|$REPO|g" "$REPO/vagrant/systemd/$1.service" >"/etc/systemd/system/$1.service.tmp"
  mv "/etc/systemd/system/$1.service.tmp" "/etc/systemd/system/$1.service"
}

# write_env FILE KEY=VALUE...: a systemd EnvironmentFile, atomically.
write_env() {
  f="$1"; shift
  mkdir -p "$(dirname "$f")"
  : >"$f.tmp"
  for kv in "$@"; do echo "$kv" >>"$f.tmp"; done
  mv "$f.tmp" "$f"
}
