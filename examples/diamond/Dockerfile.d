ARG BASE_IMAGE=busybox
FROM ${BASE_IMAGE}
RUN echo "step d" > /d.txt && cat /d.txt
