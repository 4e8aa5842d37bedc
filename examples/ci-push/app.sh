#!/bin/sh
# The program this example builds and ships.
echo "hello from ci-push${1:+, $1}"
