#!/bin/sh
# Shows what the build downloaded, and that the credentials did not ship.
cat /app/vendor.txt
if [ -e /root/.netrc ]; then
  echo "credentials shipped in /root/.netrc" >&2
  exit 1
fi
echo "no credentials in this image"
