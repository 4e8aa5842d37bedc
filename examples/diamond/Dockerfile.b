ARG BASE_IMAGE=busybox
FROM ${BASE_IMAGE}
RUN echo "step b" > /b.txt && cat /b.txt
