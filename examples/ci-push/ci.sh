#!/bin/sh
# The CI job: build with habitus, push the image with the cache of its last
# push inline, and deploy what was pushed by its digest (a tag such as
# `latest` moves with the next push; the digest names these bytes only).
#
#   REGISTRY=registry.example.com/team sh examples/ci-push/ci.sh
#
# The push and the pull of the cache image log in with what
# $DOCKER_CONFIG/config.json holds (default ~/.docker), as the docker CLI
# does: run `docker login` first in the job. Arguments go to habitus, e.g.
# `--build BUILDER_IMAGE=busybox:1.36`. METADATA_FILE (default meta.json)
# is where habitus writes what it built and pushed.
set -eu
: "${REGISTRY:?set REGISTRY to the registry and namespace to push to, e.g. registry.example.com/team}"
meta=${METADATA_FILE:-meta.json}

habitus -d "$(dirname "$0")" --builder buildkit --metadata-file "$meta" "$@"

# meta.json, keyed by step label:
#   {"app": {"digest": "sha256:…", "image": "…", "image_id": "…", "names": ["…"]}, …}
if command -v jq >/dev/null 2>&1; then
  digest=$(jq -r '.app.digest // empty' "$meta")
  name=$(jq -r '.app.names[0] // empty' "$meta")
else
  flat=$(tr -d ' \n' < "$meta")
  digest=$(printf '%s' "$flat" | sed -n 's/.*"app":{[^}]*"digest":"\([^"]*\)".*/\1/p')
  name=$(printf '%s' "$flat" | sed -n 's/.*"app":{[^}]*"names":\["\([^"]*\)".*/\1/p')
fi
case "$digest" in
  sha256:*) ;;
  *) echo "ci.sh: no digest for step app in $meta" >&2; exit 1 ;;
esac
# The repository without its tag: registry.example.com/team/ci-push.
case "${name##*/}" in
  *:*) repository=${name%:*} ;;
  *) repository=$name ;;
esac
image="$repository@$digest"
echo "deploy $image"
# For example: kubectl set image deployment/app app="$image"
