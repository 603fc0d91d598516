#!/usr/bin/env bash
# Builds cubbi-base and the tool images with the docker CLI, then runs each
# image's version_command as the agent user.
#
# Usage: install/build-images.sh [IMAGE...]      (default: base and every tool)
# Env:   DOCKER_HOST (as for docker), CUBBI_BASE_FROM (default debian:bookworm),
#        CUBBI_CA_DIR (default /usr/local/share/ca-certificates: its *.crt are
#        trusted inside the images), CUBBI_IMAGE_PREFIX (default "cubbi-"),
#        CUBBI_BUILD_ARGS (extra `docker build` arguments, e.g. --no-cache).
#
# Each image's build context is assembled in a temporary directory:
#   Dockerfile, cubbi-image.toml, cubbi-ca/*.crt, runtime/, systemd-units/
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${CUBBI_IMAGE_PREFIX:-cubbi-}
base_from=${CUBBI_BASE_FROM:-debian:bookworm}
ca_dir=${CUBBI_CA_DIR:-/usr/local/share/ca-certificates}
read -r -a extra <<< "${CUBBI_BUILD_ARGS:-}"

if [ $# -gt 0 ]; then
    images=("$@")
else
    images=(base)
    for d in "$repo"/images/*/; do
        n=$(basename "$d"); [ "$n" = base ] || images+=("$n")
    done
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

context() { # context IMAGE DIR
    local img=$1 dir=$2
    mkdir -p "$dir"
    cp -a "$repo/images/$img/." "$dir/"
    rm -rf "$dir/cubbi-ca" "$dir/runtime" "$dir/systemd-units"
    mkdir -p "$dir/cubbi-ca"
    touch "$dir/cubbi-ca/.keep"
    if [ -d "$ca_dir" ]; then
        find "$ca_dir" -maxdepth 2 -name '*.crt' -type f -exec cp {} "$dir/cubbi-ca/" \;
    fi
    cp -a "$repo/runtime" "$dir/runtime"
    cp -a "$repo/systemd-units/container" "$dir/systemd-units"
}

# version_command from cubbi-image.toml, as a bash array literal.
version_cmd() {
    python3 - "$1" <<'PY'
import sys, shlex
try:
    import tomllib
except ImportError:
    tomllib = None
text = open(sys.argv[1]).read()
if tomllib:
    argv = tomllib.loads(text)["version_command"]
else:
    import ast, re
    m = re.search(r'^version_command\s*=\s*(\[.*\])\s*$', text, re.M)
    argv = ast.literal_eval(m.group(1))
print(" ".join(shlex.quote(a) for a in argv))
PY
}

declare -a report=()
failed=0
for img in "${images[@]}"; do
    [ -f "$repo/images/$img/Dockerfile" ] || { echo "no such image: $img" >&2; exit 2; }
    tag="${prefix}${img}"
    dir="$tmp/$img"
    context "$img" "$dir"
    if [ "$img" = base ]; then
        build_arg=(--build-arg "BASE=$base_from")
    else
        build_arg=(--build-arg "BASE=${prefix}base")
    fi
    echo "=== building $tag"
    start=$(date +%s.%N)
    if ! docker build "${extra[@]}" "${build_arg[@]}" -t "$tag" "$dir"; then
        echo "=== $tag: BUILD FAILED" >&2
        report+=("$(printf '%-20s %s' "$tag" 'build FAILED')")
        failed=1
        continue
    fi
    secs=$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || python3 -c "print(round($(date +%s.%N)-$start,1))")
    size=$(docker image inspect -f '{{.Size}}' "$tag")
    vcmd=$(version_cmd "$dir/cubbi-image.toml")
    # bash -lc: the same environment an ssh login gets (PATH, CA variables).
    if ver=$(docker run --rm --user agent --workdir /home/agent --entrypoint /bin/bash "$tag" -lc "$vcmd" 2>&1 | head -n 1); then
        :
    else
        ver="VERSION FAILED: $ver"; failed=1
    fi
    report+=("$(printf '%-20s %6s MB  %7.1f s  %s' "$tag" "$((size / 1000000))" "$secs" "$ver")")
done

echo
echo "image                  size    build  version"
printf '%s\n' "${report[@]}"
exit "$failed"
