ARG BASE_IMAGE=busybox
FROM ${BASE_IMAGE}
RUN echo "step c" > /c.txt && cat /c.txt
