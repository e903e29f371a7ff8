#!/usr/bin/env bash
# Build the Debian packages `portcullis` (controller + operator CLI) and `portcullis-agent`
# into target/debian/, with cargo-deb. Before packaging it generates, from the binaries
# themselves (`generate`, a hidden subcommand of both): bash/zsh/fish completions and one
# man page per command; and copies the systemd units with ExecStart in /usr/bin.
#
#   deploy/package.sh                      # release build, then package
#   deploy/package.sh --profile dev --no-build --fast   # reuse target/debug (tests)
#
# Needs: cargo-deb (`cargo install cargo-deb --locked`), dpkg-deb, gzip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=release build=1 fast=()
while (($#)); do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --fast) fast=(--fast); shift ;;
    *) echo "usage: $0 [--profile release|dev] [--no-build] [--fast]" >&2; exit 2 ;;
  esac
done
missing=()
command -v cargo-deb >/dev/null 2>&1 || missing+=("cargo-deb (cargo install cargo-deb --locked)")
command -v dpkg-deb >/dev/null 2>&1 || missing+=("dpkg-deb (apt-get install dpkg)")
command -v gzip >/dev/null 2>&1 || missing+=("gzip (apt-get install gzip)")
if ((${#missing[@]})); then
  printf 'package.sh: missing: %s\n' "${missing[@]}" >&2
  exit 2
fi

target="${CARGO_TARGET_DIR:-target}"
case "$profile" in
  dev) bindir="$target/debug" ;;
  *) bindir="$target/$profile" ;;
esac
if ((build)); then
  cargo build --locked --profile "$profile" -p portcullis-controller -p portcullis-agent
fi

# Generated assets: always under ./target/debian/assets (the paths in the Cargo.toml files).
assets=target/debian/assets
rm -rf "$assets"
for bin in portcullis portcullis-agent; do
  out="$assets/$bin"
  mkdir -p "$out/completions" "$out/man"
  "$bindir/$bin" generate completions bash >"$out/completions/$bin"
  "$bindir/$bin" generate completions zsh >"$out/completions/_$bin"
  "$bindir/$bin" generate completions fish >"$out/completions/$bin.fish"
  "$bindir/$bin" generate man "$out/man"
  gzip -9n "$out"/man/*.1
done
for unit in portcullis.service:portcullis portcullis-agent.service:portcullis-agent \
  portcullis-agent-restore.service:portcullis-agent; do
  sed 's#/usr/local/bin/#/usr/bin/#g' "deploy/systemd/${unit%%:*}" >"$assets/${unit##*:}/${unit%%:*}"
done

mkdir -p target/debian
for pkg in portcullis-controller portcullis-agent; do
  cargo deb --no-build --profile "$profile" "${fast[@]}" -p "$pkg" --output target/debian/
done
ls -l target/debian/*.deb
