#!/usr/bin/env bash
# (Re)create broker/console/vendor/leaflet/ from the npm registry at a pinned
# version. locusd embeds these files into its binary and serves them at
# /console/vendor/leaflet/<file>; nothing is ever loaded from a CDN.
#
# The tarball's sha512 is checked against the integrity pinned below (the value
# `npm view leaflet@1.9.4 dist.integrity` prints), so a changed upstream
# artifact fails loudly instead of landing silently.
set -euo pipefail

VERSION="1.9.4"
INTEGRITY="sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA=="

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/broker/console/vendor/leaflet"

for tool in npm tar base64 openssl; do
  command -v "$tool" >/dev/null || { echo "vendor-leaflet: '$tool' is required" >&2; exit 1; }
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "vendor-leaflet: fetching leaflet@$VERSION"
( cd "$TMP" && npm pack --silent "leaflet@$VERSION" >/dev/null )
TARBALL="$TMP/leaflet-$VERSION.tgz"
[ -f "$TARBALL" ] || { echo "vendor-leaflet: npm pack did not produce $TARBALL" >&2; exit 1; }

ACTUAL="sha512-$(openssl dgst -sha512 -binary "$TARBALL" | base64 -w0)"
if [ "$ACTUAL" != "$INTEGRITY" ]; then
  echo "vendor-leaflet: INTEGRITY MISMATCH for leaflet@$VERSION" >&2
  echo "  expected: $INTEGRITY" >&2
  echo "  actual:   $ACTUAL" >&2
  exit 1
fi

tar -xzf "$TARBALL" -C "$TMP"
PKG="$TMP/package"

rm -rf "$DEST"
mkdir -p "$DEST/images"
cp "$PKG/dist/leaflet.js" "$PKG/dist/leaflet.css" "$PKG/LICENSE" "$DEST/"
cp "$PKG"/dist/images/*.png "$DEST/images/"
printf 'leaflet %s\n%s\n' "$VERSION" "$INTEGRITY" > "$DEST/VERSION"

echo "vendor-leaflet: wrote $DEST"
( cd "$DEST" && find . -type f | sort )
