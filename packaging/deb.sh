#!/usr/bin/env bash
# Builds the Debian package with nfpm (a tool dependency in go.mod, run as
# `go tool nfpm`). `make deb` runs it once the binary, the man pages and the
# completion scripts are built; see the variables below for where it finds
# them. It stages the generated files in a temporary directory that
# packaging/nfpm.yaml refers to as $STAGE, and writes the .deb into DEBDIR.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
BIN=${BIN:-bin/nftpol}
MANDIR=${MANDIR:-bin/man}
COMPLETIONDIR=${COMPLETIONDIR:-bin/completion}
DEBDIR=${DEBDIR:-bin}
VERSION=${VERSION:-dev}

for f in "$BIN" "$MANDIR/nftpol.1" "$COMPLETIONDIR/nftpol" "$COMPLETIONDIR/_nftpol"; do
	if [ ! -e "$f" ]; then
		echo "deb.sh: $f is missing; run make deb, which builds it first" >&2
		exit 1
	fi
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/systemd" "$stage/man" "$stage/completion"
install -m 0755 "$BIN" "$stage/nftpol"

# The units are templates (make install fills them in too); the package
# puts the binary in /usr/sbin and the policy in /etc.
shopt -s nullglob
for unit in packaging/systemd/*.service; do
	out="$stage/systemd/$(basename "$unit")"
	sed -e 's|@SBINDIR@|/usr/sbin|g' -e 's|@SYSCONFDIR@|/etc|g' "$unit" >"$out"
	if grep -n '@[A-Z_]*@' "$out" >&2; then
		echo "deb.sh: $unit has a placeholder deb.sh does not fill in (above)" >&2
		exit 1
	fi
done
for page in "$MANDIR"/*.1; do
	# -n: no name or time stamp inside, so the same pages give the same
	# package.
	gzip -9n <"$page" >"$stage/man/$(basename "$page").gz"
done
cp "$COMPLETIONDIR/nftpol" "$COMPLETIONDIR/_nftpol" "$stage/completion/"

# Debian versions must start with a digit and sort in release order: a tag
# v1.2.0 gives 1.2.0, a later commit v1.2.0-3-gabc1234 gives
# 1.2.0+3.gabc1234; an untagged tree (the version is a commit hash) gives
# 0.0.0~git<commit time>.<hash>, which sorts below any release.
if [[ $VERSION =~ ^v?[0-9]+(\.[0-9]+)+ ]]; then
	deb_version=$(printf '%s' "${VERSION#v}" | sed -e 's/-/+/' -e 's/-/./g')
else
	when=$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S)
	deb_version="0.0.0~git$when.$(printf '%s' "$VERSION" | tr -c 'A-Za-z0-9.+~' '.')"
fi

mkdir -p "$DEBDIR"
STAGE=$stage DEB_VERSION=$deb_version GOARCH=$("$GO" env GOARCH) \
	"$GO" tool nfpm package --config packaging/nfpm.yaml --packager deb --target "$DEBDIR/"
