# The image CI pushes: the program and the static busybox that runs it as
# /bin/sh, and nothing else of the build step.
FROM scratch
COPY --from=habitus-examples/ci-push-build /out/ /
ENTRYPOINT ["/bin/app"]
