#!/usr/bin/env bash
# Builds cubbi-base and every tool image with `cubbi image build` (the embedded build
# contexts, the host's extra CA certificates included), then runs each image's
# version_command as the agent user, and prints size and build time per image.
#
# Usage: install/build-images.sh [IMAGE...]          (default: every image cubbi knows)
# Env:   CUBBI (the cubbi binary, default: target/release/cubbi, else cubbi on PATH),
#        CUBBI_DOCKER_HOST (the endpoint, default: cubbi's), CUBBI_BUILD_ARGS (e.g. --no-cache)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cubbi=${CUBBI:-}
if [ -z "$cubbi" ]; then
    if [ -x "$repo/target/release/cubbi" ]; then cubbi=$repo/target/release/cubbi; else cubbi=cubbi; fi
fi
read -r -a extra <<< "${CUBBI_BUILD_ARGS:-}"
docker_host=${CUBBI_DOCKER_HOST:-unix:///var/run/cubbi-docker.sock}

json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

if [ $# -gt 0 ]; then
    images=("$@")
else
    mapfile -t images < <("$cubbi" --json image list | json_field "'\n'.join(r['name'] for r in d)")
fi

failed=()
printf '%-12s %-8s %-10s %s\n' IMAGE BUILD SIZE VERSION
for image in "${images[@]}"; do
    start=$(date +%s.%N)
    if ! "$cubbi" image build "$image" "${extra[@]}" >"/tmp/cubbi-build-$image.log" 2>&1; then
        printf '%-12s %-8s %-10s %s\n' "$image" FAILED - "see /tmp/cubbi-build-$image.log"
        failed+=("$image")
        continue
    fi
    took=$(python3 -c "print(f'{$(date +%s.%N) - $start:.0f}s')")
    inspected=$("$cubbi" --json image inspect "$image")
    tag=$(json_field "d['tag']" <<< "$inspected")
    size=$(json_field "f\"{d['size_bytes'] / 1e6:.0f}MB\"" <<< "$inspected")
    mapfile -t version_command < <(json_field "'\n'.join(d['metadata']['version_command'])" <<< "$inspected")
    if version=$(docker -H "$docker_host" run --rm --user agent "$tag" "${version_command[@]}" 2>&1 | head -1); then
        printf '%-12s %-8s %-10s %s\n' "$image" "$took" "$size" "$version"
    else
        printf '%-12s %-8s %-10s %s\n' "$image" "$took" "$size" "VERSION FAILED: $version"
        failed+=("$image")
    fi
done
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
