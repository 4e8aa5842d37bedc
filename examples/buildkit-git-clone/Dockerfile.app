# The runtime step: the sources, without git, ssh, curl or the key.
ARG RUNTIME_IMAGE=alpine:3.20
FROM ${RUNTIME_IMAGE}
COPY --from=habitus-examples/buildkit-git-clone-src /src /src
WORKDIR /src
CMD ["ls", "-A", "/src"]
